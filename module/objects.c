/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The objects of one agent key: a private key (usable only through
 * C_Sign), its public key and its certificate, with the attributes NSS,
 * GnuTLS, OpenSSH and OpenSC look at to pair them: the same CKA_ID (the key
 * URI's id) and CKA_LABEL on all three. Everything public comes from the
 * key record's SubjectPublicKeyInfo and certificate, parsed here with the
 * bounded DER reader of common/buf.h: the record is hostile until checked.
 *
 * Each object is a flat list of attributes built once, when the key
 * record arrives; lookups and template matching are then plain searches.
 */
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "module.h"

#define DER_MAX (1u << 20)

typedef struct attr_list {
    mod_attr_t *a;
    size_t n, cap;
    bool oom;
} attr_list_t;

static void add(attr_list_t *l, CK_ATTRIBUTE_TYPE type, const void *v, size_t len)
{
    mod_attr_t *x;

    if (l->oom)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        mod_attr_t *na = realloc(l->a, cap * sizeof(*na));

        if (na == NULL) {
            l->oom = true;
            return;
        }
        l->a = na;
        l->cap = cap;
    }
    x = &l->a[l->n];
    x->type = type;
    x->len = (CK_ULONG)len;
    x->value = malloc(len ? len : 1);
    if (x->value == NULL) {
        l->oom = true;
        return;
    }
    if (len)
        memcpy(x->value, v, len);
    l->n++;
}

static void add_bool(attr_list_t *l, CK_ATTRIBUTE_TYPE type, bool v)
{
    CK_BBOOL b = v ? CK_TRUE : CK_FALSE;

    add(l, type, &b, sizeof(b));
}

static void add_ulong(attr_list_t *l, CK_ATTRIBUTE_TYPE type, CK_ULONG v)
{
    add(l, type, &v, sizeof(v));
}

/* A secret part: present, never readable (CKR_ATTRIBUTE_SENSITIVE). */
static void add_sensitive(attr_list_t *l, CK_ATTRIBUTE_TYPE type)
{
    mod_attr_t *x;

    add(l, type, NULL, 0);
    if (l->oom)
        return;
    x = &l->a[l->n - 1];
    free(x->value);
    x->value = NULL;
    x->len = CK_UNAVAILABLE_INFORMATION;
}

static void list_free(attr_list_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->a[i].value);
    free(l->a);
    *l = (attr_list_t){0};
}

/* The public parts of a key, from its SubjectPublicKeyInfo. */
typedef struct pub_parts {
    const uint8_t *modulus, *exponent; /* RSA, without leading zeros */
    size_t modulus_len, exponent_len;
    const uint8_t *ec_params;          /* EC: the curve's OID element (DER) */
    size_t ec_params_len;
    const uint8_t *point;              /* EC/EdDSA: the point (the BIT STRING's bytes) */
    size_t point_len;
} pub_parts_t;

static const uint8_t OID_RSA[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01};
static const uint8_t OID_RSA_PSS[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a};
static const uint8_t OID_EC[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01};
static const uint8_t OID_ED25519[] = {0x2b, 0x65, 0x70};
static const uint8_t OID_ED448[] = {0x2b, 0x65, 0x71};
/* CKA_EC_PARAMS of EdDSA keys: the curve's OID (PKCS#11 3.0 allows it
 * beside the printable name; OpenSC, GnuTLS and NSS read the OID) */
static const uint8_t DER_ED25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
static const uint8_t DER_ED448[] = {0x06, 0x03, 0x2b, 0x65, 0x71};

static bool oid_is(const uint8_t *p, size_t n, const uint8_t *oid, size_t oid_len)
{
    return n == oid_len && memcmp(p, oid, n) == 0;
}

static void strip_zeros(const uint8_t **p, size_t *n)
{
    while (*n > 1 && (*p)[0] == 0) {
        (*p)++;
        (*n)--;
    }
}

