/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for p11agent.so without the real agent.
 *
 * A fake agent (fakeagent.c) runs in a thread of the test process: a
 * libdbus peer-to-peer server on a temporary socket (driven by the agent's
 * poll loop), answering FindKeys, Sign and Decrypt with software keys made
 * by the default provider, and recording what it was asked. The provider
 * is the real code (client, store, keymgmt, signature), registered as a
 * built-in in a private OSSL_LIB_CTX next to "default", with
 * P11AGENT_SOCKET pointing at the fake. Covered: store loading, key
 * params against the default provider, algorithm identifiers, signatures
 * that verify, in-memory TLS 1.2/1.3 mutual-auth handshakes, reconnection
 * after an agent restart, fork, threads. One case loads the built
 * p11agent.so itself.
 */
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/core_names.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/store.h>
#include <openssl/x509.h>

#include "fakeagent.h"
#include "keyref.h"
#include "provider.h"

/* ------------------------------------------------------------------ */
/* The fake agent (fakeagent.c)                                        */
/* ------------------------------------------------------------------ */

static fake_key_t fake_keys[] = {
    { "pkcs11:token=t;object=rsa;type=private", "RSA", NULL, 2048, BUS_KEY_RSA,
      BUS_KEY_CAN_RSA_PKCS1 | BUS_KEY_CAN_RSA_PSS, NULL, NULL },
    { "pkcs11:token=t;object=p256;type=private", "EC", "P-256", 0, BUS_KEY_EC,
      BUS_KEY_CAN_ECDSA, NULL, NULL },
    { "pkcs11:token=t;object=p384;type=private", "EC", "P-384", 0, BUS_KEY_EC,
      BUS_KEY_CAN_ECDSA, NULL, NULL },
    { "pkcs11:token=t;object=ed25519;type=private", "ED25519", NULL, 0, BUS_KEY_ED25519,
      BUS_KEY_CAN_EDDSA, NULL, NULL },
    { "pkcs11:token=t;object=ed448;type=private", "ED448", NULL, 0, BUS_KEY_ED448,
      BUS_KEY_CAN_EDDSA, NULL, NULL },
};
#define N_FAKE (sizeof(fake_keys) / sizeof(fake_keys[0]))
#define URI_RSA (fake_keys[0].uri)
#define URI_P256 (fake_keys[1].uri)
#define URI_P384 (fake_keys[2].uri)
#define URI_ED25519 (fake_keys[3].uri)
#define URI_ED448 (fake_keys[4].uri)
/* FindKeys finds it (an RSA key), Sign fails with TokenRemoved. */
#define URI_REMOVED "pkcs11:token=t;object=removed;type=private"
/* The RSA key on a token without CKM_RSA_PKCS_PSS: Sign rsa-pss fails. */
#define URI_NOPSS "pkcs11:token=old;object=rsa;type=private"

static const fake_standin_t fake_standins[] = {
    { URI_REMOVED, 0, BUS_ERR_TOKEN_REMOVED, "the card was pulled from reader 0", 0 },
    { URI_NOPSS, 0, BUS_ERR_UNSUPPORTED, "token old has no CKM_RSA_PKCS_PSS", BUS_SIG_RSA_PSS },
};

static const fake_config_t fake_config = {
    .keys = fake_keys,
    .n_keys = N_FAKE,
    .standins = fake_standins,
    .n_standins = sizeof(fake_standins) / sizeof(fake_standins[0]),
    .methods = FAKE_FIND_KEYS | FAKE_SIGN | FAKE_DECRYPT,
};

/* ------------------------------------------------------------------ */
/* Fixtures                                                            */
/* ------------------------------------------------------------------ */

static OSSL_LIB_CTX *plibctx;   /* default + p11agent (built-in) */
static OSSL_PROVIDER *prov_default, *prov_ours;

static X509 *self_signed(EVP_PKEY *key, const char *cn)
{
    return fake_cert(key, cn, NULL, 1);
}

static X509 *cert_of(const fake_key_t *k)
{
    return self_signed(k->soft, k->uri);
}

static int group_setup(void **state)
{
    if (fake_keys_make(fake_keys, N_FAKE, cert_of) < 0 || srv_start(&fake_config) < 0)
        return -1;
    /* read once, when the provider starts */
    setenv("P11AGENT_SOCKET", srv.socket, 1);
    plibctx = OSSL_LIB_CTX_new();
    if (plibctx == NULL || !OSSL_PROVIDER_add_builtin(plibctx, "p11agent", OSSL_provider_init))
        return -1;
    prov_default = OSSL_PROVIDER_load(plibctx, "default");
    prov_ours = OSSL_PROVIDER_load(plibctx, "p11agent");
    return prov_default != NULL && prov_ours != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    OSSL_PROVIDER_unload(prov_ours);
    OSSL_PROVIDER_unload(prov_default);
    OSSL_LIB_CTX_free(plibctx);
    srv_stop();
    fake_keys_free(fake_keys, N_FAKE);
    return 0;
}

static const fake_key_t *fake_by_uri(const char *uri)
{
    for (size_t i = 0; i < N_FAKE; i++) {
        if (strcmp(fake_keys[i].uri, uri) == 0)
            return &fake_keys[i];
    }
    return NULL;
}

/* Loads a URI through OSSL_STORE (our pkcs11: loader). */
static void load_uri(const char *uri, EVP_PKEY **ret_key, X509 **ret_cert)
{
    OSSL_STORE_CTX *st = OSSL_STORE_open_ex(uri, plibctx, NULL, NULL, NULL, NULL, NULL, NULL);
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;

    assert_non_null(st);
    while (!OSSL_STORE_eof(st)) {
        OSSL_STORE_INFO *info = OSSL_STORE_load(st);

        if (info == NULL)
            break;
        if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
            key = OSSL_STORE_INFO_get1_PKEY(info);
        else if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_CERT)
            cert = OSSL_STORE_INFO_get1_CERT(info);
        OSSL_STORE_INFO_free(info);
    }
    OSSL_STORE_close(st);
    assert_non_null(key);
    assert_non_null(cert);
    *ret_key = key;
    if (ret_cert != NULL)
        *ret_cert = cert;
    else
        X509_free(cert);
}

/* True if any queued error's data contains needle. Clears the queue. */
static bool errors_contain(const char *needle)
{
    const char *data = NULL;
    int flags = 0;
    bool found = false;
    unsigned long e;

    while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
        if (data != NULL && (flags & ERR_TXT_STRING) && strstr(data, needle) != NULL)
            found = true;
    }
    return found;
}

/* ------------------------------------------------------------------ */
/* Signing helpers                                                     */
/* ------------------------------------------------------------------ */

typedef struct sigopts {
    const char *md;          /* NULL: none (EdDSA) */
    int pad;                 /* 0: default */
    const char *pad_str;     /* set as a string instead */
    const char *saltlen;     /* string form, or NULL */
    const char *mgf1;
} sigopts_t;

static void apply_opts(EVP_PKEY_CTX *pctx, const sigopts_t *o)
{
    if (o->pad != 0)
        assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, o->pad), 1);
    if (o->pad_str != NULL)
        assert_true(EVP_PKEY_CTX_ctrl_str(pctx, "rsa_padding_mode", o->pad_str) > 0);
    if (o->saltlen != NULL) {
        OSSL_PARAM params[2];

        params[0] = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN,
                                                     (char *)o->saltlen, 0);
        params[1] = OSSL_PARAM_construct_end();
        assert_int_equal(EVP_PKEY_CTX_set_params(pctx, params), 1);
    }
    if (o->mgf1 != NULL)
        assert_int_equal(EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, o->mgf1, NULL), 1);
}

/* DigestSign msg with key in libctx; returns the signature. */
static unsigned char *digest_sign(OSSL_LIB_CTX *lctx, EVP_PKEY *key, const sigopts_t *o,
                                  const unsigned char *msg, size_t len, size_t *ret_len,
                                  unsigned char *aid, size_t *aid_len)
{
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    unsigned char *sig;
    size_t siglen = 0;

    assert_int_equal(EVP_DigestSignInit_ex(m, &pctx, o->md, lctx, NULL, key, NULL), 1);
    apply_opts(pctx, o);
    if (aid != NULL) {
        OSSL_PARAM params[2];

        params[0] = OSSL_PARAM_construct_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, aid,
                                                      *aid_len);
        params[1] = OSSL_PARAM_construct_end();
        assert_int_equal(EVP_PKEY_CTX_get_params(pctx, params), 1);
        assert_true(OSSL_PARAM_modified(&params[0]));
        *aid_len = params[0].return_size;
    }
    assert_int_equal(EVP_DigestSign(m, NULL, &siglen, msg, len), 1);
    assert_true(siglen > 0);
    sig = malloc(siglen);
    assert_int_equal(EVP_DigestSign(m, sig, &siglen, msg, len), 1);
    EVP_MD_CTX_free(m);
    *ret_len = siglen;
    return sig;
}

static bool digest_verify(EVP_PKEY *soft, const sigopts_t *o, const unsigned char *msg,
                          size_t len, const unsigned char *sig, size_t siglen)
{
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int r;

    assert_int_equal(EVP_DigestVerifyInit_ex(m, &pctx, o->md, NULL, NULL, soft, NULL), 1);
    apply_opts(pctx, o);
    r = EVP_DigestVerify(m, sig, siglen, msg, len);
    EVP_MD_CTX_free(m);
    return r == 1;
}

static const unsigned char message[] = "p11agent signs this message";

/* Signs through the provider, verifies with the software key, and checks
 * that the algorithm-id equals the default provider's for the same
 * settings. */
