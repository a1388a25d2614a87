/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11agent.so entry point: OSSL_provider_init, the operation tables,
 * provider parameters and error reporting.
 *
 * Configuration (openssl.cnf):
 *   [p11agent_sect]
 *   module = /usr/lib/x86_64-linux-gnu/ossl-modules/p11agent.so
 *   agent-socket = /run/p11agent/agent.sock     # optional
 *   max-connections = 32                        # optional, 1-64
 *   activate = 1
 * $P11AGENT_SOCKET overrides agent-socket, $P11AGENT_MAX_CONNECTIONS
 * max-connections. All are read once, here.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/opensslv.h>
#include <openssl/provider.h>

#include "keyref.h"
#include "provider.h"

#define ALG(names, funcs) { names, PROV_PROPS, funcs, NULL }

static const OSSL_ALGORITHM prov_keymgmt[] = {
    ALG("RSA:rsaEncryption:1.2.840.113549.1.1.1", prov_rsa_keymgmt_functions),
    ALG("RSA-PSS:RSASSA-PSS:1.2.840.113549.1.1.10", prov_rsapss_keymgmt_functions),
    ALG("EC:id-ecPublicKey:1.2.840.10045.2.1", prov_ec_keymgmt_functions),
    ALG("ED25519:1.3.101.112", prov_ed25519_keymgmt_functions),
    ALG("ED448:1.3.101.113", prov_ed448_keymgmt_functions),
    { NULL, NULL, NULL, NULL },
};

static const OSSL_ALGORITHM prov_signature[] = {
    ALG("RSA:rsaEncryption:1.2.840.113549.1.1.1", prov_rsa_signature_functions),
    ALG("ECDSA", prov_ecdsa_signature_functions),
    ALG("ED25519:1.3.101.112", prov_ed25519_signature_functions),
    ALG("ED448:1.3.101.113", prov_ed448_signature_functions),
    { NULL, NULL, NULL, NULL },
};

static const OSSL_ALGORITHM prov_asym_cipher[] = {
    ALG("RSA:rsaEncryption:1.2.840.113549.1.1.1", prov_rsa_asym_cipher_functions),
    { NULL, NULL, NULL, NULL },
};

static const OSSL_ALGORITHM prov_store[] = {
    ALG("pkcs11", prov_store_functions),
    { NULL, NULL, NULL, NULL },
};

/* Key-reference files (decoder.c): our PEM labels -> key (named "PVK", not
 * "DER", so that the decoder contexts of certificates never take it: see
 * decoder.c), and DER -> key by reference, one decoder per key type and
 * structure, named by the keymgmt names: OSSL_DECODER_CTX_new_for_pkey picks
 * decoders by them. */
#define DEC(names, props, funcs) { names, PROV_PROPS "," props, funcs, NULL }
#define DEC_KEY(names, funcs)                                                     \
    DEC(names, "input=der,structure=" BUS_KEYREF_STRUCTURE, funcs),               \
    DEC(names, "input=der,structure=" BUS_KEYREF_PK11PROV_STRUCTURE, funcs)

static const OSSL_ALGORITHM prov_decoder[] = {
    DEC("PVK", "input=pem", prov_pem_decoder_functions),
    DEC_KEY("RSA:rsaEncryption:1.2.840.113549.1.1.1", prov_rsa_decoder_functions),
    DEC_KEY("EC:id-ecPublicKey:1.2.840.10045.2.1", prov_ec_decoder_functions),
    DEC_KEY("ED25519:1.3.101.112", prov_ed25519_decoder_functions),
    DEC_KEY("ED448:1.3.101.113", prov_ed448_decoder_functions),
    { NULL, NULL, NULL, NULL },
};

/* Encoders (encoder.c), by keymgmt name like the decoders. */
#define ENC_KEY(names)                                                            \
    DEC(names, "output=text", prov_text_encoder_functions),                       \
    DEC(names, "output=pem,structure=PrivateKeyInfo", prov_ref_encoder_functions)

static const OSSL_ALGORITHM prov_encoder[] = {
    ENC_KEY("RSA:rsaEncryption:1.2.840.113549.1.1.1"),
    ENC_KEY("RSA-PSS:RSASSA-PSS:1.2.840.113549.1.1.10"),
    ENC_KEY("EC:id-ecPublicKey:1.2.840.10045.2.1"),
    ENC_KEY("ED25519:1.3.101.112"),
    ENC_KEY("ED448:1.3.101.113"),
    { NULL, NULL, NULL, NULL },
};

