/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for the key-reference DER (dbus/keyref.c): the writer's exact
 * bytes, round trips, pkcs11-provider's format, and malformed input of
 * every kind (truncated, wrong tags, huge or non-minimal lengths, trailing
 * data, NUL bytes, PIN attributes) giving an error and never a crash. The
 * last case decodes every truncation and every single-byte change of a
 * valid reference (run under ASan by tests/run-tests.sh).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "keyref.h"

#define URI "pkcs11:token=t;id=%01;object=k;type=private"

static void encode_ok(const char *uri, bus_key_type_t type, uint8_t **der, size_t *len)
{
    const char *why = NULL;

    assert_int_equal(bus_keyref_encode(uri, type, der, len, &why), BUS_OK);
    assert_non_null(*der);
}

static int decode(const uint8_t *der, size_t len, bus_keyref_t *ref, const char **why)
{
    *why = NULL;
    memset(ref, 0, sizeof(*ref));
    return bus_keyref_decode(der, len, ref, why);
}

/* Expects a refusal whose reason contains `want`. */
static void decode_fails(const uint8_t *der, size_t len, const char *want)
{
    bus_keyref_t ref;
    const char *why;

    assert_int_equal(decode(der, len, &ref, &why), BUS_ERR_INVALID_ARGS);
    assert_non_null(why);
    if (want != NULL && strstr(why, want) == NULL)
        fail_msg("reason '%s' does not contain '%s'", why, want);
    assert_null(ref.uri);
}

static void test_keyref_encode_exact_bytes(void **state)
{
    static const uint8_t want[] = {
        0x30, 0x34, 0x02, 0x01, 0x01, 0x0c, 0x2b, 'p', 'k', 'c', 's', '1', '1', ':', 't', 'o',
        'k', 'e', 'n', '=', 't', ';', 'i', 'd', '=', '%', '0', '1', ';', 'o', 'b', 'j', 'e',
        'c', 't', '=', 'k', ';', 't', 'y', 'p', 'e', '=', 'p', 'r', 'i', 'v', 'a', 't', 'e',
        0x0c, 0x02, 'E', 'C',
    };
    uint8_t *der = NULL;
    size_t len = 0;

    encode_ok(URI, BUS_KEY_EC, &der, &len);
    assert_int_equal(len, sizeof(want));
    assert_memory_equal(der, want, sizeof(want));
    free(der);
}

static void test_keyref_round_trip_every_type(void **state)
{
    static const bus_key_type_t types[] = { BUS_KEY_RSA, BUS_KEY_EC, BUS_KEY_ED25519,
                                            BUS_KEY_ED448 };

    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        uint8_t *der = NULL;
        size_t len = 0;
        bus_keyref_t ref;
        const char *why;

        encode_ok(URI, types[i], &der, &len);
        assert_int_equal(decode(der, len, &ref, &why), BUS_OK);
        assert_int_equal(ref.format, BUS_KEYREF_P11AGENT);
        assert_int_equal(ref.type, types[i]);
        assert_string_equal(ref.uri, URI);
        bus_keyref_clear(&ref);
        free(der);
    }
}

/* Long URIs need the two-byte length forms: 0x81 and 0x82. */
static void test_keyref_round_trip_long_uris(void **state)
{
    static const size_t sizes[] = { 120, 127, 128, 200, 255, 256, 1000, BUS_KEYREF_MAX_URI };

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        char *uri = malloc(sizes[i] + 1);
        uint8_t *der = NULL;
        size_t len = 0;
        bus_keyref_t ref;
        const char *why;

        memcpy(uri, "pkcs11:object=", 14);
        memset(uri + 14, 'a', sizes[i] - 14);
        uri[sizes[i]] = '\0';
        encode_ok(uri, BUS_KEY_RSA, &der, &len);
        assert_int_equal(decode(der, len, &ref, &why), BUS_OK);
        assert_string_equal(ref.uri, uri);
        bus_keyref_clear(&ref);
        free(der);
        free(uri);
    }
}

static void test_keyref_encode_refuses_bad_input(void **state)
{
    char *big = malloc(BUS_KEYREF_MAX_URI + 2);
    uint8_t *der = NULL;
    size_t len = 0;
    const char *why = NULL;

    assert_int_equal(bus_keyref_encode(URI "?pin-value=1234", BUS_KEY_EC, &der, &len, &why),
                     BUS_ERR_INVALID_ARGS);
    assert_non_null(strstr(why, "PIN"));
    assert_int_equal(bus_keyref_encode("pkcs11:pin-source=file:/x;object=k", BUS_KEY_EC, &der,
                                       &len, &why),
                     BUS_ERR_INVALID_ARGS);
    assert_int_equal(bus_keyref_encode("http://x", BUS_KEY_EC, &der, &len, &why),
                     BUS_ERR_INVALID_ARGS);
    assert_int_equal(bus_keyref_encode(URI, BUS_KEY_UNKNOWN, &der, &len, &why),
                     BUS_ERR_INVALID_ARGS);
    assert_int_equal(bus_keyref_encode(NULL, BUS_KEY_EC, &der, &len, &why),
                     BUS_ERR_INVALID_ARGS);
    memcpy(big, "pkcs11:object=", 14);
    memset(big + 14, 'a', BUS_KEYREF_MAX_URI + 1 - 14);
    big[BUS_KEYREF_MAX_URI + 1] = '\0';
    assert_int_equal(bus_keyref_encode(big, BUS_KEY_EC, &der, &len, &why),
                     BUS_ERR_INVALID_ARGS);
    assert_null(der);
    free(big);
}

