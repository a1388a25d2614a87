/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Slots, tokens and key discovery. Keys are private keys that can sign,
 * paired with public keys and certificates by CKA_ID. Before login the
 * private objects are hidden, so public keys and certificates stand in for
 * them (handle 0 until tok_token_login() finds the private key).
 *
 * Never reads CKA_VALUE or any other secret attribute of a private key.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"
#include "tok-internal.h"

typedef struct obj {
    CK_OBJECT_HANDLE h;
    uint8_t *id;
    size_t id_len;
    char *label;
    bool priv;        /* CKA_PRIVATE (private keys) */
    bool always_auth; /* CKA_ALWAYS_AUTHENTICATE (private keys) */
    tok_pub_t pub;    /* spki NULL when not known from this object */
    uint8_t *cert;    /* certificates: the DER */
    size_t cert_len;
    char bad[160];    /* why the module's answer for this object is garbage, or "" */
} obj_t;

typedef struct objs {
    obj_t *v;
    size_t n;
} objs_t;

static void obj_clear(obj_t *o);

static void objs_clear(objs_t *o)
{
    for (size_t i = 0; i < o->n; i++)
        obj_clear(&o->v[i]);
    free(o->v);
    o->v = NULL;
    o->n = 0;
}

void tok_key_clear(tok_key_t *k)
{
    if (k == NULL)
        return;
    free(k->uri);
    free(k->label);
    free(k->id);
    free(k->spki);
    free(k->cert);
    memset(k, 0, sizeof(*k));
}

static const char *attr_name(CK_ATTRIBUTE_TYPE type)
{
    switch (type) {
    case CKA_ID: return "CKA_ID";
    case CKA_LABEL: return "CKA_LABEL";
    case CKA_VALUE: return "CKA_VALUE";
    case CKA_MODULUS: return "CKA_MODULUS";
    case CKA_PUBLIC_EXPONENT: return "CKA_PUBLIC_EXPONENT";
    case CKA_EC_PARAMS: return "CKA_EC_PARAMS";
    case CKA_EC_POINT: return "CKA_EC_POINT";
    case CKA_PUBLIC_KEY_INFO: return "CKA_PUBLIC_KEY_INFO";
    default: return "attribute";
    }
}

/* Reads one attribute (the two-call pattern) into a malloc'd buffer of at
 * most max bytes, NUL-terminated for convenience. Absent, empty, sensitive
 * or unavailable: TOK_OK, *ret NULL. A length above max, or a second answer
 * that does not fit the buffer of the first: TOK_OK, *ret NULL and o->bad
 * says why (the caller skips the object). Other failures: a TOK_* code. */
static int get_attr(tok_token_t *t, CK_SESSION_HANDLE s, obj_t *o, CK_ATTRIBUTE_TYPE type,
                    size_t max, uint8_t **ret, size_t *ret_len)
{
    CK_ATTRIBUTE a = { type, NULL, 0 };
    uint8_t *buf = NULL;
    CK_ULONG size;
    CK_RV rv;

    *ret = NULL;
    *ret_len = 0;
    rv = t->f->C_GetAttributeValue(s, o->h, &a, 1);
    if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE)
        return TOK_OK;
    if (rv != CKR_OK)
        return tok_status_from_rv(rv);
    if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen == 0)
        return TOK_OK;
    if (a.ulValueLen > max) {
        snprintf(o->bad, sizeof(o->bad), "%s is %lu bytes long (at most %zu expected)",
                 attr_name(type), a.ulValueLen, max);
        return TOK_OK;
    }
    size = a.ulValueLen;
    buf = malloc(size + 1);
    if (buf == NULL)
        return TOK_ERR_NO_MEMORY;
    a.pValue = buf;
    rv = t->f->C_GetAttributeValue(s, o->h, &a, 1);
    if (rv == CKR_OK && a.ulValueLen != CK_UNAVAILABLE_INFORMATION && a.ulValueLen > size) {
        /* the module says it wrote more than the buffer holds */
        snprintf(o->bad, sizeof(o->bad), "%s: %lu bytes returned into a %lu-byte buffer",
                 attr_name(type), a.ulValueLen, size);
        rv = CKR_OK;
        a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
    } else if (rv == CKR_BUFFER_TOO_SMALL) {
        snprintf(o->bad, sizeof(o->bad), "%s changed size between two reads", attr_name(type));
        rv = CKR_OK;
        a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
    }
    if (rv != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen == 0) {
        free(buf);
        return rv == CKR_OK || rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE
                       ? TOK_OK
                       : tok_status_from_rv(rv);
    }
    buf[a.ulValueLen] = '\0';
    *ret = buf;
    *ret_len = a.ulValueLen;
    return TOK_OK;
}

