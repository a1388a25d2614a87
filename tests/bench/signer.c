/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The signing methods compared by the benchmark, behind one interface:
 *
 * - agent: p11agent.so loaded into its own OSSL_LIB_CTX (with "default"
 *   next to it), the key loaded through OSSL_STORE by pkcs11: URI, and
 *   EVP_DigestSign per signature. The default library context is left alone.
 * - direct: the PKCS#11 module dlopen()ed in this process, C_Initialize
 *   with CKF_OS_LOCKING_OK, one session per thread, C_SignInit + C_Sign with
 *   the mechanisms the agent uses (CKM_RSA_PKCS over a DigestInfo,
 *   CKM_RSA_PKCS_PSS, CKM_ECDSA over the digest, CKM_EDDSA over the
 *   message), on the token object or on a session copy (C_CopyObject,
 *   CKA_TOKEN false: SoftHSM then stops re-reading the key file).
 * - p11kit: the same code with p11-kit-client.so, which forwards every call
 *   to a `p11-kit server` ($P11_KIT_SERVER_ADDRESS).
 * - agent-bus (p11bench only, P11BENCH_BUS): the agent's Sign method called
 *   with dbus/ (bus_client_sign) on one private connection per thread, the
 *   digest computed here: what the agent and the transport cost without the
 *   provider and EVP around them.
 *
 * The digest is computed inside the timed call for every method.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/store.h>

#include "bench.h"
#ifdef P11BENCH_BUS
#include "bus.h"
#endif

struct signer {
    bench_method_t method;
    bench_alg_t alg;
    EVP_PKEY *pub;          /* pub/<label>.pem, default libctx */
    /* agent */
    OSSL_LIB_CTX *libctx;
    EVP_PKEY *key;
    /* PKCS#11 */
    void *dl;
    CK_FUNCTION_LIST *f;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE setup; /* logged in; owns the session copy */
    CK_OBJECT_HANDLE obj;    /* token object or its session copy */
    bool initialized;
    /* agent-bus */
    char *uri;
};

struct signer_thr {
    signer_t *s;
    EVP_MD_CTX *md;
    CK_SESSION_HANDLE session;
    bool own_session;
#ifdef P11BENCH_BUS
    DBusConnection *conn;
#endif
};

static char *ossl_err(const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "";

    if (e != 0)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return bench_strdupf("%s%s%s", what, buf[0] ? ": " : "", buf);
}

static EVP_PKEY *load_pub(const bench_cfg_t *cfg, bench_alg_t a, char **err)
{
    char *path = bench_strdupf("%s/pub/%s.pem", cfg->dir, bench_alg_label(a));
    FILE *f = path ? fopen(path, "r") : NULL;
    EVP_PKEY *pk = NULL;

    if (f != NULL) {
        pk = PEM_read_PUBKEY(f, NULL, NULL, NULL);
        fclose(f);
    }
    if (pk == NULL)
        *err = bench_strdupf("cannot read public key %s", path ? path : "?");
    free(path);
    return pk;
}

/* --- agent -------------------------------------------------------------- */

static int agent_open(const bench_cfg_t *cfg, signer_t *s, char **err)
{
    char *dir = strdup(cfg->provider_so), *slash, *uri = NULL;
    OSSL_STORE_CTX *st = NULL;
    int r = -1;

    if (dir == NULL)
        return -1;
    slash = strrchr(dir, '/');
    if (slash != NULL)
        *slash = '\0';
    s->libctx = OSSL_LIB_CTX_new();
    if (s->libctx == NULL || OSSL_PROVIDER_load(s->libctx, "default") == NULL) {
        *err = ossl_err("cannot load the default provider");
        goto out;
    }
    bench_phase("libctx");
    if (!OSSL_PROVIDER_set_default_search_path(s->libctx, slash ? dir : ".")
        || OSSL_PROVIDER_load(s->libctx, "p11agent") == NULL) {
        *err = ossl_err("cannot load the p11agent provider");
        goto out;
    }
    bench_phase("provider");
    uri = bench_strdupf("pkcs11:token=%s;object=%s;type=private", cfg->token,
                        bench_alg_label(s->alg));
    st = OSSL_STORE_open_ex(uri, s->libctx, NULL, NULL, NULL, NULL, NULL, NULL);
    if (st == NULL) {
        *err = ossl_err("OSSL_STORE_open_ex on the agent key failed");
        goto out;
    }
    while (s->key == NULL && !OSSL_STORE_eof(st)) {
        OSSL_STORE_INFO *info = OSSL_STORE_load(st);

        if (info == NULL)
            break;
        if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
            s->key = OSSL_STORE_INFO_get1_PKEY(info);
        OSSL_STORE_INFO_free(info);
    }
    if (s->key == NULL) {
        *err = ossl_err("no private key loaded from the agent");
        goto out;
    }
    bench_phase("key");
    r = 0;
out:
    OSSL_STORE_close(st);
    free(uri);
    free(dir);
    return r;
}

