/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests for common/: UTF-8 validation, log escaping, D-Bus-safe copies,
 * the bounded reader/writer and the percent-decoder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"
#include "text.h"

#define V(lit) text_utf8_valid(lit, sizeof(lit) - 1)

static void test_common_utf8_valid(void **state)
{
    assert_true(V(""));
    assert_true(V("plain ascii"));
    assert_true(V("\xc3\xa9"));             /* é */
    assert_true(V("\xe2\x82\xac"));         /* € */
    assert_true(V("\xf0\x9f\x94\x91"));     /* U+1F511 */
    assert_true(V("\xf4\x8f\xbf\xbf"));     /* U+10FFFF */
    assert_false(V("\xff"));
    assert_false(V("x\xc3"));               /* cut in half */
    assert_false(V("\xc3\xa9\xa9"));        /* stray continuation */
    assert_false(V("\xc0\xaf"));            /* overlong '/' */
    assert_false(V("\xe0\x80\xaf"));        /* overlong, 3 bytes */
    assert_false(V("\xf0\x80\x80\xaf"));    /* overlong, 4 bytes */
    assert_false(V("\xed\xa0\x80"));        /* surrogate U+D800 */
    assert_false(V("\xf4\x90\x80\x80"));    /* above U+10FFFF */
    assert_false(V("a\0b"));                /* NUL */
}

static void test_common_escape_controls_quotes_invalid(void **state)
{
    char out[128];
    const char in[] = "a\"b\\c\nd\re\tf\x01g\x7f\xff\xc3\xa9";

    assert_true(text_escape(out, sizeof(out), in, sizeof(in) - 1));
    assert_string_equal(out, "a\\\"b\\\\c\\nd\\re\\tf\\x01g\\x7f\\xff\xc3\xa9");
    /* a forged log line stays on one line */
    assert_true(text_escape(out, sizeof(out), "x\nerror: forged", 15));
    assert_null(strchr(out, '\n'));
}

static void test_common_escape_cuts_at_boundaries(void **state)
{
    char big[4096], out[32];

    /* "x" + é*600: the copy is cut before a character, never inside one */
    big[0] = 'x';
    for (size_t i = 0; i < 600; i++)
        memcpy(big + 1 + 2 * i, "\xc3\xa9", 2);
    for (size_t size = 1; size <= sizeof(out); size++) {
        bool all = text_escape(out, size, big, 1201);

        assert_false(all);
        assert_true(strlen(out) < size);
        assert_true(text_utf8_valid(out, strlen(out)));
    }
    /* an escape is never cut either: "\x" without its digits */
    for (size_t size = 1; size <= 12; size++) {
        text_escape(out, size, "\xff\xff\xff\xff", 4);
        assert_true(strlen(out) < size);
        for (const char *p = strstr(out, "\\x"); p; p = strstr(p + 1, "\\x"))
            assert_true(p[2] == 'f' && p[3] == 'f');
    }
    /* exactly fitting input is not marked as cut */
    assert_true(text_escape(out, 4, "abc", 3));
    assert_string_equal(out, "abc");
}

static void test_common_dbus_safe(void **state)
{
    char big[1300], *s;

    s = text_dbus_safe("ok \xc3\xa9", 64);
    assert_string_equal(s, "ok \xc3\xa9");
    free(s);
    s = text_dbus_safe("bad \xff\xc3 end", 64);
    assert_string_equal(s, "bad \xef\xbf\xbd\xef\xbf\xbd end");
    free(s);
    s = text_dbus_safe(NULL, 64);
    assert_string_equal(s, "");
    free(s);

    big[0] = 'x';
    for (size_t i = 0; i < 600; i++)
        memcpy(big + 1 + 2 * i, "\xc3\xa9", 2);
    big[1201] = '\0';
    for (size_t max = 4; max < 1300; max += 7) {
        s = text_dbus_safe(big, max);
        assert_non_null(s);
        assert_true(strlen(s) <= max);
        assert_true(text_utf8_valid(s, strlen(s)));
        if (max < 1201)
            assert_memory_equal(s + strlen(s) - 3, "...", 3);
        else
            assert_string_equal(s, big);
        free(s);
    }
    /* all-invalid input grows 3x but never past max */
    memset(big, 0xff, 1000);
    big[1000] = '\0';
    s = text_dbus_safe(big, 100);
    assert_true(strlen(s) <= 100);
    assert_true(text_utf8_valid(s, strlen(s)));
    free(s);
}

/* ------------------------------------------------------------ buf.h */

