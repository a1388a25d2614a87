/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * RSA asymmetric cipher (OSSL_OP_ASYM_CIPHER "RSA") for agent keys.
 *
 * Decryption goes to the agent (Decrypt; the key's [key] section must say
 * decrypt = yes). Encryption needs only the public key and is done here in
 * the provider's own library context.
 *
 * Pad modes: PKCS#1 v1.5 ("rsa-pkcs1"), OAEP with digest, MGF1 digest and
 * label ("rsa-oaep"), none ("rsa-raw"), and the one libssl uses for the
 * TLS_RSA_* premaster secret, RSA_PKCS1_WITH_TLS_PADDING with the
 * tls-client-version / tls-negotiated-version parameters.
 *
 * TLS mode (RFC 5246, 7.4.7.1; the Bleichenbacher and ROBOT attacks): the
 * server must not reveal whether a premaster secret was well padded, neither
 * by an error nor by its timing, and must go on with a random premaster when
 * it was not, so that the handshake fails at Finished like any other wrong
 * key. The token's own CKM_RSA_PKCS cannot give that: it answers a bad
 * padding with CKR_ENCRYPTED_DATA_INVALID, sooner than a good one, and the
 * agent would pass the difference on. So TLS mode asks the agent for the raw
 * RSA result (CKM_RSA_X_509, always the modulus size, whatever the padding),
 * and the padding and version are checked here in constant time: the
 * random premaster is drawn first, every byte is examined with masks, and
 * the 48 bytes returned are selected with a mask, never with a branch on
 * secret data. A token without CKM_RSA_X_509 cannot serve TLS_RSA_* suites
 * (the handshake ends with decrypt_error, the error says why); falling back
 * to CKM_RSA_PKCS would bring the oracle back.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "provider.h"

/* The TLS premaster secret: two version bytes and 46 random ones. */
#define TLS_PREMASTER_LEN 48
/* PKCS#1 v1.5 type 2 overhead: 00 02, eight or more non-zero bytes, 00. */
#define PKCS1_PAD_MIN 11

typedef struct asym_ctx {
    prov_ctx_t *ctx;
    prov_key_t *key;
    int pad;               /* RSA_*_PADDING */
    EVP_MD *oaep_md;       /* NULL: SHA-1 */
    EVP_MD *mgf1_md;       /* NULL: same as oaep_md */
    uint8_t *label;        /* OAEP label, or NULL */
    size_t label_len;
    unsigned int client_version; /* TLS mode: ClientHello.client_version */
    unsigned int alt_version;    /* TLS mode: also accepted (0: none) */
} asym_ctx_t;

/* --- constant-time helpers: all-ones or all-zero masks, no branches --- */

static unsigned int ct_msb_mask(unsigned int a)
{
    return 0u - (a >> (sizeof(a) * 8 - 1));
}

static unsigned int ct_zero_mask(unsigned int a)
{
    /* the top bit of ~a & (a - 1) is set only for a == 0 */
    return ct_msb_mask(~a & (a - 1u));
}

static unsigned int ct_eq_mask(unsigned int a, unsigned int b)
{
    return ct_zero_mask(a ^ b);
}

static uint8_t ct_pick(unsigned int mask, uint8_t a, uint8_t b)
{
    return (uint8_t)((mask & a) | (~mask & b));
}

