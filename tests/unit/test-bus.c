/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests of dbus/: names, marshalling round trips, malformed input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <stdio.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "bus.h"

static void test_bus_error_names_round_trip(void **state)
{
    static const bus_err_t all[] = {
        BUS_ERR_FAILED, BUS_ERR_NO_SUCH_KEY, BUS_ERR_LOCKED,      BUS_ERR_PIN_INCORRECT,
        BUS_ERR_PIN_LOCKED, BUS_ERR_TOKEN_REMOVED, BUS_ERR_DENIED, BUS_ERR_UNSUPPORTED,
        BUS_ERR_BUSY,   BUS_ERR_INVALID_ARGS, BUS_ERR_DEVICE,     BUS_ERR_NO_MEMORY,
        BUS_ERR_TIMEOUT,
    };

    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        const char *name = bus_err_name(all[i]);

        assert_non_null(name);
        assert_int_equal(strncmp(name, BUS_ERROR_PREFIX, strlen(BUS_ERROR_PREFIX)), 0);
        assert_int_equal(bus_err_from_name(name), all[i]);
    }
    assert_string_equal(bus_err_name(BUS_ERR_NO_SUCH_KEY), "org.p11agent.Error.NoSuchKey");
    assert_string_equal(bus_err_name(BUS_ERR_PIN_INCORRECT), "org.p11agent.Error.PinIncorrect");
    assert_int_equal(bus_err_from_name(DBUS_ERROR_NO_REPLY), BUS_ERR_TIMEOUT);
    assert_int_equal(bus_err_from_name(DBUS_ERROR_DISCONNECTED), BUS_ERR_DISCONNECTED);
    assert_int_equal(bus_err_from_name("com.example.Whatever"), BUS_ERR_FAILED);
    assert_int_equal(bus_err_from_name(NULL), BUS_ERR_FAILED);
}

static void test_bus_type_and_alg_names(void **state)
{
    assert_int_equal(bus_key_type_from_name("RSA"), BUS_KEY_RSA);
    assert_int_equal(bus_key_type_from_name("EC"), BUS_KEY_EC);
    assert_int_equal(bus_key_type_from_name("ED25519"), BUS_KEY_ED25519);
    assert_int_equal(bus_key_type_from_name("DSA"), BUS_KEY_UNKNOWN);
    assert_string_equal(bus_key_type_name(BUS_KEY_ED448), "ED448");
    assert_int_equal(bus_sig_alg_from_name("rsa-pss"), BUS_SIG_RSA_PSS);
    assert_int_equal(bus_sig_alg_from_name("ecdsa"), BUS_SIG_ECDSA);
    assert_int_equal(bus_sig_alg_from_name("rsa-raw"), 0);
    assert_string_equal(bus_sig_alg_name(BUS_SIG_EDDSA), "eddsa");
    assert_null(bus_sig_alg_name(0));
}

static DBusMessage *new_reply(void)
{
    /* A method return needs a call with a serial to answer. */
    DBusMessage *call = dbus_message_new_method_call(NULL, BUS_PATH, BUS_IFACE, "ListKeys");
    DBusMessage *reply;

    assert_non_null(call);
    dbus_message_set_serial(call, 7);
    reply = dbus_message_new_method_return(call);
    dbus_message_unref(call);
    assert_non_null(reply);
    return reply;
}

/* Serialises and parses back, as the wire would. */
static DBusMessage *wire(DBusMessage *msg)
{
    char *buf = NULL;
    int len = 0;
    DBusError err;
    DBusMessage *back;

    dbus_message_set_serial(msg, 9);
    assert_true(dbus_message_marshal(msg, &buf, &len));
    dbus_error_init(&err);
    back = dbus_message_demarshal(buf, len, &err);
    assert_false(dbus_error_is_set(&err));
    dbus_free(buf);
    assert_non_null(back);
    return back;
}

