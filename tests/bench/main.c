/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11bench: see README.md, section "Benchmarks", and tests/bench/bench.sh,
 * which makes the tokens, starts the agents and the p11-kit server and
 * sets the P11BENCH_* environment this program reads.
 *
 *   p11bench run [--seconds S] [--rounds N] [--runs N] [--soak N] [--json PATH]
 *                [--mem-socket SOCK]
 *   p11bench worker sign|tls|rtt ARGS...   (started by `run`)
 *
 * Exit status: 0 when every measurement ran and every signature verified
 * (timings never fail the run), 1 otherwise, 2 on bad usage.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "bus.h"
#include "orch.h"

extern char **environ;

static const char *const clients_name[3] = { "1 thread", "2 threads", "2 processes" };

/* --- agent status -------------------------------------------------------- */

static int agent_status(const char *sock, bus_status_t *st, char **err)
{
    DBusConnection *conn = NULL;
    int r = bus_client_connect(sock, &conn, err);

    if (r == BUS_OK)
        r = bus_client_status(conn, BUS_CALL_TIMEOUT_MS, st, err);
    bus_client_close(conn);
    return r;
}

static int64_t agent_signatures(bench_t *b)
{
    bus_status_t st = { 0 };
    char *err = NULL;
    int64_t n = -1;

    if (agent_status(b->socket, &st, &err) == BUS_OK)
        n = (int64_t)st.signatures;
    free(err);
    bus_status_clear(&st);
    return n;
}

/* --- statistics ---------------------------------------------------------- */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

    return x < y ? -1 : x > y;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double pct_u32(const uint32_t *v, size_t n, double p)
{
    size_t i = (size_t)(p / 100.0 * (double)n);

    if (n == 0)
        return NAN;
    return v[i < n ? i : n - 1];
}

/* Results of the rounds of one measurement, added up. */
typedef struct acc {
    uint64_t ops;
    uint64_t ns;
    uint64_t agent_sigs;
    uint64_t cpu_ns;       /* the workers' CPU time */
    int64_t agent_cpu_ns;  /* the agent's (b->cpu_pid), -1: not counted */
    lat_vec_t lat;
    char *error;
} acc_t;

/* One round: nprocs workers with the same arguments, started together.
 * Adds to acc; on failure sets acc->error. */
static int run_round(bench_t *b, char **wargv, int nprocs, bool agent, acc_t *acc,
                     proc_tick_fn tick, void *tick_arg)
{
    proc_t procs[LAT_MAX_PROCS];
    proc_result_t res[LAT_MAX_PROCS] = { 0 };
    char *err = NULL;
    int started = 0, r = -1;
    int64_t before = -1, after;

    if (nprocs < 1 || nprocs > LAT_MAX_PROCS) {
        free(acc->error);
        acc->error = strdup("bad process count");
        return -1;
    }
    uint64_t max_ns = 0, ops = 0, cpu = 0, sigs;
    int64_t agent_cpu0 = -1, agent_cpu1 = -1;

    /* Set up one worker after the other (p11-kit 0.24's server shows 0
     * slots to clients that connect at the same moment), start together. */
    for (; started < nprocs; started++)
        if (proc_start(&procs[started], wargv, &err) < 0
            || proc_wait_ready(&procs[started], &err) < 0) {
            started++;
            goto fail;
        }
    if (agent)
        before = agent_signatures(b);
    if (agent && b->cpu_pid > 0)
        agent_cpu0 = bench_proc_cpu_ns(b->cpu_pid);
    for (int i = 0; i < nprocs; i++)
        proc_go(&procs[i]);
    for (int i = 0; i < nprocs; i++)
        if (proc_result(&procs[i], &res[i], tick, tick_arg, &err) < 0)
            goto fail;
    if (agent_cpu0 >= 0)
        agent_cpu1 = bench_proc_cpu_ns(b->cpu_pid);
    for (int i = 0; i < nprocs; i++)
        if (proc_finish(&procs[i], &err) < 0)
            goto fail;
    started = 0;
    for (int i = 0; i < nprocs; i++) {
        ops += res[i].ops;
        cpu += res[i].cpu_ns;
        if (res[i].elapsed_ns > max_ns)
            max_ns = res[i].elapsed_ns;
        for (size_t j = 0; j < res[i].lat.n; j++)
            if (lat_push(&acc->lat, res[i].lat.v[j]) < 0) {
                err = strdup("out of memory");
                goto fail;
            }
    }
    if (agent) {
        after = agent_signatures(b);
        sigs = before >= 0 && after >= before ? (uint64_t)(after - before) : 0;
        if (before < 0 || after < 0 || sigs < ops) {
            err = bench_strdupf("the agent counted %llu signatures, the clients made %llu",
                                (unsigned long long)sigs, (unsigned long long)ops);
            goto fail;
        }
        acc->agent_sigs += sigs;
    }
    acc->ops += ops;
    acc->ns += max_ns;
    acc->cpu_ns += cpu;
    if (agent_cpu0 >= 0 && agent_cpu1 >= agent_cpu0 && acc->agent_cpu_ns >= 0)
        acc->agent_cpu_ns += agent_cpu1 - agent_cpu0;
    else
        acc->agent_cpu_ns = -1;
    r = 0;
    goto out;
fail:
    for (int i = 0; i < started; i++)
        proc_kill(&procs[i]);
    free(acc->error);
    acc->error = err ? err : strdup("failed");
out:
    for (int i = 0; i < nprocs; i++)
        free(res[i].lat.v);
    return r;
}