static CK_ULONG get_ulong(tok_token_t *t, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                          CK_ATTRIBUTE_TYPE type)
{
    CK_ULONG v = CK_UNAVAILABLE_INFORMATION;
    CK_ATTRIBUTE a = { type, &v, sizeof(v) };

    if (t->f->C_GetAttributeValue(s, o, &a, 1) != CKR_OK || a.ulValueLen != sizeof(v))
        return CK_UNAVAILABLE_INFORMATION;
    return v;
}

static bool get_bool(tok_token_t *t, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type)
{
    CK_BBOOL v = CK_FALSE;
    CK_ATTRIBUTE a = { type, &v, sizeof(v) };

    if (t->f->C_GetAttributeValue(s, o, &a, 1) != CKR_OK || a.ulValueLen != sizeof(v))
        return false;
    return v == CK_TRUE;
}

static int find_objects(tok_token_t *t, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                        CK_OBJECT_HANDLE **ret, size_t *ret_n)
{
    CK_OBJECT_HANDLE *v = NULL, *nv;
    size_t count = 0, cap = 0;
    CK_ULONG got;
    CK_RV rv;
    int r = TOK_OK;

    rv = t->f->C_FindObjectsInit(s, tmpl, n);
    if (rv != CKR_OK)
        return tok_status_from_rv(rv);
    for (;;) {
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            nv = realloc(v, cap * sizeof(*v));
            if (nv == NULL) {
                r = TOK_ERR_NO_MEMORY;
                break;
            }
            v = nv;
        }
        rv = t->f->C_FindObjects(s, v + count, cap - count, &got);
        if (rv != CKR_OK) {
            r = tok_status_from_rv(rv);
            break;
        }
        if (got == 0)
            break;
        if (got > cap - count || count + got > TOK_MAX_OBJECTS) {
            /* more handles than room, or a search that never ends */
            tok_warn(t->ctx, "token '%s': C_FindObjects returned %lu handles for %zu places "
                     "(%zu so far): the module is faulty", t->label, got, cap - count, count);
            r = TOK_ERR_DEVICE;
            break;
        }
        count += got;
    }
    t->f->C_FindObjectsFinal(s);
    if (r != TOK_OK) {
        free(v);
        return r;
    }
    *ret = v;
    *ret_n = count;
    return TOK_OK;
}

CK_OBJECT_HANDLE tok_find_private_by_id(tok_token_t *t, CK_SESSION_HANDLE s, const uint8_t *id,
                                        size_t id_len)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        { CKA_CLASS, &cls, sizeof(cls) },
        { CKA_SIGN, &yes, sizeof(yes) },
        { CKA_TOKEN, &yes, sizeof(yes) },
        { CKA_ID, (void *)id, id_len },
    };
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ULONG got = 0;

    if (id_len == 0)
        return CK_INVALID_HANDLE;
    if (t->f->C_FindObjectsInit(s, tmpl, 4) != CKR_OK)
        return CK_INVALID_HANDLE;
    if (t->f->C_FindObjects(s, &h, 1, &got) != CKR_OK || got != 1)
        h = CK_INVALID_HANDLE;
    t->f->C_FindObjectsFinal(s);
    return h;
}

/* Builds o->pub from two attributes with fn; present but unusable values
 * make the object garbage. */
static int read_pub_pair(tok_token_t *t, CK_SESSION_HANDLE s, obj_t *o, CK_KEY_TYPE kt,
                         CK_ATTRIBUTE_TYPE ta, size_t max_a, CK_ATTRIBUTE_TYPE tb, size_t max_b)
{
    uint8_t *a = NULL, *b = NULL;
    size_t a_len, b_len;
    int r, pr = TOK_OK;

    r = get_attr(t, s, o, ta, max_a, &a, &a_len);
    if (r == TOK_OK && o->bad[0] == '\0')
        r = get_attr(t, s, o, tb, max_b, &b, &b_len);
    if (r == TOK_OK && a != NULL && b != NULL) {
        if (kt == CKK_RSA)
            pr = tok_pub_from_rsa(a, a_len, b, b_len, &o->pub);
        else
            pr = tok_pub_from_ec(kt, a, a_len, b, b_len, &o->pub);
        if (pr == TOK_ERR_NO_MEMORY)
            r = pr;
        else if (pr != TOK_OK)
            snprintf(o->bad, sizeof(o->bad), "%s and %s do not make a public key",
                     attr_name(ta), attr_name(tb));
    }
    free(a);
    free(b);
    return r;
}

