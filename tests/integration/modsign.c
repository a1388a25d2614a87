/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * modsign: a PKCS#11 program for test-module.sh that loads a module
 * (p11agent-pkcs11.so), signs with a key found by label and verifies every
 * signature itself with the key's CKA_PUBLIC_KEY_INFO (libcrypto).
 *
 *   modsign MODULE fork LABEL            sign; fork; the child signs on the
 *                                        inherited session without
 *                                        C_Initialize, then initialises again
 *                                        and signs; the parent signs again
 *   modsign MODULE threads LABEL N M     N threads sign M times each
 *   modsign MODULE restart LABEL FILE    sign, print "first", wait until FILE
 *                                        exists, sign again on the same session
 *   modsign MODULE events FILE           slot events: none at first; print
 *                                        "ready", wait for the agent to go
 *                                        (the token's slot reports it); then
 *                                        C_Finalize wakes a blocked waiter
 *   modsign MODULE slots N               C_Initialize and C_GetSlotList N times
 *                                        (prints how many slots, and how long
 *                                        each took: information only)
 *
 * Mechanisms by key type: CKM_SHA256_RSA_PKCS, CKM_ECDSA_SHA256, CKM_EDDSA.
 * Exit 0 when everything worked, 1 with a message on stderr otherwise.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST *f;
static const char *label;

static void fail(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "modsign[%d]: ", (int)getpid());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

#define CHECK(call)                                                                                \
    do {                                                                                           \
        CK_RV rv_ = (call);                                                                        \
        if (rv_ != CKR_OK)                                                                         \
            fail("%s: 0x%lx", #call, rv_);                                                         \
    } while (0)

typedef struct key {
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE h;
    CK_KEY_TYPE type;
    EVP_PKEY *pub;
} key_t_;

static CK_SLOT_ID first_slot(void)
{
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16;

    CHECK(f->C_GetSlotList(CK_TRUE, slots, &n));
    if (n == 0)
        fail("no slot with a token");
    return slots[0];
}

static void open_key(key_t_ *k)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_LABEL, (void *)label, strlen(label)},
    };
    uint8_t spki[4096];
    CK_ATTRIBUTE attrs[] = {
        {CKA_KEY_TYPE, &k->type, sizeof(k->type)},
        {CKA_PUBLIC_KEY_INFO, spki, sizeof(spki)},
    };
    const unsigned char *p = spki;
    CK_ULONG n = 0;

    CHECK(f->C_OpenSession(first_slot(), CKF_SERIAL_SESSION, NULL, NULL, &k->s));
    CHECK(f->C_FindObjectsInit(k->s, tmpl, 2));
    CHECK(f->C_FindObjects(k->s, &k->h, 1, &n));
    CHECK(f->C_FindObjectsFinal(k->s));
    if (n != 1)
        fail("no private key labelled %s", label);
    CHECK(f->C_GetAttributeValue(k->s, k->h, attrs, 2));
    k->pub = d2i_PUBKEY(NULL, &p, (long)attrs[1].ulValueLen);
    if (k->pub == NULL)
        fail("CKA_PUBLIC_KEY_INFO of %s does not parse", label);
}

/* One signature over msg, verified. */
static void sign_verify(key_t_ *k, const char *msg)
{
    CK_MECHANISM mech = {k->type == CKK_RSA ? CKM_SHA256_RSA_PKCS
                         : k->type == CKK_EC ? CKM_ECDSA_SHA256
                                             : CKM_EDDSA,
                         NULL, 0};
    uint8_t sig[1024], der[1024];
    CK_ULONG len = 0;
    const uint8_t *vsig = sig;
    size_t vlen;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok;

    CHECK(f->C_SignInit(k->s, &mech, k->h));
    CHECK(f->C_Sign(k->s, (CK_BYTE_PTR)msg, strlen(msg), NULL, &len));
    if (len == 0 || len > sizeof(sig))
        fail("signature length %lu", len);
    CHECK(f->C_Sign(k->s, (CK_BYTE_PTR)msg, strlen(msg), sig, &len));
    vlen = len;
    if (k->type == CKK_EC) {
        ECDSA_SIG *es = ECDSA_SIG_new();
        uint8_t *q = der;

        ECDSA_SIG_set0(es, BN_bin2bn(sig, (int)len / 2, NULL),
                       BN_bin2bn(sig + len / 2, (int)len / 2, NULL));
        vlen = (size_t)i2d_ECDSA_SIG(es, &q);
        ECDSA_SIG_free(es);
        vsig = der;
    }
    ok = EVP_DigestVerifyInit(md, NULL, k->type == CKK_EC_EDWARDS ? NULL : EVP_sha256(), NULL,
                              k->pub) == 1 &&
         EVP_DigestVerify(md, vsig, vlen, (const uint8_t *)msg, strlen(msg)) == 1;
    EVP_MD_CTX_free(md);
    if (!ok)
        fail("the signature of %s does not verify", label);
}

static void init(void)
{
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};

    CHECK(f->C_Initialize(&args));
}

static int mode_fork(void)
{
    key_t_ k = {0};
    pid_t pid;
    int st;

    init();
    open_key(&k);
    sign_verify(&k, "parent before fork");
    pid = fork();
    if (pid < 0)
        fail("fork");
    if (pid == 0) {
        key_t_ k2 = {0};
        CK_RV rv;

        /* PKCS#11 says a child initialises again; many do not */
        sign_verify(&k, "child, inherited session");
        rv = f->C_Initialize(NULL);
        if (rv != CKR_OK)
            fail("C_Initialize in the child: 0x%lx", rv);
        open_key(&k2);
        sign_verify(&k2, "child after C_Initialize");
        CHECK(f->C_Finalize(NULL));
        EVP_PKEY_free(k2.pub);
        EVP_PKEY_free(k.pub);
        printf("child ok\n");
        exit(0);
    }
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail("the child failed (status 0x%x)", st);
    sign_verify(&k, "parent after fork");
    CHECK(f->C_Finalize(NULL));
    EVP_PKEY_free(k.pub);
    printf("parent ok\n");
    return 0;
}