static const OSSL_ITEM prov_reason_strings[] = {
    { PROV_R_AGENT, "p11agent agent error" },
    { PROV_R_NOT_RUNNING, "p11agent agent not reachable" },
    { PROV_R_NO_SUCH_KEY, "no such key" },
    { PROV_R_NO_MEMORY, "out of memory" },
    { PROV_R_BAD_KEY, "unusable key data" },
    { PROV_R_PRIVATE_REFUSED, "private key parts never leave the agent" },
    { PROV_R_BAD_PARAM, "invalid parameter" },
    { PROV_R_UNSUPPORTED, "unsupported algorithm" },
    { PROV_R_BUFFER_TOO_SMALL, "output buffer too small" },
    { PROV_R_NOT_INITIALIZED, "operation not initialized" },
    { PROV_R_BAD_SIGNATURE, "malformed signature from agent" },
    { PROV_R_AMBIGUOUS, "the URI matches several keys" },
    { PROV_R_BAD_PLAINTEXT, "malformed plaintext from agent" },
    { 0, NULL },
};

void prov_raise_at(const prov_ctx_t *ctx, int reason, const char *file, int line,
                   const char *func, const char *fmt, ...)
{
    va_list ap;

    if (ctx == NULL || ctx->core_new_error == NULL || ctx->core_vset_error == NULL)
        return;
    ctx->core_new_error(ctx->handle);
    if (ctx->core_set_error_debug != NULL)
        ctx->core_set_error_debug(ctx->handle, file, line, func);
    va_start(ap, fmt);
    ctx->core_vset_error(ctx->handle, (uint32_t)reason, fmt, ap);
    va_end(ap);
}

void prov_raise_bus(const prov_ctx_t *ctx, int err, const char *what, const char *uri,
                    const char *msg)
{
    int reason = PROV_R_AGENT;

    if (err == BUS_ERR_NOT_RUNNING || err == BUS_ERR_DISCONNECTED)
        reason = PROV_R_NOT_RUNNING;
    else if (err == BUS_ERR_NO_SUCH_KEY)
        reason = PROV_R_NO_SUCH_KEY;
    else if (err == BUS_ERR_NO_MEMORY)
        reason = PROV_R_NO_MEMORY;
    const char *cause = bus_err_str((bus_err_t)err);

    if (msg == NULL)
        msg = "";
    /* The client's own messages often start with the cause already. */
    if (strncmp(msg, cause, strlen(cause)) == 0)
        cause = "";
    prov_raise_at(ctx, reason, __FILE__, __LINE__, __func__, "p11agent: %s %s failed: %s%s%s",
                  what, uri != NULL ? uri : "", cause, *cause != '\0' && *msg != '\0' ? ": " : "",
                  msg);
}

prov_ctx_t *prov_ctx_new(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                         const char *socket_path, bool disabled)
{
    prov_ctx_t *ctx = calloc(1, sizeof(*ctx));

    if (ctx == NULL)
        return NULL;
    ctx->handle = handle;
    ctx->disabled = disabled;
    for (; in != NULL && in->function_id != 0; in++) {
        switch (in->function_id) {
        case OSSL_FUNC_CORE_NEW_ERROR:
            ctx->core_new_error = OSSL_FUNC_core_new_error(in);
            break;
        case OSSL_FUNC_CORE_SET_ERROR_DEBUG:
            ctx->core_set_error_debug = OSSL_FUNC_core_set_error_debug(in);
            break;
        case OSSL_FUNC_CORE_VSET_ERROR:
            ctx->core_vset_error = OSSL_FUNC_core_vset_error(in);
            break;
        case OSSL_FUNC_BIO_READ_EX:
            ctx->core_bio_read_ex = OSSL_FUNC_BIO_read_ex(in);
            break;
        case OSSL_FUNC_BIO_GETS:
            ctx->core_bio_gets = OSSL_FUNC_BIO_gets(in);
            break;
        case OSSL_FUNC_BIO_WRITE_EX:
            ctx->core_bio_write_ex = OSSL_FUNC_BIO_write_ex(in);
            break;
        default:
            break;
        }
    }
    if (disabled)
        return ctx;

    /* bus_socket_path reads $P11AGENT_SOCKET, then the configured path,
     * then the per-user default: once, now (nginx workers sign with a
     * scrubbed environment). The pool is made on the first agent call. */
    ctx->socket_path = bus_socket_path(socket_path);
    return ctx;
}