static void test_bus_keys_round_trip(void **state)
{
    uint8_t spki[] = {0x30, 0x59, 0x01, 0x02}, cert[] = {0x30, 0x82, 0x00};
    bus_key_info_t in[2] = {
        {.uri = "pkcs11:token=a;object=k1;type=private", .type = BUS_KEY_EC, .bits = 256,
         .group = "prime256v1", .label = "k1", .token = "a", .spki = spki,
         .spki_len = sizeof(spki), .cert = cert, .cert_len = sizeof(cert),
         .flags = BUS_KEY_CAN_ECDSA | BUS_KEY_LOGGED_IN},
        {.uri = "pkcs11:token=b;object=k2;type=private", .type = BUS_KEY_RSA, .bits = 2048,
         .group = "", .label = "", .token = "b", .spki = spki, .spki_len = 1,
         .flags = BUS_KEY_CAN_RSA_PKCS1 | BUS_KEY_CAN_RSA_PSS},
    };
    DBusMessage *msg = new_reply(), *back;
    bus_key_info_t *out = NULL;
    size_t n = 0;

    assert_int_equal(bus_append_keys(msg, in, 2), BUS_OK);
    back = wire(msg);
    assert_int_equal(bus_parse_keys(back, &out, &n), BUS_OK);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_string_equal(out[i].uri, in[i].uri);
        assert_int_equal(out[i].type, in[i].type);
        assert_int_equal(out[i].bits, in[i].bits);
        assert_string_equal(out[i].group, in[i].group);
        assert_string_equal(out[i].label, in[i].label);
        assert_string_equal(out[i].token, in[i].token);
        assert_int_equal(out[i].spki_len, in[i].spki_len);
        assert_memory_equal(out[i].spki, in[i].spki, in[i].spki_len);
        assert_int_equal(out[i].cert_len, in[i].cert_len);
        assert_int_equal(out[i].flags, in[i].flags);
    }
    assert_memory_equal(out[0].cert, cert, sizeof(cert));
    assert_null(out[1].cert);

    bus_key_info_free_array(out, n);
    dbus_message_unref(back);
    dbus_message_unref(msg);
}

static void test_bus_keys_empty_and_malformed(void **state)
{
    DBusMessage *msg = new_reply(), *bad = new_reply();
    bus_key_info_t *out = (void *)1;
    size_t n = 99;
    const char *s = "not a key list";

    assert_int_equal(bus_append_keys(msg, NULL, 0), BUS_OK);
    assert_int_equal(bus_parse_keys(msg, &out, &n), BUS_OK);
    assert_int_equal(n, 0);
    free(out);

    assert_true(dbus_message_append_args(bad, DBUS_TYPE_STRING, &s, DBUS_TYPE_INVALID));
    out = NULL;
    assert_int_equal(bus_parse_keys(bad, &out, &n), BUS_ERR_PROTOCOL);
    assert_null(out);
    dbus_message_unref(msg);
    dbus_message_unref(bad);
}

static void test_bus_sign_call_round_trip(void **state)
{
    uint8_t digest[32];
    bus_sign_params_t p = {.alg = BUS_SIG_RSA_PSS, .hash = "sha256", .mgf1_hash = "sha384",
                           .salt_len = 32};
    bus_sign_params_t q;
    const char *uri;
    const uint8_t *data;
    size_t len;
    DBusMessage *msg, *back;

    for (size_t i = 0; i < sizeof(digest); i++)
        digest[i] = (uint8_t)(i * 7);
    msg = bus_new_sign_call("pkcs11:object=x", &p, digest, sizeof(digest));
    assert_non_null(msg);
    back = wire(msg);
    assert_int_equal(bus_parse_sign_call(back, &uri, &q, &data, &len), BUS_OK);
    assert_string_equal(uri, "pkcs11:object=x");
    assert_int_equal(q.alg, BUS_SIG_RSA_PSS);
    assert_string_equal(q.hash, "sha256");
    assert_string_equal(q.mgf1_hash, "sha384");
    assert_int_equal(q.salt_len, 32);
    assert_int_equal(len, sizeof(digest));
    assert_memory_equal(data, digest, sizeof(digest));
    dbus_message_unref(back);
    dbus_message_unref(msg);

    /* EdDSA: no parameters, whole message */
    p = (bus_sign_params_t){.alg = BUS_SIG_EDDSA};
    msg = bus_new_sign_call("pkcs11:object=y", &p, (const uint8_t *)"hello", 5);
    assert_non_null(msg);
    assert_int_equal(bus_parse_sign_call(msg, &uri, &q, &data, &len), BUS_OK);
    assert_int_equal(q.alg, BUS_SIG_EDDSA);
    assert_string_equal(q.hash, "");
    assert_int_equal(len, 5);
    dbus_message_unref(msg);

    /* unknown algorithm is refused when building */
    p.alg = 0;
    assert_null(bus_new_sign_call("pkcs11:", &p, digest, 1));
}

