/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Bounded reader, growing writer, percent-decoder (see buf.h). */
#include <stdlib.h>
#include <string.h>

#include "buf.h"

const char *buf_strerror(int status)
{
    switch (status) {
    case BUF_OK: return "success";
    case BUF_ERR_TRUNCATED: return "truncated";
    case BUF_ERR_MALFORMED: return "malformed";
    case BUF_ERR_TOO_LARGE: return "too large";
    case BUF_ERR_NO_MEMORY: return "out of memory";
    case BUF_ERR_ARGS: return "bad arguments";
    default: return "unknown error";
    }
}

/* ---------------------------------------------------------------- reader */

void buf_reader_init(buf_reader_t *r, const void *p, size_t len)
{
    r->p = p;
    r->len = len;
    r->err = BUF_OK;
    r->why = NULL;
    if (p == NULL && len > 0) {
        r->len = 0;
        r->err = BUF_ERR_ARGS;
        r->why = "no data";
    }
}

int buf_error(const buf_reader_t *r)
{
    return r->err;
}

const char *buf_why(const buf_reader_t *r)
{
    return r->why != NULL ? r->why : r->err != BUF_OK ? buf_strerror(r->err) : "";
}

/* Records the first failure; later ones keep it. */
static int fail(buf_reader_t *r, int err, const char *why)
{
    if (r->err == BUF_OK) {
        r->err = err;
        r->why = why;
    }
    return r->err;
}

int buf_get_u8(buf_reader_t *r, uint8_t *ret)
{
    *ret = 0;
    if (r->err != BUF_OK)
        return r->err;
    if (r->len < 1)
        return fail(r, BUF_ERR_TRUNCATED, "data ends early");
    *ret = r->p[0];
    r->p++;
    r->len--;
    return BUF_OK;
}

int buf_peek_u8(const buf_reader_t *r, uint8_t *ret)
{
    *ret = 0;
    if (r->err != BUF_OK)
        return r->err;
    if (r->len < 1)
        return BUF_ERR_TRUNCATED;
    *ret = r->p[0];
    return BUF_OK;
}

int buf_get_bytes(buf_reader_t *r, size_t n, const uint8_t **ret)
{
    *ret = NULL;
    if (r->err != BUF_OK)
        return r->err;
    if (n > r->len)
        return fail(r, BUF_ERR_TRUNCATED, "data ends early");
    *ret = r->p;
    r->p += n;
    r->len -= n;
    return BUF_OK;
}

int buf_expect_end(buf_reader_t *r)
{
    if (r->err != BUF_OK)
        return r->err;
    if (r->len != 0)
        return fail(r, BUF_ERR_MALFORMED, "data after the last element");
    return BUF_OK;
}

/* Bytes needed to write n in base 256 (0 for 0). */
static size_t bytes_for(size_t n)
{
    size_t k = 0;

    while (n > 0) {
        k++;
        n >>= 8;
    }
    return k;
}

