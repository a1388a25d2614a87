/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Frames of the signing channel (dbus/channel.c): round trips, and the
 * parser against hostile input (short, long, split, unknown op, bad magic,
 * reserved bits, lengths past the maximum), DECRYPT's label and ciphertext
 * lengths and the parameters the D-Bus Decrypt refuses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "channel.h"

#define FRAME_MAX (sizeof(bus_chan_req_hdr_t) + BUS_CHAN_MAX_PAYLOAD)

static const bus_sign_params_t pss = {.alg = BUS_SIG_RSA_PSS, .hash = "sha256",
                                      .mgf1_hash = "sha384", .salt_len = 32};

static void test_channel_sign_round_trip(void **state)
{
    uint8_t buf[FRAME_MAX], digest[32];
    bus_chan_req_t q;
    long n;

    (void)state;
    memset(digest, 0x5a, sizeof(digest));
    n = bus_chan_encode_sign(buf, 77, 3, &pss, digest, sizeof(digest));
    assert_int_equal(n, sizeof(bus_chan_req_hdr_t) + 32);
    assert_int_equal(bus_chan_parse_request(buf, (size_t)n, &q), n);
    assert_int_equal(q.op, BUS_CHAN_OP_SIGN);
    assert_int_equal(q.status, BUS_OK);
    assert_int_equal(q.id, 77);
    assert_int_equal(q.handle, 3);
    assert_int_equal(q.params.alg, BUS_SIG_RSA_PSS);
    assert_string_equal(q.params.hash, "sha256");
    assert_string_equal(q.params.mgf1_hash, "sha384");
    assert_int_equal(q.params.salt_len, 32);
    assert_int_equal(q.len, 32);
    assert_memory_equal(q.data, digest, 32);
}

static void test_channel_bind_round_trip(void **state)
{
    const char *uri = "pkcs11:token=t;object=k;type=private";
    uint8_t buf[FRAME_MAX];
    bus_chan_req_t q;
    long n;

    (void)state;
    n = bus_chan_encode_bind(buf, 1, uri);
    assert_true(n > 0);
    assert_int_equal(bus_chan_parse_request(buf, (size_t)n, &q), n);
    assert_int_equal(q.op, BUS_CHAN_OP_BIND);
    assert_int_equal(q.len, strlen(uri));
    assert_memory_equal(q.data, uri, q.len);
}

/* Every prefix of a frame asks for more; the whole frame parses once, and
 * a second frame behind it is left for the next call. */
static void test_channel_split_and_back_to_back(void **state)
{
    uint8_t buf[2 * FRAME_MAX], digest[48] = {1, 2, 3};
    bus_chan_req_t q;
    long n1, n2;

    (void)state;
    n1 = bus_chan_encode_sign(buf, 1, 1, &pss, digest, sizeof(digest));
    n2 = bus_chan_encode_bind(buf + n1, 2, "pkcs11:object=x");
    assert_true(n1 > 0 && n2 > 0);
    for (long i = 0; i < n1; i++)
        assert_int_equal(bus_chan_parse_request(buf, (size_t)i, &q), 0);
    assert_int_equal(bus_chan_parse_request(buf, (size_t)(n1 + n2), &q), n1);
    assert_int_equal(q.id, 1);
    assert_int_equal(bus_chan_parse_request(buf + n1, (size_t)n2, &q), n2);
    assert_int_equal(q.id, 2);
}

static bus_chan_req_hdr_t valid_hdr(void)
{
    return (bus_chan_req_hdr_t){.magic = BUS_CHAN_MAGIC, .op = BUS_CHAN_OP_SIGN,
                                .alg = BUS_SIG_ECDSA, .hash = 3, .id = 9, .handle = 1,
                                .salt_len = -1, .len = 32};
}

static long parse_hdr(const bus_chan_req_hdr_t *h, size_t extra, bus_chan_req_t *q)
{
    static uint8_t buf[FRAME_MAX + 64];

    memset(buf, 0, sizeof(buf));
    memcpy(buf, h, sizeof(*h));
    return bus_chan_parse_request(buf, sizeof(*h) + extra, q);
}

/* A frame that breaks the rules is refused from its header alone: the
 * agent never waits for (nor buffers) the payload it announces. */
