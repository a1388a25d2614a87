/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for p11agent-pkcs11.so without the real agent.
 *
 * The pure parts first: URI attributes, blank-padded fields, ECDSA
 * DER -> r||s, objects built from key records, attribute lookup and
 * template matching by PKCS#11 rules, mechanism parameters, and hostile
 * key records. Then the module's entry points (linked in) against the fake
 * agent (fakeagent.c): a libdbus peer-to-peer server on a temporary socket
 * driven by the agent's poll loop (agent/loop.c) in a thread, answering
 * ListTokens, ListKeys, Sign and Unlock with software keys, and told to
 * misbehave (wrong signature lengths, malformed DER, odd key records,
 * agent errors).
 */
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "fakeagent.h"
#include "module.h"

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ret);

/* ------------------------------------------------------------------ */
/* Software keys                                                       */
/* ------------------------------------------------------------------ */

#define TOKEN_URI "pkcs11:model=Fake%20Model;manufacturer=Fake%20Maker;serial=42;token=tok"
#define KEY_URI(id, obj)                                                                           \
    "pkcs11:model=Fake%20Model;manufacturer=Fake%20Maker;serial=42;token=tok;id=" id              \
    ";object=" obj ";type=private"

static fake_key_t keys[] = {
    {KEY_URI("%01", "rsa"), "RSA", NULL, 2048, BUS_KEY_RSA,
     BUS_KEY_CAN_RSA_PKCS1 | BUS_KEY_CAN_RSA_PSS, NULL, NULL},
    {KEY_URI("%00%02", "p256"), "EC", "P-256", 0, BUS_KEY_EC, BUS_KEY_CAN_ECDSA, NULL, NULL},
    {KEY_URI("%03", "p384"), "EC", "P-384", 0, BUS_KEY_EC, BUS_KEY_CAN_ECDSA, NULL, NULL},
    {KEY_URI("%04", "ed25519"), "ED25519", NULL, 0, BUS_KEY_ED25519, BUS_KEY_CAN_EDDSA, NULL, NULL},
};
#define N_KEYS (sizeof(keys) / sizeof(keys[0]))
#define K_RSA (&keys[0])
#define K_P256 (&keys[1])
#define K_P384 (&keys[2])
#define K_ED (&keys[3])

static X509 *cert_of(const fake_key_t *k)
{
    return fake_cert(k->soft, k->alg, "issuer", 0x1234567);
}

/* ------------------------------------------------------------------ */
/* The fake agent (fakeagent.c)                                        */
/* ------------------------------------------------------------------ */

static const bus_token_info_t token = {
    .uri = TOKEN_URI, .label = "tok", .model = "Fake Model", .keys = 4};

/* ListKeys with fake_set(.., odd = true, ..): hostile records beside the good ones. */
/* ListKeys replies that carried the records below (the server's thread) */
static atomic_uint odd_served;

static size_t odd_records(bus_key_info_t *recs)
{
    size_t n = 0;

    atomic_fetch_add(&odd_served, 1);

    /* a key whose SPKI is not one */
    fake_record(K_P256, NULL, &recs[n]);
    free(recs[n].uri);
    recs[n].uri = strdup(KEY_URI("%09", "junk"));
    recs[n].spki[0] = 0x31;
    n++;
    /* RSA with a size that is not its modulus' */
    fake_record(K_RSA, NULL, &recs[n]);
    free(recs[n].uri);
    recs[n].uri = strdup(KEY_URI("%0a", "liar"));
    recs[n].bits = 4096;
    n++;
    /* an id that does not decode */
    fake_record(K_P384, NULL, &recs[n]);
    free(recs[n].uri);
    recs[n].uri = strdup(KEY_URI("%zz", "badid"));
    n++;
    /* a huge label */
    fake_record(K_ED, NULL, &recs[n]);
    free(recs[n].label);
    recs[n].label = malloc(MOD_MAX_ATTR + 2);
    memset(recs[n].label, 'x', MOD_MAX_ATTR + 1);
    recs[n].label[MOD_MAX_ATTR + 1] = '\0';
    free(recs[n].uri);
    recs[n].uri = strdup(KEY_URI("%0b", "huge"));
    n++;
    return n;
}

static const fake_config_t fake_config = {
    .keys = keys,
    .n_keys = N_KEYS,
    .methods = FAKE_LIST_TOKENS | FAKE_LIST_KEYS | FAKE_SIGN | FAKE_UNLOCK,
    .token = &token,
    .odd_records = odd_records,
};

static int group_setup(void **state)
{
    if (fake_keys_make(keys, N_KEYS, cert_of) < 0 || srv_start(&fake_config) < 0)
        return -1;
    setenv("P11AGENT_SOCKET", srv.socket, 1);
    return 0;
}

