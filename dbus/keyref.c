/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Key-reference DER: a strict reader and a writer (see keyref.h). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "keyref.h"

#define TAG_INTEGER 0x02
#define TAG_UTF8STRING 0x0c
#define TAG_VISIBLESTRING 0x1a
#define TAG_SEQUENCE 0x30

/* --- URI check --- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

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

        if (c == '%' && end - p >= 2 && hexval(p[0]) >= 0 && hexval(p[1]) >= 0) {
            c = hexval(p[0]) * 16 + hexval(p[1]);
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

/* --- DER reading --- */

typedef struct der {
    const uint8_t *p;
    size_t len;
} der_t;

/* Reads one element with tag `tag` from d into *ret (its contents). */
static int der_next(der_t *d, uint8_t tag, der_t *ret, const char **why)
{
    size_t n, hdr;

    if (d->len < 2) {
        *why = d->len == 0 ? "DER ends early (an element is missing)" : "DER truncated";
        return -1;
    }
    if (d->p[0] != tag) {
        *why = "unexpected DER tag";
        return -1;
    }
    if (d->p[1] < 0x80) {
        n = d->p[1];
        hdr = 2;
    } else {
        size_t k = d->p[1] & 0x7f;

        if (k == 0) {
            *why = "indefinite DER length";
            return -1;
        }
        if (k > 2) {
            *why = "DER length too large";
            return -1;
        }
        if (d->len < 2 + k) {
            *why = "DER truncated";
            return -1;
        }
        n = d->p[2];
        if (k == 2)
            n = n << 8 | d->p[3];
        if (n < 0x80 || (k == 2 && n < 0x100)) {
            *why = "DER length not minimally encoded";
            return -1;
        }
        hdr = 2 + k;
    }
    if (n > d->len - hdr) {
        *why = "DER length exceeds the data (truncated?)";
        return -1;
    }
    ret->p = d->p + hdr;
    ret->len = n;
    d->p += hdr + n;
    d->len -= hdr + n;
    return 0;
}

static char *der_strdup(const der_t *s, const char **why)
{
    char *out;

    if (memchr(s->p, '\0', s->len) != NULL) {
        *why = "string holds a NUL byte";
        return NULL;
    }
    out = malloc(s->len + 1);
    if (out == NULL) {
        *why = "out of memory";
        return NULL;
    }
    memcpy(out, s->p, s->len);
    out[s->len] = '\0';
    return out;
}

int bus_keyref_decode(const uint8_t *der, size_t len, bus_keyref_t *ret, const char **ret_why)
{
    der_t all = { der, len }, seq, el;
    bus_keyref_t ref = { 0 };
    const char *why = "malformed";
    int r = BUS_ERR_INVALID_ARGS;

    if (der == NULL || len == 0) {
        why = "empty";
        goto err;
    }
    if (len > BUS_KEYREF_MAX_DER) {
        why = "too large for a key reference";
        goto err;
    }
    if (der_next(&all, TAG_SEQUENCE, &seq, &why) < 0)
        goto err;
    if (all.len != 0) {
        why = "data after the DER SEQUENCE";
        goto err;
    }
    if (seq.len > 0 && seq.p[0] == TAG_VISIBLESTRING) {
        /* pkcs11-provider: { desc VisibleString, uri UTF8String } */
        ref.format = BUS_KEYREF_PKCS11_PROVIDER;
        ref.type = BUS_KEY_UNKNOWN;
        if (der_next(&seq, TAG_VISIBLESTRING, &el, &why) < 0)
            goto err;
    } else {
        ref.format = BUS_KEYREF_P11AGENT;
        if (der_next(&seq, TAG_INTEGER, &el, &why) < 0)
            goto err;
        /* Only version 1 exists: the single content byte 0x01. */
        if (el.len != 1 || el.p[0] != BUS_KEYREF_VERSION) {
            why = el.len == 0 ? "empty version INTEGER"
                              : "unsupported key reference version (this p11agent reads 1)";
            goto err;
        }
    }
    if (der_next(&seq, TAG_UTF8STRING, &el, &why) < 0)
        goto err;
    if ((ref.uri = der_strdup(&el, &why)) == NULL) {
        if (el.len > 0 && memchr(el.p, '\0', el.len) == NULL)
            r = BUS_ERR_NO_MEMORY;
        goto err;
    }
    if (ref.format == BUS_KEYREF_P11AGENT) {
        char *type;

        if (der_next(&seq, TAG_UTF8STRING, &el, &why) < 0)
            goto err;
        if ((type = der_strdup(&el, &why)) == NULL)
            goto err;
        ref.type = bus_key_type_from_name(type);
        free(type);
        if (ref.type == BUS_KEY_UNKNOWN) {
            why = "unknown key type (expected RSA, EC, ED25519 or ED448)";
            goto err;
        }
    }
    if (seq.len != 0) {
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

/* --- DER writing --- */

static size_t der_len_size(size_t n)
{
    return n < 0x80 ? 1 : n < 0x100 ? 2 : 3;
}

static uint8_t *der_put_hdr(uint8_t *p, uint8_t tag, size_t n)
{
    *p++ = tag;
    if (n < 0x80) {
        *p++ = (uint8_t)n;
    } else if (n < 0x100) {
        *p++ = 0x81;
        *p++ = (uint8_t)n;
    } else {
        *p++ = 0x82;
        *p++ = (uint8_t)(n >> 8);
        *p++ = (uint8_t)n;
    }
    return p;
}

int bus_keyref_encode(const char *uri, bus_key_type_t type, uint8_t **ret_der, size_t *ret_len,
                      const char **ret_why)
{
    const char *tname = bus_key_type_name(type), *why = NULL;
    size_t ulen, tlen, body, total;
    uint8_t *der, *p;

    if (bus_keyref_check_uri(uri, &why) < 0)
        goto bad;
    if (type == BUS_KEY_UNKNOWN || tname == NULL || bus_key_type_from_name(tname) != type) {
        why = "unknown key type";
        goto bad;
    }
    ulen = strlen(uri);
    tlen = strlen(tname);
    body = 3 + 1 + der_len_size(ulen) + ulen + 1 + der_len_size(tlen) + tlen;
    total = 1 + der_len_size(body) + body;
    der = malloc(total);
    if (der == NULL)
        return BUS_ERR_NO_MEMORY;
    p = der_put_hdr(der, TAG_SEQUENCE, body);
    p = der_put_hdr(p, TAG_INTEGER, 1);
    *p++ = BUS_KEYREF_VERSION;
    p = der_put_hdr(p, TAG_UTF8STRING, ulen);
    memcpy(p, uri, ulen);
    p += ulen;
    p = der_put_hdr(p, TAG_UTF8STRING, tlen);
    memcpy(p, tname, tlen);
    *ret_der = der;
    *ret_len = total;
    return BUS_OK;
bad:
    if (ret_why != NULL)
        *ret_why = why;
    return BUS_ERR_INVALID_ARGS;
}
