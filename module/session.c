/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Sessions, login, objects and signatures of p11agent-pkcs11.so.
 *
 * Sessions are local state: the agent holds the token's sessions and its
 * login. A signature is one agent round trip (Sign), made with no lock
 * held, so that threads sign in parallel.
 *
 * C_Login: the agent owns login and prompting, and the token does not ask
 * for a PIN (no CKF_LOGIN_REQUIRED). A program that logs in anyway gets
 * CKR_OK and its PIN is neither read nor sent: a second way for PINs into
 * the token would bypass the agent's retry safety (a PIN the token
 * rejected is never replayed, the final try is the person's), and every
 * program would have to hold the PIN the agent exists to keep out of them.
 * To log in, the person answers the agent's prompt or runs
 * `p11agentctl unlock`.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "state.h"

#define MAX_SESSIONS 65536

mod_session_t *mod_session_locked(CK_SESSION_HANDLE h)
{
    if (h == CK_INVALID_HANDLE || h > mod_g.n_sessions || !mod_g.sessions[h - 1].used)
        return NULL;
    return &mod_g.sessions[h - 1];
}

mod_key_t *mod_object_locked(CK_OBJECT_HANDLE h, CK_SLOT_ID *ret_slot, int *ret_kind)
{
    CK_ULONG slot = (h >> 24), key = (h >> 2) & 0x3fffff;
    int kind = (int)(h & 3);
    mod_slot_t *s;
    mod_key_t *k;

    if (slot == 0 || slot > mod_g.n_slots || kind > MOD_OBJ_CERT)
        return NULL;
    s = &mod_g.slots[slot - 1];
    if (!s->present || key >= s->n_keys)
        return NULL;
    k = &s->keys[key];
    if (k->type == BUS_KEY_UNKNOWN || (kind == MOD_OBJ_CERT && !k->has_cert))
        return NULL;
    *ret_slot = slot - 1;
    *ret_kind = kind;
    return k;
}

/* Enters and finds the session: CKR_OK with the lock held and *ret set. */
static CK_RV enter_session(CK_SESSION_HANDLE h, mod_session_t **ret)
{
    CK_RV rv = mod_enter();

    if (rv != CKR_OK)
        return rv;
    *ret = mod_session_locked(h);
    if (*ret == NULL) {
        mod_leave();
        return CKR_SESSION_HANDLE_INVALID;
    }
    return CKR_OK;
}

/* enter_session, then checks that the session's search (find) or signing
 * operation is active: else CKR_OPERATION_NOT_INITIALIZED, lock not held. */
static CK_RV enter_active(CK_SESSION_HANDLE h, bool find, mod_session_t **ret)
{
    CK_RV rv = enter_session(h, ret);

    if (rv != CKR_OK)
        return rv;
    if (find ? !(*ret)->finding : (*ret)->sign == NULL) {
        mod_leave();
        return CKR_OPERATION_NOT_INITIALIZED;
    }
    return CKR_OK;
}

/* Lock held: the key of an object handle in the session's slot, or NULL. */
static mod_key_t *session_object_locked(const mod_session_t *s, CK_OBJECT_HANDLE obj,
                                        int *ret_kind)
{
    CK_SLOT_ID slot;
    mod_key_t *k = mod_object_locked(obj, &slot, ret_kind);

    return k != NULL && slot == s->slot ? k : NULL;
}