static DBusMessage *raw_sign_call(const char *alg, const char *hkey, int htype, const void *hval)
{
    DBusMessage *msg = dbus_message_new_method_call(NULL, BUS_PATH, BUS_IFACE, "Sign");
    DBusMessageIter it, dict, entry, var;
    const char *uri = "pkcs11:object=z";
    const uint8_t *d = (const uint8_t *)"0123456789abcdef0123456789abcdef";
    char sig[2] = {(char)htype, 0};

    dbus_message_iter_init_append(msg, &it);
    dbus_message_iter_append_basic(&it, DBUS_TYPE_STRING, &uri);
    dbus_message_iter_append_basic(&it, DBUS_TYPE_STRING, &alg);
    dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict);
    if (hkey) {
        dbus_message_iter_open_container(&dict, DBUS_TYPE_DICT_ENTRY, NULL, &entry);
        dbus_message_iter_append_basic(&entry, DBUS_TYPE_STRING, &hkey);
        dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, sig, &var);
        dbus_message_iter_append_basic(&var, htype, hval);
        dbus_message_iter_close_container(&entry, &var);
        dbus_message_iter_close_container(&dict, &entry);
    }
    dbus_message_iter_close_container(&it, &dict);
    dbus_message_append_args(msg, DBUS_TYPE_ARRAY, DBUS_TYPE_BYTE, &d, 32, DBUS_TYPE_INVALID);
    return msg;
}

static void test_bus_sign_template_copies_equal_direct_call(void **state)
{
    bus_sign_params_t p = {.alg = BUS_SIG_RSA_PSS, .hash = "sha384", .salt_len = 48};
    uint8_t a[48], b[48];
    DBusMessage *tmpl, *m1, *m2, *direct;
    const char *uri;
    const uint8_t *data;
    size_t len;
    bus_sign_params_t q;

    memset(a, 0xa5, sizeof(a));
    memset(b, 0x3c, sizeof(b));
    tmpl = bus_new_sign_template("pkcs11:object=t", &p);
    assert_non_null(tmpl);
    m1 = bus_sign_call_from_template(tmpl, a, sizeof(a));
    m2 = bus_sign_call_from_template(tmpl, b, sizeof(b));
    direct = bus_new_sign_call("pkcs11:object=t", &p, a, sizeof(a));
    assert_non_null(m1);
    assert_non_null(m2);
    assert_non_null(direct);
    /* each copy carries its own data; the template is left as it was */
    assert_string_equal(dbus_message_get_signature(tmpl), "ssa{sv}");
    assert_string_equal(dbus_message_get_signature(m1), dbus_message_get_signature(direct));
    assert_int_equal(bus_parse_sign_call(m1, &uri, &q, &data, &len), BUS_OK);
    assert_string_equal(uri, "pkcs11:object=t");
    assert_int_equal(q.alg, BUS_SIG_RSA_PSS);
    assert_string_equal(q.hash, "sha384");
    assert_int_equal(q.salt_len, 48);
    assert_memory_equal(data, a, sizeof(a));
    assert_int_equal(bus_parse_sign_call(m2, &uri, &q, &data, &len), BUS_OK);
    assert_memory_equal(data, b, sizeof(b));
    dbus_message_unref(m1);
    dbus_message_unref(m2);
    dbus_message_unref(direct);
    dbus_message_unref(tmpl);
}