static void sign_verify_compare(const char *uri, const sigopts_t *o)
{
    const fake_key_t *fk = fake_by_uri(uri);
    EVP_PKEY *key = NULL;
    unsigned char aid[256], ref_aid[256], *sig, *ref_sig;
    size_t aid_len = sizeof(aid), ref_aid_len = sizeof(ref_aid), siglen, ref_len;
    int before = fake_signs();

    load_uri(uri, &key, NULL);
    sig = digest_sign(plibctx, key, o, message, sizeof(message), &siglen, aid, &aid_len);
    assert_int_equal(fake_signs(), before + 1);
    assert_true(digest_verify(fk->soft, o, message, sizeof(message), sig, siglen));

    ref_sig = digest_sign(NULL, fk->soft, o, message, sizeof(message), &ref_len, ref_aid,
                          &ref_aid_len);
    assert_int_equal(aid_len, ref_aid_len);
    assert_memory_equal(aid, ref_aid, aid_len);
    free(sig);
    free(ref_sig);
    EVP_PKEY_free(key);
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */
/* ------------------------------------------------------------------ */

static void test_provider_module_loads_and_offers_operations(void **state)
{
    const char *path = getenv("P11AGENT_TEST_MODULE");
    char dir[4096];
    OSSL_LIB_CTX *lctx = OSSL_LIB_CTX_new();
    OSSL_PROVIDER *p;
    static const char *const keymgmts[] = {
        "RSA", "rsaEncryption", "1.2.840.113549.1.1.1", "RSA-PSS", "RSASSA-PSS",
        "1.2.840.113549.1.1.10", "EC", "id-ecPublicKey", "1.2.840.10045.2.1", "ED25519",
        "1.3.101.112", "ED448", "1.3.101.113",
    };
    static const char *const sigs[] = { "RSA", "ECDSA", "ED25519", "ED448" };
    const char *name = NULL;
    OSSL_PARAM params[2];
    OSSL_STORE_LOADER *loader;

    if (path == NULL)
        fail_msg("P11AGENT_TEST_MODULE not set (meson sets it)");
    snprintf(dir, sizeof(dir), "%s", path);
    *strrchr(dir, '/') = '\0';
    assert_int_equal(OSSL_PROVIDER_set_default_search_path(lctx, dir), 1);
    p = OSSL_PROVIDER_load(lctx, "p11agent");
    assert_non_null(p);

    params[0] = OSSL_PARAM_construct_utf8_ptr(OSSL_PROV_PARAM_NAME, (char **)&name, 0);
    params[1] = OSSL_PARAM_construct_end();
    assert_int_equal(OSSL_PROVIDER_get_params(p, params), 1);
    assert_non_null(strstr(name, "p11agent"));

    for (size_t i = 0; i < sizeof(keymgmts) / sizeof(keymgmts[0]); i++) {
        EVP_KEYMGMT *km = EVP_KEYMGMT_fetch(lctx, keymgmts[i], "provider=p11agent");

        if (km == NULL)
            fail_msg("keymgmt %s missing (a partner function missing?)", keymgmts[i]);
        EVP_KEYMGMT_free(km);
    }
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        EVP_SIGNATURE *s = EVP_SIGNATURE_fetch(lctx, sigs[i], "provider=p11agent");

        if (s == NULL)
            fail_msg("signature %s missing", sigs[i]);
        EVP_SIGNATURE_free(s);
    }
    loader = OSSL_STORE_LOADER_fetch(lctx, "pkcs11", "provider=p11agent");
    assert_non_null(loader);
    OSSL_STORE_LOADER_free(loader);
    OSSL_PROVIDER_unload(p);
    OSSL_LIB_CTX_free(lctx);
}

static void test_provider_offers_nothing_inside_agent(void **state)
{
    OSSL_LIB_CTX *lctx = OSSL_LIB_CTX_new();
    OSSL_PROVIDER *p;
    EVP_KEYMGMT *km;

    setenv("P11AGENT_AGENT_PROCESS", "1", 1);
    assert_int_equal(OSSL_PROVIDER_add_builtin(lctx, "p11agent", OSSL_provider_init), 1);
    p = OSSL_PROVIDER_load(lctx, "p11agent");
    unsetenv("P11AGENT_AGENT_PROCESS");
    assert_non_null(p);
    km = EVP_KEYMGMT_fetch(lctx, "RSA", "provider=p11agent");
    assert_null(km);
    assert_null(OSSL_STORE_LOADER_fetch(lctx, "pkcs11", NULL));
    ERR_clear_error();
    OSSL_PROVIDER_unload(p);
    OSSL_LIB_CTX_free(lctx);
}

static void test_provider_pad_mode_parsing(void **state)
{
    int v = 0, pad = -1;
    OSSL_PARAM p;

    v = RSA_PKCS1_PSS_PADDING;
    p = OSSL_PARAM_construct_int(OSSL_SIGNATURE_PARAM_PAD_MODE, &v);
    assert_int_equal(prov_parse_pad_mode(&p, &pad), 1);
    assert_int_equal(pad, RSA_PKCS1_PSS_PADDING);
    p = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, "pss", 0);
    assert_int_equal(prov_parse_pad_mode(&p, &pad), 1);
    assert_int_equal(pad, RSA_PKCS1_PSS_PADDING);
    p = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, "pkcs1", 0);
    assert_int_equal(prov_parse_pad_mode(&p, &pad), 1);
    assert_int_equal(pad, RSA_PKCS1_PADDING);
    p = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, "oaep-ish", 0);
    assert_int_equal(prov_parse_pad_mode(&p, &pad), 0);
}

static void test_provider_saltlen_parsing(void **state)
{
    static const struct {
        const char *s;
        int ok, v;
    } cases[] = {
        { "digest", 1, PROV_SALTLEN_DIGEST }, { "max", 1, PROV_SALTLEN_MAX },
        { "auto", 1, PROV_SALTLEN_AUTO },     { "20", 1, 20 },
        { "0", 1, 0 },                        { "x", 0, 0 },
        { "-7", 0, 0 },                       { "", 0, 0 },
    };
    int v, iv = 32;
    OSSL_PARAM p;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        v = 12345;
        p = OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN,
                                             (char *)cases[i].s, 0);
        assert_int_equal(prov_parse_saltlen(&p, &v), cases[i].ok);
        if (cases[i].ok)
            assert_int_equal(v, cases[i].v);
    }
    p = OSSL_PARAM_construct_int(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, &iv);
    assert_int_equal(prov_parse_saltlen(&p, &v), 1);
    assert_int_equal(v, 32);
}

static void test_provider_pss_salt_computation(void **state)
{
    /* RSA-2048, SHA-256: digest = 32, max = 256 - 32 - 2 */
    assert_int_equal(prov_pss_salt_bytes(PROV_SALTLEN_DIGEST, 2048, 32), 32);
    assert_int_equal(prov_pss_salt_bytes(PROV_SALTLEN_MAX, 2048, 32), 222);
    assert_int_equal(prov_pss_salt_bytes(PROV_SALTLEN_AUTO, 2048, 48), 206);
    /* emLen = ceil((modBits - 1) / 8): a 2049-bit modulus still gives 256 */
    assert_int_equal(prov_pss_salt_bytes(PROV_SALTLEN_MAX, 2049, 32), 222);
    assert_int_equal(prov_pss_salt_bytes(PROV_SALTLEN_MAX, 3072, 64), 318);
    assert_int_equal(prov_pss_salt_bytes(20, 2048, 32), 20);
    assert_int_equal(prov_pss_salt_bytes(223, 2048, 32), -1);
    /* SHA-512 with a 512-bit key does not fit */
    assert_int_equal(prov_pss_salt_bytes(PROV_SALTLEN_DIGEST, 512, 64), -1);
}

/* prov_algorithm_id against the default provider, for every supported
 * digest with RSA PKCS#1 and ECDSA, and EdDSA. */
static void test_provider_algorithm_id_matches_default(void **state)
{
    static const char *const mds[] = { "SHA1", "SHA224", "SHA256", "SHA384", "SHA512" };

    for (size_t i = 0; i < 5; i++) {
        sigopts_t o = { .md = mds[i] };

        sign_verify_compare(URI_RSA, &o);
        sign_verify_compare(URI_P256, &o);
    }
    {
        sigopts_t o = { 0 };

        sign_verify_compare(URI_ED25519, &o);
        sign_verify_compare(URI_ED448, &o);
    }
}