CK_RV mod_C_OpenSession(CK_SLOT_ID id, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                           CK_SESSION_HANDLE_PTR ret)
{
    mod_session_t *s = NULL;
    mod_slot_t *slot;
    CK_RV rv;

    if (ret == NULL)
        return CKR_ARGUMENTS_BAD;
    if (!(flags & CKF_SERIAL_SESSION))
        return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
    rv = mod_enter_slot(id, true, &slot);
    if (rv != CKR_OK)
        return rv;
    for (size_t i = 0; i < mod_g.n_sessions && s == NULL; i++)
        if (!mod_g.sessions[i].used)
            s = &mod_g.sessions[i];
    if (s == NULL) {
        size_t n = mod_g.n_sessions ? mod_g.n_sessions * 2 : 16;
        mod_session_t *ns;

        if (mod_g.n_sessions >= MAX_SESSIONS) {
            rv = CKR_SESSION_COUNT;
            goto out;
        }
        ns = realloc(mod_g.sessions, n * sizeof(*ns));
        if (ns == NULL) {
            rv = CKR_HOST_MEMORY;
            goto out;
        }
        memset(ns + mod_g.n_sessions, 0, (n - mod_g.n_sessions) * sizeof(*ns));
        s = &ns[mod_g.n_sessions];
        mod_g.sessions = ns;
        mod_g.n_sessions = n;
    }
    memset(s, 0, sizeof(*s));
    s->used = true;
    s->slot = id;
    s->flags = flags;
    *ret = (CK_SESSION_HANDLE)(s - mod_g.sessions) + 1;
out:
    mod_leave();
    return rv;
}

CK_RV mod_C_CloseSession(CK_SESSION_HANDLE h)
{
    mod_session_t *s;
    CK_RV rv = enter_session(h, &s);

    if (rv != CKR_OK)
        return rv;
    mod_session_clear_locked(s);
    mod_leave();
    return CKR_OK;
}

CK_RV mod_C_CloseAllSessions(CK_SLOT_ID id)
{
    mod_slot_t *slot;
    CK_RV rv = mod_enter_slot(id, false, &slot);

    if (rv != CKR_OK)
        return rv;
    for (size_t i = 0; i < mod_g.n_sessions; i++)
        if (mod_g.sessions[i].used && mod_g.sessions[i].slot == id)
            mod_session_clear_locked(&mod_g.sessions[i]);
    mod_leave();
    return CKR_OK;
}

