/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11bench-first METHOD ALG: a fresh process that makes one signature and
 * prints the CLOCK_MONOTONIC time (ns) at which it had it, then verifies
 * it (exit 1 if it does not verify), then "phase NAME NS" lines: when
 * main() began and each setup step ended. The orchestrator subtracts the
 * time it spawned us: process start + key load + first signature, without
 * exit. `p11bench-first none` only starts.
 *
 * METHOD agent: own OSSL_LIB_CTX, load p11agent.so, OSSL_STORE the key by
 * URI, EVP_DigestSign. METHOD direct-token: dlopen the module, C_Initialize,
 * C_Login, C_FindObjects, C_SignInit + C_Sign. Kept apart from p11bench so
 * that it links only libcrypto.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

int main(int argc, char **argv)
{
    bench_cfg_t cfg;
    signer_t *s = NULL;
    signer_thr_t *t = NULL;
    uint8_t msg[100], sig[512];
    size_t siglen = 0;
    uint64_t done;
    char *err = NULL;
    int m, a;

    bench_phase("main");
    if (argc == 2 && strcmp(argv[1], "none") == 0) {
        /* process start only */
        printf("%llu\n", (unsigned long long)bench_now_ns());
        return 0;
    }
    if (argc != 3 || (m = bench_method_from_name(argv[1])) < 0
        || (a = bench_alg_from_name(argv[2])) < 0) {
        fprintf(stderr, "usage: p11bench-first METHOD ALG\n");
        return 2;
    }
    memset(msg, 'f', sizeof(msg));
    if (bench_cfg_load(&cfg, &err) < 0 || signer_open(&cfg, m, a, &s, &err) < 0
        || signer_thread(s, &t, &err) < 0
        || signer_sign(t, msg, sizeof(msg), sig, &siglen, &err) < 0)
        goto fail;
    done = bench_now_ns();
    bench_phase("signed");
    if (signer_verify(s, msg, sizeof(msg), sig, siglen, &err) < 0)
        goto fail;
    printf("%llu\n", (unsigned long long)done);
    bench_phases_print(stdout);
    fflush(stdout);
    signer_thread_free(t);
    signer_close(s);
    return 0;
fail:
    fprintf(stderr, "p11bench-first: %s\n", err ? err : "failed");
    return 1;
}