static void test_channel_hostile_headers(void **state)
{
    bus_chan_req_hdr_t h;
    bus_chan_req_t q;

    (void)state;
    h = valid_hdr();
    assert_int_equal(parse_hdr(&h, 32, &q), sizeof(h) + 32);
    h = valid_hdr();
    h.magic = 0x1234;
    assert_int_equal(parse_hdr(&h, 0, &q), BUS_ERR_PROTOCOL);
    h = valid_hdr();
    h.op = 0;
    assert_int_equal(parse_hdr(&h, 0, &q), BUS_ERR_PROTOCOL);
    h.op = BUS_CHAN_OP_DECRYPT + 1;
    assert_int_equal(parse_hdr(&h, 0, &q), BUS_ERR_PROTOCOL);
    h.op = 0xff;
    assert_int_equal(parse_hdr(&h, 0, &q), BUS_ERR_PROTOCOL);
    h = valid_hdr();
    h.reserved = 1;
    assert_int_equal(parse_hdr(&h, 0, &q), BUS_ERR_PROTOCOL);
    h = valid_hdr();
    h.len = BUS_CHAN_MAX_PAYLOAD + 1;
    assert_int_equal(parse_hdr(&h, 0, &q), BUS_ERR_PROTOCOL);
    h.len = UINT32_MAX;
    assert_int_equal(parse_hdr(&h, 0, &q), BUS_ERR_PROTOCOL);
    /* the largest payload allowed is waited for, then parsed */
    h.len = BUS_CHAN_MAX_PAYLOAD;
    assert_int_equal(parse_hdr(&h, BUS_CHAN_MAX_PAYLOAD - 1, &q), 0);
    assert_int_equal(parse_hdr(&h, BUS_CHAN_MAX_PAYLOAD, &q), sizeof(h) + BUS_CHAN_MAX_PAYLOAD);
    /* BIND: empty, too long, or with SIGN fields set */
    h = valid_hdr();
    h.op = BUS_CHAN_OP_BIND;
    h.alg = h.hash = 0;
    h.handle = 0;
    h.len = 0;
    assert_int_equal(parse_hdr(&h, 0, &q), BUS_ERR_PROTOCOL);
    h.len = BUS_CHAN_MAX_URI + 1;
    assert_int_equal(parse_hdr(&h, 0, &q), BUS_ERR_PROTOCOL);
    h.len = 10;
    h.handle = 5;
    assert_int_equal(parse_hdr(&h, 10, &q), BUS_ERR_PROTOCOL);
    /* a short buffer is never read past its end */
    h = valid_hdr();
    assert_int_equal(parse_hdr(&h, 0, &q), 0);
    assert_int_equal(bus_chan_parse_request((const uint8_t *)&h, sizeof(h) - 1, &q), 0);
}

/* Unknown algorithms and hash indexes: the frame is whole and answered
 * (status set), the channel goes on. */
static void test_channel_unsupported_sign_is_answered(void **state)
{
    bus_chan_req_hdr_t h;
    bus_chan_req_t q;

    (void)state;
    h = valid_hdr();
    h.alg = 9;
    assert_int_equal(parse_hdr(&h, 32, &q), sizeof(h) + 32);
    assert_int_equal(q.status, BUS_ERR_UNSUPPORTED);
    h = valid_hdr();
    h.hash = 200;
    assert_int_equal(parse_hdr(&h, 32, &q), sizeof(h) + 32);
    assert_int_equal(q.status, BUS_ERR_UNSUPPORTED);
    h = valid_hdr();
    h.alg = BUS_SIG_RSA_PSS;
    h.salt_len = -1;
    assert_int_equal(parse_hdr(&h, 32, &q), sizeof(h) + 32);
    assert_int_equal(q.status, BUS_ERR_UNSUPPORTED);
}

static void test_channel_encode_refuses_what_it_cannot_carry(void **state)
{
    static uint8_t buf[FRAME_MAX], big[BUS_CHAN_MAX_PAYLOAD + 1];
    bus_sign_params_t p = pss;
    char uri[BUS_CHAN_MAX_URI + 2];

    (void)state;
    assert_int_equal(bus_chan_encode_sign(buf, 1, 1, &pss, big, sizeof(big)), BUS_ERR_INVALID_ARGS);
    strcpy(p.hash, "md5-sha1");
    assert_int_equal(bus_chan_encode_sign(buf, 1, 1, &p, big, 36), BUS_ERR_INVALID_ARGS);
    assert_int_equal(bus_chan_hash_index("sha3-256"), -1);
    assert_int_equal(bus_chan_hash_index(""), 0);
    memset(uri, 'a', sizeof(uri) - 1);
    uri[sizeof(uri) - 1] = '\0';
    assert_int_equal(bus_chan_encode_bind(buf, 1, uri), BUS_ERR_INVALID_ARGS);
    assert_int_equal(bus_chan_encode_bind(buf, 1, ""), BUS_ERR_INVALID_ARGS);
}