/* Public data of a key object: RSA modulus+exponent, CKA_PUBLIC_KEY_INFO,
 * EC params+point (public keys only carry the point). */
static int read_key_pub(tok_token_t *t, CK_SESSION_HANDLE s, obj_t *o)
{
    uint8_t *a = NULL;
    size_t a_len;
    CK_KEY_TYPE kt = get_ulong(t, s, o->h, CKA_KEY_TYPE);
    int r, pr;

    if (kt == CKK_RSA)
        r = read_pub_pair(t, s, o, kt, CKA_MODULUS, TOK_MAX_MODULUS, CKA_PUBLIC_EXPONENT,
                          TOK_MAX_EXPONENT);
    else if (kt == CKK_EC || kt == CKK_EC_EDWARDS)
        r = read_pub_pair(t, s, o, kt, CKA_EC_PARAMS, TOK_MAX_EC_PARAMS, CKA_EC_POINT,
                          TOK_MAX_EC_POINT);
    else
        return TOK_OK; /* not a key type we sign with */
    if (r == TOK_OK && o->pub.spki == NULL && o->bad[0] == '\0') {
        r = get_attr(t, s, o, CKA_PUBLIC_KEY_INFO, TOK_MAX_SPKI, &a, &a_len);
        if (r == TOK_OK && a != NULL) {
            pr = tok_pub_from_spki(a, a_len, &o->pub);
            if (pr == TOK_ERR_NO_MEMORY)
                r = pr;
            else if (pr != TOK_OK)
                snprintf(o->bad, sizeof(o->bad), "CKA_PUBLIC_KEY_INFO is not a public key");
        }
        free(a);
    }
    return r;
}

static int read_obj(tok_token_t *t, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, obj_t *o)
{
    uint8_t *label = NULL;
    size_t len;
    int r;

    r = get_attr(t, s, o, CKA_ID, TOK_MAX_ID, &o->id, &o->id_len);
    if (r == TOK_OK)
        r = get_attr(t, s, o, CKA_LABEL, TOK_MAX_LABEL, &label, &len);
    if (r != TOK_OK)
        return r;
    /* the label is the module's text: valid UTF-8 from here on */
    o->label = text_dbus_safe(label != NULL ? (const char *)label : "", 3 * TOK_MAX_LABEL + 4);
    free(label);
    if (o->label == NULL)
        return TOK_ERR_NO_MEMORY;
    if (o->bad[0] != '\0')
        return TOK_OK;
    if (cls == CKO_CERTIFICATE) {
        r = get_attr(t, s, o, CKA_VALUE, TOK_MAX_CERT, &o->cert, &o->cert_len);
        if (r == TOK_OK && o->cert != NULL) {
            int pr = tok_pub_from_cert(o->cert, o->cert_len, &o->pub);

            if (pr == TOK_ERR_NO_MEMORY)
                r = pr;
            else if (pr != TOK_OK)
                snprintf(o->bad, sizeof(o->bad), "CKA_VALUE is not an X.509 certificate");
        }
        return r;
    }
    if (cls == CKO_PRIVATE_KEY) {
        o->priv = get_bool(t, s, o->h, CKA_PRIVATE);
        o->always_auth = get_bool(t, s, o->h, CKA_ALWAYS_AUTHENTICATE);
    }
    return read_key_pub(t, s, o);
}

static void obj_clear(obj_t *o)
{
    free(o->id);
    free(o->label);
    free(o->cert);
    tok_pub_clear(&o->pub);
    memset(o, 0, sizeof(*o));
}

/* An object whose module answers are garbage: warned about, then dropped. */
static void skip_obj(tok_token_t *t, CK_OBJECT_CLASS cls, obj_t *o)
{
    char label[200], id[2 * 16 + 4] = "";

    text_escape(label, sizeof(label), o->label ? o->label : "", o->label ? strlen(o->label) : 0);
    for (size_t i = 0; i < o->id_len && i < 16; i++)
        snprintf(id + 2 * i, sizeof(id) - 2 * i, "%02x", o->id[i]);
    if (o->id_len > 16)
        strcat(id, "...");
    tok_warn(t->ctx, "token '%s': %s object '%s' (id %s, handle %lu) skipped: %s", t->label,
             cls == CKO_PRIVATE_KEY ? "private key" : cls == CKO_PUBLIC_KEY ? "public key"
                                                                           : "certificate",
             label, id[0] ? id : "none", o->h, o->bad);
    obj_clear(o);
}