static void test_common_buf_reader_basic(void **state)
{
    static const uint8_t in[] = { 1, 2, 3, 4 };
    buf_reader_t r;
    const uint8_t *p = in;
    uint8_t v = 0xaa;

    buf_reader_init(&r, in, sizeof(in));
    assert_int_equal(buf_get_u8(&r, &v), BUF_OK);
    assert_int_equal(v, 1);
    assert_int_equal(buf_peek_u8(&r, &v), BUF_OK);
    assert_int_equal(v, 2);
    assert_int_equal(buf_left(&r), 3);
    /* asking for more than is left: output cleared, nothing consumed, sticky */
    assert_int_equal(buf_get_bytes(&r, 4, &p), BUF_ERR_TRUNCATED);
    assert_null(p);
    assert_int_equal(buf_error(&r), BUF_ERR_TRUNCATED);
    assert_int_equal(buf_left(&r), 0);
    v = 0xaa;
    assert_int_equal(buf_get_u8(&r, &v), BUF_ERR_TRUNCATED);
    assert_int_equal(v, 0);
    assert_int_equal(buf_get_bytes(&r, 0, &p), BUF_ERR_TRUNCATED);
    /* the exact amount works and the end is the end */
    buf_reader_init(&r, in, sizeof(in));
    assert_int_equal(buf_get_bytes(&r, 4, &p), BUF_OK);
    assert_ptr_equal(p, in);
    assert_int_equal(buf_expect_end(&r), BUF_OK);
    assert_int_equal(buf_get_u8(&r, &v), BUF_ERR_TRUNCATED);
    /* trailing data */
    buf_reader_init(&r, in, sizeof(in));
    assert_int_equal(buf_get_u8(&r, &v), BUF_OK);
    assert_int_equal(buf_expect_end(&r), BUF_ERR_MALFORMED);
    /* NULL data with a length is a caller bug, not a crash */
    buf_reader_init(&r, NULL, 5);
    assert_int_equal(buf_get_u8(&r, &v), BUF_ERR_ARGS);
}

/* Reads one element with tag t and bound max from in; returns the status. */
static int der1(const uint8_t *in, size_t n, uint8_t t, size_t max, size_t *ret_len)
{
    buf_reader_t r, sub;
    int s;

    buf_reader_init(&r, in, n);
    s = buf_get_der(&r, t, max, &sub);
    *ret_len = buf_left(&sub);
    if (s != BUF_OK) {
        /* a failed read consumes nothing and leaves an empty sub-reader */
        assert_int_equal(buf_left(&sub), 0);
        assert_int_equal(buf_error(&sub), s);
        assert_int_equal(buf_error(&r), s);
        assert_true(strlen(buf_why(&r)) > 0);
    }
    return s;
}

static void test_common_buf_der_lengths(void **state)
{
    uint8_t big[300];
    size_t len;

    memset(big, 'a', sizeof(big));
    /* short form, long forms, exact fits */
    assert_int_equal(der1((const uint8_t[]){ 0x04, 0x00 }, 2, 0x04, 10, &len), BUF_OK);
    assert_int_equal(len, 0);
    assert_int_equal(der1((const uint8_t[]){ 0x04, 0x02, 1, 2 }, 4, 0x04, 10, &len), BUF_OK);
    assert_int_equal(len, 2);
    big[0] = 0x04, big[1] = 0x81, big[2] = 0x80;
    assert_int_equal(der1(big, 3 + 0x80, 0x04, 1000, &len), BUF_OK);
    assert_int_equal(len, 0x80);
    big[1] = 0x82, big[2] = 0x01, big[3] = 0x00;
    assert_int_equal(der1(big, 4 + 0x100, 0x04, 1000, &len), BUF_OK);
    assert_int_equal(len, 0x100);
    /* ... one byte short: truncated */
    assert_int_equal(der1(big, 3 + 0x100, 0x04, 1000, &len), BUF_ERR_TRUNCATED);
    /* ... above the caller's bound: too large */
    assert_int_equal(der1(big, 4 + 0x100, 0x04, 0xff, &len), BUF_ERR_TOO_LARGE);
    /* wrong tag, high tag number */
    assert_int_equal(der1((const uint8_t[]){ 0x04, 0x00 }, 2, 0x02, 10, &len), BUF_ERR_MALFORMED);
    assert_int_equal(der1((const uint8_t[]){ 0x1f, 0x01, 0x00 }, 3, 0x1f, 10, &len),
                     BUF_ERR_MALFORMED);
    /* indefinite, non-minimal (short value in long form, leading zero) */
    assert_int_equal(der1((const uint8_t[]){ 0x30, 0x80, 0, 0 }, 4, 0x30, 10, &len),
                     BUF_ERR_MALFORMED);
    assert_int_equal(der1((const uint8_t[]){ 0x04, 0x81, 0x01, 0 }, 4, 0x04, 1000, &len),
                     BUF_ERR_MALFORMED);
    big[1] = 0x82, big[2] = 0x00, big[3] = 0x81;
    assert_int_equal(der1(big, 4 + 0x81, 0x04, 1000, &len), BUF_ERR_MALFORMED);
    /* lengths no input of this bound could have: too large, at once */
    assert_int_equal(der1((const uint8_t[]){ 0x04, 0x84, 0xff, 0xff, 0xff, 0xff }, 6, 0x04,
                          65535, &len),
                     BUF_ERR_TOO_LARGE);
    assert_int_equal(der1((const uint8_t[]){ 0x04, 0x89, 1, 0, 0, 0, 0, 0, 0, 0, 0 }, 11, 0x04,
                          SIZE_MAX, &len),
                     BUF_ERR_TOO_LARGE);
    /* header cut: empty, tag only, length bytes missing */
    assert_int_equal(der1(NULL, 0, 0x04, 10, &len), BUF_ERR_TRUNCATED);
    assert_int_equal(der1((const uint8_t[]){ 0x04 }, 1, 0x04, 10, &len), BUF_ERR_TRUNCATED);
    assert_int_equal(der1((const uint8_t[]){ 0x04, 0x82, 0x01 }, 3, 0x04, 1000, &len),
                     BUF_ERR_TRUNCATED);
    /* a length that fits the bound but runs past the data */
    assert_int_equal(der1((const uint8_t[]){ 0x04, 0x7f }, 2, 0x04, 1000, &len),
                     BUF_ERR_TRUNCATED);
}

