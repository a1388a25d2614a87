/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * tests/fault/p11fault.so against a fresh SoftHSM token made for this run:
 * plain forwarding, card removal and re-insertion, slot events (polled,
 * blocking, woken by C_Finalize), PIN pad, always-authenticate keys, PIN
 * flags and lock-out, injected errors, delays, the state file, the control
 * file's append/rewrite rules, p11fault-ctl and pkcs11-tool; and the lies
 * (oversized signature lengths, huge, growing and garbage attributes, a
 * token label of invalid UTF-8) against the token layer (pkcs11/), which
 * must answer each with a clean TOK_* error or a skipped key.
 *
 * Environment (tests/fault/meson.build): SOFTHSM_MODULE, P11FAULT_SO,
 * P11FAULT_CTL. Each case starts from a rewritten (reset) control file.
 */
#include <dlfcn.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

#include <p11-kit/pkcs11.h>

#include "text.h"
#include "tok.h"

#define SO_PIN "so-pin-4321"
#define USER_PIN "user-1234"
#define TOKEN_LABEL "p11agent-test"

typedef struct fixture {
    char dir[64];
    char control[128], state[128];
    const char *softhsm, *p11fault, *ctl;
    CK_FUNCTION_LIST *f;
    CK_SLOT_ID slot;
    unsigned long sync;
} fixture_t;

static fixture_t fx;

/* ---------------------------------------------------------------- utils */

static long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    nanosleep(&ts, NULL);
}

static void pad(CK_UTF8CHAR *dst, size_t n, const char *s)
{
    memset(dst, ' ', n);
    memcpy(dst, s, strlen(s));
}

/* The value of KEY in a state file (malloc'd), or NULL. */
static char *file_value(const char *path, const char *key)
{
    FILE *fp = fopen(path, "r");
    char line[512], *v = NULL;
    size_t kl = strlen(key);

    if (fp == NULL)
        return NULL;
    while (v == NULL && fgets(line, sizeof(line), fp) != NULL) {
        if (strncmp(line, key, kl) == 0 && line[kl] == ' ') {
            line[strcspn(line, "\n")] = '\0';
            v = strdup(line + kl + 1);
        }
    }
    fclose(fp);
    return v;
}

static char *state_str(const char *key)
{
    return file_value(fx.state, key);
}

/* A counter from a state file; 0 when absent. */
static long file_num(const char *path, const char *key)
{
    char *v = file_value(path, key);
    long n = v != NULL ? strtol(v, NULL, 10) : 0;

    free(v);
    return n;
}

static long state_num(const char *key)
{
    char *v = state_str(key);
    long n = v != NULL ? strtol(v, NULL, 10) : 0;

    free(v);
    return n;
}

static bool state_is(const char *key, const char *want)
{
    char *v = state_str(key);
    bool eq = v != NULL && strcmp(v, want) == 0;

    free(v);
    return eq;
}

/* Waits (bounded) until the module acknowledged `sync WORD`: no PKCS#11
 * call is made, so the module's watcher thread has to notice. */
static void wait_sync(unsigned long n)
{
    char want[32];
    long deadline = now_ms() + 5000;

    snprintf(want, sizeof(want), "t%lu", n);
    while (!state_is("sync", want)) {
        if (now_ms() > deadline)
            fail_msg("p11fault did not acknowledge sync %s", want);
        sleep_ms(5);
    }
}

/* Appends one control line (and a sync) and waits until it is applied. */
static void ctl(const char *fmt, ...)
{
    FILE *fp = fopen(fx.control, "a");
    va_list ap;

    assert_non_null(fp);
    va_start(ap, fmt);
    vfprintf(fp, fmt, ap);
    va_end(ap);
    fprintf(fp, "\nsync t%lu\n", ++fx.sync);
    fclose(fp);
    wait_sync(fx.sync);
}

/* Rewrites the control file (tmp + rename): the module resets first. */
static void ctl_set(const char *line)
{
    char tmp[160];
    FILE *fp;

    snprintf(tmp, sizeof(tmp), "%s.tmp", fx.control);
    fp = fopen(tmp, "w");
    assert_non_null(fp);
    fprintf(fp, "%s\nsync t%lu\n", line, ++fx.sync);
    fclose(fp);
    assert_int_equal(rename(tmp, fx.control), 0);
    wait_sync(fx.sync);
}

/* -------------------------------------------------------------- token */

static const uint8_t oid_p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };

static void gen_pair(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, bool rsa, uint8_t id, const char *label)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG bits = 2048;
    CK_BYTE e[] = { 1, 0, 1 };
    CK_MECHANISM m = { rsa ? CKM_RSA_PKCS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN, NULL, 0 };
    CK_OBJECT_HANDLE pub, priv;
    CK_ATTRIBUTE pt[6] = {
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

    if (rsa) {
        pt[np++] = (CK_ATTRIBUTE){ CKA_MODULUS_BITS, &bits, sizeof(bits) };
        pt[np++] = (CK_ATTRIBUTE){ CKA_PUBLIC_EXPONENT, e, sizeof(e) };
    } else {
        pt[np++] = (CK_ATTRIBUTE){ CKA_EC_PARAMS, (void *)oid_p256, sizeof(oid_p256) };
    }
    assert_int_equal(f->C_GenerateKeyPair(s, &m, pt, np, kt, sizeof(kt) / sizeof(kt[0]), &pub, &priv),
                     CKR_OK);
}

static CK_FUNCTION_LIST *load(const char *path)
{
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    CK_C_GetFunctionList get;
    CK_FUNCTION_LIST *f = NULL;

    if (dl == NULL)
        fail_msg("dlopen %s: %s", path, dlerror());
    get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
    assert_non_null(get);
    assert_int_equal(get(&f), CKR_OK);
    return f; /* never dlclose()d (LeakSanitizer needs SoftHSM's frames) */
}

static CK_RV init(CK_FUNCTION_LIST *f)
{
    CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };

    return f->C_Initialize(&args);
}

/* The slot holding our token (initialized), or a free one. */
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
        if (initialized && memcmp(ti.label, want, sizeof(want)) == 0)
            return slots[i];
    }
    fail_msg("no %s slot", initialized ? "initialised" : "free");
    return 0;
}

static void provision_token(void)
{
    CK_FUNCTION_LIST *f = load(fx.softhsm);
    CK_UTF8CHAR label[32];
    CK_SESSION_HANDLE s;
    CK_SLOT_ID slot;

    assert_int_equal(init(f), CKR_OK);
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
    gen_pair(f, s, true, 1, "rsa2048");
    gen_pair(f, s, false, 2, "p256");
    assert_int_equal(f->C_Logout(s), CKR_OK);
    assert_int_equal(f->C_CloseSession(s), CKR_OK);
    assert_int_equal(f->C_Finalize(NULL), CKR_OK);
}

static int group_setup(void **state)
{
    char path[128];
    FILE *fp;

    fx.softhsm = getenv("SOFTHSM_MODULE");
    fx.p11fault = getenv("P11FAULT_SO");
    fx.ctl = getenv("P11FAULT_CTL");
    if (fx.softhsm == NULL || access(fx.softhsm, R_OK) != 0 || fx.p11fault == NULL ||
        access(fx.p11fault, R_OK) != 0 || fx.ctl == NULL || access(fx.ctl, X_OK) != 0) {
        fprintf(stderr, "SOFTHSM_MODULE, P11FAULT_SO or P11FAULT_CTL not set or not usable\n");
        return -1;
    }
    strcpy(fx.dir, "/tmp/p11agent-test-fault-XXXXXX");
    if (mkdtemp(fx.dir) == NULL)
        return -1;
    snprintf(path, sizeof(path), "%s/tokens", fx.dir);
    if (mkdir(path, 0700) != 0)
        return -1;
    snprintf(path, sizeof(path), "%s/softhsm2.conf", fx.dir);
    if ((fp = fopen(path, "w")) == NULL)
        return -1;
    fprintf(fp, "directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
            fx.dir);
    fclose(fp);
    setenv("SOFTHSM2_CONF", path, 1);
    provision_token();

    snprintf(fx.control, sizeof(fx.control), "%s/control", fx.dir);
    snprintf(fx.state, sizeof(fx.state), "%s/state", fx.dir);
    if ((fp = fopen(fx.control, "w")) == NULL)
        return -1;
    fclose(fp);
    setenv("P11FAULT_MODULE", fx.softhsm, 1);
    setenv("P11FAULT_CONTROL", fx.control, 1);
    setenv("P11FAULT_STATE", fx.state, 1);
    fx.f = load(fx.p11fault);
    if (init(fx.f) != CKR_OK)
        return -1;
    fx.slot = find_slot(fx.f, true);
    *state = &fx;
    return 0;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(p);
}

