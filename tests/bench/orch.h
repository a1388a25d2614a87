/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The orchestrator of p11bench: workers, results, report. */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

#include "bench.h"
#include "worker.h"

/* --- proc.c ------------------------------------------------------------- */
typedef struct proc {
    pid_t pid;
    int in_fd;  /* worker's stdin */
    int out_fd; /* worker's stdout */
} proc_t;

typedef struct proc_result {
    uint64_t ops;
    uint64_t elapsed_ns;
    uint64_t cpu_ns; /* the worker's CPU time while it measured */
    lat_vec_t lat;
} proc_result_t;

typedef void (*proc_tick_fn)(void *arg);

int proc_start(proc_t *p, char *const argv[], char **err);
int proc_wait_ready(proc_t *p, char **err);
int proc_go(proc_t *p);
/* Reads the result; calls tick about once a second while waiting. */
int proc_result(proc_t *p, proc_result_t *res, proc_tick_fn tick, void *tick_arg, char **err);
/* Closes pipes and reaps; -1 if the worker did not exit 0. */
int proc_finish(proc_t *p, char **err);
void proc_kill(proc_t *p);
/* Runs argv with envp, stdin on /dev/null, stdout into out (if not NULL)
 * or /dev/null; spawn time and wall time (spawn to reaped) in ns. */
int run_cmd(char *const argv[], char *const envp[], uint64_t *ret_start_ns, uint64_t *ret_ns,
            char *out, size_t outcap, char **err);

/* --- results ------------------------------------------------------------ */
typedef struct stat_row {
    bool ok;
    char *error;        /* failure or "unavailable: ..." */
    bool unavailable;   /* not a failure of the benchmark */
    uint64_t ops;
    double seconds;
    double per_s;
    double p50_us, p99_us;
    uint64_t agent_sigs; /* agent's own count of signatures during the run */
    double cpu_us;       /* CPU time of the client processes per operation */
    double agent_cpu_us; /* the agent's CPU time per operation (NAN: not an agent row) */
} stat_row_t;

typedef struct sign_row {
    bench_alg_t alg;
    bench_method_t method;
    int threads, procs;
    stat_row_t st;
} sign_row_t;

/* The latency-bound profile: the same key on p11fault.so with `delay
 * C_Sign MS`, many clients (procs x threads) at once. */
typedef struct lat_row {
    bench_method_t method;
    int threads, procs;
    int delay_ms; /* the token's delay per C_Sign in this row */
    stat_row_t st;
} lat_row_t;

#define LAT_MAX_PROCS 8

typedef struct tls_row {
    const char *proto; /* "1.3", "1.2" */
    const char *key;   /* "p256", "rsa2048" */
    const char *source; /* "agent", "software" */
    stat_row_t st;
} tls_row_t;

typedef struct time_row {
    const char *name;   /* what was timed */
    const char *detail;
    int runs;
    double median_ms, min_ms, p90_ms;
    char *error;
    /* fresh-process phases: median time since spawn at the end of each */
    int nphases;
    char phase_name[BENCH_MAX_PHASES][16];
    double phase_ms[BENCH_MAX_PHASES];
} time_row_t;

typedef struct target_row {
    const char *issues; /* the issues that set it: "12", "6" or "6, 12" */
    const char *name;
    const char *goal;
    char *measured; /* text */
    double ratio;   /* measured/goal form used for the verdict; NAN if none */
    int met;        /* 1 met, 0 missed, -1 not measured */
} target_row_t;

#define MAX_ROWS 160
#define MAX_SAMPLES 600

typedef struct bench bench_t;

struct bench {
    bench_cfg_t cfg;
    const char *self;
    const char *first_exe;
    const char *openssl;
    const char *cnf;
    const char *json_path;
    const char *p11kit_reason; /* why p11-kit remoting is unavailable, or NULL */
    const char *algs;          /* --algs: comma-separated names, or NULL: all */
    bool sign_only;            /* --only sign: signatures and the round trip only */
    const char *mem_socket;    /* agent with many keys, or NULL */
    const char *socket;
    double seconds; /* per measurement, split into `rounds` interleaved rounds */
    int rounds;
    int runs;
    long soak;
    bool failed;
    double load_start, load_end; /* /proc/loadavg, 1 minute */

    sign_row_t sign[MAX_ROWS];
    int nsign;
    stat_row_t rtt[2]; /* bare D-Bus round trips: 1 thread, 2 processes */
    tls_row_t tls[16];
    int ntls;
    time_row_t times[16];
    int ntimes;

    int agent_pid;
    int cpu_pid; /* the agent whose CPU time agent rows count (main or latency agent) */
    long rss_start_kib;
    long rss_before_soak_kib, rss_after_soak_kib;
    long soak_done;
    double soak_per_s;
    long soak_samples[MAX_SAMPLES]; /* RSS every second during the soak */
    int nsoak_samples;
    char *soak_error;

    long rss_start_anon_kib, rss_start_file_kib, pss_start_kib;
    long rss_end_kib, pss_end_kib; /* after everything */
    int many_keys, many_tokens;
    long many_rss_kib, many_anon_kib, many_file_kib, many_pss_kib;
    char *many_error;

    /* latency-bound profile (section 5) */
    const char *lat_socket;  /* the agent on p11fault.so, or NULL */
    const char *lat_module;  /* p11fault.so, for in-process workers */
    const char *lat_reason;  /* why the profile is not measured, or NULL */
    int lat_delay_ms;
    const char *lat_control; /* p11fault's control file (rewritten for the long delay) */
    int lat_long_delay_ms;   /* 64 clients again at this delay; 0: not measured */
    int lat_max_sessions;    /* the agent's max-sessions; 0: its default */
    bool only_latency;       /* --only latency: skip sections 1-4 */
    bool only_fresh;         /* --only fresh: section 2 (fresh processes) only */
    bool only_tls;           /* --only tls: the mTLS handshakes (3.) alone */
    lat_row_t lat[24];
    int nlat;

    target_row_t targets[32];
    int ntargets;
};

/* report.c */
void report_targets(bench_t *b);
void report_table(bench_t *b);
int report_json(bench_t *b, const char *path);
const sign_row_t *find_sign(const bench_t *b, bench_alg_t a, bench_method_t m, int threads,
                            int procs);