static void test_bus_sign_call_rejects_bad_input(void **state)
{
    const char *uri;
    const uint8_t *data;
    size_t len;
    bus_sign_params_t q;
    DBusMessage *msg;
    dbus_int32_t num = 5;
    const char *longname = "sha256-with-a-name-far-too-long-for-the-field";
    const char *s = "x";

    msg = raw_sign_call("rsa-raw", NULL, 0, NULL);
    assert_int_equal(bus_parse_sign_call(msg, &uri, &q, &data, &len), BUS_ERR_UNSUPPORTED);
    dbus_message_unref(msg);
    /* hash given as a number */
    msg = raw_sign_call("rsa-pkcs1", "hash", DBUS_TYPE_INT32, &num);
    assert_int_equal(bus_parse_sign_call(msg, &uri, &q, &data, &len), BUS_ERR_INVALID_ARGS);
    dbus_message_unref(msg);
    /* a hash name that does not fit */
    msg = raw_sign_call("rsa-pkcs1", "hash", DBUS_TYPE_STRING, &longname);
    assert_int_equal(bus_parse_sign_call(msg, &uri, &q, &data, &len), BUS_ERR_INVALID_ARGS);
    dbus_message_unref(msg);
    /* PSS without a salt length */
    msg = raw_sign_call("rsa-pss", "hash", DBUS_TYPE_STRING, &(const char *){"sha256"});
    assert_int_equal(bus_parse_sign_call(msg, &uri, &q, &data, &len), BUS_ERR_INVALID_ARGS);
    dbus_message_unref(msg);
    /* wrong signature altogether */
    msg = dbus_message_new_method_call(NULL, BUS_PATH, BUS_IFACE, "Sign");
    dbus_message_append_args(msg, DBUS_TYPE_STRING, &s, DBUS_TYPE_INVALID);
    assert_int_equal(bus_parse_sign_call(msg, &uri, &q, &data, &len), BUS_ERR_INVALID_ARGS);
    dbus_message_unref(msg);
    /* unknown parameters are ignored */
    msg = raw_sign_call("ecdsa", "future-param", DBUS_TYPE_INT32, &num);
    assert_int_equal(bus_parse_sign_call(msg, &uri, &q, &data, &len), BUS_OK);
    assert_int_equal(q.alg, BUS_SIG_ECDSA);
    dbus_message_unref(msg);
}

static void test_bus_decrypt_call_round_trip(void **state)
{
    uint8_t ct[256], label[3] = {'l', 0, 'b'};
    bus_decrypt_params_t p = {.alg = BUS_DEC_RSA_OAEP, .hash = "sha256", .mgf1_hash = "sha1",
                              .label = label, .label_len = sizeof(label)};
    bus_decrypt_params_t q;
    const char *uri;
    const uint8_t *data;
    size_t len;
    DBusMessage *msg, *back;

    (void)state;
    for (size_t i = 0; i < sizeof(ct); i++)
        ct[i] = (uint8_t)(i * 13);
    msg = bus_new_decrypt_call("pkcs11:object=d", &p, ct, sizeof(ct));
    assert_non_null(msg);
    assert_string_equal(dbus_message_get_member(msg), "Decrypt");
    back = wire(msg);
    assert_int_equal(bus_parse_decrypt_call(back, &uri, &q, &data, &len), BUS_OK);
    assert_string_equal(uri, "pkcs11:object=d");
    assert_int_equal(q.alg, BUS_DEC_RSA_OAEP);
    assert_string_equal(q.hash, "sha256");
    assert_string_equal(q.mgf1_hash, "sha1");
    assert_int_equal(q.label_len, sizeof(label));
    assert_memory_equal(q.label, label, sizeof(label));
    assert_int_equal(len, sizeof(ct));
    assert_memory_equal(data, ct, sizeof(ct));
    dbus_message_unref(back);
    dbus_message_unref(msg);

    /* raw and PKCS#1 carry no parameters (OAEP ones are not even sent) */
    p.alg = BUS_DEC_RSA_RAW;
    msg = bus_new_decrypt_call("pkcs11:object=d", &p, ct, 1);
    assert_non_null(msg);
    assert_int_equal(bus_parse_decrypt_call(msg, &uri, &q, &data, &len), BUS_OK);
    assert_int_equal(q.alg, BUS_DEC_RSA_RAW);
    assert_string_equal(q.hash, "");
    assert_int_equal(q.label_len, 0);
    dbus_message_unref(msg);

    /* refused when building: empty or oversized data, long label, unknown
     * algorithm, a URI that is not UTF-8 */
    p.alg = BUS_DEC_RSA_PKCS1;
    assert_null(bus_new_decrypt_call("pkcs11:", &p, ct, 0));
    assert_null(bus_new_decrypt_call("pkcs11:", &p, ct, BUS_DECRYPT_MAX_DATA + 1));
    assert_null(bus_new_decrypt_call("pkcs11:object=\xff", &p, ct, 16));
    p.alg = 0;
    assert_null(bus_new_decrypt_call("pkcs11:", &p, ct, 16));
    p.alg = BUS_DEC_RSA_OAEP;
    p.label_len = BUS_DECRYPT_MAX_LABEL + 1;
    assert_null(bus_new_decrypt_call("pkcs11:", &p, ct, 16));
}