static void test_channel_reply_round_trip_and_hostile(void **state)
{
    static uint8_t buf[sizeof(bus_chan_rep_hdr_t) + BUS_CHAN_MAX_PAYLOAD];
    static char text[BUS_CHAN_MAX_PAYLOAD + 8];
    bus_chan_rep_hdr_t h;
    const uint8_t *data;
    size_t n;

    (void)state;
    n = bus_chan_encode_reply(buf, BUS_CHAN_OP_SIGN, 5, 0, 2, "\x30\x44", 2);
    assert_int_equal(bus_chan_parse_reply(buf, n, &h, &data), (long)n);
    assert_int_equal(h.id, 5);
    assert_int_equal(h.len, 2);
    assert_memory_equal(data, "\x30\x44", 2);
    assert_int_equal(bus_chan_parse_reply(buf, n - 1, &h, &data), 0);
    /* a long error text is cut at a character boundary (é is 2 bytes) */
    memset(text, 'x', sizeof(text));
    memcpy(text + BUS_CHAN_MAX_PAYLOAD - 1, "\xc3\xa9", 2);
    n = bus_chan_encode_reply(buf, BUS_CHAN_OP_SIGN, 6, BUS_ERR_DENIED, 0, text, sizeof(text));
    assert_int_equal(bus_chan_parse_reply(buf, n, &h, &data), (long)n);
    assert_int_equal(h.status, BUS_ERR_DENIED);
    assert_int_equal(h.len, BUS_CHAN_MAX_PAYLOAD - 1);
    /* a status that is no bus_err_t, a length past the maximum */
    memcpy(&h, buf, sizeof(h));
    h.status = 1;
    memcpy(buf, &h, sizeof(h));
    assert_int_equal(bus_chan_parse_reply(buf, n, &h, &data), BUS_ERR_PROTOCOL);
    h.status = 0;
    h.len = BUS_CHAN_MAX_PAYLOAD + 1;
    memcpy(buf, &h, sizeof(h));
    assert_int_equal(bus_chan_parse_reply(buf, n, &h, &data), BUS_ERR_PROTOCOL);
}

static const uint8_t oaep_label[] = "a label\0with a NUL";

static void test_channel_decrypt_round_trip(void **state)
{
    bus_decrypt_params_t p = {.alg = BUS_DEC_RSA_OAEP, .hash = "sha256", .mgf1_hash = "sha1",
                              .label = oaep_label, .label_len = sizeof(oaep_label)};
    static uint8_t buf[FRAME_MAX], ct[BUS_DECRYPT_MAX_DATA];
    bus_chan_req_t q;
    long n;

    (void)state;
    memset(ct, 0xa5, sizeof(ct));
    n = bus_chan_encode_decrypt(buf, 12, 4, &p, ct, 256);
    assert_int_equal(n, sizeof(bus_chan_req_hdr_t) + sizeof(oaep_label) + 256);
    assert_int_equal(bus_chan_parse_request(buf, (size_t)n, &q), n);
    assert_int_equal(q.op, BUS_CHAN_OP_DECRYPT);
    assert_int_equal(q.status, BUS_OK);
    assert_int_equal(q.id, 12);
    assert_int_equal(q.handle, 4);
    assert_int_equal(q.dparams.alg, BUS_DEC_RSA_OAEP);
    assert_string_equal(q.dparams.hash, "sha256");
    assert_string_equal(q.dparams.mgf1_hash, "sha1");
    assert_int_equal(q.dparams.label_len, sizeof(oaep_label));
    assert_memory_equal(q.dparams.label, oaep_label, sizeof(oaep_label));
    assert_int_equal(q.len, 256);
    assert_memory_equal(q.data, ct, 256);
    /* raw: the largest ciphertext, no label; hash fields of the caller not sent */
    p = (bus_decrypt_params_t){.alg = BUS_DEC_RSA_RAW, .hash = "sha1"};
    n = bus_chan_encode_decrypt(buf, 13, 1, &p, ct, sizeof(ct));
    assert_true(n > 0);
    assert_int_equal(bus_chan_parse_request(buf, (size_t)n, &q), n);
    assert_int_equal(q.status, BUS_OK);
    assert_int_equal(q.dparams.alg, BUS_DEC_RSA_RAW);
    assert_string_equal(q.dparams.hash, "");
    assert_null(q.dparams.label);
    assert_int_equal(q.len, sizeof(ct));
    /* OAEP with the largest label and ciphertext: the whole payload */
    p = (bus_decrypt_params_t){.alg = BUS_DEC_RSA_OAEP, .label = ct,
                               .label_len = BUS_DECRYPT_MAX_LABEL};
    n = bus_chan_encode_decrypt(buf, 14, 1, &p, ct, BUS_DECRYPT_MAX_DATA);
    assert_int_equal(n, FRAME_MAX);
    assert_int_equal(bus_chan_parse_request(buf, (size_t)n, &q), n);
    assert_int_equal(q.status, BUS_OK);
    assert_int_equal(q.len, BUS_DECRYPT_MAX_DATA);
    assert_string_equal(q.dparams.hash, "");
}

