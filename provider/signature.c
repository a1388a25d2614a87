/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Signatures with agent keys: RSA (PKCS#1 v1.5 and PSS), ECDSA, Ed25519 and
 * Ed448. The digest is computed here, in the provider's own library
 * context; one Sign call to the agent does the private-key operation.
 *
 * Init functions never talk to the agent (libssl initializes twice per
 * handshake); only sign/digest_sign_final/digest_sign do.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/rsa.h>

#include "provider.h"

typedef enum sig_alg {
    SIG_ALG_RSA,
    SIG_ALG_ECDSA,
    SIG_ALG_ED25519,
    SIG_ALG_ED448,
} sig_alg_t;

typedef struct sig_ctx {
    prov_ctx_t *ctx;
    sig_alg_t alg;
    prov_key_t *key;
    EVP_MD *md;           /* NULL: none set (raw RSA PKCS#1 / prehashed ECDSA) */
    EVP_MD *mgf1_md;      /* NULL: same as md */
    EVP_MD_CTX *mdctx;    /* digest_sign_* in progress */
    bool digest_started;  /* data was fed: the digest can't change */
    int pad;              /* RSA_PKCS1_PADDING or RSA_PKCS1_PSS_PADDING */
    int saltlen;          /* PROV_SALTLEN_* or bytes */
} sig_ctx_t;

static bool alg_is_eddsa(sig_alg_t alg)
{
    return alg == SIG_ALG_ED25519 || alg == SIG_ALG_ED448;
}

static prov_key_kind_t alg_key_kind(sig_alg_t alg)
{
    switch (alg) {
    case SIG_ALG_RSA:
        return PROV_KEY_RSA;
    case SIG_ALG_ECDSA:
        return PROV_KEY_EC;
    case SIG_ALG_ED25519:
        return PROV_KEY_ED25519;
    default:
        return PROV_KEY_ED448;
    }
}

static sig_ctx_t *sig_newctx(void *provctx, sig_alg_t alg)
{
    sig_ctx_t *s = calloc(1, sizeof(*s));

    if (s == NULL) {
        prov_raise(provctx, PROV_R_NO_MEMORY, "p11agent: out of memory");
        return NULL;
    }
    s->ctx = provctx;
    s->alg = alg;
    s->pad = RSA_PKCS1_PADDING;
    s->saltlen = PROV_SALTLEN_AUTO;
    return s;
}

static void *rsa_newctx(void *provctx, const char *propq)
{
    return sig_newctx(provctx, SIG_ALG_RSA);
}

static void *ecdsa_newctx(void *provctx, const char *propq)
{
    return sig_newctx(provctx, SIG_ALG_ECDSA);
}

static void *ed25519_newctx(void *provctx, const char *propq)
{
    return sig_newctx(provctx, SIG_ALG_ED25519);
}

static void *ed448_newctx(void *provctx, const char *propq)
{
    return sig_newctx(provctx, SIG_ALG_ED448);
}

/* Forgets digests and settings; keeps the key unless drop_key. */
static void sig_reset(sig_ctx_t *s, bool drop_key)
{
    if (drop_key) {
        prov_key_free(s->key);
        s->key = NULL;
    }
    EVP_MD_free(s->md);
    s->md = NULL;
    EVP_MD_free(s->mgf1_md);
    s->mgf1_md = NULL;
    EVP_MD_CTX_free(s->mdctx);
    s->mdctx = NULL;
    s->digest_started = false;
    s->pad = RSA_PKCS1_PADDING;
    s->saltlen = PROV_SALTLEN_AUTO;
}

static void sig_freectx(void *vctx)
{
    sig_ctx_t *s = vctx;

    if (s == NULL)
        return;
    sig_reset(s, true);
    free(s);
}

static void *sig_dupctx(void *vctx)
{
    sig_ctx_t *src = vctx, *d = calloc(1, sizeof(*d));

    if (d == NULL) {
        prov_raise(src->ctx, PROV_R_NO_MEMORY, "p11agent: out of memory");
        return NULL;
    }
    *d = *src;
    d->key = prov_key_up_ref(src->key);
    if (d->md != NULL)
        EVP_MD_up_ref(d->md);
    if (d->mgf1_md != NULL)
        EVP_MD_up_ref(d->mgf1_md);
    d->mdctx = NULL;
    if (src->mdctx != NULL) {
        d->mdctx = EVP_MD_CTX_new();
        if (d->mdctx == NULL || !EVP_MD_CTX_copy_ex(d->mdctx, src->mdctx)) {
            sig_freectx(d);
            prov_raise(src->ctx, PROV_R_NO_MEMORY, "p11agent: cannot copy digest context");
            return NULL;
        }
    }
    return d;
}

/* --- parameters --- */

static int sig_set_md(sig_ctx_t *s, EVP_MD **slot, const char *name)
{
    EVP_MD *md;
    bool md5sha1 = false;

    if (name == NULL || *name == '\0') {
        EVP_MD_free(*slot);
        *slot = NULL;
        return 1;
    }
    md = prov_fetch_md(s->ctx, name);
    /* The same digest again (every TLS handshake inits twice): keep it. */
    if (md != NULL && md == *slot) {
        EVP_MD_free(md);
        return 1;
    }
    /* MD5-SHA1 (TLS 1.0/1.1 ServerKeyExchange and CertificateVerify) is
     * signed as raw PKCS#1 v1.5 over the 36 bytes, without DigestInfo; only
     * as the message digest of RSA, never as MGF1. */
    if (md != NULL && prov_md_wire(s->ctx, md, &md5sha1) == NULL && md5sha1 && slot == &s->md
        && s->alg == SIG_ALG_RSA) {
        EVP_MD_free(*slot);
        *slot = md;
        return 1;
    }
    if (md == NULL || prov_md_wire(s->ctx, md, &md5sha1) == NULL) {
        prov_raise(s->ctx, PROV_R_UNSUPPORTED, "p11agent: digest %s is not supported", name);
        EVP_MD_free(md);
        return 0;
    }
    EVP_MD_free(*slot);
    *slot = md;
    return 1;
}

static int sig_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    sig_ctx_t *s = vctx;
    const OSSL_PARAM *p;

    if (s == NULL)
        return 0;
    if (params == NULL)
        return 1;

    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_DIGEST);
    if (p != NULL) {
        const char *name = NULL;

        if (alg_is_eddsa(s->alg) || !OSSL_PARAM_get_utf8_string_ptr(p, &name)) {
            prov_raise(s->ctx, PROV_R_BAD_PARAM, "p11agent: invalid digest parameter");
            return 0;
        }
        if (s->digest_started) {
            prov_raise(s->ctx, PROV_R_BAD_PARAM,
                       "p11agent: the digest can't change after data was signed");
            return 0;
        }
        if (!sig_set_md(s, &s->md, name))
            return 0;
        if (s->mdctx != NULL && s->md != NULL && !EVP_DigestInit_ex2(s->mdctx, s->md, NULL))
            return 0;
    }
    if (s->alg != SIG_ALG_RSA)
        return 1;

    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PAD_MODE);
    if (p != NULL) {
        int pad;

        if (!prov_parse_pad_mode(p, &pad)) {
            prov_raise(s->ctx, PROV_R_BAD_PARAM, "p11agent: invalid pad-mode");
            return 0;
        }
        if (pad != RSA_PKCS1_PADDING && pad != RSA_PKCS1_PSS_PADDING) {
            prov_raise(s->ctx, PROV_R_UNSUPPORTED,
                       "p11agent: only PKCS#1 v1.5 and PSS padding are supported");
            return 0;
        }
        if (s->key != NULL && s->key->kind == PROV_KEY_RSA_PSS && pad != RSA_PKCS1_PSS_PADDING) {
            prov_raise(s->ctx, PROV_R_UNSUPPORTED, "p11agent: an RSA-PSS key signs only PSS");
            return 0;
        }
        s->pad = pad;
    }
    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN);
    if (p != NULL && !prov_parse_saltlen(p, &s->saltlen)) {
        prov_raise(s->ctx, PROV_R_BAD_PARAM, "p11agent: invalid saltlen");
        return 0;
    }
    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST);
    if (p != NULL) {
        const char *name = NULL;

        if (!OSSL_PARAM_get_utf8_string_ptr(p, &name) || !sig_set_md(s, &s->mgf1_md, name)) {
            prov_raise(s->ctx, PROV_R_BAD_PARAM, "p11agent: invalid mgf1-digest");
            return 0;
        }
    }
    return 1;
}