static int parse_spki(const uint8_t *der, size_t len, bus_key_type_t type, pub_parts_t *ret,
                      const char **errmsg)
{
    buf_reader_t r, spki, alg, oid, bits;
    const uint8_t *oid_p, *key;
    size_t oid_len, key_len;
    uint8_t unused = 0xff;

    memset(ret, 0, sizeof(*ret));
    buf_reader_init(&r, der, len);
    buf_get_der(&r, BUF_DER_SEQUENCE, DER_MAX, &spki);
    buf_expect_end(&r);
    buf_get_der(&spki, BUF_DER_SEQUENCE, DER_MAX, &alg);
    buf_get_der(&alg, BUF_DER_OID, 64, &oid);
    buf_get_der(&spki, BUF_DER_BIT_STRING, DER_MAX, &bits);
    buf_expect_end(&spki);
    buf_get_u8(&bits, &unused);
    if (buf_error(&r) || buf_error(&spki) || buf_error(&alg) || buf_error(&oid) ||
        buf_error(&bits) || unused != 0) {
        *errmsg = "malformed SubjectPublicKeyInfo";
        return -1;
    }
    buf_rest(&oid, &oid_p, &oid_len);
    buf_rest(&bits, &key, &key_len);
    switch (type) {
    case BUS_KEY_RSA: {
        buf_reader_t k, seq, n, e;

        if (!oid_is(oid_p, oid_len, OID_RSA, sizeof(OID_RSA)) &&
            !oid_is(oid_p, oid_len, OID_RSA_PSS, sizeof(OID_RSA_PSS)))
            goto mismatch;
        buf_reader_init(&k, key, key_len);
        buf_get_der(&k, BUF_DER_SEQUENCE, DER_MAX, &seq);
        buf_expect_end(&k);
        buf_get_der(&seq, BUF_DER_INTEGER, 4096, &n);
        buf_get_der(&seq, BUF_DER_INTEGER, 4096, &e);
        buf_expect_end(&seq);
        if (buf_error(&k) || buf_error(&seq) || buf_left(&n) == 0 || buf_left(&e) == 0) {
            *errmsg = "malformed RSA public key";
            return -1;
        }
        buf_rest(&n, &ret->modulus, &ret->modulus_len);
        buf_rest(&e, &ret->exponent, &ret->exponent_len);
        strip_zeros(&ret->modulus, &ret->modulus_len);
        strip_zeros(&ret->exponent, &ret->exponent_len);
        return 0;
    }
    case BUS_KEY_EC: {
        const uint8_t *params = alg.p;
        size_t before = buf_left(&alg);
        buf_reader_t curve;

        if (!oid_is(oid_p, oid_len, OID_EC, sizeof(OID_EC)))
            goto mismatch;
        /* named curves only: the parameters are one OID */
        if (buf_get_der(&alg, BUF_DER_OID, 64, &curve) != BUF_OK || buf_left(&alg) != 0 ||
            key_len == 0) {
            *errmsg = "EC key without a named curve";
            return -1;
        }
        ret->ec_params = params;
        ret->ec_params_len = before;
        ret->point = key;
        ret->point_len = key_len;
        return 0;
    }
    case BUS_KEY_ED25519:
    case BUS_KEY_ED448: {
        bool ed448 = type == BUS_KEY_ED448;

        if (!oid_is(oid_p, oid_len, ed448 ? OID_ED448 : OID_ED25519, sizeof(OID_ED25519)))
            goto mismatch;
        if (key_len != (ed448 ? 57u : 32u)) {
            *errmsg = "EdDSA public key of the wrong size";
            return -1;
        }
        ret->ec_params = ed448 ? DER_ED448 : DER_ED25519;
        ret->ec_params_len = sizeof(DER_ED25519);
        ret->point = key;
        ret->point_len = key_len;
        return 0;
    }
    default:
        *errmsg = "unknown key type";
        return -1;
    }
mismatch:
    *errmsg = "the public key's algorithm is not the key's type";
    return -1;
}

/* The parts of an X.509 certificate the objects show. */
typedef struct cert_parts {
    const uint8_t *serial, *issuer, *subject; /* whole DER elements */
    size_t serial_len, issuer_len, subject_len;
} cert_parts_t;

/* The start and length of the next element of r, consumed. */
static bool next_elem(buf_reader_t *r, uint8_t tag, const uint8_t **ret, size_t *ret_len)
{
    const uint8_t *start = r->p;
    size_t before = buf_left(r);
    buf_reader_t sub;

    if (buf_get_der(r, tag, DER_MAX, &sub) != BUF_OK)
        return false;
    *ret = start;
    *ret_len = before - buf_left(r);
    return true;
}

