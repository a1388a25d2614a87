/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Mechanism mapping, C_Sign and ECDSA r||s -> X9.62 DER. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "tok-internal.h"

/* Largest r||s we accept: two P-521 halves with room to spare. */
#define MAX_ECDSA_RAW 264

int tok_ecdsa_raw_to_der(const uint8_t *raw, size_t raw_len, uint8_t **ret, size_t *ret_len)
{
    const uint8_t *r, *s;
    size_t half;
    buf_writer_t w;
    int st;

    if (raw == NULL || ret == NULL || ret_len == NULL || raw_len == 0 || raw_len % 2 != 0 ||
        raw_len > MAX_ECDSA_RAW)
        return TOK_ERR_ARGS;
    half = raw_len / 2;
    r = raw;
    s = raw + half;
    /* SEQUENCE { INTEGER r, INTEGER s }: at most 2 * (4 + 133) + 4 bytes */
    buf_writer_init(&w, 2 * MAX_ECDSA_RAW);
    buf_put_der_hdr(&w, BUF_DER_SEQUENCE, buf_der_uint_size(r, half) + buf_der_uint_size(s, half));
    buf_put_der_uint(&w, r, half);
    buf_put_der_uint(&w, s, half);
    st = buf_writer_finish(&w, ret, ret_len);
    if (st == BUF_OK)
        return TOK_OK;
    return st == BUF_ERR_NO_MEMORY ? TOK_ERR_NO_MEMORY : TOK_ERR_GENERAL;
}

static CK_MECHANISM_TYPE hash_mech(tok_hash_t h)
{
    switch (h) {
    case TOK_HASH_SHA1: return CKM_SHA_1;
    case TOK_HASH_SHA224: return CKM_SHA224;
    case TOK_HASH_SHA256: return CKM_SHA256;
    case TOK_HASH_SHA384: return CKM_SHA384;
    case TOK_HASH_SHA512: return CKM_SHA512;
    default: return CK_UNAVAILABLE_INFORMATION;
    }
}

static CK_RSA_PKCS_MGF_TYPE hash_mgf(tok_hash_t h)
{
    switch (h) {
    case TOK_HASH_SHA1: return CKG_MGF1_SHA1;
    case TOK_HASH_SHA224: return CKG_MGF1_SHA224;
    case TOK_HASH_SHA256: return CKG_MGF1_SHA256;
    case TOK_HASH_SHA384: return CKG_MGF1_SHA384;
    case TOK_HASH_SHA512: return CKG_MGF1_SHA512;
    default: return CK_UNAVAILABLE_INFORMATION;
    }
}

/* What one signature needs: mechanism, input, output size. */
typedef struct sign_op {
    CK_MECHANISM mech;
    CK_RSA_PKCS_PSS_PARAMS pss;
    uint8_t di[19 + 64]; /* DigestInfo prefix || digest */
    const uint8_t *in;
    size_t in_len;
    size_t sig_max;
    unsigned need; /* TOK_MECH_* */
    const char *mech_name;
} sign_op_t;

static int prepare_rsa(const tok_key_t *key, const tok_sign_params_t *p, const uint8_t *data,
                       size_t len, sign_op_t *op, char **errmsg)
{
    size_t hl = tok_hash_len(p->hash), k = (key->bits + 7) / 8, plen;
    const uint8_t *prefix;

    op->sig_max = k;
    if (p->alg == TOK_SIG_RSA_PKCS1) {
        op->mech.mechanism = CKM_RSA_PKCS;
        op->need = TOK_MECH_RSA_PKCS;
        op->mech_name = "CKM_RSA_PKCS";
        if (p->hash == TOK_HASH_NONE) {
            if (len == 0 || k < 11 || len > k - 11)
                goto bad_len;
            return TOK_OK;
        }
        prefix = tok_digest_info_prefix(p->hash, &plen);
        if (prefix == NULL || len != hl)
            goto bad_len;
        memcpy(op->di, prefix, plen);
        memcpy(op->di + plen, data, len);
        op->in = op->di;
        op->in_len = plen + len;
        return TOK_OK;
    }
    /* PSS over a digest */
    long salt = p->salt_len;
    long max_salt = (long)((key->bits - 1 + 7) / 8) - (long)hl - 2;
    tok_hash_t mgf = p->mgf1_hash != TOK_HASH_NONE ? p->mgf1_hash : p->hash;

    op->mech.mechanism = CKM_RSA_PKCS_PSS;
    op->need = TOK_MECH_RSA_PSS;
    op->mech_name = "CKM_RSA_PKCS_PSS";
    if (hl == 0 || len != hl || hash_mgf(mgf) == CK_UNAVAILABLE_INFORMATION)
        goto bad_len;
    if (salt == -1) /* "digest" */
        salt = (long)hl;
    else if (salt == -2 || salt == -3) /* "max" / "auto" */
        salt = max_salt;
    if (salt < 0 || salt > max_salt) {
        tok_set_errmsg(errmsg, "PSS salt length %ld does not fit a %u-bit key", p->salt_len,
                       key->bits);
        return TOK_ERR_ARGS;
    }
    op->pss.hashAlg = hash_mech(p->hash);
    op->pss.mgf = hash_mgf(mgf);
    op->pss.sLen = (CK_ULONG)salt;
    op->mech.pParameter = &op->pss;
    op->mech.ulParameterLen = sizeof(op->pss);
    return TOK_OK;
bad_len:
    tok_set_errmsg(errmsg, "%zu bytes of input do not fit %s with hash %d on a %u-bit key", len,
                   op->mech_name, (int)p->hash, key->bits);
    return TOK_ERR_ARGS;
}

