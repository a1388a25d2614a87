/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * loadsign: a load client for the integration tests (not installed).
 *
 *   loadsign --key URI [--pubkey PEM] [--procs P] [--threads T] [--seconds S]
 *            [--api mixed|pkey|digest] [--max-failures N] [--provider PATH]
 *            [--stop-file PATH]
 *
 * Loads the key through the p11agent provider (an OSSL_LIB_CTX of its own
 * with the default provider and p11agent.so; the agent socket comes from
 * $P11AGENT_SOCKET), then forks P processes that each run T threads signing
 * random digests for S seconds (or until PATH exists), with EVP_PKEY_sign (a digest) and/or
 * EVP_DigestSign (a message). Every signature is verified with the public
 * key under the default provider alone (a second OSSL_LIB_CTX): --pubkey's
 * PEM file, else the key's public half as the provider exports it.
 *
 * The key is loaded in the parent and used in the children, as nginx does
 * (the provider reconnects after fork).
 *
 * Output, one line each (machine-readable, key=value):
 *   loadsign: proc=I pid=N ok=N failed=N verify_failed=N seconds=F rate=R/s
 *   loadsign: error count=N msg="..."         (failures grouped by message)
 *   loadsign: ok=N failed=N verify_failed=N procs_failed=N seconds=F rate=R/s
 * Exit status: 0 if nothing failed to verify, no process died and failed <=
 * --max-failures (default 0); 1 otherwise; 2 on a usage or setup error.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/store.h>
#include <openssl/x509.h>

#define MAX_PROCS 64
#define MAX_THREADS 64
#define MAX_ERRS 8
#define ERR_LEN 256

typedef enum { API_MIXED, API_PKEY, API_DIGEST } api_t;

typedef struct opts {
    const char *key_uri;
    const char *pubkey_path;
    const char *provider_path;
    const char *stop_file;
    unsigned procs, threads;
    double seconds;
    api_t api;
    unsigned long max_failures;
} opts_t;

/* Failures grouped by message. */
typedef struct err_tab {
    unsigned n;
    unsigned long count[MAX_ERRS + 1]; /* last one: "other" */
    char msg[MAX_ERRS][ERR_LEN];
} err_tab_t;

/* What a process reports to the parent, through a pipe. */
typedef struct proc_result {
    unsigned long ok, failed, verify_failed;
    double seconds;
    err_tab_t errs;
} proc_result_t;

typedef struct shared {
    const opts_t *o;
    OSSL_LIB_CTX *sign_ctx, *verify_ctx;
    EVP_PKEY *key;     /* the provider's key (sign_ctx) */
    EVP_PKEY *pub;     /* the public key under the default provider (verify_ctx) */
    bool is_rsa, is_eddsa;
    struct timespec deadline;
    atomic_bool stop;  /* the stop file appeared */
} shared_t;

typedef struct worker {
    pthread_t th;
    shared_t *sh;
    unsigned id;
    unsigned long ok, failed, verify_failed;
    err_tab_t errs;
} worker_t;

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void err_add(err_tab_t *t, const char *msg, unsigned long n)
{
    for (unsigned i = 0; i < t->n; i++) {
        if (strcmp(t->msg[i], msg) == 0) {
            t->count[i] += n;
            return;
        }
    }
    if (t->n < MAX_ERRS) {
        snprintf(t->msg[t->n], ERR_LEN, "%s", msg);
        t->count[t->n++] = n;
    } else {
        t->count[MAX_ERRS] += n;
    }
}

static void err_merge(err_tab_t *into, const err_tab_t *from)
{
    for (unsigned i = 0; i < from->n; i++)
        err_add(into, from->msg[i], from->count[i]);
    into->count[MAX_ERRS] += from->count[MAX_ERRS];
}

/* The OpenSSL error queue as one message (the last error, with its data),
 * without the parts that vary from call to call; clears the queue. */
