/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Token layer tests against a fresh SoftHSM token made for this run:
 * discovery before and after login, URIs, login errors, signatures for every
 * algorithm verified with OpenSSL, error mapping, ECDSA DER conversion.
 *
 * SOFTHSM_MODULE names libsofthsm2.so (set by pkcs11/meson.build). The
 * token-based tests run in order: scan before login, wrong PIN, login, ...
 */
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "tok-internal.h"
#include "tok.h"

#define SO_PIN "so-pin-4321"
#define USER_PIN "user-1234"
#define TOKEN_LABEL "p11agent-test"

typedef struct fixture {
    char dir[64];
    const char *module;
    tok_ctx_t *ctx;
} fixture_t;

static fixture_t fx;

/* ---------------------------------------------------------------- setup */

static void pad(CK_UTF8CHAR *dst, size_t n, const char *s)
{
    memset(dst, ' ', n);
    memcpy(dst, s, strlen(s));
}

static const uint8_t oid_p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
static const uint8_t oid_p384[] = { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22 };
static const uint8_t oid_ed25519[] = { 0x06, 0x03, 0x2b, 0x65, 0x70 };
static const uint8_t oid_ed448[] = { 0x06, 0x03, 0x2b, 0x65, 0x71 };

static CK_OBJECT_HANDLE gen_pair(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, CK_MECHANISM_TYPE mech,
                                 const uint8_t *params, size_t params_len, uint8_t id,
                                 const char *label)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG bits = 2048;
    CK_BYTE e[] = { 1, 0, 1 };
    CK_MECHANISM m = { mech, NULL, 0 };
    CK_OBJECT_HANDLE pub, priv;
    CK_ATTRIBUTE pt[8] = {
        { CKA_TOKEN, &yes, 1 },
        { CKA_VERIFY, &yes, 1 },
        { CKA_ID, &id, 1 },
        { CKA_LABEL, (void *)label, strlen(label) },
    };
    CK_ATTRIBUTE kt[] = {
        { CKA_TOKEN, &yes, 1 },     { CKA_PRIVATE, &yes, 1 },
        { CKA_SENSITIVE, &yes, 1 }, { CKA_EXTRACTABLE, &no, 1 },
        { CKA_SIGN, &yes, 1 },      { CKA_ID, &id, 1 },
        { CKA_LABEL, (void *)label, strlen(label) },
    };
    CK_ULONG np = 4;

    if (mech == CKM_RSA_PKCS_KEY_PAIR_GEN) {
        pt[np++] = (CK_ATTRIBUTE){ CKA_MODULUS_BITS, &bits, sizeof(bits) };
        pt[np++] = (CK_ATTRIBUTE){ CKA_PUBLIC_EXPONENT, e, sizeof(e) };
    } else {
        pt[np++] = (CK_ATTRIBUTE){ CKA_EC_PARAMS, (void *)params, params_len };
    }
    assert_int_equal(f->C_GenerateKeyPair(s, &m, pt, np, kt, sizeof(kt) / sizeof(kt[0]), &pub,
                                          &priv),
                     CKR_OK);
    return pub;
}

/* Stores an X.509 certificate (CKA_ID id) for the EC public key object pub,
 * issued by a throwaway software CA; optionally deletes the public key
 * object so that only the certificate tells the public key before login. */
static void add_ec_cert(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub,
                        const char *group, uint8_t id, const char *label, bool drop_pub)
{
    uint8_t point[200];
    CK_ATTRIBUTE a = { CKA_EC_POINT, point, sizeof(point) };
    OSSL_PARAM params[3];
    EVP_PKEY_CTX *pctx;
    EVP_PKEY *pk = NULL, *ca;
    X509 *x = X509_new();
    unsigned char *der = NULL, *subj = NULL;
    int der_len, subj_len;
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE ct = CKC_X_509;
    CK_BBOOL yes = CK_TRUE;
    CK_OBJECT_HANDLE h;

    assert_int_equal(f->C_GetAttributeValue(s, pub, &a, 1), CKR_OK);
    assert_int_equal(point[0], 0x04); /* DER OCTET STRING around the point */
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)group, 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point + 2, point[1]);
    params[2] = OSSL_PARAM_construct_end();
    pctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    assert_int_equal(EVP_PKEY_fromdata_init(pctx), 1);
    assert_int_equal(EVP_PKEY_fromdata(pctx, &pk, EVP_PKEY_PUBLIC_KEY, params), 1);
    ca = EVP_EC_gen("prime256v1");
    assert_non_null(ca);
    assert_int_equal(X509_set_version(x, X509_VERSION_3), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), id), 1);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)label, -1, -1, 0);
    X509_NAME_add_entry_by_txt(X509_get_issuer_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)"test CA", -1, -1, 0);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    assert_int_equal(X509_set_pubkey(x, pk), 1);
    assert_true(X509_sign(x, ca, EVP_sha256()) > 0);
    der_len = i2d_X509(x, &der);
    assert_true(der_len > 0);
    subj_len = i2d_X509_NAME(X509_get_subject_name(x), &subj);
    assert_true(subj_len > 0);
    {
        CK_ATTRIBUTE t[] = {
            { CKA_CLASS, &cls, sizeof(cls) },
            { CKA_CERTIFICATE_TYPE, &ct, sizeof(ct) },
            { CKA_TOKEN, &yes, 1 },
            { CKA_ID, &id, 1 },
            { CKA_LABEL, (void *)label, strlen(label) },
            { CKA_VALUE, der, (CK_ULONG)der_len },
            { CKA_SUBJECT, subj, (CK_ULONG)subj_len },
        };
        assert_int_equal(f->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]), &h), CKR_OK);
    }
    if (drop_pub)
        assert_int_equal(f->C_DestroyObject(s, pub), CKR_OK);
    OPENSSL_free(der);
    OPENSSL_free(subj);
    X509_free(x);
    EVP_PKEY_free(ca);
    EVP_PKEY_free(pk);
    EVP_PKEY_CTX_free(pctx);
}

static CK_SLOT_ID find_slot(CK_FUNCTION_LIST *f, bool initialized)
{
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16;
    CK_TOKEN_INFO ti;
    CK_UTF8CHAR want[32];

    pad(want, sizeof(want), TOKEN_LABEL);
    assert_int_equal(f->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
    for (CK_ULONG i = 0; i < n; i++) {
        assert_int_equal(f->C_GetTokenInfo(slots[i], &ti), CKR_OK);
        if (!initialized && !(ti.flags & CKF_TOKEN_INITIALIZED))
            return slots[i];
        if (initialized && (ti.flags & CKF_TOKEN_INITIALIZED) &&
            memcmp(ti.label, want, sizeof(want)) == 0)
            return slots[i];
    }
    fail_msg("no %s slot", initialized ? "initialised" : "free");
    return 0;
}

static void provision_token(const char *module)
{
    CK_FUNCTION_LIST *f = p11_kit_module_load(module, 0);
    CK_UTF8CHAR label[32];
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE pub;
    CK_SLOT_ID slot;

    assert_non_null(f);
    assert_int_equal(p11_kit_module_initialize(f), CKR_OK);
    slot = find_slot(f, false);
    pad(label, sizeof(label), TOKEN_LABEL);
    assert_int_equal(f->C_InitToken(slot, (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN), label), CKR_OK);
    slot = find_slot(f, true);
    assert_int_equal(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s),
                     CKR_OK);
    assert_int_equal(f->C_Login(s, CKU_SO, (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN)), CKR_OK);
    assert_int_equal(f->C_InitPIN(s, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN)), CKR_OK);
    assert_int_equal(f->C_Logout(s), CKR_OK);
    assert_int_equal(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN)), CKR_OK);
    gen_pair(f, s, CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0, 1, "rsa");
    pub = gen_pair(f, s, CKM_EC_KEY_PAIR_GEN, oid_p256, sizeof(oid_p256), 2, "p256");
    add_ec_cert(f, s, pub, "prime256v1", 2, "p256-cert", false);
    pub = gen_pair(f, s, CKM_EC_KEY_PAIR_GEN, oid_p384, sizeof(oid_p384), 3, "p384");
    add_ec_cert(f, s, pub, "secp384r1", 3, "p384", true);
    gen_pair(f, s, CKM_EC_EDWARDS_KEY_PAIR_GEN, oid_ed25519, sizeof(oid_ed25519), 4, "ed25519");
    gen_pair(f, s, CKM_EC_EDWARDS_KEY_PAIR_GEN, oid_ed448, sizeof(oid_ed448), 5, "ed448");
    assert_int_equal(f->C_Logout(s), CKR_OK);
    assert_int_equal(f->C_CloseSession(s), CKR_OK);
    assert_int_equal(p11_kit_module_finalize(f), CKR_OK);
    p11_kit_module_release(f);
}