static int group_teardown(void **state)
{
    srv_stop();
    fake_keys_free(keys, N_KEYS);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Pure functions                                                      */
/* ------------------------------------------------------------------ */

static void test_module_uri_attr(void **state)
{
    uint8_t v[8];
    size_t n = 99;

    assert_int_equal(mod_uri_attr("pkcs11:token=a;id=%00%01%ff;object=x", "id", v, sizeof(v), &n),
                     MOD_URI_OK);
    assert_int_equal(n, 3);
    assert_memory_equal(v, "\x00\x01\xff", 3);
    /* a name that merely starts like another is another */
    assert_int_equal(mod_uri_attr("pkcs11:ids=1;xid=2", "id", v, sizeof(v), &n), MOD_URI_ABSENT);
    /* the query is not the path */
    assert_int_equal(mod_uri_attr("pkcs11:token=a?id=1", "id", v, sizeof(v), &n), MOD_URI_ABSENT);
    assert_int_equal(mod_uri_attr("pkcs11:token=My%20Card", "token", v, sizeof(v), &n), MOD_URI_OK);
    assert_int_equal(n, 7);
    assert_memory_equal(v, "My Card", 7);
    assert_int_equal(mod_uri_attr("pkcs11:id=", "id", v, sizeof(v), &n), MOD_URI_OK);
    assert_int_equal(n, 0);
    assert_int_equal(mod_uri_attr("pkcs11:id=%zz", "id", v, sizeof(v), &n), MOD_URI_BAD);
    assert_int_equal(mod_uri_attr("pkcs11:id=%4", "id", v, sizeof(v), &n), MOD_URI_BAD);
    assert_int_equal(mod_uri_attr("pkcs11:id=123456789", "id", v, sizeof(v), &n), MOD_URI_BAD);
    assert_int_equal(mod_uri_attr("file:id=1", "id", v, sizeof(v), &n), MOD_URI_ABSENT);
    assert_int_equal(mod_uri_attr(NULL, "id", v, sizeof(v), &n), MOD_URI_ABSENT);
}

static void test_module_pad(void **state)
{
    CK_UTF8CHAR f[8];

    mod_pad(f, sizeof(f), (const uint8_t *)"abc", 3);
    assert_memory_equal(f, "abc     ", 8);
    mod_pad(f, sizeof(f), (const uint8_t *)"abcdefghij", 10);
    assert_memory_equal(f, "abcdefgh", 8);
    /* a 2-byte character that does not fit whole is left out */
    mod_pad(f, sizeof(f), (const uint8_t *)"abcdefg\xc3\xa9", 9);
    assert_memory_equal(f, "abcdefg ", 8);
    /* bytes that are not UTF-8 are dropped */
    mod_pad(f, sizeof(f), (const uint8_t *)"a\xff\xfe" "b", 4);
    assert_memory_equal(f, "ab      ", 8);
}

static void test_module_ecdsa_der_to_raw(void **state)
{
    /* r = 0x00 0x80 (positive, high bit), s = 0x01 */
    static const uint8_t good[] = {0x30, 0x07, 0x02, 0x02, 0x00, 0x80, 0x02, 0x01, 0x01};
    static const uint8_t negative[] = {0x30, 0x06, 0x02, 0x01, 0x80, 0x02, 0x01, 0x01};
    static const uint8_t trailing[] = {0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00};
    static const uint8_t long_r[] = {0x30, 0x08, 0x02, 0x03, 0x01, 0x02, 0x03, 0x02, 0x01, 0x01};
    static const uint8_t three[] = {0x30, 0x09, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01,
                                    0x02, 0x01, 0x01};
    uint8_t out[4];

    assert_int_equal(mod_ecdsa_der_to_raw(good, sizeof(good), 2, out), CKR_OK);
    assert_memory_equal(out, "\x00\x80\x00\x01", 4);
    assert_int_equal(mod_ecdsa_der_to_raw(negative, sizeof(negative), 2, out), CKR_DEVICE_ERROR);
    assert_int_equal(mod_ecdsa_der_to_raw(trailing, sizeof(trailing), 2, out), CKR_DEVICE_ERROR);
    assert_int_equal(mod_ecdsa_der_to_raw(long_r, sizeof(long_r), 2, out), CKR_DEVICE_ERROR);
    assert_int_equal(mod_ecdsa_der_to_raw(three, sizeof(three), 2, out), CKR_DEVICE_ERROR);
    assert_int_equal(mod_ecdsa_der_to_raw(good, 3, 2, out), CKR_DEVICE_ERROR);
    assert_int_equal(mod_ecdsa_der_to_raw(NULL, 0, 2, out), CKR_DEVICE_ERROR);
}

static const mod_attr_t *attr(const mod_object_t *o, CK_ATTRIBUTE_TYPE t)
{
    const mod_attr_t *a = mod_object_attr(o, t);

    assert_non_null(a);
    return a;
}

static CK_ULONG attr_ulong(const mod_object_t *o, CK_ATTRIBUTE_TYPE t)
{
    const mod_attr_t *a = attr(o, t);
    CK_ULONG v;

    assert_int_equal(a->len, sizeof(v));
    memcpy(&v, a->value, sizeof(v));
    return v;
}

static bool attr_bool(const mod_object_t *o, CK_ATTRIBUTE_TYPE t)
{
    const mod_attr_t *a = attr(o, t);

    assert_int_equal(a->len, 1);
    return a->value[0] == CK_TRUE;
}

static void test_module_objects_rsa(void **state)
{
    bus_key_info_t r;
    mod_key_t k;
    const char *why = NULL;
    const mod_object_t *priv, *pub, *crt;
    BIGNUM *n = NULL;
    uint8_t nbuf[256];
    unsigned char *der = NULL;
    int dl;

    fake_record(K_RSA, NULL, &r);
    assert_int_equal(mod_key_from_record(&r, &k, &why), 0);
    assert_int_equal(k.sig_len, 256);
    assert_true(k.has_cert);
    priv = &k.obj[MOD_OBJ_PRIVATE];
    pub = &k.obj[MOD_OBJ_PUBLIC];
    crt = &k.obj[MOD_OBJ_CERT];
    assert_int_equal(attr_ulong(priv, CKA_CLASS), CKO_PRIVATE_KEY);
    assert_int_equal(attr_ulong(pub, CKA_CLASS), CKO_PUBLIC_KEY);
    assert_int_equal(attr_ulong(crt, CKA_CLASS), CKO_CERTIFICATE);
    assert_int_equal(attr_ulong(priv, CKA_KEY_TYPE), CKK_RSA);
    assert_true(attr_bool(priv, CKA_SIGN));
    assert_true(attr_bool(priv, CKA_SENSITIVE));
    assert_false(attr_bool(priv, CKA_EXTRACTABLE));
    assert_false(attr_bool(priv, CKA_DECRYPT));
    assert_false(attr_bool(priv, CKA_ALWAYS_AUTHENTICATE));
    assert_true(attr_bool(priv, CKA_TOKEN));
    assert_false(attr_bool(priv, CKA_MODIFIABLE));
    /* the same CKA_ID (from the URI) and CKA_LABEL on all three */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(attr(&k.obj[i], CKA_ID)->len, 1);
        assert_int_equal(attr(&k.obj[i], CKA_ID)->value[0], 1);
        assert_int_equal(attr(&k.obj[i], CKA_LABEL)->len, 3);
        assert_memory_equal(attr(&k.obj[i], CKA_LABEL)->value, "rsa", 3);
    }
    /* the modulus is the key's */
    assert_true(EVP_PKEY_get_bn_param(K_RSA->soft, "n", &n));
    assert_int_equal(BN_bn2bin(n, nbuf), 256);
    assert_int_equal(attr(pub, CKA_MODULUS)->len, 256);
    assert_memory_equal(attr(pub, CKA_MODULUS)->value, nbuf, 256);
    assert_memory_equal(attr(priv, CKA_MODULUS)->value, nbuf, 256);
    assert_int_equal(attr_ulong(pub, CKA_MODULUS_BITS), 2048);
    assert_int_equal(attr(pub, CKA_PUBLIC_EXPONENT)->len, 3);
    BN_free(n);
    /* secret parts: there, never readable */
    assert_null(attr(priv, CKA_PRIVATE_EXPONENT)->value);
    /* the certificate's parts */
    assert_int_equal(attr(crt, CKA_VALUE)->len, r.cert_len);
    dl = i2d_X509_NAME(X509_get_subject_name(K_RSA->cert), &der);
    assert_int_equal(attr(crt, CKA_SUBJECT)->len, (CK_ULONG)dl);
    assert_memory_equal(attr(crt, CKA_SUBJECT)->value, der, (size_t)dl);
    assert_memory_equal(attr(priv, CKA_SUBJECT)->value, der, (size_t)dl);
    OPENSSL_free(der);
    der = NULL;
    dl = i2d_X509_NAME(X509_get_issuer_name(K_RSA->cert), &der);
    assert_memory_equal(attr(crt, CKA_ISSUER)->value, der, (size_t)dl);
    OPENSSL_free(der);
    der = NULL;
    dl = i2d_ASN1_INTEGER(X509_get_serialNumber(K_RSA->cert), &der);
    assert_int_equal(attr(crt, CKA_SERIAL_NUMBER)->len, (CK_ULONG)dl);
    assert_memory_equal(attr(crt, CKA_SERIAL_NUMBER)->value, der, (size_t)dl);
    OPENSSL_free(der);
    assert_int_equal(attr_ulong(crt, CKA_CERTIFICATE_TYPE), CKC_X_509);
    mod_key_clear(&k);
    bus_key_info_clear(&r);
}