CK_RV mod_C_GetSessionInfo(CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR info)
{
    mod_session_t *s;
    CK_RV rv;

    if (info == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = enter_session(h, &s);
    if (rv != CKR_OK)
        return rv;
    memset(info, 0, sizeof(*info));
    info->slotID = s->slot;
    info->flags = s->flags;
    /* logged in as far as the program can tell: the agent logs in */
    info->state = (s->flags & CKF_RW_SESSION) ? CKS_RW_USER_FUNCTIONS : CKS_RO_USER_FUNCTIONS;
    mod_leave();
    return CKR_OK;
}

CK_RV mod_C_Login(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
    mod_session_t *s;
    CK_RV rv = enter_session(h, &s);

    if (rv != CKR_OK)
        return rv;
    mod_leave();
    /* see the top of this file: the PIN is not read */
    if (user == CKU_USER || user == CKU_CONTEXT_SPECIFIC)
        return CKR_OK;
    return user == CKU_SO ? CKR_FUNCTION_REJECTED : CKR_USER_TYPE_INVALID;
}

CK_RV mod_C_Logout(CK_SESSION_HANDLE h)
{
    mod_session_t *s;
    CK_RV rv = enter_session(h, &s);

    if (rv != CKR_OK)
        return rv;
    /* the agent's login serves every program: one program does not end it */
    mod_leave();
    return CKR_OK;
}

/* ------------------------------------------------------------ objects */

CK_RV mod_C_FindObjectsInit(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n)
{
    mod_session_t *s;
    mod_slot_t *slot;
    CK_RV rv;

    if (tmpl == NULL && n > 0)
        return CKR_ARGUMENTS_BAD;
    mod_refresh(MOD_REFRESH_STALE);
    rv = enter_session(h, &s);
    if (rv != CKR_OK)
        return rv;
    if (s->finding) {
        rv = CKR_OPERATION_ACTIVE;
        goto out;
    }
    free(s->found);
    s->found = NULL;
    s->n_found = s->pos = 0;
    slot = &mod_g.slots[s->slot];
    if (slot->present && slot->n_keys > 0) {
        s->found = calloc(slot->n_keys * 3, sizeof(*s->found));
        if (s->found == NULL) {
            rv = CKR_HOST_MEMORY;
            goto out;
        }
        for (size_t k = 0; k < slot->n_keys; k++) {
            const mod_key_t *key = &slot->keys[k];

            if (key->type == BUS_KEY_UNKNOWN)
                continue;
            for (int kind = 0; kind < 3; kind++) {
                if (kind == MOD_OBJ_CERT && !key->has_cert)
                    continue;
                if (mod_object_match(&key->obj[kind], tmpl, n))
                    s->found[s->n_found++] = MOD_HANDLE(s->slot, k, kind);
            }
        }
    }
    s->finding = true;
out:
    mod_leave();
    return rv;
}

CK_RV mod_C_FindObjects(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR out, CK_ULONG max,
                           CK_ULONG_PTR count)
{
    mod_session_t *s;
    CK_ULONG n = 0;
    CK_RV rv;

    if (count == NULL || (out == NULL && max > 0))
        return CKR_ARGUMENTS_BAD;
    rv = enter_active(h, true, &s);
    if (rv != CKR_OK)
        return rv;
    while (n < max && s->pos < s->n_found)
        out[n++] = s->found[s->pos++];
    *count = n;
    mod_leave();
    return CKR_OK;
}

CK_RV mod_C_FindObjectsFinal(CK_SESSION_HANDLE h)
{
    mod_session_t *s;
    CK_RV rv = enter_active(h, true, &s);

    if (rv != CKR_OK)
        return rv;
    free(s->found);
    s->found = NULL;
    s->n_found = s->pos = 0;
    s->finding = false;
    mod_leave();
    return CKR_OK;
}

CK_RV mod_C_GetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR tmpl,
                                 CK_ULONG n)
{
    mod_session_t *s;
    mod_key_t *k;
    int kind;
    CK_RV rv;

    if (tmpl == NULL && n > 0)
        return CKR_ARGUMENTS_BAD;
    rv = enter_session(h, &s);
    if (rv != CKR_OK)
        return rv;
    k = session_object_locked(s, obj, &kind);
    if (k == NULL)
        rv = CKR_OBJECT_HANDLE_INVALID;
    else
        rv = mod_object_get(&k->obj[kind], tmpl, n);
    mod_leave();
    return rv;
}

