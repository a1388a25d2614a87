/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* RSA decryption: CKM_RSA_PKCS, CKM_RSA_PKCS_OAEP and CKM_RSA_X_509. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "tok-internal.h"

static CK_MECHANISM_TYPE oaep_hash(tok_hash_t h)
{
    switch (h) {
    case TOK_HASH_NONE:
    case TOK_HASH_SHA1: return CKM_SHA_1;
    case TOK_HASH_SHA224: return CKM_SHA224;
    case TOK_HASH_SHA256: return CKM_SHA256;
    case TOK_HASH_SHA384: return CKM_SHA384;
    case TOK_HASH_SHA512: return CKM_SHA512;
    default: return CK_UNAVAILABLE_INFORMATION;
    }
}

static CK_RSA_PKCS_MGF_TYPE oaep_mgf(tok_hash_t h)
{
    switch (h) {
    case TOK_HASH_NONE:
    case TOK_HASH_SHA1: return CKG_MGF1_SHA1;
    case TOK_HASH_SHA224: return CKG_MGF1_SHA224;
    case TOK_HASH_SHA256: return CKG_MGF1_SHA256;
    case TOK_HASH_SHA384: return CKG_MGF1_SHA384;
    case TOK_HASH_SHA512: return CKG_MGF1_SHA512;
    default: return CK_UNAVAILABLE_INFORMATION;
    }
}

typedef struct dec_op {
    CK_MECHANISM mech;
    CK_RSA_PKCS_OAEP_PARAMS oaep;
    const char *mech_name;
} dec_op_t;

static int prepare(const tok_key_t *key, const tok_decrypt_params_t *p, size_t len, dec_op_t *op,
                   char **errmsg)
{
    size_t k = (key->bits + 7) / 8;

    memset(op, 0, sizeof(*op));
    switch (p->alg) {
    case TOK_DEC_RSA_PKCS1:
        op->mech.mechanism = CKM_RSA_PKCS;
        op->mech_name = "CKM_RSA_PKCS";
        break;
    case TOK_DEC_RSA_RAW:
        op->mech.mechanism = CKM_RSA_X_509;
        op->mech_name = "CKM_RSA_X_509";
        break;
    case TOK_DEC_RSA_OAEP:
        op->mech.mechanism = CKM_RSA_PKCS_OAEP;
        op->mech_name = "CKM_RSA_PKCS_OAEP";
        op->oaep.hashAlg = oaep_hash(p->hash);
        op->oaep.mgf = oaep_mgf(p->mgf1_hash != TOK_HASH_NONE ? p->mgf1_hash : p->hash);
        if (op->oaep.hashAlg == CK_UNAVAILABLE_INFORMATION ||
            op->oaep.mgf == CK_UNAVAILABLE_INFORMATION) {
            tok_set_errmsg(errmsg, "unknown OAEP hash for key '%s'", key->uri);
            return TOK_ERR_ARGS;
        }
        /* CKZ_DATA_SPECIFIED is the only source PKCS#11 defines, with or
         * without a label (an empty one) */
        op->oaep.source = CKZ_DATA_SPECIFIED;
        if (p->label_len > 0) {
            op->oaep.pSourceData = (void *)p->label;
            op->oaep.ulSourceDataLen = p->label_len;
        }
        op->mech.pParameter = &op->oaep;
        op->mech.ulParameterLen = sizeof(op->oaep);
        break;
    default:
        tok_set_errmsg(errmsg, "unknown decryption algorithm %d", (int)p->alg);
        return TOK_ERR_ARGS;
    }
    if (key->type != TOK_KEY_RSA) {
        tok_set_errmsg(errmsg, "key '%s' is not an RSA key: it cannot decrypt", key->uri);
        return TOK_ERR_MECHANISM;
    }
    if (len == 0 || len > k) {
        tok_set_errmsg(errmsg, "a %zu-byte ciphertext does not fit the %u-bit key '%s'", len,
                       key->bits, key->uri);
        return TOK_ERR_ARGS;
    }
    return TOK_OK;
}

/* C_DecryptInit (+ context-specific login) + C_Decrypt into buf (cap bytes:
 * the modulus). The length a module returns is checked by the caller. */
static CK_RV do_decrypt(tok_token_t *t, CK_SESSION_HANDLE s, dec_op_t *op, CK_OBJECT_HANDLE h,
                        const tok_auth_t *auth, const uint8_t *in, size_t in_len, uint8_t *buf,
                        size_t cap, CK_ULONG *ret_len)
{
    CK_ULONG n = cap;
    CK_RV rv;

    rv = t->f->C_DecryptInit(s, &op->mech, h);
    if (rv != CKR_OK)
        return rv;
    rv = tok_context_login(t, s, auth);
    if (rv != CKR_OK)
        return rv;
    rv = t->f->C_Decrypt(s, (CK_BYTE_PTR)in, in_len, buf, &n);
    if (rv == CKR_OK)
        *ret_len = n;
    return rv;
}

