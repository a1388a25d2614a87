/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Full mTLS handshakes per second (`p11bench worker tls`): a client and a
 * server SSL object joined by a BIO pair, driven in turn by one thread, so
 * the measurement holds no scheduler or network noise beyond the agent's
 * own round trip. Every handshake is a full one (no session cache, no
 * tickets); the server requires and verifies the client certificate.
 *
 * Client key: the token key through p11agent.so (own OSSL_LIB_CTX, key by
 * pkcs11: URI) or the software key of the same type from soft/ (--source
 * soft: the default provider alone; softp: p11agent.so loaded too, as in a
 * process whose openssl.cnf loads it). The server uses the software
 * server.key in the same library context.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>

#include "bench.h"
#include "worker.h"

typedef struct tls_bench {
    SSL_CTX *client;
    SSL_CTX *server;
    int version;
} tls_bench_t;

static char *ssl_err(const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "";

    if (e != 0)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return bench_strdupf("%s%s%s", what, buf[0] ? ": " : "", buf);
}

static EVP_PKEY *load_soft_key(OSSL_LIB_CTX *libctx, const char *path)
{
    FILE *f = fopen(path, "r");
    EVP_PKEY *k = NULL;

    if (f != NULL) {
        k = PEM_read_PrivateKey_ex(f, NULL, NULL, NULL, libctx, NULL);
        fclose(f);
    }
    return k;
}