static int group_teardown(void **state)
{
    if (fx.f != NULL)
        fx.f->C_Finalize(NULL);
    if (fx.dir[0] != '\0')
        nftw(fx.dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* Every case starts from defaults and without sessions. */
static int case_setup(void **state)
{
    ctl_set("# reset");
    fx.f->C_CloseAllSessions(fx.slot);
    return 0;
}

/* ------------------------------------------------------------- helpers */

static CK_SESSION_HANDLE open_session(void)
{
    CK_SESSION_HANDLE s;

    assert_int_equal(fx.f->C_OpenSession(fx.slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
    return s;
}

static CK_RV login(CK_SESSION_HANDLE s, CK_USER_TYPE type, const char *pin)
{
    return fx.f->C_Login(s, type, (CK_UTF8CHAR_PTR)pin, pin != NULL ? strlen(pin) : 0);
}

static CK_SESSION_HANDLE open_login(void)
{
    CK_SESSION_HANDLE s = open_session();

    assert_int_equal(login(s, CKU_USER, USER_PIN), CKR_OK);
    return s;
}

/* The object of the class with the label, or CK_INVALID_HANDLE. */
static CK_OBJECT_HANDLE find(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label)
{
    CK_ATTRIBUTE t[] = {
        { CKA_CLASS, &cls, sizeof(cls) },
        { CKA_LABEL, (void *)label, strlen(label) },
    };
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ULONG n = 0;

    assert_int_equal(fx.f->C_FindObjectsInit(s, t, 2), CKR_OK);
    assert_int_equal(fx.f->C_FindObjects(s, &h, 1, &n), CKR_OK);
    assert_int_equal(fx.f->C_FindObjectsFinal(s), CKR_OK);
    return n == 1 ? h : CK_INVALID_HANDLE;
}

static CK_OBJECT_HANDLE rsa_key(CK_SESSION_HANDLE s)
{
    CK_OBJECT_HANDLE h = find(s, CKO_PRIVATE_KEY, "rsa2048");

    assert_int_not_equal(h, CK_INVALID_HANDLE);
    return h;
}

/* 1 if sig is a SHA256-RSA-PKCS signature of msg by the token's rsa2048. */
static int verify_rsa(CK_SESSION_HANDLE s, const uint8_t *msg, size_t len, const uint8_t *sig,
                      size_t sig_len)
{
    uint8_t n[512], e[16];
    CK_ATTRIBUTE a[] = { { CKA_MODULUS, n, sizeof(n) }, { CKA_PUBLIC_EXPONENT, e, sizeof(e) } };
    CK_OBJECT_HANDLE pub = find(s, CKO_PUBLIC_KEY, "rsa2048");
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    BIGNUM *bn = NULL, *be = NULL;
    OSSL_PARAM *params;
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    EVP_PKEY *pk = NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok;

    assert_int_not_equal(pub, CK_INVALID_HANDLE);
    assert_int_equal(fx.f->C_GetAttributeValue(s, pub, a, 2), CKR_OK);
    bn = BN_bin2bn(n, (int)a[0].ulValueLen, NULL);
    be = BN_bin2bn(e, (int)a[1].ulValueLen, NULL);
    assert_int_equal(OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn), 1);
    assert_int_equal(OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be), 1);
    params = OSSL_PARAM_BLD_to_param(bld);
    assert_int_equal(EVP_PKEY_fromdata_init(pctx), 1);
    assert_int_equal(EVP_PKEY_fromdata(pctx, &pk, EVP_PKEY_PUBLIC_KEY, params), 1);
    assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pk), 1);
    ok = EVP_DigestVerify(md, sig, sig_len, msg, len) == 1;
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pk);
    EVP_PKEY_CTX_free(pctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    return ok;
}

static CK_RV sign_init(CK_SESSION_HANDLE s)
{
    CK_MECHANISM m = { CKM_SHA256_RSA_PKCS, NULL, 0 };

    return fx.f->C_SignInit(s, &m, rsa_key(s));
}

static const uint8_t msg[] = "to be signed by the token";

/* C_Sign of msg on an initialised operation; the signature must verify. */
static CK_RV sign_checked(CK_SESSION_HANDLE s)
{
    uint8_t sig[512];
    CK_ULONG len = sizeof(sig);
    CK_RV rv = fx.f->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), sig, &len);

    if (rv == CKR_OK)
        assert_int_equal(verify_rsa(s, msg, sizeof(msg), sig, len), 1);
    return rv;
}

static void sign_ok(CK_SESSION_HANDLE s)
{
    assert_int_equal(sign_init(s), CKR_OK);
    assert_int_equal(sign_checked(s), CKR_OK);
}

static CK_FLAGS token_flags(void)
{
    CK_TOKEN_INFO ti;

    assert_int_equal(fx.f->C_GetTokenInfo(fx.slot, &ti), CKR_OK);
    return ti.flags;
}

static bool slot_listed(CK_BBOOL present)
{
    CK_SLOT_ID ids[16];
    CK_ULONG n = 16;

    assert_int_equal(fx.f->C_GetSlotList(present, ids, &n), CKR_OK);
    for (CK_ULONG i = 0; i < n; i++)
        if (ids[i] == fx.slot)
            return true;
    return false;
}

static void drain_events(void)
{
    CK_SLOT_ID id;

    while (fx.f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &id, NULL) == CKR_OK)
        ;
}

static char *slot_key(const char *suffix)
{
    static char k[64];

    snprintf(k, sizeof(k), "slot.%lu%s", fx.slot, suffix);
    return k;
}

/* --------------------------------------------------------------- cases */

static void test_fault_forwarding(void **state)
{
    CK_INFO info;
    CK_SESSION_HANDLE s;
    CK_SESSION_INFO si;
    long signs;

    assert_int_equal(fx.f->C_GetInfo(&info), CKR_OK);
    assert_memory_equal(info.libraryDescription, "p11fault ", 9);
    assert_true(slot_listed(CK_TRUE));
    s = open_login();
    assert_int_equal(fx.f->C_GetSessionInfo(s, &si), CKR_OK);
    assert_int_equal(si.state, CKS_RO_USER_FUNCTIONS);
    assert_int_equal(si.slotID, fx.slot);
    signs = state_num("C_Sign");
    sign_ok(s);
    assert_int_equal(state_num("C_Sign"), signs + 1);
    assert_int_equal(state_num("sessions"), 1);
    assert_true(state_is(slot_key(".label"), TOKEN_LABEL));
    assert_true(state_is(slot_key(""), "present"));
    assert_int_equal(fx.f->C_CloseSession(s), CKR_OK);
    assert_int_equal(state_num("sessions"), 0);
    assert_int_equal(fx.f->C_GetSessionInfo(s, &si), CKR_SESSION_HANDLE_INVALID);
}

static void test_fault_removal(void **state)
{
    CK_SESSION_HANDLE s = open_login(), s2;
    CK_SESSION_INFO si;
    CK_SLOT_INFO slot_info;
    CK_TOKEN_INFO ti;
    CK_OBJECT_HANDLE key = rsa_key(s);
    CK_MECHANISM m = { CKM_SHA256_RSA_PKCS, NULL, 0 };

    ctl("remove %lu", fx.slot);
    assert_false(slot_listed(CK_TRUE));
    assert_true(slot_listed(CK_FALSE));
    assert_int_equal(fx.f->C_GetSlotInfo(fx.slot, &slot_info), CKR_OK);
    assert_false(slot_info.flags & CKF_TOKEN_PRESENT);
    assert_true(slot_info.flags & CKF_REMOVABLE_DEVICE);
    assert_int_equal(fx.f->C_GetTokenInfo(fx.slot, &ti), CKR_TOKEN_NOT_PRESENT);
    assert_int_equal(fx.f->C_OpenSession(fx.slot, CKF_SERIAL_SESSION, NULL, NULL, &s2),
                     CKR_TOKEN_NOT_PRESENT);
    assert_int_equal(fx.f->C_SignInit(s, &m, key), CKR_DEVICE_REMOVED);
    assert_int_equal(fx.f->C_GetSessionInfo(s, &si), CKR_DEVICE_REMOVED);
    assert_int_equal(fx.f->C_FindObjectsInit(s, NULL, 0), CKR_DEVICE_REMOVED);
    assert_true(state_is(slot_key(""), "removed"));
    assert_int_equal(state_num("sessions"), 0);

    ctl("insert %lu", fx.slot);
    assert_true(slot_listed(CK_TRUE));
    assert_int_equal(fx.f->C_GetSlotInfo(fx.slot, &slot_info), CKR_OK);
    assert_true(slot_info.flags & CKF_TOKEN_PRESENT);
    /* the old session stays dead */
    assert_int_equal(fx.f->C_GetSessionInfo(s, &si), CKR_SESSION_HANDLE_INVALID);
    assert_int_equal(fx.f->C_SignInit(s, &m, key), CKR_SESSION_HANDLE_INVALID);
    assert_int_equal(fx.f->C_CloseSession(s), CKR_SESSION_HANDLE_INVALID);
    /* a new one is not logged in: the card forgot the login */
    s2 = open_session();
    assert_int_equal(fx.f->C_GetSessionInfo(s2, &si), CKR_OK);
    assert_int_equal(si.state, CKS_RO_PUBLIC_SESSION);
    assert_int_equal(find(s2, CKO_PRIVATE_KEY, "rsa2048"), CK_INVALID_HANDLE);
    assert_int_equal(login(s2, CKU_USER, USER_PIN), CKR_OK);
    sign_ok(s2);
    assert_true(state_is(slot_key(""), "present"));
    assert_int_equal(fx.f->C_CloseSession(s2), CKR_OK);
}