static int load_objs(tok_token_t *t, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, objs_t *ret)
{
    CK_BBOOL yes = CK_TRUE;
    CK_CERTIFICATE_TYPE ct = CKC_X_509;
    CK_ATTRIBUTE tmpl[3] = {
        { CKA_CLASS, &cls, sizeof(cls) },
        { CKA_TOKEN, &yes, sizeof(yes) },
    };
    CK_OBJECT_HANDLE *hs = NULL;
    size_t n = 0;
    int r;

    if (cls == CKO_PRIVATE_KEY)
        tmpl[2] = (CK_ATTRIBUTE){ CKA_SIGN, &yes, sizeof(yes) };
    else if (cls == CKO_CERTIFICATE)
        tmpl[2] = (CK_ATTRIBUTE){ CKA_CERTIFICATE_TYPE, &ct, sizeof(ct) };
    r = find_objects(t, s, tmpl, cls == CKO_PUBLIC_KEY ? 2 : 3, &hs, &n);
    if (r != TOK_OK)
        return r;
    ret->v = calloc(n + 1, sizeof(*ret->v));
    if (ret->v == NULL) {
        r = TOK_ERR_NO_MEMORY;
        goto out;
    }
    for (size_t i = 0; i < n && r == TOK_OK; i++) {
        obj_t *o = &ret->v[ret->n++];

        o->h = hs[i];
        r = read_obj(t, s, cls, o);
        if (r == TOK_OK && o->bad[0] != '\0') {
            skip_obj(t, cls, o);
            ret->n--;
        }
    }
out:
    free(hs);
    return r;
}

static bool same_id(const obj_t *a, const obj_t *b)
{
    return a->id_len > 0 && a->id_len == b->id_len && memcmp(a->id, b->id, a->id_len) == 0;
}

static const obj_t *by_id(const objs_t *os, const obj_t *like, size_t before)
{
    for (size_t i = 0; i < os->n && i < before; i++)
        if (same_id(&os->v[i], like))
            return &os->v[i];
    return NULL;
}

static unsigned key_mechs(const tok_token_t *t, tok_key_type_t type)
{
    switch (type) {
    case TOK_KEY_RSA: return t->mechs & (TOK_MECH_RSA_PKCS | TOK_MECH_RSA_PSS);
    case TOK_KEY_EC: return t->mechs & TOK_MECH_ECDSA;
    case TOK_KEY_ED25519:
    case TOK_KEY_ED448: return t->mechs & TOK_MECH_EDDSA;
    default: return 0;
    }
}

static void *dup_mem(const void *p, size_t n)
{
    void *r;

    if (p == NULL || n == 0)
        return NULL;
    r = malloc(n);
    if (r != NULL)
        memcpy(r, p, n);
    return r;
}

/* Adds a key from its private key (may be NULL), public key and certificate. */
static int add_key(tok_ctx_t *ctx, tok_token_t *t, const obj_t *priv, const obj_t *pub,
                   const obj_t *cert)
{
    const obj_t *srcs[] = { priv, pub, cert };
    const obj_t *main = priv ? priv : pub ? pub : cert;
    const tok_pub_t *pd = NULL;
    const char *label = "";
    tok_key_int_t ki = { 0 }, *nv;

    for (size_t i = 0; i < 3; i++) {
        if (srcs[i] == NULL)
            continue;
        if (pd == NULL && srcs[i]->pub.spki != NULL)
            pd = &srcs[i]->pub;
        if (label[0] == '\0' && srcs[i]->label != NULL)
            label = srcs[i]->label;
    }
    if (pd == NULL) {
        tok_debug(ctx, "token '%s': object '%s' has no usable public key, skipped", t->label,
                  label);
        return TOK_OK;
    }
    ki.k.type = pd->type;
    ki.k.bits = pd->bits;
    ki.k.group = pd->group;
    ki.k.label = strdup(label);
    ki.k.id = dup_mem(main->id, main->id_len);
    ki.k.id_len = ki.k.id != NULL ? main->id_len : 0;
    ki.k.spki = dup_mem(pd->spki, pd->spki_len);
    ki.k.spki_len = pd->spki_len;
    if (cert != NULL && cert->cert != NULL) {
        ki.k.cert = dup_mem(cert->cert, cert->cert_len);
        ki.k.cert_len = ki.k.cert != NULL ? cert->cert_len : 0;
    }
    ki.k.mechs = key_mechs(t, pd->type);
    ki.k.always_auth = priv != NULL && priv->always_auth;
    ki.k.token = t;
    ki.k.handle = priv != NULL ? priv->h : CK_INVALID_HANDLE;
    ki.handle_from_login = priv != NULL && priv->priv;
    ki.k.uri = tok_uri_for_key(&t->info, &ki.k);
    nv = realloc(ctx->keys, (ctx->n_keys + 1) * sizeof(*nv));
    if (ki.k.label == NULL || ki.k.spki == NULL || ki.k.uri == NULL || nv == NULL ||
        (main->id_len > 0 && ki.k.id == NULL)) {
        if (nv != NULL)
            ctx->keys = nv;
        tok_key_clear(&ki.k);
        return TOK_ERR_NO_MEMORY;
    }
    ctx->keys = nv;
    ctx->keys[ctx->n_keys++] = ki;
    tok_debug(ctx, "key %s (handle %lu)", ki.k.uri, ki.k.handle);
    return TOK_OK;
}