int prov_tls_premaster_unpad(uint8_t out[48], const uint8_t *em, size_t k,
                             const uint8_t random[48], unsigned int client_version,
                             unsigned int alt_version)
{
    size_t zero_at, i;
    unsigned int good, version_good;

    /* Public sizes: the modulus must hold the padding and 48 bytes. */
    if (k < PKCS1_PAD_MIN + TLS_PREMASTER_LEN)
        return 0;
    zero_at = k - TLS_PREMASTER_LEN - 1;
    good = ct_zero_mask(em[0]) & ct_eq_mask(em[1], 2);
    for (i = 2; i < zero_at; i++)
        good &= ~ct_zero_mask(em[i]);
    good &= ct_zero_mask(em[zero_at]);
    version_good = ct_eq_mask(em[zero_at + 1], (client_version >> 8) & 0xff) &
                   ct_eq_mask(em[zero_at + 2], client_version & 0xff);
    /* alt_version is public (set or not by the application) */
    if (alt_version > 0)
        version_good |= ct_eq_mask(em[zero_at + 1], (alt_version >> 8) & 0xff) &
                        ct_eq_mask(em[zero_at + 2], alt_version & 0xff);
    good &= version_good;
    for (i = 0; i < TLS_PREMASTER_LEN; i++)
        out[i] = ct_pick(good, em[zero_at + 1 + i], random[i]);
    return 1;
}

/* --- context --- */

static void *asym_newctx(void *provctx)
{
    asym_ctx_t *a = calloc(1, sizeof(*a));

    if (a == NULL) {
        prov_raise(provctx, PROV_R_NO_MEMORY, "p11agent: out of memory");
        return NULL;
    }
    a->ctx = provctx;
    a->pad = RSA_PKCS1_PADDING;
    return a;
}

static void asym_reset(asym_ctx_t *a)
{
    EVP_MD_free(a->oaep_md);
    EVP_MD_free(a->mgf1_md);
    a->oaep_md = a->mgf1_md = NULL;
    OPENSSL_free(a->label);
    a->label = NULL;
    a->label_len = 0;
    a->pad = RSA_PKCS1_PADDING;
    a->client_version = a->alt_version = 0;
}

static void asym_freectx(void *vctx)
{
    asym_ctx_t *a = vctx;

    if (a == NULL)
        return;
    asym_reset(a);
    prov_key_free(a->key);
    free(a);
}

static void *asym_dupctx(void *vctx)
{
    const asym_ctx_t *src = vctx;
    asym_ctx_t *d;

    if (src == NULL)
        return NULL;
    d = malloc(sizeof(*d));
    if (d == NULL) {
        prov_raise(src->ctx, PROV_R_NO_MEMORY, "p11agent: out of memory");
        return NULL;
    }
    *d = *src;
    d->label = NULL;
    if (src->label != NULL && (d->label = OPENSSL_memdup(src->label, src->label_len)) == NULL) {
        free(d);
        prov_raise(src->ctx, PROV_R_NO_MEMORY, "p11agent: out of memory");
        return NULL;
    }
    if (d->key != NULL)
        prov_key_up_ref(d->key);
    if (d->oaep_md != NULL)
        EVP_MD_up_ref(d->oaep_md);
    if (d->mgf1_md != NULL)
        EVP_MD_up_ref(d->mgf1_md);
    return d;
}

/* --- parameters --- */

static int set_md(asym_ctx_t *a, EVP_MD **slot, const OSSL_PARAM *p, const char *what)
{
    const char *name = NULL;
    EVP_MD *md;

    if (!OSSL_PARAM_get_utf8_string_ptr(p, &name) || name == NULL) {
        prov_raise(a->ctx, PROV_R_BAD_PARAM, "p11agent: invalid %s parameter", what);
        return 0;
    }
    md = prov_fetch_md(a->ctx, name);
    if (md == NULL || prov_md_wire_name(md) == NULL) {
        prov_raise(a->ctx, PROV_R_UNSUPPORTED, "p11agent: %s %s is not supported for OAEP", what,
                   name);
        EVP_MD_free(md);
        return 0;
    }
    EVP_MD_free(*slot);
    *slot = md;
    return 1;
}

