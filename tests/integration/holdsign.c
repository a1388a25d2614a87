/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A long-lived signer for tests: loads one key through the p11agent provider
 * (URI or key-reference file) once, then signs a fixed digest for every
 * "sign" line read on standard input, answering "ok" when the signature
 * verifies with the key's public half under the default provider, or
 * "error: <OpenSSL's errors>". Lets a test pull the card between signatures
 * of one process that keeps its EVP_PKEY.
 *
 * usage: holdsign KEY        (OPENSSL_CONF loads the provider)
 */
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/store.h>

static EVP_PKEY *load_key(const char *name)
{
    OSSL_STORE_CTX *st = OSSL_STORE_open(name, NULL, NULL, NULL, NULL);
    EVP_PKEY *key = NULL;

    while (st && !key && !OSSL_STORE_eof(st)) {
        OSSL_STORE_INFO *info = OSSL_STORE_load(st);

        if (info && OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
            key = OSSL_STORE_INFO_get1_PKEY(info);
        OSSL_STORE_INFO_free(info);
    }
    OSSL_STORE_close(st);
    return key;
}

static void print_errors(void)
{
    unsigned long e;
    char buf[512];

    printf("error:");
    while ((e = ERR_get_error()) != 0) {
        ERR_error_string_n(e, buf, sizeof(buf));
        printf(" %s", buf);
    }
    printf("\n");
}

int main(int argc, char **argv)
{
    unsigned char digest[32], sig[1024];
    char line[64];
    EVP_PKEY *key, *pub = NULL;
    unsigned char *der = NULL;
    const unsigned char *p;
    int der_len;

    if (argc != 2) {
        fprintf(stderr, "usage: holdsign KEY\n");
        return 2;
    }
    key = load_key(argv[1]);
    if (!key) {
        print_errors();
        return 1;
    }
    /* the public half, in the default provider, for verification */
    der_len = i2d_PUBKEY(key, &der);
    p = der;
    if (der_len <= 0 || !(pub = d2i_PUBKEY_ex(NULL, &p, der_len, NULL, "provider=default"))) {
        print_errors();
        return 1;
    }
    memset(digest, 0x5a, sizeof(digest));
    printf("loaded\n");
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin)) {
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
        EVP_PKEY_CTX *vctx = EVP_PKEY_CTX_new_from_pkey(NULL, pub, "provider=default");
        size_t len = sizeof(sig);

        if (strncmp(line, "sign", 4) != 0) {
            EVP_PKEY_CTX_free(ctx);
            EVP_PKEY_CTX_free(vctx);
            continue;
        }
        if (ctx && vctx && EVP_PKEY_sign_init(ctx) > 0 && EVP_PKEY_sign(ctx, sig, &len, digest,
                                                                       sizeof(digest)) > 0 &&
            EVP_PKEY_verify_init(vctx) > 0 &&
            EVP_PKEY_verify(vctx, sig, len, digest, sizeof(digest)) > 0)
            printf("ok\n");
        else
            print_errors();
        fflush(stdout);
        EVP_PKEY_CTX_free(ctx);
        EVP_PKEY_CTX_free(vctx);
    }
    OPENSSL_free(der);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key);
    return 0;
}