static void take_error(const char *what, char *out, size_t outlen)
{
    unsigned long e, last = 0;
    const char *data = NULL, *d;
    char buf[1024];
    int flags;

    while ((e = ERR_get_error_all(NULL, NULL, NULL, &d, &flags)) != 0) {
        last = e;
        data = (flags & ERR_TXT_STRING) && d && *d ? d : NULL;
        /* keep the provider's message: it names the cause */
        if (data)
            snprintf(buf, sizeof(buf), "%s: %s: %s", what,
                     ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "?", data);
    }
    if (!data)
        snprintf(buf, sizeof(buf), "%s: %s", what,
                 last && ERR_reason_error_string(last) ? ERR_reason_error_string(last)
                                                       : "no OpenSSL error");
    /* the key's URI is in most messages: shorten it so the cause fits */
    for (char *u = strstr(buf, "pkcs11:"); u; u = strstr(u + 5, "pkcs11:")) {
        char *end = u + strcspn(u, " \n");

        if (end > u + 9 && end[-1] == ':')
            end--;
        memcpy(u, "<uri>", 5);
        memmove(u + 5, end, strlen(end) + 1);
    }
    for (char *p = buf; *p; p++)
        if (*p == '"' || *p == '\n')
            *p = '\'';
    buf[outlen - 1] = '\0'; /* outlen <= sizeof(buf) */
    memcpy(out, buf, strlen(buf) + 1);
}

static bool past(const struct timespec *deadline)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec > deadline->tv_sec ||
           (ts.tv_sec == deadline->tv_sec && ts.tv_nsec >= deadline->tv_nsec);
}

/* Sets RSA-PSS (salt = digest length) on a sign or verify context. */
static int set_rsa_pss(EVP_PKEY_CTX *pctx)
{
    return EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
           EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0;
}

/* EVP_PKEY_sign over a SHA-256 digest; verified with EVP_PKEY_verify.
 * Returns 1 ok, 0 sign failed (errbuf set), -1 verify failed. */
static int one_pkey(shared_t *sh, bool pss, char *errbuf, size_t errlen)
{
    unsigned char dg[32], sig[1024];
    size_t siglen = sizeof(sig);
    EVP_PKEY_CTX *pctx = NULL;
    int r = 0;

    if (RAND_bytes_ex(sh->verify_ctx, dg, sizeof(dg), 0) <= 0) {
        take_error("RAND_bytes", errbuf, errlen);
        return 0;
    }
    pctx = EVP_PKEY_CTX_new_from_pkey(sh->sign_ctx, sh->key, NULL);
    if (!pctx || EVP_PKEY_sign_init(pctx) <= 0 ||
        EVP_PKEY_CTX_set_signature_md(pctx, EVP_sha256()) <= 0 || (pss && !set_rsa_pss(pctx))) {
        take_error("EVP_PKEY_sign_init", errbuf, errlen);
        goto out;
    }
    if (EVP_PKEY_sign(pctx, sig, &siglen, dg, sizeof(dg)) <= 0) {
        take_error("EVP_PKEY_sign", errbuf, errlen);
        goto out;
    }
    EVP_PKEY_CTX_free(pctx);
    pctx = EVP_PKEY_CTX_new_from_pkey(sh->verify_ctx, sh->pub, NULL);
    r = -1;
    if (pctx && EVP_PKEY_verify_init(pctx) > 0 &&
        EVP_PKEY_CTX_set_signature_md(pctx, EVP_sha256()) > 0 && (!pss || set_rsa_pss(pctx)) &&
        EVP_PKEY_verify(pctx, sig, siglen, dg, sizeof(dg)) == 1)
        r = 1;
    ERR_clear_error();
out:
    EVP_PKEY_CTX_free(pctx);
    return r;
}

/* EVP_DigestSign over a random message (SHA-256, none for EdDSA); verified
 * with EVP_DigestVerify. */
static int one_digest(shared_t *sh, bool pss, char *errbuf, size_t errlen)
{
    unsigned char msg[64], sig[1024];
    size_t siglen = sizeof(sig);
    const char *md = sh->is_eddsa ? NULL : "SHA256";
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int r = 0;

    if (!mctx || RAND_bytes_ex(sh->verify_ctx, msg, sizeof(msg), 0) <= 0) {
        take_error("RAND_bytes", errbuf, errlen);
        goto out;
    }
    if (EVP_DigestSignInit_ex(mctx, &pctx, md, sh->sign_ctx, NULL, sh->key, NULL) <= 0 ||
        (pss && !set_rsa_pss(pctx))) {
        take_error("EVP_DigestSignInit", errbuf, errlen);
        goto out;
    }
    if (EVP_DigestSign(mctx, sig, &siglen, msg, sizeof(msg)) <= 0) {
        take_error("EVP_DigestSign", errbuf, errlen);
        goto out;
    }
    EVP_MD_CTX_free(mctx);
    mctx = EVP_MD_CTX_new();
    pctx = NULL;
    r = -1;
    if (mctx &&
        EVP_DigestVerifyInit_ex(mctx, &pctx, md, sh->verify_ctx, NULL, sh->pub, NULL) > 0 &&
        (!pss || set_rsa_pss(pctx)) && EVP_DigestVerify(mctx, sig, siglen, msg, sizeof(msg)) == 1)
        r = 1;
    ERR_clear_error();
out:
    EVP_MD_CTX_free(mctx);
    return r;
}

