/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Key-reference DER: a strict reader and a writer (see keyref.h). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "keyref.h"

#define TAG_INTEGER BUF_DER_INTEGER
#define TAG_UTF8STRING BUF_DER_UTF8STRING
#define TAG_VISIBLESTRING BUF_DER_VISIBLESTRING
#define TAG_SEQUENCE BUF_DER_SEQUENCE

/* --- URI check --- */

static int tolower_ascii(int c)
{
    return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

/* Is the attribute name in [p, end) (percent-decoded, any case) `want`? */
static bool attr_is(const char *p, const char *end, const char *want)
{
    size_t i = 0, n = strlen(want);

    while (p < end) {
        int c = (unsigned char)*p++;

        int hi = end - p >= 2 ? buf_hexval((unsigned char)p[0]) : -1;
        int lo = end - p >= 2 ? buf_hexval((unsigned char)p[1]) : -1;

        if (c == '%' && hi >= 0 && lo >= 0) {
            c = hi * 16 + lo;
            p += 2;
        }
        if (i >= n || tolower_ascii(c) != want[i])
            return false;
        i++;
    }
    return i == n;
}

int bus_keyref_check_uri(const char *uri, const char **ret_why)
{
    const char *why = NULL, *p, *attr;
    size_t len;

    if (uri == NULL) {
        why = "no URI";
        goto bad;
    }
    len = strlen(uri);
    if (len < 7 || strncasecmp(uri, "pkcs11:", 7) != 0) {
        why = "not a pkcs11: URI";
        goto bad;
    }
    if (len > BUS_KEYREF_MAX_URI) {
        why = "URI too long";
        goto bad;
    }
    for (p = uri; *p != '\0'; p++) {
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) {
            why = "URI holds a character that is not printable ASCII";
            goto bad;
        }
    }
    /* Attributes: path ones separated by ';', query ones (after '?') by
     * '&'. Each is name[=value]. */
    attr = uri + 7;
    for (p = attr;; p++) {
        if (*p == ';' || *p == '&' || *p == '?' || *p == '\0') {
            const char *eq = memchr(attr, '=', (size_t)(p - attr));
            const char *name_end = eq != NULL ? eq : p;

            if (attr_is(attr, name_end, "pin-value") || attr_is(attr, name_end, "pin-source")) {
                why = "URI holds a PIN attribute (pin-value/pin-source); PINs stay in the agent";
                goto bad;
            }
            if (*p == '\0')
                break;
            attr = p + 1;
        }
    }
    return BUS_OK;
bad:
    if (ret_why != NULL)
        *ret_why = why;
    return BUS_ERR_INVALID_ARGS;
}

/* --- DER reading (common/buf.h) --- */

/* A malloc'd copy of a string element's contents in *ret. NUL bytes are
 * refused. BUS_OK, BUS_ERR_INVALID_ARGS (*why set) or BUS_ERR_NO_MEMORY. */
static int der_strdup(const buf_reader_t *el, char **ret, const char **why)
{
    const uint8_t *p;
    size_t n;
    char *out;

    *ret = NULL;
    buf_rest(el, &p, &n);
    if (n > 0 && memchr(p, '\0', n) != NULL) {
        *why = "string holds a NUL byte";
        return BUS_ERR_INVALID_ARGS;
    }
    out = malloc(n + 1);
    if (out == NULL) {
        *why = "out of memory";
        return BUS_ERR_NO_MEMORY;
    }
    if (n > 0)
        memcpy(out, p, n);
    out[n] = '\0';
    *ret = out;
    return BUS_OK;
}