CK_RV mod_C_GetObjectSize(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ULONG_PTR size)
{
    mod_session_t *s;
    mod_key_t *k;
    int kind;
    CK_RV rv;

    if (size == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = enter_session(h, &s);
    if (rv != CKR_OK)
        return rv;
    k = session_object_locked(s, obj, &kind);
    if (k == NULL)
        rv = CKR_OBJECT_HANDLE_INVALID;
    else
        *size = CK_UNAVAILABLE_INFORMATION;
    mod_leave();
    return rv;
}

/* ------------------------------------------------------------ signing */

CK_RV mod_C_SignInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key)
{
    const mod_mech_t *m;
    mod_session_t *s;
    mod_sign_op_t *op = NULL;
    mod_key_t *k;
    int kind;
    CK_RV rv;

    if (mech == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = enter_session(h, &s);
    if (rv != CKR_OK)
        return rv;
    if (s->sign != NULL) {
        rv = CKR_OPERATION_ACTIVE;
        goto out;
    }
    k = session_object_locked(s, key, &kind);
    if (k == NULL || kind != MOD_OBJ_PRIVATE) {
        rv = CKR_KEY_HANDLE_INVALID;
        goto out;
    }
    m = mod_mech_find(mech->mechanism);
    if (m == NULL) {
        rv = CKR_MECHANISM_INVALID;
        goto out;
    }
    if (!mod_mech_key_ok(m, k->type, k->flags)) {
        /* the right type without the token's mechanism: invalid */
        bus_key_type_t t = k->type;
        bool type_ok = (m->alg == BUS_SIG_RSA_PKCS1 || m->alg == BUS_SIG_RSA_PSS)
                           ? t == BUS_KEY_RSA
                           : m->alg == BUS_SIG_ECDSA ? t == BUS_KEY_EC
                                                     : t == BUS_KEY_ED25519 || t == BUS_KEY_ED448;

        rv = type_ok ? CKR_MECHANISM_INVALID : CKR_KEY_TYPE_INCONSISTENT;
        goto out;
    }
    op = calloc(1, sizeof(*op));
    if (op == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    op->mech = m;
    rv = mod_mech_params(m, mech, &op->params);
    if (rv != CKR_OK)
        goto out;
    op->key_uri = strdup(k->uri);
    op->key_type = k->type;
    op->sig_len = k->sig_len;
    if (op->key_uri == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    if (m->hash != NULL) {
        EVP_MD *md = EVP_MD_fetch(mod_g.libctx, m->hash, NULL);

        op->md = EVP_MD_CTX_new();
        if (md == NULL || op->md == NULL || !EVP_DigestInit_ex(op->md, md, NULL)) {
            EVP_MD_free(md);
            rv = CKR_HOST_MEMORY;
            goto out;
        }
        EVP_MD_free(md);
    }
    s->sign = op;
    op = NULL;
out:
    mod_sign_op_free(op);
    mod_leave();
    return rv;
}

/* Lock held: adds data to the operation. */
static CK_RV op_update_locked(mod_sign_op_t *op, const uint8_t *data, CK_ULONG len)
{
    if (op->md != NULL)
        return EVP_DigestUpdate(op->md, data, len) ? CKR_OK : CKR_FUNCTION_FAILED;
    if (len > MOD_MAX_SIG_DATA - op->len)
        return CKR_DATA_LEN_RANGE;
    if (op->len + len > op->cap) {
        size_t cap = op->cap ? op->cap : 256;
        uint8_t *p;

        while (cap < op->len + len)
            cap *= 2;
        p = realloc(op->data, cap);
        if (p == NULL)
            return CKR_HOST_MEMORY;
        op->data = p;
        op->cap = cap;
    }
    if (len)
        memcpy(op->data + op->len, data, len);
    op->len += len;
    return CKR_OK;
}

/* Checks the input of a mechanism without a hash against the key. */
static CK_RV check_input(const mod_sign_op_t *op, size_t len)
{
    switch (op->mech->alg) {
    case BUS_SIG_RSA_PKCS1:
        return len > 0 && op->sig_len >= 11 && len <= op->sig_len - 11 ? CKR_OK
                                                                        : CKR_DATA_LEN_RANGE;
    case BUS_SIG_RSA_PSS:
        return len == mod_hash_len(op->params.hash) ? CKR_OK : CKR_DATA_LEN_RANGE;
    case BUS_SIG_ECDSA:
        return len > 0 && len <= 64 ? CKR_OK : CKR_DATA_LEN_RANGE;
    default:
        return CKR_OK;
    }
}

/* The end of an operation: the length query and CKR_BUFFER_TOO_SMALL
 * leave it active; otherwise it is taken from the session, signed by the
 * agent with no lock held, and freed. Lock held on entry, released. */
static CK_RV finish_locked(mod_session_t *s, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
    mod_sign_op_t *op = s->sign;
    uint8_t digest[EVP_MAX_MD_SIZE];
    const uint8_t *in;
    size_t in_len;
    uint8_t *out = NULL;
    size_t out_len = 0;
    char *msg = NULL;
    bus_pool_t *pool;
    CK_RV rv;
    int r;

    if (sig == NULL) {
        *sig_len = op->sig_len;
        mod_leave();
        return CKR_OK;
    }
    if (*sig_len < op->sig_len) {
        *sig_len = op->sig_len;
        mod_leave();
        return CKR_BUFFER_TOO_SMALL;
    }
    s->sign = NULL; /* ours now: any outcome ends the operation */
    if (op->md != NULL) {
        unsigned int dl = 0;

        if (!EVP_DigestFinal_ex(op->md, digest, &dl)) {
            rv = CKR_FUNCTION_FAILED;
            mod_leave();
            goto out;
        }
        in = digest;
        in_len = dl;
    } else {
        in = op->data;
        in_len = op->len;
        rv = check_input(op, in_len);
        if (rv != CKR_OK) {
            mod_leave();
            goto out;
        }
    }
    if (!mod_call_begin_locked()) {
        mod_leave();
        mod_debug(__func__, "the agent did not answer a moment ago; not asking again yet");
        rv = CKR_DEVICE_ERROR;
        goto out;
    }
    pool = mod_g.pool;
    mod_leave();

    r = bus_pool_sign(pool, op->key_uri, &op->params, in ? in : (const uint8_t *)"", in_len,
                      &out, &out_len, &msg);

    pthread_mutex_lock(&mod_g.lock);
    mod_call_end_locked();
    if (r == BUS_ERR_TIMEOUT)
        mod_call_timed_out_locked();
    mod_leave();
    if (r != BUS_OK) {
        rv = mod_rv_from_bus(r);
        mod_debug(__func__, "%s with %s: %s", op->mech->name, op->key_uri,
                  msg ? msg : bus_err_str(r));
        goto out;
    }
    if (op->key_type == BUS_KEY_EC) {
        rv = mod_ecdsa_der_to_raw(out, out_len, op->sig_len / 2, sig);
    } else if (out_len != op->sig_len) {
        rv = CKR_DEVICE_ERROR;
    } else {
        memcpy(sig, out, out_len);
        rv = CKR_OK;
    }
    if (rv != CKR_OK)
        mod_debug(__func__, "%s with %s: the agent returned a malformed %zu-byte signature",
                  op->mech->name, op->key_uri, out_len);
    else
        *sig_len = op->sig_len;
out:
    free(out);
    free(msg);
    OPENSSL_cleanse(digest, sizeof(digest));
    mod_sign_op_free(op);
    return rv;
}

/* An error ends the operation (PKCS#11 5.2). Lock held. */
static void end_op_locked(mod_session_t *s)
{
    mod_sign_op_free(s->sign);
    s->sign = NULL;
}

CK_RV mod_C_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig,
                    CK_ULONG_PTR sig_len)
{
    mod_session_t *s;
    CK_RV rv;

    if ((data == NULL && len > 0) || sig_len == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = enter_active(h, false, &s);
    if (rv != CKR_OK)
        return rv;
    if (s->sign->updated) {
        /* C_Sign is single-part only */
        end_op_locked(s);
        mod_leave();
        return CKR_OPERATION_ACTIVE;
    }
    /* the data joins only once the output fits: a length query or a short
     * buffer leaves the operation as it was */
    if (sig != NULL && *sig_len >= s->sign->sig_len) {
        rv = op_update_locked(s->sign, data, len);
        if (rv != CKR_OK) {
            end_op_locked(s);
            mod_leave();
            return rv;
        }
    }
    return finish_locked(s, sig, sig_len);
}

CK_RV mod_C_SignUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len)
{
    mod_session_t *s;
    CK_RV rv;

    if (data == NULL && len > 0)
        return CKR_ARGUMENTS_BAD;
    rv = enter_active(h, false, &s);
    if (rv != CKR_OK)
        return rv;
    s->sign->updated = true;
    rv = op_update_locked(s->sign, data, len);
    if (rv != CKR_OK)
        end_op_locked(s);
    mod_leave();
    return rv;
}

CK_RV mod_C_SignFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
    mod_session_t *s;
    CK_RV rv;

    if (sig_len == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = enter_active(h, false, &s);
    if (rv != CKR_OK)
        return rv;
    return finish_locked(s, sig, sig_len);
}