static void test_provider_algorithm_id_pss_matches_default(void **state)
{
    static const sigopts_t cases[] = {
        { .md = "SHA256", .pad = RSA_PKCS1_PSS_PADDING, .saltlen = "digest" },
        { .md = "SHA256", .pad = RSA_PKCS1_PSS_PADDING, .saltlen = "max" },
        { .md = "SHA384", .pad = RSA_PKCS1_PSS_PADDING, .saltlen = "digest" },
        { .md = "SHA512", .pad = RSA_PKCS1_PSS_PADDING, .saltlen = "auto" },
        { .md = "SHA1", .pad = RSA_PKCS1_PSS_PADDING, .saltlen = "20" },
        { .md = "SHA256", .pad = RSA_PKCS1_PSS_PADDING, .saltlen = "20", .mgf1 = "SHA1" },
        { .md = "SHA256", .pad_str = "pss", .saltlen = "digest", .mgf1 = "SHA384" },
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        sign_verify_compare(URI_RSA, &cases[i]);
}

static void test_provider_pss_sends_salt_and_mgf1(void **state)
{
    sigopts_t o = { .md = "SHA256", .pad = RSA_PKCS1_PSS_PADDING, .saltlen = "max" };

    sign_verify_compare(URI_RSA, &o);
    assert_int_equal(fake.last.alg, BUS_SIG_RSA_PSS);
    assert_string_equal(fake.last.hash, "sha256");
    assert_string_equal(fake.last.mgf1_hash, "sha256");
    assert_int_equal(fake.last.salt_len, 222);
    assert_int_equal(fake.last_len, 32);

    o.saltlen = "digest";
    o.md = "SHA384";
    sign_verify_compare(URI_RSA, &o);
    assert_int_equal(fake.last.salt_len, 48);
    assert_string_equal(fake.last.hash, "sha384");
}

/* EVP_PKEY_sign: the input is the digest; RSA without a digest signs raw
 * data with PKCS#1 padding. */
static void test_provider_pkey_sign_prehashed_and_raw(void **state)
{
    const fake_key_t *fk = fake_by_uri(URI_RSA);
    unsigned char dgst[32], sig[512];
    size_t siglen = sizeof(sig);
    EVP_PKEY *key = NULL;
    EVP_PKEY_CTX *pctx, *vctx;

    memset(dgst, 0xab, sizeof(dgst));
    load_uri(URI_RSA, &key, NULL);

    pctx = EVP_PKEY_CTX_new_from_pkey(plibctx, key, NULL);
    assert_int_equal(EVP_PKEY_sign_init(pctx), 1);
    assert_int_equal(EVP_PKEY_CTX_set_signature_md(pctx, EVP_sha256()), 1);
    assert_int_equal(EVP_PKEY_sign(pctx, sig, &siglen, dgst, sizeof(dgst)), 1);
    assert_string_equal(fake.last.hash, "sha256");
    vctx = EVP_PKEY_CTX_new_from_pkey(NULL, fk->soft, NULL);
    assert_int_equal(EVP_PKEY_verify_init(vctx), 1);
    assert_int_equal(EVP_PKEY_CTX_set_signature_md(vctx, EVP_sha256()), 1);
    assert_int_equal(EVP_PKEY_verify(vctx, sig, siglen, dgst, sizeof(dgst)), 1);
    EVP_PKEY_CTX_free(vctx);
    EVP_PKEY_CTX_free(pctx);

    /* raw: no digest set */
    siglen = sizeof(sig);
    pctx = EVP_PKEY_CTX_new_from_pkey(plibctx, key, NULL);
    assert_int_equal(EVP_PKEY_sign_init(pctx), 1);
    assert_int_equal(EVP_PKEY_sign(pctx, sig, &siglen, dgst, 20), 1);
    assert_int_equal(fake.last.alg, BUS_SIG_RSA_PKCS1);
    assert_string_equal(fake.last.hash, "");
    assert_int_equal(siglen, 256);
    vctx = EVP_PKEY_CTX_new_from_pkey(NULL, fk->soft, NULL);
    assert_int_equal(EVP_PKEY_verify_init(vctx), 1);
    assert_int_equal(EVP_PKEY_verify(vctx, sig, siglen, dgst, 20), 1);
    EVP_PKEY_CTX_free(vctx);
    EVP_PKEY_CTX_free(pctx);

    /* a wrong-sized digest never reaches the agent */
    {
        int before = fake_signs();

        siglen = sizeof(sig);
        pctx = EVP_PKEY_CTX_new_from_pkey(plibctx, key, NULL);
        assert_int_equal(EVP_PKEY_sign_init(pctx), 1);
        assert_int_equal(EVP_PKEY_CTX_set_signature_md(pctx, EVP_sha256()), 1);
        assert_true(EVP_PKEY_sign(pctx, sig, &siglen, dgst, 20) <= 0);
        assert_int_equal(fake_signs(), before);
        EVP_PKEY_CTX_free(pctx);
        ERR_clear_error();
    }
    EVP_PKEY_free(key);
}

/* bits, security-bits, max-size and the EC group, as the default provider
 * reports them for the same key; ECDSA max-size is the DER maximum. */
static void test_provider_key_params_match_software_key(void **state)
{
    static const int ecdsa_max[] = { 72, 104 }; /* P-256, P-384 */

    for (size_t i = 0; i < N_FAKE; i++) {
        const fake_key_t *fk = &fake_keys[i];
        EVP_PKEY *key = NULL;
        char g1[64] = "", g2[64] = "", d1[64] = "", d2[64] = "";
        int r1, r2;

        load_uri(fk->uri, &key, NULL);
        assert_true(EVP_PKEY_is_a(key, fk->alg));
        assert_int_equal(EVP_PKEY_get_bits(key), EVP_PKEY_get_bits(fk->soft));
        assert_int_equal(EVP_PKEY_get_security_bits(key), EVP_PKEY_get_security_bits(fk->soft));
        assert_int_equal(EVP_PKEY_get_size(key), EVP_PKEY_get_size(fk->soft));
        assert_true(EVP_PKEY_get_size(key) > 0);
        if (fk->type == BUS_KEY_EC) {
            assert_int_equal(EVP_PKEY_get_group_name(key, g1, sizeof(g1), NULL), 1);
            assert_int_equal(EVP_PKEY_get_group_name(fk->soft, g2, sizeof(g2), NULL), 1);
            assert_string_equal(g1, g2);
            assert_int_equal(EVP_PKEY_get_size(key), ecdsa_max[i - 1]);
        }
        if (fk->type == BUS_KEY_ED25519)
            assert_int_equal(EVP_PKEY_get_size(key), 64);
        r1 = EVP_PKEY_get_default_digest_name(key, d1, sizeof(d1));
        r2 = EVP_PKEY_get_default_digest_name(fk->soft, d2, sizeof(d2));
        assert_int_equal(r1, r2);
        assert_string_equal(d1, d2);
        assert_true(EVP_PKEY_can_sign(key));
        EVP_PKEY_free(key);
    }
}

/* spki.c's figures, read without decoding, are those of the decoded key
 * for every shape it answers; the others (and broken SPKIs) it leaves to
 * decoding. */
static void test_provider_spki_sizes_match_decoded(void **state)
{
    static const struct {
        const char *alg, *param;
        int bits;
        prov_key_kind_t kind;
        bool known;
    } v[] = {
        { "RSA", NULL, 2048, PROV_KEY_RSA, true },
        { "RSA", NULL, 3072, PROV_KEY_RSA, true },
        { "RSA", NULL, 4096, PROV_KEY_RSA, true },
        { "RSA", NULL, 1024, PROV_KEY_RSA, false },
        { "RSA-PSS", NULL, 2048, PROV_KEY_RSA_PSS, false },
        { "EC", "P-256", 0, PROV_KEY_EC, true },
        { "EC", "P-384", 0, PROV_KEY_EC, true },
        { "EC", "P-521", 0, PROV_KEY_EC, true },
        { "EC", "secp256k1", 0, PROV_KEY_EC, false },
        { "ED25519", NULL, 0, PROV_KEY_ED25519, true },
        { "ED448", NULL, 0, PROV_KEY_ED448, true },
    };

    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        EVP_PKEY *k = NULL;
        unsigned char *der = NULL;
        int len;
        prov_spki_sizes_t sz;
        char group[64] = "";

        if (v[i].bits) {
            /* EVP_PKEY_Q_keygen makes no RSA-PSS key */
            EVP_PKEY_CTX *g = EVP_PKEY_CTX_new_from_name(NULL, v[i].alg, NULL);

            assert_non_null(g);
            assert_int_equal(EVP_PKEY_keygen_init(g), 1);
            assert_int_equal(EVP_PKEY_CTX_set_rsa_keygen_bits(g, v[i].bits), 1);
            assert_int_equal(EVP_PKEY_keygen(g, &k), 1);
            EVP_PKEY_CTX_free(g);
        } else {
            k = v[i].param ? EVP_PKEY_Q_keygen(NULL, NULL, v[i].alg, v[i].param)
                           : EVP_PKEY_Q_keygen(NULL, NULL, v[i].alg);
        }
        assert_non_null(k);
        len = i2d_PUBKEY(k, &der);
        assert_true(len > 0);
        assert_int_equal(prov_spki_sizes(v[i].kind, der, (size_t)len, &sz), v[i].known);
        if (v[i].known) {
            assert_int_equal(sz.bits, EVP_PKEY_get_bits(k));
            assert_int_equal(sz.security_bits, EVP_PKEY_get_security_bits(k));
            assert_int_equal(sz.max_size, EVP_PKEY_get_size(k));
            if (v[i].kind == PROV_KEY_EC) {
                assert_int_equal(EVP_PKEY_get_group_name(k, group, sizeof(group), NULL), 1);
                assert_string_equal(sz.group, group);
            } else {
                assert_null(sz.group);
            }
            /* another kind, every truncation and a byte more: not answered */
            assert_int_equal(prov_spki_sizes(v[i].kind == PROV_KEY_EC ? PROV_KEY_RSA
                                                                      : PROV_KEY_EC,
                                             der, (size_t)len, &sz), 0);
            for (int n = 0; n < len; n++)
                assert_int_equal(prov_spki_sizes(v[i].kind, der, (size_t)n, &sz), 0);
            {
                unsigned char *more = malloc((size_t)len + 1);

                assert_non_null(more);
                memcpy(more, der, (size_t)len);
                more[len] = 0;
                assert_int_equal(prov_spki_sizes(v[i].kind, more, (size_t)len + 1, &sz), 0);
                free(more);
            }
        }
        OPENSSL_free(der);
        EVP_PKEY_free(k);
    }
}

static void test_provider_cert_matches_key(void **state)
{
    EVP_PKEY *key = NULL, *other = NULL;
    X509 *cert = NULL, *other_cert = NULL;

    load_uri(URI_P256, &key, &cert);
    load_uri(URI_P384, &other, &other_cert);
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(cert), key), 1);
    assert_int_equal(EVP_PKEY_eq(key, X509_get0_pubkey(cert)), 1);
    assert_int_equal(X509_check_private_key(cert, key), 1);
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(other_cert), key), 0);
    assert_int_equal(X509_check_private_key(other_cert, key), 0);
    ERR_clear_error();
    X509_free(cert);
    X509_free(other_cert);
    EVP_PKEY_free(other);
    EVP_PKEY_free(key);

    load_uri(URI_RSA, &key, &cert);
    assert_int_equal(X509_check_private_key(cert, key), 1);
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(fake_keys[0].cert), key), 1);
    X509_free(cert);
    EVP_PKEY_free(key);
}

static void test_provider_export_refuses_private(void **state)
{
    EVP_PKEY *key = NULL;
    OSSL_PARAM *params = NULL;
    BIGNUM *n = NULL, *soft_n = NULL;

    load_uri(URI_RSA, &key, NULL);
    assert_int_equal(EVP_PKEY_todata(key, EVP_PKEY_KEYPAIR, &params), 0);
    assert_null(params);
    ERR_clear_error();
    assert_int_equal(EVP_PKEY_todata(key, EVP_PKEY_PUBLIC_KEY, &params), 1);
    assert_non_null(OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_RSA_N));
    assert_null(OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_RSA_D));
    assert_int_equal(OSSL_PARAM_get_BN(OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_RSA_N), &n), 1);
    assert_int_equal(EVP_PKEY_get_bn_param(fake_keys[0].soft, OSSL_PKEY_PARAM_RSA_N, &soft_n), 1);
    assert_int_equal(BN_cmp(n, soft_n), 0);
    OSSL_PARAM_free(params);
    BN_free(n);
    BN_free(soft_n);
    /* and OpenSSL can't move the key into the default provider to sign
     * there with half a key */
    {
        EVP_MD_CTX *m = EVP_MD_CTX_new();
        int before = fake_signs();

        assert_true(EVP_DigestSignInit_ex(m, NULL, "SHA256", plibctx, "provider=default", key,
                                          NULL) <= 0);
        assert_int_equal(fake_signs(), before);
        EVP_MD_CTX_free(m);
        ERR_clear_error();
    }
    EVP_PKEY_free(key);
}