/* Turns an accumulator into a row (and frees it). A failure fails the run. */
static void acc_finish(bench_t *b, acc_t *acc, stat_row_t *st)
{
    memset(st, 0, sizeof(*st));
    if (acc->error != NULL) {
        st->error = acc->error;
        b->failed = true;
    } else {
        qsort(acc->lat.v, acc->lat.n, sizeof(*acc->lat.v), cmp_u32);
        st->ok = true;
        st->ops = acc->ops;
        st->agent_sigs = acc->agent_sigs;
        st->seconds = (double)acc->ns / 1e9;
        st->per_s = st->seconds > 0 ? (double)st->ops / st->seconds : 0;
        st->p50_us = pct_u32(acc->lat.v, acc->lat.n, 50) / 1000.0;
        st->p99_us = pct_u32(acc->lat.v, acc->lat.n, 99) / 1000.0;
        st->cpu_us = st->ops > 0 ? (double)acc->cpu_ns / 1e3 / (double)st->ops : NAN;
        st->agent_cpu_us = st->ops > 0 && acc->agent_sigs > 0 && acc->agent_cpu_ns >= 0
                               ? (double)acc->agent_cpu_ns / 1e3 / (double)st->ops
                               : NAN;
    }
    free(acc->lat.v);
    memset(acc, 0, sizeof(*acc));
}

static void run_workers(bench_t *b, char **wargv, int nprocs, bool agent, stat_row_t *st,
                        proc_tick_fn tick, void *tick_arg)
{
    acc_t acc = { 0 };

    run_round(b, wargv, nprocs, agent, &acc, tick, tick_arg);
    acc_finish(b, &acc, st);
}

/* --- 1. signatures -------------------------------------------------------- */

/* Each (key, clients) group runs its methods in turn, b->rounds times, so
 * that load from elsewhere on the machine falls on all of them alike. */
static void section_sign(bench_t *b)
{
    static const bench_alg_t algs[] = { A_RSA_PKCS1, A_RSA_PSS, A_P256, A_ED25519 };
    char secs[32];

    snprintf(secs, sizeof(secs), "%g", b->seconds / b->rounds);
    for (size_t ai = 0; ai < sizeof(algs) / sizeof(algs[0]); ai++) {
        if (b->algs && !strstr(b->algs, bench_alg_name(algs[ai])))
            continue;
        for (int c = 0; c < 3; c++) {
            sign_row_t *rows = &b->sign[b->nsign];
            acc_t acc[M_COUNT] = { 0 };

            if (b->nsign + M_COUNT > MAX_ROWS)
                return;
            b->nsign += M_COUNT;
            for (int m = 0; m < M_COUNT; m++) {
                rows[m].alg = algs[ai];
                rows[m].method = m;
                rows[m].threads = c == 1 ? 2 : 1;
                rows[m].procs = c == 2 ? 2 : 1;
                if ((m == M_P11KIT_TOKEN || m == M_P11KIT_COPY) && b->p11kit_reason != NULL) {
                    rows[m].st.unavailable = true;
                    rows[m].st.error = bench_strdupf("unavailable: %s", b->p11kit_reason);
                }
            }
            fprintf(stderr, "p11bench: sign %s, %s\n", bench_alg_name(algs[ai]), clients_name[c]);
            for (int r = 0; r < b->rounds; r++) {
                for (int m = 0; m < M_COUNT; m++) {
                    char *wargv[] = { (char *)b->self, "worker", "sign", "--method",
                                      (char *)bench_method_name(m), "--alg",
                                      (char *)bench_alg_name(algs[ai]), "--threads",
                                      c == 1 ? "2" : "1", "--seconds", secs, NULL };

                    if (rows[m].st.unavailable || acc[m].error != NULL)
                        continue;
                    run_round(b, wargv, rows[m].procs,
                              m == M_AGENT || m == M_AGENT_DBUS || m == M_AGENT_BUS,
                              &acc[m], NULL, NULL);
                }
            }
            for (int m = 0; m < M_COUNT; m++) {
                if (rows[m].st.unavailable)
                    continue;
                if ((m == M_P11KIT_TOKEN || m == M_P11KIT_COPY) && acc[m].error != NULL
                    && strstr(acc[m].error, "C_SignInit failed: CKR 0x70") != NULL) {
                    /* not ours to fix: say so instead of failing */
                    free(acc[m].error);
                    acc[m].error = NULL;
                    free(acc[m].lat.v);
                    rows[m].st.error = strdup("unavailable: p11-kit 0.24 remoting rejects this "
                                              "mechanism (C_SignInit: CKR_MECHANISM_INVALID)");
                    rows[m].st.unavailable = true;
                    continue;
                }
                acc_finish(b, &acc[m], &rows[m].st);
            }
        }
    }
}