static void test_module_objects_ec_and_eddsa(void **state)
{
    bus_key_info_t r;
    mod_key_t k;
    const char *why = NULL;
    uint8_t point[200];
    size_t plen = 0;
    const mod_attr_t *a;

    fake_record(K_P384, NULL, &r);
    assert_int_equal(mod_key_from_record(&r, &k, &why), 0);
    assert_int_equal(k.sig_len, 96);
    assert_true(EVP_PKEY_get_octet_string_param(K_P384->soft, "pub", point, sizeof(point), &plen));
    a = attr(&k.obj[MOD_OBJ_PUBLIC], CKA_EC_POINT);
    /* a DER OCTET STRING holding the point */
    assert_int_equal(a->len, plen + 2);
    assert_int_equal(a->value[0], 0x04);
    assert_int_equal(a->value[1], plen);
    assert_memory_equal(a->value + 2, point, plen);
    a = attr(&k.obj[MOD_OBJ_PUBLIC], CKA_EC_PARAMS);
    assert_memory_equal(a->value, "\x06\x05\x2b\x81\x04\x00\x22", 7); /* secp384r1 */
    assert_int_equal(attr(&k.obj[MOD_OBJ_PRIVATE], CKA_ID)->len, 1);
    assert_null(attr(&k.obj[MOD_OBJ_PRIVATE], CKA_VALUE)->value);
    mod_key_clear(&k);
    bus_key_info_clear(&r);

    fake_record(K_P256, NULL, &r); /* id=%00%02: binary, with a NUL */
    assert_int_equal(mod_key_from_record(&r, &k, &why), 0);
    assert_int_equal(attr(&k.obj[MOD_OBJ_CERT], CKA_ID)->len, 2);
    assert_memory_equal(attr(&k.obj[MOD_OBJ_CERT], CKA_ID)->value, "\x00\x02", 2);
    mod_key_clear(&k);
    bus_key_info_clear(&r);

    fake_record(K_ED, NULL, &r);
    assert_int_equal(mod_key_from_record(&r, &k, &why), 0);
    assert_int_equal(k.sig_len, 64);
    assert_int_equal(attr_ulong(&k.obj[MOD_OBJ_PRIVATE], CKA_KEY_TYPE), CKK_EC_EDWARDS);
    a = attr(&k.obj[MOD_OBJ_PUBLIC], CKA_EC_PARAMS);
    assert_int_equal(a->len, 5);
    assert_memory_equal(a->value, "\x06\x03\x2b\x65\x70", 5);
    assert_int_equal(attr(&k.obj[MOD_OBJ_PUBLIC], CKA_EC_POINT)->len, 34);
    mod_key_clear(&k);
    bus_key_info_clear(&r);
}

