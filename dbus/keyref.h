/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Key-reference files: a PEM block that names a key held by the agent by
 * its PKCS#11 URI, for programs that only take a key *file*. Written by
 * `p11agentctl ref`, read by p11agent.so's decoders. Never holds a PIN.
 *
 *   -----BEGIN P11AGENT KEY REFERENCE-----
 *   base64 of the DER below
 *   -----END P11AGENT KEY REFERENCE-----
 *
 *   P11AgentKeyReference ::= SEQUENCE {
 *       version  INTEGER,     -- 1
 *       uri      UTF8String,  -- pkcs11: URI of the private key (RFC 7512),
 *                             -- printable ASCII, no pin-value/pin-source
 *       keyType  UTF8String   -- "RSA", "EC", "ED25519" or "ED448"
 *   }
 *
 * pkcs11-provider's files are read too (never written):
 *
 *   -----BEGIN PKCS#11 PROVIDER URI-----
 *   SEQUENCE { desc VisibleString, uri UTF8String }
 *
 * Pure C, no I/O and no libcrypto: shared by the provider, p11agentctl and
 * the unit tests.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "bus.h"

#define BUS_KEYREF_PEM_LABEL "P11AGENT KEY REFERENCE"
#define BUS_KEYREF_PK11PROV_PEM_LABEL "PKCS#11 PROVIDER URI"
/* Decoder structure names (OSSL_OBJECT_PARAM_DATA_STRUCTURE). */
#define BUS_KEYREF_STRUCTURE "p11agent-key-reference"
#define BUS_KEYREF_PK11PROV_STRUCTURE "pkcs11-provider-uri"
#define BUS_KEYREF_VERSION 1
/* Longest URI accepted; the DER of a reference is always below MAX_DER. */
#define BUS_KEYREF_MAX_URI 4096
#define BUS_KEYREF_MAX_DER (BUS_KEYREF_MAX_URI + 256)

typedef enum bus_keyref_format {
    BUS_KEYREF_P11AGENT = 1,
    BUS_KEYREF_PKCS11_PROVIDER = 2,
} bus_keyref_format_t;

typedef struct bus_keyref {
    bus_keyref_format_t format;
    char *uri;            /* malloc'd, NUL-terminated */
    bus_key_type_t type;  /* BUS_KEY_UNKNOWN for pkcs11-provider files */
} bus_keyref_t;

/* A URI a reference may carry: "pkcs11:" scheme, printable ASCII, at most
 * BUS_KEYREF_MAX_URI bytes, no pin-value or pin-source attribute (path or
 * query, any case, percent-encoded or not). BUS_OK, or BUS_ERR_INVALID_ARGS
 * with *ret_why (static string) saying what is wrong. */
int bus_keyref_check_uri(const char *uri, const char **ret_why);

/* DER of a version 1 reference. *ret_der is malloc'd. BUS_OK,
 * BUS_ERR_INVALID_ARGS (bad URI or type, *ret_why set) or
 * BUS_ERR_NO_MEMORY. */
int bus_keyref_encode(const char *uri, bus_key_type_t type, uint8_t **ret_der, size_t *ret_len,
                      const char **ret_why);

/* Parses either format (told apart by the first element). Strict DER:
 * definite minimal lengths, nothing after the SEQUENCE, URI checked as
 * above. BUS_OK (*ret filled, bus_keyref_clear it), BUS_ERR_INVALID_ARGS
 * with *ret_why, or BUS_ERR_NO_MEMORY. */
int bus_keyref_decode(const uint8_t *der, size_t len, bus_keyref_t *ret, const char **ret_why);

void bus_keyref_clear(bus_keyref_t *ref);