static void section_rtt(bench_t *b)
{
    char secs[32];
    char *wargv[] = { (char *)b->self, "worker", "rtt", "--seconds", secs, NULL };

    snprintf(secs, sizeof(secs), "%g", b->seconds);
    fprintf(stderr, "p11bench: D-Bus round trips\n");
    run_workers(b, wargv, 1, false, &b->rtt[0], NULL, NULL);
    run_workers(b, wargv, 2, false, &b->rtt[1], NULL, NULL);
}

/* --- 2. fresh processes --------------------------------------------------- */

/* environ with OPENSSL_CONF replaced by cnf; static storage, rebuilt per call. */
static char **env_with_cnf(const char *cnf)
{
    static char *envp[512];
    static char conf[4096];
    int n = 0;

    for (char **e = environ; *e != NULL && n < 510; e++)
        if (strncmp(*e, "OPENSSL_CONF=", 13) != 0)
            envp[n++] = *e;
    snprintf(conf, sizeof(conf), "OPENSSL_CONF=%s", cnf);
    envp[n++] = conf;
    envp[n] = NULL;
    return envp;
}

typedef struct timed {
    time_row_t *row;
    double *ms;
} timed_t;

static void time_finish(time_row_t *row, double *ms, int n)
{
    row->runs = n;
    if (n == 0)
        return;
    qsort(ms, (size_t)n, sizeof(*ms), cmp_double);
    row->min_ms = ms[0];
    row->median_ms = n % 2 ? ms[n / 2] : (ms[n / 2 - 1] + ms[n / 2]) / 2;
    row->p90_ms = ms[(n * 9) / 10 < n ? (n * 9) / 10 : n - 1];
}

static void section_first(bench_t *b)
{
    static const struct {
        const char *method, *alg, *name;
    } v[] = {
        { "none", NULL, "process start only (no key, no signature)" },
        { "agent", "p256", "agent: start + load provider + key + 1st signature, P-256" },
        { "direct-token", "p256", "module in-process: start + init + login + find + 1st sign, P-256" },
        { "agent", "rsa2048-pss", "agent: ... RSA-2048 PSS" },
        { "direct-token", "rsa2048-pss", "module in-process: ... RSA-2048 PSS" },
    };
    enum { NV = sizeof(v) / sizeof(v[0]) };
    double *ms[NV], *ph[NV][BENCH_MAX_PHASES];
    int n[NV] = { 0 };
    char **envp = env_with_cnf("/dev/null");

    fprintf(stderr, "p11bench: fresh processes, first signature (%d runs each)\n", b->runs);
    for (int i = 0; i < NV; i++) {
        ms[i] = calloc((size_t)b->runs, sizeof(double));
        for (int k = 0; k < BENCH_MAX_PHASES; k++)
            ph[i][k] = calloc((size_t)b->runs, sizeof(double));
    }
    for (int r = 0; r < b->runs; r++) {
        for (int i = 0; i < NV; i++) {
            time_row_t *row = &b->times[b->ntimes + i];
            char *argv[] = { (char *)b->first_exe, (char *)v[i].method, (char *)v[i].alg, NULL };
            char out[1024], *err = NULL, *line;
            uint64_t t0, wall;
            unsigned long long done, t;
            char name[16];
            int k = 0;

            if (run_cmd(argv, envp, &t0, &wall, out, sizeof(out), &err) < 0
                || sscanf(out, "%llu", &done) != 1 || done < t0) {
                if (row->error == NULL)
                    row->error = err ? err : strdup("no time printed");
                b->failed = true;
                continue;
            }
            for (line = strchr(out, '\n'); line != NULL && k < BENCH_MAX_PHASES;
                 line = strchr(line + 1, '\n')) {
                if (sscanf(line + 1, "phase %15s %llu", name, &t) != 2 || t < t0)
                    continue;
                snprintf(row->phase_name[k], sizeof(row->phase_name[k]), "%s", name);
                ph[i][k++][n[i]] = (double)(t - t0) / 1e6;
            }
            row->nphases = k;
            ms[i][n[i]++] = (double)(done - t0) / 1e6;
        }
    }
    for (int i = 0; i < NV; i++) {
        time_row_t *row = &b->times[b->ntimes + i];

        row->name = v[i].method;
        row->detail = v[i].name;
        time_finish(row, ms[i], n[i]);
        for (int k = 0; k < row->nphases; k++) {
            time_row_t tmp = { 0 };

            time_finish(&tmp, ph[i][k], n[i]);
            row->phase_ms[k] = tmp.median_ms;
        }
        free(ms[i]);
        for (int k = 0; k < BENCH_MAX_PHASES; k++)
            free(ph[i][k]);
    }
    b->times[b->ntimes + 0].name = "first:none";
    b->times[b->ntimes + 1].name = "first:agent:p256";
    b->times[b->ntimes + 2].name = "first:module:p256";
    b->times[b->ntimes + 3].name = "first:agent:rsa2048";
    b->times[b->ntimes + 4].name = "first:module:rsa2048";
    b->ntimes += NV;
}