int bus_keyref_decode(const uint8_t *der, size_t len, bus_keyref_t *ret, const char **ret_why)
{
    buf_reader_t all, seq, el;
    bus_keyref_t ref = { 0 };
    const char *why = "malformed";
    uint8_t first, version = 0;
    int r = BUS_ERR_INVALID_ARGS;

    if (der == NULL || len == 0) {
        why = "empty";
        goto err;
    }
    if (len > BUS_KEYREF_MAX_DER) {
        why = "too large for a key reference";
        goto err;
    }
    buf_reader_init(&all, der, len);
    if (buf_get_der(&all, TAG_SEQUENCE, BUS_KEYREF_MAX_DER, &seq) != BUF_OK) {
        why = buf_why(&all);
        goto err;
    }
    if (buf_left(&all) != 0) {
        why = "data after the DER SEQUENCE";
        goto err;
    }
    if (buf_peek_u8(&seq, &first) == BUF_OK && first == TAG_VISIBLESTRING) {
        /* pkcs11-provider: { desc VisibleString, uri UTF8String } */
        ref.format = BUS_KEYREF_PKCS11_PROVIDER;
        ref.type = BUS_KEY_UNKNOWN;
        buf_get_der(&seq, TAG_VISIBLESTRING, BUS_KEYREF_MAX_DER, &el);
    } else {
        ref.format = BUS_KEYREF_P11AGENT;
        if (buf_get_der(&seq, TAG_INTEGER, BUS_KEYREF_MAX_DER, &el) != BUF_OK) {
            why = buf_why(&seq);
            goto err;
        }
        /* Only version 1 exists: the single content byte 0x01. */
        if (buf_left(&el) != 1 || buf_get_u8(&el, &version) != BUF_OK ||
            version != BUS_KEYREF_VERSION) {
            why = buf_left(&el) == 0 && version == 0
                          ? "empty version INTEGER"
                          : "unsupported key reference version (this p11agent reads 1)";
            goto err;
        }
    }
    if (buf_get_der(&seq, TAG_UTF8STRING, BUS_KEYREF_MAX_URI, &el) != BUF_OK) {
        why = buf_why(&seq);
        goto err;
    }
    r = der_strdup(&el, &ref.uri, &why);
    if (r != BUS_OK)
        goto err;
    r = BUS_ERR_INVALID_ARGS;
    if (ref.format == BUS_KEYREF_P11AGENT) {
        char *type;

        if (buf_get_der(&seq, TAG_UTF8STRING, 64, &el) != BUF_OK) {
            why = buf_why(&seq);
            goto err;
        }
        r = der_strdup(&el, &type, &why);
        if (r != BUS_OK)
            goto err;
        r = BUS_ERR_INVALID_ARGS;
        ref.type = bus_key_type_from_name(type);
        free(type);
        if (ref.type == BUS_KEY_UNKNOWN) {
            why = "unknown key type (expected RSA, EC, ED25519 or ED448)";
            goto err;
        }
    }
    if (buf_left(&seq) != 0) {
        why = "unexpected element at the end of the SEQUENCE";
        goto err;
    }
    if (bus_keyref_check_uri(ref.uri, &why) < 0)
        goto err;
    *ret = ref;
    return BUS_OK;
err:
    bus_keyref_clear(&ref);
    if (ret_why != NULL)
        *ret_why = why;
    return r;
}

void bus_keyref_clear(bus_keyref_t *ref)
{
    if (ref == NULL)
        return;
    free(ref->uri);
    ref->uri = NULL;
    ref->type = BUS_KEY_UNKNOWN;
}

/* --- DER writing (common/buf.h) --- */

int bus_keyref_encode(const char *uri, bus_key_type_t type, uint8_t **ret_der, size_t *ret_len,
                      const char **ret_why)
{
    const char *tname = bus_key_type_name(type), *why = NULL;
    static const uint8_t version = BUS_KEYREF_VERSION;
    size_t ulen, tlen;
    buf_writer_t w;
    int r;

    if (bus_keyref_check_uri(uri, &why) < 0)
        goto bad;
    if (type == BUS_KEY_UNKNOWN || tname == NULL || bus_key_type_from_name(tname) != type) {
        why = "unknown key type";
        goto bad;
    }
    ulen = strlen(uri);
    tlen = strlen(tname);
    buf_writer_init(&w, BUS_KEYREF_MAX_DER);
    buf_put_der_hdr(&w, TAG_SEQUENCE,
                    buf_der_size(1) + buf_der_size(ulen) + buf_der_size(tlen));
    buf_put_der(&w, TAG_INTEGER, &version, 1);
    buf_put_der(&w, TAG_UTF8STRING, uri, ulen);
    buf_put_der(&w, TAG_UTF8STRING, tname, tlen);
    r = buf_writer_finish(&w, ret_der, ret_len);
    if (r == BUF_ERR_NO_MEMORY)
        return BUS_ERR_NO_MEMORY;
    if (r != BUF_OK) {
        why = "too large for a key reference";
        goto bad;
    }
    return BUS_OK;
bad:
    if (ret_why != NULL)
        *ret_why = why;
    return BUS_ERR_INVALID_ARGS;
}
