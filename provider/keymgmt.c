/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Key management for keys held by the agent: RSA, RSA-PSS, EC, ED25519 and
 * ED448, with the default provider's names so that libssl's EVP_PKEY_is_a
 * finds them.
 *
 * A key object is built once (from an agent record by the store, or from
 * public parameters by import) and is immutable afterwards: many SSL
 * objects and threads share it by reference count. It holds the public
 * half as an EVP_PKEY in the provider's own library context; everything
 * public beyond the sizes (params, export, comparison) is answered from
 * that. An agent key of a common shape keeps only its SPKI and sizes
 * (spki.c) until something needs the EVP_PKEY (prov_key_pub decodes it
 * then, once): a process that loads a key and signs never decodes it. Nothing
 * private ever leaves: export and import refuse any selection with the
 * private key, so OpenSSL never moves our key to another provider and
 * signs with half a key.
 */
#include "config.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/x509.h>

#include "provider.h"

static const char *const kind_names[PROV_KEY_KIND_COUNT] = {
    [PROV_KEY_RSA] = "RSA",
    [PROV_KEY_RSA_PSS] = "RSA-PSS",
    [PROV_KEY_EC] = "EC",
    [PROV_KEY_ED25519] = "ED25519",
    [PROV_KEY_ED448] = "ED448",
};

const char *prov_key_kind_name(prov_key_kind_t kind)
{
    return (unsigned)kind < PROV_KEY_KIND_COUNT ? kind_names[kind] : "?";
}

prov_key_t *prov_key_new(prov_ctx_t *ctx, prov_key_kind_t kind)
{
    prov_key_t *key = calloc(1, sizeof(*key));

    if (key == NULL) {
        prov_raise(ctx, PROV_R_NO_MEMORY, "p11agent: out of memory");
        return NULL;
    }
    key->magic = PROV_KEY_MAGIC;
    atomic_init(&key->refs, 1);
    key->ctx = ctx;
    key->kind = kind;
    return key;
}

prov_key_t *prov_key_up_ref(prov_key_t *key)
{
    if (key != NULL)
        atomic_fetch_add(&key->refs, 1);
    return key;
}

void prov_key_free(prov_key_t *key)
{
    if (key == NULL || atomic_fetch_sub(&key->refs, 1) != 1)
        return;
    EVP_PKEY_free(atomic_load(&key->pub));
    free(key->uri);
    free(key->group);
    free(key->spki);
    free(key->cert);
    key->magic = 0;
    free(key);
}

/* Sets key->pub and the cached figures. Only on a key nobody else sees. */
static int key_set_public(prov_key_t *key, EVP_PKEY *pub)
{
    char group[64];

    if (!EVP_PKEY_is_a(pub, prov_key_kind_name(key->kind))) {
        prov_raise(key->ctx, PROV_R_BAD_KEY, "p11agent: public key of %s is not a %s key",
                   key->uri != NULL ? key->uri : "(imported)", prov_key_kind_name(key->kind));
        return 0;
    }
    if (key->kind == PROV_KEY_EC) {
        if (!EVP_PKEY_get_utf8_string_param(pub, OSSL_PKEY_PARAM_GROUP_NAME, group,
                                            sizeof(group), NULL)) {
            prov_raise(key->ctx, PROV_R_BAD_KEY,
                       "p11agent: EC key %s has no named group (explicit curves are "
                       "not supported)", key->uri != NULL ? key->uri : "(imported)");
            return 0;
        }
        key->group = strdup(group);
        if (key->group == NULL) {
            prov_raise(key->ctx, PROV_R_NO_MEMORY, "p11agent: out of memory");
            return 0;
        }
    }
    key->bits = EVP_PKEY_get_bits(pub);
    key->security_bits = EVP_PKEY_get_security_bits(pub);
    /* RSA: modulus bytes; EC: maximal ECDSA DER size; EdDSA: 64/114. */
    key->max_size = EVP_PKEY_get_size(pub);
    if (key->bits <= 0 || key->max_size <= 0) {
        prov_raise(key->ctx, PROV_R_BAD_KEY, "p11agent: cannot size key %s",
                   key->uri != NULL ? key->uri : "(imported)");
        return 0;
    }
    key->pub = pub;
    return 1;
}