static void test_provider_import_public_only(void **state)
{
    EVP_PKEY *key = NULL, *imported = NULL;
    OSSL_PARAM *pub = NULL, *pair = NULL;
    EVP_PKEY_CTX *pctx;

    load_uri(URI_P256, &key, NULL);
    assert_int_equal(EVP_PKEY_todata(fake_keys[1].soft, EVP_PKEY_KEYPAIR, &pair), 1);
    assert_int_equal(EVP_PKEY_todata(fake_keys[1].soft, EVP_PKEY_PUBLIC_KEY, &pub), 1);

    pctx = EVP_PKEY_CTX_new_from_name(plibctx, "EC", "provider=p11agent");
    assert_non_null(pctx);
    assert_int_equal(EVP_PKEY_fromdata_init(pctx), 1);
    assert_true(EVP_PKEY_fromdata(pctx, &imported, EVP_PKEY_KEYPAIR, pair) <= 0);
    assert_null(imported);
    assert_true(errors_contain("private"));
    assert_int_equal(EVP_PKEY_fromdata(pctx, &imported, EVP_PKEY_PUBLIC_KEY, pub), 1);
    assert_non_null(imported);
    assert_string_equal(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(imported)), "p11agent");
    /* our match(): same public key */
    assert_int_equal(EVP_PKEY_eq(imported, key), 1);
    assert_int_equal(EVP_PKEY_get_bits(imported), 256);
    /* a public-only key can't sign */
    {
        EVP_MD_CTX *m = EVP_MD_CTX_new();

        assert_true(EVP_DigestSignInit_ex(m, NULL, "SHA256", plibctx, NULL, imported, NULL)
                    <= 0);
        EVP_MD_CTX_free(m);
        ERR_clear_error();
    }
    EVP_PKEY_CTX_free(pctx);
    EVP_PKEY_free(imported);
    OSSL_PARAM_free(pub);
    OSSL_PARAM_free(pair);
    EVP_PKEY_free(key);
}

static void test_provider_sign_error_names_key_and_cause(void **state)
{
    EVP_PKEY *key = NULL;
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    unsigned char sig[512];
    size_t siglen = sizeof(sig);

    load_uri(URI_REMOVED, &key, NULL);
    ERR_clear_error();
    assert_int_equal(EVP_DigestSignInit_ex(m, NULL, "SHA256", plibctx, NULL, key, NULL), 1);
    assert_true(EVP_DigestSign(m, sig, &siglen, message, sizeof(message)) <= 0);
    assert_true(errors_contain("p11agent: signing with " URI_REMOVED
                               " failed: token removed: the card was pulled from reader 0"));
    EVP_MD_CTX_free(m);
    EVP_PKEY_free(key);
}

/* TLS 1.3 with an RSA key on a token without PSS fails at CertificateVerify;
 * the error must say why. TLS 1.2 with PKCS#1 still works. */
