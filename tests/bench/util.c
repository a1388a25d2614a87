/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

static const char *const method_names[M_COUNT] = {
    [M_AGENT] = "agent",
    [M_AGENT_DBUS] = "agent-dbus",
    [M_AGENT_BUS] = "agent-bus",
    [M_DIRECT_TOKEN] = "direct-token",
    [M_DIRECT_COPY] = "direct-copy",
    [M_P11KIT_TOKEN] = "p11kit-token",
    [M_P11KIT_COPY] = "p11kit-copy",
};

static const char *const alg_names[A_COUNT] = {
    [A_RSA_PKCS1] = "rsa2048-pkcs1",
    [A_RSA_PSS] = "rsa2048-pss",
    [A_P256] = "p256",
    [A_ED25519] = "ed25519",
};

static const char *const alg_labels[A_COUNT] = {
    [A_RSA_PKCS1] = "rsa2048",
    [A_RSA_PSS] = "rsa2048",
    [A_P256] = "p256",
    [A_ED25519] = "ed25519",
};

const char *bench_method_name(bench_method_t m)
{
    return m < M_COUNT ? method_names[m] : "?";
}

const char *bench_alg_name(bench_alg_t a)
{
    return a < A_COUNT ? alg_names[a] : "?";
}

const char *bench_alg_label(bench_alg_t a)
{
    return a < A_COUNT ? alg_labels[a] : "?";
}

int bench_method_from_name(const char *s)
{
    for (int i = 0; i < M_COUNT; i++)
        if (strcmp(s, method_names[i]) == 0)
            return i;
    return -1;
}

int bench_alg_from_name(const char *s)
{
    for (int i = 0; i < A_COUNT; i++)
        if (strcmp(s, alg_names[i]) == 0)
            return i;
    return -1;
}

uint64_t bench_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

char *bench_strdupf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

char *bench_read_file(const char *path, size_t *ret_len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0, n;

    if (f == NULL)
        return NULL;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            char *nb;

            cap = cap ? cap * 2 : 8192;
            nb = realloc(buf, cap);
            if (nb == NULL) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        n = fread(buf + len, 1, 4096, f);
        len += n;
        if (n < 4096)
            break;
    }
    fclose(f);
    buf[len] = '\0';
    if (ret_len != NULL)
        *ret_len = len;
    return buf;
}

long bench_status_kib(int pid, const char *field)
{
    char path[64], line[256];
    size_t flen = strlen(field);
    FILE *f;
    long kib = -1;

    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, field, flen) == 0 && line[flen] == ':'
            && sscanf(line + flen + 1, "%ld", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

long bench_pss_kib(int pid)
{
    char path[64], line[256];
    FILE *f;
    long kib = -1;

    snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "Pss: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

long bench_rss_kib(int pid)
{
    return bench_status_kib(pid, "VmRSS");
}

int64_t bench_proc_cpu_ns(int pid)
{
    char path[64], buf[1024], *p;
    unsigned long long ut, st;
    long tck = sysconf(_SC_CLK_TCK);
    FILE *f;
    size_t n;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* after "pid (comm) ": state is field 3, utime 14, stime 15 */
    p = strrchr(buf, ')');
    if (p == NULL || tck <= 0
        || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (int64_t)((ut + st) * (1000000000ull / (unsigned long long)tck));
}

int bench_cfg_load(bench_cfg_t *cfg, char **err)
{
    static const char *const need[] = { "P11BENCH_DIR", "P11BENCH_TOKEN", "P11BENCH_MODULE",
                                        "P11BENCH_PROVIDER" };
    char *path, *pin;
    size_t len;

    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
        if (getenv(need[i]) == NULL || *getenv(need[i]) == '\0') {
            *err = bench_strdupf("%s is not set", need[i]);
            return -1;
        }
    }
    cfg->dir = getenv("P11BENCH_DIR");
    cfg->token = getenv("P11BENCH_TOKEN");
    cfg->module = getenv("P11BENCH_MODULE");
    cfg->provider_so = getenv("P11BENCH_PROVIDER");
    cfg->p11kit_client = getenv("P11BENCH_P11KIT_CLIENT");
    if (cfg->p11kit_client != NULL && *cfg->p11kit_client == '\0')
        cfg->p11kit_client = NULL;
    path = bench_strdupf("%s/pin", cfg->dir);
    pin = path ? bench_read_file(path, &len) : NULL;
    if (pin == NULL || len == 0 || len >= sizeof(cfg->pin)) {
        *err = bench_strdupf("cannot read the PIN from %s", path ? path : "?");
        free(path);
        free(pin);
        return -1;
    }
    while (len > 0 && (pin[len - 1] == '\n' || pin[len - 1] == '\r'))
        len--;
    memcpy(cfg->pin, pin, len);
    cfg->pin[len] = '\0';
    free(path);
    free(pin);
    return 0;
}

/* Phase marks of one process (p11bench-first): a diagnostic, kept here so
 * that signer.c can mark phases without knowing who prints them. */
static struct {
    const char *name;
    uint64_t ns;
} phases[BENCH_MAX_PHASES];
static int nphases;

void bench_phase(const char *name)
{
    if (nphases < BENCH_MAX_PHASES) {
        phases[nphases].name = name;
        phases[nphases].ns = bench_now_ns();
        nphases++;
    }
}

void bench_phases_print(FILE *f)
{
    for (int i = 0; i < nphases; i++)
        fprintf(f, "phase %s %llu\n", phases[i].name, (unsigned long long)phases[i].ns);
}
