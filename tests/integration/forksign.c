/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * forksign: fork and thread safety of a key loaded through p11agent.so.
 *
 *   forksign KEY fork CHILDREN SIGNS
 *       The parent loads KEY and signs once (so it holds a connection to
 *       the agent), then forks CHILDREN children; each child and the parent
 *       sign SIGNS times, at the same time, with the inherited EVP_PKEY.
 *   forksign KEY threads THREADS SIGNS
 *       THREADS threads sign SIGNS times each with one shared EVP_PKEY.
 *
 * KEY is a pkcs11: URI (OSSL_STORE) or a key file such as a key reference
 * (PEM_read_bio_PrivateKey, the path of SSL_CTX_use_PrivateKey_file). The
 * provider comes from $OPENSSL_CONF. Every signature, over a fresh random
 * message, is verified with the key's public half in a separate library
 * context holding only the default provider. Exit status 0 only if every
 * signature was made and verified; the last line says how many.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/store.h>
#include <openssl/x509.h>

static EVP_PKEY *key;          /* the agent's key, default libctx */
static EVP_PKEY *pub;          /* its public half, in verify_ctx */
static OSSL_LIB_CTX *verify_ctx;
static const char *md_name;    /* "SHA256", or NULL for EdDSA */
static int signs;
static atomic_int failures;

