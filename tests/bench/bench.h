/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11bench: signature, fresh-process, mTLS and memory benchmarks of
 * p11agent against in-process PKCS#11 and p11-kit remoting.
 *
 * The orchestrator (`p11bench run`) starts each measurement in a worker
 * process (`p11bench worker ...`, or the small `p11bench-first` for fresh
 * process timings) so that in-process SoftHSM, the provider and p11-kit's
 * client module never share a process, and 2-process runs start together.
 * Configuration reaches workers through the environment (bench_cfg_load).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* What a worker needs to know; filled from P11BENCH_* variables. */
typedef struct bench_cfg {
    const char *dir;           /* mktoken.sh directory: pub/, certs/, soft/, pin */
    const char *token;         /* token label */
    const char *module;        /* SoftHSM module */
    const char *provider_so;   /* p11agent.so */
    const char *p11kit_client; /* p11-kit-client.so, NULL if missing */
    char pin[256];
} bench_cfg_t;

/* 0 on success; *err names what is missing. */
int bench_cfg_load(bench_cfg_t *cfg, char **err);

typedef enum bench_method {
    M_AGENT = 0,    /* EVP_DigestSign on a p11agent provider key */
    M_AGENT_DBUS,   /* the same with P11AGENT_CHANNEL=0: D-Bus Sign per signature
                       instead of the signing channel (comparison) */
    M_AGENT_BUS,    /* the same Sign call made with dbus/ directly, no provider
                       (diagnostic: the provider's share of the cost) */
    M_DIRECT_TOKEN, /* in-process C_Sign on the token object */
    M_DIRECT_COPY,  /* in-process C_Sign on a C_CopyObject session copy */
    M_P11KIT_TOKEN, /* p11-kit-client.so -> p11-kit server, token object */
    M_P11KIT_COPY,  /* same, on a session copy (made in the server) */
    M_COUNT
} bench_method_t;

typedef enum bench_alg {
    A_RSA_PKCS1 = 0, /* rsa2048, SHA-256, PKCS#1 v1.5 */
    A_RSA_PSS,       /* rsa2048, SHA-256, PSS salt 32, MGF1 SHA-256 */
    A_P256,          /* p256, ECDSA SHA-256 */
    A_ED25519,       /* ed25519, pure EdDSA */
    A_COUNT
} bench_alg_t;

const char *bench_method_name(bench_method_t m);
const char *bench_alg_name(bench_alg_t a);
const char *bench_alg_label(bench_alg_t a); /* key label on the token */
int bench_method_from_name(const char *s);  /* -1 if unknown */
int bench_alg_from_name(const char *s);

/* --- signer.c: one signing method for one key, per process ----------- */
typedef struct signer signer_t;
typedef struct signer_thr signer_thr_t;

int signer_open(const bench_cfg_t *cfg, bench_method_t m, bench_alg_t a, signer_t **ret,
                char **err);
/* Per-thread state (a PKCS#11 session, an EVP_MD_CTX). */
int signer_thread(signer_t *s, signer_thr_t **ret, char **err);
/* Signs msg; sig must hold 512 bytes. Signatures come out in the form
 * OpenSSL verifies (ECDSA DER) only for the agent; signer_verify copes. */
int signer_sign(signer_thr_t *t, const uint8_t *msg, size_t len, uint8_t *sig, size_t *siglen,
                char **err);
/* 0 if sig verifies with the key's public key (pub/<label>.pem). */
int signer_verify(signer_t *s, const uint8_t *msg, size_t len, const uint8_t *sig,
                  size_t siglen, char **err);
/* The agent method's provider key and library context (NULL otherwise). */
struct evp_pkey_st *signer_evp_key(signer_t *s);
struct ossl_lib_ctx_st *signer_libctx(signer_t *s);
void signer_thread_free(signer_thr_t *t);
void signer_close(signer_t *s);

/* --- helpers (util.c) --------------------------------------------------- */
uint64_t bench_now_ns(void);
char *bench_strdupf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Reads a whole small file; NULL on error. */
char *bench_read_file(const char *path, size_t *ret_len);
/* VmRSS of pid in KiB, -1 on error. */
long bench_rss_kib(int pid);
/* utime + stime of process pid (all its threads) in ns; -1 if unreadable. */
int64_t bench_proc_cpu_ns(int pid);
/* Proportional set size (shared pages divided among their users), -1 on error. */
long bench_pss_kib(int pid);
/* Marks the end of a phase (name: a string constant) at the current time;
 * bench_phases_print writes "phase NAME NS" lines. */
#define BENCH_MAX_PHASES 8
void bench_phase(const char *name);
void bench_phases_print(FILE *f);
/* Any "Name: N kB" line of /proc/PID/status (RssAnon, RssFile, ...). */
long bench_status_kib(int pid, const char *field);
