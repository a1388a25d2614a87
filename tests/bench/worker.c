/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Worker side of a measurement (`p11bench worker sign|tls ...`).
 *
 * Protocol with the orchestrator, over the worker's stdin/stdout:
 *   worker -> "ready\n" once set up (key loaded, one signature verified)
 *   orchestrator -> "go\n"
 *   worker -> "ok OPS ELAPSED_NS NLAT CPU_NS\n" then NLAT little-endian
 *             uint32 latencies in ns (saturated), and exits 0 (CPU_NS: the
 *             worker's CPU time, all threads, from "go" to the report);
 *          or "err MESSAGE\n" and exits 1.
 * Signing runs THREADS threads for SECONDS (or until COUNT signatures in
 * all), each thread on its own message; the last signature of each thread
 * is verified after the clock stops.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "worker.h"

int lat_push(lat_vec_t *v, uint64_t ns)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 65536;
        uint32_t *nv = realloc(v->v, cap * sizeof(*nv));

        if (nv == NULL)
            return -1;
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
    return 0;
}

void worker_fail(const char *msg)
{
    printf("err %s\n", msg ? msg : "unknown error");
    fflush(stdout);
    exit(1);
}

static uint64_t cpu_at_go;

static uint64_t process_cpu_ns(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) < 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void worker_ready_wait(void)
{
    char line[16];

    printf("ready\n");
    fflush(stdout);
    if (fgets(line, sizeof(line), stdin) == NULL || strcmp(line, "go\n") != 0)
        worker_fail("no go from the orchestrator");
    cpu_at_go = process_cpu_ns();
}

void worker_report(uint64_t ops, uint64_t elapsed_ns, lat_vec_t *lats, size_t nvec)
{
    size_t total = 0;

    for (size_t i = 0; i < nvec; i++)
        total += lats[i].n;
    printf("ok %llu %llu %zu %llu\n", (unsigned long long)ops, (unsigned long long)elapsed_ns,
           total, (unsigned long long)(process_cpu_ns() - cpu_at_go));
    for (size_t i = 0; i < nvec; i++)
        if (lats[i].n > 0 && fwrite(lats[i].v, sizeof(uint32_t), lats[i].n, stdout) != lats[i].n)
            exit(1);
    fflush(stdout);
}

typedef struct sign_thread {
    pthread_t tid;
    int index;
    signer_thr_t *t;
    signer_t *s;
    pthread_barrier_t *barrier;
    uint64_t deadline_ns;  /* duration mode: set after the barrier */
    atomic_long *remaining; /* count mode, else NULL */
    uint64_t *start_ns;
    uint64_t end_ns;
    uint64_t ops;
    lat_vec_t lat;
    uint8_t msg[100];
    uint8_t sig[512];
    size_t siglen;
    char *err;
} sign_thread_t;

static void *sign_main(void *arg)
{
    sign_thread_t *st = arg;
    uint64_t deadline = 0;

    if (pthread_barrier_wait(st->barrier) == PTHREAD_BARRIER_SERIAL_THREAD)
        *st->start_ns = bench_now_ns();
    pthread_barrier_wait(st->barrier);
    if (st->remaining == NULL)
        deadline = *st->start_ns + st->deadline_ns;
    for (;;) {
        uint64_t t0 = bench_now_ns(), t1;

        if (st->remaining != NULL) {
            if (atomic_fetch_sub(st->remaining, 1) <= 0)
                break;
        } else if (t0 >= deadline) {
            break;
        }
        memcpy(st->msg + 8, &st->ops, sizeof(st->ops));
        if (signer_sign(st->t, st->msg, sizeof(st->msg), st->sig, &st->siglen, &st->err) < 0)
            break;
        t1 = bench_now_ns();
        st->ops++;
        if (lat_push(&st->lat, t1 - t0) < 0) {
            st->err = strdup("out of memory");
            break;
        }
    }
    st->end_ns = bench_now_ns();
    return NULL;
}

int worker_sign(int argc, char **argv)
{
    int method = -1, alg = -1, threads = 1;
    double seconds = 3;
    long count = 0;
    bench_cfg_t cfg;
    signer_t *s = NULL;
    sign_thread_t *ths;
    pthread_barrier_t barrier;
    atomic_long remaining;
    uint64_t start = 0, end = 0, ops = 0;
    lat_vec_t *lats;
    char *err = NULL;

    for (int i = 0; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--method") == 0)
            method = bench_method_from_name(argv[i + 1]);
        else if (strcmp(argv[i], "--alg") == 0)
            alg = bench_alg_from_name(argv[i + 1]);
        else if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--count") == 0)
            count = atol(argv[i + 1]);
        else
            worker_fail("bad worker argument");
    }
    if (method < 0 || alg < 0 || threads < 1 || threads > 64)
        worker_fail("bad worker arguments");
    if (bench_cfg_load(&cfg, &err) < 0 || signer_open(&cfg, method, alg, &s, &err) < 0)
        worker_fail(err);
    ths = calloc((size_t)threads, sizeof(*ths));
    lats = calloc((size_t)threads, sizeof(*lats));
    if (ths == NULL || lats == NULL)
        worker_fail("out of memory");
    atomic_store(&remaining, count);
    pthread_barrier_init(&barrier, NULL, (unsigned)threads);
    for (int i = 0; i < threads; i++) {
        sign_thread_t *st = &ths[i];

        st->index = i;
        st->s = s;
        st->barrier = &barrier;
        st->deadline_ns = (uint64_t)(seconds * 1e9);
        st->remaining = count > 0 ? &remaining : NULL;
        st->start_ns = &start;
        memset(st->msg, 'a' + i, sizeof(st->msg));
        st->msg[0] = (uint8_t)getpid();
        if (signer_thread(s, &st->t, &err) < 0)
            worker_fail(err);
        /* warm-up: one signature that must verify */
        if (signer_sign(st->t, st->msg, sizeof(st->msg), st->sig, &st->siglen, &err) < 0
            || signer_verify(s, st->msg, sizeof(st->msg), st->sig, st->siglen, &err) < 0)
            worker_fail(err);
    }
    worker_ready_wait();
    for (int i = 0; i < threads; i++)
        if (pthread_create(&ths[i].tid, NULL, sign_main, &ths[i]) != 0)
            worker_fail("pthread_create failed");
    for (int i = 0; i < threads; i++) {
        sign_thread_t *st = &ths[i];

        pthread_join(st->tid, NULL);
        if (st->err != NULL)
            worker_fail(st->err);
        if (st->ops > 0 && signer_verify(s, st->msg, sizeof(st->msg), st->sig, st->siglen,
                                         &err) < 0)
            worker_fail(err);
        if (st->end_ns > end)
            end = st->end_ns;
        ops += st->ops;
        lats[i] = st->lat;
        signer_thread_free(st->t);
    }
    worker_report(ops, end - start, lats, (size_t)threads);
    signer_close(s);
    return 0;
}