static int asym_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    asym_ctx_t *a = vctx;
    const OSSL_PARAM *p;

    if (a == NULL)
        return 0;
    if (params == NULL)
        return 1;
    p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_PAD_MODE);
    if (p != NULL) {
        int pad = 0;

        if (p->data_type == OSSL_PARAM_UTF8_STRING && p->data != NULL &&
            strcmp(p->data, OSSL_PKEY_RSA_PAD_MODE_OAEP) == 0)
            pad = RSA_PKCS1_OAEP_PADDING;
        else if (!prov_parse_pad_mode(p, &pad))
            pad = -1;
        if (pad != RSA_PKCS1_PADDING && pad != RSA_PKCS1_OAEP_PADDING && pad != RSA_NO_PADDING &&
            pad != RSA_PKCS1_WITH_TLS_PADDING) {
            prov_raise(a->ctx, PROV_R_UNSUPPORTED,
                       "p11agent: RSA decryption supports PKCS#1 v1.5, OAEP, none and the TLS "
                       "premaster padding only");
            return 0;
        }
        a->pad = pad;
    }
    p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST);
    if (p != NULL && !set_md(a, &a->oaep_md, p, "OAEP digest"))
        return 0;
    p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST);
    if (p != NULL && !set_md(a, &a->mgf1_md, p, "MGF1 digest"))
        return 0;
    p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL);
    if (p != NULL) {
        void *label = NULL;
        size_t len = 0;

        if (!OSSL_PARAM_get_octet_string(p, &label, 0, &len) || len > BUS_DECRYPT_MAX_LABEL) {
            OPENSSL_free(label);
            prov_raise(a->ctx, PROV_R_BAD_PARAM, "p11agent: invalid OAEP label (at most %d "
                                                 "bytes)", BUS_DECRYPT_MAX_LABEL);
            return 0;
        }
        OPENSSL_free(a->label);
        a->label = len > 0 ? label : NULL;
        a->label_len = len;
        if (len == 0)
            OPENSSL_free(label);
    }
    p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION);
    if (p != NULL && !OSSL_PARAM_get_uint(p, &a->client_version)) {
        prov_raise(a->ctx, PROV_R_BAD_PARAM, "p11agent: invalid tls-client-version");
        return 0;
    }
    p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION);
    if (p != NULL && !OSSL_PARAM_get_uint(p, &a->alt_version)) {
        prov_raise(a->ctx, PROV_R_BAD_PARAM, "p11agent: invalid tls-negotiated-version");
        return 0;
    }
    return 1;
}

static const OSSL_PARAM asym_params[] = {
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL, NULL, 0),
    OSSL_PARAM_uint(OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION, NULL),
    OSSL_PARAM_uint(OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION, NULL),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *asym_settable_ctx_params(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return asym_params;
}

/* As above, but the label is handed out by pointer (OSSL_PARAM_set_octet_ptr,
 * as EVP_PKEY_CTX_get0_rsa_oaep_label asks for it). */
static const OSSL_PARAM asym_gettable[] = {
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_octet_ptr(OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL, NULL, 0),
    OSSL_PARAM_uint(OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION, NULL),
    OSSL_PARAM_uint(OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION, NULL),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *asym_gettable_ctx_params(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return asym_gettable;
}

static const char *pad_name(int pad)
{
    switch (pad) {
    case RSA_PKCS1_OAEP_PADDING: return OSSL_PKEY_RSA_PAD_MODE_OAEP;
    case RSA_NO_PADDING: return OSSL_PKEY_RSA_PAD_MODE_NONE;
    case RSA_PKCS1_PADDING: return OSSL_PKEY_RSA_PAD_MODE_PKCSV15;
    default: return "";
    }
}

static int asym_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    asym_ctx_t *a = vctx;
    const EVP_MD *oaep;
    OSSL_PARAM *p;

    if (a == NULL)
        return 0;
    oaep = a->oaep_md;
    p = OSSL_PARAM_locate(params, OSSL_ASYM_CIPHER_PARAM_PAD_MODE);
    if (p != NULL && !(p->data_type == OSSL_PARAM_UTF8_STRING
                               ? OSSL_PARAM_set_utf8_string(p, pad_name(a->pad))
                               : OSSL_PARAM_set_int(p, a->pad)))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST);
    if (p != NULL && !OSSL_PARAM_set_utf8_string(p, oaep ? EVP_MD_get0_name(oaep) : "SHA1"))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST);
    if (p != NULL) {
        const EVP_MD *m = a->mgf1_md != NULL ? a->mgf1_md : oaep;

        if (!OSSL_PARAM_set_utf8_string(p, m ? EVP_MD_get0_name(m) : "SHA1"))
            return 0;
    }
    p = OSSL_PARAM_locate(params, OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL);
    if (p != NULL && !OSSL_PARAM_set_octet_ptr(p, a->label, a->label_len))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION);
    if (p != NULL && !OSSL_PARAM_set_uint(p, a->client_version))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION);
    if (p != NULL && !OSSL_PARAM_set_uint(p, a->alt_version))
        return 0;
    return 1;
}

