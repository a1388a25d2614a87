/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests for common/: UTF-8 validation, log escaping, D-Bus-safe copies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_common_utf8_valid),
        cmocka_unit_test(test_common_escape_controls_quotes_invalid),
        cmocka_unit_test(test_common_escape_cuts_at_boundaries),
        cmocka_unit_test(test_common_dbus_safe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