static void test_module_attribute_rules(void **state)
{
    bus_key_info_t r;
    mod_key_t k;
    const char *why = NULL;
    CK_KEY_TYPE kt = 0;
    uint8_t small[2], big[64];
    CK_ATTRIBUTE t[4];

    fake_record(K_P256, NULL, &r);
    assert_int_equal(mod_key_from_record(&r, &k, &why), 0);
    /* length query */
    t[0] = (CK_ATTRIBUTE){CKA_LABEL, NULL, 0};
    assert_int_equal(mod_object_get(&k.obj[MOD_OBJ_PRIVATE], t, 1), CKR_OK);
    assert_int_equal(t[0].ulValueLen, 4);
    /* every attribute on its own: one too small, one unknown, one
     * sensitive, one that fits */
    t[0] = (CK_ATTRIBUTE){CKA_LABEL, small, sizeof(small)};
    t[1] = (CK_ATTRIBUTE){CKA_MODULUS, big, sizeof(big)};
    t[2] = (CK_ATTRIBUTE){CKA_VALUE, big, sizeof(big)};
    t[3] = (CK_ATTRIBUTE){CKA_KEY_TYPE, &kt, sizeof(kt)};
    assert_int_not_equal(mod_object_get(&k.obj[MOD_OBJ_PRIVATE], t, 4), CKR_OK);
    assert_int_equal(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_int_equal(t[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_int_equal(t[2].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_int_equal(t[3].ulValueLen, sizeof(kt));
    assert_int_equal(kt, CKK_EC);
    /* each failure alone gives its own code */
    t[0] = (CK_ATTRIBUTE){CKA_LABEL, small, sizeof(small)};
    assert_int_equal(mod_object_get(&k.obj[MOD_OBJ_PRIVATE], t, 1), CKR_BUFFER_TOO_SMALL);
    t[0] = (CK_ATTRIBUTE){CKA_MODULUS, big, sizeof(big)};
    assert_int_equal(mod_object_get(&k.obj[MOD_OBJ_PRIVATE], t, 1), CKR_ATTRIBUTE_TYPE_INVALID);
    t[0] = (CK_ATTRIBUTE){CKA_VALUE, NULL, 0};
    assert_int_equal(mod_object_get(&k.obj[MOD_OBJ_PRIVATE], t, 1), CKR_ATTRIBUTE_SENSITIVE);
    assert_int_equal(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    mod_key_clear(&k);
    bus_key_info_clear(&r);
}

static void test_module_template_match(void **state)
{
    bus_key_info_t r;
    mod_key_t k;
    const char *why = NULL;
    CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY, crt = CKO_CERTIFICATE;
    CK_BBOOL yes = CK_TRUE;
    uint8_t id[] = {0x00, 0x02}, wrong_id[] = {0x00};
    CK_ATTRIBUTE t[3];

    fake_record(K_P256, NULL, &r);
    assert_int_equal(mod_key_from_record(&r, &k, &why), 0);
    assert_true(mod_object_match(&k.obj[MOD_OBJ_PRIVATE], NULL, 0));
    t[0] = (CK_ATTRIBUTE){CKA_CLASS, &priv, sizeof(priv)};
    t[1] = (CK_ATTRIBUTE){CKA_ID, id, sizeof(id)};
    t[2] = (CK_ATTRIBUTE){CKA_SIGN, &yes, sizeof(yes)};
    assert_true(mod_object_match(&k.obj[MOD_OBJ_PRIVATE], t, 3));
    assert_false(mod_object_match(&k.obj[MOD_OBJ_PUBLIC], t, 3));
    t[0] = (CK_ATTRIBUTE){CKA_CLASS, &crt, sizeof(crt)};
    assert_false(mod_object_match(&k.obj[MOD_OBJ_CERT], t, 3)); /* no CKA_SIGN there */
    assert_true(mod_object_match(&k.obj[MOD_OBJ_CERT], t, 2));
    t[1] = (CK_ATTRIBUTE){CKA_ID, wrong_id, sizeof(wrong_id)};
    assert_false(mod_object_match(&k.obj[MOD_OBJ_CERT], t, 2));
    /* a secret part never matches, whatever the template says */
    t[0] = (CK_ATTRIBUTE){CKA_VALUE, NULL, CK_UNAVAILABLE_INFORMATION};
    assert_false(mod_object_match(&k.obj[MOD_OBJ_PRIVATE], t, 1));
    mod_key_clear(&k);
    bus_key_info_clear(&r);
}

static void test_module_hostile_records(void **state)
{
    bus_key_info_t r;
    mod_key_t k;
    const char *why;

    /* each record is broken in one way; each is refused with a reason */
    for (int c = 0; c < 9; c++) {
        fake_record(c == 2 || c == 7 ? K_P256 : K_RSA, NULL, &r);
        switch (c) {
        case 0:
            r.spki_len = 5;
            break;
        case 1:
            r.bits = 1024; /* not the modulus' size */
            break;
        case 2:
            r.type = BUS_KEY_RSA; /* an EC SPKI */
            r.bits = 2048;
            break;
        case 3:
            r.type = BUS_KEY_UNKNOWN;
            break;
        case 4:
            r.bits = 0;
            break;
        case 5:
            free(r.uri);
            r.uri = strdup("pkcs11:id=%4");
            break;
        case 6:
            r.spki[r.spki_len - 1] ^= 0xff; /* still parses: the modulus changes */
            r.spki_len--;                    /* but now it is cut */
            break;
        case 7:
            r.spki[1]++; /* the outer length runs past the end */
            break;
        case 8:
            free(r.spki);
            r.spki = NULL;
            break;
        }
        why = NULL;
        assert_int_equal(mod_key_from_record(&r, &k, &why), -1);
        assert_non_null(why);
        bus_key_info_clear(&r);
    }
    /* a broken certificate: the key stays, without a certificate object */
    fake_record(K_P256, NULL, &r);
    r.cert[1] ^= 0x7f;
    assert_int_equal(mod_key_from_record(&r, &k, &why), 0);
    assert_false(k.has_cert);
    mod_key_clear(&k);
    bus_key_info_clear(&r);
}

static void test_module_mech_params(void **state)
{
    CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
    CK_MECHANISM m = {CKM_RSA_PKCS_PSS, &pss, sizeof(pss)};
    bus_sign_params_t p;

    assert_int_equal(mod_mech_params(mod_mech_find(CKM_RSA_PKCS_PSS), &m, &p), CKR_OK);
    assert_string_equal(p.hash, "sha256");
    assert_string_equal(p.mgf1_hash, "sha256");
    assert_int_equal(p.salt_len, 32);
    /* the hash-and-sign form hashes with its own hash: hashAlg must agree */
    m.mechanism = CKM_SHA384_RSA_PKCS_PSS;
    assert_int_equal(mod_mech_params(mod_mech_find(CKM_SHA384_RSA_PKCS_PSS), &m, &p),
                     CKR_MECHANISM_PARAM_INVALID);
    m.ulParameterLen = 4;
    assert_int_equal(mod_mech_params(mod_mech_find(CKM_RSA_PKCS_PSS), &m, &p),
                     CKR_MECHANISM_PARAM_INVALID);
    pss.mgf = 77;
    m.ulParameterLen = sizeof(pss);
    assert_int_equal(mod_mech_params(mod_mech_find(CKM_RSA_PKCS_PSS), &m, &p),
                     CKR_MECHANISM_PARAM_INVALID);
    m = (CK_MECHANISM){CKM_ECDSA_SHA256, &pss, sizeof(pss)};
    assert_int_equal(mod_mech_params(mod_mech_find(CKM_ECDSA_SHA256), &m, &p),
                     CKR_MECHANISM_PARAM_INVALID);
    m = (CK_MECHANISM){CKM_ECDSA_SHA256, NULL, 0};
    assert_int_equal(mod_mech_params(mod_mech_find(CKM_ECDSA_SHA256), &m, &p), CKR_OK);
    assert_int_equal(p.alg, BUS_SIG_ECDSA);
    assert_null(mod_mech_find(CKM_RSA_X_509));
    assert_int_equal(mod_rv_from_bus(BUS_ERR_TOKEN_REMOVED), CKR_DEVICE_REMOVED);
    assert_int_equal(mod_rv_from_bus(BUS_ERR_LOCKED), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(mod_rv_from_bus(BUS_ERR_DENIED), CKR_FUNCTION_REJECTED);
}

/* ------------------------------------------------------------------ */
/* The module against the fake agent                                   */
/* ------------------------------------------------------------------ */

static CK_FUNCTION_LIST *f;

static void mod_init(void)
{
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};

    assert_int_equal(C_GetFunctionList(&f), CKR_OK);
    assert_int_equal(f->C_Initialize(&args), CKR_OK);
}

static CK_SLOT_ID one_slot(void)
{
    CK_SLOT_ID s[4];
    CK_ULONG n = 0;

    assert_int_equal(f->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(f->C_GetSlotList(CK_TRUE, s, &n), CKR_OK);
    return s[0];
}

static CK_SESSION_HANDLE open_session(void)
{
    CK_SESSION_HANDLE h;

    assert_int_equal(f->C_OpenSession(one_slot(), CKF_SERIAL_SESSION, NULL, NULL, &h), CKR_OK);
    return h;
}

/* The one object of a class labelled label. */
static CK_OBJECT_HANDLE find(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE h[2];
    CK_ULONG n = 0;

    assert_int_equal(f->C_FindObjectsInit(s, t, 2), CKR_OK);
    assert_int_equal(f->C_FindObjects(s, h, 2, &n), CKR_OK);
    assert_int_equal(f->C_FindObjectsFinal(s), CKR_OK);
    assert_int_equal(n, 1);
    return h[0];
}

static void test_module_init_rules(void **state)
{
    CK_C_INITIALIZE_ARGS bad = {.CreateMutex = (CK_CREATEMUTEX)1};
    CK_INFO info;

    assert_int_equal(C_GetFunctionList(&f), CKR_OK);
    assert_int_equal(f->version.major, 2);
    assert_int_equal(f->C_GetSlotList(CK_TRUE, NULL, &(CK_ULONG){0}), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_int_equal(f->C_Initialize(&bad), CKR_ARGUMENTS_BAD);
    /* C_GetInfo answers before C_Initialize (the agent's guard asks it) */
    assert_int_equal(f->C_GetInfo(&info), CKR_OK);
    assert_memory_equal(info.manufacturerID, "p11agent ", 9);
    mod_init();
    assert_int_equal(f->C_Initialize(NULL), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    assert_int_equal(f->C_Finalize(NULL), CKR_OK);
    assert_int_equal(f->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
}

static void test_module_token_info_and_login(void **state)
{
    CK_TOKEN_INFO ti;
    CK_SESSION_INFO si;
    CK_SESSION_HANDLE s;
    int unlocks;

    fake_set(true, false, SIGN_OK, BUS_OK);
    mod_init();
    assert_int_equal(f->C_GetTokenInfo(one_slot(), &ti), CKR_OK);
    assert_memory_equal(ti.label, "tok                             ", 32);
    assert_memory_equal(ti.manufacturerID, "Fake Maker                      ", 32);
    assert_memory_equal(ti.model, "Fake Model      ", 16);
    assert_memory_equal(ti.serialNumber, "42              ", 16);
    assert_int_equal(ti.flags & CKF_LOGIN_REQUIRED, 0);
    s = open_session();
    assert_int_equal(f->C_GetSessionInfo(s, &si), CKR_OK);
    assert_int_equal(si.state, CKS_RO_USER_FUNCTIONS);
    /* a program that logs in anyway: accepted, the PIN goes nowhere */
    pthread_mutex_lock(&fake_lock);
    unlocks = fake.unlocks;
    pthread_mutex_unlock(&fake_lock);
    assert_int_equal(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "1234", 4), CKR_OK);
    pthread_mutex_lock(&fake_lock);
    assert_int_equal(fake.unlocks, unlocks);
    pthread_mutex_unlock(&fake_lock);
    assert_int_equal(f->C_Logout(s), CKR_OK);
    assert_int_equal(f->C_Finalize(NULL), CKR_OK);
}

/* Signs data with mech and returns the signature (PKCS#11 form) in sig. */
static CK_RV sign_with(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, CK_MECHANISM *m,
                       const uint8_t *data, size_t len, uint8_t *sig, CK_ULONG *sig_len)
{
    CK_RV rv = f->C_SignInit(s, m, key);

    if (rv != CKR_OK)
        return rv;
    return f->C_Sign(s, (CK_BYTE_PTR)data, len, sig, sig_len);
}

static bool verify(const fake_key_t *k, const EVP_MD *md, int pad, const uint8_t *sig, size_t sl,
                   const uint8_t *msg, size_t ml)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pc = NULL;
    uint8_t der[256];
    const uint8_t *v = sig;
    size_t vl = sl;
    bool ok;

    if (k->type == BUS_KEY_EC) {
        ECDSA_SIG *es = ECDSA_SIG_new();
        uint8_t *q = der;

        ECDSA_SIG_set0(es, BN_bin2bn(sig, (int)sl / 2, NULL), BN_bin2bn(sig + sl / 2, (int)sl / 2, NULL));
        vl = (size_t)i2d_ECDSA_SIG(es, &q);
        ECDSA_SIG_free(es);
        v = der;
    }
    ok = EVP_DigestVerifyInit(c, &pc, md, NULL, k->soft) == 1;
    if (ok && pad == RSA_PKCS1_PSS_PADDING)
        ok = EVP_PKEY_CTX_set_rsa_padding(pc, pad) == 1 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_DIGEST) == 1;
    ok = ok && EVP_DigestVerify(c, v, vl, msg, ml) == 1;
    EVP_MD_CTX_free(c);
    return ok;
}

static void test_module_sign_mechanisms(void **state)
{
    static const uint8_t msg[] = "the message to sign";
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE rsa, p256, p384, ed;
    CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
    CK_MECHANISM m;
    uint8_t sig[512], digest[64];
    CK_ULONG sl;
    unsigned int dl;
    int before;

    fake_set(true, false, SIGN_OK, BUS_OK);
    mod_init();
    s = open_session();
    rsa = find(s, CKO_PRIVATE_KEY, "rsa");
    p256 = find(s, CKO_PRIVATE_KEY, "p256");
    p384 = find(s, CKO_PRIVATE_KEY, "p384");
    ed = find(s, CKO_PRIVATE_KEY, "ed25519");
    before = fake_signs();

    /* C_Sign with NULL: the length, nothing signed; a short buffer:
     * CKR_BUFFER_TOO_SMALL and the operation stays */
    m = (CK_MECHANISM){CKM_SHA256_RSA_PKCS, NULL, 0};
    assert_int_equal(f->C_SignInit(s, &m, rsa), CKR_OK);
    sl = 0;
    assert_int_equal(f->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), NULL, &sl), CKR_OK);
    assert_int_equal(sl, 256);
    sl = 10;
    assert_int_equal(f->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), sig, &sl), CKR_BUFFER_TOO_SMALL);
    assert_int_equal(sl, 256);
    assert_int_equal(fake_signs(), before);
    assert_int_equal(f->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), sig, &sl), CKR_OK);
    assert_true(verify(K_RSA, EVP_sha256(), RSA_PKCS1_PADDING, sig, sl, msg, sizeof(msg)));
    assert_int_equal(fake_signs(), before + 1);
    /* the operation is over */
    assert_int_equal(f->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), sig, &sl),
                     CKR_OPERATION_NOT_INITIALIZED);

    /* multi-part hash-and-sign */
    m = (CK_MECHANISM){CKM_SHA256_RSA_PKCS_PSS, &pss, sizeof(pss)};
    assert_int_equal(f->C_SignInit(s, &m, rsa), CKR_OK);
    assert_int_equal(f->C_SignUpdate(s, (CK_BYTE_PTR)msg, 5), CKR_OK);
    assert_int_equal(f->C_SignUpdate(s, (CK_BYTE_PTR)msg + 5, sizeof(msg) - 5), CKR_OK);
    sl = sizeof(sig);
    assert_int_equal(f->C_SignFinal(s, sig, &sl), CKR_OK);
    assert_true(verify(K_RSA, EVP_sha256(), RSA_PKCS1_PSS_PADDING, sig, sl, msg, sizeof(msg)));

    /* CKM_RSA_PKCS_PSS over a digest */
    EVP_Digest(msg, sizeof(msg), digest, &dl, EVP_sha256(), NULL);
    m = (CK_MECHANISM){CKM_RSA_PKCS_PSS, &pss, sizeof(pss)};
    sl = sizeof(sig);
    assert_int_equal(sign_with(s, rsa, &m, digest, dl, sig, &sl), CKR_OK);
    assert_true(verify(K_RSA, EVP_sha256(), RSA_PKCS1_PSS_PADDING, sig, sl, msg, sizeof(msg)));
    assert_string_equal(fake.last.hash, "sha256");
    assert_int_equal(fake.last.salt_len, 32);
    /* a digest of the wrong size for hashAlg */
    sl = sizeof(sig);
    assert_int_equal(sign_with(s, rsa, &m, digest, 20, sig, &sl), CKR_DATA_LEN_RANGE);

    /* ECDSA: r||s of the field size, P-256 and P-384 */
    m = (CK_MECHANISM){CKM_ECDSA, NULL, 0};
    sl = sizeof(sig);
    assert_int_equal(sign_with(s, p256, &m, digest, 32, sig, &sl), CKR_OK);
    assert_int_equal(sl, 64);
    assert_true(verify(K_P256, EVP_sha256(), 0, sig, sl, msg, sizeof(msg)));
    m = (CK_MECHANISM){CKM_ECDSA_SHA384, NULL, 0};
    sl = sizeof(sig);
    assert_int_equal(sign_with(s, p384, &m, msg, sizeof(msg), sig, &sl), CKR_OK);
    assert_int_equal(sl, 96);
    assert_true(verify(K_P384, EVP_sha384(), 0, sig, sl, msg, sizeof(msg)));

    /* EdDSA signs the message */
    m = (CK_MECHANISM){CKM_EDDSA, NULL, 0};
    sl = sizeof(sig);
    assert_int_equal(sign_with(s, ed, &m, msg, sizeof(msg), sig, &sl), CKR_OK);
    assert_int_equal(sl, 64);
    assert_true(verify(K_ED, NULL, 0, sig, sl, msg, sizeof(msg)));

    /* mechanisms that do not fit the key */
    m = (CK_MECHANISM){CKM_ECDSA, NULL, 0};
    assert_int_equal(f->C_SignInit(s, &m, rsa), CKR_KEY_TYPE_INCONSISTENT);
    m = (CK_MECHANISM){CKM_RSA_X_509, NULL, 0};
    assert_int_equal(f->C_SignInit(s, &m, rsa), CKR_MECHANISM_INVALID);
    /* the public key or the certificate cannot sign */
    m = (CK_MECHANISM){CKM_SHA256_RSA_PKCS, NULL, 0};
    assert_int_equal(f->C_SignInit(s, &m, find(s, CKO_PUBLIC_KEY, "rsa")), CKR_KEY_HANDLE_INVALID);
    assert_int_equal(f->C_Finalize(NULL), CKR_OK);
}