static void test_provider_rsa_without_pss_explains_tls13(void **state)
{
    EVP_PKEY *key = NULL;
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    unsigned char sig[512];
    size_t siglen = sizeof(sig);

    load_uri(URI_NOPSS, &key, NULL);
    ERR_clear_error();
    assert_int_equal(EVP_DigestSignInit_ex(m, &pctx, "SHA256", plibctx, NULL, key, NULL), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
    assert_true(EVP_DigestSign(m, sig, &siglen, message, sizeof(message)) <= 0);
    assert_true(errors_contain("TLS 1.3"));
    EVP_MD_CTX_free(m);

    m = EVP_MD_CTX_new();
    siglen = sizeof(sig);
    assert_int_equal(EVP_DigestSignInit_ex(m, NULL, "SHA256", plibctx, NULL, key, NULL), 1);
    assert_int_equal(EVP_DigestSign(m, sig, &siglen, message, sizeof(message)), 1);
    {
        sigopts_t o = { .md = "SHA256" };

        assert_true(digest_verify(fake_keys[0].soft, &o, message, sizeof(message), sig, siglen));
    }
    EVP_MD_CTX_free(m);
    EVP_PKEY_free(key);
}

static void test_provider_store_unknown_uri_names_it(void **state)
{
    OSSL_STORE_CTX *st;

    ERR_clear_error();
    st = OSSL_STORE_open_ex("pkcs11:object=nothing-here", plibctx, NULL, NULL, NULL, NULL,
                            NULL, NULL);
    assert_null(st);
    assert_true(errors_contain("no key matches pkcs11:object=nothing-here"));
}

static void test_provider_store_expect_pubkey_gives_spki(void **state)
{
    for (size_t i = 0; i < N_FAKE; i++) {
        OSSL_STORE_CTX *st = OSSL_STORE_open_ex(fake_keys[i].uri, plibctx, NULL, NULL, NULL,
                                                NULL, NULL, NULL);
        OSSL_STORE_INFO *info;
        EVP_PKEY *pub;

        assert_non_null(st);
        assert_int_equal(OSSL_STORE_expect(st, OSSL_STORE_INFO_PUBKEY), 1);
        info = OSSL_STORE_load(st);
        assert_non_null(info);
        assert_int_equal(OSSL_STORE_INFO_get_type(info), OSSL_STORE_INFO_PUBKEY);
        pub = OSSL_STORE_INFO_get1_PUBKEY(info);
        assert_int_equal(EVP_PKEY_eq(pub, fake_keys[i].soft), 1);
        EVP_PKEY_free(pub);
        OSSL_STORE_INFO_free(info);
        OSSL_STORE_close(st);
    }
}

static void test_provider_digest_sign_init_does_not_call_agent(void **state)
{
    EVP_PKEY *key = NULL;
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    size_t siglen = 0;
    int before;

    load_uri(URI_P256, &key, NULL);
    before = fake_signs();
    assert_int_equal(EVP_DigestSignInit_ex(m, NULL, "SHA256", plibctx, NULL, key, NULL), 1);
    assert_int_equal(EVP_DigestSignInit_ex(m, NULL, "SHA384", plibctx, NULL, key, NULL), 1);
    assert_int_equal(EVP_DigestSignUpdate(m, message, 5), 1);
    /* size query: no agent call, the maximal DER size */
    assert_int_equal(EVP_DigestSignFinal(m, NULL, &siglen), 1);
    assert_int_equal(siglen, 72);
    assert_int_equal(fake_signs(), before);
    EVP_MD_CTX_free(m);
    EVP_PKEY_free(key);
}

/* ------------------------------------------------------------------ */
/* TLS: in-memory mutual-auth handshakes, client key in the agent      */
/* ------------------------------------------------------------------ */

static int accept_any(int ok, X509_STORE_CTX *ctx)
{
    return 1;
}

static void handshake(const char *uri, int version, const char *sigalgs, int expect_alg)
{
    EVP_PKEY *ckey = NULL, *skey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *ccert = NULL, *scert = self_signed(skey, "server");
    SSL_CTX *sctx = SSL_CTX_new_ex(NULL, NULL, TLS_server_method());
    SSL_CTX *cctx = SSL_CTX_new_ex(plibctx, NULL, TLS_client_method());
    SSL *s, *c;
    BIO *sb, *cb;
    int before = fake_signs(), calls, sdone = 0, cdone = 0;

    load_uri(uri, &ckey, &ccert);
    assert_int_equal(SSL_CTX_use_certificate(sctx, scert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(sctx, skey), 1);
    SSL_CTX_set_verify(sctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, accept_any);
    SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, accept_any);
    assert_int_equal(SSL_CTX_set_min_proto_version(sctx, version), 1);
    assert_int_equal(SSL_CTX_set_max_proto_version(sctx, version), 1);
    assert_int_equal(SSL_CTX_use_certificate(cctx, ccert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(cctx, ckey), 1);
    assert_int_equal(SSL_CTX_check_private_key(cctx), 1);
    /* what the server's CertificateRequest allows the client to sign with */
    if (sigalgs != NULL)
        assert_int_equal(SSL_CTX_set1_client_sigalgs_list(sctx, sigalgs), 1);

    calls = fake_calls();
    s = SSL_new(sctx);
    c = SSL_new(cctx);
    assert_int_equal(BIO_new_bio_pair(&sb, 0, &cb, 0), 1);
    SSL_set_bio(s, sb, sb);
    SSL_set_bio(c, cb, cb);
    SSL_set_accept_state(s);
    SSL_set_connect_state(c);
    for (int i = 0; i < 100 && !(sdone && cdone); i++) {
        int r;

        if (!cdone) {
            r = SSL_do_handshake(c);
            if (r == 1)
                cdone = 1;
            else if (SSL_get_error(c, r) != SSL_ERROR_WANT_READ)
                fail_msg("client handshake failed: %s",
                         ERR_error_string(ERR_get_error(), NULL));
        }
        if (!sdone) {
            r = SSL_do_handshake(s);
            if (r == 1)
                sdone = 1;
            else if (SSL_get_error(s, r) != SSL_ERROR_WANT_READ)
                fail_msg("server handshake failed: %s",
                         ERR_error_string(ERR_get_error(), NULL));
        }
    }
    assert_true(sdone && cdone);
    /* TLS 1.3 needs one more read for the server to see the client's
     * certificate messages processed; by now they are. */
    assert_int_equal(SSL_version(s), version);
    {
        X509 *peer = SSL_get1_peer_certificate(s);

        assert_non_null(peer);
        assert_int_equal(X509_cmp(peer, ccert), 0);
        X509_free(peer);
    }
    assert_int_equal(fake_signs(), before + 1);
    /* The handshake's one agent call is the CertificateVerify signature:
     * no key lookup, no public data fetched, nothing else per handshake. */
    assert_int_equal(fake_calls(), calls + 1);
    assert_int_equal(fake.last.alg, expect_alg);

    SSL_free(c);
    SSL_free(s);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    X509_free(ccert);
    X509_free(scert);
    EVP_PKEY_free(ckey);
    EVP_PKEY_free(skey);
}

static void test_provider_tls12_client_auth(void **state)
{
    handshake(URI_RSA, TLS1_2_VERSION, "RSA+SHA256", BUS_SIG_RSA_PKCS1);
    assert_string_equal(fake.last.hash, "sha256");
    handshake(URI_RSA, TLS1_2_VERSION, "rsa_pss_rsae_sha256", BUS_SIG_RSA_PSS);
    handshake(URI_P256, TLS1_2_VERSION, NULL, BUS_SIG_ECDSA);
    handshake(URI_P384, TLS1_2_VERSION, NULL, BUS_SIG_ECDSA);
    handshake(URI_ED25519, TLS1_2_VERSION, NULL, BUS_SIG_EDDSA);
}

static void test_provider_tls13_client_auth(void **state)
{
    handshake(URI_RSA, TLS1_3_VERSION, NULL, BUS_SIG_RSA_PSS);
    assert_int_equal(fake.last.salt_len, 32); /* TLS: salt = digest length */
    handshake(URI_P256, TLS1_3_VERSION, NULL, BUS_SIG_ECDSA);
    handshake(URI_P384, TLS1_3_VERSION, NULL, BUS_SIG_ECDSA);
    assert_string_equal(fake.last.hash, "sha384");
    handshake(URI_ED25519, TLS1_3_VERSION, NULL, BUS_SIG_EDDSA);
    handshake(URI_ED448, TLS1_3_VERSION, NULL, BUS_SIG_EDDSA);
}

/* ------------------------------------------------------------------ */
/* The agent connection: restart, fork, threads                        */
/* ------------------------------------------------------------------ */

static bool sign_once(EVP_PKEY *key, const fake_key_t *fk)
{
    sigopts_t o = { .md = "SHA256" };
    unsigned char *sig;
    size_t siglen = 0;
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    bool ok = false;

    if (EVP_DigestSignInit_ex(m, NULL, "SHA256", plibctx, NULL, key, NULL) == 1
        && EVP_DigestSign(m, NULL, &siglen, message, sizeof(message)) == 1
        && (sig = malloc(siglen)) != NULL) {
        ok = EVP_DigestSign(m, sig, &siglen, message, sizeof(message)) == 1
             && digest_verify(fk->soft, &o, message, sizeof(message), sig, siglen);
        free(sig);
    }
    EVP_MD_CTX_free(m);
    return ok;
}

static void test_provider_reconnects_after_agent_restart(void **state)
{
    EVP_PKEY *key = NULL;
    int conns;

    load_uri(URI_P256, &key, NULL);
    assert_true(sign_once(key, &fake_keys[1]));
    conns = fake_connections();
    /* The agent drops every client, as a restart does; the next signature
     * reconnects and succeeds without the application noticing. */
    srv_command('r');
    assert_true(sign_once(key, &fake_keys[1]));
    assert_int_equal(fake_connections(), conns + 1);
    assert_true(sign_once(key, &fake_keys[1]));
    assert_int_equal(fake_connections(), conns + 1);
    EVP_PKEY_free(key);
}

static double mono_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *agent_back_later(void *arg)
{
    usleep(300 * 1000);
    srv_command('u');
    return NULL;
}

/* The agent is down for 300 ms (SIGKILL, then a supervisor starts a new
 * one): a signature attempted meanwhile waits for it and succeeds. */
static void test_provider_waits_for_restarting_agent(void **state)
{
    EVP_PKEY *key = NULL;
    pthread_t th;
    double t0, took;

    load_uri(URI_P256, &key, NULL);
    assert_true(sign_once(key, &fake_keys[1]));
    srv_command('d');
    assert_int_equal(pthread_create(&th, NULL, agent_back_later, NULL), 0);
    t0 = mono_s();
    assert_true(sign_once(key, &fake_keys[1]));
    took = mono_s() - t0;
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_true(took >= 0.25);
    assert_true(took < 2.5);
    EVP_PKEY_free(key);
}

/* An agent that does not come back: the call that saw it go fails after
 * the bounded wait, later calls fail at once; signing works again once an
 * agent listens. */
static void test_provider_gives_up_on_agent_that_stays_away(void **state)
{
    EVP_PKEY *key = NULL;
    double t0, took;

    load_uri(URI_P256, &key, NULL);
    assert_true(sign_once(key, &fake_keys[1]));
    srv_command('d');
    t0 = mono_s();
    assert_false(sign_once(key, &fake_keys[1]));
    took = mono_s() - t0;
    assert_true(took >= 2.5);
    assert_true(took < 10);
    ERR_clear_error();
    t0 = mono_s();
    assert_false(sign_once(key, &fake_keys[1]));
    assert_true(mono_s() - t0 < 0.5);
    ERR_clear_error();
    srv_command('u');
    assert_true(sign_once(key, &fake_keys[1]));
    EVP_PKEY_free(key);
}

static void test_provider_fork_child_gets_own_connection(void **state)
{
    EVP_PKEY *key = NULL;
    int conns, status = -1;
    pid_t pid;

    load_uri(URI_RSA, &key, NULL);
    assert_true(sign_once(key, &fake_keys[0]));
    conns = fake_connections();
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* the parent's socket must not be used here */
        _exit(sign_once(key, &fake_keys[0]) && sign_once(key, &fake_keys[0]) ? 0 : 1);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* the child connected once; the parent keeps its connection */
    assert_int_equal(fake_connections(), conns + 1);
    assert_true(sign_once(key, &fake_keys[0]));
    assert_int_equal(fake_connections(), conns + 1);
    EVP_PKEY_free(key);
}

typedef struct thread_arg {
    EVP_PKEY *key;
    int ok;
} thread_arg_t;

static void *sign_many(void *p)
{
    thread_arg_t *a = p;

    for (int i = 0; i < 50; i++)
        if (sign_once(a->key, &fake_keys[1]))
            a->ok++;
        else
            ERR_print_errors_fp(stderr); /* why, in the test's log */
    return NULL;
}

/* A provider of its own (its own pool) with max-connections n. */
static OSSL_LIB_CTX *own_provider(int n, OSSL_PROVIDER **ret_d, OSSL_PROVIDER **ret_ours)
{
    OSSL_LIB_CTX *l = OSSL_LIB_CTX_new();
    char v[16];

    assert_non_null(l);
    assert_true(OSSL_PROVIDER_add_builtin(l, "p11agent", OSSL_provider_init));
    snprintf(v, sizeof(v), "%d", n);
    setenv("P11AGENT_MAX_CONNECTIONS", v, 1);
    *ret_d = OSSL_PROVIDER_load(l, "default");
    *ret_ours = OSSL_PROVIDER_load(l, "p11agent");
    unsetenv("P11AGENT_MAX_CONNECTIONS");
    assert_non_null(*ret_d);
    assert_non_null(*ret_ours);
    return l;
}

/* n threads (at most 8) sign 50 times each with key; all must succeed. */
static void run_signers(EVP_PKEY *key, int n)
{
    pthread_t t[8];
    thread_arg_t args[8];

    assert_true(n <= 8);
    for (int i = 0; i < n; i++) {
        args[i] = (thread_arg_t){ .key = key };
        assert_int_equal(pthread_create(&t[i], NULL, sign_many, &args[i]), 0);
    }
    for (int i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(args[i].ok, 50);
    }
}

static void test_provider_threads_share_key_and_connection_pool(void **state)
{
    EVP_PKEY *key = NULL;
    int conns, before;

    load_uri(URI_P256, &key, NULL);
    assert_true(sign_once(key, &fake_keys[1]));
    conns = fake_connections();
    before = fake_signs();
    run_signers(key, 4);
    assert_int_equal(fake_signs(), before + 200);
    /* Concurrent signers get connections of their own from the pool (at
     * most 4 here, never more than the threads), and keep them: once the
     * threads are done, signing reuses an idle one. */
    assert_true(fake_connections() >= conns);
    assert_true(fake_connections() <= conns + 3);
    conns = fake_connections();
    assert_true(sign_once(key, &fake_keys[1]));
    assert_true(sign_once(key, &fake_keys[1]));
    assert_int_equal(fake_connections(), conns);
    EVP_PKEY_free(key);
}

/* max-connections (here $P11AGENT_MAX_CONNECTIONS, read when the provider
 * starts): 4 threads signing at once share the one connection allowed. */
static void test_provider_max_connections_caps_the_pool(void **state)
{
    OSSL_LIB_CTX *saved = plibctx, *one;
    OSSL_PROVIDER *d, *ours;
    EVP_PKEY *key = NULL;
    int conns;

    one = own_provider(1, &d, &ours);
    plibctx = one; /* load_uri and sign_once use it */
    conns = fake_connections();
    load_uri(URI_P256, &key, NULL);
    run_signers(key, 4);
    assert_int_equal(fake_connections(), conns + 1);
    EVP_PKEY_free(key);
    plibctx = saved;
    OSSL_PROVIDER_unload(ours);
    OSSL_PROVIDER_unload(d);
    OSSL_LIB_CTX_free(one);
}


/* The agent admits 2 connections of this process and refuses the rest
 * (Busy on the first call, or closed at once), as its max-clients does:
 * 8 threads signing at once with max-connections 8 all succeed on the 2,
 * every signature reaches the agent once, and the pool stops asking after
 * the first refusals (it remembers them for a few seconds) rather than
 * opening a connection per call. */
static void test_provider_pool_shares_when_agent_refuses(void **state)
{
    OSSL_LIB_CTX *saved = plibctx;
    OSSL_PROVIDER *d, *ours;
    EVP_PKEY *key = NULL;
    int conns, before, refused;

    OSSL_LIB_CTX *mine = own_provider(8, &d, &ours);

    plibctx = mine;
    conns = fake_connections();
    load_uri(URI_P256, &key, NULL); /* the pool's first connection */
    fake_limit_connections(1);
    before = fake_signs();
    run_signers(key, 8);
    refused = fake_refused();
    assert_int_equal(fake_signs(), before + 400);
    assert_int_equal(fake_connections(), conns + 2);
    /* the pool tried to grow (so the refusals were met and survived) ... */
    assert_true(refused >= 1);
    /* ... at most once per thread that raced before the first refusal was
     * known, not once per signature */
    assert_true(refused <= 6);
    /* within the hold, a second burst asks for no new connection */
    run_signers(key, 8);
    assert_int_equal(fake_refused(), refused);
    assert_int_equal(fake_connections(), conns + 2);
    assert_int_equal(fake_signs(), before + 800);
    fake_limit_connections(-1);
    EVP_PKEY_free(key);
    plibctx = saved;
    OSSL_PROVIDER_unload(ours);
    OSSL_PROVIDER_unload(d);
    OSSL_LIB_CTX_free(mine);
}

/* Opening one more connection fails (nothing listens at the socket any
 * more, the one open connection stays): 4 threads share the open one and
 * all succeed. The first connection failing still fails (the other tests
 * without an agent). */
static void test_provider_pool_shares_when_connect_fails(void **state)
{
    OSSL_LIB_CTX *saved = plibctx;
    OSSL_PROVIDER *d, *ours;
    EVP_PKEY *key = NULL;
    int conns, before;

    OSSL_LIB_CTX *mine = own_provider(8, &d, &ours);

    plibctx = mine;
    conns = fake_connections();
    load_uri(URI_P256, &key, NULL);
    assert_int_equal(fake_connections(), conns + 1);
    srv_command('m');
    before = fake_signs();
    run_signers(key, 4);
    srv_command('u');
    assert_int_equal(fake_signs(), before + 200);
    assert_int_equal(fake_connections(), conns + 1);
    EVP_PKEY_free(key);
    plibctx = saved;
    OSSL_PROVIDER_unload(ours);
    OSSL_PROVIDER_unload(d);
    OSSL_LIB_CTX_free(mine);
}

/* ------------------------------------------------------------------ */
/* Key-reference files (decoder.c)                                     */
/* ------------------------------------------------------------------ */

/* A PEM key-reference file in memory: our format, or pkcs11-provider's. */
static char *ref_pem(const char *uri, bus_key_type_t type, bool pk11prov)
{
    BIO *b = BIO_new(BIO_s_mem());
    uint8_t *der = NULL, tmp[512];
    size_t len = 0;
    char *data = NULL, *out;
    long n;

    assert_non_null(b);
    if (!pk11prov) {
        assert_int_equal(bus_keyref_encode(uri, type, &der, &len, NULL), BUS_OK);
    } else {
        size_t ul = strlen(uri);

        assert_true(ul < 100);
        tmp[0] = 0x30;
        tmp[1] = (uint8_t)(3 + 2 + ul);
        memcpy(tmp + 2, "\x1a\x01" "d" "\x0c", 4);
        tmp[6] = (uint8_t)ul;
        memcpy(tmp + 7, uri, ul);
        len = 7 + ul;
        der = malloc(len);
        memcpy(der, tmp, len);
    }
    assert_true(PEM_write_bio(b, pk11prov ? BUS_KEYREF_PK11PROV_PEM_LABEL : BUS_KEYREF_PEM_LABEL,
                              "", der, (long)len) > 0);
    n = BIO_get_mem_data(b, &data);
    out = calloc(1, (size_t)n + 1);
    memcpy(out, data, (size_t)n);
    BIO_free(b);
    free(der);
    return out;
}

/* PEM_read_bio_PrivateKey_ex on text, in the test's library context. */
static EVP_PKEY *read_key(const char *text)
{
    BIO *b = BIO_new_mem_buf(text, -1);
    EVP_PKEY *key;

    assert_non_null(b);
    key = PEM_read_bio_PrivateKey_ex(b, NULL, NULL, NULL, plibctx, NULL);
    BIO_free(b);
    return key;
}

static void test_provider_decoder_reads_ref_files(void **state)
{
    for (size_t i = 0; i < N_FAKE; i++) {
        for (int fmt = 0; fmt < 2; fmt++) {
            char *pem = ref_pem(fake_keys[i].uri, fake_keys[i].type, fmt == 1);
            int finds = fake_finds();
            EVP_PKEY *key = read_key(pem);

            if (key == NULL)
                ERR_print_errors_fp(stderr);
            assert_non_null(key);
            /* one agent lookup per load, in both formats */
            assert_int_equal(fake_finds(), finds + 1);
            assert_string_equal(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(key)),
                                "p11agent");
            assert_int_equal(EVP_PKEY_eq(key, fake_keys[i].soft), 1);
            if (fake_keys[i].type == BUS_KEY_RSA || fake_keys[i].type == BUS_KEY_EC)
                assert_true(sign_once(key, &fake_keys[i]));
            EVP_PKEY_free(key);
            free(pem);
        }
    }
}

/* OSSL_STORE's file: loader (openssl pkey -in FILE) decodes twice; the
 * agent is still asked once. */
static void test_provider_decoder_file_store_one_lookup(void **state)
{
    char path[] = "/tmp/p11agent-unit-ref.XXXXXX";
    char *pem = ref_pem(URI_RSA, BUS_KEY_RSA, false);
    int fd = mkstemp(path), finds;
    OSSL_STORE_CTX *st;
    EVP_PKEY *key = NULL;

    assert_true(fd >= 0);
    assert_int_equal(write(fd, pem, strlen(pem)), (ssize_t)strlen(pem));
    close(fd);
    finds = fake_finds();
    st = OSSL_STORE_open_ex(path, plibctx, NULL, NULL, NULL, NULL, NULL, NULL);
    assert_non_null(st);
    while (key == NULL && !OSSL_STORE_eof(st)) {
        OSSL_STORE_INFO *info = OSSL_STORE_load(st);

        if (info != NULL && OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
            key = OSSL_STORE_INFO_get1_PKEY(info);
        OSSL_STORE_INFO_free(info);
    }
    OSSL_STORE_close(st);
    unlink(path);
    assert_non_null(key);
    assert_int_equal(fake_finds(), finds + 1);
    assert_true(sign_once(key, &fake_keys[0]));
    EVP_PKEY_free(key);
    free(pem);
}

/* haproxy's crt file: the certificate first, then the reference. */
static void test_provider_decoder_cert_then_ref(void **state)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *ref = ref_pem(URI_P256, BUS_KEY_EC, false);
    EVP_PKEY *key;

    assert_int_equal(PEM_write_bio_X509(b, fake_keys[1].cert), 1);
    assert_true(BIO_puts(b, ref) > 0);
    key = PEM_read_bio_PrivateKey_ex(b, NULL, NULL, NULL, plibctx, NULL);
    assert_non_null(key);
    assert_int_equal(EVP_PKEY_eq(key, fake_keys[1].soft), 1);
    assert_true(sign_once(key, &fake_keys[1]));
    EVP_PKEY_free(key);
    BIO_free(b);
    free(ref);
}

static void test_provider_decoder_bad_files_fail_cleanly(void **state)
{
    char *good = ref_pem(URI_P256, BUS_KEY_EC, false);
    char *nokey = ref_pem("pkcs11:token=t;object=nothing;type=private", BUS_KEY_EC, false);
    char *wrongtype = ref_pem(URI_P256, BUS_KEY_RSA, false);
    char buf[2048];
    static const struct {
        const char *text;
        const char *error;
    } bad[] = {
        { "-----BEGIN P11AGENT KEY REFERENCE-----\nMIGO\n", "truncated" },
        { "-----BEGIN P11AGENT KEY REFERENCE-----\n!!!!\n-----END P11AGENT KEY REFERENCE-----\n",
          "invalid base64" },
        { "-----BEGIN P11AGENT KEY REFERENCE-----\n\n-----END P11AGENT KEY REFERENCE-----\n",
          "invalid base64" },
        /* 30 84 ff ff ff ff */
        { "-----BEGIN P11AGENT KEY REFERENCE-----\nMIT/////\n-----END P11AGENT KEY REFERENCE-----\n",
          "length too large" },
        /* 30 03 02 01 02: version 2 */
        { "-----BEGIN P11AGENT KEY REFERENCE-----\nMAMCAQI=\n-----END P11AGENT KEY REFERENCE-----\n",
          "version" },
        { "-----BEGIN P11AGENT KEY REFERENCE-----\nProc-Type: 4,ENCRYPTED\n\nMAMCAQI=\n"
          "-----END P11AGENT KEY REFERENCE-----\n", "headers" },
        { "-----BEGIN P11AGENT KEY REFERENCE-----\nMAMCAQI=\n-----END PKCS#11 PROVIDER URI-----\n",
          "does not match" },
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ERR_clear_error();
        assert_null(read_key(bad[i].text));
        if (!errors_contain(bad[i].error))
            fail_msg("case %zu: no error containing '%s'", i, bad[i].error);
    }
    ERR_clear_error();
    assert_null(read_key(nokey));
    assert_true(errors_contain("no key matches pkcs11:token=t;object=nothing;type=private"));
    ERR_clear_error();
    assert_null(read_key(wrongtype));
    assert_true(errors_contain("the agent has a EC key"));

    /* every truncation of a good file: an error, never a crash */
    for (size_t cut = 0; cut < strlen(good); cut++) {
        EVP_PKEY *key;

        memcpy(buf, good, cut);
        buf[cut] = '\0';
        key = read_key(buf);
        /* cutting only the final newline still leaves a whole file */
        if (key != NULL)
            assert_true(cut >= strlen(good) - 1);
        EVP_PKEY_free(key);
        ERR_clear_error();
    }
    free(good);
    free(nokey);
    free(wrongtype);
}

static void test_provider_decoder_refuses_pin_in_uri(void **state)
{
    /* written by hand: bus_keyref_encode refuses such a URI */
    static const char uri[] = "pkcs11:object=p256?pin-value=1234";
    uint8_t der[128];
    size_t n = 0, ul = sizeof(uri) - 1;
    BIO *b = BIO_new(BIO_s_mem());
    EVP_PKEY *key;

    der[n++] = 0x30;
    der[n++] = (uint8_t)(3 + 2 + ul + 4);
    memcpy(der + n, "\x02\x01\x01\x0c", 4);
    n += 4;
    der[n++] = (uint8_t)ul;
    memcpy(der + n, uri, ul);
    n += ul;
    memcpy(der + n, "\x0c\x02" "EC", 4);
    n += 4;
    assert_true(PEM_write_bio(b, BUS_KEYREF_PEM_LABEL, "", der, (long)n) > 0);
    ERR_clear_error();
    key = PEM_read_bio_PrivateKey_ex(b, NULL, NULL, NULL, plibctx, NULL);
    assert_null(key);
    assert_true(errors_contain("PIN attribute"));
    BIO_free(b);
}

/* Loading the provider and decoding files without references never
 * talks to the agent. */
static void test_provider_decoder_no_agent_call_without_ref(void **state)
{
    OSSL_LIB_CTX *lctx = OSSL_LIB_CTX_new();
    OSSL_PROVIDER *d, *o;
    BIO *b = BIO_new(BIO_s_mem());
    EVP_PKEY *key;
    int conns = fake_connections();

    assert_non_null(lctx);
    assert_true(OSSL_PROVIDER_add_builtin(lctx, "p11agent", OSSL_provider_init));
    d = OSSL_PROVIDER_load(lctx, "default");
    o = OSSL_PROVIDER_load(lctx, "p11agent");
    assert_non_null(d);
    assert_non_null(o);
    assert_int_equal(PEM_write_bio_X509(b, fake_keys[0].cert), 1);
    assert_int_equal(PEM_write_bio_PrivateKey(b, fake_keys[0].soft, NULL, NULL, 0, NULL, NULL),
                     1);
    key = PEM_read_bio_PrivateKey_ex(b, NULL, NULL, NULL, lctx, NULL);
    assert_non_null(key);
    assert_int_equal(EVP_PKEY_eq(key, fake_keys[0].soft), 1);
    assert_int_equal(fake_connections(), conns);
    EVP_PKEY_free(key);
    BIO_free(b);
    OSSL_PROVIDER_unload(o);
    OSSL_PROVIDER_unload(d);
    OSSL_LIB_CTX_free(lctx);
}

/* How many decoder instances OpenSSL sets up in LCTX to decode a key of
 * TYPE (NULL: any) with SELECTION from INPUT ("DER", "PEM") of STRUCTURE
 * (NULL: any). */
static int decoders_for(OSSL_LIB_CTX *lctx, const char *type, const char *structure,
                        int selection, const char *input)
{
    EVP_PKEY *pk = NULL;
    OSSL_DECODER_CTX *d =
        OSSL_DECODER_CTX_new_for_pkey(&pk, input, structure, type, selection, lctx, NULL);
    int n;

    assert_non_null(d);
    n = OSSL_DECODER_CTX_get_num_decoders(d);
    OSSL_DECODER_CTX_free(d);
    return n;
}

/* Every certificate OpenSSL 3.0 parses builds a decoder context for its
 * SubjectPublicKeyInfo (public selection), four per mTLS handshake. None of
 * our decoders may be set up there: each one costs a scan of every
 * provider's decoders (a tenth of a P-256 handshake in all). Private-key
 * loads still get ours: the key decoders for a given type, and the PEM
 * decoder too when any type will do (PEM_read_bio_PrivateKey). */
static void test_provider_decoders_stay_out_of_public_key_decodes(void **state)
{
    static const char *const types[] = { "EC", "RSA", "ED25519", "ED448" };
    OSSL_LIB_CTX *dctx = OSSL_LIB_CTX_new(); /* the default provider alone */
    OSSL_PROVIDER *d;

    assert_non_null(dctx);
    d = OSSL_PROVIDER_load(dctx, "default");
    assert_non_null(d);
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        int plain =
            decoders_for(dctx, types[i], "SubjectPublicKeyInfo", EVP_PKEY_PUBLIC_KEY, "DER");
        int with_us =
            decoders_for(plibctx, types[i], "SubjectPublicKeyInfo", EVP_PKEY_PUBLIC_KEY, "DER");

        if (with_us != plain)
            fail_msg("%s public key: %d decoders with p11agent loaded, %d without", types[i],
                     with_us, plain);
        /* our two key decoders (reference structures) */
        assert_true(decoders_for(plibctx, types[i], NULL, EVP_PKEY_KEYPAIR, "DER")
                    >= decoders_for(dctx, types[i], NULL, EVP_PKEY_KEYPAIR, "DER") + 2);
    }
    /* all eight key decoders and the PEM decoder */
    assert_true(decoders_for(plibctx, NULL, NULL, EVP_PKEY_KEYPAIR, "PEM")
                >= decoders_for(dctx, NULL, NULL, EVP_PKEY_KEYPAIR, "PEM") + 9);
    OSSL_PROVIDER_unload(d);
    OSSL_LIB_CTX_free(dctx);
}