static bus_chan_req_hdr_t decrypt_hdr(void)
{
    return (bus_chan_req_hdr_t){.magic = BUS_CHAN_MAGIC, .op = BUS_CHAN_OP_DECRYPT,
                                .alg = BUS_DEC_RSA_OAEP, .hash = 3, .id = 9, .handle = 1,
                                .label_len = 4, .len = 260};
}

/* A whole DECRYPT frame the D-Bus Decrypt would refuse is answered with
 * the same error (Unsupported for an unknown algorithm or hash, InvalidArgs
 * for what is malformed), the channel goes on; a DECRYPT past the maximum
 * length ends it. */
static void test_channel_decrypt_hostile(void **state)
{
    bus_chan_req_hdr_t h;
    bus_chan_req_t q;

    (void)state;
    h = decrypt_hdr();
    assert_int_equal(parse_hdr(&h, 260, &q), sizeof(h) + 260);
    assert_int_equal(q.status, BUS_OK);
    assert_int_equal(q.len, 256);
    assert_int_equal(q.dparams.label_len, 4);
    assert_int_equal(parse_hdr(&h, 259, &q), 0);
    h.alg = 0;
    assert_int_equal(parse_hdr(&h, 260, &q), sizeof(h) + 260);
    assert_int_equal(q.status, BUS_ERR_UNSUPPORTED);
    h.alg = BUS_DEC_RSA_RAW + 1;
    assert_int_equal(parse_hdr(&h, 260, &q), sizeof(h) + 260);
    assert_int_equal(q.status, BUS_ERR_UNSUPPORTED);
    h = decrypt_hdr();
    h.mgf1 = 6;
    assert_int_equal(parse_hdr(&h, 260, &q), sizeof(h) + 260);
    assert_int_equal(q.status, BUS_ERR_UNSUPPORTED);
    /* label longer than the payload, than the maximum; no ciphertext */
    h = decrypt_hdr();
    h.label_len = 261;
    assert_int_equal(parse_hdr(&h, 260, &q), sizeof(h) + 260);
    assert_int_equal(q.status, BUS_ERR_INVALID_ARGS);
    h.label_len = UINT32_MAX;
    assert_int_equal(parse_hdr(&h, 260, &q), sizeof(h) + 260);
    assert_int_equal(q.status, BUS_ERR_INVALID_ARGS);
    h.label_len = 260;
    assert_int_equal(parse_hdr(&h, 260, &q), sizeof(h) + 260);
    assert_int_equal(q.status, BUS_ERR_INVALID_ARGS);
    h.len = BUS_CHAN_MAX_PAYLOAD;
    h.label_len = BUS_DECRYPT_MAX_LABEL + 1;
    assert_int_equal(parse_hdr(&h, h.len, &q), sizeof(h) + h.len);
    assert_int_equal(q.status, BUS_ERR_INVALID_ARGS);
    /* ciphertext longer than the D-Bus Decrypt takes */
    h.label_len = BUS_DECRYPT_MAX_LABEL - 1;
    assert_int_equal(parse_hdr(&h, h.len, &q), sizeof(h) + h.len);
    assert_int_equal(q.status, BUS_ERR_INVALID_ARGS);
    /* OAEP parameters with PKCS#1 or raw */
    h = decrypt_hdr();
    h.alg = BUS_DEC_RSA_PKCS1;
    assert_int_equal(parse_hdr(&h, 260, &q), sizeof(h) + 260);
    assert_int_equal(q.status, BUS_ERR_INVALID_ARGS);
    h.label_len = 0;
    assert_int_equal(parse_hdr(&h, 260, &q), sizeof(h) + 260);
    assert_int_equal(q.status, BUS_ERR_INVALID_ARGS);
    h.hash = 0;
    h.mgf1 = 1;
    h.alg = BUS_DEC_RSA_RAW;
    assert_int_equal(parse_hdr(&h, 260, &q), sizeof(h) + 260);
    assert_int_equal(q.status, BUS_ERR_INVALID_ARGS);
    h.mgf1 = 0;
    assert_int_equal(parse_hdr(&h, 260, &q), sizeof(h) + 260);
    assert_int_equal(q.status, BUS_OK);
    /* framing rules as for SIGN: fatal */
    h = decrypt_hdr();
    h.len = BUS_CHAN_MAX_PAYLOAD + 1;
    assert_int_equal(parse_hdr(&h, 0, &q), BUS_ERR_PROTOCOL);
    h = decrypt_hdr();
    h.reserved = 2;
    assert_int_equal(parse_hdr(&h, 0, &q), BUS_ERR_PROTOCOL);
}