static int prepare(const tok_key_t *key, const tok_sign_params_t *p, const uint8_t *data,
                   size_t len, sign_op_t *op, char **errmsg)
{
    size_t hl = tok_hash_len(p->hash);
    bool type_ok;

    memset(op, 0, sizeof(*op));
    op->in = data;
    op->in_len = len;
    switch (p->alg) {
    case TOK_SIG_RSA_PKCS1:
    case TOK_SIG_RSA_PSS:
        type_ok = key->type == TOK_KEY_RSA;
        break;
    case TOK_SIG_ECDSA:
        type_ok = key->type == TOK_KEY_EC;
        op->mech.mechanism = CKM_ECDSA;
        op->need = TOK_MECH_ECDSA;
        op->mech_name = "CKM_ECDSA";
        op->sig_max = 2 * ((key->bits + 7) / 8);
        if ((p->hash != TOK_HASH_NONE && len != hl) || len == 0 || len > 64) {
            tok_set_errmsg(errmsg, "%zu bytes are not a digest for ECDSA", len);
            return TOK_ERR_ARGS;
        }
        break;
    case TOK_SIG_EDDSA:
        type_ok = key->type == TOK_KEY_ED25519 || key->type == TOK_KEY_ED448;
        op->mech.mechanism = CKM_EDDSA;
        op->need = TOK_MECH_EDDSA;
        op->mech_name = "CKM_EDDSA";
        op->sig_max = key->type == TOK_KEY_ED448 ? 114 : 64;
        if (p->hash != TOK_HASH_NONE) {
            tok_set_errmsg(errmsg, "EdDSA signs the message itself, not a digest");
            return TOK_ERR_ARGS;
        }
        break;
    default:
        tok_set_errmsg(errmsg, "unknown signature algorithm %d", (int)p->alg);
        return TOK_ERR_ARGS;
    }
    if (!type_ok) {
        tok_set_errmsg(errmsg, "key '%s' cannot sign with %s", key->uri,
                       op->mech_name ? op->mech_name : "RSA");
        return TOK_ERR_MECHANISM;
    }
    if (p->alg == TOK_SIG_RSA_PKCS1 || p->alg == TOK_SIG_RSA_PSS)
        return prepare_rsa(key, p, data, len, op, errmsg);
    return TOK_OK;
}

/* Marks the token logged out (its private handles are gone). */
void tok_token_lost_login(tok_token_t *t)
{
    pthread_mutex_lock(&t->lock);
    t->logged_in = false;
    tok_token_forget_login_locked(t);
    pthread_mutex_unlock(&t->lock);
}

/* Finds the private key again by CKA_ID; 0 if it is not there. */
CK_OBJECT_HANDLE tok_key_refind(tok_key_int_t *ki, CK_SESSION_HANDLE s)
{
    tok_token_t *t = ki->k.token;
    CK_OBJECT_HANDLE h = tok_find_private_by_id(t, s, ki->k.id, ki->k.id_len);

    tok_debug(t->ctx, "%s: handle %lu -> %lu", ki->k.uri, ki->k.handle, h);
    pthread_mutex_lock(&t->lock);
    ki->k.handle = h;
    if (h != CK_INVALID_HANDLE)
        ki->handle_from_login = t->logged_in;
    pthread_mutex_unlock(&t->lock);
    return h;
}