/* A Decrypt call built by hand: algorithm, one parameter, data length. */
static DBusMessage *raw_decrypt_call(const char *alg, const char *key, int type, const void *val,
                                     size_t data_len)
{
    static uint8_t d[BUS_DECRYPT_MAX_DATA + 8];
    DBusMessage *msg = dbus_message_new_method_call(NULL, BUS_PATH, BUS_IFACE, "Decrypt");
    DBusMessageIter it, dict, entry, var;
    const char *uri = "pkcs11:object=z";
    const uint8_t *dp = d;
    char sig[3] = {(char)type, 0, 0};

    if (type == DBUS_TYPE_ARRAY)
        sig[1] = DBUS_TYPE_BYTE;
    dbus_message_iter_init_append(msg, &it);
    dbus_message_iter_append_basic(&it, DBUS_TYPE_STRING, &uri);
    dbus_message_iter_append_basic(&it, DBUS_TYPE_STRING, &alg);
    dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict);
    if (key) {
        dbus_message_iter_open_container(&dict, DBUS_TYPE_DICT_ENTRY, NULL, &entry);
        dbus_message_iter_append_basic(&entry, DBUS_TYPE_STRING, &key);
        dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, sig, &var);
        if (type == DBUS_TYPE_ARRAY) {
            DBusMessageIter arr;
            const uint8_t *lp = d;

            dbus_message_iter_open_container(&var, DBUS_TYPE_ARRAY, "y", &arr);
            dbus_message_iter_append_fixed_array(&arr, DBUS_TYPE_BYTE, &lp, *(const int *)val);
            dbus_message_iter_close_container(&var, &arr);
        } else {
            dbus_message_iter_append_basic(&var, type, val);
        }
        dbus_message_iter_close_container(&entry, &var);
        dbus_message_iter_close_container(&dict, &entry);
    }
    dbus_message_iter_close_container(&it, &dict);
    dbus_message_append_args(msg, DBUS_TYPE_ARRAY, DBUS_TYPE_BYTE, &dp, (int)data_len,
                             DBUS_TYPE_INVALID);
    return msg;
}

static void test_bus_decrypt_call_rejects_bad_input(void **state)
{
    const char *uri;
    const uint8_t *data;
    size_t len;
    bus_decrypt_params_t q;
    DBusMessage *msg;
    int small = 4, big = BUS_DECRYPT_MAX_LABEL + 1;
    const struct {
        const char *alg, *key;
        int type;
        const void *val;
        size_t data_len;
        int want;
    } cases[] = {
        {"rsa-pss", NULL, 0, NULL, 256, BUS_ERR_UNSUPPORTED},       /* a signature alg */
        {"rsa-pkcs1", NULL, 0, NULL, 0, BUS_ERR_INVALID_ARGS},      /* no data */
        {"rsa-raw", NULL, 0, NULL, BUS_DECRYPT_MAX_DATA + 1, BUS_ERR_INVALID_ARGS},
        {"rsa-oaep", "hash", DBUS_TYPE_INT32, &(dbus_int32_t){5}, 256, BUS_ERR_INVALID_ARGS},
        {"rsa-oaep", "label", DBUS_TYPE_STRING, &(const char *){"l"}, 256, BUS_ERR_INVALID_ARGS},
        {"rsa-oaep", "hash", DBUS_TYPE_STRING,
         &(const char *){"sha256-with-a-name-far-too-long"}, 256, BUS_ERR_INVALID_ARGS},
        {"rsa-pkcs1", "hash", DBUS_TYPE_STRING, &(const char *){"sha1"}, 256,
         BUS_ERR_INVALID_ARGS},                                    /* OAEP-only parameter */
        {"rsa-raw", "future-param", DBUS_TYPE_INT32, &(dbus_int32_t){1}, 256, BUS_OK},
        {"rsa-pkcs1", NULL, 0, NULL, BUS_DECRYPT_MAX_DATA, BUS_OK},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        msg = raw_decrypt_call(cases[i].alg, cases[i].key, cases[i].type, cases[i].val,
                               cases[i].data_len);
        assert_int_equal(bus_parse_decrypt_call(msg, &uri, &q, &data, &len), cases[i].want);
        dbus_message_unref(msg);
    }
    /* labels: up to BUS_DECRYPT_MAX_LABEL bytes */
    msg = raw_decrypt_call("rsa-oaep", "label", DBUS_TYPE_ARRAY, &small, 256);
    assert_int_equal(bus_parse_decrypt_call(msg, &uri, &q, &data, &len), BUS_OK);
    assert_int_equal(q.label_len, 4);
    dbus_message_unref(msg);
    msg = raw_decrypt_call("rsa-oaep", "label", DBUS_TYPE_ARRAY, &big, 256);
    assert_int_equal(bus_parse_decrypt_call(msg, &uri, &q, &data, &len), BUS_ERR_INVALID_ARGS);
    dbus_message_unref(msg);
    /* the Sign signature under another name is still checked */
    msg = dbus_message_new_method_call(NULL, BUS_PATH, BUS_IFACE, "Decrypt");
    dbus_message_append_args(msg, DBUS_TYPE_STRING, &(const char *){"pkcs11:"},
                             DBUS_TYPE_INVALID);
    assert_int_equal(bus_parse_decrypt_call(msg, &uri, &q, &data, &len), BUS_ERR_INVALID_ARGS);
    dbus_message_unref(msg);
}