static void test_fault_wait_nonblocking(void **state)
{
    CK_SLOT_ID id = 0;

    drain_events();
    assert_int_equal(fx.f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &id, NULL), CKR_NO_EVENT);
    ctl("remove %lu", fx.slot);
    assert_int_equal(fx.f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &id, NULL), CKR_OK);
    assert_int_equal(id, fx.slot);
    assert_int_equal(fx.f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &id, NULL), CKR_NO_EVENT);
    ctl("remove %lu", fx.slot); /* no change, no event */
    assert_int_equal(fx.f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &id, NULL), CKR_NO_EVENT);
    ctl("insert %lu", fx.slot);
    id = 0;
    assert_int_equal(fx.f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &id, NULL), CKR_OK);
    assert_int_equal(id, fx.slot);
    assert_int_equal(fx.f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &id, NULL), CKR_NO_EVENT);
}

typedef struct waiter {
    pthread_t thread;
    CK_RV rv;
    CK_SLOT_ID slot;
    long returned_ms;
} waiter_t;

static void *waiter_main(void *arg)
{
    waiter_t *w = arg;

    w->rv = fx.f->C_WaitForSlotEvent(0, &w->slot, NULL);
    w->returned_ms = now_ms();
    return NULL;
}

static void waiter_start(waiter_t *w)
{
    memset(w, 0, sizeof(*w));
    w->rv = CKR_GENERAL_ERROR;
    assert_int_equal(pthread_create(&w->thread, NULL, waiter_main, w), 0);
    sleep_ms(150); /* let it block */
    assert_int_equal(w->returned_ms, 0);
}

static void test_fault_wait_blocking(void **state)
{
    waiter_t w;
    long t0;

    drain_events();
    waiter_start(&w);
    t0 = now_ms();
    ctl("remove %lu", fx.slot);
    assert_int_equal(pthread_join(w.thread, NULL), 0);
    assert_int_equal(w.rv, CKR_OK);
    assert_int_equal(w.slot, fx.slot);
    assert_true(w.returned_ms >= t0);

    waiter_start(&w);
    ctl("insert %lu", fx.slot);
    assert_int_equal(pthread_join(w.thread, NULL), 0);
    assert_int_equal(w.rv, CKR_OK);
    assert_int_equal(w.slot, fx.slot);
}