static int group_setup(void **state)
{
    char path[128];
    FILE *fp;
    char *err = NULL;

    fx.module = getenv("SOFTHSM_MODULE");
    if (fx.module == NULL || access(fx.module, R_OK) != 0) {
        fprintf(stderr, "SOFTHSM_MODULE not set or not readable\n");
        return -1;
    }
    strcpy(fx.dir, "/tmp/p11agent-test-pkcs11-XXXXXX");
    if (mkdtemp(fx.dir) == NULL)
        return -1;
    snprintf(path, sizeof(path), "%s/tokens", fx.dir);
    if (mkdir(path, 0700) != 0)
        return -1;
    snprintf(path, sizeof(path), "%s/softhsm2.conf", fx.dir);
    fp = fopen(path, "w");
    if (fp == NULL)
        return -1;
    fprintf(fp, "directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
            fx.dir);
    fclose(fp);
    setenv("SOFTHSM2_CONF", path, 1);
    provision_token(fx.module);
    if (tok_ctx_new(&fx.module, 1, &fx.ctx, &err) != TOK_OK) {
        fprintf(stderr, "tok_ctx_new: %s\n", err ? err : "?");
        free(err);
        return -1;
    }
    *state = &fx;
    return 0;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(p);
}

static int group_teardown(void **state)
{
    tok_ctx_free(fx.ctx);
    fx.ctx = NULL;
    if (fx.dir[0] != '\0')
        nftw(fx.dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* -------------------------------------------------------------- helpers */

static const tok_key_t *key_by_label(const char *label)
{
    for (size_t i = 0; i < tok_ctx_n_keys(fx.ctx); i++) {
        const tok_key_t *k = tok_ctx_key(fx.ctx, i);

        if (strcmp(k->label, label) == 0)
            return k;
    }
    fail_msg("no key '%s'", label);
    return NULL;
}

static tok_token_t *test_token(void)
{
    assert_int_equal(tok_ctx_n_tokens(fx.ctx), 1);
    return tok_ctx_token(fx.ctx, 0);
}

static void ensure_login(void)
{
    if (!tok_token_logged_in(test_token()))
        assert_int_equal(tok_token_login(test_token(), USER_PIN, strlen(USER_PIN)), TOK_OK);
}

static EVP_PKEY *key_pkey(const tok_key_t *k)
{
    const unsigned char *p = k->spki;
    EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)k->spki_len);

    assert_non_null(pk);
    return pk;
}

static const EVP_MD *md_of(tok_hash_t h)
{
    switch (h) {
    case TOK_HASH_SHA1: return EVP_sha1();
    case TOK_HASH_SHA224: return EVP_sha224();
    case TOK_HASH_SHA256: return EVP_sha256();
    case TOK_HASH_SHA384: return EVP_sha384();
    case TOK_HASH_SHA512: return EVP_sha512();
    default: return NULL;
    }
}

/* 1 if sig verifies over tbs (a digest, or the message for EdDSA). */
static int verify(const tok_key_t *k, const tok_sign_params_t *p, const uint8_t *tbs, size_t tbs_len,
                  const uint8_t *sig, size_t sig_len)
{
    EVP_PKEY *pk = key_pkey(k);
    EVP_PKEY_CTX *pctx = NULL;
    EVP_MD_CTX *mctx = NULL;
    int ok = 0;

    if (p->alg == TOK_SIG_EDDSA) {
        mctx = EVP_MD_CTX_new();
        assert_non_null(mctx);
        assert_int_equal(EVP_DigestVerifyInit(mctx, NULL, NULL, NULL, pk), 1);
        ok = EVP_DigestVerify(mctx, sig, sig_len, tbs, tbs_len) == 1;
        goto out;
    }
    pctx = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
    assert_non_null(pctx);
    assert_int_equal(EVP_PKEY_verify_init(pctx), 1);
    if (p->alg == TOK_SIG_RSA_PKCS1 || p->alg == TOK_SIG_RSA_PSS)
        assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, p->alg == TOK_SIG_RSA_PSS
                                                                ? RSA_PKCS1_PSS_PADDING
                                                                : RSA_PKCS1_PADDING),
                         1);
    if (md_of(p->hash) != NULL)
        assert_int_equal(EVP_PKEY_CTX_set_signature_md(pctx, md_of(p->hash)), 1);
    if (p->alg == TOK_SIG_RSA_PSS) {
        assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, (int)p->salt_len), 1);
        assert_int_equal(EVP_PKEY_CTX_set_rsa_mgf1_md(
                             pctx, md_of(p->mgf1_hash ? p->mgf1_hash : p->hash)),
                         1);
    }
    ok = EVP_PKEY_verify(pctx, sig, sig_len, tbs, tbs_len) == 1;
out:
    EVP_MD_CTX_free(mctx);
    EVP_PKEY_CTX_free(pctx);
    EVP_PKEY_free(pk);
    return ok;
}

/* Signs tbs with the key, checks the signature verifies and that a
 * corrupted one does not. */
static void sign_and_verify(const char *label, tok_sign_params_t p, size_t tbs_len)
{
    const tok_key_t *k;
    uint8_t tbs[256], *sig = NULL;
    size_t sig_len = 0;
    char *err = NULL;
    int r;

    ensure_login();
    k = key_by_label(label);
    assert_true(tbs_len <= sizeof(tbs));
    assert_int_equal(RAND_bytes(tbs, (int)tbs_len), 1);
    r = tok_sign(k, &p, tbs, tbs_len, &sig, &sig_len, &err);
    if (r != TOK_OK)
        fail_msg("tok_sign(%s): %s: %s", label, tok_strerror(r), err ? err : "");
    assert_non_null(sig);
    assert_true(sig_len > 0);
    assert_int_equal(verify(k, &p, tbs, tbs_len, sig, sig_len), 1);
    sig[sig_len / 2] ^= 0x01;
    assert_int_equal(verify(k, &p, tbs, tbs_len, sig, sig_len), 0);
    free(sig);
    free(err);
}

/* ------------------------------------------------------ pure functions */

