/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Encoders: what `openssl pkey -in URI -text` and `openssl pkey -in URI
 * -out FILE` ask of a token key. Without them OpenSSL finds no encoder
 * that can have the private half (export refuses it), prints nothing,
 * exits 1 and leaves an empty output file.
 *
 *   output=text                         the public key as the default
 *                                       provider prints it, then where the
 *                                       private key is (its URI)
 *   output=pem, structure=PrivateKeyInfo a key-reference file (P11AGENT KEY
 *                                       REFERENCE): the one "private key
 *                                       file" a key that never leaves its
 *                                       token can have; reading it back
 *                                       gives the same key
 */
#include "config.h"

#include <string.h>

#include <openssl/bio.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "keyref.h"
#include "provider.h"

static void *enc_newctx(void *provctx)
{
    return provctx; /* no state of its own */
}

static void enc_freectx(void *ctx)
{
}

static int enc_text_does_selection(void *provctx, int selection)
{
    return 1;
}

static int enc_ref_does_selection(void *provctx, int selection)
{
    return (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0;
}

/* Our key behind obj_raw, or NULL (an error raised) */
static const prov_key_t *enc_key(prov_ctx_t *ctx, const void *obj_raw)
{
    const prov_key_t *key = obj_raw;

    if (key == NULL || key->magic != PROV_KEY_MAGIC || key->uri == NULL || prov_key_pub(key) == NULL) {
        prov_raise(ctx, PROV_R_BAD_KEY, "p11agent: only keys held by the agent can be encoded");
        return NULL;
    }
    return key;
}

/* Copies a memory BIO's contents to the core BIO. */
static int enc_flush(prov_ctx_t *ctx, OSSL_CORE_BIO *cout, BIO *mem)
{
    char *data = NULL;
    long n = BIO_get_mem_data(mem, &data);
    size_t done = 0;

    if (ctx->core_bio_write_ex == NULL || n < 0) {
        prov_raise(ctx, PROV_R_NOT_INITIALIZED, "p11agent: no output for the encoder");
        return 0;
    }
    while (done < (size_t)n) {
        size_t w = 0;

        if (!ctx->core_bio_write_ex(cout, data + done, (size_t)n - done, &w) || w == 0)
            return 0;
        done += w;
    }
    return 1;
}

static int enc_text_encode(void *vctx, OSSL_CORE_BIO *cout, const void *obj_raw,
                           const OSSL_PARAM obj_abstract[], int selection,
                           OSSL_PASSPHRASE_CALLBACK *cb, void *cbarg)
{
    prov_ctx_t *ctx = vctx;
    const prov_key_t *key = enc_key(ctx, obj_raw);
    BIO *mem = NULL;
    int ok = 0;

    if (key == NULL)
        return 0;
    mem = BIO_new(BIO_s_mem());
    if (mem == NULL || EVP_PKEY_print_public(mem, prov_key_pub(key), 0, NULL) <= 0)
        goto out;
    if (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY)
        BIO_printf(mem, "Private-Key: held on its token, never exported; it signs through "
                        "p11agent\nURI: %s\n", key->uri);
    ok = enc_flush(ctx, cout, mem);
out:
    if (!ok)
        prov_raise(ctx, PROV_R_BAD_KEY, "p11agent: cannot print the key %s", key->uri);
    BIO_free(mem);
    return ok;
}

static const bus_key_type_t kind_to_bus[PROV_KEY_KIND_COUNT] = {
    [PROV_KEY_RSA] = BUS_KEY_RSA,         [PROV_KEY_RSA_PSS] = BUS_KEY_RSA,
    [PROV_KEY_EC] = BUS_KEY_EC,           [PROV_KEY_ED25519] = BUS_KEY_ED25519,
    [PROV_KEY_ED448] = BUS_KEY_ED448,
};

static int enc_ref_encode(void *vctx, OSSL_CORE_BIO *cout, const void *obj_raw,
                          const OSSL_PARAM obj_abstract[], int selection,
                          OSSL_PASSPHRASE_CALLBACK *cb, void *cbarg)
{
    prov_ctx_t *ctx = vctx;
    const prov_key_t *key = enc_key(ctx, obj_raw);
    const char *why = NULL;
    uint8_t *der = NULL;
    size_t der_len = 0;
    BIO *mem = NULL;
    int ok = 0;

    if (key == NULL)
        return 0;
    if ((unsigned)key->kind >= PROV_KEY_KIND_COUNT ||
        bus_keyref_encode(key->uri, kind_to_bus[key->kind], &der, &der_len, &why) < 0) {
        prov_raise(ctx, PROV_R_BAD_KEY, "p11agent: cannot write a key reference for %s: %s",
                   key->uri, why ? why : "out of memory");
        return 0;
    }
    mem = BIO_new(BIO_s_mem());
    ok = mem != NULL && PEM_write_bio(mem, BUS_KEYREF_PEM_LABEL, "", der, (long)der_len) > 0 &&
         enc_flush(ctx, cout, mem);
    if (!ok)
        prov_raise(ctx, PROV_R_NO_MEMORY, "p11agent: cannot write the key reference for %s",
                   key->uri);
    BIO_free(mem);
    free(der);
    return ok;
}

#define FN(id, f) { id, (void (*)(void))(f) }

const OSSL_DISPATCH prov_text_encoder_functions[] = {
    FN(OSSL_FUNC_ENCODER_NEWCTX, enc_newctx),
    FN(OSSL_FUNC_ENCODER_FREECTX, enc_freectx),
    FN(OSSL_FUNC_ENCODER_DOES_SELECTION, enc_text_does_selection),
    FN(OSSL_FUNC_ENCODER_ENCODE, enc_text_encode),
    { 0, NULL },
};

const OSSL_DISPATCH prov_ref_encoder_functions[] = {
    FN(OSSL_FUNC_ENCODER_NEWCTX, enc_newctx),
    FN(OSSL_FUNC_ENCODER_FREECTX, enc_freectx),
    FN(OSSL_FUNC_ENCODER_DOES_SELECTION, enc_ref_does_selection),
    FN(OSSL_FUNC_ENCODER_ENCODE, enc_ref_encode),
    { 0, NULL },
};