static void test_fault_finalize_wakes_waiter(void **state)
{
    waiter_t w;
    CK_SESSION_HANDLE s;

    drain_events();
    waiter_start(&w);
    assert_int_equal(fx.f->C_Finalize(NULL), CKR_OK);
    assert_int_equal(pthread_join(w.thread, NULL), 0);
    assert_int_equal(w.rv, CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_int_equal(fx.f->C_GetSlotList(CK_TRUE, NULL, &(CK_ULONG){ 0 }),
                     CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_int_equal(init(fx.f), CKR_OK);
    s = open_login();
    sign_ok(s);
    assert_int_equal(fx.f->C_CloseSession(s), CKR_OK);
}

/* Without the watcher thread (CKF_LIBRARY_CANT_CREATE_OS_THREADS), a
 * control line is applied by the very next call: every call looks at the
 * control file (its stat() made before the module's lock is taken). */
static void test_fault_control_per_call(void **state)
{
    CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK | CKF_LIBRARY_CANT_CREATE_OS_THREADS };
    CK_TOKEN_INFO ti;
    FILE *fp;

    assert_int_equal(fx.f->C_Finalize(NULL), CKR_OK);
    assert_int_equal(fx.f->C_Initialize(&args), CKR_OK);
    assert_int_equal(fx.f->C_GetTokenInfo(fx.slot, &ti), CKR_OK);
    fp = fopen(fx.control, "a");
    assert_non_null(fp);
    fprintf(fp, "fail C_GetTokenInfo CKR_DEVICE_ERROR 1\n");
    assert_int_equal(fclose(fp), 0);
    assert_int_equal(fx.f->C_GetTokenInfo(fx.slot, &ti), CKR_DEVICE_ERROR);
    assert_int_equal(fx.f->C_GetTokenInfo(fx.slot, &ti), CKR_OK);
    /* back to the fixture's module, watcher and all */
    assert_int_equal(fx.f->C_Finalize(NULL), CKR_OK);
    assert_int_equal(init(fx.f), CKR_OK);
}

static void test_fault_pinpad(void **state)
{
    CK_SESSION_HANDLE s;
    CK_SESSION_INFO si;
    long t0, failures;

    assert_false(token_flags() & CKF_PROTECTED_AUTHENTICATION_PATH);
    ctl("pinpad %lu %s 200", fx.slot, USER_PIN);
    assert_true(token_flags() & CKF_PROTECTED_AUTHENTICATION_PATH);
    s = open_session();
    t0 = now_ms();
    assert_int_equal(login(s, CKU_USER, NULL), CKR_OK);
    assert_true(now_ms() - t0 >= 200);
    assert_int_equal(fx.f->C_GetSessionInfo(s, &si), CKR_OK);
    assert_int_equal(si.state, CKS_RO_USER_FUNCTIONS);
    sign_ok(s);
    assert_int_equal(fx.f->C_Logout(s), CKR_OK);

    ctl("pinpad %lu cancel", fx.slot);
    assert_int_equal(login(s, CKU_USER, NULL), CKR_FUNCTION_CANCELED);
    failures = state_num(slot_key(".login-failures"));
    ctl("pinpad %lu none", fx.slot);
    assert_int_equal(login(s, CKU_USER, NULL), CKR_PIN_INCORRECT);
    assert_int_equal(state_num(slot_key(".login-failures")), failures + 1);
    ctl("pinpad %lu off", fx.slot);
    assert_false(token_flags() & CKF_PROTECTED_AUTHENTICATION_PATH);
    assert_int_equal(login(s, CKU_USER, NULL), CKR_PIN_INCORRECT);
    /* a typed PIN still works with or without a pad */
    assert_int_equal(login(s, CKU_USER, USER_PIN), CKR_OK);
    assert_int_equal(fx.f->C_CloseSession(s), CKR_OK);
}

static CK_BBOOL always_auth_of(CK_SESSION_HANDLE s, const char *label)
{
    CK_BBOOL v = 0x55;
    CK_ATTRIBUTE a[] = { { CKA_ALWAYS_AUTHENTICATE, NULL, 0 } };

    assert_int_equal(fx.f->C_GetAttributeValue(s, find(s, CKO_PRIVATE_KEY, label), a, 1), CKR_OK);
    assert_int_equal(a[0].ulValueLen, sizeof(CK_BBOOL));
    a[0].pValue = &v;
    assert_int_equal(fx.f->C_GetAttributeValue(s, find(s, CKO_PRIVATE_KEY, label), a, 1), CKR_OK);
    return v;
}

static void test_fault_always_auth(void **state)
{
    CK_SESSION_HANDLE s = open_login();
    CK_ULONG len = 0;

    assert_int_equal(always_auth_of(s, "rsa2048"), CK_FALSE);
    sign_ok(s);
    ctl("always-auth rsa2048");
    assert_int_equal(always_auth_of(s, "rsa2048"), CK_TRUE);
    assert_int_equal(always_auth_of(s, "p256"), CK_FALSE);

    /* no context login: refused, and the operation is over */
    assert_int_equal(sign_init(s), CKR_OK);
    assert_int_equal(sign_checked(s), CKR_USER_NOT_LOGGED_IN);
    assert_int_equal(sign_init(s), CKR_OK);
    assert_int_equal(login(s, CKU_CONTEXT_SPECIFIC, "wrong"), CKR_PIN_INCORRECT);
    assert_int_equal(login(s, CKU_CONTEXT_SPECIFIC, USER_PIN), CKR_OK);
    /* a length query does not use the login up */
    assert_int_equal(fx.f->C_Sign(s, (CK_BYTE_PTR)msg, sizeof(msg), NULL, &len), CKR_OK);
    assert_int_equal(len, 256);
    assert_int_equal(sign_checked(s), CKR_OK);
    /* one signature per login */
    assert_int_equal(sign_init(s), CKR_OK);
    assert_int_equal(sign_checked(s), CKR_USER_NOT_LOGGED_IN);
    /* a context login needs the operation */
    assert_int_equal(login(s, CKU_CONTEXT_SPECIFIC, USER_PIN), CKR_OPERATION_NOT_INITIALIZED);

    /* the configured user PIN is what counts; a PIN pad types it */
    ctl("user-pin 999999");
    assert_int_equal(sign_init(s), CKR_OK);
    assert_int_equal(login(s, CKU_CONTEXT_SPECIFIC, USER_PIN), CKR_PIN_INCORRECT);
    assert_int_equal(login(s, CKU_CONTEXT_SPECIFIC, "999999"), CKR_OK);
    assert_int_equal(sign_checked(s), CKR_OK);
    ctl("pinpad %lu 999999", fx.slot);
    assert_int_equal(sign_init(s), CKR_OK);
    assert_int_equal(login(s, CKU_CONTEXT_SPECIFIC, NULL), CKR_OK);
    assert_int_equal(sign_checked(s), CKR_OK);

    ctl("always-auth all");
    assert_int_equal(always_auth_of(s, "p256"), CK_TRUE);
    ctl("always-auth off");
    assert_int_equal(always_auth_of(s, "rsa2048"), CK_FALSE);
    sign_ok(s);
    assert_int_equal(fx.f->C_CloseSession(s), CKR_OK);
}

static void test_fault_flags(void **state)
{
    const CK_FLAGS pin_flags = CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED;

    assert_int_equal(token_flags() & pin_flags, 0);
    ctl("flags %lu final-try", fx.slot);
    assert_int_equal(token_flags() & pin_flags, CKF_USER_PIN_FINAL_TRY);
    ctl("flags %lu count-low locked", fx.slot);
    assert_int_equal(token_flags() & pin_flags, CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_LOCKED);
    ctl("flags token=%s count-low", TOKEN_LABEL);
    assert_int_equal(token_flags() & pin_flags, CKF_USER_PIN_COUNT_LOW);
    ctl("flags %lu none", fx.slot);
    assert_int_equal(token_flags() & pin_flags, 0);
}

static void test_fault_lockout(void **state)
{
    CK_SESSION_HANDLE s = open_session();
    long failed = state_num("C_Login.failed");

    ctl("max-login-failures 3 pin %s", USER_PIN);
    assert_int_equal(login(s, CKU_USER, "wrong-1"), CKR_PIN_INCORRECT);
    assert_int_equal(token_flags() & (CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY),
                     CKF_USER_PIN_COUNT_LOW);
    assert_int_equal(login(s, CKU_USER, "wrong-2"), CKR_PIN_INCORRECT);
    assert_true(token_flags() & CKF_USER_PIN_FINAL_TRY);
    assert_int_equal(login(s, CKU_USER, "wrong-3"), CKR_PIN_INCORRECT);
    assert_true(token_flags() & CKF_USER_PIN_LOCKED);
    assert_int_equal(login(s, CKU_USER, USER_PIN), CKR_PIN_LOCKED);
    assert_int_equal(state_num(slot_key(".pin-locked")), 1);
    assert_int_equal(state_num(slot_key(".login-failures")), 3);
    assert_int_equal(state_num("C_Login.failed"), failed + 4);

    ctl("unlock %lu", fx.slot);
    assert_false(token_flags() & CKF_USER_PIN_LOCKED);
    /* a good login resets the count */
    assert_int_equal(login(s, CKU_USER, "wrong-4"), CKR_PIN_INCORRECT);
    assert_int_equal(login(s, CKU_USER, USER_PIN), CKR_OK);
    assert_int_equal(state_num(slot_key(".login-failures")), 0);
    assert_int_equal(fx.f->C_Logout(s), CKR_OK);

    /* without a PIN in the config the real module judges */
    ctl("max-login-failures 1");
    assert_int_equal(login(s, CKU_USER, "wrong-5"), CKR_PIN_INCORRECT);
    assert_int_equal(login(s, CKU_USER, USER_PIN), CKR_PIN_LOCKED);
    ctl("max-login-failures off");
    assert_int_equal(login(s, CKU_USER, USER_PIN), CKR_OK);
    assert_int_equal(fx.f->C_CloseSession(s), CKR_OK);
}

static void test_fault_fail(void **state)
{
    CK_SESSION_HANDLE s = open_login(), s2;
    long failed = state_num("C_Sign.failed");

    ctl("fail C_Sign CKR_DEVICE_ERROR 2");
    for (int i = 0; i < 2; i++) {
        /* C_SignInit succeeds: the failed C_Sign ended the operation */
        assert_int_equal(sign_init(s), CKR_OK);
        assert_int_equal(sign_checked(s), CKR_DEVICE_ERROR);
    }
    sign_ok(s);
    assert_int_equal(state_num("C_Sign.failed"), failed + 2);

    ctl("fail C_OpenSession 0x30");
    assert_int_equal(fx.f->C_OpenSession(fx.slot, CKF_SERIAL_SESSION, NULL, NULL, &s2),
                     CKR_DEVICE_ERROR);
    s2 = open_session();
    assert_int_equal(fx.f->C_CloseSession(s2), CKR_OK);

    ctl("fail C_FindObjectsInit CKR_FUNCTION_FAILED always");
    for (int i = 0; i < 3; i++)
        assert_int_equal(fx.f->C_FindObjectsInit(s, NULL, 0), CKR_FUNCTION_FAILED);
    ctl("fail C_FindObjectsInit off");
    assert_int_not_equal(rsa_key(s), CK_INVALID_HANDLE);

    ctl("fail C_Login CKR_PIN_LOCKED 1");
    assert_int_equal(fx.f->C_Logout(s), CKR_OK);
    assert_int_equal(login(s, CKU_USER, USER_PIN), CKR_PIN_LOCKED);
    assert_int_equal(login(s, CKU_USER, USER_PIN), CKR_OK);
    assert_int_equal(fx.f->C_CloseSession(s), CKR_OK);
}

static void test_fault_delay(void **state)
{
    CK_SESSION_HANDLE s = open_login();
    long t0;

    ctl("delay C_Sign 200");
    assert_int_equal(sign_init(s), CKR_OK);
    t0 = now_ms();
    assert_int_equal(sign_checked(s), CKR_OK);
    assert_true(now_ms() - t0 >= 200);

    /* per slot, over the global one */
    ctl("delay C_Sign 300 %lu", fx.slot);
    assert_int_equal(sign_init(s), CKR_OK);
    t0 = now_ms();
    assert_int_equal(sign_checked(s), CKR_OK);
    assert_true(now_ms() - t0 >= 300);

    ctl("delay C_Login 150");
    assert_int_equal(fx.f->C_Logout(s), CKR_OK);
    t0 = now_ms();
    assert_int_equal(login(s, CKU_USER, USER_PIN), CKR_OK);
    assert_true(now_ms() - t0 >= 150);
    assert_int_equal(fx.f->C_CloseSession(s), CKR_OK);
}

static void test_fault_state_file(void **state)
{
    CK_INFO info;
    long errors = state_num("control.errors");
    char *err;

    ctl("reset-counters");
    assert_int_equal(state_num("C_GetInfo"), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(fx.f->C_GetInfo(&info), CKR_OK);
    assert_int_equal(state_num("C_GetInfo"), 3);
    assert_int_equal(state_num("C_GetInfo.failed"), 0);
    ctl("fail C_GetInfo CKR_DEVICE_ERROR");
    assert_int_equal(fx.f->C_GetInfo(&info), CKR_DEVICE_ERROR);
    assert_int_equal(state_num("C_GetInfo"), 4);
    assert_int_equal(state_num("C_GetInfo.failed"), 1);
    assert_int_equal(state_num("pid"), getpid());

    /* bad lines are counted and described, the rest still applies */
    ctl("frobnicate 1\nfail C_Nope CKR_OK\ndelay C_Sign soon\nflags %lu dusty", fx.slot);
    assert_int_equal(state_num("control.errors"), errors + 4);
    err = state_str("control.last-error");
    assert_non_null(err);
    assert_non_null(strstr(err, "dusty"));
    free(err);
}

static void test_fault_control_rules(void **state)
{
    FILE *fp;
    long gen;

    /* a rewrite resets: the card is back */
    ctl("remove %lu", fx.slot);
    assert_false(slot_listed(CK_TRUE));
    ctl_set("delay C_GetInfo 0");
    assert_true(slot_listed(CK_TRUE));

    /* an incomplete last line waits for its newline */
    gen = state_num("generation");
    fp = fopen(fx.control, "a");
    assert_non_null(fp);
    fprintf(fp, "remove %lu", fx.slot);
    fclose(fp);
    assert_true(slot_listed(CK_TRUE));
    assert_int_equal(state_num("generation"), gen);
    ctl(""); /* ends the line */
    assert_false(slot_listed(CK_TRUE));
    assert_true(state_num("generation") > gen);
}

/* Runs a shell command line; its exit status. */
static int run(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    int st;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Reads a command's whole output (malloc'd). */
static char *output_of(const char *fmt, ...)
{
    char cmd[2048], *buf = calloc(1, 65536);
    size_t n = 0, r;
    va_list ap;
    FILE *p;

    assert_non_null(buf);
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    p = popen(cmd, "r");
    assert_non_null(p);
    while ((r = fread(buf + n, 1, 65535 - n, p)) > 0)
        n += r;
    pclose(p);
    return buf;
}

static void test_fault_ctl_tool(void **state)
{
    CK_INFO info;
    char *out;

    /* the module's watcher acknowledges while this thread waits in system() */
    assert_int_equal(run("%s do 'fail C_GetInfo CKR_DEVICE_ERROR 1' 'delay C_GetInfo 0'", fx.ctl), 0);
    assert_int_equal(fx.f->C_GetInfo(&info), CKR_DEVICE_ERROR);
    assert_int_equal(fx.f->C_GetInfo(&info), CKR_OK);
    out = output_of("%s get C_GetInfo.failed", fx.ctl);
    assert_int_equal(strtol(out, NULL, 10), state_num("C_GetInfo.failed"));
    free(out);
    assert_int_equal(run("%s do 'remove %lu'", fx.ctl, fx.slot), 0);
    assert_false(slot_listed(CK_TRUE));
    assert_int_equal(run("%s -t 5 wait %s removed", fx.ctl, slot_key("")), 0);
    /* set rewrites: back to defaults */
    assert_int_equal(run("%s set", fx.ctl), 0);
    assert_true(slot_listed(CK_TRUE));
    /* a rejected line fails the command */
    assert_int_equal(run("%s do 'remove nowhere' 2>/dev/null", fx.ctl), 1);
    /* nobody acknowledges a state file no module writes */
    assert_int_equal(run("%s -s %s/nobody -t 1 do 'sync x' 2>/dev/null", fx.ctl, fx.dir), 2);
    assert_int_equal(run("%s -s %s/nobody -n do 'delay C_Sign 0'", fx.ctl, fx.dir), 0);
}

/* The ASan runtime this process runs with, for an uninstrumented child
 * that loads the instrumented p11fault.so ("" without ASan). */
static const char *asan_preload(void)
{
    static char path[512];
    char line[1024];
    FILE *fp = fopen("/proc/self/maps", "r");

    path[0] = '\0';
    while (fp != NULL && path[0] == '\0' && fgets(line, sizeof(line), fp) != NULL) {
        char *p = strchr(line, '/');

        if (p != NULL && strstr(p, "/libasan.so") != NULL) {
            p[strcspn(p, "\n")] = '\0';
            snprintf(path, sizeof(path), "LD_PRELOAD=%s ASAN_OPTIONS=detect_leaks=0", p);
        }
    }
    if (fp != NULL)
        fclose(fp);
    return path;
}

static void test_fault_pkcs11_tool(void **state)
{
    char tool_state[160], path[160], *out;
    const char *pre = asan_preload();
    uint8_t sig[1024];
    size_t len;
    CK_SESSION_HANDLE s;
    FILE *fp;

    /* the tool writes its own state file, not ours */
    snprintf(tool_state, sizeof(tool_state), "%s/state-tool", fx.dir);
    out = output_of("env %s P11FAULT_STATE=%s pkcs11-tool --module %s -L 2>&1", pre, tool_state,
                    fx.p11fault);
    if (strstr(out, TOKEN_LABEL) == NULL)
        fail_msg("pkcs11-tool -L:\n%s", out);
    free(out);
    assert_int_equal(file_num(tool_state, "C_GetTokenInfo.failed"), 0);

    ctl("remove %lu", fx.slot);
    out = output_of("env %s P11FAULT_STATE=%s pkcs11-tool --module %s -L 2>&1", pre, tool_state,
                    fx.p11fault);
    if (strstr(out, TOKEN_LABEL) != NULL || strstr(out, "empty") == NULL)
        fail_msg("pkcs11-tool -L with the card removed:\n%s", out);
    free(out);
    ctl("insert %lu", fx.slot);

    /* pkcs11-tool signs with an always-authenticate key: it logs in again */
    ctl("always-auth rsa2048");
    assert_int_equal(run("printf 'data' >%s/in && env %s P11FAULT_STATE=%s pkcs11-tool --module %s "
                         "--login --pin %s --sign --id 01 -m SHA256-RSA-PKCS "
                         "-i %s/in -o %s/sig >%s/tool.log 2>&1",
                         fx.dir, pre, tool_state, fx.p11fault, USER_PIN, fx.dir, fx.dir, fx.dir),
                     0);
    assert_int_equal(file_num(tool_state, "C_Login"), 2);
    assert_int_equal(file_num(tool_state, "C_Sign"), 1);
    snprintf(path, sizeof(path), "%s/sig", fx.dir);
    fp = fopen(path, "rb");
    assert_non_null(fp);
    len = fread(sig, 1, sizeof(sig), fp);
    fclose(fp);
    assert_int_equal(len, 256);
    s = open_session();
    assert_int_equal(verify_rsa(s, (const uint8_t *)"data", 4, sig, len), 1);
    assert_int_equal(fx.f->C_CloseSession(s), CKR_OK);
}

/* Two threads sign (slowly) while the card is pulled: both see the removal,
 * nothing crashes or leaks (ASan). */
typedef struct signer {
    pthread_t thread;
    CK_SESSION_HANDLE s;
    CK_RV rv;
    int done;
} signer_t;

static void *signer_main(void *arg)
{
    signer_t *g = arg;
    CK_MECHANISM m = { CKM_SHA256_RSA_PKCS, NULL, 0 };
    CK_OBJECT_HANDLE key = find(g->s, CKO_PRIVATE_KEY, "rsa2048");
    uint8_t sig[512];
    CK_ULONG len;

    for (;;) {
        len = sizeof(sig);
        if ((g->rv = fx.f->C_SignInit(g->s, &m, key)) != CKR_OK)
            break;
        if ((g->rv = fx.f->C_Sign(g->s, (CK_BYTE_PTR)msg, sizeof(msg), sig, &len)) != CKR_OK)
            break;
        __atomic_fetch_add(&g->done, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static void test_fault_threads(void **state)
{
    signer_t g[2];
    CK_SESSION_HANDLE s;

    ctl("delay C_Sign 20");
    for (int i = 0; i < 2; i++) {
        memset(&g[i], 0, sizeof(g[i]));
        g[i].s = i == 0 ? open_login() : open_session();
        assert_int_equal(pthread_create(&g[i].thread, NULL, signer_main, &g[i]), 0);
    }
    /* both sign a few times before the card goes */
    for (long deadline = now_ms() + 10000; now_ms() < deadline;) {
        if (__atomic_load_n(&g[0].done, __ATOMIC_RELAXED) >= 3 &&
            __atomic_load_n(&g[1].done, __ATOMIC_RELAXED) >= 3)
            break;
        sleep_ms(10);
    }
    ctl("remove %lu", fx.slot);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(g[i].thread, NULL), 0);
        assert_int_equal(g[i].rv, CKR_DEVICE_REMOVED);
        assert_true(g[i].done >= 3);
    }
    ctl("insert %lu", fx.slot);
    s = open_login();
    sign_ok(s);
    assert_int_equal(fx.f->C_CloseSession(s), CKR_OK);
}

/* ---------------------------------------------------- lies (pkcs11/) */

/* Warnings of the token layer during a case. */
static char warnings[4096];

static void collect_warning(void *data, const char *msg)
{
    size_t n = strlen(warnings);

    snprintf(warnings + n, sizeof(warnings) - n, "%s\n", msg);
}

/* A token layer context on p11fault (the module is already initialised by
 * this process: p11-kit takes CKR_CRYPTOKI_ALREADY_INITIALIZED as success
 * and does not finalise it). Scanned, warnings collected. */
static tok_ctx_t *tok_open(void)
{
    const char *mods[] = { fx.p11fault };
    tok_ctx_t *ctx = NULL;
    char *err = NULL;

    if (tok_ctx_new(mods, 1, &ctx, &err) != TOK_OK)
        fail_msg("tok_ctx_new: %s", err ? err : "?");
    tok_ctx_set_warn(ctx, collect_warning, NULL);
    warnings[0] = '\0';
    assert_int_equal(tok_ctx_scan(ctx), TOK_OK);
    return ctx;
}

static void tok_rescan(tok_ctx_t *ctx)
{
    warnings[0] = '\0';
    assert_int_equal(tok_ctx_scan(ctx), TOK_OK);
}

static const tok_key_t *tok_key(tok_ctx_t *ctx, const char *label)
{
    for (size_t i = 0; i < tok_ctx_n_keys(ctx); i++)
        if (strcmp(tok_ctx_key(ctx, i)->label, label) == 0)
            return tok_ctx_key(ctx, i);
    return NULL;
}

static void tok_login(tok_ctx_t *ctx)
{
    assert_int_equal(tok_ctx_n_tokens(ctx), 1);
    assert_int_equal(tok_token_login(tok_ctx_token(ctx, 0), USER_PIN, strlen(USER_PIN)), TOK_OK);
}

/* Signs a SHA-256 digest with the key; verifies a good signature with the
 * key's SPKI. Returns the tok_sign status, *err its message. */
static int tok_sign_checked(const tok_key_t *k, char **err)
{
    tok_sign_params_t p = { .alg = k->type == TOK_KEY_RSA ? TOK_SIG_RSA_PKCS1 : TOK_SIG_ECDSA,
                            .hash = TOK_HASH_SHA256 };
    uint8_t dgst[32], *sig = NULL;
    size_t sig_len = 0;
    const unsigned char *sp = k->spki;
    EVP_PKEY *pk = d2i_PUBKEY(NULL, &sp, (long)k->spki_len);
    EVP_PKEY_CTX *pctx;
    int r;

    assert_non_null(pk);
    assert_int_equal(EVP_Digest(msg, sizeof(msg), dgst, NULL, EVP_sha256(), NULL), 1);
    *err = NULL;
    r = tok_sign(k, &p, dgst, sizeof(dgst), &sig, &sig_len, err);
    if (r == TOK_OK) {
        pctx = EVP_PKEY_CTX_new(pk, NULL);
        assert_int_equal(EVP_PKEY_verify_init(pctx), 1);
        if (k->type == TOK_KEY_RSA)
            assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING), 1);
        assert_int_equal(EVP_PKEY_CTX_set_signature_md(pctx, EVP_sha256()), 1);
        assert_int_equal(EVP_PKEY_verify(pctx, sig, sig_len, dgst, sizeof(dgst)), 1);
        EVP_PKEY_CTX_free(pctx);
    } else {
        assert_null(sig);
    }
    free(sig);
    EVP_PKEY_free(pk);
    return r;
}

static void test_fault_lie_sig_len(void **state)
{
    tok_ctx_t *ctx = tok_open();
    const char *labels[] = { "rsa2048", "p256" };
    const char *lens[] = { "100000", "4096", "200", "1" };
    char *err = NULL;

    tok_login(ctx);
    for (size_t i = 0; i < 2; i++) {
        const tok_key_t *k = tok_key(ctx, labels[i]);

        assert_non_null(k);
        assert_int_equal(tok_sign_checked(k, &err), TOK_OK);
        free(err);
        /* more than the buffer, or not what the key makes: a device error
         * that names the length, never the bytes behind the buffer */
        for (size_t j = 0; j < sizeof(lens) / sizeof(lens[0]); j++) {
            ctl("lie sig-len %s", lens[j]);
            assert_int_equal(tok_sign_checked(k, &err), TOK_ERR_DEVICE);
            assert_non_null(err);
            if (strstr(err, lens[j]) == NULL || strstr(err, k->uri) == NULL)
                fail_msg("message does not name the length and key: %s", err);
            free(err);
        }
        ctl("lie sig-len off");
        assert_int_equal(tok_sign_checked(k, &err), TOK_OK);
        free(err);
    }
    tok_ctx_free(ctx);
}

/* A certificate for the token's p256 key (CKA_ID 2), from a throwaway CA. */
static CK_OBJECT_HANDLE add_cert(CK_SESSION_HANDLE s)
{
    uint8_t point[100], id = 2;
    CK_ATTRIBUTE a = { CKA_EC_POINT, point, sizeof(point) };
    CK_OBJECT_HANDLE pub = find(s, CKO_PUBLIC_KEY, "p256"), h;
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE ct = CKC_X_509;
    CK_BBOOL yes = CK_TRUE;
    OSSL_PARAM params[3];
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY *ca = EVP_EC_gen("prime256v1"), *pk = NULL;
    X509 *x = X509_new();
    unsigned char *der = NULL, *subj = NULL;
    int der_len, subj_len;

    assert_non_null(ca);
    assert_int_equal(fx.f->C_GetAttributeValue(s, pub, &a, 1), CKR_OK);
    assert_int_equal(point[0], 0x04); /* OCTET STRING around the point */
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point + 2, point[1]);
    params[2] = OSSL_PARAM_construct_end();
    assert_int_equal(EVP_PKEY_fromdata_init(pctx), 1);
    assert_int_equal(EVP_PKEY_fromdata(pctx, &pk, EVP_PKEY_PUBLIC_KEY, params), 1);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)"p256", -1, -1, 0);
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
            { CKA_CLASS, &cls, sizeof(cls) },   { CKA_CERTIFICATE_TYPE, &ct, sizeof(ct) },
            { CKA_TOKEN, &yes, sizeof(yes) },   { CKA_ID, &id, 1 },
            { CKA_LABEL, "p256-cert", 9 },      { CKA_VALUE, der, (CK_ULONG)der_len },
            { CKA_SUBJECT, subj, (CK_ULONG)subj_len },
        };

        assert_int_equal(fx.f->C_CreateObject(s, t, 7, &h), CKR_OK);
    }
    OPENSSL_free(der);
    OPENSSL_free(subj);
    X509_free(x);
    EVP_PKEY_free(pk);
    EVP_PKEY_free(ca);
    EVP_PKEY_CTX_free(pctx);
    return h;
}