int tok_decrypt(const tok_key_t *key, const tok_decrypt_params_t *p, const uint8_t *data,
                size_t len, const tok_auth_t *auth, uint8_t **ret_plain, size_t *ret_len,
                char **errmsg)
{
    tok_key_int_t *ki = (tok_key_int_t *)key;
    tok_token_t *t;
    dec_op_t op;
    uint8_t *buf = NULL, *in = NULL;
    size_t k, in_len = len;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE h;
    CK_ULONG out_len = 0;
    CK_RV rv = CKR_OK;
    bool logged_in, refound = false, have_session = false;
    int r;

    if (key == NULL || key->token == NULL || p == NULL || ret_plain == NULL || ret_len == NULL ||
        data == NULL || (p->label == NULL && p->label_len > 0))
        return TOK_ERR_ARGS;
    t = key->token;
    k = (key->bits + 7) / 8;
    if (t->f->C_DecryptInit == NULL || t->f->C_Decrypt == NULL) {
        tok_set_errmsg(errmsg, "the module of token '%s' has no C_Decrypt (key '%s')", t->label,
                       key->uri);
        return TOK_ERR_MECHANISM;
    }
    r = prepare(key, p, len, &op, errmsg);
    if (r != TOK_OK)
        return r;
    pthread_mutex_lock(&t->lock);
    h = key->handle;
    logged_in = t->logged_in;
    pthread_mutex_unlock(&t->lock);
    if (h == CK_INVALID_HANDLE && !logged_in) {
        tok_set_errmsg(errmsg, "token '%s' needs a login for key '%s'", t->label, key->uri);
        return TOK_ERR_NOT_LOGGED_IN;
    }
    /* CKM_RSA_X_509 takes exactly the modulus size on many tokens: a short
     * integer is the same integer with leading zero bytes. */
    if (p->alg == TOK_DEC_RSA_RAW && len < k) {
        in = calloc(1, k);
        if (in == NULL)
            return TOK_ERR_NO_MEMORY;
        memcpy(in + (k - len), data, len);
        in_len = k;
    }
    buf = malloc(k);
    if (buf == NULL) {
        r = TOK_ERR_NO_MEMORY;
        goto out;
    }
    r = tok_session_get(t, &s);
    if (r != TOK_OK)
        goto out;
    have_session = true;
    if (h == CK_INVALID_HANDLE) {
        refound = true;
        h = tok_key_refind(ki, s);
    }
    rv = CKR_KEY_HANDLE_INVALID;
    while (h != CK_INVALID_HANDLE) {
        rv = do_decrypt(t, s, &op, h, auth, in ? in : data, in_len, buf, k, &out_len);
        if ((rv != CKR_KEY_HANDLE_INVALID && rv != CKR_OBJECT_HANDLE_INVALID) || refound)
            break;
        refound = true;
        h = tok_key_refind(ki, s);
    }
    if (rv != CKR_OK) {
        tok_debug(t->ctx, "%s with %s: %s", op.mech_name, key->uri, p11_kit_strerror(rv));
        r = tok_status_from_rv(rv);
        switch (rv) {
        case CKR_ENCRYPTED_DATA_INVALID:
        case CKR_ENCRYPTED_DATA_LEN_RANGE:
            r = TOK_ERR_ARGS;
            break;
        case CKR_BUFFER_TOO_SMALL: /* the buffer holds the modulus: the module is wrong */
            r = TOK_ERR_DEVICE;
            break;
        case CKR_USER_NOT_LOGGED_IN:
            if (key->always_auth && auth == NULL) {
                r = TOK_ERR_AUTH_REQUIRED;
                break;
            }
            tok_token_lost_login(t);
            break;
        case CKR_DEVICE_REMOVED:
        case CKR_TOKEN_NOT_PRESENT:
            tok_token_lost_login(t);
            break;
        case CKR_KEY_HANDLE_INVALID:
        case CKR_OBJECT_HANDLE_INVALID:
            r = logged_in || !tok_token_login_required(t) ? TOK_ERR_NO_KEY
                                                          : TOK_ERR_NOT_LOGGED_IN;
            break;
        default:
            if (r == TOK_ERR_GENERAL)
                r = TOK_ERR_DEVICE;
            break;
        }
        /* A failed C_Decrypt ends the operation (PKCS#11 3.0, 5.9), so a bad
         * ciphertext keeps the session: closing it could close the token's
         * last session and with it the login. Only a removed token, or a
         * module that says the operation is still active, costs it. */
        if (tok_op_drops_session(r, rv, auth)) {
            tok_session_drop(t, s);
            have_session = false;
        }
        tok_set_errmsg(errmsg, "%s with key '%s' on token '%s': %s%s", op.mech_name, key->uri,
                       t->label, p11_kit_strerror(rv),
                       rv == CKR_ENCRYPTED_DATA_INVALID ? " (the ciphertext does not decrypt)"
                       : rv == CKR_KEY_FUNCTION_NOT_PERMITTED
                               ? " (the key's CKA_DECRYPT is false)"
                               : "");
        goto out;
    }
    /* A module's length is hostile: never more than the modulus. */
    if (out_len > k) {
        tok_set_errmsg(errmsg,
                       "token '%s' returned %lu bytes of plaintext for the %u-bit key '%s': "
                       "the module is faulty",
                       t->label, out_len, key->bits, key->uri);
        r = TOK_ERR_DEVICE;
        goto out;
    }
    if (p->alg == TOK_DEC_RSA_RAW && out_len < k) {
        memmove(buf + (k - out_len), buf, out_len);
        memset(buf, 0, k - out_len);
        out_len = k;
    }
    *ret_plain = buf;
    *ret_len = out_len;
    buf = NULL;
    r = TOK_OK;
out:
    if (have_session)
        tok_session_put(t, s);
    if (buf != NULL) {
        OPENSSL_cleanse(buf, k);
        free(buf);
    }
    if (in != NULL) {
        OPENSSL_cleanse(in, k);
        free(in);
    }
    return r;
}