static void *worker_main(void *data)
{
    worker_t *w = data;
    shared_t *sh = w->sh;
    char errbuf[ERR_LEN];

    for (unsigned long i = w->id; !atomic_load(&sh->stop) && !past(&sh->deadline); i++) {
        bool digest_api;
        int r;

        switch (sh->o->api) {
        case API_PKEY: digest_api = false; break;
        case API_DIGEST: digest_api = true; break;
        default: digest_api = i % 2; break;
        }
        if (sh->is_eddsa)
            digest_api = true; /* EdDSA signs messages only */
        errbuf[0] = '\0';
        /* RSA: PSS, with PKCS#1 v1.5 every fourth signature */
        bool pss = sh->is_rsa && i % 4 != 3;
        r = digest_api ? one_digest(sh, pss, errbuf, sizeof(errbuf))
                       : one_pkey(sh, pss, errbuf, sizeof(errbuf));
        if (r == 1) {
            w->ok++;
        } else if (r < 0) {
            w->verify_failed++;
        } else {
            w->failed++;
            err_add(&w->errs, errbuf, 1);
        }
    }
    return NULL;
}

/* Sets sh->stop once the stop file exists (checked every 20 ms). */
static void *stop_watch(void *data)
{
    shared_t *sh = data;

    while (!atomic_load(&sh->stop) && !past(&sh->deadline) &&
           access(sh->o->stop_file, F_OK) != 0)
        usleep(20000);
    atomic_store(&sh->stop, true);
    return NULL;
}

/* One process: T threads until the deadline (or the stop file). */
static void run_proc(shared_t *sh, proc_result_t *res)
{
    worker_t w[MAX_THREADS];
    unsigned started = 0;
    double t0 = now_s();
    pthread_t watcher;
    bool watching = false;

    memset(res, 0, sizeof(*res));
    memset(w, 0, sizeof(w));
    atomic_init(&sh->stop, false);
    if (sh->o->stop_file)
        watching = pthread_create(&watcher, NULL, stop_watch, sh) == 0;
    for (unsigned i = 0; i < sh->o->threads; i++) {
        w[i].sh = sh;
        w[i].id = i;
        if (pthread_create(&w[i].th, NULL, worker_main, &w[i]) != 0) {
            err_add(&res->errs, "pthread_create failed", 1);
            res->failed++;
            break;
        }
        started++;
    }
    for (unsigned i = 0; i < started; i++) {
        pthread_join(w[i].th, NULL);
        res->ok += w[i].ok;
        res->failed += w[i].failed;
        res->verify_failed += w[i].verify_failed;
        err_merge(&res->errs, &w[i].errs);
    }
    res->seconds = now_s() - t0;
    if (watching) {
        atomic_store(&sh->stop, true);
        pthread_join(watcher, NULL);
    }
}

static void print_errors(const char *prefix, const err_tab_t *t)
{
    for (unsigned i = 0; i < t->n; i++)
        printf("loadsign: %serror count=%lu msg=\"%s\"\n", prefix, t->count[i], t->msg[i]);
    if (t->count[MAX_ERRS])
        printf("loadsign: %serror count=%lu msg=\"(other messages)\"\n", prefix,
               t->count[MAX_ERRS]);
}