/* Expects the scan to skip the lying object with a warning naming the
 * token, the object and the attribute. Its key is then either gone or
 * listed with its true public key from another object (never with the
 * lie); a lie about the certificate leaves the key without one. */
static void expect_skipped(tok_ctx_t *ctx, const char *lie, const char *label, const char *attr,
                           const char *why, bool cert_lie)
{
    const tok_key_t *k = tok_key(ctx, label);
    uint8_t spki[1024];
    size_t spki_len;

    assert_non_null(k);
    assert_true(k->spki_len <= sizeof(spki));
    memcpy(spki, k->spki, k->spki_len);
    spki_len = k->spki_len;
    ctl("%s", lie);
    tok_rescan(ctx);
    k = tok_key(ctx, label);
    if (cert_lie)
        assert_non_null(k);
    if (k != NULL) {
        assert_int_equal(k->spki_len, spki_len);
        assert_memory_equal(k->spki, spki, spki_len);
        if (cert_lie)
            assert_null(k->cert);
    }
    if (strstr(warnings, "token 'p11agent-test'") == NULL || strstr(warnings, attr) == NULL ||
        strstr(warnings, "skipped") == NULL || strstr(warnings, why) == NULL)
        fail_msg("'%s': warnings do not name token, object, %s and '%s':\n%s", lie, attr, why,
                 warnings);
    /* the other keys are untouched */
    assert_non_null(tok_key(ctx, strcmp(label, "rsa2048") == 0 ? "p256" : "rsa2048"));
    ctl("lie off");
    tok_rescan(ctx);
    assert_non_null(tok_key(ctx, label));
    assert_string_equal(warnings, "");
}