static void test_module_mechanism_list(void **state)
{
    CK_MECHANISM_TYPE list[64];
    CK_MECHANISM_INFO mi;
    CK_ULONG n = 0;
    bool eddsa = false, pss = false;

    fake_set(true, false, SIGN_OK, BUS_OK);
    mod_init();
    assert_int_equal(f->C_GetMechanismList(one_slot(), NULL, &n), CKR_OK);
    assert_true(n > 5 && n <= 64);
    assert_int_equal(f->C_GetMechanismList(one_slot(), list, &n), CKR_OK);
    for (CK_ULONG i = 0; i < n; i++) {
        eddsa |= list[i] == CKM_EDDSA;
        pss |= list[i] == CKM_SHA384_RSA_PKCS_PSS;
    }
    assert_true(eddsa && pss);
    assert_int_equal(f->C_GetMechanismInfo(one_slot(), CKM_ECDSA, &mi), CKR_OK);
    assert_int_equal(mi.ulMinKeySize, 256);
    assert_int_equal(mi.ulMaxKeySize, 384);
    assert_true(mi.flags & CKF_SIGN);
    assert_int_equal(f->C_GetMechanismInfo(one_slot(), CKM_RSA_X_509, &mi), CKR_MECHANISM_INVALID);
    assert_int_equal(f->C_Finalize(NULL), CKR_OK);
}