static EVP_PKEY *load_key(OSSL_LIB_CTX *ctx, const char *uri)
{
    OSSL_STORE_CTX *st = OSSL_STORE_open_ex(uri, ctx, NULL, NULL, NULL, NULL, NULL, NULL);
    EVP_PKEY *pkey = NULL;

    if (!st)
        return NULL;
    OSSL_STORE_expect(st, OSSL_STORE_INFO_PKEY);
    while (!pkey && !OSSL_STORE_eof(st)) {
        OSSL_STORE_INFO *info = OSSL_STORE_load(st);

        if (info && OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
            pkey = OSSL_STORE_INFO_get1_PKEY(info);
        OSSL_STORE_INFO_free(info);
        if (!info && OSSL_STORE_error(st))
            break;
    }
    OSSL_STORE_close(st);
    return pkey;
}

/* The public key under verify_ctx: from the PEM file, else exported from
 * the provider's key as SubjectPublicKeyInfo. */
static EVP_PKEY *load_pub(OSSL_LIB_CTX *ctx, const char *path, EVP_PKEY *key)
{
    EVP_PKEY *pub = NULL;

    if (path) {
        FILE *f = fopen(path, "r");

        if (!f) {
            fprintf(stderr, "loadsign: %s: %s\n", path, strerror(errno));
            return NULL;
        }
        pub = PEM_read_PUBKEY_ex(f, NULL, NULL, NULL, ctx, NULL);
        fclose(f);
    } else {
        unsigned char *der = NULL;
        const unsigned char *p;
        int len = i2d_PUBKEY(key, &der);

        if (len <= 0)
            return NULL;
        p = der;
        pub = d2i_PUBKEY_ex(NULL, &p, len, ctx, NULL);
        OPENSSL_free(der);
    }
    return pub;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: loadsign --key URI [--pubkey PEM] [--procs P] [--threads T]\n"
               "                [--seconds S] [--api mixed|pkey|digest] [--max-failures N]\n"
               "                [--provider PATH (default $P11AGENT_SO)] [--stop-file PATH]\n");
}