static int evp_sign(EVP_MD_CTX *md, OSSL_LIB_CTX *libctx, EVP_PKEY *key, bench_alg_t a,
                    const uint8_t *msg, size_t len, uint8_t *sig, size_t *siglen, char **err)
{
    EVP_PKEY_CTX *pctx = NULL;

    *siglen = 512;
    EVP_MD_CTX_reset(md);
    if (!EVP_DigestSignInit_ex(md, &pctx, a == A_ED25519 ? NULL : "SHA256", libctx, NULL, key,
                               NULL))
        goto fail;
    if (a == A_RSA_PKCS1 && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0)
        goto fail;
    if (a == A_RSA_PSS
        && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0
            || EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) <= 0))
        goto fail;
    if (!EVP_DigestSign(md, sig, siglen, msg, len))
        goto fail;
    return 0;
fail:
    *err = ossl_err("EVP_DigestSign failed");
    return -1;
}

/* --- agent-bus ---------------------------------------------------------- */

#ifdef P11BENCH_BUS
static int bus_open(const bench_cfg_t *cfg, signer_t *s, char **err)
{
    const char *sock = getenv("P11AGENT_SOCKET");
    DBusConnection *conn = NULL;
    bus_key_info_t *keys = NULL;
    size_t n = 0;
    char *uri = bench_strdupf("pkcs11:token=%s;object=%s;type=private", cfg->token,
                              bench_alg_label(s->alg));
    int r;

    r = bus_client_connect(sock ? sock : "", &conn, err);
    if (r == BUS_OK)
        r = bus_client_find_keys(conn, uri, BUS_CALL_TIMEOUT_MS, &keys, &n, err);
    if (r == BUS_OK && n == 1)
        s->uri = strdup(keys[0].uri);
    else if (r == BUS_OK)
        *err = bench_strdupf("%s names %zu keys", uri, n);
    bus_key_info_free_array(keys, n);
    bus_client_close(conn);
    free(uri);
    return s->uri != NULL ? 0 : -1;
}

static int bus_sign(signer_thr_t *t, const uint8_t *msg, size_t len, uint8_t *sig,
                    size_t *siglen, char **err)
{
    bus_sign_params_t p = { .alg = BUS_SIG_ECDSA, .hash = "sha256" };
    uint8_t digest[32];
    unsigned int dlen = 32;
    uint8_t *out = NULL;
    size_t outlen = 0;

    switch (t->s->alg) {
    case A_RSA_PKCS1:
        p.alg = BUS_SIG_RSA_PKCS1;
        break;
    case A_RSA_PSS:
        p.alg = BUS_SIG_RSA_PSS;
        p.salt_len = 32;
        break;
    case A_ED25519:
        p.alg = BUS_SIG_EDDSA;
        p.hash[0] = '\0';
        break;
    default:
        break;
    }
    if (p.alg != BUS_SIG_EDDSA) {
        if (!EVP_Digest(msg, len, digest, &dlen, EVP_sha256(), NULL)) {
            *err = strdup("SHA-256 failed");
            return -1;
        }
        msg = digest;
        len = dlen;
    }
    if (bus_client_sign(t->conn, t->s->uri, &p, msg, len, BUS_CALL_TIMEOUT_MS, &out, &outlen,
                        err) < 0)
        return -1;
    if (outlen > 512) {
        free(out);
        *err = strdup("signature too long");
        return -1;
    }
    memcpy(sig, out, outlen);
    *siglen = outlen;
    free(out);
    return 0;
}
#endif