static void test_bus_status_round_trip(void **state)
{
    bus_status_t in = {.version = "1.2.3", .pid = 42, .tokens = 2, .keys = 9, .clients = 3,
                       .signatures = 1ull << 40, .sign_failures = 5, .decryptions = 7,
                       .decrypt_failures = 1ull << 33};
    bus_status_t out = {0};
    DBusMessage *msg = new_reply(), *back;

    assert_int_equal(bus_append_status(msg, &in), BUS_OK);
    back = wire(msg);
    assert_int_equal(bus_parse_status(back, &out), BUS_OK);
    assert_string_equal(out.version, "1.2.3");
    assert_int_equal(out.pid, 42);
    assert_int_equal(out.tokens, 2);
    assert_int_equal(out.keys, 9);
    assert_int_equal(out.clients, 3);
    assert_true(out.signatures == (1ull << 40));
    assert_int_equal(out.sign_failures, 5);
    assert_int_equal(out.decryptions, 7);
    assert_true(out.decrypt_failures == (1ull << 33));
    bus_status_clear(&out);
    dbus_message_unref(back);
    dbus_message_unref(msg);
}

static void test_bus_socket_path_precedence(void **state)
{
    char *p;

    unsetenv("P11AGENT_SOCKET");
    setenv("XDG_RUNTIME_DIR", "/run/user/4242", 1);
    p = bus_socket_path(NULL);
    assert_string_equal(p, "/run/user/4242/p11agent/agent.sock");
    free(p);
    p = bus_socket_path("/etc/custom.sock");
    assert_string_equal(p, "/etc/custom.sock");
    free(p);
    setenv("P11AGENT_SOCKET", "/tmp/env.sock", 1);
    p = bus_socket_path("/etc/custom.sock");
    assert_string_equal(p, "/tmp/env.sock");
    free(p);
    unsetenv("P11AGENT_SOCKET");
    unsetenv("XDG_RUNTIME_DIR");
    p = bus_default_socket_path();
    assert_non_null(strstr(p, "/run/user/"));
    free(p);
}

static void test_bus_connect_missing_socket_names_it(void **state)
{
    DBusConnection *conn = NULL;
    char *err = NULL;

    assert_int_equal(bus_client_connect("/nonexistent/p11agent-test.sock", &conn, &err),
                     BUS_ERR_NOT_RUNNING);
    assert_null(conn);
    assert_non_null(err);
    assert_non_null(strstr(err, "/nonexistent/p11agent-test.sock"));
    assert_non_null(strstr(err, "not running"));
    free(err);
}

static void test_bus_tokens_round_trip(void **state)
{
    bus_token_info_t in[2] = {
        {.uri = "pkcs11:token=a", .label = "a", .model = "m", .flags = BUS_TOKEN_LOGGED_IN |
                                                                     BUS_TOKEN_PIN_CACHED,
         .expires = 1800000000, .keys = 3},
        {.uri = "pkcs11:token=b", .label = "", .model = "", .flags = BUS_TOKEN_PIN_FINAL_TRY,
         .expires = 0, .keys = 0},
    };
    DBusMessage *msg = new_reply(), *back, *bad = new_reply();
    bus_token_info_t *out = NULL;
    size_t n = 0;

    assert_int_equal(bus_append_tokens(msg, in, 2), BUS_OK);
    back = wire(msg);
    assert_int_equal(bus_parse_tokens(back, &out, &n), BUS_OK);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_string_equal(out[i].uri, in[i].uri);
        assert_string_equal(out[i].label, in[i].label);
        assert_int_equal(out[i].flags, in[i].flags);
        assert_true(out[i].expires == in[i].expires);
        assert_int_equal(out[i].keys, in[i].keys);
    }
    bus_token_info_free_array(out, n);
    /* a key list is not a token list */
    assert_int_equal(bus_append_keys(bad, NULL, 0), BUS_OK);
    out = NULL;
    assert_int_equal(bus_parse_tokens(bad, &out, &n), BUS_ERR_PROTOCOL);
    assert_null(out);
    dbus_message_unref(bad);
    dbus_message_unref(back);
    dbus_message_unref(msg);
}