/* Keys of one token in CKA_ID order, so listings are stable. */
static int key_cmp(const void *a, const void *b)
{
    const tok_key_t *x = &((const tok_key_int_t *)a)->k, *y = &((const tok_key_int_t *)b)->k;
    size_t n = x->id_len < y->id_len ? x->id_len : y->id_len;
    int c = n > 0 ? memcmp(x->id, y->id, n) : 0;

    if (c != 0)
        return c;
    if (x->id_len != y->id_len)
        return x->id_len < y->id_len ? -1 : 1;
    return strcmp(x->label, y->label);
}

static int discover_keys(tok_ctx_t *ctx, tok_token_t *t)
{
    size_t first = ctx->n_keys;
    objs_t privs = { 0 }, pubs = { 0 }, certs = { 0 };
    CK_SESSION_HANDLE s;
    bool hidden;
    int r;

    r = tok_session_get(t, &s);
    if (r != TOK_OK)
        return r;
    r = load_objs(t, s, CKO_PRIVATE_KEY, &privs);
    if (r == TOK_OK)
        r = load_objs(t, s, CKO_PUBLIC_KEY, &pubs);
    if (r == TOK_OK)
        r = load_objs(t, s, CKO_CERTIFICATE, &certs);
    if (r != TOK_OK)
        goto out;
    /* Private objects are hidden only while a login is needed and missing
     * (a trust store token with 150 CA certificates must not list keys). */
    pthread_mutex_lock(&t->lock);
    hidden = !t->logged_in && (t->info.flags & CKF_LOGIN_REQUIRED);
    pthread_mutex_unlock(&t->lock);

    for (size_t i = 0; i < privs.n && r == TOK_OK; i++)
        r = add_key(ctx, t, &privs.v[i], by_id(&pubs, &privs.v[i], pubs.n),
                    by_id(&certs, &privs.v[i], certs.n));
    /* Private objects are hidden before login: list their public halves. */
    for (size_t i = 0; i < pubs.n && r == TOK_OK && hidden; i++) {
        const obj_t *u = &pubs.v[i];

        if (u->id_len == 0 || by_id(&privs, u, privs.n) || by_id(&pubs, u, i))
            continue;
        r = add_key(ctx, t, NULL, u, by_id(&certs, u, certs.n));
    }
    for (size_t i = 0; i < certs.n && r == TOK_OK && hidden; i++) {
        const obj_t *c = &certs.v[i];

        if (c->id_len == 0 || by_id(&privs, c, privs.n) || by_id(&pubs, c, pubs.n) ||
            by_id(&certs, c, i))
            continue;
        r = add_key(ctx, t, NULL, NULL, c);
    }
    if (ctx->n_keys > first + 1)
        qsort(ctx->keys + first, ctx->n_keys - first, sizeof(*ctx->keys), key_cmp);
    if (r == TOK_OK)
        tok_token_make_copies(t, s);
out:
    if (r == TOK_ERR_TOKEN_REMOVED)
        tok_session_drop(t, s);
    else
        tok_session_put(t, s);
    objs_clear(&privs);
    objs_clear(&pubs);
    objs_clear(&certs);
    return r;
}

