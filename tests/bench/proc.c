/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Orchestrator side of workers: spawn `p11bench worker ...` (this very
 * executable), wait for "ready", send "go", read the result.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "orch.h"

int proc_start(proc_t *p, char *const argv[], char **err)
{
    int in[2], out[2];

    memset(p, 0, sizeof(*p));
    p->in_fd = p->out_fd = -1;
    if (pipe2(in, O_CLOEXEC) < 0)
        goto fail;
    if (pipe2(out, O_CLOEXEC) < 0) {
        close(in[0]);
        close(in[1]);
        goto fail;
    }
    p->pid = fork();
    if (p->pid < 0) {
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        goto fail;
    }
    if (p->pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        execv(argv[0], argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    p->in_fd = in[1];
    p->out_fd = out[0];
    return 0;
fail:
    *err = bench_strdupf("cannot start a worker: %s", strerror(errno));
    return -1;
}

/* Reads one line (up to cap-1 bytes) from fd, byte by byte: what follows
 * may be binary. Waits at most timeout_ms per byte (-1: forever) calling
 * tick every interval while it waits. */
static int read_line(proc_t *p, char *buf, size_t cap, proc_tick_fn tick, void *tick_arg)
{
    size_t n = 0;

    while (n + 1 < cap) {
        char c;
        ssize_t r;

        if (tick != NULL) {
            struct pollfd pfd = { .fd = p->out_fd, .events = POLLIN };

            while (poll(&pfd, 1, 1000) == 0)
                tick(tick_arg);
        }
        r = read(p->out_fd, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (c == '\n') {
            buf[n] = '\0';
            return 0;
        }
        buf[n++] = c;
    }
    buf[n] = '\0';
    return -1;
}

static int read_all(int fd, void *buf, size_t len)
{
    uint8_t *b = buf;

    while (len > 0) {
        ssize_t r = read(fd, b, len);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        b += r;
        len -= (size_t)r;
    }
    return 0;
}

static char *worker_error(proc_t *p, const char *line)
{
    if (strncmp(line, "err ", 4) == 0)
        return strdup(line + 4);
    return bench_strdupf("worker %d said '%s'", (int)p->pid, line);
}

int proc_wait_ready(proc_t *p, char **err)
{
    char line[1024];

    if (read_line(p, line, sizeof(line), NULL, NULL) < 0 && line[0] == '\0') {
        *err = bench_strdupf("worker %d exited before it was ready", (int)p->pid);
        return -1;
    }
    if (strcmp(line, "ready") != 0) {
        *err = worker_error(p, line);
        return -1;
    }
    return 0;
}

int proc_go(proc_t *p)
{
    return write(p->in_fd, "go\n", 3) == 3 ? 0 : -1;
}

int proc_result(proc_t *p, proc_result_t *res, proc_tick_fn tick, void *tick_arg, char **err)
{
    char line[1024];
    unsigned long long ops, ns, cpu = 0;
    size_t nlat;

    memset(res, 0, sizeof(*res));
    if (read_line(p, line, sizeof(line), tick, tick_arg) < 0 && line[0] == '\0') {
        *err = bench_strdupf("worker %d exited without a result", (int)p->pid);
        return -1;
    }
    if (sscanf(line, "ok %llu %llu %zu %llu", &ops, &ns, &nlat, &cpu) < 3) {
        *err = worker_error(p, line);
        return -1;
    }
    res->ops = ops;
    res->elapsed_ns = ns;
    res->cpu_ns = cpu;
    res->lat.n = res->lat.cap = nlat;
    res->lat.v = malloc((nlat ? nlat : 1) * sizeof(uint32_t));
    if (res->lat.v == NULL || read_all(p->out_fd, res->lat.v, nlat * sizeof(uint32_t)) < 0) {
        *err = bench_strdupf("worker %d: short latency data", (int)p->pid);
        return -1;
    }
    return 0;
}

int proc_finish(proc_t *p, char **err)
{
    int status = 0;

    if (p->in_fd >= 0)
        close(p->in_fd);
    if (p->out_fd >= 0)
        close(p->out_fd);
    p->in_fd = p->out_fd = -1;
    if (p->pid <= 0)
        return 0;
    while (waitpid(p->pid, &status, 0) < 0 && errno == EINTR)
        ;
    p->pid = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        if (err != NULL && *err == NULL)
            *err = bench_strdupf("worker failed (status 0x%x)", status);
        return -1;
    }
    return 0;
}

void proc_kill(proc_t *p)
{
    if (p->pid > 0)
        kill(p->pid, SIGKILL);
    proc_finish(p, NULL);
}

int run_cmd(char *const argv[], char *const envp[], uint64_t *ret_start_ns, uint64_t *ret_ns,
            char *out, size_t outcap, char **err)
{
    uint64_t t0;
    int status = 0, pfd[2] = { -1, -1 };
    size_t n = 0;
    pid_t pid;

    if (out != NULL && pipe2(pfd, O_CLOEXEC) < 0) {
        *err = bench_strdupf("pipe: %s", strerror(errno));
        return -1;
    }
    t0 = bench_now_ns();
    pid = fork();
    if (pid < 0) {
        *err = bench_strdupf("fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);

        if (null >= 0) {
            dup2(null, 0);
            dup2(out != NULL ? pfd[1] : null, 1);
        }
        execve(argv[0], argv, envp);
        _exit(127);
    }
    if (out != NULL) {
        close(pfd[1]);
        while (n + 1 < outcap) {
            ssize_t r = read(pfd[0], out + n, outcap - 1 - n);

            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            n += (size_t)r;
        }
        out[n] = '\0';
        close(pfd[0]);
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    *ret_ns = bench_now_ns() - t0;
    if (ret_start_ns != NULL)
        *ret_start_ns = t0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        *err = bench_strdupf("%s failed (status 0x%x)", argv[0], status);
        return -1;
    }
    return 0;
}