/* --- init --- */

static int asym_init(asym_ctx_t *a, void *provkey, const OSSL_PARAM params[], bool decrypt)
{
    prov_key_t *key = provkey;

    if (a == NULL)
        return 0;
    if (key == NULL || key->magic != PROV_KEY_MAGIC || key->kind != PROV_KEY_RSA) {
        prov_raise(a->ctx, PROV_R_BAD_KEY, "p11agent: RSA encryption needs a p11agent RSA key");
        return 0;
    }
    if (decrypt && !prov_key_is_private(key)) {
        prov_raise(a->ctx, PROV_R_BAD_KEY,
                   "p11agent: this key has no private half in the agent (public only)");
        return 0;
    }
    if (!decrypt && prov_key_pub(key) == NULL) {
        prov_raise(a->ctx, PROV_R_BAD_KEY, "p11agent: this key has no public part");
        return 0;
    }
    prov_key_up_ref(key);
    prov_key_free(a->key);
    a->key = key;
    asym_reset(a);
    return asym_set_ctx_params(a, params);
}

static int asym_encrypt_init(void *vctx, void *provkey, const OSSL_PARAM params[])
{
    return asym_init(vctx, provkey, params, false);
}

static int asym_decrypt_init(void *vctx, void *provkey, const OSSL_PARAM params[])
{
    return asym_init(vctx, provkey, params, true);
}

/* --- encrypt: the public key, in the provider's own library context --- */

static int asym_encrypt(void *vctx, unsigned char *out, size_t *outlen, size_t outsize,
                        const unsigned char *in, size_t inlen)
{
    asym_ctx_t *a = vctx;
    EVP_PKEY_CTX *pc = NULL;
    OSSL_PARAM params[5], *p = params;
    int ok = 0;

    if (a == NULL || a->key == NULL) {
        if (a != NULL)
            prov_raise(a->ctx, PROV_R_NOT_INITIALIZED, "p11agent: encryption not initialized");
        return 0;
    }
    if (out == NULL) {
        *outlen = (size_t)a->key->max_size;
        return 1;
    }
    if (a->pad == RSA_PKCS1_WITH_TLS_PADDING) {
        prov_raise(a->ctx, PROV_R_UNSUPPORTED,
                   "p11agent: the TLS premaster padding is for decryption only");
        return 0;
    }
    *p++ = OSSL_PARAM_construct_int(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, &a->pad);
    if (a->pad == RSA_PKCS1_OAEP_PADDING) {
        const EVP_MD *m = a->mgf1_md != NULL ? a->mgf1_md : a->oaep_md;

        *p++ = OSSL_PARAM_construct_utf8_string(
                OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST,
                (char *)(a->oaep_md ? EVP_MD_get0_name(a->oaep_md) : "SHA1"), 0);
        *p++ = OSSL_PARAM_construct_utf8_string(OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST,
                                                (char *)(m ? EVP_MD_get0_name(m) : "SHA1"), 0);
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL, a->label,
                                                 a->label_len);
    }
    *p = OSSL_PARAM_construct_end();
    pc = prov_libctx(a->ctx) == NULL ? NULL
         : EVP_PKEY_CTX_new_from_pkey(prov_libctx(a->ctx), prov_key_pub(a->key), NULL);
    *outlen = outsize;
    if (pc != NULL && EVP_PKEY_encrypt_init_ex(pc, params) > 0 &&
        EVP_PKEY_encrypt(pc, out, outlen, in, inlen) > 0)
        ok = 1;
    else
        prov_raise(a->ctx, PROV_R_BAD_PARAM,
                   "p11agent: RSA encryption of %zu bytes with the public key of %s failed",
                   inlen, a->key->uri ? a->key->uri : "a public key");
    EVP_PKEY_CTX_free(pc);
    return ok;
}