/* ------------------------------------------------------------------ */
/* RSA decryption (asymcipher.c) and MD5-SHA1 signatures               */
/* ------------------------------------------------------------------ */

/* Encrypts in with the software key's public half (default provider). */
static size_t soft_encrypt(int pad, const char *oaep_md, const char *label,
                           const unsigned char *in, size_t inlen, unsigned char *out)
{
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_pkey(NULL, fake_keys[0].soft, NULL);
    size_t outlen = 512;

    assert_non_null(pctx);
    assert_int_equal(EVP_PKEY_encrypt_init(pctx), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, pad), 1);
    if (oaep_md != NULL)
        assert_int_equal(EVP_PKEY_CTX_set_rsa_oaep_md_name(pctx, oaep_md, NULL), 1);
    if (label != NULL)
        assert_int_equal(EVP_PKEY_CTX_set0_rsa_oaep_label(pctx, OPENSSL_strdup(label),
                                                          (int)strlen(label)), 1);
    assert_int_equal(EVP_PKEY_encrypt(pctx, out, &outlen, in, inlen), 1);
    EVP_PKEY_CTX_free(pctx);
    return outlen;
}

static void test_provider_decrypt_pkcs1_oaep_raw(void **state)
{
    static const unsigned char secret[] = "the premaster of a file transfer";
    unsigned char ct[512], pt[512];
    size_t ctlen, ptlen;
    EVP_PKEY *key = NULL;
    EVP_PKEY_CTX *pctx;

    (void)state;
    load_uri(URI_RSA, &key, NULL);

    /* PKCS#1 v1.5 */
    ctlen = soft_encrypt(RSA_PKCS1_PADDING, NULL, NULL, secret, sizeof(secret), ct);
    pctx = EVP_PKEY_CTX_new_from_pkey(plibctx, key, NULL);
    assert_int_equal(EVP_PKEY_decrypt_init(pctx), 1);
    assert_int_equal(EVP_PKEY_decrypt(pctx, NULL, &ptlen, ct, ctlen), 1);
    assert_int_equal(ptlen, 256);
    ptlen = sizeof(pt);
    assert_int_equal(EVP_PKEY_decrypt(pctx, pt, &ptlen, ct, ctlen), 1);
    assert_int_equal(ptlen, sizeof(secret));
    assert_memory_equal(pt, secret, sizeof(secret));
    assert_int_equal(fake.last_dec.alg, BUS_DEC_RSA_PKCS1);
    EVP_PKEY_CTX_free(pctx);

    /* OAEP with SHA-256 and a label, set as openssl pkeyutl -pkeyopt does */
    ctlen = soft_encrypt(RSA_PKCS1_OAEP_PADDING, "SHA256", "label", secret, sizeof(secret), ct);
    pctx = EVP_PKEY_CTX_new_from_pkey(plibctx, key, NULL);
    assert_int_equal(EVP_PKEY_decrypt_init(pctx), 1);
    assert_true(EVP_PKEY_CTX_ctrl_str(pctx, "rsa_padding_mode", "oaep") > 0);
    assert_true(EVP_PKEY_CTX_ctrl_str(pctx, "rsa_oaep_md", "sha256") > 0);
    assert_int_equal(EVP_PKEY_CTX_set0_rsa_oaep_label(pctx, OPENSSL_strdup("label"), 5), 1);
    {
        unsigned char *got = NULL;
        char name[32];
        int pad = 0;

        /* what was set reads back, as the default provider's would */
        assert_int_equal(EVP_PKEY_CTX_get0_rsa_oaep_label(pctx, &got), 5);
        assert_memory_equal(got, "label", 5);
        assert_true(EVP_PKEY_CTX_get_rsa_padding(pctx, &pad) > 0);
        assert_int_equal(pad, RSA_PKCS1_OAEP_PADDING);
        assert_int_equal(EVP_PKEY_CTX_get_rsa_oaep_md_name(pctx, name, sizeof(name)), 1);
        assert_true(strcmp(name, "SHA2-256") == 0 || strcmp(name, "SHA256") == 0);
    }
    ptlen = sizeof(pt);
    assert_int_equal(EVP_PKEY_decrypt(pctx, pt, &ptlen, ct, ctlen), 1);
    assert_int_equal(ptlen, sizeof(secret));
    assert_memory_equal(pt, secret, sizeof(secret));
    assert_int_equal(fake.last_dec.alg, BUS_DEC_RSA_OAEP);
    assert_string_equal(fake.last_dec.hash, "sha256");
    assert_string_equal(fake.last_dec.mgf1_hash, "sha256");
    assert_int_equal(fake.last_dec.label_len, 5);
    EVP_PKEY_CTX_free(pctx);

    /* the wrong label: the agent's error, named, not a plaintext */
    pctx = EVP_PKEY_CTX_new_from_pkey(plibctx, key, NULL);
    assert_int_equal(EVP_PKEY_decrypt_init(pctx), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_oaep_md_name(pctx, "SHA256", NULL), 1);
    ptlen = sizeof(pt);
    assert_true(EVP_PKEY_decrypt(pctx, pt, &ptlen, ct, ctlen) <= 0);
    assert_true(errors_contain(URI_RSA));
    EVP_PKEY_CTX_free(pctx);

    /* no padding: the raw integer, modulus-sized (a PKCS#1 block here) */
    ctlen = soft_encrypt(RSA_PKCS1_PADDING, NULL, NULL, secret, sizeof(secret), ct);
    pctx = EVP_PKEY_CTX_new_from_pkey(plibctx, key, NULL);
    assert_int_equal(EVP_PKEY_decrypt_init(pctx), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_NO_PADDING), 1);
    ptlen = sizeof(pt);
    assert_int_equal(EVP_PKEY_decrypt(pctx, pt, &ptlen, ct, ctlen), 1);
    assert_int_equal(ptlen, 256);
    assert_int_equal(pt[0], 0);
    assert_int_equal(pt[1], 2);
    assert_memory_equal(pt + 256 - sizeof(secret), secret, sizeof(secret));
    assert_int_equal(fake.last_dec.alg, BUS_DEC_RSA_RAW);
    EVP_PKEY_CTX_free(pctx);
    EVP_PKEY_free(key);
}

