/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * OSSL_STORE loader for the pkcs11: scheme. open() asks the agent for the
 * keys matching the URI (FindKeys); load() then hands out, for each key,
 * the private key by reference (a pointer-sized reference to a key object
 * that our keymgmt's load() takes a reference on) and its certificate, if
 * the token has one, by value (DER).
 *
 * PINs never reach the provider: the passphrase callback is never used.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/store.h>

#include "provider.h"

typedef struct store_ctx {
    prov_ctx_t *ctx;
    char *uri;
    bus_key_info_t *keys;
    size_t n;
    size_t next;        /* next key to hand out */
    bool cert_pending;  /* the certificate of keys[next - 1] comes next */
    int expect;         /* OSSL_STORE_INFO_* or 0 */
} store_ctx_t;

static void store_free(store_ctx_t *st)
{
    if (st == NULL)
        return;
    bus_key_info_free_array(st->keys, st->n);
    free(st->uri);
    free(st);
}

int prov_find_keys(prov_ctx_t *ctx, const char *uri, const char *what,
                   bus_key_info_t **ret_keys, size_t *ret_n)
{
    bus_key_info_t *keys = NULL;
    size_t n = 0;
    char *msg = NULL;
    const char *open_p = what != NULL ? " (" : "", *close_p = what != NULL ? ")" : "";
    int r;

    if (what == NULL)
        what = "";
    r = prov_bus_find_keys(ctx, uri, &keys, &n, &msg);
    if (r != BUS_OK) {
        if (r == BUS_ERR_NO_SUCH_KEY)
            prov_raise(ctx, PROV_R_NO_SUCH_KEY, "p11agent: no key matches %s%s%s%s%s%s", uri,
                       open_p, what, close_p, msg != NULL ? ": " : "", msg != NULL ? msg : "");
        else
            prov_raise_bus(ctx, r, "looking up", uri, msg);
        free(msg);
        return 0;
    }
    free(msg);
    if (n == 0) {
        prov_raise(ctx, PROV_R_NO_SUCH_KEY,
                   "p11agent: no key matches %s%s%s%s (agent socket %s; is the token present?)",
                   uri, open_p, what, close_p, ctx->socket_path != NULL ? ctx->socket_path : "(none)");
        bus_key_info_free_array(keys, n);
        return 0;
    }
    *ret_keys = keys;
    *ret_n = n;
    return 1;
}

static void *store_open(void *provctx, const char *uri)
{
    prov_ctx_t *ctx = provctx;
    store_ctx_t *st = NULL;

    if (uri == NULL || strncasecmp(uri, "pkcs11:", 7) != 0)
        return NULL;
    st = calloc(1, sizeof(*st));
    if (st == NULL || (st->uri = strdup(uri)) == NULL) {
        prov_raise(ctx, PROV_R_NO_MEMORY, "p11agent: out of memory");
        goto err;
    }
    st->ctx = ctx;
    if (!prov_find_keys(ctx, uri, NULL, &st->keys, &st->n))
        goto err;
    return st;
err:
    store_free(st);
    return NULL;
}

int prov_pass_key(prov_ctx_t *ctx, const bus_key_info_t *info, OSSL_CALLBACK *cb, void *cbarg)
{
    prov_key_t *key = prov_key_from_info(ctx, info);
    OSSL_PARAM params[5];
    int type = OSSL_OBJECT_PKEY;
    int ok;

    if (key == NULL)
        return 0;
    /* RSA keys (PSS-only ones too) are served by the RSA keymgmt. */
    params[0] = OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &type);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE,
                                                 (char *)prov_key_kind_name(key->kind), 0);
    params[2] = OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &key,
                                                  sizeof(key));
    params[3] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DESC, key->uri, 0);
    params[4] = OSSL_PARAM_construct_end();
    ok = cb(params, cbarg);
    /* keymgmt load() took its own reference if the key was used. */
    prov_key_free(key);
    return ok;
}

/* Callers that ask for a public key (expect PUBKEY, e.g. `openssl pkey
 * -pubin`) get the SPKI by value, decoded by whichever provider can. */
static int store_load_pubkey(const bus_key_info_t *info, OSSL_CALLBACK *cb, void *cbarg)
{
    OSSL_PARAM params[5];
    int type = OSSL_OBJECT_PKEY;

    params[0] = OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &type);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE,
                                                 (char *)bus_key_type_name(info->type), 0);
    params[2] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_STRUCTURE,
                                                 "SubjectPublicKeyInfo", 0);
    params[3] = OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_DATA, info->spki,
                                                  info->spki_len);
    params[4] = OSSL_PARAM_construct_end();
    return cb(params, cbarg);
}

static int store_load_cert(const bus_key_info_t *info, OSSL_CALLBACK *cb, void *cbarg)
{
    OSSL_PARAM params[3];
    int type = OSSL_OBJECT_CERT;

    params[0] = OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &type);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_DATA, info->cert,
                                                  info->cert_len);
    params[2] = OSSL_PARAM_construct_end();
    return cb(params, cbarg);
}