/* Verifies a DER ECDSA signature file over digest with a public key file. */
static int verify_file_sig(const char *pubpem, bool is_private, const uint8_t *digest,
                           const char *sigpath, char **err)
{
    FILE *f = fopen(pubpem, "r");
    EVP_PKEY *pk = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    size_t len = 0;
    char *sig = bench_read_file(sigpath, &len);
    int ok = 0;

    if (f != NULL) {
        pk = is_private ? PEM_read_PrivateKey(f, NULL, NULL, NULL)
                        : PEM_read_PUBKEY(f, NULL, NULL, NULL);
        fclose(f);
    }
    ctx = pk ? EVP_PKEY_CTX_new(pk, NULL) : NULL;
    ok = sig != NULL && ctx != NULL && EVP_PKEY_verify_init(ctx) == 1
         && EVP_PKEY_verify(ctx, (uint8_t *)sig, len, digest, 32) == 1;
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pk);
    free(sig);
    if (!ok)
        *err = bench_strdupf("%s does not verify with %s", sigpath, pubpem);
    return ok ? 0 : -1;
}

static void section_pkeyutl(bench_t *b)
{
    char *uri = bench_strdupf("pkcs11:token=%s;object=p256;type=private", b->cfg.token);
    char *soft = bench_strdupf("%s/soft/p256.key", b->cfg.dir);
    char *pub = bench_strdupf("%s/pub/p256.pem", b->cfg.dir);
    char *in = bench_strdupf("%s/bench-digest.bin", b->cfg.dir);
    char *out = bench_strdupf("%s/bench-sig.bin", b->cfg.dir);
    const struct {
        const char *name, *detail, *key, *cnf;
    } v[] = {
        { "pkeyutl:agent", "openssl pkeyutl -sign, P-256 agent key (pkcs11: URI)", uri, b->cnf },
        { "pkeyutl:soft", "openssl pkeyutl -sign, P-256 software key, no provider configured",
          soft, "/dev/null" },
        { "pkeyutl:soft+cnf", "openssl pkeyutl -sign, P-256 software key, p11agent configured",
          soft, b->cnf },
    };
    enum { NV = sizeof(v) / sizeof(v[0]) };
    uint8_t digest[32];
    double *ms[NV];
    int n[NV] = { 0 };
    FILE *f = fopen(in, "wb");

    fprintf(stderr, "p11bench: openssl pkeyutl -sign (%d runs each)\n", b->runs);
    for (int i = 0; i < 32; i++)
        digest[i] = (uint8_t)(i * 7 + 1);
    if (f == NULL || fwrite(digest, 1, 32, f) != 32) {
        b->times[b->ntimes].error = bench_strdupf("cannot write %s", in);
        b->failed = true;
    }
    if (f != NULL)
        fclose(f);
    for (int i = 0; i < NV; i++)
        ms[i] = calloc((size_t)b->runs, sizeof(double));
    for (int r = 0; r < b->runs; r++) {
        for (int i = 0; i < NV; i++) {
            char *argv[] = { (char *)b->openssl, "pkeyutl", "-sign", "-inkey", (char *)v[i].key,
                             "-in", in, "-out", out, NULL };
            char *err = NULL;
            uint64_t t0, wall;

            unlink(out);
            if (run_cmd(argv, env_with_cnf(v[i].cnf), &t0, &wall, NULL, 0, &err) < 0
                || verify_file_sig(i == 0 ? pub : soft, i != 0, digest, out, &err) < 0) {
                if (b->times[b->ntimes + i].error == NULL)
                    b->times[b->ntimes + i].error = err;
                else
                    free(err);
                b->failed = true;
                continue;
            }
            ms[i][n[i]++] = (double)wall / 1e6;
        }
    }
    for (int i = 0; i < NV; i++) {
        time_row_t *row = &b->times[b->ntimes + i];

        row->name = v[i].name;
        row->detail = v[i].detail;
        time_finish(row, ms[i], n[i]);
        free(ms[i]);
    }
    b->ntimes += NV;
    free(uri);
    free(soft);
    free(pub);
    free(in);
    free(out);
}

/* --- 3. mTLS -------------------------------------------------------------- */