static void test_keyref_check_uri_pin_attributes(void **state)
{
    static const char *const bad[] = {
        "pkcs11:object=k?pin-value=1",
        "pkcs11:object=k?module-name=x&PIN-VALUE=1",
        "pkcs11:object=k?pin-source=file:/etc/pin",
        "pkcs11:pin-value=1;object=k",
        "pkcs11:object=k;Pin-Source=x",
        "pkcs11:object=k?pin%2dvalue=1",
        "pkcs11:object=k?pin-value",
        "pkcs11:object=k with space",
        "pkcs11:object=k\x01",
        "pkcs11:object=\xc3\xa9",
        "PKCS12:object=k",
        "",
    };
    static const char *const good[] = {
        "pkcs11:",
        "pkcs11:object=pin-value",        /* a label, not the attribute */
        "pkcs11:object=k;type=private?module-name=softhsm2",
        "PKCS11:token=a%20b;object=k",
        URI,
    };
    const char *why;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why = NULL;
        if (bus_keyref_check_uri(bad[i], &why) != BUS_ERR_INVALID_ARGS)
            fail_msg("accepted '%s'", bad[i]);
        assert_non_null(why);
    }
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        why = NULL;
        if (bus_keyref_check_uri(good[i], &why) != BUS_OK)
            fail_msg("refused '%s': %s", good[i], why);
    }
}

static void test_keyref_decode_pkcs11_provider(void **state)
{
    /* SEQUENCE { VisibleString "d", UTF8String "pkcs11:object=k" } */
    static const uint8_t der[] = { 0x30, 0x14, 0x1a, 0x01, 'd', 0x0c, 0x0f, 'p', 'k', 'c',
                                   's', '1', '1', ':', 'o', 'b', 'j', 'e', 'c', 't', '=',
                                   'k' };
    bus_keyref_t ref;
    const char *why;

    uint8_t fixed[64];

    assert_int_equal(decode(der, sizeof(der), &ref, &why), BUS_OK);
    assert_int_equal(ref.format, BUS_KEYREF_PKCS11_PROVIDER);
    assert_int_equal(ref.type, BUS_KEY_UNKNOWN);
    assert_string_equal(ref.uri, "pkcs11:object=k");
    bus_keyref_clear(&ref);

    /* build the pin-value variant with correct lengths */
    {
        const char *u = "pkcs11:object=k?pin-value=1";
        size_t ul = strlen(u), n = 0;

        fixed[n++] = 0x30;
        fixed[n++] = (uint8_t)(3 + 2 + ul);
        fixed[n++] = 0x1a;
        fixed[n++] = 0x01;
        fixed[n++] = 'd';
        fixed[n++] = 0x0c;
        fixed[n++] = (uint8_t)ul;
        memcpy(fixed + n, u, ul);
        n += ul;
        decode_fails(fixed, n, "PIN");
    }
}

