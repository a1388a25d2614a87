/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* p11agentctl's output: JSON strings, fingerprints, certificate summaries,
 * PEM and files written safely. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "ctl.h"

/* A JSON string: quotes, backslashes and control characters escaped. */
void json_str(const char *s)
{
    putchar('"');
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;

        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

/* "SHA256:" + unpadded base64 of the SHA-256 of the SPKI DER, the form
 * ssh-keygen -l prints. */
void spki_fingerprint(const uint8_t *spki, size_t len, char out[64])
{
    unsigned char md[32];
    unsigned char b64[48];
    int n;

    if (!spki || !len || !EVP_Digest(spki, len, md, NULL, EVP_sha256(), NULL)) {
        snprintf(out, 64, "?");
        return;
    }
    n = EVP_EncodeBlock(b64, md, sizeof(md));
    while (n > 0 && b64[n - 1] == '=')
        n--;
    snprintf(out, 64, "SHA256:%.*s", n, (const char *)b64);
}

/* Subject (one line) and notAfter (ISO 8601, UTC) of a certificate; false
 * if it does not parse. */
bool cert_summary(const uint8_t *der, size_t len, char **ret_subject, char expiry[32])
{
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    struct tm tm;

    if (!x)
        return false;
    *ret_subject = X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm))
        strftime(expiry, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
    else
        snprintf(expiry, 32, "?");
    X509_free(x);
    return true;
}

/* Writes the PEM blocks in `pem` to path: "-" is stdout; a new file is
 * created with O_EXCL (mode `mode`), and with `force` an existing one is
 * replaced atomically (a temporary file renamed over it). */
int write_file(const char *path, const char *pem, size_t len, mode_t mode, bool force)
{
    char *tmp = NULL;
    int fd = -1, r = 1;
    bool tmp_created = false;
    size_t off = 0;
    mode_t mask = umask(0);

    umask(mask);
    /* A reference gets exactly 0600; anything else follows the umask. */
    if (mode != 0600)
        mode &= ~mask;

    if (strcmp(path, "-") == 0) {
        if (fwrite(pem, 1, len, stdout) != len || fflush(stdout) != 0) {
            fprintf(stderr, "p11agentctl: writing to standard output: %s\n", strerror(errno));
            return 1;
        }
        return 0;
    }
    if (force) {
        if (asprintf(&tmp, "%s.XXXXXX", path) < 0) {
            tmp = NULL;
            fprintf(stderr, "p11agentctl: out of memory\n");
            goto out;
        }
        fd = mkstemp(tmp);
        tmp_created = fd >= 0;
    } else {
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    }
    if (fd < 0) {
        if (errno == EEXIST)
            fprintf(stderr, "p11agentctl: %s exists; use --force to replace it\n", path);
        else
            fprintf(stderr, "p11agentctl: cannot create %s: %s\n", tmp ? tmp : path,
                    strerror(errno));
        goto out;
    }
    if (fchmod(fd, mode) < 0) {
        fprintf(stderr, "p11agentctl: chmod %s: %s\n", tmp ? tmp : path, strerror(errno));
        goto out;
    }
    while (off < len) {
        ssize_t n = write(fd, pem + off, len - off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "p11agentctl: writing %s: %s\n", tmp ? tmp : path, strerror(errno));
            goto out;
        }
        off += (size_t)n;
    }
    if (fsync(fd) < 0 || close(fd) < 0) {
        fd = -1;
        fprintf(stderr, "p11agentctl: writing %s: %s\n", tmp ? tmp : path, strerror(errno));
        goto out;
    }
    fd = -1;
    if (tmp != NULL && rename(tmp, path) < 0) {
        fprintf(stderr, "p11agentctl: cannot replace %s: %s\n", path, strerror(errno));
        goto out;
    }
    r = 0;
out:
    if (fd >= 0)
        close(fd);
    if (r != 0 && tmp_created)
        unlink(tmp);
    free(tmp);
    return r;
}

/* PEM-encodes der under label into a malloc'd string. */
char *pem_encode(const char *label, const uint8_t *der, size_t len, size_t *ret_len)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL, *out = NULL;
    long n;

    if (b == NULL || len > LONG_MAX || !PEM_write_bio(b, label, "", der, (long)len))
        goto out;
    n = BIO_get_mem_data(b, &data);
    if (n <= 0 || (out = malloc((size_t)n + 1)) == NULL)
        goto out;
    memcpy(out, data, (size_t)n);
    out[n] = '\0';
    *ret_len = (size_t)n;
out:
    BIO_free(b);
    return out;
}