static void section_tls(bench_t *b)
{
    static const char *const protos[] = { "1.3", "1.2" };
    static const char *const keys[] = { "p256", "rsa2048" };
    /* The software key again with p11agent.so loaded in the same library
     * context: what a process pays for the provider's mere presence
     * (certificate decoding sees its keymgmt and decoders). */
    static const char *const sources[] = { "agent", "software", "soft+p11agent" };
    static const char *const worker_sources[] = { "agent", "soft", "softp" };
    enum { NSRC = sizeof(sources) / sizeof(sources[0]) };
    char secs[32];

    snprintf(secs, sizeof(secs), "%g", b->seconds / b->rounds);
    for (int p = 0; p < 2; p++)
        for (int k = 0; k < 2; k++) {
            tls_row_t *rows = &b->tls[b->ntls];
            acc_t acc[NSRC] = { 0 };

            b->ntls += NSRC;
            fprintf(stderr, "p11bench: mTLS TLS %s %s\n", protos[p], keys[k]);
            for (int r = 0; r < b->rounds; r++)
                for (int s = 0; s < NSRC; s++) {
                    char *wargv[] = { (char *)b->self, "worker", "tls", "--proto",
                                      (char *)protos[p], "--key", (char *)keys[k], "--source",
                                      (char *)worker_sources[s], "--seconds", secs, NULL };

                    if (acc[s].error == NULL)
                        run_round(b, wargv, 1, s == 0, &acc[s], NULL, NULL);
                }
            for (int s = 0; s < NSRC; s++) {
                rows[s].proto = protos[p];
                rows[s].key = keys[k];
                rows[s].source = sources[s];
                acc_finish(b, &acc[s], &rows[s].st);
            }
        }
}

/* --- 4. memory ------------------------------------------------------------ */

static int many_keys(bench_t *b, char **err)
{
    DBusConnection *conn = NULL;
    bus_key_info_t *keys = NULL;
    bus_status_t st = { 0 };
    size_t n = 0;
    char *tokens[64];
    int ntok = 0, r;
    bus_sign_params_t p = { .alg = BUS_SIG_ECDSA, .hash = "sha256" };
    uint8_t digest[32];

    memset(digest, 0x5a, sizeof(digest));
    r = bus_client_connect(b->mem_socket, &conn, err);
    if (r == BUS_OK)
        r = bus_client_list_keys(conn, BUS_CALL_TIMEOUT_MS, &keys, &n, err);
    for (size_t i = 0; r == BUS_OK && i < n; i++) {
        uint8_t *sig = NULL;
        size_t siglen = 0;
        const uint8_t *q = keys[i].spki;
        EVP_PKEY *pk = d2i_PUBKEY(NULL, &q, (long)keys[i].spki_len);
        EVP_PKEY_CTX *ctx = pk ? EVP_PKEY_CTX_new(pk, NULL) : NULL;
        int seen = 0;

        r = bus_client_sign(conn, keys[i].uri, &p, digest, sizeof(digest), BUS_CALL_TIMEOUT_MS,
                            &sig, &siglen, err);
        if (r == BUS_OK
            && (ctx == NULL || EVP_PKEY_verify_init(ctx) != 1
                || EVP_PKEY_verify(ctx, sig, siglen, digest, sizeof(digest)) != 1)) {
            *err = bench_strdupf("signature by %s does not verify", keys[i].uri);
            r = BUS_ERR_FAILED;
        }
        for (int t = 0; t < ntok; t++)
            seen |= strcmp(tokens[t], keys[i].token) == 0;
        if (!seen && ntok < 64)
            tokens[ntok++] = keys[i].token;
        free(sig);
        EVP_PKEY_CTX_free(ctx);
        EVP_PKEY_free(pk);
    }
    if (r == BUS_OK)
        r = bus_client_status(conn, BUS_CALL_TIMEOUT_MS, &st, err);
    if (r == BUS_OK) {
        b->many_keys = (int)n;
        b->many_tokens = ntok;
        b->many_rss_kib = bench_rss_kib((int)st.pid);
        b->many_anon_kib = bench_status_kib((int)st.pid, "RssAnon");
        b->many_file_kib = bench_status_kib((int)st.pid, "RssFile");
        b->many_pss_kib = bench_pss_kib((int)st.pid);
        if (b->many_rss_kib < 0) {
            *err = bench_strdupf("cannot read VmRSS of pid %u", st.pid);
            r = BUS_ERR_FAILED;
        }
    }
    bus_status_clear(&st);
    bus_key_info_free_array(keys, n);
    bus_client_close(conn);
    return r == BUS_OK ? 0 : -1;
}

static void soak_tick(void *arg)
{
    bench_t *b = arg;

    if (b->nsoak_samples < MAX_SAMPLES)
        b->soak_samples[b->nsoak_samples++] = bench_rss_kib(b->agent_pid);
}