static int parse_opts(int argc, char **argv, opts_t *o)
{
    static const struct option longopts[] = {
        {"key", required_argument, NULL, 'k'},
        {"pubkey", required_argument, NULL, 'P'},
        {"procs", required_argument, NULL, 'p'},
        {"threads", required_argument, NULL, 't'},
        {"seconds", required_argument, NULL, 's'},
        {"api", required_argument, NULL, 'a'},
        {"max-failures", required_argument, NULL, 'm'},
        {"provider", required_argument, NULL, 'v'},
        {"stop-file", required_argument, NULL, 'S'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;

    *o = (opts_t){.procs = 1, .threads = 1, .seconds = 2.0, .api = API_MIXED};
    o->provider_path = getenv("P11AGENT_SO");
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'k': o->key_uri = optarg; break;
        case 'P': o->pubkey_path = optarg; break;
        case 'p': o->procs = (unsigned)strtoul(optarg, NULL, 10); break;
        case 't': o->threads = (unsigned)strtoul(optarg, NULL, 10); break;
        case 's': o->seconds = strtod(optarg, NULL); break;
        case 'm': o->max_failures = strtoul(optarg, NULL, 10); break;
        case 'v': o->provider_path = optarg; break;
        case 'S': o->stop_file = optarg; break;
        case 'a':
            if (strcmp(optarg, "mixed") == 0)
                o->api = API_MIXED;
            else if (strcmp(optarg, "pkey") == 0)
                o->api = API_PKEY;
            else if (strcmp(optarg, "digest") == 0)
                o->api = API_DIGEST;
            else
                return -1;
            break;
        case 'h': usage(stdout); exit(0);
        default: return -1;
        }
    }
    if (optind != argc || !o->key_uri || !o->provider_path || o->procs < 1 ||
        o->procs > MAX_PROCS || o->threads < 1 || o->threads > MAX_THREADS ||
        !(o->seconds > 0))
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    opts_t o;
    shared_t sh = {.o = &o};
    OSSL_PROVIDER *prov_default = NULL, *prov_agent = NULL, *prov_vdefault = NULL;
    pid_t pids[MAX_PROCS];
    int fds[MAX_PROCS];
    proc_result_t total = {0};
    unsigned long procs_failed = 0;
    double max_seconds = 0;
    struct timespec ts;
    int status = 2;

    if (parse_opts(argc, argv, &o) < 0) {
        usage(stderr);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    sh.sign_ctx = OSSL_LIB_CTX_new();
    sh.verify_ctx = OSSL_LIB_CTX_new();
    if (!sh.sign_ctx || !sh.verify_ctx)
        goto setup_err;
    prov_default = OSSL_PROVIDER_load(sh.sign_ctx, "default");
    prov_agent = OSSL_PROVIDER_load(sh.sign_ctx, o.provider_path);
    prov_vdefault = OSSL_PROVIDER_load(sh.verify_ctx, "default");
    if (!prov_default || !prov_agent || !prov_vdefault) {
        fprintf(stderr, "loadsign: cannot load the providers (default, %s)\n", o.provider_path);
        goto setup_err;
    }
    sh.key = load_key(sh.sign_ctx, o.key_uri);
    if (!sh.key) {
        fprintf(stderr, "loadsign: cannot load %s\n", o.key_uri);
        goto setup_err;
    }
    sh.pub = load_pub(sh.verify_ctx, o.pubkey_path, sh.key);
    if (!sh.pub) {
        fprintf(stderr, "loadsign: no public key to verify with\n");
        goto setup_err;
    }
    sh.is_rsa = EVP_PKEY_is_a(sh.pub, "RSA");
    sh.is_eddsa = EVP_PKEY_is_a(sh.pub, "ED25519") || EVP_PKEY_is_a(sh.pub, "ED448");

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)o.seconds;
    ts.tv_nsec += (long)((o.seconds - (double)(time_t)o.seconds) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    sh.deadline = ts;

    fflush(NULL);
    for (unsigned i = 0; i < o.procs; i++) {
        int p[2];

        pids[i] = -1;
        fds[i] = -1;
        if (pipe(p) < 0) {
            perror("loadsign: pipe");
            continue;
        }
        pids[i] = fork();
        if (pids[i] == 0) {
            proc_result_t res;
            ssize_t n;

            /* killing the parent (kill -9 in the tests) takes the children */
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() == 1)
                _exit(3);
            close(p[0]);
            run_proc(&sh, &res);
            printf("loadsign: proc=%u pid=%ld ok=%lu failed=%lu verify_failed=%lu "
                   "seconds=%.2f rate=%.0f/s\n",
                   i, (long)getpid(), res.ok, res.failed, res.verify_failed, res.seconds,
                   res.seconds > 0 ? (double)res.ok / res.seconds : 0.0);
            print_errors("", &res.errs);
            fflush(stdout);
            n = write(p[1], &res, sizeof(res));
            /* No atexit handlers: the parent's inherited state is the parent's. */
            _exit(n == (ssize_t)sizeof(res) ? 0 : 3);
        }
        close(p[1]);
        if (pids[i] < 0) {
            perror("loadsign: fork");
            close(p[0]);
            continue;
        }
        fds[i] = p[0];
    }
    for (unsigned i = 0; i < o.procs; i++) {
        proc_result_t res;
        int st = 0;
        ssize_t n = -1;

        if (fds[i] >= 0) {
            n = read(fds[i], &res, sizeof(res));
            close(fds[i]);
        }
        if (pids[i] > 0)
            waitpid(pids[i], &st, 0);
        if (pids[i] <= 0 || n != (ssize_t)sizeof(res) || !WIFEXITED(st) ||
            WEXITSTATUS(st) != 0) {
            procs_failed++;
            if (pids[i] > 0 && WIFSIGNALED(st))
                printf("loadsign: proc=%u pid=%ld died: signal %d\n", i, (long)pids[i],
                       WTERMSIG(st));
            else
                printf("loadsign: proc=%u pid=%ld gave no result (status %d)\n", i,
                       (long)pids[i], WIFEXITED(st) ? WEXITSTATUS(st) : -1);
            continue;
        }
        total.ok += res.ok;
        total.failed += res.failed;
        total.verify_failed += res.verify_failed;
        err_merge(&total.errs, &res.errs);
        if (res.seconds > max_seconds)
            max_seconds = res.seconds;
    }
    if (o.procs > 1)
        print_errors("total ", &total.errs);
    printf("loadsign: ok=%lu failed=%lu verify_failed=%lu procs_failed=%lu seconds=%.2f "
           "rate=%.0f/s\n",
           total.ok, total.failed, total.verify_failed, procs_failed, max_seconds,
           max_seconds > 0 ? (double)total.ok / max_seconds : 0.0);
    status = total.verify_failed == 0 && procs_failed == 0 && total.failed <= o.max_failures
                     ? 0 : 1;
    goto out;
setup_err:
    ERR_print_errors_fp(stderr);
out:
    EVP_PKEY_free(sh.pub);
    EVP_PKEY_free(sh.key);
    OSSL_PROVIDER_unload(prov_vdefault);
    OSSL_PROVIDER_unload(prov_agent);
    OSSL_PROVIDER_unload(prov_default);
    OSSL_LIB_CTX_free(sh.verify_ctx);
    OSSL_LIB_CTX_free(sh.sign_ctx);
    return status;
}