static unsigned read_mechs(tok_token_t *t)
{
    static const struct {
        CK_MECHANISM_TYPE m;
        unsigned bit;
    } map[] = {
        { CKM_RSA_PKCS, TOK_MECH_RSA_PKCS },
        { CKM_RSA_PKCS_PSS, TOK_MECH_RSA_PSS },
        { CKM_ECDSA, TOK_MECH_ECDSA },
        { CKM_EDDSA, TOK_MECH_EDDSA },
    };
    CK_MECHANISM_TYPE *list = NULL;
    CK_MECHANISM_INFO mi;
    CK_ULONG n = 0;
    unsigned bits = 0;

    CK_ULONG have;

    if (t->f->C_GetMechanismList(t->slot, NULL, &n) != CKR_OK || n == 0 || n > 65536)
        return 0;
    /* One spare element: p11-kit-client.so 0.24 (Debian 12), when it drops
     * mechanisms its RPC cannot carry, memmove()s count - i elements from
     * i + 1 and so reads one past the caller's array (fixed upstream in
     * mechanism_list_purge). */
    list = calloc(n + 1, sizeof(*list));
    have = n;
    if (list == NULL || t->f->C_GetMechanismList(t->slot, list, &n) != CKR_OK || n > have)
        goto out;
    for (CK_ULONG i = 0; i < n; i++)
        for (size_t j = 0; j < sizeof(map) / sizeof(map[0]); j++)
            if (list[i] == map[j].m && t->f->C_GetMechanismInfo(t->slot, map[j].m, &mi) == CKR_OK &&
                (mi.flags & CKF_SIGN))
                bits |= map[j].bit;
out:
    free(list);
    return bits;
}

void tok_token_free(tok_token_t *t)
{
    if (t == NULL)
        return;
    if (t->idle != NULL)
        tok_pool_destroy(t);
    free(t->label);
    free(t->uri);
    free(t);
}

tok_token_t *tok_token_new(tok_ctx_t *ctx, tok_module_t *mod, CK_SLOT_ID slot,
                           const CK_SLOT_INFO *slot_info, const CK_TOKEN_INFO *info)
{
    tok_token_t *t = calloc(1, sizeof(*t));

    if (t == NULL)
        return NULL;
    t->ctx = ctx;
    t->mod = mod;
    t->f = mod->f;
    t->slot = slot;
    t->slot_info = *slot_info;
    t->info = *info;
    t->label = tok_ck_string(info->label, sizeof(info->label));
    t->uri = tok_uri_for_token(info);
    if (tok_pool_init(t) != TOK_OK || t->label == NULL || t->uri == NULL) {
        tok_token_free(t);
        return NULL;
    }
    t->mechs = read_mechs(t);
    t->use_copies = !(slot_info->flags & CKF_HW_SLOT);
    tok_debug(ctx, "token %s in slot %lu, mechanisms 0x%x, pool %zu", t->uri, slot, t->mechs,
              t->max_sessions);
    return t;
}

void tok_token_find_handles(tok_token_t *t, CK_SESSION_HANDLE s)
{
    tok_ctx_t *ctx = t->ctx;

    for (size_t i = 0; i < ctx->n_keys; i++) {
        tok_key_int_t *ki = &ctx->keys[i];
        CK_OBJECT_HANDLE h;

        if (ki->k.token != t)
            continue;
        pthread_mutex_lock(&t->lock);
        h = ki->k.handle;
        pthread_mutex_unlock(&t->lock);
        if (h != CK_INVALID_HANDLE)
            continue;
        h = tok_find_private_by_id(t, s, ki->k.id, ki->k.id_len);
        tok_debug(ctx, "%s: private key handle %lu", ki->k.uri, h);
        pthread_mutex_lock(&t->lock);
        if (ki->k.handle == CK_INVALID_HANDLE && h != CK_INVALID_HANDLE) {
            ki->k.handle = h;
            ki->handle_from_login = true;
        }
        pthread_mutex_unlock(&t->lock);
    }
}

void tok_token_forget_login_locked(tok_token_t *t)
{
    tok_ctx_t *ctx = t->ctx;

    for (size_t i = 0; i < ctx->n_keys; i++) {
        tok_key_int_t *ki = &ctx->keys[i];

        if (ki->k.token == t && ki->handle_from_login) {
            /* private session objects are destroyed at logout, too */
            ki->k.handle = CK_INVALID_HANDLE;
            ki->handle_from_login = false;
            ki->copy = CK_INVALID_HANDLE;
        }
    }
}

