/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The provider's key-reference decoders (provider/decoder.c), called as
 * OpenSSL calls them: through their dispatch tables, reading the input
 * through the core BIO functions. The first byte picks the decoder: the
 * PEM one ("PVK", input=pem: its own line reader, boundaries, base64) or
 * one of the per-type DER decoders. No agent runs (the client has no
 * socket): a reference that parses fails at the lookup, with an error.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_dispatch.h>

#include "provider.h"

/* An OSSL_CORE_BIO over the input. */
typedef struct membio {
    const uint8_t *p;
    size_t len;
} membio_t;

static int bio_read_ex(OSSL_CORE_BIO *bio, void *out, size_t cap, size_t *ret)
{
    membio_t *b = (membio_t *)bio;
    size_t n = cap < b->len ? cap : b->len;

    memcpy(out, b->p, n);
    b->p += n;
    b->len -= n;
    *ret = n;
    return n > 0;
}

/* As BIO_gets: up to size-1 bytes, through the first '\n', NUL-terminated. */
static int bio_gets(OSSL_CORE_BIO *bio, char *out, int size)
{
    membio_t *b = (membio_t *)bio;
    size_t n = 0;

    if (size <= 0)
        return -1;
    while (n + 1 < (size_t)size && n < b->len) {
        out[n] = (char)b->p[n];
        if (b->p[n++] == '\n')
            break;
    }
    out[n] = '\0';
    b->p += n;
    b->len -= n;
    return (int)n;
}

static void core_new_error(const OSSL_CORE_HANDLE *h)
{
}

static void core_vset_error(const OSSL_CORE_HANDLE *h, uint32_t reason, const char *fmt,
                            va_list ap)
{
    char text[512];

    vsnprintf(text, sizeof(text), fmt, ap);
}

static const OSSL_DISPATCH core_in[] = {
    { OSSL_FUNC_CORE_NEW_ERROR, (void (*)(void))core_new_error },
    { OSSL_FUNC_CORE_VSET_ERROR, (void (*)(void))core_vset_error },
    { OSSL_FUNC_BIO_READ_EX, (void (*)(void))bio_read_ex },
    { OSSL_FUNC_BIO_GETS, (void (*)(void))bio_gets },
    { 0, NULL },
};

static prov_ctx_t *ctx;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ctx = prov_ctx_new(NULL, core_in, NULL, false);
    if (ctx == NULL)
        abort();
    /* no agent: every lookup fails at once, without touching a socket */
    bus_pool_free(ctx->client);
    ctx->client = bus_pool_new(NULL);
    if (ctx->client == NULL)
        abort();
    return 0;
}

static int data_cb(const OSSL_PARAM *params, void *arg)
{
    return 1;
}

static int run(const OSSL_DISPATCH *fns, const uint8_t *data, size_t size, int selection)
{
    OSSL_FUNC_decoder_newctx_fn *newctx = NULL;
    OSSL_FUNC_decoder_freectx_fn *freectx = NULL;
    OSSL_FUNC_decoder_decode_fn *decode = NULL;
    membio_t bio = { data, size };
    void *dctx;
    int ok;

    for (; fns->function_id != 0; fns++) {
        if (fns->function_id == OSSL_FUNC_DECODER_NEWCTX)
            newctx = OSSL_FUNC_decoder_newctx(fns);
        else if (fns->function_id == OSSL_FUNC_DECODER_FREECTX)
            freectx = OSSL_FUNC_decoder_freectx(fns);
        else if (fns->function_id == OSSL_FUNC_DECODER_DECODE)
            decode = OSSL_FUNC_decoder_decode(fns);
    }
    if (newctx == NULL || freectx == NULL || decode == NULL)
        abort();
    dctx = newctx(ctx);
    if (dctx == NULL)
        return 0;
    ok = decode(dctx, (OSSL_CORE_BIO *)&bio, selection, data_cb, NULL, NULL, NULL);
    freectx(dctx);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const OSSL_DISPATCH *const key_decoders[] = {
        prov_rsa_decoder_functions, prov_ec_decoder_functions,
        prov_ed25519_decoder_functions, prov_ed448_decoder_functions,
    };
    uint8_t sel;

    if (size == 0)
        return 0;
    sel = data[0];
    data++;
    size--;
    if ((sel & 1) == 0)
        run(prov_pem_decoder_functions, data, size, OSSL_KEYMGMT_SELECT_KEYPAIR);
    else
        run(key_decoders[(sel >> 1) % 4], data, size,
            (sel & 0x10) ? 0 : OSSL_KEYMGMT_SELECT_KEYPAIR);
    return 0;
}