static const OSSL_PARAM rsa_settable[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_PROPERTIES, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM ecdsa_settable[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM eddsa_settable[] = { OSSL_PARAM_END };

static const OSSL_PARAM *sig_settable_ctx_params(void *vctx, void *provctx)
{
    const sig_ctx_t *s = vctx;

    if (s == NULL)
        return rsa_settable;
    switch (s->alg) {
    case SIG_ALG_RSA:
        return rsa_settable;
    case SIG_ALG_ECDSA:
        return ecdsa_settable;
    default:
        return eddsa_settable;
    }
}

/* The PSS salt length this context would use, in bytes; -1 if unknown. */
static int sig_pss_salt(const sig_ctx_t *s)
{
    if (s->key == NULL || s->md == NULL)
        return -1;
    return prov_pss_salt_bytes(s->saltlen, s->key->bits, EVP_MD_get_size(s->md));
}

static size_t sig_algorithm_id(const sig_ctx_t *s, uint8_t *buf, size_t cap)
{
    switch (s->alg) {
    case SIG_ALG_RSA:
        if (s->pad == RSA_PKCS1_PSS_PADDING)
            return prov_algorithm_id(PROV_SIG_RSA_PSS, s->md, s->mgf1_md, sig_pss_salt(s), buf,
                                     cap);
        return prov_algorithm_id(PROV_SIG_RSA_PKCS1, s->md, NULL, 0, buf, cap);
    case SIG_ALG_ECDSA:
        return prov_algorithm_id(PROV_SIG_ECDSA, s->md, NULL, 0, buf, cap);
    case SIG_ALG_ED25519:
        return prov_algorithm_id(PROV_SIG_ED25519, NULL, NULL, 0, buf, cap);
    default:
        return prov_algorithm_id(PROV_SIG_ED448, NULL, NULL, 0, buf, cap);
    }
}

static int sig_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    sig_ctx_t *s = vctx;
    OSSL_PARAM *p;

    if (s == NULL)
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_ALGORITHM_ID);
    if (p != NULL) {
        uint8_t aid[128];
        size_t n = sig_algorithm_id(s, aid, sizeof(aid));

        if (n == 0) {
            prov_raise(s->ctx, PROV_R_UNSUPPORTED,
                       "p11agent: no algorithm identifier for this digest/padding");
            return 0;
        }
        if (!OSSL_PARAM_set_octet_string(p, aid, n))
            return 0;
    }
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_DIGEST);
    if (p != NULL && !OSSL_PARAM_set_utf8_string(p, s->md != NULL ? EVP_MD_get0_name(s->md) : ""))
        return 0;
    if (s->alg != SIG_ALG_RSA)
        return 1;
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PAD_MODE);
    if (p != NULL) {
        int ok;

        if (p->data_type == OSSL_PARAM_UTF8_STRING)
            ok = OSSL_PARAM_set_utf8_string(p, s->pad == RSA_PKCS1_PSS_PADDING
                                                   ? OSSL_PKEY_RSA_PAD_MODE_PSS
                                                   : OSSL_PKEY_RSA_PAD_MODE_PKCSV15);
        else
            ok = OSSL_PARAM_set_int(p, s->pad);
        if (!ok)
            return 0;
    }
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN);
    if (p != NULL) {
        int ok;

        if (p->data_type == OSSL_PARAM_UTF8_STRING) {
            char num[16];
            const char *v = num;

            if (s->saltlen == PROV_SALTLEN_DIGEST)
                v = OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST;
            else if (s->saltlen == PROV_SALTLEN_MAX)
                v = OSSL_PKEY_RSA_PSS_SALT_LEN_MAX;
            else if (s->saltlen == PROV_SALTLEN_AUTO)
                v = OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO;
            else
                snprintf(num, sizeof(num), "%d", s->saltlen);
            ok = OSSL_PARAM_set_utf8_string(p, v);
        } else {
            ok = OSSL_PARAM_set_int(p, s->saltlen);
        }
        if (!ok)
            return 0;
    }
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST);
    if (p != NULL) {
        const EVP_MD *m = s->mgf1_md != NULL ? s->mgf1_md : s->md;

        if (!OSSL_PARAM_set_utf8_string(p, m != NULL ? EVP_MD_get0_name(m) : ""))
            return 0;
    }
    return 1;
}