/* --- PKCS#11 ------------------------------------------------------------ */

static char *ck_err(const char *what, CK_RV rv)
{
    return bench_strdupf("%s failed: CKR 0x%lx", what, (unsigned long)rv);
}

static bool label_is(const CK_UTF8CHAR *field, size_t n, const char *label)
{
    size_t l = strlen(label);

    if (l > n || memcmp(field, label, l) != 0)
        return false;
    for (size_t i = l; i < n; i++)
        if (field[i] != ' ')
            return false;
    return true;
}

static int p11_open(const bench_cfg_t *cfg, signer_t *s, const char *module, bool copy,
                    char **err)
{
    CK_C_INITIALIZE_ARGS init = { .flags = CKF_OS_LOCKING_OK };
    CK_C_GetFunctionList getfl;
    CK_SLOT_ID slots[64];
    CK_ULONG nslots = 64, found = 0;
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    const char *label = bench_alg_label(s->alg);
    CK_ATTRIBUTE tmpl[] = {
        { CKA_CLASS, &cls, sizeof(cls) },
        { CKA_LABEL, (void *)label, strlen(label) },
    };
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE copy_tmpl[] = { { CKA_TOKEN, &no, sizeof(no) } };
    CK_RV rv;
    bool have_slot = false;

    s->dl = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    if (s->dl == NULL) {
        *err = bench_strdupf("dlopen %s: %s", module, dlerror());
        return -1;
    }
    bench_phase("dlopen");
    getfl = (CK_C_GetFunctionList)dlsym(s->dl, "C_GetFunctionList");
    if (getfl == NULL || getfl(&s->f) != CKR_OK) {
        *err = bench_strdupf("%s: no C_GetFunctionList", module);
        return -1;
    }
    rv = s->f->C_Initialize(&init);
    if (rv != CKR_OK) {
        *err = ck_err("C_Initialize", rv);
        return -1;
    }
    s->initialized = true;
    bench_phase("C_Initialize");
    rv = s->f->C_GetSlotList(CK_TRUE, slots, &nslots);
    if (rv != CKR_OK) {
        *err = ck_err("C_GetSlotList", rv);
        return -1;
    }
    rv = CKR_OK;
    for (CK_ULONG i = 0; i < nslots && !have_slot; i++) {
        CK_TOKEN_INFO ti;

        rv = s->f->C_GetTokenInfo(slots[i], &ti);
        if (rv == CKR_OK && label_is(ti.label, sizeof(ti.label), cfg->token)) {
            s->slot = slots[i];
            have_slot = true;
        }
    }
    if (!have_slot) {
        *err = bench_strdupf("token %s not found through %s (%lu slots, last C_GetTokenInfo "
                             "CKR 0x%lx)",
                             cfg->token, module, (unsigned long)nslots, (unsigned long)rv);
        return -1;
    }
    rv = s->f->C_OpenSession(s->slot, CKF_SERIAL_SESSION, NULL, NULL, &s->setup);
    if (rv != CKR_OK) {
        *err = ck_err("C_OpenSession", rv);
        return -1;
    }
    rv = s->f->C_Login(s->setup, CKU_USER, (CK_UTF8CHAR *)cfg->pin, strlen(cfg->pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        *err = ck_err("C_Login", rv);
        return -1;
    }
    bench_phase("login");
    rv = s->f->C_FindObjectsInit(s->setup, tmpl, 2);
    if (rv == CKR_OK) {
        rv = s->f->C_FindObjects(s->setup, &s->obj, 1, &found);
        s->f->C_FindObjectsFinal(s->setup);
    }
    if (rv != CKR_OK || found != 1) {
        *err = rv != CKR_OK ? ck_err("C_FindObjects", rv)
                            : bench_strdupf("private key %s not found", label);
        return -1;
    }
    bench_phase("find");
    if (copy) {
        CK_OBJECT_HANDLE c;

        rv = s->f->C_CopyObject(s->setup, s->obj, copy_tmpl, 1, &c);
        if (rv != CKR_OK) {
            *err = ck_err("C_CopyObject", rv);
            return -1;
        }
        s->obj = c;
    }
    return 0;
}

static const uint8_t sha256_prefix[19] = { 0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                           0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                           0x01, 0x05, 0x00, 0x04, 0x20 };

static int p11_sign(signer_thr_t *t, const uint8_t *msg, size_t len, uint8_t *sig,
                    size_t *siglen, char **err)
{
    signer_t *s = t->s;
    uint8_t buf[19 + 32];
    unsigned int dlen = 32;
    CK_RSA_PKCS_PSS_PARAMS pss = { CKM_SHA256, CKG_MGF1_SHA256, 32 };
    CK_MECHANISM mech = { 0, NULL, 0 };
    const uint8_t *in = buf + 19;
    CK_ULONG inlen = 32, outlen = 512;
    CK_RV rv;

    if (s->alg != A_ED25519 && !EVP_Digest(msg, len, buf + 19, &dlen, EVP_sha256(), NULL)) {
        *err = ossl_err("SHA-256");
        return -1;
    }
    switch (s->alg) {
    case A_RSA_PKCS1:
        mech.mechanism = CKM_RSA_PKCS;
        memcpy(buf, sha256_prefix, sizeof(sha256_prefix));
        in = buf;
        inlen = sizeof(buf);
        break;
    case A_RSA_PSS:
        mech.mechanism = CKM_RSA_PKCS_PSS;
        mech.pParameter = &pss;
        mech.ulParameterLen = sizeof(pss);
        break;
    case A_P256:
        mech.mechanism = CKM_ECDSA;
        break;
    default:
        mech.mechanism = CKM_EDDSA;
        in = msg;
        inlen = len;
        break;
    }
    rv = s->f->C_SignInit(t->session, &mech, s->obj);
    if (rv != CKR_OK) {
        *err = ck_err("C_SignInit", rv);
        return -1;
    }
    rv = s->f->C_Sign(t->session, (CK_BYTE *)in, inlen, sig, &outlen);
    if (rv != CKR_OK) {
        *err = ck_err("C_Sign", rv);
        return -1;
    }
    *siglen = outlen;
    return 0;
}

/* --- interface ---------------------------------------------------------- */

int signer_open(const bench_cfg_t *cfg, bench_method_t m, bench_alg_t a, signer_t **ret,
                char **err)
{
    signer_t *s = calloc(1, sizeof(*s));
    int r = -1;

    if (s == NULL)
        return -1;
    s->method = m;
    s->alg = a;
    s->pub = load_pub(cfg, a, err);
    if (s->pub == NULL)
        goto out;
    switch (m) {
    case M_AGENT_DBUS:
        /* read by the provider's pool when the provider loads */
        setenv("P11AGENT_CHANNEL", "0", 1);
        /* fall through */
    case M_AGENT:
        r = agent_open(cfg, s, err);
        break;
    case M_AGENT_BUS:
#ifdef P11BENCH_BUS
        r = bus_open(cfg, s, err);
#else
        *err = strdup("agent-bus is not built into this program");
#endif
        break;
    case M_DIRECT_TOKEN:
    case M_DIRECT_COPY:
        r = p11_open(cfg, s, cfg->module, m == M_DIRECT_COPY, err);
        break;
    case M_P11KIT_TOKEN:
    case M_P11KIT_COPY:
        if (cfg->p11kit_client == NULL || getenv("P11_KIT_SERVER_ADDRESS") == NULL) {
            *err = strdup("p11-kit remoting unavailable (no client module or server)");
            break;
        }
        r = p11_open(cfg, s, cfg->p11kit_client, m == M_P11KIT_COPY, err);
        break;
    default:
        *err = strdup("unknown method");
        break;
    }
out:
    if (r < 0) {
        signer_close(s);
        return -1;
    }
    *ret = s;
    return 0;
}

int signer_thread(signer_t *s, signer_thr_t **ret, char **err)
{
    signer_thr_t *t = calloc(1, sizeof(*t));
    CK_RV rv;

    if (t == NULL)
        return -1;
    t->s = s;
    if (s->method == M_AGENT || s->method == M_AGENT_DBUS) {
        t->md = EVP_MD_CTX_new();
        if (t->md == NULL) {
            free(t);
            return -1;
        }
#ifdef P11BENCH_BUS
    } else if (s->method == M_AGENT_BUS) {
        const char *sock = getenv("P11AGENT_SOCKET");

        if (bus_client_connect(sock ? sock : "", &t->conn, err) < 0) {
            free(t);
            return -1;
        }
#endif
    } else {
        rv = s->f->C_OpenSession(s->slot, CKF_SERIAL_SESSION, NULL, NULL, &t->session);
        if (rv != CKR_OK) {
            *err = ck_err("C_OpenSession", rv);
            free(t);
            return -1;
        }
        t->own_session = true;
    }
    *ret = t;
    return 0;
}

int signer_sign(signer_thr_t *t, const uint8_t *msg, size_t len, uint8_t *sig, size_t *siglen,
                char **err)
{
    if (t->s->method == M_AGENT || t->s->method == M_AGENT_DBUS)
        return evp_sign(t->md, t->s->libctx, t->s->key, t->s->alg, msg, len, sig, siglen, err);
#ifdef P11BENCH_BUS
    if (t->s->method == M_AGENT_BUS)
        return bus_sign(t, msg, len, sig, siglen, err);
#endif
    return p11_sign(t, msg, len, sig, siglen, err);
}

/* PKCS#11 gives ECDSA signatures as r || s; OpenSSL verifies DER. */
static uint8_t *ecdsa_raw_to_der(const uint8_t *sig, size_t len, size_t *ret_len)
{
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)(len / 2), NULL);
    BIGNUM *sv = BN_bin2bn(sig + len / 2, (int)(len / 2), NULL);
    uint8_t *der = NULL;
    int n = -1;

    if (es != NULL && r != NULL && sv != NULL && ECDSA_SIG_set0(es, r, sv)) {
        r = sv = NULL;
        n = i2d_ECDSA_SIG(es, &der);
    }
    BN_free(r);
    BN_free(sv);
    ECDSA_SIG_free(es);
    if (n <= 0)
        return NULL;
    *ret_len = (size_t)n;
    return der;
}