static SSL_CTX *ctx_common(OSSL_LIB_CTX *libctx, const SSL_METHOD *m, int version,
                           const char *ca)
{
    SSL_CTX *ctx = SSL_CTX_new_ex(libctx, NULL, m);

    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    if (!SSL_CTX_set_min_proto_version(ctx, version) || !SSL_CTX_set_max_proto_version(ctx, version)
        || !SSL_CTX_load_verify_locations(ctx, ca, NULL)) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* One full handshake; 0 when the server verified the client certificate. */
static int handshake(tls_bench_t *b, char **err)
{
    SSL *c = SSL_new(b->client), *s = SSL_new(b->server);
    BIO *bc = NULL, *bs = NULL;
    int rc = 0, rs = 0, r = -1;

    if (c == NULL || s == NULL || !BIO_new_bio_pair(&bc, 0, &bs, 0)) {
        *err = ssl_err("SSL_new");
        goto out;
    }
    SSL_set_bio(c, bc, bc);
    SSL_set_bio(s, bs, bs);
    SSL_set_connect_state(c);
    SSL_set_accept_state(s);
    SSL_set_tlsext_host_name(c, "localhost");
    for (int i = 0; i < 64 && (rc != 1 || rs != 1); i++) {
        if (rc != 1) {
            rc = SSL_do_handshake(c);
            if (rc <= 0 && SSL_get_error(c, rc) != SSL_ERROR_WANT_READ
                && SSL_get_error(c, rc) != SSL_ERROR_WANT_WRITE) {
                *err = ssl_err("client handshake failed");
                goto out;
            }
        }
        if (rs != 1) {
            rs = SSL_do_handshake(s);
            if (rs <= 0 && SSL_get_error(s, rs) != SSL_ERROR_WANT_READ
                && SSL_get_error(s, rs) != SSL_ERROR_WANT_WRITE) {
                *err = ssl_err("server handshake failed");
                goto out;
            }
        }
    }
    if (rc != 1 || rs != 1) {
        *err = strdup("handshake did not finish");
        goto out;
    }
    if (SSL_get0_peer_certificate(s) == NULL || SSL_get_verify_result(s) != X509_V_OK
        || SSL_version(s) != b->version || SSL_session_reused(c)) {
        *err = strdup("server did not verify a client certificate in a full handshake");
        goto out;
    }
    r = 0;
out:
    SSL_free(c);
    SSL_free(s);
    return r;
}

int worker_tls(int argc, char **argv)
{
    const char *proto = "1.3", *key = "p256", *source = "agent";
    double seconds = 3;
    bench_cfg_t cfg;
    signer_t *sg = NULL;
    OSSL_LIB_CTX *libctx;
    EVP_PKEY *pkey;
    tls_bench_t b = { 0 };
    char *err = NULL, *p;
    lat_vec_t lat = { 0 };
    uint64_t start, now, ops = 0;

    for (int i = 0; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--proto") == 0)
            proto = argv[i + 1];
        else if (strcmp(argv[i], "--key") == 0)
            key = argv[i + 1];
        else if (strcmp(argv[i], "--source") == 0)
            source = argv[i + 1];
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
        else
            worker_fail("bad worker argument");
    }
    b.version = strcmp(proto, "1.2") == 0 ? TLS1_2_VERSION : TLS1_3_VERSION;
    if (bench_cfg_load(&cfg, &err) < 0)
        worker_fail(err);
    if (strcmp(source, "agent") == 0) {
        if (signer_open(&cfg, M_AGENT, strcmp(key, "p256") == 0 ? A_P256 : A_RSA_PSS, &sg, &err)
            < 0)
            worker_fail(err);
        libctx = signer_libctx(sg);
        pkey = signer_evp_key(sg);
        EVP_PKEY_up_ref(pkey);
    } else {
        libctx = OSSL_LIB_CTX_new();
        if (libctx == NULL || OSSL_PROVIDER_load(libctx, "default") == NULL)
            worker_fail("no default provider");
        if (strcmp(source, "softp") == 0) {
            char *dir = strdup(cfg.provider_so), *slash = dir ? strrchr(dir, '/') : NULL;

            if (slash != NULL)
                *slash = '\0';
            if (dir == NULL || !OSSL_PROVIDER_set_default_search_path(libctx, slash ? dir : ".")
                || OSSL_PROVIDER_load(libctx, "p11agent") == NULL)
                worker_fail(ssl_err("cannot load the p11agent provider"));
            free(dir);
        }
        p = bench_strdupf("%s/soft/%s.key", cfg.dir, key);
        pkey = load_soft_key(libctx, p);
        if (pkey == NULL)
            worker_fail(ssl_err(p));
        free(p);
    }
    p = bench_strdupf("%s/ca.pem", cfg.dir);
    b.client = ctx_common(libctx, TLS_client_method(), b.version, p);
    b.server = ctx_common(libctx, TLS_server_method(), b.version, p);
    free(p);
    if (b.client == NULL || b.server == NULL)
        worker_fail(ssl_err("SSL_CTX_new"));
    SSL_CTX_set_verify(b.client, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_verify(b.server, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    p = bench_strdupf("%s/%s/%s.pem", cfg.dir, strcmp(source, "agent") == 0 ? "certs" : "soft",
                      key);
    if (SSL_CTX_use_certificate_file(b.client, p, SSL_FILETYPE_PEM) != 1
        || SSL_CTX_use_PrivateKey(b.client, pkey) != 1 || SSL_CTX_check_private_key(b.client) != 1)
        worker_fail(ssl_err("client certificate and key"));
    free(p);
    p = bench_strdupf("%s/server.pem", cfg.dir);
    if (SSL_CTX_use_certificate_file(b.server, p, SSL_FILETYPE_PEM) != 1)
        worker_fail(ssl_err("server certificate"));
    free(p);
    p = bench_strdupf("%s/server.key", cfg.dir);
    if (SSL_CTX_use_PrivateKey_file(b.server, p, SSL_FILETYPE_PEM) != 1)
        worker_fail(ssl_err("server key"));
    free(p);
    if (handshake(&b, &err) < 0) /* warm-up, must succeed */
        worker_fail(err);
    worker_ready_wait();
    start = now = bench_now_ns();
    while (now - start < (uint64_t)(seconds * 1e9)) {
        uint64_t t1;

        if (handshake(&b, &err) < 0)
            worker_fail(err);
        t1 = bench_now_ns();
        ops++;
        if (lat_push(&lat, t1 - now) < 0)
            worker_fail("out of memory");
        now = t1;
    }
    worker_report(ops, now - start, &lat, 1);
    SSL_CTX_free(b.client);
    SSL_CTX_free(b.server);
    EVP_PKEY_free(pkey);
    if (sg != NULL)
        signer_close(sg);
    else
        OSSL_LIB_CTX_free(libctx);
    return 0;
}