static void test_module_hostile_agent(void **state)
{
    static const uint8_t msg[] = "m";
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE h[32];
    CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0}, mr = {CKM_SHA256_RSA_PKCS, NULL, 0};
    uint8_t sig[600];
    CK_ULONG n = 0, sl;

    unsigned served = atomic_load(&odd_served);

    /* odd records beside the good ones: skipped, the good ones stay */
    fake_set(true, true, SIGN_OK, BUS_OK);
    mod_init();
    s = open_session();
    assert_int_equal(f->C_FindObjectsInit(s, NULL, 0), CKR_OK);
    assert_int_equal(f->C_FindObjects(s, h, 32, &n), CKR_OK);
    assert_int_equal(f->C_FindObjectsFinal(s), CKR_OK);
    assert_true(atomic_load(&odd_served) > served); /* they were sent */
    assert_int_equal(n, 3 * N_KEYS);
    /* signatures of the wrong size or shape are errors, never copied */
    fake_set(true, true, SIGN_LONG, BUS_OK);
    sl = sizeof(sig);
    assert_int_equal(sign_with(s, find(s, CKO_PRIVATE_KEY, "rsa"), &mr, msg, 1, sig, &sl),
                     CKR_DEVICE_ERROR);
    fake_set(true, true, SIGN_SHORT, BUS_OK);
    sl = sizeof(sig);
    assert_int_equal(sign_with(s, find(s, CKO_PRIVATE_KEY, "rsa"), &mr, msg, 1, sig, &sl),
                     CKR_DEVICE_ERROR);
    fake_set(true, true, SIGN_BAD_DER, BUS_OK);
    sl = sizeof(sig);
    assert_int_equal(sign_with(s, find(s, CKO_PRIVATE_KEY, "p256"), &m, msg, 1, sig, &sl),
                     CKR_DEVICE_ERROR);
    /* agent errors */
    fake_set(true, true, SIGN_ERROR, BUS_ERR_LOCKED);
    sl = sizeof(sig);
    assert_int_equal(sign_with(s, find(s, CKO_PRIVATE_KEY, "p256"), &m, msg, 1, sig, &sl),
                     CKR_USER_NOT_LOGGED_IN);
    fake_set(true, true, SIGN_ERROR, BUS_ERR_TOKEN_REMOVED);
    sl = sizeof(sig);
    assert_int_equal(sign_with(s, find(s, CKO_PRIVATE_KEY, "p256"), &m, msg, 1, sig, &sl),
                     CKR_DEVICE_REMOVED);
    /* an error ended the operation */
    assert_int_equal(f->C_Sign(s, (CK_BYTE_PTR)msg, 1, sig, &sl), CKR_OPERATION_NOT_INITIALIZED);
    assert_int_equal(f->C_Finalize(NULL), CKR_OK);
    fake_set(true, false, SIGN_OK, BUS_OK);
}