static void *memdup(const void *p, size_t n)
{
    void *q;

    if (n == 0)
        return NULL;
    q = malloc(n);
    if (q != NULL)
        memcpy(q, p, n);
    return q;
}

prov_key_t *prov_key_from_spki(prov_ctx_t *ctx, prov_key_kind_t kind, const char *uri,
                               const uint8_t *spki, size_t spki_len, const uint8_t *cert,
                               size_t cert_len, uint32_t flags)
{
    prov_key_t *key = prov_key_new(ctx, kind);
    const unsigned char *p = spki;
    EVP_PKEY *pub = NULL;
    OSSL_LIB_CTX *libctx;
    prov_spki_sizes_t sz;

    if (key == NULL)
        return NULL;
    key->flags = flags;
    if (uri != NULL && (key->uri = strdup(uri)) == NULL)
        goto nomem;
    if (spki_len > 0 && (key->spki = memdup(spki, spki_len)) == NULL)
        goto nomem;
    key->spki_len = spki_len;
    if (cert_len > 0 && (key->cert = memdup(cert, cert_len)) == NULL)
        goto nomem;
    key->cert_len = cert_len;

    if (uri != NULL && spki_len > 0 && prov_spki_sizes(kind, spki, spki_len, &sz)) {
        /* decoded on first use (prov_key_pub) */
        if (sz.group != NULL && (key->group = strdup(sz.group)) == NULL)
            goto nomem;
        key->bits = sz.bits;
        key->security_bits = sz.security_bits;
        key->max_size = sz.max_size;
        return key;
    }
    if (spki_len == 0 || spki_len > LONG_MAX || (libctx = prov_libctx(ctx)) == NULL
        || (pub = d2i_PUBKEY_ex(NULL, &p, (long)spki_len, libctx, NULL)) == NULL) {
        prov_raise(ctx, PROV_R_BAD_KEY, "p11agent: cannot decode the public key of %s",
                   uri != NULL ? uri : "(imported)");
        goto err;
    }
    if (!key_set_public(key, pub))
        goto err;
    return key;
nomem:
    prov_raise(ctx, PROV_R_NO_MEMORY, "p11agent: out of memory");
err:
    EVP_PKEY_free(pub);
    prov_key_free(key);
    return NULL;
}

bool prov_key_has_pub(const prov_key_t *key)
{
    return atomic_load(&((prov_key_t *)key)->pub) != NULL ||
           (key->uri != NULL && key->spki_len > 0);
}

EVP_PKEY *prov_key_pub(const prov_key_t *ckey)
{
    /* logically const: the decoded key is a cache, published once */
    prov_key_t *key = (prov_key_t *)ckey;
    EVP_PKEY *pub = atomic_load_explicit(&key->pub, memory_order_acquire), *expected = NULL;
    const unsigned char *p = key->spki;
    OSSL_LIB_CTX *libctx;

    if (pub != NULL || key->uri == NULL || key->spki_len == 0)
        return pub;
    if ((libctx = prov_libctx(key->ctx)) == NULL)
        return NULL;
    pub = d2i_PUBKEY_ex(NULL, &p, (long)key->spki_len, libctx, NULL);
    /* the figures given out since the load must be this key's */
    if (pub == NULL || !EVP_PKEY_is_a(pub, prov_key_kind_name(key->kind))
        || EVP_PKEY_get_bits(pub) != key->bits || EVP_PKEY_get_size(pub) != key->max_size
        || EVP_PKEY_get_security_bits(pub) != key->security_bits) {
        prov_raise(key->ctx, PROV_R_BAD_KEY, "p11agent: cannot decode the public key of %s",
                   key->uri);
        EVP_PKEY_free(pub);
        return NULL;
    }
    /* Threads may race to decode it: one wins, the others free theirs. */
    if (atomic_compare_exchange_strong_explicit(&key->pub, &expected, pub, memory_order_acq_rel,
                                                memory_order_acquire))
        return pub;
    EVP_PKEY_free(pub);
    return expected;
}