/* --- decrypt: the agent --- */

/* One Decrypt call. *ret_plain is the caller's to wipe and free. */
static int agent_decrypt(asym_ctx_t *a, bus_dec_alg_t alg, const unsigned char *in,
                         size_t inlen, uint8_t **ret_plain, size_t *ret_len)
{
    bus_decrypt_params_t p = {.alg = alg};
    char *msg = NULL;
    int r;

    if (alg == BUS_DEC_RSA_OAEP) {
        const EVP_MD *m = a->mgf1_md != NULL ? a->mgf1_md : a->oaep_md;

        snprintf(p.hash, sizeof(p.hash), "%s",
                 a->oaep_md ? prov_md_wire_name(a->oaep_md) : "sha1");
        snprintf(p.mgf1_hash, sizeof(p.mgf1_hash), "%s", m ? prov_md_wire_name(m) : "sha1");
        p.label = a->label;
        p.label_len = a->label_len;
    }
    r = prov_bus_decrypt(a->ctx, a->key->uri, &p, in, inlen, ret_plain, ret_len, &msg);
    if (r != BUS_OK) {
        if (alg == BUS_DEC_RSA_RAW && r == BUS_ERR_UNSUPPORTED) {
            char *hint = NULL;

            if (asprintf(&hint, "%s (TLS RSA key exchange needs raw RSA, CKM_RSA_X_509, on "
                                "the token; disable the TLS_RSA_* suites, e.g. '!kRSA')",
                         msg != NULL ? msg : "raw RSA unsupported") >= 0) {
                free(msg);
                msg = hint;
            }
        }
        prov_raise_bus(a->ctx, r, "decrypting with", a->key->uri, msg);
        free(msg);
        return 0;
    }
    free(msg);
    return 1;
}

static void wipe_free(uint8_t *p, size_t n)
{
    if (p != NULL) {
        OPENSSL_cleanse(p, n);
        free(p);
    }
}