CK_RV tok_context_login(tok_token_t *t, CK_SESSION_HANDLE s, const tok_auth_t *auth)
{
    CK_RV rv;

    if (auth == NULL)
        return CKR_OK;
    rv = t->f->C_Login(s, CKU_CONTEXT_SPECIFIC, (CK_UTF8CHAR_PTR)auth->pin, auth->pin_len);
    return rv == CKR_USER_NOT_LOGGED_IN ? CKR_PIN_INCORRECT : rv;
}

bool tok_op_drops_session(int r, CK_RV rv, const tok_auth_t *auth)
{
    return r == TOK_ERR_TOKEN_REMOVED || rv == CKR_OPERATION_ACTIVE || rv == CKR_HOST_MEMORY ||
           rv == CKR_BUFFER_TOO_SMALL || (auth != NULL && r == TOK_ERR_PIN_INCORRECT);
}

/* Runs C_SignInit + C_Sign into buf (cap bytes: all the key can produce). A
 * length the module returns is not checked here: the caller does. */
static CK_RV do_sign(tok_token_t *t, CK_SESSION_HANDLE s, sign_op_t *op, CK_OBJECT_HANDLE h,
                     const tok_auth_t *auth, uint8_t *buf, size_t cap, CK_ULONG *ret_len)
{
    CK_ULONG n = cap;
    CK_RV rv;

    rv = t->f->C_SignInit(s, &op->mech, h);
    if (rv != CKR_OK)
        return rv;
    /* CKA_ALWAYS_AUTHENTICATE: a context-specific login for this one
     * operation, right after C_SignInit (PKCS#11 3.0, 5.6). */
    rv = tok_context_login(t, s, auth);
    if (rv != CKR_OK) /* the operation may stay active: the caller drops s */
        return rv;
    /* The buffer holds the largest signature the key can make; a module
     * that wants more (CKR_BUFFER_TOO_SMALL) is wrong, and its operation
     * stays active: the caller drops s. */
    rv = t->f->C_Sign(s, (CK_BYTE_PTR)op->in, op->in_len, buf, &n);
    if (rv == CKR_OK)
        *ret_len = n;
    return rv;
}

int tok_sign(const tok_key_t *key, const tok_sign_params_t *p, const uint8_t *data, size_t len,
             uint8_t **ret_sig, size_t *ret_sig_len, char **errmsg)
{
    return tok_sign_auth(key, p, data, len, NULL, ret_sig, ret_sig_len, errmsg);
}