prov_key_t *prov_key_from_info(prov_ctx_t *ctx, const bus_key_info_t *info)
{
    prov_key_kind_t kind;

    switch (info->type) {
    case BUS_KEY_RSA:
        kind = PROV_KEY_RSA;
        break;
    case BUS_KEY_EC:
        kind = PROV_KEY_EC;
        break;
    case BUS_KEY_ED25519:
        kind = PROV_KEY_ED25519;
        break;
    case BUS_KEY_ED448:
        kind = PROV_KEY_ED448;
        break;
    default:
        prov_raise(ctx, PROV_R_BAD_KEY, "p11agent: key %s has an unsupported type",
                   info->uri != NULL ? info->uri : "");
        return NULL;
    }
    return prov_key_from_spki(ctx, kind, info->uri, info->spki, info->spki_len, info->cert,
                              info->cert_len, info->flags);
}

/* --- dispatch functions --- */

#define DEFINE_NEW(name, kind)                  \
    static void *name(void *provctx)            \
    {                                           \
        return prov_key_new(provctx, kind);     \
    }
DEFINE_NEW(rsa_new, PROV_KEY_RSA)
DEFINE_NEW(rsapss_new, PROV_KEY_RSA_PSS)
DEFINE_NEW(ec_new, PROV_KEY_EC)
DEFINE_NEW(ed25519_new, PROV_KEY_ED25519)
DEFINE_NEW(ed448_new, PROV_KEY_ED448)

static void km_free(void *keydata)
{
    prov_key_free(keydata);
}

/* The store passes a pointer-sized reference to a key object it owns; we
 * take a reference of our own. */
static void *km_load(const void *reference, size_t reference_sz)
{
    prov_key_t *key;

    if (reference == NULL || reference_sz != sizeof(key))
        return NULL;
    memcpy(&key, reference, sizeof(key));
    if (key == NULL || key->magic != PROV_KEY_MAGIC)
        return NULL;
    return prov_key_up_ref(key);
}

static int km_has(const void *keydata, int selection)
{
    const prov_key_t *key = keydata;

    if (key == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) && !prov_key_is_private(key))
        return 0;
    if ((selection & (OSSL_KEYMGMT_SELECT_PUBLIC_KEY | OSSL_KEYMGMT_SELECT_ALL_PARAMETERS))
        && !prov_key_has_pub(key))
        return 0;
    return 1;
}

static int km_match(const void *keydata1, const void *keydata2, int selection)
{
    prov_key_t *a = (prov_key_t *)keydata1, *b = (prov_key_t *)keydata2;
    EVP_PKEY *pa, *pb;

    if (a == NULL || b == NULL || a->kind != b->kind)
        return 0;
    if (a == b)
        return 1;
    pa = prov_key_pub(a);
    pb = prov_key_pub(b);
    if (pa == NULL || pb == NULL)
        return 0;
    if (selection & OSSL_KEYMGMT_SELECT_KEYPAIR)
        return EVP_PKEY_eq(pa, pb) == 1;
    if (selection & OSSL_KEYMGMT_SELECT_DOMAIN_PARAMETERS) {
        if (a->kind == PROV_KEY_EC)
            return EVP_PKEY_parameters_eq(pa, pb) == 1;
    }
    return 1;
}

static int km_import(void *keydata, int selection, const OSSL_PARAM params[])
{
    prov_key_t *key = keydata;
    EVP_PKEY_CTX *pctx = NULL;
    EVP_PKEY *pub = NULL;
    int sel, ok = 0;

    if (key == NULL)
        return 0;
    if (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) {
        prov_raise(key->ctx, PROV_R_PRIVATE_REFUSED,
                   "p11agent: importing a private key is not supported");
        return 0;
    }
    if (key->pub != NULL || key->uri != NULL) {
        prov_raise(key->ctx, PROV_R_BAD_KEY, "p11agent: key objects are immutable");
        return 0;
    }
    if (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY)
        sel = EVP_PKEY_PUBLIC_KEY;
    else if (selection & OSSL_KEYMGMT_SELECT_ALL_PARAMETERS)
        sel = EVP_PKEY_KEY_PARAMETERS;
    else
        return 1; /* nothing to import */

    pctx = prov_libctx(key->ctx) == NULL ? NULL
           : EVP_PKEY_CTX_new_from_name(prov_libctx(key->ctx), prov_key_kind_name(key->kind), NULL);
    if (pctx == NULL || EVP_PKEY_fromdata_init(pctx) <= 0
        || EVP_PKEY_fromdata(pctx, &pub, sel, (OSSL_PARAM *)params) <= 0) {
        prov_raise(key->ctx, PROV_R_BAD_KEY, "p11agent: cannot import %s public key",
                   prov_key_kind_name(key->kind));
        goto out;
    }
    if (sel == EVP_PKEY_KEY_PARAMETERS) {
        /* Parameters only: keep them, no sizes to cache for RSA/EdDSA. */
        key->pub = pub;
        pub = NULL;
        ok = 1;
        goto out;
    }
    if (!key_set_public(key, pub))
        goto out;
    pub = NULL;
    ok = 1;
out:
    EVP_PKEY_free(pub);
    EVP_PKEY_CTX_free(pctx);
    return ok;
}