static void test_common_buf_der_nested(void **state)
{
    /* SEQUENCE { INTEGER 1, OCTET STRING "ab" } */
    static const uint8_t in[] = { 0x30, 0x07, 0x02, 0x01, 0x01, 0x04, 0x02, 'a', 'b' };
    buf_reader_t r, seq, el;
    const uint8_t *p;
    uint8_t tag, v;
    size_t n;

    buf_reader_init(&r, in, sizeof(in));
    assert_int_equal(buf_get_der(&r, BUF_DER_SEQUENCE, 100, &seq), BUF_OK);
    assert_int_equal(buf_expect_end(&r), BUF_OK);
    assert_int_equal(buf_get_der(&seq, BUF_DER_INTEGER, 8, &el), BUF_OK);
    assert_int_equal(buf_get_u8(&el, &v), BUF_OK);
    assert_int_equal(v, 1);
    assert_int_equal(buf_get_der_any(&seq, 8, &tag, &el), BUF_OK);
    assert_int_equal(tag, BUF_DER_OCTET_STRING);
    buf_rest(&el, &p, &n);
    assert_int_equal(n, 2);
    assert_memory_equal(p, "ab", 2);
    assert_int_equal(buf_expect_end(&seq), BUF_OK);
    /* an inner length that runs past its SEQUENCE (but not past the input) */
    {
        uint8_t bad[sizeof(in)];

        memcpy(bad, in, sizeof(in));
        bad[1] = 0x04; /* the SEQUENCE ends inside the OCTET STRING header */
        buf_reader_init(&r, bad, sizeof(bad));
        assert_int_equal(buf_get_der(&r, BUF_DER_SEQUENCE, 100, &seq), BUF_OK);
        assert_int_equal(buf_get_der(&seq, BUF_DER_INTEGER, 8, &el), BUF_OK);
        assert_int_equal(buf_get_der(&seq, BUF_DER_OCTET_STRING, 8, &el), BUF_ERR_TRUNCATED);
        /* sticky: a later read gives the same error, not another one */
        assert_int_equal(buf_get_der(&seq, BUF_DER_NULL, 8, &el), BUF_ERR_TRUNCATED);
        assert_int_equal(buf_error(&el), BUF_ERR_TRUNCATED);
    }
}