static EVP_PKEY *load_key(const char *name)
{
    EVP_PKEY *pk = NULL;

    if (strncmp(name, "pkcs11:", 7) == 0) {
        OSSL_STORE_CTX *st = OSSL_STORE_open(name, NULL, NULL, NULL, NULL);

        while (st != NULL && pk == NULL && !OSSL_STORE_eof(st)) {
            OSSL_STORE_INFO *info = OSSL_STORE_load(st);

            if (info != NULL && OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
                pk = OSSL_STORE_INFO_get1_PKEY(info);
            OSSL_STORE_INFO_free(info);
        }
        OSSL_STORE_close(st);
    } else {
        BIO *b = BIO_new_file(name, "r");

        if (b != NULL)
            pk = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
        BIO_free(b);
    }
    return pk;
}

/* The public half, re-decoded under the default provider alone. */
static EVP_PKEY *public_half(EVP_PKEY *pk)
{
    unsigned char *der = NULL;
    const unsigned char *p;
    EVP_PKEY *out;
    int len = i2d_PUBKEY(pk, &der);

    if (len <= 0)
        return NULL;
    p = der;
    out = d2i_PUBKEY_ex(NULL, &p, len, verify_ctx, NULL);
    OPENSSL_free(der);
    return out;
}

/* One signature over a random message, verified. 1 on success. */
static int sign_one(const char *who, int i)
{
    unsigned char msg[64], sig[1024];
    size_t siglen = sizeof(sig);
    EVP_MD_CTX *s = EVP_MD_CTX_new(), *v = EVP_MD_CTX_new();
    int ok = 0;

    if (s == NULL || v == NULL || RAND_bytes(msg, sizeof(msg)) != 1)
        goto out;
    if (EVP_DigestSignInit_ex(s, NULL, md_name, NULL, NULL, key, NULL) != 1
        || EVP_DigestSign(s, sig, &siglen, msg, sizeof(msg)) != 1) {
        fprintf(stderr, "forksign: %s: signature %d failed\n", who, i);
        ERR_print_errors_fp(stderr);
        goto out;
    }
    if (EVP_DigestVerifyInit_ex(v, NULL, md_name, verify_ctx, NULL, pub, NULL) != 1
        || EVP_DigestVerify(v, sig, siglen, msg, sizeof(msg)) != 1) {
        fprintf(stderr, "forksign: %s: signature %d does not verify\n", who, i);
        ERR_print_errors_fp(stderr);
        goto out;
    }
    ok = 1;
out:
    EVP_MD_CTX_free(s);
    EVP_MD_CTX_free(v);
    return ok;
}

static int sign_many(const char *who)
{
    int bad = 0;

    for (int i = 0; i < signs; i++)
        bad += !sign_one(who, i);
    return bad;
}

static void *thread_main(void *arg)
{
    char who[32];

    snprintf(who, sizeof(who), "thread %d", (int)(intptr_t)arg);
    atomic_fetch_add(&failures, sign_many(who));
    ERR_clear_error();
    return NULL;
}

static int run_fork(int children)
{
    pid_t *pids = calloc((size_t)children, sizeof(*pids));
    int bad = 0;

    if (pids == NULL)
        return 1;
    /* The parent's connection exists before the fork. */
    if (!sign_one("parent before fork", 0)) {
        free(pids);
        return 1;
    }
    for (int c = 0; c < children; c++) {
        pids[c] = fork();
        if (pids[c] < 0) {
            perror("forksign: fork");
            bad++;
            break;
        }
        if (pids[c] == 0) {
            char who[32];

            snprintf(who, sizeof(who), "child %d", c);
            fflush(stderr);
            /* _exit: the child abandons (leaks) the parent's connection
             * object by design; no exit-time leak report for it. */
            _exit(sign_many(who) == 0 ? 0 : 1);
        }
    }
    bad += sign_many("parent");
    for (int c = 0; c < children; c++) {
        int status = 0;

        if (pids[c] <= 0)
            continue;
        if (waitpid(pids[c], &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "forksign: child %d failed (status 0x%x)\n", c, status);
            bad++;
        }
    }
    free(pids);
    if (bad == 0)
        printf("forksign: fork: parent and %d children signed %d times each, all verified\n",
               children, signs);
    return bad != 0;
}

static int run_threads(int n)
{
    pthread_t *t = calloc((size_t)n, sizeof(*t));
    int started = 0;

    if (t == NULL)
        return 1;
    for (; started < n; started++)
        if (pthread_create(&t[started], NULL, thread_main, (void *)(intptr_t)started) != 0)
            break;
    for (int i = 0; i < started; i++)
        pthread_join(t[i], NULL);
    free(t);
    if (started != n || atomic_load(&failures) != 0) {
        fprintf(stderr, "forksign: threads: %d of %d started, %d failures\n", started, n,
                atomic_load(&failures));
        return 1;
    }
    printf("forksign: threads: %d threads signed %d times each on one key, all verified\n", n,
           signs);
    return 0;
}

int main(int argc, char **argv)
{
    OSSL_PROVIDER *dflt = NULL;
    int n, rc = 1;

    if (argc != 5 || (strcmp(argv[2], "fork") != 0 && strcmp(argv[2], "threads") != 0)) {
        fprintf(stderr, "usage: forksign KEY fork CHILDREN SIGNS\n"
                        "       forksign KEY threads THREADS SIGNS\n");
        return 2;
    }
    n = atoi(argv[3]);
    signs = atoi(argv[4]);
    if (n < 1 || n > 64 || signs < 1 || signs > 100000) {
        fprintf(stderr, "forksign: CHILDREN/THREADS 1..64, SIGNS 1..100000\n");
        return 2;
    }
    verify_ctx = OSSL_LIB_CTX_new();
    if (verify_ctx == NULL || (dflt = OSSL_PROVIDER_load(verify_ctx, "default")) == NULL)
        goto out;
    key = load_key(argv[1]);
    if (key == NULL) {
        fprintf(stderr, "forksign: cannot load %s\n", argv[1]);
        ERR_print_errors_fp(stderr);
        goto out;
    }
    pub = public_half(key);
    if (pub == NULL) {
        fprintf(stderr, "forksign: no public key for %s\n", argv[1]);
        ERR_print_errors_fp(stderr);
        goto out;
    }
    if (EVP_PKEY_get0_provider(key) == NULL
        || strcmp(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(key)), "p11agent") != 0) {
        fprintf(stderr, "forksign: %s was not loaded by the p11agent provider\n", argv[1]);
        goto out;
    }
    md_name = EVP_PKEY_is_a(key, "ED25519") || EVP_PKEY_is_a(key, "ED448") ? NULL : "SHA256";
    rc = strcmp(argv[2], "fork") == 0 ? run_fork(n) : run_threads(n);
out:
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key);
    OSSL_PROVIDER_unload(dflt);
    OSSL_LIB_CTX_free(verify_ctx);
    return rc;
}
