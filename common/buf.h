/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Bytes from hostile sources (PKCS#11 modules, key-reference files, the
 * pinentry): one bounded reader, one growing writer and one percent-decoder
 * shared by every parser, so a length is checked in one place only.
 *
 * Reader: a view of (p, len) with a sticky error. Every buf_get_* clears its
 * outputs on entry, checks everything, and consumes only on success; after
 * the first failure every call fails with that same error and reason, so a
 * parser may read several fields and check once. The reader never allocates
 * and never copies: results point into the input.
 *
 * DER: single-byte tags, definite lengths in the minimal encoding only,
 * every length bounded by the caller's maximum and by the data left.
 *
 * Writer: a malloc'd buffer that grows up to a maximum; out-of-memory
 * (BUF_ERR_NO_MEMORY) is told apart from exceeding the maximum
 * (BUF_ERR_TOO_LARGE). Sticky like the reader.
 *
 * libc only, no locking: one reader or writer per thread.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One code per cause. Negative; BUF_OK is 0. */
typedef enum buf_status {
    BUF_OK = 0,
    BUF_ERR_TRUNCATED = -1, /* the input ends before the element or field does */
    BUF_ERR_MALFORMED = -2, /* wrong tag, indefinite or non-minimal length, bad escape, NUL */
    BUF_ERR_TOO_LARGE = -3, /* a length above the caller's bound (reader) or maximum (writer) */
    BUF_ERR_NO_MEMORY = -4, /* writer only: allocation failed */
    BUF_ERR_ARGS = -5,      /* a NULL where data was required (a caller bug) */
} buf_status_t;

#define BUF_DER_INTEGER 0x02
#define BUF_DER_BIT_STRING 0x03
#define BUF_DER_OCTET_STRING 0x04
#define BUF_DER_NULL 0x05
#define BUF_DER_OID 0x06
#define BUF_DER_UTF8STRING 0x0c
#define BUF_DER_PRINTABLESTRING 0x13
#define BUF_DER_VISIBLESTRING 0x1a
#define BUF_DER_SEQUENCE 0x30

/* "truncated", "malformed", ... (static strings) */
const char *buf_strerror(int status);

/* ---------------------------------------------------------------- reader */

typedef struct buf_reader {
    const uint8_t *p; /* next byte */
    size_t len;       /* bytes left */
    int err;          /* BUF_OK, or the first failure (sticky) */
    const char *why;  /* static reason of the first failure, or NULL */
} buf_reader_t;

/* A reader over p[0..len). p may be NULL only when len is 0. */
void buf_reader_init(buf_reader_t *r, const void *p, size_t len);
static inline size_t buf_left(const buf_reader_t *r)
{
    return r->err == BUF_OK ? r->len : 0;
}
/* BUF_OK or the sticky error; buf_why: its reason ("" when none). */
int buf_error(const buf_reader_t *r);
const char *buf_why(const buf_reader_t *r);

/* One byte. BUF_OK or BUF_ERR_TRUNCATED. */
int buf_get_u8(buf_reader_t *r, uint8_t *ret);
/* The next byte without consuming it (a failure here is not sticky). */
int buf_peek_u8(const buf_reader_t *r, uint8_t *ret);
/* n bytes, pointing into the input. BUF_OK or BUF_ERR_TRUNCATED. */
int buf_get_bytes(buf_reader_t *r, size_t n, const uint8_t **ret);
/* BUF_OK when nothing is left, else BUF_ERR_MALFORMED ("data after ..."). */
int buf_expect_end(buf_reader_t *r);

/*
 * One DER element with tag `tag`; *ret_sub becomes a reader over its
 * contents (at most max bytes). BUF_OK, BUF_ERR_TRUNCATED (input ends in the
 * header or the contents), BUF_ERR_MALFORMED (other tag, high tag number,
 * indefinite or non-minimal length) or BUF_ERR_TOO_LARGE (length above max).
 * A length that needs more bytes than max does is too large even before the
 * data is looked at; one that fits but runs past the data is truncated.
 */
int buf_get_der(buf_reader_t *r, uint8_t tag, size_t max, buf_reader_t *ret_sub);
/* The same for any tag, returned in *ret_tag. */
int buf_get_der_any(buf_reader_t *r, size_t max, uint8_t *ret_tag, buf_reader_t *ret_sub);
/* The whole remaining input of sub: pointer and length (no copy). */
static inline void buf_rest(const buf_reader_t *sub, const uint8_t **ret, size_t *ret_len)
{
    *ret = sub->err == BUF_OK ? sub->p : NULL;
    *ret_len = buf_left(sub);
}

/* ---------------------------------------------------------------- writer */

typedef struct buf_writer {
    uint8_t *p;
    size_t len, cap, max;
    int err;
} buf_writer_t;

/* An empty writer that refuses to grow beyond max bytes. */
void buf_writer_init(buf_writer_t *w, size_t max);
int buf_put_u8(buf_writer_t *w, uint8_t v);
int buf_put_bytes(buf_writer_t *w, const void *p, size_t n);
/* A DER tag and minimal definite length (the contents follow). */
int buf_put_der_hdr(buf_writer_t *w, uint8_t tag, size_t len);
/* A whole DER element. */
int buf_put_der(buf_writer_t *w, uint8_t tag, const void *p, size_t n);
/* v[0..n) as an unsigned big-endian integer: a DER INTEGER without redundant
 * leading zeros, with one 0x00 in front when the high bit is set (n 0: 0). */
int buf_put_der_uint(buf_writer_t *w, const uint8_t *v, size_t n);
/* Sizes of the above, to write a constructed header first. */
size_t buf_der_size(size_t content_len);
size_t buf_der_uint_size(const uint8_t *v, size_t n);
/* Hands the buffer out (malloc'd, at least 1 byte) and resets w. On an
 * earlier error frees the buffer and returns that error; *ret untouched. */
int buf_writer_finish(buf_writer_t *w, uint8_t **ret, size_t *ret_len);
/* Wipes and frees the buffer (after an error, or instead of finish). */
void buf_writer_clear(buf_writer_t *w);

/* ------------------------------------------------------------- escapes */

/*
 * Percent-decodes s[0..n) ("%XX", hex in any case; every other byte stands
 * for itself) into dst[0..cap). *ret_len is 0 on entry and the decoded
 * length on success. BUF_ERR_MALFORMED for a '%' not followed by two hex
 * digits ("%zz", "%4") and for a NUL, escaped ("%00") or not: decoded text
 * (a PIN) never holds one. BUF_ERR_TOO_LARGE when it does not fit cap. On
 * failure the bytes written to dst are wiped.
 */
int buf_percent_decode(const char *s, size_t n, uint8_t *dst, size_t cap, size_t *ret_len);

/* The value of one hex digit (either case), or -1. */
int buf_hexval(unsigned char c);