static void test_common_buf_writer(void **state)
{
    static const uint8_t big_val[300] = { 0x80 };
    buf_writer_t w;
    uint8_t *out = NULL;
    size_t n = 0;

    /* INTEGER encodings: leading zeros dropped, 0x00 added for the high bit */
    buf_writer_init(&w, 64);
    buf_put_der_uint(&w, (const uint8_t[]){ 0x00, 0x00, 0x7f }, 3);
    buf_put_der_uint(&w, (const uint8_t[]){ 0x00, 0x80 }, 2);
    buf_put_der_uint(&w, (const uint8_t[]){ 0x00, 0x00 }, 2);
    buf_put_der_uint(&w, NULL, 0);
    assert_int_equal(buf_writer_finish(&w, &out, &n), BUF_OK);
    assert_int_equal(n, 3 + 4 + 3 + 3);
    assert_memory_equal(out, ((const uint8_t[]){ 0x02, 0x01, 0x7f, 0x02, 0x02, 0x00, 0x80, 0x02,
                                                 0x01, 0x00, 0x02, 0x01, 0x00 }),
                        n);
    free(out);
    assert_int_equal(buf_der_uint_size((const uint8_t[]){ 0x00, 0x80 }, 2), 4);
    /* long lengths, sizes agree with what is written */
    buf_writer_init(&w, 1024);
    buf_put_der(&w, BUF_DER_OCTET_STRING, big_val, 0x80);
    buf_put_der(&w, BUF_DER_OCTET_STRING, big_val, 0x100);
    buf_put_der_uint(&w, big_val, sizeof(big_val));
    assert_int_equal(buf_writer_finish(&w, &out, &n), BUF_OK);
    assert_int_equal(n, buf_der_size(0x80) + buf_der_size(0x100) +
                            buf_der_uint_size(big_val, sizeof(big_val)));
    assert_memory_equal(out, ((const uint8_t[]){ 0x04, 0x81, 0x80 }), 3);
    assert_memory_equal(out + 3 + 0x80, ((const uint8_t[]){ 0x04, 0x82, 0x01, 0x00 }), 4);
    assert_memory_equal(out + 3 + 0x80 + 4 + 0x100,
                        ((const uint8_t[]){ 0x02, 0x82, 0x01, 0x2d, 0x00, 0x80 }), 6);
    free(out);
    /* the maximum is a hard limit, sticky, and finish hands nothing out */
    buf_writer_init(&w, 10);
    assert_int_equal(buf_put_bytes(&w, big_val, 10), BUF_OK);
    assert_int_equal(buf_put_u8(&w, 1), BUF_ERR_TOO_LARGE);
    assert_int_equal(buf_put_bytes(&w, big_val, 0), BUF_ERR_TOO_LARGE);
    out = NULL;
    assert_int_equal(buf_writer_finish(&w, &out, &n), BUF_ERR_TOO_LARGE);
    assert_null(out);
    assert_null(w.p);
    /* an empty result is a real (1-byte) buffer */
    buf_writer_init(&w, 10);
    assert_int_equal(buf_writer_finish(&w, &out, &n), BUF_OK);
    assert_non_null(out);
    assert_int_equal(n, 0);
    free(out);
    /* a huge length does not wrap the size check */
    buf_writer_init(&w, 100);
    assert_int_equal(buf_put_bytes(&w, big_val, SIZE_MAX), BUF_ERR_TOO_LARGE);
    buf_writer_clear(&w);
}

static int pct(const char *s, uint8_t *out, size_t cap, size_t *n)
{
    *n = 99;
    return buf_percent_decode(s, strlen(s), out, cap, n);
}

static void test_common_buf_percent_decode(void **state)
{
    uint8_t out[16];
    size_t n;

    assert_int_equal(pct("12%2534%0a%4A", out, sizeof(out), &n), BUF_OK);
    assert_int_equal(n, 7);
    assert_memory_equal(out, "12%34\nJ", 7);
    assert_int_equal(pct("", out, sizeof(out), &n), BUF_OK);
    assert_int_equal(n, 0);
    /* bad escapes are refused, never turned into NULs; output wiped */
    memset(out, 0x55, sizeof(out));
    assert_int_equal(pct("1234%zz", out, sizeof(out), &n), BUF_ERR_MALFORMED);
    assert_int_equal(n, 0);
    assert_memory_equal(out, "\0\0\0\0", 4);
    assert_int_equal(pct("12%4", out, sizeof(out), &n), BUF_ERR_MALFORMED);
    assert_int_equal(pct("12%", out, sizeof(out), &n), BUF_ERR_MALFORMED);
    assert_int_equal(pct("%4g", out, sizeof(out), &n), BUF_ERR_MALFORMED);
    assert_int_equal(pct("%+1", out, sizeof(out), &n), BUF_ERR_MALFORMED);
    assert_int_equal(pct("12%0034", out, sizeof(out), &n), BUF_ERR_MALFORMED);
    assert_int_equal(buf_percent_decode("a\0b", 3, out, sizeof(out), &n), BUF_ERR_MALFORMED);
    /* exactly fitting, and one too many */
    assert_int_equal(pct("abcd", out, 4, &n), BUF_OK);
    assert_int_equal(n, 4);
    assert_int_equal(pct("abc%41d", out, 4, &n), BUF_ERR_TOO_LARGE);
    assert_int_equal(n, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_common_utf8_valid),
        cmocka_unit_test(test_common_escape_controls_quotes_invalid),
        cmocka_unit_test(test_common_escape_cuts_at_boundaries),
        cmocka_unit_test(test_common_dbus_safe),
        cmocka_unit_test(test_common_buf_reader_basic),
        cmocka_unit_test(test_common_buf_der_lengths),
        cmocka_unit_test(test_common_buf_der_nested),
        cmocka_unit_test(test_common_buf_writer),
        cmocka_unit_test(test_common_buf_percent_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