static int asym_decrypt(void *vctx, unsigned char *out, size_t *outlen, size_t outsize,
                        const unsigned char *in, size_t inlen)
{
    asym_ctx_t *a = vctx;
    size_t k, plain_len = 0;
    uint8_t *plain = NULL;
    uint8_t random[TLS_PREMASTER_LEN];
    bus_dec_alg_t alg;
    int ok = 0;

    if (a == NULL || a->key == NULL) {
        if (a != NULL)
            prov_raise(a->ctx, PROV_R_NOT_INITIALIZED, "p11agent: decryption not initialized");
        return 0;
    }
    k = (size_t)a->key->max_size;
    if (out == NULL) {
        *outlen = a->pad == RSA_PKCS1_WITH_TLS_PADDING ? TLS_PREMASTER_LEN : k;
        return 1;
    }
    if (inlen == 0 || inlen > k) {
        prov_raise(a->ctx, PROV_R_BAD_PARAM,
                   "p11agent: a %zu-byte ciphertext does not fit the %d-bit key %s", inlen,
                   a->key->bits, a->key->uri);
        return 0;
    }
    if (a->pad == RSA_PKCS1_WITH_TLS_PADDING) {
        if (outsize < TLS_PREMASTER_LEN) {
            prov_raise(a->ctx, PROV_R_BUFFER_TOO_SMALL,
                       "p11agent: the TLS premaster needs a 48-byte buffer");
            return 0;
        }
        /* drawn before anything depends on the ciphertext */
        if (RAND_bytes_ex(prov_libctx(a->ctx), random, sizeof(random), 0) <= 0) {
            prov_raise(a->ctx, PROV_R_NO_MEMORY, "p11agent: no random bytes");
            return 0;
        }
        if (!agent_decrypt(a, BUS_DEC_RSA_RAW, in, inlen, &plain, &plain_len))
            goto out;
        if (plain_len != k) { /* the agent always answers k bytes; public */
            prov_raise(a->ctx, PROV_R_BAD_PLAINTEXT,
                       "p11agent: the agent returned %zu bytes of raw RSA for a %zu-byte key",
                       plain_len, k);
            goto out;
        }
        ok = prov_tls_premaster_unpad(out, plain, k, random, a->client_version, a->alt_version);
        if (ok)
            *outlen = TLS_PREMASTER_LEN;
        else
            prov_raise(a->ctx, PROV_R_BAD_KEY, "p11agent: a %d-bit key is too small for TLS",
                       a->key->bits);
        goto out;
    }
    alg = a->pad == RSA_PKCS1_OAEP_PADDING ? BUS_DEC_RSA_OAEP
          : a->pad == RSA_NO_PADDING       ? BUS_DEC_RSA_RAW
                                           : BUS_DEC_RSA_PKCS1;
    if (!agent_decrypt(a, alg, in, inlen, &plain, &plain_len))
        goto out;
    if (plain_len > k || plain_len > outsize) {
        prov_raise(a->ctx, plain_len > k ? PROV_R_BAD_PLAINTEXT : PROV_R_BUFFER_TOO_SMALL,
                   "p11agent: a %zu-byte plaintext does not fit %s", plain_len,
                   plain_len > k ? "the key" : "the buffer");
        goto out;
    }
    if (plain_len > 0)
        memcpy(out, plain, plain_len);
    *outlen = plain_len;
    ok = 1;
out:
    OPENSSL_cleanse(random, sizeof(random));
    wipe_free(plain, plain_len);
    return ok;
}

#define FN(id, f) { id, (void (*)(void))(f) }

const OSSL_DISPATCH prov_rsa_asym_cipher_functions[] = {
    FN(OSSL_FUNC_ASYM_CIPHER_NEWCTX, asym_newctx),
    FN(OSSL_FUNC_ASYM_CIPHER_FREECTX, asym_freectx),
    FN(OSSL_FUNC_ASYM_CIPHER_DUPCTX, asym_dupctx),
    FN(OSSL_FUNC_ASYM_CIPHER_ENCRYPT_INIT, asym_encrypt_init),
    FN(OSSL_FUNC_ASYM_CIPHER_ENCRYPT, asym_encrypt),
    FN(OSSL_FUNC_ASYM_CIPHER_DECRYPT_INIT, asym_decrypt_init),
    FN(OSSL_FUNC_ASYM_CIPHER_DECRYPT, asym_decrypt),
    FN(OSSL_FUNC_ASYM_CIPHER_GET_CTX_PARAMS, asym_get_ctx_params),
    FN(OSSL_FUNC_ASYM_CIPHER_GETTABLE_CTX_PARAMS, asym_gettable_ctx_params),
    FN(OSSL_FUNC_ASYM_CIPHER_SET_CTX_PARAMS, asym_set_ctx_params),
    FN(OSSL_FUNC_ASYM_CIPHER_SETTABLE_CTX_PARAMS, asym_settable_ctx_params),
    { 0, NULL },
};