static void test_pkcs11_rv_mapping(void **state)
{
    assert_int_equal(tok_status_from_rv(CKR_OK), TOK_OK);
    assert_int_equal(tok_status_from_rv(CKR_USER_ALREADY_LOGGED_IN), TOK_OK);
    assert_int_equal(tok_status_from_rv(CKR_HOST_MEMORY), TOK_ERR_NO_MEMORY);
    assert_int_equal(tok_status_from_rv(CKR_DATA_LEN_RANGE), TOK_ERR_ARGS);
    assert_int_equal(tok_status_from_rv(CKR_ARGUMENTS_BAD), TOK_ERR_ARGS);
    assert_int_equal(tok_status_from_rv(CKR_KEY_HANDLE_INVALID), TOK_ERR_NO_KEY);
    assert_int_equal(tok_status_from_rv(CKR_OBJECT_HANDLE_INVALID), TOK_ERR_NO_KEY);
    assert_int_equal(tok_status_from_rv(CKR_USER_NOT_LOGGED_IN), TOK_ERR_NOT_LOGGED_IN);
    assert_int_equal(tok_status_from_rv(CKR_PIN_INCORRECT), TOK_ERR_PIN_INCORRECT);
    assert_int_equal(tok_status_from_rv(CKR_PIN_INVALID), TOK_ERR_PIN_INCORRECT);
    assert_int_equal(tok_status_from_rv(CKR_PIN_LEN_RANGE), TOK_ERR_PIN_INCORRECT);
    assert_int_equal(tok_status_from_rv(CKR_PIN_LOCKED), TOK_ERR_PIN_LOCKED);
    assert_int_equal(tok_status_from_rv(CKR_TOKEN_NOT_PRESENT), TOK_ERR_TOKEN_REMOVED);
    assert_int_equal(tok_status_from_rv(CKR_DEVICE_REMOVED), TOK_ERR_TOKEN_REMOVED);
    assert_int_equal(tok_status_from_rv(CKR_SESSION_HANDLE_INVALID), TOK_ERR_TOKEN_REMOVED);
    assert_int_equal(tok_status_from_rv(CKR_SESSION_CLOSED), TOK_ERR_TOKEN_REMOVED);
    assert_int_equal(tok_status_from_rv(CKR_MECHANISM_INVALID), TOK_ERR_MECHANISM);
    assert_int_equal(tok_status_from_rv(CKR_KEY_TYPE_INCONSISTENT), TOK_ERR_MECHANISM);
    assert_int_equal(tok_status_from_rv(CKR_KEY_FUNCTION_NOT_PERMITTED), TOK_ERR_MECHANISM);
    assert_int_equal(tok_status_from_rv(CKR_DEVICE_ERROR), TOK_ERR_DEVICE);
    assert_int_equal(tok_status_from_rv(CKR_DEVICE_MEMORY), TOK_ERR_DEVICE);
    assert_int_equal(tok_status_from_rv(CKR_FUNCTION_FAILED), TOK_ERR_DEVICE);
    assert_int_equal(tok_status_from_rv(CKR_CRYPTOKI_NOT_INITIALIZED), TOK_ERR_MODULE);
    assert_int_equal(tok_status_from_rv(CKR_SESSION_COUNT), TOK_ERR_BUSY);
    assert_int_equal(tok_status_from_rv(0x7fffff01UL), TOK_ERR_GENERAL);
    assert_string_equal(tok_strerror(TOK_ERR_PIN_INCORRECT), "PIN incorrect");
    assert_string_equal(tok_strerror(TOK_ERR_TOKEN_REMOVED), "token removed");
    assert_string_equal(tok_strerror(12345), "unknown error");
}

static void test_pkcs11_hash_helpers(void **state)
{
    static const tok_hash_t hs[] = { TOK_HASH_SHA1, TOK_HASH_SHA224, TOK_HASH_SHA256,
                                     TOK_HASH_SHA384, TOK_HASH_SHA512 };

    assert_int_equal(tok_hash_from_name("sha256"), TOK_HASH_SHA256);
    assert_int_equal(tok_hash_from_name("SHA2-384"), TOK_HASH_SHA384);
    assert_int_equal(tok_hash_from_name(""), TOK_HASH_NONE);
    assert_int_equal(tok_hash_from_name(NULL), TOK_HASH_NONE);
    assert_int_equal(tok_hash_from_name("md5"), -1);
    assert_null(tok_digest_info_prefix(TOK_HASH_NONE, NULL));
    /* Each prefix + digest must be the DigestInfo OpenSSL itself encodes. */
    for (size_t i = 0; i < sizeof(hs) / sizeof(hs[0]); i++) {
        const EVP_MD *md = md_of(hs[i]);
        uint8_t digest[64] = { 0x5a }, *der = NULL;
        size_t plen = 0;
        const uint8_t *prefix = tok_digest_info_prefix(hs[i], &plen);
        X509_SIG *sig = X509_SIG_new();
        X509_ALGOR *alg;
        ASN1_OCTET_STRING *os;
        int der_len;

        assert_non_null(prefix);
        assert_int_equal(tok_hash_len(hs[i]), (size_t)EVP_MD_get_size(md));
        X509_SIG_getm(sig, &alg, &os);
        assert_int_equal(X509_ALGOR_set0(alg, OBJ_nid2obj(EVP_MD_get_type(md)), V_ASN1_NULL, NULL), 1);
        assert_int_equal(ASN1_OCTET_STRING_set(os, digest, EVP_MD_get_size(md)), 1);
        der_len = i2d_X509_SIG(sig, &der);
        assert_int_equal((size_t)der_len, plen + tok_hash_len(hs[i]));
        assert_memory_equal(der, prefix, plen);
        OPENSSL_free(der);
        X509_SIG_free(sig);
    }
}

/* Converts raw r||s and checks OpenSSL parses the DER back to r and s. */
static void check_ecdsa_der(const uint8_t *raw, size_t raw_len)
{
    uint8_t *der = NULL;
    size_t der_len = 0;
    const unsigned char *p;
    const BIGNUM *r, *s;
    BIGNUM *wr, *ws;
    ECDSA_SIG *sig;
    unsigned char *re = NULL;
    int re_len;

    assert_int_equal(tok_ecdsa_raw_to_der(raw, raw_len, &der, &der_len), TOK_OK);
    p = der;
    sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    assert_non_null(sig);
    assert_ptr_equal(p, der + der_len);
    ECDSA_SIG_get0(sig, &r, &s);
    wr = BN_bin2bn(raw, (int)raw_len / 2, NULL);
    ws = BN_bin2bn(raw + raw_len / 2, (int)raw_len / 2, NULL);
    assert_int_equal(BN_cmp(r, wr), 0);
    assert_int_equal(BN_cmp(s, ws), 0);
    /* strict DER: OpenSSL re-encodes to the same bytes */
    re_len = i2d_ECDSA_SIG(sig, &re);
    assert_int_equal((size_t)re_len, der_len);
    assert_memory_equal(re, der, der_len);
    OPENSSL_free(re);
    BN_free(wr);
    BN_free(ws);
    ECDSA_SIG_free(sig);
    free(der);
}

static void test_pkcs11_ecdsa_raw_to_der(void **state)
{
    uint8_t raw[132], *der = NULL;
    size_t der_len = 0;

    /* high bit set in both halves: 0x00 pad */
    memset(raw, 0xff, 64);
    check_ecdsa_der(raw, 64);
    assert_int_equal(tok_ecdsa_raw_to_der(raw, 64, &der, &der_len), TOK_OK);
    assert_int_equal(der_len, 2 + 2 * (2 + 33));
    assert_int_equal(der[3], 33);
    assert_int_equal(der[4], 0x00);
    free(der);
    /* leading zeros stripped, then a high bit needing the pad again */
    memset(raw, 0, 64);
    raw[2] = 0x80;
    raw[31] = 1;
    raw[32 + 5] = 0x7f;
    raw[63] = 2;
    check_ecdsa_der(raw, 64);
    /* all-zero halves encode as INTEGER 0 */
    memset(raw, 0, 64);
    check_ecdsa_der(raw, 64);
    assert_int_equal(tok_ecdsa_raw_to_der(raw, 64, &der, &der_len), TOK_OK);
    assert_int_equal(der_len, 8);
    free(der);
    /* P-521: 66-byte halves, SEQUENCE needs the long form length */
    memset(raw, 0, sizeof(raw));
    raw[0] = 0x01;
    memset(raw + 1, 0xa5, 65);
    raw[66] = 0x01;
    memset(raw + 67, 0x5a, 65);
    check_ecdsa_der(raw, 132);
    assert_int_equal(tok_ecdsa_raw_to_der(raw, 132, &der, &der_len), TOK_OK);
    assert_int_equal(der[1], 0x81);
    assert_int_equal(der[2], der_len - 3);
    free(der);
    /* random r||s of every size */
    for (int i = 0; i < 200; i++) {
        size_t n = (i % 3 == 0) ? 64 : (i % 3 == 1) ? 96 : 132;

        assert_int_equal(RAND_bytes(raw, (int)n), 1);
        if (i % 5 == 0)
            memset(raw, 0, 3);
        check_ecdsa_der(raw, n);
    }
    der = NULL;
    assert_int_equal(tok_ecdsa_raw_to_der(raw, 63, &der, &der_len), TOK_ERR_ARGS);
    assert_int_equal(tok_ecdsa_raw_to_der(raw, 0, &der, &der_len), TOK_ERR_ARGS);
    assert_null(der);
}

