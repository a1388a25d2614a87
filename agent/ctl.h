/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* p11agentctl internals shared by ctl.c and ctl-out.c. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Prints s as a JSON string: quotes, backslashes and control characters
 * escaped. */
void json_str(const char *s);
/* "SHA256:" + unpadded base64 of the SHA-256 of the SPKI DER (the form
 * ssh-keygen -l prints); "?" if there is none. */
void spki_fingerprint(const uint8_t *spki, size_t len, char out[64]);
/* Subject (one line, OPENSSL_free it) and notAfter (ISO 8601, UTC) of a
 * certificate; false if it does not parse. */
bool cert_summary(const uint8_t *der, size_t len, char **ret_subject, char expiry[32]);
/* PEM of der under label, malloc'd, or NULL when out of memory. */
char *pem_encode(const char *label, const uint8_t *der, size_t len, size_t *ret_len);
/* Writes pem to path ("-": standard output); a new file with O_EXCL and
 * mode, with force an existing one replaced atomically. 0 or 1 (with a
 * message on stderr). */
int write_file(const char *path, const char *pem, size_t len, mode_t mode, bool force);