static bool parse_cert(const uint8_t *der, size_t len, cert_parts_t *ret)
{
    buf_reader_t r, cert, tbs, skip;
    const uint8_t *dummy;
    size_t dummy_len;
    uint8_t tag = 0;

    memset(ret, 0, sizeof(*ret));
    buf_reader_init(&r, der, len);
    buf_get_der(&r, BUF_DER_SEQUENCE, DER_MAX, &cert);
    buf_get_der(&cert, BUF_DER_SEQUENCE, DER_MAX, &tbs);
    if (buf_error(&r) || buf_error(&cert) || buf_left(&r) != 0)
        return false;
    /* [0] EXPLICIT version, when not v1 */
    if (buf_peek_u8(&tbs, &tag) == BUF_OK && tag == 0xa0)
        buf_get_der(&tbs, 0xa0, 16, &skip);
    return next_elem(&tbs, BUF_DER_INTEGER, &ret->serial, &ret->serial_len) &&
           next_elem(&tbs, BUF_DER_SEQUENCE, &dummy, &dummy_len) &&         /* signature */
           next_elem(&tbs, BUF_DER_SEQUENCE, &ret->issuer, &ret->issuer_len) &&
           next_elem(&tbs, BUF_DER_SEQUENCE, &dummy, &dummy_len) &&         /* validity */
           next_elem(&tbs, BUF_DER_SEQUENCE, &ret->subject, &ret->subject_len);
}

static CK_KEY_TYPE ck_key_type(bus_key_type_t t)
{
    switch (t) {
    case BUS_KEY_RSA:
        return CKK_RSA;
    case BUS_KEY_EC:
        return CKK_EC;
    default:
        return CKK_EC_EDWARDS;
    }
}

size_t mod_sig_len(bus_key_type_t type, uint32_t bits)
{
    switch (type) {
    case BUS_KEY_RSA:
        return bits >= 512 && bits <= 16384 ? (bits + 7) / 8 : 0;
    case BUS_KEY_EC:
        return bits >= 160 && bits <= 571 ? 2 * ((bits + 7) / 8) : 0;
    case BUS_KEY_ED25519:
        return 64;
    case BUS_KEY_ED448:
        return 114;
    default:
        return 0;
    }
}

/* Attributes every object of a key has. */
static void add_common(attr_list_t *l, CK_OBJECT_CLASS klass, const bus_key_info_t *rec,
                       const uint8_t *id, size_t id_len, bool private)
{
    add_ulong(l, CKA_CLASS, klass);
    add_bool(l, CKA_TOKEN, true);
    add_bool(l, CKA_PRIVATE, private);
    add_bool(l, CKA_MODIFIABLE, false);
    add_bool(l, CKA_COPYABLE, false);
    add_bool(l, CKA_DESTROYABLE, false);
    add(l, CKA_LABEL, rec->label, strlen(rec->label));
    add(l, CKA_ID, id, id_len);
    add(l, CKA_START_DATE, NULL, 0);
    add(l, CKA_END_DATE, NULL, 0);
}

static void add_key_common(attr_list_t *l, const bus_key_info_t *rec, const CK_MECHANISM_TYPE *mechs,
                           size_t n_mechs, const cert_parts_t *cp, bool has_cert)
{
    add_ulong(l, CKA_KEY_TYPE, ck_key_type(rec->type));
    add_bool(l, CKA_DERIVE, false);
    add_bool(l, CKA_LOCAL, false);
    add_ulong(l, CKA_KEY_GEN_MECHANISM, CK_UNAVAILABLE_INFORMATION);
    add(l, CKA_ALLOWED_MECHANISMS, mechs, n_mechs * sizeof(*mechs));
    if (has_cert)
        add(l, CKA_SUBJECT, cp->subject, cp->subject_len);
    else
        add(l, CKA_SUBJECT, NULL, 0);
    add(l, CKA_PUBLIC_KEY_INFO, rec->spki, rec->spki_len);
}

/* CKA_EC_POINT: the point as a DER OCTET STRING (what PKCS#11 2.40 says
 * and OpenSC, GnuTLS, NSS and OpenSSH read). */
static void add_ec_point(attr_list_t *l, const pub_parts_t *pp)
{
    buf_writer_t w;
    uint8_t *v = NULL;
    size_t n = 0;

    buf_writer_init(&w, DER_MAX);
    buf_put_der(&w, BUF_DER_OCTET_STRING, pp->point, pp->point_len);
    if (buf_writer_finish(&w, &v, &n) != BUF_OK) {
        l->oom = true;
        return;
    }
    add(l, CKA_EC_POINT, v, n);
    free(v);
}