/* TLS premaster decryption as libssl does it (tls_process_cke_rsa). */
static int tls_decrypt(EVP_PKEY *key, const unsigned char *ct, size_t ctlen, unsigned int version,
                       unsigned char out[48])
{
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_pkey(plibctx, key, NULL);
    OSSL_PARAM params[2];
    size_t outlen = 48;
    int r;

    assert_int_equal(EVP_PKEY_decrypt_init(pctx), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_WITH_TLS_PADDING), 1);
    params[0] = OSSL_PARAM_construct_uint(OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION, &version);
    params[1] = OSSL_PARAM_construct_end();
    assert_int_equal(EVP_PKEY_CTX_set_params(pctx, params), 1);
    r = EVP_PKEY_decrypt(pctx, out, &outlen, ct, ctlen);
    EVP_PKEY_CTX_free(pctx);
    if (r == 1)
        assert_int_equal(outlen, 48);
    return r;
}

static void test_provider_decrypt_tls_implicit_rejection(void **state)
{
    unsigned char pms[48], em[256], ct[512], out[48], out2[48];
    size_t ctlen;
    EVP_PKEY *key = NULL;

    (void)state;
    load_uri(URI_RSA, &key, NULL);
    pms[0] = 0x03;
    pms[1] = 0x03;
    for (size_t i = 2; i < sizeof(pms); i++)
        pms[i] = (unsigned char)(i * 7);

    /* a good premaster comes back, through rsa-raw */
    ctlen = soft_encrypt(RSA_PKCS1_PADDING, NULL, NULL, pms, sizeof(pms), ct);
    assert_int_equal(tls_decrypt(key, ct, ctlen, 0x0303, out), 1);
    assert_memory_equal(out, pms, 48);
    assert_int_equal(fake.last_dec.alg, BUS_DEC_RSA_RAW);

    /* the wrong version: success, 48 random bytes, different each time */
    assert_int_equal(tls_decrypt(key, ct, ctlen, 0x0302, out), 1);
    assert_int_equal(tls_decrypt(key, ct, ctlen, 0x0302, out2), 1);
    assert_memory_not_equal(out, pms, 48);
    assert_memory_not_equal(out, out2, 48);

    /* a bad padding (block type 01): success with random bytes too */
    memset(em, 0xff, sizeof(em));
    em[0] = 0;
    em[1] = 1;
    em[256 - 49] = 0;
    memcpy(em + 256 - 48, pms, 48);
    ctlen = soft_encrypt(RSA_NO_PADDING, NULL, NULL, em, sizeof(em), ct);
    assert_int_equal(tls_decrypt(key, ct, ctlen, 0x0303, out), 1);
    assert_memory_not_equal(out, pms, 48);
    EVP_PKEY_free(key);
}