static int km_export(void *keydata, int selection, OSSL_CALLBACK *param_cb, void *cbarg)
{
    prov_key_t *key = keydata;
    EVP_PKEY *pub;
    int sel;

    if (key == NULL)
        return 0;
    /* The private key stays in the agent. No error is raised: libssl asks
     * for it on every handshake (and copes), and an error left on the
     * queue would cost each handshake and could confuse the application. */
    if (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY)
        return 0;
    if (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY)
        sel = EVP_PKEY_PUBLIC_KEY;
    else if (selection & OSSL_KEYMGMT_SELECT_ALL_PARAMETERS)
        sel = EVP_PKEY_KEY_PARAMETERS;
    else
        return 0;
    if ((pub = prov_key_pub(key)) == NULL)
        return 0;
    return EVP_PKEY_export(pub, sel, param_cb, cbarg);
}

static void *km_dup(const void *keydata_from, int selection)
{
    /* Immutable: a duplicate is the same object. */
    return prov_key_up_ref((prov_key_t *)keydata_from);
}

/* --- parameters --- */

/* Whether params asks for anything but the figures answered from the key
 * object itself (then the public key is decoded, if it was not yet). */
static bool params_need_pub(const OSSL_PARAM params[])
{
    static const char *const own[] = {
        OSSL_PKEY_PARAM_BITS, OSSL_PKEY_PARAM_SECURITY_BITS, OSSL_PKEY_PARAM_MAX_SIZE,
        OSSL_PKEY_PARAM_DEFAULT_DIGEST, OSSL_PKEY_PARAM_MANDATORY_DIGEST,
        OSSL_PKEY_PARAM_GROUP_NAME,
    };

    for (const OSSL_PARAM *p = params; p != NULL && p->key != NULL; p++) {
        bool mine = false;

        for (size_t i = 0; i < sizeof(own) / sizeof(own[0]) && !mine; i++)
            mine = strcmp(p->key, own[i]) == 0;
        if (!mine)
            return true;
    }
    return false;
}

static int km_get_params(void *keydata, OSSL_PARAM params[])
{
    prov_key_t *key = keydata;
    EVP_PKEY *pub;
    OSSL_PARAM *p;

    if (key == NULL)
        return 0;
    /* Everything public comes from the inner key (n, e, pub, group,
     * encoded-pub-key, point-format, ...); the sizes are our cached ones. */
    pub = params_need_pub(params) ? prov_key_pub(key) : NULL;
    if (pub != NULL && !EVP_PKEY_get_params(pub, params))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_BITS)) != NULL
        && !OSSL_PARAM_set_int(p, key->bits))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_SECURITY_BITS)) != NULL
        && !OSSL_PARAM_set_int(p, key->security_bits))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_MAX_SIZE)) != NULL
        && !OSSL_PARAM_set_int(p, key->max_size))
        return 0;
    switch (key->kind) {
    case PROV_KEY_RSA:
    case PROV_KEY_RSA_PSS:
    case PROV_KEY_EC:
        if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_DEFAULT_DIGEST)) != NULL
            && !OSSL_PARAM_set_utf8_string(p, "SHA256"))
            return 0;
        break;
    case PROV_KEY_ED25519:
    case PROV_KEY_ED448:
        if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_MANDATORY_DIGEST)) != NULL
            && !OSSL_PARAM_set_utf8_string(p, ""))
            return 0;
        break;
    default:
        break;
    }
    if (key->group != NULL
        && (p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_GROUP_NAME)) != NULL
        && !OSSL_PARAM_set_utf8_string(p, key->group))
        return 0;
    return 1;
}

#define COMMON_GETTABLE                                                      \
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),                              \
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),                     \
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL)

