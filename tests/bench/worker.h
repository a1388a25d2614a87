/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Worker processes of p11bench (see worker.c for the protocol). */
#pragma once

#include <stddef.h>
#include <stdint.h>

typedef struct lat_vec {
    uint32_t *v; /* ns, saturated at UINT32_MAX */
    size_t n, cap;
} lat_vec_t;

int lat_push(lat_vec_t *v, uint64_t ns);

/* Prints "err MSG" and exits 1. */
void worker_fail(const char *msg) __attribute__((noreturn));
/* Prints "ready", waits for "go". */
void worker_ready_wait(void);
void worker_report(uint64_t ops, uint64_t elapsed_ns, lat_vec_t *lats, size_t nvec);

int worker_sign(int argc, char **argv);
int worker_tls(int argc, char **argv);
int worker_rtt(int argc, char **argv);