static void test_fault_lie_attributes(void **state)
{
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE cert;
    tok_ctx_t *ctx;
    const tok_key_t *k;
    char *err = NULL;

    assert_int_equal(fx.f->C_OpenSession(fx.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                         &s),
                     CKR_OK);
    assert_int_equal(login(s, CKU_USER, USER_PIN), CKR_OK);
    cert = add_cert(s);
    ctx = tok_open();
    tok_login(ctx);
    tok_rescan(ctx);
    assert_string_equal(warnings, "");
    assert_non_null((k = tok_key(ctx, "p256")));
    assert_non_null(k->cert);

    /* a length no honest module gives: nothing that size is allocated */
    expect_skipped(ctx, "lie huge CKA_EC_POINT p256", "p256", "CKA_EC_POINT", "bytes long", false);
    expect_skipped(ctx, "lie huge CKA_MODULUS", "rsa2048", "CKA_MODULUS", "bytes long", false);
    expect_skipped(ctx, "lie huge CKA_LABEL rsa2048", "rsa2048", "CKA_LABEL", "bytes long", false);
    expect_skipped(ctx, "lie huge CKA_ID p256", "p256", "CKA_ID", "bytes long", false);
    expect_skipped(ctx, "lie huge CKA_VALUE p256-cert", "p256", "CKA_VALUE", "bytes long", true);
    /* a second answer longer than the buffer of the first */
    expect_skipped(ctx, "lie grow CKA_MODULUS rsa2048", "rsa2048",
                   "CKA_MODULUS", "returned into", false);
    expect_skipped(ctx, "lie grow CKA_EC_POINT", "p256", "CKA_EC_POINT", "returned into", false);
    expect_skipped(ctx, "lie grow CKA_VALUE", "p256", "CKA_VALUE", "returned into", true);
    /* garbage bytes */
    expect_skipped(ctx, "lie garbage CKA_EC_POINT p256", "p256",
                   "CKA_EC_POINT", "do not make a public key", false);
    expect_skipped(ctx, "lie garbage CKA_EC_PARAMS", "p256",
                   "CKA_EC_PARAMS", "do not make a public key", false);
    expect_skipped(ctx, "lie garbage CKA_MODULUS", "rsa2048",
                   "CKA_MODULUS", "do not make a public key", false);
    expect_skipped(ctx, "lie garbage CKA_VALUE p256-cert", "p256",
                   "CKA_VALUE", "not an X.509", true);

    /* after the lies, the keys sign and verify */
    assert_non_null((k = tok_key(ctx, "p256")));
    assert_non_null(k->cert);
    assert_int_equal(tok_sign_checked(k, &err), TOK_OK);
    free(err);
    assert_int_equal(tok_sign_checked(tok_key(ctx, "rsa2048"), &err), TOK_OK);
    free(err);
    tok_ctx_free(ctx);
    assert_int_equal(fx.f->C_DestroyObject(s, cert), CKR_OK);
    assert_int_equal(fx.f->C_CloseSession(s), CKR_OK);
}