/* The SPKI builder accepts wrapped and bare EC points and both Edwards
 * parameter spellings (compared with OpenSSL's own encoding). */
static void check_pub_from_ec(EVP_PKEY *pk, CK_KEY_TYPE kt, const uint8_t *params,
                              size_t params_len, tok_key_type_t type, unsigned bits, const char *group)
{
    uint8_t point[200], wrapped[204];
    size_t plen = 0, wlen;
    unsigned char *spki = NULL;
    int spki_len = i2d_PUBKEY(pk, &spki);
    tok_pub_t pub = { 0 };

    if (kt == CKK_EC)
        assert_int_equal(EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_PUB_KEY, point,
                                                         sizeof(point), &plen),
                         1);
    else if ((plen = sizeof(point)) > 0)
        assert_int_equal(EVP_PKEY_get_raw_public_key(pk, point, &plen), 1);
    wrapped[0] = 0x04;
    if (plen < 128) {
        wrapped[1] = (uint8_t)plen;
        wlen = 2;
    } else {
        wrapped[1] = 0x81;
        wrapped[2] = (uint8_t)plen;
        wlen = 3;
    }
    memcpy(wrapped + wlen, point, plen);
    wlen += plen;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tok_pub_from_ec(kt, params, params_len, i ? point : wrapped,
                                         i ? plen : wlen, &pub),
                         TOK_OK);
        assert_int_equal(pub.type, type);
        assert_int_equal(pub.bits, bits);
        assert_string_equal(pub.group, group);
        assert_int_equal(pub.spki_len, (size_t)spki_len);
        assert_memory_equal(pub.spki, spki, pub.spki_len);
        tok_pub_clear(&pub);
    }
    OPENSSL_free(spki);
}

static void test_pkcs11_spki_from_ec_attributes(void **state)
{
    static const uint8_t oid_p521[] = { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23 };
    static const uint8_t str_ed25519[] = { 0x13, 0x0c, 'e', 'd', 'w', 'a', 'r', 'd',
                                           's', '2', '5', '5', '1', '9' };
    static const uint8_t str_ed448[] = { 0x13, 0x0a, 'e', 'd', 'w', 'a', 'r', 'd', 's', '4', '4', '8' };
    EVP_PKEY *pk;
    tok_pub_t pub = { 0 };

    pk = EVP_EC_gen("prime256v1");
    check_pub_from_ec(pk, CKK_EC, oid_p256, sizeof(oid_p256), TOK_KEY_EC, 256, "prime256v1");
    EVP_PKEY_free(pk);
    pk = EVP_EC_gen("secp384r1");
    check_pub_from_ec(pk, CKK_EC, oid_p384, sizeof(oid_p384), TOK_KEY_EC, 384, "secp384r1");
    EVP_PKEY_free(pk);
    pk = EVP_EC_gen("secp521r1");
    check_pub_from_ec(pk, CKK_EC, oid_p521, sizeof(oid_p521), TOK_KEY_EC, 521, "secp521r1");
    EVP_PKEY_free(pk);
    pk = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    check_pub_from_ec(pk, CKK_EC_EDWARDS, oid_ed25519, sizeof(oid_ed25519), TOK_KEY_ED25519, 255, "");
    check_pub_from_ec(pk, CKK_EC_EDWARDS, str_ed25519, sizeof(str_ed25519), TOK_KEY_ED25519, 255, "");
    EVP_PKEY_free(pk);
    pk = EVP_PKEY_Q_keygen(NULL, NULL, "ED448");
    check_pub_from_ec(pk, CKK_EC_EDWARDS, oid_ed448, sizeof(oid_ed448), TOK_KEY_ED448, 448, "");
    check_pub_from_ec(pk, CKK_EC_EDWARDS, str_ed448, sizeof(str_ed448), TOK_KEY_ED448, 448, "");
    EVP_PKEY_free(pk);
    /* a point of the wrong size is refused */
    assert_int_not_equal(tok_pub_from_ec(CKK_EC_EDWARDS, oid_ed25519, sizeof(oid_ed25519),
                                         oid_p256, sizeof(oid_p256), &pub),
                         TOK_OK);
    assert_null(pub.spki);
}

/* ------------------------------------------------------- token-based */

static void test_pkcs11_ctx_new_bad_module(void **state)
{
    const char *bad = "/nonexistent/libnothing.so";
    tok_ctx_t *ctx = NULL;
    char *err = NULL;

    assert_int_equal(tok_ctx_new(&bad, 1, &ctx, &err), TOK_ERR_MODULE);
    assert_null(ctx);
    assert_non_null(err);
    assert_non_null(strstr(err, bad));
    free(err);
}

static void test_pkcs11_scan_before_login(void **state)
{
    static const struct {
        const char *label;
        tok_key_type_t type;
        unsigned bits;
        const char *group;
        unsigned mechs;
    } want[] = {
        { "rsa", TOK_KEY_RSA, 2048, "", TOK_MECH_RSA_PKCS | TOK_MECH_RSA_PSS },
        { "p256", TOK_KEY_EC, 256, "prime256v1", TOK_MECH_ECDSA },
        { "p384", TOK_KEY_EC, 384, "secp384r1", TOK_MECH_ECDSA },
        { "ed25519", TOK_KEY_ED25519, 255, "", TOK_MECH_EDDSA },
        { "ed448", TOK_KEY_ED448, 448, "", TOK_MECH_EDDSA },
    };
    tok_token_t *t;

    assert_int_equal(tok_ctx_scan(fx.ctx), TOK_OK);
    t = test_token();
    assert_string_equal(tok_token_label(t), TOKEN_LABEL);
    assert_non_null(strstr(tok_token_uri(t), "token=" TOKEN_LABEL));
    assert_true(tok_token_login_required(t));
    assert_false(tok_token_has_pin_pad(t));
    assert_false(tok_token_logged_in(t));
    assert_int_equal(tok_ctx_n_keys(fx.ctx), 5);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        const tok_key_t *k = key_by_label(want[i].label);
        EVP_PKEY *pk;

        assert_int_equal(k->type, want[i].type);
        assert_int_equal(k->bits, want[i].bits);
        assert_string_equal(k->group, want[i].group);
        assert_int_equal(k->mechs, want[i].mechs);
        assert_int_equal(k->id_len, 1);
        assert_int_equal(k->id[0], i + 1);
        assert_ptr_equal(k->token, t);
        assert_int_equal(k->handle, 0); /* private key hidden before login */
        if (k->id[0] == 2 || k->id[0] == 3) {
            /* paired with its certificate; P-384 is known only from it */
            const unsigned char *cp = k->cert;
            X509 *x;

            assert_non_null(k->cert);
            x = d2i_X509(NULL, &cp, (long)k->cert_len);
            assert_non_null(x);
            pk = key_pkey(k);
            assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(x), pk), 1);
            EVP_PKEY_free(pk);
            X509_free(x);
        } else {
            assert_null(k->cert);
        }
        assert_non_null(strstr(k->uri, "type=private"));
        assert_int_equal(strncmp(k->uri, "pkcs11:model=", 13), 0);
        assert_ptr_equal(tok_ctx_key(fx.ctx, i), k); /* listed in CKA_ID order */
        pk = key_pkey(k);
        assert_int_equal(EVP_PKEY_get_bits(pk) > 0, 1);
        EVP_PKEY_free(pk);
    }
}