int signer_verify(signer_t *s, const uint8_t *msg, size_t len, const uint8_t *sig, size_t siglen,
                  char **err)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    uint8_t *der = NULL;
    int ok = 0;

    if (s->alg == A_P256 && s->method != M_AGENT && s->method != M_AGENT_DBUS && s->method != M_AGENT_BUS) {
        der = ecdsa_raw_to_der(sig, siglen, &siglen);
        if (der == NULL)
            goto out;
        sig = der;
    }
    if (md == NULL
        || !EVP_DigestVerifyInit_ex(md, &pctx, s->alg == A_ED25519 ? NULL : "SHA256", NULL, NULL,
                                    s->pub, NULL))
        goto out;
    if (s->alg == A_RSA_PSS
        && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0
            || EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 32) <= 0))
        goto out;
    ok = EVP_DigestVerify(md, sig, siglen, msg, len) == 1;
out:
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    if (!ok) {
        char *e = ossl_err("verification");

        *err = bench_strdupf("%s %s signature does not verify (%s)", bench_method_name(s->method),
                             bench_alg_name(s->alg), e ? e : "");
        free(e);
        return -1;
    }
    return 0;
}

EVP_PKEY *signer_evp_key(signer_t *s)
{
    return s->key;
}

OSSL_LIB_CTX *signer_libctx(signer_t *s)
{
    return s->libctx;
}

void signer_thread_free(signer_thr_t *t)
{
    if (t == NULL)
        return;
    EVP_MD_CTX_free(t->md);
#ifdef P11BENCH_BUS
    bus_client_close(t->conn);
#endif
    if (t->own_session)
        t->s->f->C_CloseSession(t->session);
    free(t);
}

void signer_close(signer_t *s)
{
    if (s == NULL)
        return;
    EVP_PKEY_free(s->key);
    EVP_PKEY_free(s->pub);
    free(s->uri);
    OSSL_LIB_CTX_free(s->libctx);
    if (s->initialized)
        s->f->C_Finalize(NULL);
    /* The module stays mapped: SoftHSM's OpenSSL state must outlive us. */
    free(s);
}