static void test_fault_lie_token_label(void **state)
{
    CK_TOKEN_INFO ti;
    tok_ctx_t *ctx;
    const char *label;
    char *err = NULL;

    ctl("lie token-label token=%s", TOKEN_LABEL);
    /* the lie itself: 32 bytes, no blank, not UTF-8 */
    assert_int_equal(fx.f->C_GetTokenInfo(fx.slot, &ti), CKR_OK);
    assert_int_not_equal(ti.label[31], ' ');
    assert_false(text_utf8_valid((const char *)ti.label, sizeof(ti.label)));
    ctx = tok_open();
    assert_int_equal(tok_ctx_n_tokens(ctx), 1);
    label = tok_token_label(tok_ctx_token(ctx, 0));
    assert_true(text_utf8_valid(label, strlen(label)));
    assert_non_null(strstr(label, "liar"));
    assert_true(text_utf8_valid(tok_token_uri(tok_ctx_token(ctx, 0)),
                                strlen(tok_token_uri(tok_ctx_token(ctx, 0)))));
    /* the keys are there and sign */
    tok_login(ctx);
    tok_rescan(ctx);
    assert_non_null(tok_key(ctx, "p256"));
    assert_int_equal(tok_sign_checked(tok_key(ctx, "p256"), &err), TOK_OK);
    free(err);
    tok_ctx_free(ctx);
    ctl("lie token-label %lu off", fx.slot);
    assert_int_equal(fx.f->C_GetTokenInfo(fx.slot, &ti), CKR_OK);
    assert_memory_equal(ti.label, TOKEN_LABEL, strlen(TOKEN_LABEL));
}

static void test_fault_lie_bad_lines(void **state)
{
    long errors = state_num("control.errors");

    ctl("lie huge CKA_NOTHING");
    ctl("lie sig-len -5");
    ctl("lie frobnicate CKA_LABEL");
    ctl("lie token-label");
    assert_int_equal(state_num("control.errors"), errors + 4);
}

/* ------------------------------------- holds, session limits, the pool */

/* Waits (bounded: 30 s, the machine is shared) until the state file says
 * at least want for key. */
static void wait_state_min(const char *key, long want)
{
    long deadline = now_ms() + 30000;

    while (state_num(key) < want) {
        if (now_ms() > deadline)
            fail_msg("state %s stayed at %ld, expected %ld", key, state_num(key), want);
        sleep_ms(5);
    }
}

static void *raw_signer_main(void *arg)
{
    signer_t *g = arg;
    CK_MECHANISM m = { CKM_SHA256_RSA_PKCS, NULL, 0 };
    CK_OBJECT_HANDLE key = find(g->s, CKO_PRIVATE_KEY, "rsa2048");
    uint8_t sig[512];
    CK_ULONG len = sizeof(sig);

    g->rv = fx.f->C_SignInit(g->s, &m, key);
    if (g->rv == CKR_OK)
        g->rv = fx.f->C_Sign(g->s, (CK_BYTE_PTR)msg, sizeof(msg), sig, &len);
    return NULL;
}

/* `hold` keeps calls in flight until `release`; the state file counts
 * them (inflight, inflight-max, held). */
static void test_fault_hold_inflight(void **state)
{
    signer_t g[3];
    long errors;

    ctl("reset-counters");
    ctl("hold C_Sign");
    for (int i = 0; i < 3; i++) {
        memset(&g[i], 0, sizeof(g[i]));
        g[i].s = i == 0 ? open_login() : open_session();
        assert_int_equal(pthread_create(&g[i].thread, NULL, raw_signer_main, &g[i]), 0);
    }
    wait_state_min("C_Sign.held", 3);
    assert_int_equal(state_num("C_Sign.inflight"), 3);
    assert_int_equal(state_num("C_Sign"), 3);
    ctl("release C_Sign");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pthread_join(g[i].thread, NULL), 0);
        assert_int_equal(g[i].rv, CKR_OK);
    }
    assert_int_equal(state_num("C_Sign.inflight-max"), 3);
    assert_int_equal(state_num("C_Sign.inflight"), 0);
    assert_int_equal(state_num("C_Sign.held"), 0);
    /* a bad slot is a bad line */
    errors = state_num("control.errors");
    ctl("hold C_Sign 999999");
    assert_int_equal(state_num("control.errors"), errors + 1);
    for (int i = 0; i < 3; i++)
        fx.f->C_CloseSession(g[i].s);
}

/* `limit sessions N`: C_OpenSession past N gives CKR_SESSION_COUNT; with
 * `info` the token info says so. */