static void test_pkcs11_sign_before_login_needs_login(void **state)
{
    tok_sign_params_t p = { .alg = TOK_SIG_ECDSA, .hash = TOK_HASH_SHA256 };
    uint8_t digest[32] = { 1 }, *sig = NULL;
    size_t sig_len = 0;
    char *err = NULL;

    assert_int_equal(tok_sign(key_by_label("p256"), &p, digest, 32, &sig, &sig_len, &err),
                     TOK_ERR_NOT_LOGGED_IN);
    assert_null(sig);
    free(err);
}

static void test_pkcs11_login_wrong_pin(void **state)
{
    assert_int_equal(tok_token_login(test_token(), "wrong-pin", 9), TOK_ERR_PIN_INCORRECT);
    assert_false(tok_token_logged_in(test_token()));
}

static void test_pkcs11_login(void **state)
{
    assert_int_equal(tok_token_login(test_token(), USER_PIN, strlen(USER_PIN)), TOK_OK);
    assert_true(tok_token_logged_in(test_token()));
    for (size_t i = 0; i < tok_ctx_n_keys(fx.ctx); i++) {
        assert_int_not_equal(tok_ctx_key(fx.ctx, i)->handle, 0);
        assert_int_not_equal(((const tok_key_int_t *)tok_ctx_key(fx.ctx, i))->copy, 0);
    }
    /* a second login is fine (CKR_USER_ALREADY_LOGGED_IN) */
    assert_int_equal(tok_token_login(test_token(), USER_PIN, strlen(USER_PIN)), TOK_OK);
}

static size_t count_matches(const char *uri, int expect_status, const tok_key_t **first)
{
    const tok_key_t **found = NULL;
    size_t n = 99;

    assert_int_equal(tok_find_keys(fx.ctx, uri, &found, &n), expect_status);
    if (expect_status != TOK_OK)
        return 0;
    if (first != NULL)
        *first = n > 0 ? found[0] : NULL;
    free(found);
    return n;
}

static void test_pkcs11_find_keys(void **state)
{
    const tok_key_t *k, *got = NULL;
    char uri[512];

    ensure_login();
    for (size_t i = 0; i < tok_ctx_n_keys(fx.ctx); i++) {
        k = tok_ctx_key(fx.ctx, i);
        assert_int_equal(count_matches(k->uri, TOK_OK, &got), 1);
        assert_ptr_equal(got, k);
    }
    assert_int_equal(count_matches("pkcs11:", TOK_OK, NULL), 5);
    assert_int_equal(count_matches("pkcs11:object=p384", TOK_OK, &got), 1);
    assert_string_equal(got->label, "p384");
    assert_int_equal(count_matches("pkcs11:id=%02", TOK_OK, &got), 1);
    assert_string_equal(got->label, "p256");
    assert_int_equal(count_matches("pkcs11:token=" TOKEN_LABEL, TOK_OK, NULL), 5);
    assert_int_equal(count_matches("pkcs11:token=" TOKEN_LABEL ";object=rsa;type=private", TOK_OK,
                                   &got),
                     1);
    assert_string_equal(got->label, "rsa");
    snprintf(uri, sizeof(uri), "pkcs11:object=ed25519?module-path=%s", fx.module);
    assert_int_equal(count_matches(uri, TOK_OK, NULL), 1);
    assert_int_equal(count_matches("pkcs11:object=ed25519?module-path=/lib/other.so", TOK_OK, NULL),
                     0);
    assert_int_equal(count_matches("pkcs11:object=nosuchkey", TOK_OK, NULL), 0);
    assert_int_equal(count_matches("pkcs11:token=other", TOK_OK, NULL), 0);
    assert_int_equal(count_matches("pkcs11:object=rsa;type=cert", TOK_OK, NULL), 0);
    assert_int_equal(count_matches("pkcs11:library-manufacturer=SoftHSM", TOK_OK, NULL), 5);
    assert_int_equal(count_matches("pkcs11:library-manufacturer=Other", TOK_OK, NULL), 0);
    count_matches("not a uri", TOK_ERR_ARGS, NULL);
    count_matches("pkcs11:id=%zz", TOK_ERR_ARGS, NULL);
}

static void test_pkcs11_find_tokens(void **state)
{
    tok_token_t **found = NULL;
    size_t n = 0;

    assert_int_equal(tok_find_tokens(fx.ctx, tok_token_uri(test_token()), &found, &n), TOK_OK);
    assert_int_equal(n, 1);
    assert_ptr_equal(found[0], test_token());
    free(found);
    assert_int_equal(tok_find_tokens(fx.ctx, "pkcs11:token=nope", &found, &n), TOK_OK);
    assert_int_equal(n, 0);
    free(found);
    assert_int_equal(tok_find_tokens(fx.ctx, "garbage", &found, &n), TOK_ERR_ARGS);
}

static void test_pkcs11_ck_unpad(void **state)
{
    unsigned char f[16];
    unsigned char unset[4] = { 0, 0, 0, 0 };

    /* tpm2-pkcs11's model: blanks inside, NUL padding */
    memcpy(f, "SW   TPM\0\0\0\0\0\0\0\0", 16);
    tok_ck_unpad(f, sizeof(f), false);
    assert_memory_equal(f, "SW   TPM        ", 16);
    /* blank padded already: unchanged */
    tok_ck_unpad(f, sizeof(f), true);
    assert_memory_equal(f, "SW   TPM        ", 16);
    /* an early NUL ends the text; what follows it is padding */
    memcpy(f, "abc\0junk  \0x    ", 16);
    tok_ck_unpad(f, sizeof(f), false);
    assert_memory_equal(f, "abc             ", 16);
    /* the whole field is text: nothing to do */
    memcpy(f, "0123456789abcdef", 16);
    tok_ck_unpad(f, sizeof(f), false);
    assert_memory_equal(f, "0123456789abcdef", 16);
    /* a URI field starting with NUL is "not given": left alone */
    tok_ck_unpad(unset, sizeof(unset), false);
    assert_memory_equal(unset, "\0\0\0\0", 4);
    /* a module's empty field is an empty string */
    tok_ck_unpad(unset, sizeof(unset), true);
    assert_memory_equal(unset, "    ", 4);
    tok_ck_unpad(NULL, 4, true);
    tok_ck_unpad(f, 0, true);
}

static size_t count_tokens(const char *uri)
{
    tok_token_t **found = NULL;
    size_t n = 99;

    assert_int_equal(tok_find_tokens(fx.ctx, uri, &found, &n), TOK_OK);
    free(found);
    return n;
}

/* A token whose model, label and serial are NUL padded (as tpm2-pkcs11's
 * model is): its canonical URIs carry no %00, and both the new URIs and
 * the old ones with %00 select it. */