int buf_get_der_any(buf_reader_t *r, size_t max, uint8_t *ret_tag, buf_reader_t *ret_sub)
{
    size_t n, hdr, k;
    uint8_t tag;

    *ret_tag = 0;
    buf_reader_init(ret_sub, NULL, 0);
    if (r->err != BUF_OK)
        goto sticky;
    if (r->len < 2) {
        fail(r, BUF_ERR_TRUNCATED,
             r->len == 0 ? "DER ends early (an element is missing)" : "DER truncated");
        goto sticky;
    }
    tag = r->p[0];
    if ((tag & 0x1f) == 0x1f) {
        fail(r, BUF_ERR_MALFORMED, "DER tag with a high tag number");
        goto sticky;
    }
    if (r->p[1] < 0x80) {
        n = r->p[1];
        hdr = 2;
    } else {
        k = r->p[1] & 0x7f;
        if (k == 0) {
            fail(r, BUF_ERR_MALFORMED, "indefinite DER length");
            goto sticky;
        }
        /* More length bytes than max needs: too large whatever follows. */
        if (k > sizeof(size_t) || k > bytes_for(max < 0x80 ? 0x80 : max)) {
            fail(r, BUF_ERR_TOO_LARGE, "DER length too large");
            goto sticky;
        }
        if (r->len - 2 < k) {
            fail(r, BUF_ERR_TRUNCATED, "DER truncated");
            goto sticky;
        }
        n = 0;
        for (size_t i = 0; i < k; i++)
            n = n << 8 | r->p[2 + i];
        if (n < 0x80 || r->p[2] == 0) {
            fail(r, BUF_ERR_MALFORMED, "DER length not minimally encoded");
            goto sticky;
        }
        hdr = 2 + k;
    }
    if (n > r->len - hdr) {
        fail(r, BUF_ERR_TRUNCATED, "DER length exceeds the data (truncated?)");
        goto sticky;
    }
    if (n > max) {
        fail(r, BUF_ERR_TOO_LARGE, "DER length too large");
        goto sticky;
    }
    buf_reader_init(ret_sub, r->p + hdr, n);
    *ret_tag = tag;
    r->p += hdr + n;
    r->len -= hdr + n;
    return BUF_OK;
sticky:
    /* the sub-reader carries the failure too, so a caller that reads on
     * from it without checking stops at once */
    ret_sub->err = r->err;
    ret_sub->why = r->why;
    return r->err;
}

int buf_get_der(buf_reader_t *r, uint8_t tag, size_t max, buf_reader_t *ret_sub)
{
    uint8_t got;

    buf_reader_init(ret_sub, NULL, 0);
    if (r->err == BUF_OK && r->len >= 1 && r->p[0] != tag) {
        fail(r, BUF_ERR_MALFORMED, "unexpected DER tag");
        ret_sub->err = r->err;
        ret_sub->why = r->why;
        return r->err;
    }
    return buf_get_der_any(r, max, &got, ret_sub);
}

/* ---------------------------------------------------------------- writer */

void buf_writer_init(buf_writer_t *w, size_t max)
{
    w->p = NULL;
    w->len = 0;
    w->cap = 0;
    w->max = max;
    w->err = BUF_OK;
}

/* Room for n more bytes. */
static int reserve(buf_writer_t *w, size_t n)
{
    size_t want;
    uint8_t *np;

    if (w->err != BUF_OK)
        return w->err;
    if (n > w->max || w->len > w->max - n) {
        w->err = BUF_ERR_TOO_LARGE;
        return w->err;
    }
    if (w->len + n <= w->cap)
        return BUF_OK;
    want = w->cap < 64 ? 64 : w->cap;
    while (want < w->len + n)
        want = want > w->max / 2 ? w->max : want * 2;
    if (want > w->max)
        want = w->max;
    /* No realloc: the old buffer is wiped before it is let go. */
    np = malloc(want ? want : 1);
    if (np == NULL) {
        w->err = BUF_ERR_NO_MEMORY;
        return w->err;
    }
    if (w->len > 0)
        memcpy(np, w->p, w->len);
    if (w->p != NULL) {
        explicit_bzero(w->p, w->cap);
        free(w->p);
    }
    w->p = np;
    w->cap = want;
    return BUF_OK;
}

int buf_put_bytes(buf_writer_t *w, const void *p, size_t n)
{
    int r;

    if (p == NULL && n > 0) {
        if (w->err == BUF_OK)
            w->err = BUF_ERR_ARGS;
        return w->err;
    }
    r = reserve(w, n);
    if (r != BUF_OK || n == 0)
        return r;
    memcpy(w->p + w->len, p, n);
    w->len += n;
    return BUF_OK;
}

int buf_put_u8(buf_writer_t *w, uint8_t v)
{
    return buf_put_bytes(w, &v, 1);
}

size_t buf_der_size(size_t content_len)
{
    return 1 + (content_len < 0x80 ? 1 : 1 + bytes_for(content_len)) + content_len;
}