OSSL_LIB_CTX *prov_libctx(prov_ctx_t *ctx)
{
    OSSL_LIB_CTX *l = atomic_load_explicit(&ctx->libctx, memory_order_acquire), *expected = NULL;
    OSSL_PROVIDER *def;

    if (l != NULL)
        return l;
    /* Threads may race to make it: one wins, the others free theirs. */
    l = OSSL_LIB_CTX_new();
    def = l != NULL ? OSSL_PROVIDER_load(l, "default") : NULL;
    if (def == NULL) {
        OSSL_LIB_CTX_free(l);
        prov_raise(ctx, PROV_R_NO_MEMORY,
                   "p11agent: cannot make a library context with the default provider");
        return NULL;
    }
    if (atomic_compare_exchange_strong_explicit(&ctx->libctx, &expected, l, memory_order_acq_rel,
                                                memory_order_acquire)) {
        ctx->default_prov = def; /* read only by prov_ctx_free */
        return l;
    }
    OSSL_PROVIDER_unload(def);
    OSSL_LIB_CTX_free(l);
    return expected;
}

EVP_MD *prov_fetch_md(prov_ctx_t *ctx, const char *name)
{
    unsigned n = atomic_load(&ctx->md_used), i;
    size_t len = strlen(name);
    EVP_MD *md;

    for (i = 0; i < n && i < PROV_MD_CACHE; i++) {
        md = atomic_load_explicit(&ctx->md_cache[i].md, memory_order_acquire);
        if (md != NULL && strcmp(ctx->md_cache[i].name, name) == 0)
            return EVP_MD_up_ref(md) ? md : NULL;
    }
    if (prov_libctx(ctx) == NULL)
        return NULL;
    md = EVP_MD_fetch(prov_libctx(ctx), name, NULL);
    if (md == NULL || len >= PROV_MD_NAME_MAX || atomic_load(&ctx->md_used) >= PROV_MD_CACHE)
        return md;
    i = atomic_fetch_add(&ctx->md_used, 1);
    if (i < PROV_MD_CACHE && EVP_MD_up_ref(md)) {
        /* two threads may cache the same name: harmless */
        memcpy(ctx->md_cache[i].name, name, len + 1);
        ctx->md_cache[i].wire = prov_md_wire_name(md);
        ctx->md_cache[i].md5sha1 = prov_md_is_md5_sha1(md);
        atomic_store_explicit(&ctx->md_cache[i].md, md, memory_order_release);
    }
    return md;
}

const char *prov_md_wire(prov_ctx_t *ctx, const EVP_MD *md, bool *ret_md5sha1)
{
    unsigned n = atomic_load(&ctx->md_used);

    /* the cache holds a reference to each of its digests: a pointer found
     * there is that digest, never a freed one's successor */
    for (unsigned i = 0; i < n && i < PROV_MD_CACHE; i++) {
        if (atomic_load_explicit(&ctx->md_cache[i].md, memory_order_acquire) == md) {
            *ret_md5sha1 = ctx->md_cache[i].md5sha1;
            return ctx->md_cache[i].wire;
        }
    }
    *ret_md5sha1 = prov_md_is_md5_sha1(md);
    return prov_md_wire_name(md);
}

void prov_ctx_free(prov_ctx_t *ctx)
{
    if (ctx == NULL)
        return;
    for (size_t i = 0; i < PROV_MD_CACHE; i++)
        EVP_MD_free(atomic_load(&ctx->md_cache[i].md));
    prov_bus_free(ctx);
    free(ctx->socket_path);
    if (atomic_load(&ctx->libctx) != NULL) {
        OSSL_PROVIDER_unload(ctx->default_prov);
        OSSL_LIB_CTX_free(atomic_load(&ctx->libctx));
    }
    free(ctx);
}

static void prov_teardown(void *provctx)
{
    prov_ctx_free(provctx);
}

static const OSSL_PARAM prov_gettable[] = {
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_NAME, OSSL_PARAM_UTF8_PTR, NULL, 0),
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_VERSION, OSSL_PARAM_UTF8_PTR, NULL, 0),
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_BUILDINFO, OSSL_PARAM_UTF8_PTR, NULL, 0),
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_STATUS, OSSL_PARAM_INTEGER, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *prov_gettable_params(void *provctx)
{
    return prov_gettable;
}