static void test_pkcs11_uri_nul_padding(void **state)
{
    tok_token_t *t = test_token();
    CK_TOKEN_INFO saved, nul;
    tok_key_t k = { .id = (uint8_t *)"\x02", .id_len = 1, .label = (char *)"p256" };
    char *uri;

    pthread_mutex_lock(&t->lock);
    saved = t->info;
    nul = t->info;
    memset(nul.model, 0, sizeof(nul.model));
    memcpy(nul.model, "SW   TPM", 8);
    memset(nul.label, 0, sizeof(nul.label));
    memcpy(nul.label, TOKEN_LABEL, strlen(TOKEN_LABEL));
    memset(nul.serialNumber, 0, sizeof(nul.serialNumber));
    memcpy(nul.serialNumber, "0000", 4);
    t->info = nul;
    pthread_mutex_unlock(&t->lock);

    uri = tok_uri_for_token(&nul);
    assert_non_null(uri);
    assert_null(strstr(uri, "%00"));
    assert_non_null(strstr(uri, "model=SW%20%20%20TPM;"));
    assert_non_null(strstr(uri, "serial=0000;"));
    assert_non_null(strstr(uri, "token=" TOKEN_LABEL));
    assert_int_equal(count_tokens(uri), 1);
    free(uri);
    uri = tok_uri_for_key(&nul, &k);
    assert_non_null(uri);
    assert_null(strstr(uri, "%00"));
    assert_non_null(strstr(uri, "model=SW%20%20%20TPM;"));
    free(uri);

    assert_int_equal(count_tokens("pkcs11:model=SW%20%20%20TPM"), 1);
    assert_int_equal(count_tokens("pkcs11:model=SW%20%20%20TPM%00%00%00%00%00%00%00%00"), 1);
    assert_int_equal(count_tokens("pkcs11:model=SW%20%20%20TPM%00%00"), 1);
    assert_int_equal(count_tokens("pkcs11:model=SW%20%20%20TPM%20%20"), 1);
    assert_int_equal(count_tokens("pkcs11:model=SW;token=" TOKEN_LABEL), 0);
    assert_int_equal(count_tokens("pkcs11:model=SW%20%20%20TPMX"), 0);
    assert_int_equal(count_tokens("pkcs11:serial=0000%00%00%00%00%00%00%00%00%00%00%00%00"), 1);
    assert_int_equal(count_tokens("pkcs11:serial=0000"), 1);
    assert_int_equal(count_tokens("pkcs11:serial=00000"), 0);
    assert_int_equal(count_tokens("pkcs11:token=" TOKEN_LABEL "%00"), 1);
    /* keys: the key's own URI (made at scan time from the blank-padded info)
     * and its old form with %00 */
    assert_int_equal(
        count_matches("pkcs11:model=SW%20%20%20TPM%00%00%00%00%00%00%00%00;object=p256", TOK_OK, NULL),
        1);
    /* the same URIs with a blank-padded token (SoftHSM's own info) */
    pthread_mutex_lock(&t->lock);
    t->info = saved;
    pthread_mutex_unlock(&t->lock);
    assert_int_equal(count_tokens("pkcs11:model=SW%20%20%20TPM"), 0);
    assert_int_equal(count_tokens("pkcs11:token=" TOKEN_LABEL "%00%00"), 1);
    assert_int_equal(count_tokens("pkcs11:token=" TOKEN_LABEL), 1);
}

static void test_pkcs11_sign_rsa_pkcs1(void **state)
{
    static const tok_hash_t hs[] = { TOK_HASH_SHA1, TOK_HASH_SHA224, TOK_HASH_SHA256,
                                     TOK_HASH_SHA384, TOK_HASH_SHA512 };

    for (size_t i = 0; i < sizeof(hs) / sizeof(hs[0]); i++)
        sign_and_verify("rsa", (tok_sign_params_t){ .alg = TOK_SIG_RSA_PKCS1, .hash = hs[i] },
                        tok_hash_len(hs[i]));
}

static void test_pkcs11_sign_rsa_pkcs1_raw(void **state)
{
    /* hash NONE: the data is signed as is (here a TLS 1.2-style MD5+SHA1 blob) */
    sign_and_verify("rsa", (tok_sign_params_t){ .alg = TOK_SIG_RSA_PKCS1 }, 36);
}

static void test_pkcs11_sign_rsa_pss(void **state)
{
    sign_and_verify("rsa",
                    (tok_sign_params_t){ .alg = TOK_SIG_RSA_PSS, .hash = TOK_HASH_SHA256,
                                         .salt_len = 32 },
                    32);
    sign_and_verify("rsa",
                    (tok_sign_params_t){ .alg = TOK_SIG_RSA_PSS, .hash = TOK_HASH_SHA384,
                                         .mgf1_hash = TOK_HASH_SHA384, .salt_len = 48 },
                    48);
    sign_and_verify("rsa",
                    (tok_sign_params_t){ .alg = TOK_SIG_RSA_PSS, .hash = TOK_HASH_SHA256,
                                         .salt_len = 0 },
                    32);
}

static void test_pkcs11_sign_ecdsa(void **state)
{
    sign_and_verify("p256", (tok_sign_params_t){ .alg = TOK_SIG_ECDSA, .hash = TOK_HASH_SHA256 }, 32);
    sign_and_verify("p384", (tok_sign_params_t){ .alg = TOK_SIG_ECDSA, .hash = TOK_HASH_SHA384 }, 48);
    sign_and_verify("p384", (tok_sign_params_t){ .alg = TOK_SIG_ECDSA, .hash = TOK_HASH_SHA256 }, 32);
}

static void test_pkcs11_sign_eddsa(void **state)
{
    sign_and_verify("ed25519", (tok_sign_params_t){ .alg = TOK_SIG_EDDSA }, 200);
    sign_and_verify("ed25519", (tok_sign_params_t){ .alg = TOK_SIG_EDDSA }, 1);
    sign_and_verify("ed448", (tok_sign_params_t){ .alg = TOK_SIG_EDDSA }, 100);
}

static void test_pkcs11_sign_bad_input(void **state)
{
    uint8_t data[600] = { 0 }, *sig = NULL;
    size_t sig_len = 0;
    char *err = NULL;
    tok_sign_params_t p;

    ensure_login();
    /* digest length must match the hash */
    p = (tok_sign_params_t){ .alg = TOK_SIG_RSA_PKCS1, .hash = TOK_HASH_SHA256 };
    assert_int_equal(tok_sign(key_by_label("rsa"), &p, data, 31, &sig, &sig_len, NULL), TOK_ERR_ARGS);
    p = (tok_sign_params_t){ .alg = TOK_SIG_RSA_PSS, .hash = TOK_HASH_SHA256, .salt_len = 32 };
    assert_int_equal(tok_sign(key_by_label("rsa"), &p, data, 48, &sig, &sig_len, NULL), TOK_ERR_ARGS);
    p = (tok_sign_params_t){ .alg = TOK_SIG_ECDSA, .hash = TOK_HASH_SHA384 };
    assert_int_equal(tok_sign(key_by_label("p384"), &p, data, 32, &sig, &sig_len, NULL), TOK_ERR_ARGS);
    /* raw PKCS#1 input longer than the modulus allows */
    p = (tok_sign_params_t){ .alg = TOK_SIG_RSA_PKCS1 };
    assert_int_equal(tok_sign(key_by_label("rsa"), &p, data, 256, &sig, &sig_len, NULL), TOK_ERR_ARGS);
    /* PSS salt too long for the key */
    p = (tok_sign_params_t){ .alg = TOK_SIG_RSA_PSS, .hash = TOK_HASH_SHA256, .salt_len = 300 };
    assert_int_equal(tok_sign(key_by_label("rsa"), &p, data, 32, &sig, &sig_len, NULL), TOK_ERR_ARGS);
    /* EdDSA takes no hash */
    p = (tok_sign_params_t){ .alg = TOK_SIG_EDDSA, .hash = TOK_HASH_SHA256 };
    assert_int_equal(tok_sign(key_by_label("ed25519"), &p, data, 32, &sig, &sig_len, NULL),
                     TOK_ERR_ARGS);
    /* oversized input */
    p = (tok_sign_params_t){ .alg = TOK_SIG_EDDSA };
    assert_int_equal(tok_sign(key_by_label("ed25519"), &p, data, 2 * 1024 * 1024, &sig, &sig_len,
                              NULL),
                     TOK_ERR_ARGS);
    /* mechanism mismatch: ECDSA with an RSA key, RSA with an EC key */
    p = (tok_sign_params_t){ .alg = TOK_SIG_ECDSA, .hash = TOK_HASH_SHA256 };
    assert_int_equal(tok_sign(key_by_label("rsa"), &p, data, 32, &sig, &sig_len, &err),
                     TOK_ERR_MECHANISM);
    assert_non_null(err);
    free(err);
    err = NULL;
    p = (tok_sign_params_t){ .alg = TOK_SIG_RSA_PSS, .hash = TOK_HASH_SHA256, .salt_len = 32 };
    assert_int_equal(tok_sign(key_by_label("p256"), &p, data, 32, &sig, &sig_len, NULL),
                     TOK_ERR_MECHANISM);
    assert_null(sig);
}