static const OSSL_PARAM rsa_gettable[] = {
    OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM other_gettable[] = {
    OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *sig_gettable_ctx_params(void *vctx, void *provctx)
{
    const sig_ctx_t *s = vctx;

    return s != NULL && s->alg == SIG_ALG_RSA ? rsa_gettable : other_gettable;
}

/* --- init --- */

static int sig_init(sig_ctx_t *s, void *provkey, const OSSL_PARAM params[])
{
    prov_key_t *key = provkey;

    if (s == NULL)
        return 0;
    if (key == NULL || key->magic != PROV_KEY_MAGIC) {
        /* A re-init without a key keeps the key. */
        if (key == NULL && s->key != NULL) {
            sig_reset(s, false);
            if (s->key->kind == PROV_KEY_RSA_PSS)
                s->pad = RSA_PKCS1_PSS_PADDING;
            return sig_set_ctx_params(s, params);
        }
        prov_raise(s->ctx, PROV_R_BAD_KEY, "p11agent: not a p11agent key");
        return 0;
    }
    if (!prov_key_is_private(key)) {
        prov_raise(s->ctx, PROV_R_BAD_KEY,
                   "p11agent: this key has no private half in the agent (public only)");
        return 0;
    }
    if (key->kind != alg_key_kind(s->alg)
        && !(s->alg == SIG_ALG_RSA && key->kind == PROV_KEY_RSA_PSS)) {
        prov_raise(s->ctx, PROV_R_BAD_KEY, "p11agent: a %s key can't make this signature",
                   prov_key_kind_name(key->kind));
        return 0;
    }
    prov_key_up_ref(key);
    sig_reset(s, true);
    s->key = key;
    if (key->kind == PROV_KEY_RSA_PSS)
        s->pad = RSA_PKCS1_PSS_PADDING;
    return sig_set_ctx_params(s, params);
}

static int sig_sign_init(void *vctx, void *provkey, const OSSL_PARAM params[])
{
    sig_ctx_t *s = vctx;

    if (s != NULL && alg_is_eddsa(s->alg)) {
        prov_raise(s->ctx, PROV_R_UNSUPPORTED,
                   "p11agent: EdDSA signs whole messages (use EVP_DigestSign)");
        return 0;
    }
    return sig_init(s, provkey, params);
}

static int sig_digest_sign_init(void *vctx, const char *mdname, void *provkey,
                                const OSSL_PARAM params[])
{
    sig_ctx_t *s = vctx;

    if (!sig_init(s, provkey, params))
        return 0;
    if (alg_is_eddsa(s->alg)) {
        if (mdname != NULL && *mdname != '\0') {
            prov_raise(s->ctx, PROV_R_UNSUPPORTED, "p11agent: EdDSA takes no digest (got %s)",
                       mdname);
            return 0;
        }
        return 1;
    }
    if (mdname == NULL || *mdname == '\0')
        mdname = s->md != NULL ? EVP_MD_get0_name(s->md) : "SHA256";
    if (!sig_set_md(s, &s->md, mdname))
        return 0;
    if (s->mdctx == NULL)
        s->mdctx = EVP_MD_CTX_new();
    if (s->mdctx == NULL || !EVP_DigestInit_ex2(s->mdctx, s->md, NULL)) {
        prov_raise(s->ctx, PROV_R_NO_MEMORY, "p11agent: cannot start digest");
        return 0;
    }
    return 1;
}

/* --- signing --- */

static const char *sig_what(const sig_ctx_t *s)
{
    switch (s->alg) {
    case SIG_ALG_RSA:
        return s->pad == RSA_PKCS1_PSS_PADDING ? "RSA-PSS" : "RSA PKCS#1";
    case SIG_ALG_ECDSA:
        return "ECDSA";
    default:
        return "EdDSA";
    }
}

/* One Sign call. data is the digest (RSA/ECDSA; raw data for RSA PKCS#1
 * without a digest) or the message (EdDSA). */
static int sig_agent_sign(sig_ctx_t *s, unsigned char *sig, size_t *siglen, size_t sigsize,
                          const unsigned char *data, size_t len)
{
    prov_key_t *key = s->key;
    bus_sign_params_t p = { 0 };
    const char *hash = "";
    uint8_t *out = NULL;
    size_t out_len = 0;
    char *msg = NULL;
    bool md5sha1 = false;
    int r, ok = 0;

    if (s->md != NULL) {
        hash = prov_md_wire(s->ctx, s->md, &md5sha1);
        if (md5sha1)
            hash = "";
        if (hash == NULL)
            return 0; /* checked when set */
        if (len != (size_t)EVP_MD_get_size(s->md)) {
            prov_raise(s->ctx, PROV_R_BAD_PARAM,
                       "p11agent: input is %zu bytes, not a %s digest", len,
                       EVP_MD_get0_name(s->md));
            return 0;
        }
    }
    switch (s->alg) {
    case SIG_ALG_RSA:
        if (s->pad == RSA_PKCS1_PSS_PADDING) {
            const EVP_MD *mgf1 = s->mgf1_md != NULL ? s->mgf1_md : s->md;

            if (s->md == NULL) {
                prov_raise(s->ctx, PROV_R_BAD_PARAM, "p11agent: RSA-PSS needs a digest");
                return 0;
            }
            if (md5sha1) {
                prov_raise(s->ctx, PROV_R_UNSUPPORTED,
                           "p11agent: MD5-SHA1 is signed only with PKCS#1 v1.5, not PSS");
                return 0;
            }
            p.alg = BUS_SIG_RSA_PSS;
            p.salt_len = sig_pss_salt(s);
            if (p.salt_len < 0) {
                prov_raise(s->ctx, PROV_R_BAD_PARAM,
                           "p11agent: PSS salt length does not fit a %d-bit key", key->bits);
                return 0;
            }
            bool mgf1_md5sha1;

            snprintf(p.mgf1_hash, sizeof(p.mgf1_hash), "%s",
                     prov_md_wire(s->ctx, mgf1, &mgf1_md5sha1));
        } else {
            p.alg = BUS_SIG_RSA_PKCS1;
            if ((s->md == NULL || md5sha1) && len + 11 > (size_t)key->max_size) {
                prov_raise(s->ctx, PROV_R_BAD_PARAM,
                           "p11agent: %zu bytes are too long for PKCS#1 padding", len);
                return 0;
            }
        }
        break;
    case SIG_ALG_ECDSA:
        p.alg = BUS_SIG_ECDSA;
        break;
    default:
        p.alg = BUS_SIG_EDDSA;
        hash = "";
        break;
    }
    snprintf(p.hash, sizeof(p.hash), "%s", hash);

    r = prov_bus_sign(s->ctx, key->uri, &p, data, len, &out, &out_len, &msg);
    if (r != BUS_OK) {
        if (r == BUS_ERR_UNSUPPORTED && p.alg == BUS_SIG_RSA_PSS) {
            char *hint = NULL;

            if (asprintf(&hint, "%s (the token may lack CKM_RSA_PKCS_PSS, which TLS 1.3 "
                                "needs for RSA keys; TLS 1.2 can use PKCS#1 v1.5)",
                         msg != NULL ? msg : "RSA-PSS unsupported") >= 0) {
                free(msg);
                msg = hint;
            }
        }
        prov_raise_bus(s->ctx, r, "signing with", key->uri, msg);
        goto out;
    }
    if (out_len == 0 || out_len > (size_t)key->max_size) {
        prov_raise(s->ctx, PROV_R_BAD_SIGNATURE,
                   "p11agent: %s signature of %zu bytes from the agent for %s", sig_what(s),
                   out_len, key->uri);
        goto out;
    }
    if (s->alg == SIG_ALG_RSA && out_len < (size_t)key->max_size) {
        /* Left-pad to the modulus size, as RSA signatures must be. */
        size_t pad = (size_t)key->max_size - out_len;

        if (sigsize < (size_t)key->max_size)
            goto small;
        memset(sig, 0, pad);
        memcpy(sig + pad, out, out_len);
        *siglen = (size_t)key->max_size;
        ok = 1;
        goto out;
    }
    if (sigsize < out_len)
        goto small;
    memcpy(sig, out, out_len);
    *siglen = out_len;
    ok = 1;
    goto out;
small:
    prov_raise(s->ctx, PROV_R_BUFFER_TOO_SMALL, "p11agent: signature buffer too small");
out:
    free(out);
    free(msg);
    return ok;
}

static int sig_check_ready(sig_ctx_t *s)
{
    if (s == NULL || s->key == NULL) {
        if (s != NULL)
            prov_raise(s->ctx, PROV_R_NOT_INITIALIZED, "p11agent: signature not initialized");
        return 0;
    }
    return 1;
}

static int sig_sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize,
                    const unsigned char *tbs, size_t tbslen)
{
    sig_ctx_t *s = vctx;

    if (!sig_check_ready(s))
        return 0;
    if (sig == NULL) {
        *siglen = (size_t)s->key->max_size;
        return 1;
    }
    return sig_agent_sign(s, sig, siglen, sigsize, tbs, tbslen);
}

static int sig_digest_sign_update(void *vctx, const unsigned char *data, size_t datalen)
{
    sig_ctx_t *s = vctx;

    if (!sig_check_ready(s))
        return 0;
    if (s->mdctx == NULL) {
        prov_raise(s->ctx, PROV_R_UNSUPPORTED, "p11agent: EdDSA signs in one shot only");
        return 0;
    }
    s->digest_started = true;
    return EVP_DigestUpdate(s->mdctx, data, datalen);
}

static int sig_digest_sign_final(void *vctx, unsigned char *sig, size_t *siglen,
                                 size_t sigsize)
{
    sig_ctx_t *s = vctx;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    int ok;

    if (!sig_check_ready(s))
        return 0;
    if (sig == NULL) {
        *siglen = (size_t)s->key->max_size;
        return 1;
    }
    if (s->mdctx == NULL) {
        prov_raise(s->ctx, PROV_R_NOT_INITIALIZED, "p11agent: no digest in progress");
        return 0;
    }
    if (!EVP_DigestFinal_ex(s->mdctx, digest, &dlen))
        return 0;
    s->digest_started = false;
    ok = sig_agent_sign(s, sig, siglen, sigsize, digest, dlen);
    /* Ready for another message with the same settings. */
    if (!EVP_DigestInit_ex2(s->mdctx, s->md, NULL))
        ok = 0;
    return ok;
}

/* One-shot: EdDSA messages go whole to the agent; the others are digested
 * here as digest_sign_update + final would, without EVP's dupctx. */
static int sig_digest_sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize,
                           const unsigned char *tbs, size_t tbslen)
{
    sig_ctx_t *s = vctx;

    if (!sig_check_ready(s))
        return 0;
    if (sig == NULL) {
        *siglen = (size_t)s->key->max_size;
        return 1;
    }
    if (!alg_is_eddsa(s->alg)) {
        if (!sig_digest_sign_update(s, tbs, tbslen))
            return 0;
        return sig_digest_sign_final(s, sig, siglen, sigsize);
    }
    return sig_agent_sign(s, sig, siglen, sigsize, tbs, tbslen);
}