static void test_fault_limit_sessions(void **state)
{
    CK_SESSION_HANDLE s[3], t;
    CK_TOKEN_INFO ti;

    ctl("limit sessions 2");
    assert_int_equal(fx.f->C_GetTokenInfo(fx.slot, &ti), CKR_OK);
    assert_true(ti.ulMaxSessionCount == CK_EFFECTIVELY_INFINITE || ti.ulMaxSessionCount > 2);
    s[0] = open_session();
    s[1] = open_session();
    assert_int_equal(fx.f->C_OpenSession(fx.slot, CKF_SERIAL_SESSION, NULL, NULL, &s[2]),
                     CKR_SESSION_COUNT);
    assert_int_equal(fx.f->C_CloseSession(s[1]), CKR_OK);
    t = open_session();
    ctl("limit sessions 2 info");
    assert_int_equal(fx.f->C_GetTokenInfo(fx.slot, &ti), CKR_OK);
    assert_int_equal(ti.ulMaxSessionCount, 2);
    ctl("limit sessions off");
    s[2] = open_session();
    fx.f->C_CloseSession(s[0]);
    fx.f->C_CloseSession(s[2]);
    fx.f->C_CloseSession(t);
}

typedef struct pool_signer {
    pthread_t thread;
    const tok_key_t *k;
    int r;
    char *err;
} pool_signer_t;

static void *pool_signer_main(void *arg)
{
    pool_signer_t *g = arg;

    g->r = tok_sign_checked(g->k, &g->err);
    return NULL;
}

/* n threads sign with p256 at once while C_Sign is held; waits until
 * `held` are in C_Sign, then gives the pool a moment to (wrongly) open
 * more, and returns the count in flight then. Joins after the release;
 * every signature must verify. */
static long pool_run(tok_ctx_t *ctx, int n, long held)
{
    pool_signer_t g[16];
    long inflight;

    assert_true(n <= 16);
    ctl("reset-counters");
    ctl("hold C_Sign");
    for (int i = 0; i < n; i++) {
        g[i] = (pool_signer_t){ .k = tok_key(ctx, "p256") };
        assert_non_null(g[i].k);
        assert_int_equal(pthread_create(&g[i].thread, NULL, pool_signer_main, &g[i]), 0);
    }
    wait_state_min("C_Sign.held", held);
    sleep_ms(300); /* not a timing assertion: room for a wrong extra one to show */
    inflight = state_num("C_Sign.inflight");
    ctl("release C_Sign");
    for (int i = 0; i < n; i++) {
        assert_int_equal(pthread_join(g[i].thread, NULL), 0);
        if (g[i].r != TOK_OK)
            fail_msg("signer %d: %s: %s", i, tok_strerror(g[i].r), g[i].err ? g[i].err : "");
        free(g[i].err);
    }
    assert_int_equal(state_num("C_Sign"), n);
    return inflight;
}

/* The pool opens sessions as concurrent signatures need them: all 12 run
 * at once by default, at most the cap when one is set; lowering the cap
 * closes the idle ones past it. */
static void test_fault_pool_grows_to_cap(void **state)
{
    tok_ctx_t *ctx = tok_open();
    tok_token_t *t;

    tok_login(ctx);
    t = tok_ctx_token(ctx, 0);
    assert_int_equal(tok_token_max_sessions(t), 64);
    assert_int_equal(pool_run(ctx, 12, 12), 12);
    assert_int_equal(state_num("C_Sign.inflight-max"), 12);
    assert_true(state_num("sessions") >= 12);

    tok_token_set_max_sessions(t, 5);
    assert_int_equal(tok_token_max_sessions(t), 5);
    assert_true(state_num("sessions") <= 5); /* idle ones past the cap closed */
    assert_int_equal(pool_run(ctx, 12, 5), 5);
    assert_int_equal(state_num("C_Sign.inflight-max"), 5);
    assert_true(state_num("sessions") <= 5);
    tok_ctx_free(ctx);
}

/* A token that allows 3 sessions without saying so answers the 4th
 * C_OpenSession with CKR_SESSION_COUNT: the pool stops growing and the
 * requests wait for its sessions instead of failing. One that says so
 * (ulMaxSessionCount) caps the pool from the start. */
static void test_fault_pool_session_count(void **state)
{
    tok_ctx_t *ctx;

    ctl("limit sessions 3");
    ctx = tok_open();
    tok_login(ctx);
    assert_int_equal(pool_run(ctx, 8, 3), 3);
    assert_int_equal(state_num("C_Sign.inflight-max"), 3);
    assert_true(state_num("C_OpenSession.failed") >= 1);
    assert_true(state_num("sessions") <= 3);
    tok_ctx_free(ctx);

    ctl("limit sessions 2 info");
    ctx = tok_open();
    tok_login(ctx);
    assert_int_equal(tok_token_max_sessions(tok_ctx_token(ctx, 0)), 2);
    tok_token_set_max_sessions(tok_ctx_token(ctx, 0), 10); /* the token's word wins */
    assert_int_equal(tok_token_max_sessions(tok_ctx_token(ctx, 0)), 2);
    ctl("reset-counters");
    assert_int_equal(pool_run(ctx, 6, 2), 2);
    assert_int_equal(state_num("C_OpenSession.failed"), 0);
    tok_ctx_free(ctx);
}

/* A failed signature gives its session back: with a cap of 1, the next
 * signature gets it at once (a lost session would leave it waiting for
 * TOK_ERR_BUSY). */
static void test_fault_pool_session_back_on_error(void **state)
{
    tok_ctx_t *ctx = tok_open();
    char *err = NULL;
    int r;

    tok_login(ctx);
    tok_token_set_max_sessions(tok_ctx_token(ctx, 0), 1);
    for (int i = 0; i < 3; i++) {
        ctl("fail C_Sign CKR_DEVICE_ERROR 1");
        assert_int_equal(tok_sign_checked(tok_key(ctx, "p256"), &err), TOK_ERR_DEVICE);
        assert_non_null(err);
        free(err);
        assert_int_equal(tok_sign_checked(tok_key(ctx, "p256"), &err), TOK_OK);
        free(err);
    }
    /* this one closes the session (its operation may be stuck): its place
     * in the pool frees; closing the last session ended the login */
    ctl("fail C_Sign CKR_OPERATION_ACTIVE 1");
    assert_int_not_equal(tok_sign_checked(tok_key(ctx, "p256"), &err), TOK_OK);
    free(err);
    r = tok_sign_checked(tok_key(ctx, "p256"), &err);
    free(err);
    assert_true(r == TOK_OK || r == TOK_ERR_NOT_LOGGED_IN);
    if (r == TOK_ERR_NOT_LOGGED_IN)
        tok_login(ctx);
    assert_int_equal(tok_sign_checked(tok_key(ctx, "p256"), &err), TOK_OK);
    free(err);
    assert_true(state_num("sessions") <= 1);
    tok_ctx_free(ctx);
}

/* Sessions a burst opened close once idle long enough: all but the one
 * holding the login (and the key copies); the token still signs. */
static void test_fault_pool_trims_idle(void **state)
{
    tok_ctx_t *ctx = tok_open();
    char *err = NULL;
    long open;

    tok_login(ctx);
    assert_int_equal(pool_run(ctx, 8, 8), 8);
    open = state_num("sessions");
    assert_true(open >= 8);
    tok_ctx_trim_sessions(ctx, 3600); /* none idle that long */
    assert_int_equal(state_num("sessions"), open);
    tok_ctx_trim_sessions(ctx, 0);
    assert_true(state_num("sessions") <= 2);
    assert_true(state_num("sessions") >= 1);
    assert_true(tok_token_logged_in(tok_ctx_token(ctx, 0)));
    assert_int_equal(tok_sign_checked(tok_key(ctx, "p256"), &err), TOK_OK);
    free(err);
    /* and grows again */
    assert_int_equal(pool_run(ctx, 6, 6), 6);
    tok_ctx_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup(name, case_setup)
        T(test_fault_forwarding),
        T(test_fault_removal),
        T(test_fault_wait_nonblocking),
        T(test_fault_wait_blocking),
        T(test_fault_pinpad),
        T(test_fault_always_auth),
        T(test_fault_flags),
        T(test_fault_lockout),
        T(test_fault_fail),
        T(test_fault_delay),
        T(test_fault_state_file),
        T(test_fault_control_rules),
        T(test_fault_ctl_tool),
        T(test_fault_pkcs11_tool),
        T(test_fault_threads),
        T(test_fault_lie_sig_len),
        T(test_fault_lie_attributes),
        T(test_fault_lie_token_label),
        T(test_fault_lie_bad_lines),
        T(test_fault_hold_inflight),
        T(test_fault_limit_sessions),
        T(test_fault_pool_grows_to_cap),
        T(test_fault_pool_session_count),
        T(test_fault_pool_session_back_on_error),
        T(test_fault_pool_trims_idle),
        T(test_fault_finalize_wakes_waiter),
        T(test_fault_control_per_call),
#undef T
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