/* Labels and token info come from PKCS#11 modules and may hold any bytes;
 * libdbus aborts the process on a string that is not UTF-8. Each bad byte
 * must arrive as U+FFFD, good characters unchanged, nothing cut. */
#define BAD_LABEL "k\xff\xfe caf\xc3\xa9 \xc3"   /* two stray bytes, an é, a cut é */
#define BAD_LABEL_SAFE "k\xef\xbf\xbd\xef\xbf\xbd caf\xc3\xa9 \xef\xbf\xbd"
#define BAD_TOKEN "tok\xed\xa0\x80"              /* an encoded surrogate */
#define BAD_TOKEN_SAFE "tok\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"

static void test_bus_keys_invalid_utf8_replaced(void **state)
{
    uint8_t spki[] = {0x30, 0x00};
    bus_key_info_t in = {.uri = "pkcs11:token=a;object=k;type=private", .type = BUS_KEY_EC,
                         .bits = 256, .group = "prime\x80", .label = BAD_LABEL,
                         .token = BAD_TOKEN, .spki = spki, .spki_len = sizeof(spki)};
    DBusMessage *msg = new_reply(), *back;
    bus_key_info_t *out = NULL;
    size_t n = 0;

    assert_int_equal(bus_append_keys(msg, &in, 1), BUS_OK);
    back = wire(msg);
    assert_int_equal(bus_parse_keys(back, &out, &n), BUS_OK);
    assert_int_equal(n, 1);
    assert_string_equal(out[0].uri, in.uri);
    assert_string_equal(out[0].group, "prime\xef\xbf\xbd");
    assert_string_equal(out[0].label, BAD_LABEL_SAFE);
    assert_string_equal(out[0].token, BAD_TOKEN_SAFE);
    bus_key_info_free_array(out, n);
    dbus_message_unref(back);
    dbus_message_unref(msg);
}

static void test_bus_tokens_and_status_invalid_utf8_replaced(void **state)
{
    bus_token_info_t in = {.uri = "pkcs11:token=x", .label = BAD_TOKEN, .model = BAD_LABEL,
                           .keys = 1};
    bus_status_t st = {.version = "1.0\xf5", .pid = 1};
    bus_status_t st_out = {0};
    DBusMessage *msg = new_reply(), *back, *smsg = new_reply(), *sback;
    bus_token_info_t *out = NULL;
    size_t n = 0;

    assert_int_equal(bus_append_tokens(msg, &in, 1), BUS_OK);
    back = wire(msg);
    assert_int_equal(bus_parse_tokens(back, &out, &n), BUS_OK);
    assert_int_equal(n, 1);
    assert_string_equal(out[0].label, BAD_TOKEN_SAFE);
    assert_string_equal(out[0].model, BAD_LABEL_SAFE);
    bus_token_info_free_array(out, n);

    assert_int_equal(bus_append_status(smsg, &st), BUS_OK);
    sback = wire(smsg);
    assert_int_equal(bus_parse_status(sback, &st_out), BUS_OK);
    assert_string_equal(st_out.version, "1.0\xef\xbf\xbd");
    bus_status_clear(&st_out);
    dbus_message_unref(sback);
    dbus_message_unref(smsg);
    dbus_message_unref(back);
    dbus_message_unref(msg);
}