static void test_module_slot_stays_when_token_goes(void **state)
{
    CK_SLOT_ID slot, all[4], ev;
    CK_ULONG n = 4;
    CK_TOKEN_INFO ti;
    CK_SLOT_INFO si;
    CK_SESSION_HANDLE s;

    fake_set(true, false, SIGN_OK, BUS_OK);
    mod_init();
    slot = one_slot();
    s = open_session();
    assert_int_equal(f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL), CKR_NO_EVENT);
    fake_set(false, false, SIGN_OK, BUS_OK);
    /* the change shows as an event on the token's slot */
    assert_int_equal(f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL), CKR_OK);
    assert_int_equal(ev, slot);
    assert_int_equal(f->C_GetSlotList(CK_FALSE, all, &n), CKR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(all[0], slot);
    assert_int_equal(f->C_GetSlotInfo(slot, &si), CKR_OK);
    assert_int_equal(si.flags & CKF_TOKEN_PRESENT, 0);
    assert_int_equal(f->C_GetTokenInfo(slot, &ti), CKR_TOKEN_NOT_PRESENT);
    fake_set(true, false, SIGN_OK, BUS_OK);
    assert_int_equal(f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL), CKR_OK);
    assert_int_equal(ev, slot);
    assert_int_equal(one_slot(), slot);
    assert_int_equal(f->C_CloseSession(s), CKR_OK);
    assert_int_equal(f->C_Finalize(NULL), CKR_OK);
}

static void test_module_no_agent(void **state)
{
    CK_ULONG n = 99;

    setenv("P11AGENT_SOCKET", "/nonexistent/agent.sock", 1);
    mod_init();
    assert_int_equal(f->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK);
    assert_int_equal(n, 0);
    assert_int_equal(f->C_Finalize(NULL), CKR_OK);
    setenv("P11AGENT_SOCKET", srv.socket, 1);
}

static void test_module_stands_down_inside_agent(void **state)
{
    CK_ULONG n = 99;
    int lists;

    fake_set(true, false, SIGN_OK, BUS_OK);
    setenv("P11AGENT_AGENT_PROCESS", "1", 1);
    pthread_mutex_lock(&fake_lock);
    lists = fake.lists;
    pthread_mutex_unlock(&fake_lock);
    mod_init();
    assert_int_equal(f->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK);
    assert_int_equal(n, 0);
    assert_int_equal(f->C_Finalize(NULL), CKR_OK);
    unsetenv("P11AGENT_AGENT_PROCESS");
    pthread_mutex_lock(&fake_lock);
    assert_int_equal(fake.lists, lists); /* the agent was not asked */
    pthread_mutex_unlock(&fake_lock);
}