static void test_keyref_decode_malformed(void **state)
{
    uint8_t *der = NULL, buf[64];
    size_t len = 0;

    encode_ok("pkcs11:object=k", BUS_KEY_RSA, &der, &len);
    /* 30 19 02 01 01 0c 0f <uri 15> 0c 03 RSA */
    assert_int_equal(len, 27);

    decode_fails(NULL, 0, "empty");
    decode_fails(der, 0, "empty");
    decode_fails(der, 1, "truncated");
    decode_fails(der, len - 1, "truncated");
    decode_fails(der, 10, "truncated");

    /* wrong outer tag: SET instead of SEQUENCE */
    memcpy(buf, der, len);
    buf[0] = 0x31;
    decode_fails(buf, len, "tag");
    /* version as OCTET STRING */
    memcpy(buf, der, len);
    buf[2] = 0x04;
    decode_fails(buf, len, "tag");
    /* URI as PrintableString */
    memcpy(buf, der, len);
    buf[5] = 0x13;
    decode_fails(buf, len, "tag");
    /* version 2 */
    memcpy(buf, der, len);
    buf[4] = 0x02;
    decode_fails(buf, len, "version");
    /* unknown key type "RSB" */
    memcpy(buf, der, len);
    buf[len - 1] = 'B';
    decode_fails(buf, len, "key type");
    /* NUL inside the URI */
    memcpy(buf, der, len);
    buf[7 + 6] = '\0';
    decode_fails(buf, len, "NUL");
    /* trailing byte after the SEQUENCE */
    memcpy(buf, der, len);
    buf[len] = 0x00;
    decode_fails(buf, len + 1, "after");
    /* an extra element inside the SEQUENCE */
    memcpy(buf, der, len);
    buf[1] = (uint8_t)(buf[1] + 2);
    buf[len] = 0x05;
    buf[len + 1] = 0x00;
    decode_fails(buf, len + 2, "unexpected element");
    free(der);

    /* huge and odd lengths */
    {
        static const uint8_t huge4[] = { 0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x02, 0x01, 0x01 };
        static const uint8_t huge8[] = { 0x30, 0x88, 0xff, 0xff, 0xff, 0xff,
                                         0xff, 0xff, 0xff, 0xff, 0x02 };
        static const uint8_t indefinite[] = { 0x30, 0x80, 0x02, 0x01, 0x01, 0x00, 0x00 };
        static const uint8_t nonminimal[] = { 0x30, 0x81, 0x03, 0x02, 0x01, 0x01 };
        static const uint8_t inner_over[] = { 0x30, 0x05, 0x02, 0x01, 0x01, 0x0c, 0x7f };
        static const uint8_t inner_huge[] = { 0x30, 0x07, 0x02, 0x01, 0x01,
                                              0x0c, 0x82, 0xff, 0xff };
        static const uint8_t empty_version[] = { 0x30, 0x02, 0x02, 0x00 };
        static const uint8_t empty_seq[] = { 0x30, 0x00 };
        static const uint8_t long_version[] = { 0x30, 0x04, 0x02, 0x02, 0x00, 0x01 };

        decode_fails(huge4, sizeof(huge4), "length too large");
        decode_fails(huge8, sizeof(huge8), "length too large");
        decode_fails(indefinite, sizeof(indefinite), "indefinite");
        decode_fails(nonminimal, sizeof(nonminimal), "minimal");
        decode_fails(inner_over, sizeof(inner_over), "exceeds");
        decode_fails(inner_huge, sizeof(inner_huge), "exceeds");
        decode_fails(empty_version, sizeof(empty_version), "version");
        decode_fails(empty_seq, sizeof(empty_seq), "missing");
        decode_fails(long_version, sizeof(long_version), "version");
    }
}

static void test_keyref_decode_refuses_too_large(void **state)
{
    size_t n = BUS_KEYREF_MAX_DER + 1;
    uint8_t *big = calloc(1, n);

    big[0] = 0x30;
    decode_fails(big, n, "too large");
    free(big);
}

/* Every prefix and every single-byte change of a valid reference: an
 * error or a valid result, never a crash or a leak (ASan). */
static void test_keyref_decode_mutations_never_crash(void **state)
{
    uint8_t *der = NULL, *buf;
    size_t len = 0;
    static const uint8_t vals[] = { 0x00, 0x01, 0x02, 0x0c, 0x1a, 0x30, 0x7f, 0x80,
                                    0x81, 0x82, 0x84, 0xff };

    encode_ok("pkcs11:token=t;object=k;type=private", BUS_KEY_ED25519, &der, &len);
    buf = malloc(len);
    for (size_t cut = 0; cut <= len; cut++) {
        bus_keyref_t ref;
        const char *why;

        memcpy(buf, der, cut);
        if (decode(buf, cut, &ref, &why) == BUS_OK) {
            assert_int_equal(cut, len);
            bus_keyref_clear(&ref);
        } else {
            assert_non_null(why);
        }
    }
    for (size_t i = 0; i < len; i++) {
        for (size_t v = 0; v < sizeof(vals); v++) {
            bus_keyref_t ref;
            const char *why;

            memcpy(buf, der, len);
            buf[i] = vals[v];
            if (decode(buf, len, &ref, &why) == BUS_OK) {
                assert_non_null(ref.uri);
                assert_int_equal(bus_keyref_check_uri(ref.uri, NULL), BUS_OK);
                bus_keyref_clear(&ref);
            } else {
                assert_non_null(why);
            }
        }
    }
    free(buf);
    free(der);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keyref_encode_exact_bytes),
        cmocka_unit_test(test_keyref_round_trip_every_type),
        cmocka_unit_test(test_keyref_round_trip_long_uris),
        cmocka_unit_test(test_keyref_encode_refuses_bad_input),
        cmocka_unit_test(test_keyref_check_uri_pin_attributes),
        cmocka_unit_test(test_keyref_decode_pkcs11_provider),
        cmocka_unit_test(test_keyref_decode_malformed),
        cmocka_unit_test(test_keyref_decode_refuses_too_large),
        cmocka_unit_test(test_keyref_decode_mutations_never_crash),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