/* The unpadding itself, on every flaw ROBOT probes. */
static void test_provider_tls_premaster_unpad(void **state)
{
    unsigned char em[128], good[128], rnd[48], out[48];
    const size_t k = sizeof(em), z = k - 49;

    (void)state;
    memset(rnd, 0xee, sizeof(rnd));
    memset(good, 0x5a, sizeof(good));
    good[0] = 0;
    good[1] = 2;
    good[z] = 0;
    good[z + 1] = 3;
    good[z + 2] = 3;
    for (size_t i = z + 3; i < k; i++)
        good[i] = (unsigned char)i;

    assert_int_equal(prov_tls_premaster_unpad(out, good, k, rnd, 0x0303, 0), 1);
    assert_memory_equal(out, good + z + 1, 48);
    /* alt_version (SSL_OP_TLS_ROLLBACK_BUG) is accepted too */
    assert_int_equal(prov_tls_premaster_unpad(out, good, k, rnd, 0x0302, 0x0303), 1);
    assert_memory_equal(out, good + z + 1, 48);

    static const struct {
        size_t at;
        unsigned char v;
    } flaws[] = {
        {0, 1},         /* leading byte not zero */
        {1, 1},         /* block type 01 */
        {2, 0},         /* a zero inside the padding */
        {9, 0},         /* ... the last of the eight minimum bytes */
        {z - 1, 0},     /* premaster one byte too long (the zero earlier) */
        {z, 0x5a},      /* no zero separator: 47 bytes or none */
        {z + 1, 2},     /* wrong major version */
        {z + 2, 1},     /* wrong minor version */
    };
    for (size_t f = 0; f < sizeof(flaws) / sizeof(flaws[0]); f++) {
        memcpy(em, good, k);
        em[flaws[f].at] = flaws[f].v;
        memset(out, 0, sizeof(out));
        assert_int_equal(prov_tls_premaster_unpad(out, em, k, rnd, 0x0303, 0), 1);
        assert_memory_equal(out, rnd, 48);
    }
    /* a modulus too small to hold padding and premaster: refused */
    assert_int_equal(prov_tls_premaster_unpad(out, good, 58, rnd, 0x0303, 0), 0);
}

/* TLS 1.0/1.1 ServerKeyExchange: MD5-SHA1, raw PKCS#1 v1.5 over 36 bytes. */
static void test_provider_md5_sha1_signature(void **state)
{
    const fake_key_t *fk = fake_by_uri(URI_RSA);
    sigopts_t o = {.md = "MD5-SHA1"};
    unsigned char *sig;
    size_t siglen;
    EVP_PKEY *key = NULL;
    EVP_MD_CTX *m;
    EVP_PKEY_CTX *pctx = NULL;

    (void)state;
    load_uri(URI_RSA, &key, NULL);
    sig = digest_sign(plibctx, key, &o, message, sizeof(message), &siglen, NULL, NULL);
    assert_int_equal(fake.last.alg, BUS_SIG_RSA_PKCS1);
    assert_string_equal(fake.last.hash, "");
    assert_int_equal(fake.last_len, 36);
    assert_true(digest_verify(fk->soft, &o, message, sizeof(message), sig, siglen));
    free(sig);

    /* never with PSS */
    m = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestSignInit_ex(m, &pctx, "MD5-SHA1", plibctx, NULL, key, NULL), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
    siglen = 0;
    assert_int_equal(EVP_DigestSign(m, NULL, &siglen, message, sizeof(message)), 1);
    sig = malloc(siglen);
    assert_true(EVP_DigestSign(m, sig, &siglen, message, sizeof(message)) <= 0);
    assert_true(errors_contain("MD5-SHA1"));
    free(sig);
    EVP_MD_CTX_free(m);
    EVP_PKEY_free(key);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_provider_module_loads_and_offers_operations),
        cmocka_unit_test(test_provider_offers_nothing_inside_agent),
        cmocka_unit_test(test_provider_pad_mode_parsing),
        cmocka_unit_test(test_provider_saltlen_parsing),
        cmocka_unit_test(test_provider_pss_salt_computation),
        cmocka_unit_test(test_provider_algorithm_id_matches_default),
        cmocka_unit_test(test_provider_algorithm_id_pss_matches_default),
        cmocka_unit_test(test_provider_pss_sends_salt_and_mgf1),
        cmocka_unit_test(test_provider_pkey_sign_prehashed_and_raw),
        cmocka_unit_test(test_provider_decrypt_pkcs1_oaep_raw),
        cmocka_unit_test(test_provider_decrypt_tls_implicit_rejection),
        cmocka_unit_test(test_provider_tls_premaster_unpad),
        cmocka_unit_test(test_provider_md5_sha1_signature),
        cmocka_unit_test(test_provider_key_params_match_software_key),
        cmocka_unit_test(test_provider_spki_sizes_match_decoded),
        cmocka_unit_test(test_provider_cert_matches_key),
        cmocka_unit_test(test_provider_export_refuses_private),
        cmocka_unit_test(test_provider_import_public_only),
        cmocka_unit_test(test_provider_sign_error_names_key_and_cause),
        cmocka_unit_test(test_provider_rsa_without_pss_explains_tls13),
        cmocka_unit_test(test_provider_store_unknown_uri_names_it),
        cmocka_unit_test(test_provider_store_expect_pubkey_gives_spki),
        cmocka_unit_test(test_provider_digest_sign_init_does_not_call_agent),
        cmocka_unit_test(test_provider_tls12_client_auth),
        cmocka_unit_test(test_provider_tls13_client_auth),
        cmocka_unit_test(test_provider_reconnects_after_agent_restart),
        cmocka_unit_test(test_provider_waits_for_restarting_agent),
        cmocka_unit_test(test_provider_gives_up_on_agent_that_stays_away),
        cmocka_unit_test(test_provider_fork_child_gets_own_connection),
        cmocka_unit_test(test_provider_threads_share_key_and_connection_pool),
        cmocka_unit_test(test_provider_max_connections_caps_the_pool),
        cmocka_unit_test(test_provider_pool_shares_when_agent_refuses),
        cmocka_unit_test(test_provider_pool_shares_when_connect_fails),
        cmocka_unit_test(test_provider_decoder_reads_ref_files),
        cmocka_unit_test(test_provider_decoder_file_store_one_lookup),
        cmocka_unit_test(test_provider_decoder_cert_then_ref),
        cmocka_unit_test(test_provider_decoder_bad_files_fail_cleanly),
        cmocka_unit_test(test_provider_decoder_refuses_pin_in_uri),
        cmocka_unit_test(test_provider_decoder_no_agent_call_without_ref),
        cmocka_unit_test(test_provider_decoders_stay_out_of_public_key_decodes),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