/* A caller that wants one private key (OSSL_STORE_expect PKEY: `openssl
 * s_client -key URI`, `pkeyutl -inkey`) would take the first of several
 * matches and sign with whichever came first. Refuse, naming them, like
 * key-reference files and p11agentctl ref do; a listing (no expectation,
 * e.g. `openssl storeutl`) still gets every match. */
static bool store_ambiguous(store_ctx_t *st)
{
    char names[1024];
    size_t n = 0, o = 0;

    for (size_t i = 0; i < st->n; i++)
        n += st->keys[i].type != BUS_KEY_UNKNOWN;
    if (st->expect != OSSL_STORE_INFO_PKEY || n < 2)
        return false;
    names[0] = '\0';
    for (size_t i = 0; i < st->n && o + 1 < sizeof(names); i++) {
        int w;

        if (st->keys[i].type == BUS_KEY_UNKNOWN)
            continue;
        w = snprintf(names + o, sizeof(names) - o, "%s%s", o ? ", " : "", st->keys[i].uri);
        if (w < 0 || (size_t)w >= sizeof(names) - o) {
            snprintf(names + (sizeof(names) > o + 5 ? sizeof(names) - 5 : o), 5, "...");
            break;
        }
        o += (size_t)w;
    }
    prov_raise(st->ctx, PROV_R_AMBIGUOUS,
               "p11agent: %s matches %zu keys (%s); name one (add object= or id=; "
               "p11agentctl keys lists them)",
               st->uri, n, names);
    st->next = st->n;
    st->cert_pending = false;
    return true;
}

static int store_load(void *loaderctx, OSSL_CALLBACK *object_cb, void *object_cbarg,
                      OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    store_ctx_t *st = loaderctx;

    if (st != NULL && st->next == 0 && !st->cert_pending && store_ambiguous(st))
        return 0;

    while (st != NULL) {
        if (st->cert_pending) {
            const bus_key_info_t *info = &st->keys[st->next - 1];

            st->cert_pending = false;
            if (st->expect != 0 && st->expect != OSSL_STORE_INFO_CERT)
                continue;
            return store_load_cert(info, object_cb, object_cbarg);
        }
        if (st->next >= st->n)
            return 0;
        {
            const bus_key_info_t *info = &st->keys[st->next++];

            st->cert_pending = info->cert != NULL && info->cert_len > 0;
            if (info->type == BUS_KEY_UNKNOWN)
                continue;
            if (st->expect == OSSL_STORE_INFO_CERT)
                continue;
            if (st->expect == OSSL_STORE_INFO_PUBKEY)
                return store_load_pubkey(info, object_cb, object_cbarg);
            return prov_pass_key(st->ctx, info, object_cb, object_cbarg);
        }
    }
    return 0;
}

static int store_eof(void *loaderctx)
{
    const store_ctx_t *st = loaderctx;

    return st == NULL || (st->next >= st->n && !st->cert_pending);
}

static int store_close(void *loaderctx)
{
    store_free(loaderctx);
    return 1;
}

static int store_set_ctx_params(void *loaderctx, const OSSL_PARAM params[])
{
    store_ctx_t *st = loaderctx;
    const OSSL_PARAM *p;

    if (params == NULL)
        return 1;
    p = OSSL_PARAM_locate_const(params, OSSL_STORE_PARAM_EXPECT);
    if (p != NULL && !OSSL_PARAM_get_int(p, &st->expect))
        return 0;
    /* subject, issuer, serial, fingerprint, alias, properties, input-type:
     * the URI already says which key; accepted and ignored. */
    return 1;
}

static const OSSL_PARAM store_settable[] = {
    OSSL_PARAM_int(OSSL_STORE_PARAM_EXPECT, NULL),
    OSSL_PARAM_octet_string(OSSL_STORE_PARAM_SUBJECT, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_STORE_PARAM_PROPERTIES, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *store_settable_ctx_params(void *provctx)
{
    return store_settable;
}

/* Our keys can't be exported into another provider (their private half
 * stays in the agent). Present because some 3.0 paths call it unchecked. */
static int store_export_object(void *loaderctx, const void *objref, size_t objref_sz,
                               OSSL_CALLBACK *export_cb, void *export_cbarg)
{
    store_ctx_t *st = loaderctx;

    if (st != NULL)
        prov_raise(st->ctx, PROV_R_PRIVATE_REFUSED,
                   "p11agent: keys from %s can only be used through the p11agent provider",
                   st->uri);
    return 0;
}

#define FN(id, f) { id, (void (*)(void))(f) }

const OSSL_DISPATCH prov_store_functions[] = {
    FN(OSSL_FUNC_STORE_OPEN, store_open),
    FN(OSSL_FUNC_STORE_LOAD, store_load),
    FN(OSSL_FUNC_STORE_EOF, store_eof),
    FN(OSSL_FUNC_STORE_CLOSE, store_close),
    FN(OSSL_FUNC_STORE_SET_CTX_PARAMS, store_set_ctx_params),
    FN(OSSL_FUNC_STORE_SETTABLE_CTX_PARAMS, store_settable_ctx_params),
    FN(OSSL_FUNC_STORE_EXPORT_OBJECT, store_export_object),
    { 0, NULL },
};