int mod_key_from_record(const bus_key_info_t *rec, mod_key_t *ret, const char **errmsg)
{
    attr_list_t priv = {0}, pub = {0}, crt = {0};
    uint8_t id[MOD_MAX_ID];
    size_t id_len = 0, n_all, n_mechs = 0;
    const mod_mech_t *all = mod_mech_all(&n_all);
    CK_MECHANISM_TYPE mechs[32];
    pub_parts_t pp;
    cert_parts_t cp;
    bool has_cert = false;
    int r;

    memset(ret, 0, sizeof(*ret));
    if (rec == NULL || rec->uri == NULL || rec->label == NULL || rec->spki == NULL ||
        rec->spki_len == 0) {
        *errmsg = "incomplete key record";
        return -1;
    }
    if (strlen(rec->label) > MOD_MAX_ATTR || rec->spki_len > MOD_MAX_ATTR ||
        rec->cert_len > MOD_MAX_ATTR || strlen(rec->uri) > MOD_MAX_ATTR) {
        *errmsg = "key record too large";
        return -1;
    }
    ret->sig_len = mod_sig_len(rec->type, rec->bits);
    if (ret->sig_len == 0) {
        *errmsg = "unknown key type or size";
        return -1;
    }
    r = mod_uri_attr(rec->uri, "id", id, sizeof(id), &id_len);
    if (r == MOD_URI_BAD) {
        *errmsg = "the key URI's id is malformed";
        return -1;
    }
    if (r == MOD_URI_ABSENT)
        id_len = 0;
    if (parse_spki(rec->spki, rec->spki_len, rec->type, &pp, errmsg) < 0)
        return -1;
    /* RSA: the modulus must be the size the agent says (signature lengths
     * are checked against it) */
    if (rec->type == BUS_KEY_RSA && (pp.modulus_len != ret->sig_len)) {
        *errmsg = "the RSA modulus is not the key's size";
        return -1;
    }
    if (rec->cert != NULL && rec->cert_len > 0)
        has_cert = parse_cert(rec->cert, rec->cert_len, &cp);
    for (size_t i = 0; i < n_all && n_mechs < sizeof(mechs) / sizeof(mechs[0]); i++)
        if (mod_mech_key_ok(&all[i], rec->type, rec->flags))
            mechs[n_mechs++] = all[i].type;

    /* private key: CKA_PRIVATE true as on the real token (no program is
     * asked to log in: the token has no CKF_LOGIN_REQUIRED, so NSS,
     * GnuTLS and OpenSSH list private objects without C_Login) */
    add_common(&priv, CKO_PRIVATE_KEY, rec, id, id_len, true);
    add_key_common(&priv, rec, mechs, n_mechs, &cp, has_cert);
    add_bool(&priv, CKA_SENSITIVE, true);
    add_bool(&priv, CKA_DECRYPT, false);
    add_bool(&priv, CKA_SIGN, true);
    add_bool(&priv, CKA_SIGN_RECOVER, false);
    add_bool(&priv, CKA_UNWRAP, false);
    add_bool(&priv, CKA_EXTRACTABLE, false);
    add_bool(&priv, CKA_ALWAYS_SENSITIVE, true);
    add_bool(&priv, CKA_NEVER_EXTRACTABLE, true);
    add_bool(&priv, CKA_WRAP_WITH_TRUSTED, false);
    /* the agent does any context-specific login itself */
    add_bool(&priv, CKA_ALWAYS_AUTHENTICATE, false);

    add_common(&pub, CKO_PUBLIC_KEY, rec, id, id_len, false);
    add_key_common(&pub, rec, mechs, n_mechs, &cp, has_cert);
    /* the module only signs: nothing verifies or encrypts here */
    add_bool(&pub, CKA_ENCRYPT, false);
    add_bool(&pub, CKA_VERIFY, false);
    add_bool(&pub, CKA_VERIFY_RECOVER, false);
    add_bool(&pub, CKA_WRAP, false);
    add_bool(&pub, CKA_TRUSTED, false);

    if (rec->type == BUS_KEY_RSA) {
        CK_ULONG bits = rec->bits;

        add(&priv, CKA_MODULUS, pp.modulus, pp.modulus_len);
        add(&priv, CKA_PUBLIC_EXPONENT, pp.exponent, pp.exponent_len);
        add_sensitive(&priv, CKA_PRIVATE_EXPONENT);
        add_sensitive(&priv, CKA_PRIME_1);
        add_sensitive(&priv, CKA_PRIME_2);
        add_sensitive(&priv, CKA_EXPONENT_1);
        add_sensitive(&priv, CKA_EXPONENT_2);
        add_sensitive(&priv, CKA_COEFFICIENT);
        add(&pub, CKA_MODULUS, pp.modulus, pp.modulus_len);
        add(&pub, CKA_PUBLIC_EXPONENT, pp.exponent, pp.exponent_len);
        add_ulong(&pub, CKA_MODULUS_BITS, bits);
    } else {
        add(&priv, CKA_EC_PARAMS, pp.ec_params, pp.ec_params_len);
        add_sensitive(&priv, CKA_VALUE);
        add(&pub, CKA_EC_PARAMS, pp.ec_params, pp.ec_params_len);
        add_ec_point(&pub, &pp);
    }

    if (has_cert) {
        add_common(&crt, CKO_CERTIFICATE, rec, id, id_len, false);
        add_ulong(&crt, CKA_CERTIFICATE_TYPE, CKC_X_509);
        add_bool(&crt, CKA_TRUSTED, false);
        add_ulong(&crt, CKA_CERTIFICATE_CATEGORY, 1); /* token user */
        add_ulong(&crt, CKA_JAVA_MIDP_SECURITY_DOMAIN, 0);
        add(&crt, CKA_VALUE, rec->cert, rec->cert_len);
        add(&crt, CKA_SUBJECT, cp.subject, cp.subject_len);
        add(&crt, CKA_ISSUER, cp.issuer, cp.issuer_len);
        add(&crt, CKA_SERIAL_NUMBER, cp.serial, cp.serial_len);
        add(&crt, CKA_PUBLIC_KEY_INFO, rec->spki, rec->spki_len);
        add(&crt, CKA_URL, NULL, 0);
        add(&crt, CKA_HASH_OF_SUBJECT_PUBLIC_KEY, NULL, 0);
        add(&crt, CKA_HASH_OF_ISSUER_PUBLIC_KEY, NULL, 0);
    }

    ret->uri = strdup(rec->uri);
    if (priv.oom || pub.oom || crt.oom || ret->uri == NULL) {
        list_free(&priv);
        list_free(&pub);
        list_free(&crt);
        free(ret->uri);
        ret->uri = NULL;
        return -2;
    }
    ret->type = rec->type;
    ret->bits = rec->bits;
    ret->flags = rec->flags;
    ret->has_cert = has_cert;
    ret->obj[MOD_OBJ_PRIVATE] = (mod_object_t){CKO_PRIVATE_KEY, priv.a, priv.n};
    ret->obj[MOD_OBJ_PUBLIC] = (mod_object_t){CKO_PUBLIC_KEY, pub.a, pub.n};
    ret->obj[MOD_OBJ_CERT] = (mod_object_t){CKO_CERTIFICATE, crt.a, crt.n};
    return 0;
}