int buf_put_der_hdr(buf_writer_t *w, uint8_t tag, size_t len)
{
    uint8_t hdr[2 + sizeof(size_t)];
    size_t k, n = 0;

    hdr[n++] = tag;
    if (len < 0x80) {
        hdr[n++] = (uint8_t)len;
    } else {
        k = bytes_for(len);
        hdr[n++] = (uint8_t)(0x80 | k);
        for (size_t i = k; i > 0; i--)
            hdr[n++] = (uint8_t)(len >> (8 * (i - 1)));
    }
    return buf_put_bytes(w, hdr, n);
}

int buf_put_der(buf_writer_t *w, uint8_t tag, const void *p, size_t n)
{
    buf_put_der_hdr(w, tag, n);
    return buf_put_bytes(w, p, n);
}

/* The significant bytes of an unsigned integer, and whether it needs 0x00. */
static void uint_bounds(const uint8_t **v, size_t *n, bool *pad)
{
    while (*n > 0 && (*v)[0] == 0) {
        (*v)++;
        (*n)--;
    }
    *pad = *n == 0 || ((*v)[0] & 0x80) != 0;
}

size_t buf_der_uint_size(const uint8_t *v, size_t n)
{
    bool pad;

    if (v == NULL)
        n = 0;
    uint_bounds(&v, &n, &pad);
    return buf_der_size(n + pad);
}

int buf_put_der_uint(buf_writer_t *w, const uint8_t *v, size_t n)
{
    bool pad;

    if (v == NULL && n > 0) {
        if (w->err == BUF_OK)
            w->err = BUF_ERR_ARGS;
        return w->err;
    }
    uint_bounds(&v, &n, &pad);
    buf_put_der_hdr(w, BUF_DER_INTEGER, n + pad);
    if (pad)
        buf_put_u8(w, 0x00);
    return buf_put_bytes(w, v, n);
}

int buf_writer_finish(buf_writer_t *w, uint8_t **ret, size_t *ret_len)
{
    int r = w->err;

    if (r == BUF_OK && w->p == NULL)
        r = reserve(w, 1); /* an empty result is still a buffer */
    if (r != BUF_OK) {
        buf_writer_clear(w);
        w->err = r;
        return r;
    }
    *ret = w->p;
    *ret_len = w->len;
    w->p = NULL;
    w->len = w->cap = 0;
    return BUF_OK;
}

void buf_writer_clear(buf_writer_t *w)
{
    if (w == NULL)
        return;
    if (w->p != NULL) {
        explicit_bzero(w->p, w->cap);
        free(w->p);
    }
    w->p = NULL;
    w->len = w->cap = 0;
}

/* ------------------------------------------------------------- escapes */

int buf_hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int buf_percent_decode(const char *s, size_t n, uint8_t *dst, size_t cap, size_t *ret_len)
{
    size_t i = 0, o = 0;
    int r = BUF_OK;

    *ret_len = 0;
    if ((s == NULL && n > 0) || (dst == NULL && cap > 0))
        return BUF_ERR_ARGS;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        int hi, lo;

        if (c == '%') {
            if (n - i < 3 || (hi = buf_hexval((unsigned char)s[i + 1])) < 0 ||
                (lo = buf_hexval((unsigned char)s[i + 2])) < 0) {
                r = BUF_ERR_MALFORMED;
                break;
            }
            c = (unsigned char)(hi << 4 | lo);
            i += 3;
        } else {
            i++;
        }
        if (c == '\0') {
            r = BUF_ERR_MALFORMED;
            break;
        }
        if (o >= cap) {
            r = BUF_ERR_TOO_LARGE;
            break;
        }
        dst[o++] = c;
    }
    if (r != BUF_OK) {
        if (o > 0)
            explicit_bzero(dst, o);
        return r;
    }
    *ret_len = o;
    return BUF_OK;
}