void tok_token_forget_session_locked(tok_token_t *t, CK_SESSION_HANDLE s)
{
    tok_ctx_t *ctx = t->ctx;

    for (size_t i = 0; i < ctx->n_keys; i++)
        if (ctx->keys[i].k.token == t && ctx->keys[i].copy_session == s)
            ctx->keys[i].copy = CK_INVALID_HANDLE;
}

void tok_token_make_copies(tok_token_t *t, CK_SESSION_HANDLE s)
{
    tok_ctx_t *ctx = t->ctx;
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE tmpl = { CKA_TOKEN, &no, sizeof(no) };

    if (!t->use_copies)
        return;
    for (size_t i = 0; i < ctx->n_keys; i++) {
        tok_key_int_t *ki = &ctx->keys[i];
        CK_OBJECT_HANDLE h, c = CK_INVALID_HANDLE;
        CK_RV rv;

        if (ki->k.token != t)
            continue;
        pthread_mutex_lock(&t->lock);
        h = ki->copy == CK_INVALID_HANDLE ? ki->k.handle : CK_INVALID_HANDLE;
        pthread_mutex_unlock(&t->lock);
        if (h == CK_INVALID_HANDLE)
            continue;
        rv = t->f->C_CopyObject(s, h, &tmpl, 1, &c);
        tok_debug(ctx, "%s: session copy %lu: %s", ki->k.uri, c, p11_kit_strerror(rv));
        if (rv != CKR_OK)
            continue;
        pthread_mutex_lock(&t->lock);
        if (ki->copy == CK_INVALID_HANDLE && ki->k.handle == h) {
            ki->copy = c;
            ki->copy_session = s;
            c = CK_INVALID_HANDLE;
        }
        pthread_mutex_unlock(&t->lock);
        if (c != CK_INVALID_HANDLE)
            t->f->C_DestroyObject(s, c);
    }
}

/* Destroys the session copies of the context's keys (before they are freed). */
void tok_ctx_destroy_copies(tok_ctx_t *ctx)
{
    for (size_t i = 0; i < ctx->n_keys; i++) {
        tok_key_int_t *ki = &ctx->keys[i];
        tok_token_t *t = ki->k.token;
        CK_SESSION_HANDLE s;

        if (ki->copy == CK_INVALID_HANDLE || tok_session_get(t, &s) != TOK_OK)
            continue;
        t->f->C_DestroyObject(s, ki->copy);
        ki->copy = CK_INVALID_HANDLE;
        tok_session_put(t, s);
    }
}

static bool same_token(const tok_token_t *t, const tok_module_t *mod, CK_SLOT_ID slot,
                       const CK_TOKEN_INFO *info)
{
    return t->mod == mod && t->slot == slot && !t->seen &&
           memcmp(t->info.label, info->label, sizeof(info->label)) == 0 &&
           memcmp(t->info.manufacturerID, info->manufacturerID, sizeof(info->manufacturerID)) == 0 &&
           memcmp(t->info.model, info->model, sizeof(info->model)) == 0 &&
           memcmp(t->info.serialNumber, info->serialNumber, sizeof(info->serialNumber)) == 0;
}

/* The slots of a module that hold a token; *ret is malloc'd (NULL when none). */
static CK_RV present_slots(tok_module_t *m, CK_SLOT_ID **ret, CK_ULONG *ret_n)
{
    CK_SLOT_ID *slots = NULL;
    CK_ULONG ns = 0;
    CK_RV rv;

    CK_ULONG have;

    rv = m->f->C_GetSlotList(CK_TRUE, NULL, &ns);
    if (rv == CKR_OK && ns > 4096)
        rv = CKR_GENERAL_ERROR; /* not a real reader count: a lie */
    if (rv == CKR_OK && ns > 0) {
        slots = calloc(ns, sizeof(*slots));
        if (slots == NULL)
            return CKR_HOST_MEMORY;
        have = ns;
        rv = m->f->C_GetSlotList(CK_TRUE, slots, &ns);
        if (rv == CKR_OK && ns > have)
            rv = CKR_GENERAL_ERROR; /* more slots than places */
    }
    if (rv != CKR_OK) {
        free(slots);
        slots = NULL;
        ns = 0;
    }
    *ret = slots;
    *ret_n = ns;
    return rv;
}