static void test_pkcs11_sign_missing_mechanism_message(void **state)
{
    /* A token without CKM_RSA_PKCS_PSS: same key, PSS bit cleared. */
    tok_key_t k = *key_by_label("rsa");
    tok_sign_params_t p = { .alg = TOK_SIG_RSA_PSS, .hash = TOK_HASH_SHA256, .salt_len = 32 };
    uint8_t digest[32] = { 0 }, *sig = NULL;
    size_t sig_len = 0;
    char *err = NULL;

    k.mechs &= ~TOK_MECH_RSA_PSS;
    assert_int_equal(tok_sign(&k, &p, digest, 32, &sig, &sig_len, &err), TOK_ERR_MECHANISM);
    assert_non_null(err);
    assert_non_null(strstr(err, "token '" TOKEN_LABEL "' has no CKM_RSA_PKCS_PSS for key 'pkcs11:"));
    assert_non_null(strstr(err, "TLS 1.3 with RSA needs RSA-PSS"));
    assert_null(sig);
    free(err);
}

typedef struct thread_arg {
    const tok_key_t *k;
    int failures;
} thread_arg_t;

static void *sign_thread(void *p)
{
    thread_arg_t *a = p;
    tok_sign_params_t sp = { .alg = TOK_SIG_ECDSA, .hash = TOK_HASH_SHA256 };
    uint8_t digest[32];

    for (int i = 0; i < 100; i++) {
        uint8_t *sig = NULL;
        size_t sig_len = 0;

        RAND_bytes(digest, sizeof(digest));
        if (tok_sign(a->k, &sp, digest, sizeof(digest), &sig, &sig_len, NULL) != TOK_OK ||
            !verify(a->k, &sp, digest, sizeof(digest), sig, sig_len))
            a->failures++;
        free(sig);
    }
    return NULL;
}

static void test_pkcs11_sign_threads(void **state)
{
    pthread_t th[6];
    thread_arg_t args[6];

    ensure_login();
    for (int i = 0; i < 6; i++) {
        args[i] = (thread_arg_t){ .k = key_by_label(i % 2 ? "p256" : "p384") };
        assert_int_equal(pthread_create(&th[i], NULL, sign_thread, &args[i]), 0);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    assert_true(test_token()->n_open <= TOK_POOL_MAX_DEFAULT);
}

static void test_pkcs11_rescan_keeps_login(void **state)
{
    ensure_login();
    assert_int_equal(tok_ctx_scan(fx.ctx), TOK_OK);
    assert_true(tok_token_logged_in(test_token()));
    assert_int_equal(tok_ctx_n_keys(fx.ctx), 5);
    /* now found directly as private keys */
    for (size_t i = 0; i < tok_ctx_n_keys(fx.ctx); i++)
        assert_int_not_equal(tok_ctx_key(fx.ctx, i)->handle, 0);
    assert_non_null(key_by_label("p384")->cert);
    assert_non_null(key_by_label("p256")->cert);
    assert_null(key_by_label("rsa")->cert);
    sign_and_verify("p256", (tok_sign_params_t){ .alg = TOK_SIG_ECDSA, .hash = TOK_HASH_SHA256 }, 32);
    assert_int_equal(count_matches(key_by_label("ed448")->uri, TOK_OK, NULL), 1);
}

static void test_pkcs11_logout(void **state)
{
    tok_sign_params_t p = { .alg = TOK_SIG_ECDSA, .hash = TOK_HASH_SHA256 };
    uint8_t digest[32] = { 0 }, *sig = NULL;
    size_t sig_len = 0;

    ensure_login();
    assert_int_equal(tok_token_logout(test_token()), TOK_OK);
    assert_false(tok_token_logged_in(test_token()));
    assert_int_equal(key_by_label("p256")->handle, 0);
    assert_int_equal(((const tok_key_int_t *)key_by_label("p256"))->copy, 0);
    assert_int_equal(tok_sign(key_by_label("p256"), &p, digest, 32, &sig, &sig_len, NULL),
                     TOK_ERR_NOT_LOGGED_IN);
    assert_null(sig);
    sign_and_verify("p256", p, 32); /* logs in again */
}

/* A stale handle (the token lost our login behind our back) is re-found or
 * reported as needing a login, never as a generic error. */
static void test_pkcs11_sign_after_external_logout(void **state)
{
    tok_token_t *t = test_token();
    tok_sign_params_t p = { .alg = TOK_SIG_ECDSA, .hash = TOK_HASH_SHA256 };
    uint8_t digest[32] = { 0 }, *sig = NULL;
    size_t sig_len = 0;
    CK_SESSION_HANDLE s;
    int r;

    ensure_login();
    assert_int_equal(tok_session_get(t, &s), TOK_OK);
    assert_int_equal(t->f->C_Logout(s), CKR_OK);
    tok_session_put(t, s);
    r = tok_sign(key_by_label("p256"), &p, digest, 32, &sig, &sig_len, NULL);
    assert_int_equal(r, TOK_ERR_NOT_LOGGED_IN);
    assert_false(tok_token_logged_in(t));
    sign_and_verify("p256", p, 32);
}

/* Software tokens sign with session copies of the keys; when a copy
 * disappears, the token object is used again. */
static void test_pkcs11_session_copy_fallback(void **state)
{
    const tok_key_int_t *ki;
    tok_token_t *t = test_token();
    CK_SESSION_HANDLE s;
    CK_BBOOL token = CK_TRUE;
    CK_ATTRIBUTE a = { CKA_TOKEN, &token, sizeof(token) };

    ensure_login();
    assert_true(t->use_copies);
    ki = (const tok_key_int_t *)key_by_label("ed25519");
    assert_int_not_equal(ki->copy, 0);
    assert_int_not_equal(ki->copy, ki->k.handle);
    assert_int_equal(tok_session_get(t, &s), TOK_OK);
    assert_int_equal(t->f->C_GetAttributeValue(s, ki->copy, &a, 1), CKR_OK);
    assert_int_equal(token, CK_FALSE);
    assert_int_equal(t->f->C_DestroyObject(s, ki->copy), CKR_OK);
    tok_session_put(t, s);
    sign_and_verify("ed25519", (tok_sign_params_t){ .alg = TOK_SIG_EDDSA }, 50);
    assert_int_equal(ki->copy, 0);
    assert_int_not_equal(ki->k.handle, 0);
    /* a rescan makes copies again and does not list them as keys */
    assert_int_equal(tok_ctx_scan(fx.ctx), TOK_OK);
    assert_int_equal(tok_ctx_n_keys(fx.ctx), 5);
    ki = (const tok_key_int_t *)key_by_label("ed25519");
    assert_int_not_equal(ki->copy, 0);
    sign_and_verify("ed25519", (tok_sign_params_t){ .alg = TOK_SIG_EDDSA }, 50);
}

/* Encrypts in with the token key's public half (software). */
static size_t pub_encrypt(const tok_key_t *k, int pad, const uint8_t *in, size_t inlen,
                          uint8_t *out)
{
    EVP_PKEY *pk = key_pkey(k);
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
    size_t outlen = 512;

    assert_int_equal(EVP_PKEY_encrypt_init(pctx), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, pad), 1);
    assert_int_equal(EVP_PKEY_encrypt(pctx, out, &outlen, in, inlen), 1);
    EVP_PKEY_CTX_free(pctx);
    EVP_PKEY_free(pk);
    return outlen;
}