static const OSSL_PARAM rsa_gettable[] = {
    COMMON_GETTABLE,
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM ec_gettable[] = {
    COMMON_GETTABLE,
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_X, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_Y, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM ecx_gettable[] = {
    COMMON_GETTABLE,
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_MANDATORY_DIGEST, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *rsa_gettable_params(void *provctx)
{
    return rsa_gettable;
}

static const OSSL_PARAM *ec_gettable_params(void *provctx)
{
    return ec_gettable;
}

static const OSSL_PARAM *ecx_gettable_params(void *provctx)
{
    return ecx_gettable;
}

/* Public parts only, for import and export. */
static const OSSL_PARAM rsa_types[] = {
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM rsapss_types[] = {
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_RSA_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_RSA_MASKGENFUNC, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_RSA_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_RSA_PSS_SALTLEN, NULL),
    OSSL_PARAM_END,
};

static const OSSL_PARAM ec_types[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_FIELD_TYPE, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_P, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_A, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_B, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_EC_GENERATOR, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_ORDER, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_COFACTOR, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_EC_SEED, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM ecx_types[] = {
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM no_types[] = { OSSL_PARAM_END };

#define DEFINE_TYPES(name, table)                                        \
    static const OSSL_PARAM *name(int selection)                         \
    {                                                                    \
        if (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY)                 \
            return no_types;                                             \
        return table;                                                    \
    }
DEFINE_TYPES(rsa_types_fn, rsa_types)
DEFINE_TYPES(rsapss_types_fn, rsapss_types)
DEFINE_TYPES(ec_types_fn, ec_types)
DEFINE_TYPES(ecx_types_fn, ecx_types)

#define DEFINE_OPNAME(name, sig)                                         \
    static const char *name(int operation_id)                           \
    {                                                                    \
        return operation_id == OSSL_OP_SIGNATURE ? sig : NULL;           \
    }
DEFINE_OPNAME(rsa_opname, "RSA")
DEFINE_OPNAME(ec_opname, "ECDSA")
DEFINE_OPNAME(ed25519_opname, "ED25519")
DEFINE_OPNAME(ed448_opname, "ED448")

#define FN(id, f) { id, (void (*)(void))(f) }

#define KEYMGMT_TABLE(name, newfn, gettable, types, opname)                 \
    const OSSL_DISPATCH name[] = {                                          \
        FN(OSSL_FUNC_KEYMGMT_NEW, newfn),                                   \
        FN(OSSL_FUNC_KEYMGMT_FREE, km_free),                                \
        FN(OSSL_FUNC_KEYMGMT_LOAD, km_load),                                \
        FN(OSSL_FUNC_KEYMGMT_HAS, km_has),                                  \
        FN(OSSL_FUNC_KEYMGMT_MATCH, km_match),                              \
        FN(OSSL_FUNC_KEYMGMT_IMPORT, km_import),                            \
        FN(OSSL_FUNC_KEYMGMT_IMPORT_TYPES, types),                          \
        FN(OSSL_FUNC_KEYMGMT_EXPORT, km_export),                            \
        FN(OSSL_FUNC_KEYMGMT_EXPORT_TYPES, types),                          \
        FN(OSSL_FUNC_KEYMGMT_DUP, km_dup),                                  \
        FN(OSSL_FUNC_KEYMGMT_GET_PARAMS, km_get_params),                    \
        FN(OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, gettable),                    \
        FN(OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, opname),                 \
        { 0, NULL },                                                        \
    }

KEYMGMT_TABLE(prov_rsa_keymgmt_functions, rsa_new, rsa_gettable_params, rsa_types_fn,
              rsa_opname);
KEYMGMT_TABLE(prov_rsapss_keymgmt_functions, rsapss_new, rsa_gettable_params,
              rsapss_types_fn, rsa_opname);
KEYMGMT_TABLE(prov_ec_keymgmt_functions, ec_new, ec_gettable_params, ec_types_fn,
              ec_opname);
KEYMGMT_TABLE(prov_ed25519_keymgmt_functions, ed25519_new, ecx_gettable_params,
              ecx_types_fn, ed25519_opname);
KEYMGMT_TABLE(prov_ed448_keymgmt_functions, ed448_new, ecx_gettable_params, ecx_types_fn,
              ed448_opname);