/* Adds the present, initialised tokens of one module to *list. */
static int scan_module(tok_ctx_t *ctx, tok_module_t *m, tok_token_t ***list, size_t *n)
{
    CK_SLOT_ID *slots = NULL;
    CK_ULONG ns = 0;
    CK_RV rv;
    int r = TOK_OK;

    rv = present_slots(m, &slots, &ns);
    if (rv == CKR_HOST_MEMORY)
        return TOK_ERR_NO_MEMORY;
    if (rv != CKR_OK) {
        tok_debug(ctx, "C_GetSlotList on %s: %s", m->path ? m->path : "?", p11_kit_strerror(rv));
        goto out;
    }
    for (CK_ULONG i = 0; i < ns; i++) {
        CK_SLOT_INFO si;
        CK_TOKEN_INFO ti;
        tok_token_t *t = NULL, **nl;

        if (m->f->C_GetSlotInfo(slots[i], &si) != CKR_OK ||
            m->f->C_GetTokenInfo(slots[i], &ti) != CKR_OK || !(ti.flags & CKF_TOKEN_INITIALIZED))
            continue;
        for (size_t j = 0; j < ctx->n_tokens && t == NULL; j++)
            if (same_token(ctx->tokens[j], m, slots[i], &ti))
                t = ctx->tokens[j];
        nl = realloc(*list, (*n + 1) * sizeof(**list));
        if (nl == NULL) {
            r = TOK_ERR_NO_MEMORY;
            goto out;
        }
        *list = nl;
        if (t != NULL) {
            pthread_mutex_lock(&t->lock);
            t->info = ti;
            t->slot_info = si;
            pthread_mutex_unlock(&t->lock);
        } else {
            t = tok_token_new(ctx, m, slots[i], &si, &ti);
            if (t == NULL) {
                r = TOK_ERR_NO_MEMORY;
                goto out;
            }
        }
        t->seen = true;
        (*list)[(*n)++] = t;
    }
out:
    free(slots);
    return r;
}

int tok_ctx_scan(tok_ctx_t *ctx)
{
    tok_token_t **list = NULL;
    size_t n = 0;
    int r = TOK_OK;

    if (ctx == NULL)
        return TOK_ERR_ARGS;
    tok_ctx_destroy_copies(ctx);
    tok_ctx_free_keys(ctx);
    for (size_t i = 0; i < ctx->n_tokens; i++)
        ctx->tokens[i]->seen = false;
    for (size_t i = 0; i < ctx->n_mods && r == TOK_OK; i++)
        r = scan_module(ctx, &ctx->mods[i], &list, &n);
    /* Tokens that went away (or an out-of-memory stop) lose their sessions. */
    for (size_t i = 0; i < ctx->n_tokens; i++)
        if (!ctx->tokens[i]->seen)
            tok_token_free(ctx->tokens[i]);
    free(ctx->tokens);
    ctx->tokens = list;
    ctx->n_tokens = n;
    for (size_t i = 0; i < n && r == TOK_OK; i++) {
        int kr = discover_keys(ctx, list[i]);

        if (kr == TOK_ERR_NO_MEMORY)
            r = kr;
        else if (kr != TOK_OK)
            tok_debug(ctx, "token '%s': key discovery failed: %s", list[i]->label,
                      tok_strerror(kr));
    }
    return r;
}

int tok_ctx_tokens_changed(tok_ctx_t *ctx, bool *ret_changed)
{
    size_t present = 0;
    bool changed = false;

    if (ctx == NULL || ret_changed == NULL)
        return TOK_ERR_ARGS;
    for (size_t i = 0; i < ctx->n_mods && !changed; i++) {
        tok_module_t *m = &ctx->mods[i];
        CK_SLOT_ID *slots = NULL;
        CK_ULONG ns = 0;

        if (present_slots(m, &slots, &ns) == CKR_HOST_MEMORY)
            return TOK_ERR_NO_MEMORY;
        for (CK_ULONG j = 0; j < ns && !changed; j++) {
            CK_TOKEN_INFO ti;
            bool known = false;

            if (m->f->C_GetTokenInfo(slots[j], &ti) != CKR_OK ||
                !(ti.flags & CKF_TOKEN_INITIALIZED))
                continue;
            present++;
            for (size_t k = 0; k < ctx->n_tokens && !known; k++) {
                tok_token_t *t = ctx->tokens[k];

                pthread_mutex_lock(&t->lock);
                known = t->mod == m && t->slot == slots[j] &&
                        memcmp(t->info.label, ti.label, sizeof(ti.label)) == 0 &&
                        memcmp(t->info.serialNumber, ti.serialNumber, sizeof(ti.serialNumber)) == 0;
                pthread_mutex_unlock(&t->lock);
            }
            changed = !known;
        }
        free(slots);
    }
    *ret_changed = changed || present != ctx->n_tokens;
    return TOK_OK;
}