int tok_sign_auth(const tok_key_t *key, const tok_sign_params_t *p, const uint8_t *data,
                  size_t len, const tok_auth_t *auth, uint8_t **ret_sig, size_t *ret_sig_len,
                  char **errmsg)
{
    tok_key_int_t *ki = (tok_key_int_t *)key;
    tok_token_t *t;
    sign_op_t op;
    uint8_t *buf = NULL;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE h, copy;
    CK_ULONG sig_len = 0;
    CK_RV rv = CKR_OK;
    bool logged_in, refound = false, have_session = false;
    int r;

    if (key == NULL || key->token == NULL || p == NULL || ret_sig == NULL || ret_sig_len == NULL ||
        (data == NULL && len > 0) || len > TOK_SIGN_MAX_DATA)
        return TOK_ERR_ARGS;
    t = key->token;
    r = prepare(key, p, data, len, &op, errmsg);
    if (r != TOK_OK)
        goto out;
    if (!(key->mechs & op.need)) {
        tok_set_errmsg(errmsg, "token '%s' has no %s for key '%s'%s", t->label, op.mech_name,
                       key->uri,
                       op.need == TOK_MECH_RSA_PSS ? " (TLS 1.3 with RSA needs RSA-PSS)" : "");
        r = TOK_ERR_MECHANISM;
        goto out;
    }
    pthread_mutex_lock(&t->lock);
    h = key->handle;
    copy = ki->copy;
    logged_in = t->logged_in;
    pthread_mutex_unlock(&t->lock);
    if (h == CK_INVALID_HANDLE && !logged_in) {
        tok_set_errmsg(errmsg, "token '%s' needs a login for key '%s'", t->label, key->uri);
        r = TOK_ERR_NOT_LOGGED_IN;
        goto out;
    }
    buf = malloc(op.sig_max > 0 ? op.sig_max : 1);
    if (buf == NULL) {
        r = TOK_ERR_NO_MEMORY;
        goto out;
    }
    r = tok_session_get(t, &s);
    if (r == TOK_ERR_BUSY)
        tok_set_errmsg(errmsg, "no session of token '%s' came free within %d s (all %zu busy)",
                       t->label, TOK_POOL_WAIT_SECONDS, tok_token_max_sessions(t));
    if (r != TOK_OK)
        goto out;
    have_session = true;
    if (h == CK_INVALID_HANDLE) {
        refound = true;
        h = tok_key_refind(ki, s);
    }
    if (h == CK_INVALID_HANDLE)
        rv = CKR_KEY_HANDLE_INVALID;
    while (h != CK_INVALID_HANDLE) {
        rv = do_sign(t, s, &op, copy != CK_INVALID_HANDLE ? copy : h, auth, buf, op.sig_max,
                     &sig_len);
        if (rv != CKR_KEY_HANDLE_INVALID && rv != CKR_OBJECT_HANDLE_INVALID)
            break;
        if (copy != CK_INVALID_HANDLE) {
            /* the copy went away (its session closed, a logout): use the token object */
            pthread_mutex_lock(&t->lock);
            if (ki->copy == copy)
                ki->copy = CK_INVALID_HANDLE;
            pthread_mutex_unlock(&t->lock);
            copy = CK_INVALID_HANDLE;
            continue;
        }
        if (refound)
            break;
        refound = true;
        h = tok_key_refind(ki, s);
    }
    if (rv != CKR_OK) {
        tok_debug(t->ctx, "%s with %s: %s", op.mech_name, key->uri, p11_kit_strerror(rv));
        r = tok_status_from_rv(rv);
        if (rv == CKR_BUFFER_TOO_SMALL) {
            /* the buffer holds all the key can make: the module is wrong */
            r = TOK_ERR_DEVICE;
        } else if (rv == CKR_USER_NOT_LOGGED_IN && key->always_auth && auth == NULL) {
            /* the key wants its context-specific login, the session's is fine */
            r = TOK_ERR_AUTH_REQUIRED;
        } else if (rv == CKR_USER_NOT_LOGGED_IN) {
            tok_token_lost_login(t);
        } else if (rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT) {
            tok_token_lost_login(t);
        } else if (rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID) {
            CK_SESSION_INFO si;

            /* Not there: gone, or hidden because the login was lost. */
            if (t->f->C_GetSessionInfo(s, &si) == CKR_OK && si.state != CKS_RO_USER_FUNCTIONS &&
                si.state != CKS_RW_USER_FUNCTIONS && tok_token_login_required(t)) {
                tok_token_lost_login(t);
                r = TOK_ERR_NOT_LOGGED_IN;
            } else {
                r = TOK_ERR_NO_KEY;
            }
        }
        if (tok_op_drops_session(r, rv, auth)) {
            tok_session_drop(t, s);
            have_session = false;
        }
        tok_set_errmsg(errmsg, "%s with key '%s' on token '%s': %s", op.mech_name, key->uri,
                       t->label, p11_kit_strerror(rv));
        goto out;
    }
    /* A module's length is hostile: the key makes signatures of exactly
     * sig_max bytes (RSA: the modulus; ECDSA: r||s of the field size;
     * EdDSA: 64 or 114). Anything else, above all more than the buffer,
     * is refused before a byte of it is used. */
    if (sig_len != op.sig_max) {
        tok_set_errmsg(errmsg,
                       "token '%s' returned a %lu-byte %s signature for key '%s' (the key makes "
                       "%zu-byte signatures): the module is faulty",
                       t->label, sig_len, op.mech_name, key->uri, op.sig_max);
        r = TOK_ERR_DEVICE;
        goto out;
    }
    if (p->alg == TOK_SIG_ECDSA) {
        r = tok_ecdsa_raw_to_der(buf, sig_len, ret_sig, ret_sig_len);
        if (r != TOK_OK)
            tok_set_errmsg(errmsg, "token '%s' returned a %lu-byte ECDSA signature", t->label,
                           sig_len);
        goto out;
    }
    *ret_sig = buf;
    *ret_sig_len = sig_len;
    buf = NULL;
    r = TOK_OK;
out:
    if (have_session)
        tok_session_put(t, s);
    free(buf);
    return r;
}