static int prov_get_params(void *provctx, OSSL_PARAM params[])
{
    OSSL_PARAM *p;

    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_NAME);
    if (p != NULL && !OSSL_PARAM_set_utf8_ptr(p, "p11agent: keys held by p11agentd"))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_VERSION);
    if (p != NULL && !OSSL_PARAM_set_utf8_ptr(p, P11AGENT_VERSION))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_BUILDINFO);
    if (p != NULL && !OSSL_PARAM_set_utf8_ptr(p, P11AGENT_VERSION " (" OPENSSL_VERSION_TEXT ")"))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_STATUS);
    if (p != NULL && !OSSL_PARAM_set_int(p, 1))
        return 0;
    return 1;
}

static const OSSL_ALGORITHM *prov_query_operation(void *provctx, int operation_id,
                                                  int *no_cache)
{
    const prov_ctx_t *ctx = provctx;

    *no_cache = 0;
    if (ctx->disabled)
        return NULL;
    switch (operation_id) {
    case OSSL_OP_KEYMGMT:
        return prov_keymgmt;
    case OSSL_OP_SIGNATURE:
        return prov_signature;
    case OSSL_OP_ASYM_CIPHER:
        return prov_asym_cipher;
    case OSSL_OP_STORE:
        return prov_store;
    case OSSL_OP_DECODER:
        return prov_decoder;
    case OSSL_OP_ENCODER:
        return prov_encoder;
    default:
        return NULL;
    }
}

static const OSSL_ITEM *prov_get_reason_strings(void *provctx)
{
    return prov_reason_strings;
}

static const OSSL_DISPATCH prov_functions[] = {
    { OSSL_FUNC_PROVIDER_TEARDOWN, (void (*)(void))prov_teardown },
    { OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, (void (*)(void))prov_gettable_params },
    { OSSL_FUNC_PROVIDER_GET_PARAMS, (void (*)(void))prov_get_params },
    { OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))prov_query_operation },
    { OSSL_FUNC_PROVIDER_GET_REASON_STRINGS, (void (*)(void))prov_get_reason_strings },
    { 0, NULL },
};

/* Reads a setting from our openssl.cnf section; NULL if unset. */
static const char *prov_configured(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                                   const char *name)
{
    OSSL_FUNC_core_get_params_fn *get_params = NULL;
    char *value = NULL;
    OSSL_PARAM params[2];

    for (; in != NULL && in->function_id != 0; in++) {
        if (in->function_id == OSSL_FUNC_CORE_GET_PARAMS)
            get_params = OSSL_FUNC_core_get_params(in);
    }
    if (get_params == NULL)
        return NULL;
    params[0] = OSSL_PARAM_construct_utf8_ptr(name, &value, 0);
    params[1] = OSSL_PARAM_construct_end();
    if (!get_params(handle, params) || value == NULL || *value == '\0')
        return NULL;
    return value;
}

/* max-connections (or $P11AGENT_MAX_CONNECTIONS): 1 to BUS_POOL_MAX_MAX,
 * else 0 (the pool's default). */
static unsigned prov_max_connections(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in)
{
    const char *v = getenv("P11AGENT_MAX_CONNECTIONS");
    char *end = NULL;
    unsigned long n;

    if (v == NULL || *v == '\0')
        v = prov_configured(handle, in, "max-connections");
    if (v == NULL)
        return 0;
    n = strtoul(v, &end, 10);
    if (end == v || *end != '\0' || n == 0)
        return 0;
    return n > BUS_POOL_MAX_MAX ? BUS_POOL_MAX_MAX : (unsigned)n;
}

__attribute__((visibility("default"))) int OSSL_provider_init(const OSSL_CORE_HANDLE *handle,
                                                              const OSSL_DISPATCH *in,
                                                              const OSSL_DISPATCH **out,
                                                              void **provctx)
{
    /* p11agentd sets this: the agent must never sign through itself. */
    bool disabled = getenv("P11AGENT_AGENT_PROCESS") != NULL;
    const char *configured = disabled ? NULL : prov_configured(handle, in, "agent-socket");
    prov_ctx_t *ctx = prov_ctx_new(handle, in, configured, disabled);

    if (ctx == NULL)
        return 0;
    if (!disabled)
        ctx->max_connections = prov_max_connections(handle, in);
    *out = prov_functions;
    *provctx = ctx;
    return 1;
}