static void test_channel_decrypt_encode_refuses(void **state)
{
    static uint8_t buf[FRAME_MAX], ct[BUS_CHAN_MAX_PAYLOAD + 1];
    bus_decrypt_params_t p = {.alg = BUS_DEC_RSA_OAEP, .hash = "sha3-256"};

    (void)state;
    /* a hash without an index: not for the channel (D-Bus carries it) */
    assert_false(bus_chan_can_decrypt(&p, 256));
    assert_int_equal(bus_chan_encode_decrypt(buf, 1, 1, &p, ct, 256), BUS_ERR_INVALID_ARGS);
    /* label and ciphertext past the payload */
    p = (bus_decrypt_params_t){.alg = BUS_DEC_RSA_OAEP, .label = ct, .label_len = 2049};
    assert_false(bus_chan_can_decrypt(&p, BUS_CHAN_MAX_PAYLOAD - 2048));
    assert_false(bus_chan_can_decrypt(&p, SIZE_MAX));
    p.label_len = SIZE_MAX;
    assert_false(bus_chan_can_decrypt(&p, 16));
    /* what the D-Bus Decrypt refuses too */
    p = (bus_decrypt_params_t){.alg = BUS_DEC_RSA_PKCS1};
    assert_true(bus_chan_can_decrypt(&p, 0));
    assert_int_equal(bus_chan_encode_decrypt(buf, 1, 1, &p, ct, 0), BUS_ERR_INVALID_ARGS);
    assert_int_equal(bus_chan_encode_decrypt(buf, 1, 1, &p, ct, BUS_DECRYPT_MAX_DATA + 1),
                     BUS_ERR_INVALID_ARGS);
    p.alg = 0;
    assert_int_equal(bus_chan_encode_decrypt(buf, 1, 1, &p, ct, 16), BUS_ERR_INVALID_ARGS);
    p = (bus_decrypt_params_t){.alg = BUS_DEC_RSA_OAEP, .label_len = 3};
    assert_int_equal(bus_chan_encode_decrypt(buf, 1, 1, &p, ct, 16), BUS_ERR_INVALID_ARGS);
}

static void test_channel_decrypt_reply(void **state)
{
    static uint8_t buf[sizeof(bus_chan_rep_hdr_t) + BUS_CHAN_MAX_PAYLOAD];
    bus_chan_rep_hdr_t h;
    const uint8_t *data;
    size_t n;

    (void)state;
    n = bus_chan_encode_reply(buf, BUS_CHAN_OP_DECRYPT, 8, 0, 1, "\x03\x03secret", 8);
    assert_int_equal(bus_chan_parse_reply(buf, n, &h, &data), (long)n);
    assert_int_equal(h.op, BUS_CHAN_OP_DECRYPT);
    assert_int_equal(h.len, 8);
    assert_memory_equal(data, "\x03\x03secret", 8);
    /* an empty plaintext (OAEP of an empty message) */
    n = bus_chan_encode_reply(buf, BUS_CHAN_OP_DECRYPT, 9, 0, 1, NULL, 0);
    assert_int_equal(bus_chan_parse_reply(buf, n, &h, &data), (long)n);
    assert_int_equal(h.len, 0);
    /* an op no request has */
    n = bus_chan_encode_reply(buf, BUS_CHAN_OP_DECRYPT + 1, 9, 0, 1, NULL, 0);
    assert_int_equal(bus_chan_parse_reply(buf, n, &h, &data), BUS_ERR_PROTOCOL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_channel_sign_round_trip),
        cmocka_unit_test(test_channel_bind_round_trip),
        cmocka_unit_test(test_channel_split_and_back_to_back),
        cmocka_unit_test(test_channel_hostile_headers),
        cmocka_unit_test(test_channel_unsupported_sign_is_answered),
        cmocka_unit_test(test_channel_encode_refuses_what_it_cannot_carry),
        cmocka_unit_test(test_channel_reply_round_trip_and_hostile),
        cmocka_unit_test(test_channel_decrypt_round_trip),
        cmocka_unit_test(test_channel_decrypt_hostile),
        cmocka_unit_test(test_channel_decrypt_encode_refuses),
        cmocka_unit_test(test_channel_decrypt_reply),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