void mod_key_clear(mod_key_t *k)
{
    if (k == NULL)
        return;
    for (size_t i = 0; i < 3; i++) {
        for (size_t j = 0; j < k->obj[i].n; j++)
            free(k->obj[i].attrs[j].value);
        free(k->obj[i].attrs);
    }
    free(k->uri);
    memset(k, 0, sizeof(*k));
}

const mod_attr_t *mod_object_attr(const mod_object_t *o, CK_ATTRIBUTE_TYPE type)
{
    for (size_t i = 0; i < o->n; i++)
        if (o->attrs[i].type == type)
            return &o->attrs[i];
    return NULL;
}

/* PKCS#11 2.40, 5.7 C_GetAttributeValue: each attribute on its own. */
CK_RV mod_object_get(const mod_object_t *o, CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    CK_RV rv = CKR_OK;

    for (CK_ULONG i = 0; i < n; i++) {
        const mod_attr_t *a = mod_object_attr(o, tmpl[i].type);

        if (a == NULL) {
            tmpl[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            rv = CKR_ATTRIBUTE_TYPE_INVALID;
        } else if (a->value == NULL) {
            tmpl[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            rv = CKR_ATTRIBUTE_SENSITIVE;
        } else if (tmpl[i].pValue == NULL) {
            tmpl[i].ulValueLen = a->len;
        } else if (tmpl[i].ulValueLen >= a->len) {
            if (a->len)
                memcpy(tmpl[i].pValue, a->value, a->len);
            tmpl[i].ulValueLen = a->len;
        } else {
            tmpl[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            rv = CKR_BUFFER_TOO_SMALL;
        }
    }
    return rv;
}

bool mod_object_match(const mod_object_t *o, const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    for (CK_ULONG i = 0; i < n; i++) {
        const mod_attr_t *a = mod_object_attr(o, tmpl[i].type);

        if (a == NULL || a->value == NULL || a->len != tmpl[i].ulValueLen)
            return false;
        if (a->len > 0 && (tmpl[i].pValue == NULL || memcmp(a->value, tmpl[i].pValue, a->len) != 0))
            return false;
    }
    return true;
}