static void test_bus_append_string_long_and_valid(void **state)
{
    /* a long valid string goes as is; a long invalid one is replaced, not cut */
    size_t n = 3000;
    char *good = malloc(2 * n + 1), *bad = malloc(n + 1);
    DBusMessage *msg = new_reply(), *back;
    DBusMessageIter it;
    const char *a = NULL, *b = NULL;

    assert_non_null(good);
    assert_non_null(bad);
    for (size_t i = 0; i < n; i++) {
        memcpy(good + 2 * i, "\xc3\xa9", 2);
        bad[i] = (char)0xe9; /* Latin-1 é */
    }
    good[2 * n] = bad[n] = '\0';
    dbus_message_iter_init_append(msg, &it);
    assert_true(bus_append_string(&it, good));
    assert_true(bus_append_string(&it, bad));
    assert_true(bus_append_string(&it, NULL));
    back = wire(msg);
    assert_string_equal(dbus_message_get_signature(back), "sss");
    dbus_message_iter_init(back, &it);
    dbus_message_iter_get_basic(&it, &a);
    assert_string_equal(a, good);
    dbus_message_iter_next(&it);
    dbus_message_iter_get_basic(&it, &b);
    assert_int_equal(strlen(b), 3 * n);
    for (size_t i = 0; i < n; i++)
        assert_memory_equal(b + 3 * i, "\xef\xbf\xbd", 3);
    dbus_message_iter_next(&it);
    dbus_message_iter_get_basic(&it, &a);
    assert_string_equal(a, "");
    dbus_message_unref(back);
    dbus_message_unref(msg);
    free(good);
    free(bad);
}

/* An agent that accepted the connection but does not run (SIGSTOPped,
 * hung): nothing answers the EXTERNAL handshake. libdbus waits for it
 * without a timeout; the client must give up after the call's timeout. */
static void test_bus_call_to_silent_agent_times_out(void **state)
{
    char dir[] = "/tmp/p11agent-test-XXXXXX", path[64];
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    DBusConnection *conn = NULL;
    bus_status_t st = {0};
    char *msg = NULL;
    int fd;

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/agent.sock", dir);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 4), 0); /* and never accept */
    assert_int_equal(bus_client_connect(path, &conn, &msg), BUS_OK);
    assert_int_equal(bus_client_status(conn, 300, &st, &msg), BUS_ERR_TIMEOUT);
    assert_non_null(msg);
    assert_non_null(strstr(msg, "authentication"));
    free(msg);
    bus_client_close(conn);
    close(fd);
    unlink(path);
    rmdir(dir);
}

static void test_bus_client_refuses_non_utf8_uri(void **state)
{
    bus_sign_params_t p = {.alg = BUS_SIG_ECDSA, .hash = "sha256"};
    const char *uri = "pkcs11:object=\xff\n";
    bus_key_info_t *keys = NULL;
    size_t n = 0;
    uint32_t count = 0;
    char *err = NULL;

    assert_null(bus_new_sign_template(uri, &p));
    assert_null(bus_new_sign_call(uri, &p, (const uint8_t *)"0123", 4));
    /* refused before any connection is needed: conn NULL */
    assert_int_equal(bus_client_find_keys(NULL, uri, 1000, &keys, &n, &err), BUS_ERR_INVALID_ARGS);
    assert_non_null(err);
    assert_non_null(strstr(err, "not UTF-8"));
    assert_non_null(strstr(err, "\\xff\\n")); /* shown escaped */
    free(err);
    err = NULL;
    assert_int_equal(bus_client_lock(NULL, uri, false, 1000, &count, &err), BUS_ERR_INVALID_ARGS);
    free(err);
    err = NULL;
    assert_int_equal(bus_client_unlock(NULL, uri, "1234", 4, 0, 0, 1000, &err),
                     BUS_ERR_INVALID_ARGS);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bus_error_names_round_trip),
        cmocka_unit_test(test_bus_type_and_alg_names),
        cmocka_unit_test(test_bus_keys_round_trip),
        cmocka_unit_test(test_bus_keys_empty_and_malformed),
        cmocka_unit_test(test_bus_sign_call_round_trip),
        cmocka_unit_test(test_bus_sign_template_copies_equal_direct_call),
        cmocka_unit_test(test_bus_sign_call_rejects_bad_input),
        cmocka_unit_test(test_bus_decrypt_call_round_trip),
        cmocka_unit_test(test_bus_decrypt_call_rejects_bad_input),
        cmocka_unit_test(test_bus_status_round_trip),
        cmocka_unit_test(test_bus_tokens_round_trip),
        cmocka_unit_test(test_bus_socket_path_precedence),
        cmocka_unit_test(test_bus_connect_missing_socket_names_it),
        cmocka_unit_test(test_bus_keys_invalid_utf8_replaced),
        cmocka_unit_test(test_bus_tokens_and_status_invalid_utf8_replaced),
        cmocka_unit_test(test_bus_append_string_long_and_valid),
        cmocka_unit_test(test_bus_client_refuses_non_utf8_uri),
        cmocka_unit_test(test_bus_call_to_silent_agent_times_out),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