static void test_module_socket_from_init_args(void **state)
{
    char arg[200];
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK, .pReserved = arg};
    CK_ULONG n = 0;

    /* p11-kit's x-init-reserved: "agent-socket=PATH" (no environment) */
    fake_set(true, false, SIGN_OK, BUS_OK);
    snprintf(arg, sizeof(arg), "agent-socket=%s", srv.socket);
    unsetenv("P11AGENT_SOCKET");
    assert_int_equal(C_GetFunctionList(&f), CKR_OK);
    assert_int_equal(f->C_Initialize(&args), CKR_OK);
    assert_int_equal(f->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(f->C_Finalize(NULL), CKR_OK);
    /* the environment wins over it */
    setenv("P11AGENT_SOCKET", "/nonexistent/agent.sock", 1);
    assert_int_equal(f->C_Initialize(&args), CKR_OK);
    assert_int_equal(f->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK);
    assert_int_equal(n, 0);
    assert_int_equal(f->C_Finalize(NULL), CKR_OK);
    /* with another setting after it (and before it) the path still ends
     * where that setting begins */
    unsetenv("P11AGENT_SOCKET");
    snprintf(arg, sizeof(arg), "agent-socket=%s  max-connections=2", srv.socket);
    assert_int_equal(f->C_Initialize(&args), CKR_OK);
    assert_int_equal(f->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(f->C_Finalize(NULL), CKR_OK);
    snprintf(arg, sizeof(arg), "max-connections=40 agent-socket=%s", srv.socket);
    assert_int_equal(f->C_Initialize(&args), CKR_OK);
    assert_int_equal(f->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(f->C_Finalize(NULL), CKR_OK);
    setenv("P11AGENT_SOCKET", srv.socket, 1);
}

typedef struct conn_signer {
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE key;
    int ok;
} conn_signer_t;

static void *conn_sign_many(void *p)
{
    conn_signer_t *a = p;
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    uint8_t digest[32] = {1, 2, 3}, sig[128];

    for (int i = 0; i < 10; i++) {
        CK_ULONG sl = sizeof(sig);

        a->ok += sign_with(a->s, a->key, &m, digest, sizeof(digest), sig, &sl) == CKR_OK;
    }
    return NULL;
}

/* New connections while 4 threads sign at once against a slow agent. */
static int connections_while_signing(void)
{
    conn_signer_t a[4];
    pthread_t t[4];
    int before;

    mod_init();
    for (int i = 0; i < 4; i++) {
        a[i] = (conn_signer_t){.s = open_session()};
        a[i].key = find(a[i].s, CKO_PRIVATE_KEY, "p256");
    }
    pthread_mutex_lock(&fake_lock);
    before = fake.connections;
    fake.sign_delay_us = 3000;
    pthread_mutex_unlock(&fake_lock);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, conn_sign_many, &a[i]), 0);
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(a[i].ok, 10);
    }
    pthread_mutex_lock(&fake_lock);
    fake.sign_delay_us = 0;
    before = fake.connections - before;
    pthread_mutex_unlock(&fake_lock);
    assert_int_equal(f->C_Finalize(NULL), CKR_OK);
    return before;
}

/* $P11AGENT_MAX_CONNECTIONS caps the module's pool as it does the
 * provider's: 1 -> the listing's one connection is shared by 4 signing
 * threads; 2 -> one more at most. */
static void test_module_max_connections(void **state)
{
    fake_set(true, false, SIGN_OK, BUS_OK);
    setenv("P11AGENT_MAX_CONNECTIONS", "1", 1);
    assert_int_equal(connections_while_signing(), 0);
    setenv("P11AGENT_MAX_CONNECTIONS", "2", 1);
    assert_int_equal(connections_while_signing(), 1);
    unsetenv("P11AGENT_MAX_CONNECTIONS");
    /* the default lets each of the 4 have one */
    assert_true(connections_while_signing() >= 2);
}

static void test_module_interface(void **state)
{
    struct {
        CK_UTF8CHAR *name;
        void *list;
        CK_FLAGS flags;
    } iface[2], *pi = NULL;
    CK_ULONG n = 0;
    CK_VERSION v30 = {3, 0};
    extern CK_RV C_GetInterfaceList(void *, CK_ULONG_PTR);
    extern CK_RV C_GetInterface(CK_UTF8CHAR_PTR, CK_VERSION_PTR, void *, CK_FLAGS);

    assert_int_equal(C_GetInterfaceList(NULL, &n), CKR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(C_GetInterfaceList(iface, &n), CKR_OK);
    assert_string_equal((char *)iface[0].name, "PKCS 11");
    assert_int_equal(C_GetInterface(NULL, NULL, &pi, 0), CKR_OK);
    assert_int_equal(((CK_FUNCTION_LIST *)pi->list)->version.minor, 40);
    assert_int_equal(C_GetInterface((CK_UTF8CHAR_PTR) "PKCS 11", &v30, &pi, 0), CKR_ARGUMENTS_BAD);
    assert_int_equal(C_GetInterface((CK_UTF8CHAR_PTR) "Vendor", NULL, &pi, 0), CKR_ARGUMENTS_BAD);
}

/* After each test of the entry points: a test that failed half-way must
 * not leave the module initialised for the next one. */
static int finalize_quietly(void **state)
{
    if (f != NULL)
        (void)f->C_Finalize(NULL);
    fake_set(true, false, SIGN_OK, BUS_OK);
    setenv("P11AGENT_SOCKET", srv.socket, 1);
    unsetenv("P11AGENT_AGENT_PROCESS");
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_module_uri_attr),
        cmocka_unit_test(test_module_pad),
        cmocka_unit_test(test_module_ecdsa_der_to_raw),
        cmocka_unit_test(test_module_objects_rsa),
        cmocka_unit_test(test_module_objects_ec_and_eddsa),
        cmocka_unit_test(test_module_attribute_rules),
        cmocka_unit_test(test_module_template_match),
        cmocka_unit_test(test_module_hostile_records),
        cmocka_unit_test(test_module_mech_params),
        cmocka_unit_test_teardown(test_module_init_rules, finalize_quietly),
        cmocka_unit_test_teardown(test_module_token_info_and_login, finalize_quietly),
        cmocka_unit_test_teardown(test_module_sign_mechanisms, finalize_quietly),
        cmocka_unit_test_teardown(test_module_mechanism_list, finalize_quietly),
        cmocka_unit_test_teardown(test_module_hostile_agent, finalize_quietly),
        cmocka_unit_test_teardown(test_module_slot_stays_when_token_goes, finalize_quietly),
        cmocka_unit_test_teardown(test_module_no_agent, finalize_quietly),
        cmocka_unit_test_teardown(test_module_socket_from_init_args, finalize_quietly),
        cmocka_unit_test_teardown(test_module_max_connections, finalize_quietly),
        cmocka_unit_test_teardown(test_module_stands_down_inside_agent, finalize_quietly),
        cmocka_unit_test(test_module_interface),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