static void section_memory(bench_t *b)
{
    char *err = NULL;

    if (b->mem_socket != NULL) {
        fprintf(stderr, "p11bench: agent with many keys\n");
        if (many_keys(b, &err) < 0) {
            b->many_error = err ? err : strdup("failed");
            b->failed = true;
        }
    }
    if (b->soak > 0) {
        char count[32];
        char *wargv[] = { (char *)b->self, "worker", "sign", "--method", "agent", "--alg",
                          "p256", "--threads", "2", "--count", count, NULL };
        stat_row_t st;

        /* warm up the agent's allocator and caches first */
        snprintf(count, sizeof(count), "%ld", b->soak / 20 > 20000 ? 20000 : b->soak / 20 + 1);
        fprintf(stderr, "p11bench: soak: %ld P-256 signatures, 2 threads\n", b->soak);
        run_workers(b, wargv, 1, true, &st, NULL, NULL);
        if (!st.ok) {
            b->soak_error = st.error;
            return;
        }
        b->rss_before_soak_kib = bench_rss_kib(b->agent_pid);
        snprintf(count, sizeof(count), "%ld", b->soak);
        run_workers(b, wargv, 1, true, &st, soak_tick, b);
        b->rss_after_soak_kib = bench_rss_kib(b->agent_pid);
        if (!st.ok) {
            b->soak_error = st.error;
            return;
        }
        b->soak_done = (long)st.ops;
        b->soak_per_s = st.per_s;
    }
}

/* --- 5. latency-bound token ---------------------------------------------- */

/* Sets an environment variable for the workers started next; returns the
 * old value (malloc'd, NULL if unset) for env_restore. */
static char *env_swap(const char *name, const char *value)
{
    const char *old = getenv(name);
    char *saved = old != NULL ? strdup(old) : NULL;

    setenv(name, value, 1);
    return saved;
}

static void env_restore(const char *name, char *saved)
{
    if (saved != NULL)
        setenv(name, saved, 1);
    else
        unsetenv(name);
    free(saved);
}

/* Sets the delay of every C_Sign in p11fault's control file (a rewrite by
 * rename: the agent's p11fault.so applies it at its next call, new workers
 * at their C_Initialize). */
static int lat_set_delay(const bench_t *b, int ms)
{
    char *tmp = bench_strdupf("%s.tmp", b->lat_control);
    FILE *f = tmp ? fopen(tmp, "w") : NULL;
    int r = -1;

    if (f != NULL) {
        fprintf(f, "delay C_Sign %d\n", ms);
        if (fclose(f) == 0 && rename(tmp, b->lat_control) == 0)
            r = 0;
    }
    free(tmp);
    if (r == 0)
        usleep(200 * 1000); /* p11fault's watcher looks every 50 ms */
    return r;
}

/* A network HSM: every C_Sign takes lat_delay_ms (p11fault.so) but many run
 * at once. 16 and 64 clients sign P-256 through the agent serving
 * p11fault.so (agent: the provider; agent-bus: one connection per thread)
 * and in-process through p11fault.so (direct-copy), in the same shapes
 * (processes x threads), interleaved in rounds. With lat_control, the 64
 * clients again at lat_long_delay_ms: at 5 ms, 64 clients ask 12,800
 * signatures a second of the token, more than a 2-CPU machine signs even
 * in-process, and then the CPU per signature, not the token, sets both
 * rates; the longer delay keeps the token the bound. */