static void test_pkcs11_decrypt_rsa(void **state)
{
    static const uint8_t secret[48] = "forty-eight bytes, like a TLS premaster secret";
    const tok_key_t *k = key_by_label("rsa");
    uint8_t ct[512], *pt = NULL;
    size_t ctlen, ptlen = 0;
    char *msg = NULL;

    (void)state;
    ensure_login();
    ctlen = pub_encrypt(k, RSA_PKCS1_PADDING, secret, sizeof(secret), ct);
    assert_int_equal(tok_decrypt(k, &(tok_decrypt_params_t){ .alg = TOK_DEC_RSA_PKCS1 }, ct,
                                 ctlen, NULL, &pt, &ptlen, NULL),
                     TOK_OK);
    assert_int_equal(ptlen, sizeof(secret));
    assert_memory_equal(pt, secret, sizeof(secret));
    free(pt);

    /* raw: the whole padded block, modulus-sized */
    assert_int_equal(tok_decrypt(k, &(tok_decrypt_params_t){ .alg = TOK_DEC_RSA_RAW }, ct, ctlen,
                                 NULL, &pt, &ptlen, NULL),
                     TOK_OK);
    assert_int_equal(ptlen, 256);
    assert_int_equal(pt[0], 0);
    assert_int_equal(pt[1], 2);
    assert_memory_equal(pt + 256 - sizeof(secret), secret, sizeof(secret));
    free(pt);

    /* OAEP (SHA-1, the only one SoftHSM has) */
    ctlen = pub_encrypt(k, RSA_PKCS1_OAEP_PADDING, secret, sizeof(secret), ct);
    assert_int_equal(tok_decrypt(k, &(tok_decrypt_params_t){ .alg = TOK_DEC_RSA_OAEP }, ct,
                                 ctlen, NULL, &pt, &ptlen, NULL),
                     TOK_OK);
    assert_int_equal(ptlen, sizeof(secret));
    assert_memory_equal(pt, secret, sizeof(secret));
    free(pt);

    /* an OAEP block read as PKCS#1: the token says it does not decrypt
     * (SoftHSM: CKR_GENERAL_ERROR; others CKR_ENCRYPTED_DATA_INVALID), the
     * error names key and cause, and the login and sessions survive */
    pt = NULL;
    assert_int_equal(tok_decrypt(k, &(tok_decrypt_params_t){ .alg = TOK_DEC_RSA_PKCS1 }, ct,
                                 ctlen, NULL, &pt, &ptlen, &msg),
                     TOK_ERR_DEVICE);
    assert_null(pt);
    assert_non_null(msg);
    assert_non_null(strstr(msg, k->uri));
    assert_non_null(strstr(msg, "CKM_RSA_PKCS"));
    free(msg);
    assert_true(tok_token_logged_in(test_token()));
    ctlen = pub_encrypt(k, RSA_PKCS1_PADDING, secret, sizeof(secret), ct);
    assert_int_equal(tok_decrypt(k, &(tok_decrypt_params_t){ .alg = TOK_DEC_RSA_PKCS1 }, ct,
                                 ctlen, NULL, &pt, &ptlen, NULL),
                     TOK_OK);
    free(pt);
}

static void test_pkcs11_decrypt_bad_input(void **state)
{
    const tok_key_t *rsa = key_by_label("rsa"), *ec = key_by_label("p256");
    uint8_t ct[300] = { 1 }, *pt = NULL;
    size_t ptlen = 0;
    char *msg = NULL;
    tok_decrypt_params_t p = { .alg = TOK_DEC_RSA_PKCS1 };

    (void)state;
    ensure_login();
    /* longer than the modulus, empty, NULL: refused before the token */
    assert_int_equal(tok_decrypt(rsa, &p, ct, 257, NULL, &pt, &ptlen, &msg), TOK_ERR_ARGS);
    assert_non_null(strstr(msg, "does not fit"));
    free(msg);
    assert_int_equal(tok_decrypt(rsa, &p, ct, 0, NULL, &pt, &ptlen, NULL), TOK_ERR_ARGS);
    assert_int_equal(tok_decrypt(rsa, &p, NULL, 10, NULL, &pt, &ptlen, NULL), TOK_ERR_ARGS);
    /* an EC key does not decrypt */
    msg = NULL;
    assert_int_equal(tok_decrypt(ec, &p, ct, 32, NULL, &pt, &ptlen, &msg), TOK_ERR_MECHANISM);
    assert_non_null(strstr(msg, "not an RSA key"));
    free(msg);
    /* unknown algorithm */
    p.alg = 99;
    assert_int_equal(tok_decrypt(rsa, &p, ct, 256, NULL, &pt, &ptlen, NULL), TOK_ERR_ARGS);
    assert_null(pt);
}

int main(void)
{
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_pkcs11_rv_mapping),
        cmocka_unit_test(test_pkcs11_hash_helpers),
        cmocka_unit_test(test_pkcs11_ecdsa_raw_to_der),
        cmocka_unit_test(test_pkcs11_spki_from_ec_attributes),
    };
    const struct CMUnitTest token[] = {
        cmocka_unit_test(test_pkcs11_ctx_new_bad_module),
        cmocka_unit_test(test_pkcs11_scan_before_login),
        cmocka_unit_test(test_pkcs11_sign_before_login_needs_login),
        cmocka_unit_test(test_pkcs11_login_wrong_pin),
        cmocka_unit_test(test_pkcs11_login),
        cmocka_unit_test(test_pkcs11_find_keys),
        cmocka_unit_test(test_pkcs11_find_tokens),
        cmocka_unit_test(test_pkcs11_ck_unpad),
        cmocka_unit_test(test_pkcs11_uri_nul_padding),
        cmocka_unit_test(test_pkcs11_sign_rsa_pkcs1),
        cmocka_unit_test(test_pkcs11_sign_rsa_pkcs1_raw),
        cmocka_unit_test(test_pkcs11_sign_rsa_pss),
        cmocka_unit_test(test_pkcs11_sign_ecdsa),
        cmocka_unit_test(test_pkcs11_sign_eddsa),
        cmocka_unit_test(test_pkcs11_sign_bad_input),
        cmocka_unit_test(test_pkcs11_sign_missing_mechanism_message),
        cmocka_unit_test(test_pkcs11_decrypt_rsa),
        cmocka_unit_test(test_pkcs11_decrypt_bad_input),
        cmocka_unit_test(test_pkcs11_sign_threads),
        cmocka_unit_test(test_pkcs11_rescan_keeps_login),
        cmocka_unit_test(test_pkcs11_session_copy_fallback),
        cmocka_unit_test(test_pkcs11_logout),
        cmocka_unit_test(test_pkcs11_sign_after_external_logout),
    };
    int failed = 0;

    failed += cmocka_run_group_tests_name("pkcs11-pure", pure, NULL, NULL);
    failed += cmocka_run_group_tests_name("pkcs11-softhsm", token, group_setup, group_teardown);
    return failed != 0;
}