#define FN(id, f) { id, (void (*)(void))(f) }

#define SIGNATURE_COMMON                                                        \
    FN(OSSL_FUNC_SIGNATURE_FREECTX, sig_freectx),                               \
    FN(OSSL_FUNC_SIGNATURE_DUPCTX, sig_dupctx),                                 \
    FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, sig_digest_sign_init),             \
    FN(OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, sig_get_ctx_params),                 \
    FN(OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, sig_gettable_ctx_params),       \
    FN(OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, sig_set_ctx_params),                 \
    FN(OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, sig_settable_ctx_params)

/* digest_sign too: EVP_DigestSign (libssl's CertificateVerify, most
 * one-shot callers) then calls it directly instead of update + final,
 * and final's duplicate of the whole context (dupctx: a digest context
 * copied) is not made per signature. */
#define SIGNATURE_PREHASH                                                       \
    FN(OSSL_FUNC_SIGNATURE_SIGN_INIT, sig_sign_init),                           \
    FN(OSSL_FUNC_SIGNATURE_SIGN, sig_sign),                                     \
    FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, sig_digest_sign_update),         \
    FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, sig_digest_sign_final),           \
    FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN, sig_digest_sign)

const OSSL_DISPATCH prov_rsa_signature_functions[] = {
    FN(OSSL_FUNC_SIGNATURE_NEWCTX, rsa_newctx),
    SIGNATURE_COMMON,
    SIGNATURE_PREHASH,
    { 0, NULL },
};

const OSSL_DISPATCH prov_ecdsa_signature_functions[] = {
    FN(OSSL_FUNC_SIGNATURE_NEWCTX, ecdsa_newctx),
    SIGNATURE_COMMON,
    SIGNATURE_PREHASH,
    { 0, NULL },
};

const OSSL_DISPATCH prov_ed25519_signature_functions[] = {
    FN(OSSL_FUNC_SIGNATURE_NEWCTX, ed25519_newctx),
    SIGNATURE_COMMON,
    FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN, sig_digest_sign),
    { 0, NULL },
};

const OSSL_DISPATCH prov_ed448_signature_functions[] = {
    FN(OSSL_FUNC_SIGNATURE_NEWCTX, ed448_newctx),
    SIGNATURE_COMMON,
    FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN, sig_digest_sign),
    { 0, NULL },
};