static void section_latency(bench_t *b)
{
    struct {
        int procs, threads, delay_ms;
    } shapes[] = { { 4, 4, b->lat_delay_ms }, { 8, 8, b->lat_delay_ms },
                   { 8, 8, b->lat_long_delay_ms } };
    size_t nshapes = b->lat_control != NULL && b->lat_long_delay_ms > 0
                             && b->lat_long_delay_ms != b->lat_delay_ms
                         ? 3
                         : 2;
    static const bench_method_t methods[] = { M_AGENT, M_AGENT_BUS, M_DIRECT_COPY };
    enum { NM = sizeof(methods) / sizeof(methods[0]) };
    const char *main_socket = b->socket;
    int main_cpu_pid = b->cpu_pid;
    char *old_sock, *old_mod, *err = NULL;
    char secs[32];
    bus_status_t st = { 0 };

    snprintf(secs, sizeof(secs), "%g", b->seconds / b->rounds);
    if (b->lat_socket == NULL || b->lat_module == NULL) {
        for (size_t si = 0; si < nshapes; si++)
            for (int m = 0; m < NM; m++) {
                lat_row_t *row = &b->lat[b->nlat++];

                row->method = methods[m];
                row->procs = shapes[si].procs;
                row->threads = shapes[si].threads;
                row->delay_ms = shapes[si].delay_ms;
                row->st.unavailable = true;
                row->st.error = bench_strdupf("unavailable: %s",
                                              b->lat_reason ? b->lat_reason : "no p11fault.so");
            }
        return;
    }
    /* workers inherit the environment: the slow agent, p11fault.so */
    old_sock = env_swap("P11AGENT_SOCKET", b->lat_socket);
    old_mod = env_swap("P11BENCH_MODULE", b->lat_module);
    b->socket = b->lat_socket;
    b->cpu_pid = agent_status(b->lat_socket, &st, &err) == BUS_OK ? (int)st.pid : 0;
    bus_status_clear(&st);
    free(err);
    for (size_t si = 0; si < nshapes; si++) {
        lat_row_t *rows = &b->lat[b->nlat];
        acc_t acc[NM] = { 0 };
        char threads[16];

        if (shapes[si].delay_ms != b->lat_delay_ms && lat_set_delay(b, shapes[si].delay_ms) < 0)
            for (int m = 0; m < NM; m++)
                acc[m].error = bench_strdupf("cannot write %s: %s", b->lat_control,
                                             strerror(errno));
        snprintf(threads, sizeof(threads), "%d", shapes[si].threads);
        b->nlat += NM;
        fprintf(stderr, "p11bench: latency-bound token (C_Sign +%d ms), %d clients (%d processes x "
                        "%d threads)\n", shapes[si].delay_ms,
                shapes[si].procs * shapes[si].threads, shapes[si].procs, shapes[si].threads);
        for (int r = 0; r < b->rounds; r++)
            for (int m = 0; m < NM; m++) {
                char *wargv[] = { (char *)b->self, "worker", "sign", "--method",
                                  (char *)bench_method_name(methods[m]), "--alg", "p256",
                                  "--threads", threads, "--seconds", secs, NULL };

                if (acc[m].error == NULL)
                    run_round(b, wargv, shapes[si].procs,
                              methods[m] == M_AGENT || methods[m] == M_AGENT_BUS, &acc[m], NULL,
                              NULL);
            }
        for (int m = 0; m < NM; m++) {
            rows[m].method = methods[m];
            rows[m].procs = shapes[si].procs;
            rows[m].threads = shapes[si].threads;
            rows[m].delay_ms = shapes[si].delay_ms;
            acc_finish(b, &acc[m], &rows[m].st);
        }
        if (shapes[si].delay_ms != b->lat_delay_ms && lat_set_delay(b, b->lat_delay_ms) < 0) {
            fprintf(stderr, "p11bench: cannot restore %s: %s\n", b->lat_control,
                    strerror(errno));
            b->failed = true;
        }
    }
    b->socket = main_socket;
    b->cpu_pid = main_cpu_pid;
    env_restore("P11AGENT_SOCKET", old_sock);
    env_restore("P11BENCH_MODULE", old_mod);
}

/* --- main ----------------------------------------------------------------- */

static double loadavg(void)
{
    FILE *f = fopen("/proc/loadavg", "r");
    double l = -1;

    if (f != NULL) {
        if (fscanf(f, "%lf", &l) != 1)
            l = -1;
        fclose(f);
    }
    return l;
}

static int usage(void)
{
    fprintf(stderr, "usage: p11bench run [--seconds S] [--rounds N] [--runs N] [--soak N] "
                    "[--json PATH] [--mem-socket SOCK]\n"
                    "                    [--latency-socket SOCK --latency-module P11FAULT_SO "
                    "--latency-delay MS [--latency-control PATH --latency-long-delay MS]\n"
                    "                     [--latency-max-sessions N] | --latency-unavailable WHY]\n"
                    "                    [--algs rsa2048-pkcs1,rsa2048-pss,p256,ed25519] [--only latency|sign|fresh|tls]\n"
                    "       p11bench worker sign|tls|rtt ARGS...\n");
    return 2;
}

static char *self_exe(void)
{
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);

    if (n <= 0)
        return NULL;
    buf[n] = '\0';
    return strdup(buf);
}