static int per_thread;

static void *thread_main(void *arg)
{
    key_t_ k = {0};
    char msg[64];

    open_key(&k);
    for (int i = 0; i < per_thread; i++) {
        snprintf(msg, sizeof(msg), "thread %ld message %d", (long)(intptr_t)arg, i);
        sign_verify(&k, msg);
    }
    CHECK(f->C_CloseSession(k.s));
    EVP_PKEY_free(k.pub);
    return NULL;
}

static int mode_threads(int n)
{
    pthread_t t[64];

    if (n < 1 || n > 64 || per_thread < 1)
        fail("bad thread counts");
    init();
    for (int i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, thread_main, (void *)(intptr_t)i) != 0)
            fail("pthread_create");
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    CHECK(f->C_Finalize(NULL));
    printf("%d signatures verified\n", n * per_thread);
    return 0;
}

static void wait_file(const char *path)
{
    for (int i = 0; access(path, F_OK) != 0; i++) {
        if (i > 3000)
            fail("%s did not appear", path);
        usleep(100000);
    }
}

static int mode_restart(const char *go)
{
    key_t_ k = {0};

    init();
    open_key(&k);
    sign_verify(&k, "before the restart");
    printf("first\n");
    fflush(stdout);
    wait_file(go);
    sign_verify(&k, "after the restart");
    CHECK(f->C_Finalize(NULL));
    EVP_PKEY_free(k.pub);
    printf("second\n");
    return 0;
}

static void *waiter_main(void *arg)
{
    CK_SLOT_ID slot;

    *(CK_RV *)arg = f->C_WaitForSlotEvent(0, &slot, NULL);
    return NULL;
}

static int mode_events(const char *gone)
{
    CK_SLOT_ID slot = first_slot(), ev = 99;
    CK_SLOT_INFO si;
    CK_TOKEN_INFO ti;
    CK_RV rv, wrv = CKR_OK;
    pthread_t t;

    rv = f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL);
    if (rv != CKR_NO_EVENT)
        fail("C_WaitForSlotEvent(CKF_DONT_BLOCK) with nothing changed: 0x%lx", rv);
    printf("ready\n");
    fflush(stdout);
    /* the script stops the agent: the token goes */
    CHECK(f->C_WaitForSlotEvent(0, &ev, NULL));
    if (ev != slot)
        fail("event on slot %lu, not %lu", ev, slot);
    CHECK(f->C_GetSlotInfo(slot, &si));
    if (si.flags & CKF_TOKEN_PRESENT)
        fail("the slot still has its token after the event");
    rv = f->C_GetTokenInfo(slot, &ti);
    if (rv != CKR_TOKEN_NOT_PRESENT)
        fail("C_GetTokenInfo on the emptied slot: 0x%lx", rv);
    printf("removed\n");
    fflush(stdout);
    wait_file(gone); /* the agent runs again */
    CHECK(f->C_WaitForSlotEvent(0, &ev, NULL));
    CHECK(f->C_GetSlotInfo(slot, &si));
    if (ev != slot || !(si.flags & CKF_TOKEN_PRESENT))
        fail("the token did not come back in slot %lu (event on %lu)", slot, ev);
    printf("back\n");
    /* a blocked waiter, then C_Finalize: it returns */
    if (pthread_create(&t, NULL, waiter_main, &wrv) != 0)
        fail("pthread_create");
    usleep(300000);
    CHECK(f->C_Finalize(NULL));
    pthread_join(t, NULL);
    if (wrv != CKR_CRYPTOKI_NOT_INITIALIZED)
        fail("the waiter returned 0x%lx after C_Finalize", wrv);
    printf("finalize woke the waiter\n");
    return 0;
}

static int mode_slots(int n)
{
    for (int i = 0; i < n; i++) {
        struct timespec a, b;
        CK_ULONG count = 0;

        clock_gettime(CLOCK_MONOTONIC, &a);
        CHECK(f->C_GetSlotList(CK_FALSE, NULL, &count));
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("C_GetSlotList: %lu slots in %ld ms\n", count,
               (long)((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000));
    }
    CHECK(f->C_Finalize(NULL));
    return 0;
}

int main(int argc, char **argv)
{
    CK_C_GetFunctionList get;
    void *h;

    if (argc < 3)
        fail("usage: modsign MODULE MODE ARGS");
    h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL)
        fail("dlopen %s: %s", argv[1], dlerror());
    get = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList");
    if (get == NULL || get(&f) != CKR_OK)
        fail("no C_GetFunctionList in %s", argv[1]);
    if (strcmp(argv[2], "fork") == 0 && argc == 4) {
        label = argv[3];
        return mode_fork();
    }
    if (strcmp(argv[2], "threads") == 0 && argc == 6) {
        label = argv[3];
        per_thread = atoi(argv[5]);
        return mode_threads(atoi(argv[4]));
    }
    if (strcmp(argv[2], "restart") == 0 && argc == 5) {
        label = argv[3];
        return mode_restart(argv[4]);
    }
    if (strcmp(argv[2], "events") == 0 && argc == 4) {
        init();
        return mode_events(argv[3]);
    }
    if (strcmp(argv[2], "slots") == 0 && argc == 4) {
        init();
        return mode_slots(atoi(argv[3]));
    }
    fail("unknown mode or arguments");
    return 1;
}