int main(int argc, char **argv)
{
    static bench_t bench;
    bench_t *b = &bench;
    bus_status_t st = { 0 };
    char *err = NULL;

    if (argc >= 3 && strcmp(argv[1], "worker") == 0) {
        if (strcmp(argv[2], "sign") == 0)
            return worker_sign(argc - 3, argv + 3);
        if (strcmp(argv[2], "tls") == 0)
            return worker_tls(argc - 3, argv + 3);
        if (strcmp(argv[2], "rtt") == 0)
            return worker_rtt(argc - 3, argv + 3);
        return usage();
    }
    if (argc < 2 || strcmp(argv[1], "run") != 0)
        return usage();
    b->seconds = 3;
    b->runs = 30;
    b->rounds = 3;
    b->soak = 0;
    for (int i = 2; i < argc; i++) {
        if (i + 1 >= argc)
            return usage();
        if (strcmp(argv[i], "--seconds") == 0)
            b->seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--rounds") == 0)
            b->rounds = atoi(argv[++i]);
        else if (strcmp(argv[i], "--runs") == 0)
            b->runs = atoi(argv[++i]);
        else if (strcmp(argv[i], "--soak") == 0)
            b->soak = atol(argv[++i]);
        else if (strcmp(argv[i], "--json") == 0)
            b->json_path = argv[++i];
        else if (strcmp(argv[i], "--mem-socket") == 0)
            b->mem_socket = argv[++i];
        else if (strcmp(argv[i], "--algs") == 0)
            b->algs = argv[++i];
        else if (strcmp(argv[i], "--only") == 0 && strcmp(argv[i + 1], "sign") == 0)
            b->sign_only = ++i > 0;
        else if (strcmp(argv[i], "--latency-socket") == 0)
            b->lat_socket = argv[++i];
        else if (strcmp(argv[i], "--latency-module") == 0)
            b->lat_module = argv[++i];
        else if (strcmp(argv[i], "--latency-delay") == 0)
            b->lat_delay_ms = atoi(argv[++i]);
        else if (strcmp(argv[i], "--latency-control") == 0)
            b->lat_control = argv[++i];
        else if (strcmp(argv[i], "--latency-long-delay") == 0)
            b->lat_long_delay_ms = atoi(argv[++i]);
        else if (strcmp(argv[i], "--latency-max-sessions") == 0)
            b->lat_max_sessions = atoi(argv[++i]);
        else if (strcmp(argv[i], "--latency-unavailable") == 0)
            b->lat_reason = argv[++i];
        else if (strcmp(argv[i], "--only") == 0 && strcmp(argv[i + 1], "latency") == 0)
            b->only_latency = ++i > 0;
        else if (strcmp(argv[i], "--only") == 0 && strcmp(argv[i + 1], "fresh") == 0)
            b->only_fresh = ++i > 0;
        else if (strcmp(argv[i], "--only") == 0 && strcmp(argv[i + 1], "tls") == 0)
            b->only_tls = ++i > 0;
        else
            return usage();
    }
    if (b->seconds <= 0 || b->runs < 1 || b->rounds < 1)
        return usage();
    if (bench_cfg_load(&b->cfg, &err) < 0) {
        fprintf(stderr, "p11bench: %s\n", err);
        return 2;
    }
    b->self = self_exe();
    b->first_exe = getenv("P11BENCH_FIRST");
    b->openssl = getenv("P11BENCH_OPENSSL") ? getenv("P11BENCH_OPENSSL") : "/usr/bin/openssl";
    b->cnf = getenv("P11BENCH_CNF");
    b->socket = getenv("P11AGENT_SOCKET");
    b->p11kit_reason = getenv("P11BENCH_P11KIT_UNAVAILABLE");
    if (b->p11kit_reason != NULL && *b->p11kit_reason == '\0')
        b->p11kit_reason = NULL;
    if (b->p11kit_reason == NULL
        && (b->cfg.p11kit_client == NULL || getenv("P11_KIT_SERVER_ADDRESS") == NULL))
        b->p11kit_reason = "no p11-kit-client.so or no P11_KIT_SERVER_ADDRESS";
    if (b->self == NULL || b->first_exe == NULL || b->cnf == NULL || b->socket == NULL) {
        fprintf(stderr, "p11bench: P11BENCH_FIRST, P11BENCH_CNF and P11AGENT_SOCKET must be set\n");
        return 2;
    }
    if (agent_status(b->socket, &st, &err) != BUS_OK) {
        fprintf(stderr, "p11bench: agent on %s: %s\n", b->socket, err ? err : "no answer");
        return 1;
    }
    b->agent_pid = (int)st.pid;
    b->cpu_pid = b->agent_pid;
    b->rss_start_kib = bench_rss_kib(b->agent_pid);
    b->rss_start_anon_kib = bench_status_kib(b->agent_pid, "RssAnon");
    b->rss_start_file_kib = bench_status_kib(b->agent_pid, "RssFile");
    b->pss_start_kib = bench_pss_kib(b->agent_pid);
    bus_status_clear(&st);

    b->load_start = loadavg();
    if (b->only_tls) {
        section_tls(b);
    } else if (b->only_fresh) {
        section_first(b);
        section_pkeyutl(b);
    } else {
        if (!b->only_latency) {
            section_sign(b);
            section_rtt(b);
        }
        if (!b->only_latency && !b->sign_only) {
            section_first(b);
            section_pkeyutl(b);
            section_tls(b);
        }
        if (!b->sign_only)
            section_latency(b);
        if (!b->only_latency && !b->sign_only)
            section_memory(b);
    }

    b->load_end = loadavg();
    b->rss_end_kib = bench_rss_kib(b->agent_pid);
    b->pss_end_kib = bench_pss_kib(b->agent_pid);
    report_targets(b);
    report_table(b);
    if (b->json_path != NULL && report_json(b, b->json_path) < 0) {
        fprintf(stderr, "p11bench: cannot write %s: %s\n", b->json_path, strerror(errno));
        b->failed = true;
    }
    if (b->failed)
        fprintf(stderr, "p11bench: FAILED: an operation failed or a signature did not verify "
                        "(see the errors above)\n");
    return b->failed ? 1 : 0;
}
