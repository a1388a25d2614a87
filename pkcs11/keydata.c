/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Public key material from PKCS#11 attributes to SubjectPublicKeyInfo DER,
 * with OpenSSL's default library context. Only public attributes come here.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

#include "buf.h"
#include "tok-internal.h"

static const struct {
    int nid;
    const char *name;
    unsigned bits;
} curves[] = {
    { NID_X9_62_prime256v1, "prime256v1", 256 },
    { NID_secp384r1, "secp384r1", 384 },
    { NID_secp521r1, "secp521r1", 521 },
};

/* DER encodings of CKA_EC_PARAMS for Edwards curves. */
static const uint8_t oid_ed25519[] = { 0x06, 0x03, 0x2b, 0x65, 0x70 };
static const uint8_t oid_ed448[] = { 0x06, 0x03, 0x2b, 0x65, 0x71 };
/* 1.3.6.1.4.1.11591.15.1, the GnuPG name some older tokens use */
static const uint8_t oid_ed25519_gnu[] = { 0x06, 0x09, 0x2b, 0x06, 0x01, 0x04,
                                           0x01, 0xda, 0x47, 0x0f, 0x01 };
static const uint8_t str_ed25519[] = { 0x13, 0x0c, 'e', 'd', 'w', 'a', 'r', 'd',
                                       's', '2', '5', '5', '1', '9' };
static const uint8_t str_ed448[] = { 0x13, 0x0a, 'e', 'd', 'w', 'a', 'r', 'd', 's', '4', '4', '8' };

#define SAME(p, n, c) ((n) == sizeof(c) && memcmp((p), (c), sizeof(c)) == 0)

void tok_pub_clear(tok_pub_t *p)
{
    if (p == NULL)
        return;
    free(p->spki);
    memset(p, 0, sizeof(*p));
}

static const char *static_group_name(const char *name)
{
    int nid;

    for (size_t i = 0; i < sizeof(curves) / sizeof(curves[0]); i++)
        if (strcmp(curves[i].name, name) == 0)
            return curves[i].name;
    nid = OBJ_sn2nid(name);
    if (nid == NID_undef)
        nid = OBJ_txt2nid(name);
    return nid != NID_undef ? OBJ_nid2sn(nid) : NULL;
}

/* Fills *ret from an EVP_PKEY (type, bits, group, SPKI DER). */
static int pub_from_pkey(EVP_PKEY *pk, tok_pub_t *ret)
{
    tok_pub_t p = { 0 };
    unsigned char *der = NULL;
    char group[80];
    int len, r = TOK_ERR_GENERAL;

    p.group = "";
    if (EVP_PKEY_is_a(pk, "RSA") || EVP_PKEY_is_a(pk, "RSA-PSS")) {
        p.type = TOK_KEY_RSA;
        p.bits = (unsigned)EVP_PKEY_get_bits(pk);
    } else if (EVP_PKEY_is_a(pk, "EC")) {
        p.type = TOK_KEY_EC;
        p.bits = (unsigned)EVP_PKEY_get_bits(pk);
        if (!EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                            NULL))
            goto out;
        p.group = static_group_name(group);
        if (p.group == NULL)
            goto out;
    } else if (EVP_PKEY_is_a(pk, "ED25519")) {
        p.type = TOK_KEY_ED25519;
        p.bits = 255;
    } else if (EVP_PKEY_is_a(pk, "ED448")) {
        p.type = TOK_KEY_ED448;
        p.bits = 448;
    } else {
        goto out;
    }
    len = i2d_PUBKEY(pk, &der);
    if (len <= 0)
        goto out;
    p.spki = malloc((size_t)len);
    if (p.spki == NULL) {
        r = TOK_ERR_NO_MEMORY;
        goto out;
    }
    memcpy(p.spki, der, (size_t)len);
    p.spki_len = (size_t)len;
    *ret = p;
    r = TOK_OK;
out:
    OPENSSL_free(der);
    return r;
}

static int pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld, EVP_PKEY **ret)
{
    EVP_PKEY_CTX *pctx = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY *pk = NULL;
    int r = TOK_ERR_GENERAL;

    params = OSSL_PARAM_BLD_to_param(bld);
    pctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (params == NULL || pctx == NULL)
        goto out;
    if (EVP_PKEY_fromdata_init(pctx) <= 0 ||
        EVP_PKEY_fromdata(pctx, &pk, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        goto out;
    *ret = pk;
    r = TOK_OK;
out:
    EVP_PKEY_CTX_free(pctx);
    OSSL_PARAM_free(params);
    return r;
}

int tok_pub_from_rsa(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len, tok_pub_t *ret)
{
    OSSL_PARAM_BLD *bld = NULL;
    BIGNUM *bn = NULL, *be = NULL;
    EVP_PKEY *pk = NULL;
    int r = TOK_ERR_GENERAL;

    if (n == NULL || e == NULL)
        return TOK_ERR_ARGS;
    while (n_len > 0 && n[0] == 0) {
        n++;
        n_len--;
    }
    while (e_len > 0 && e[0] == 0) {
        e++;
        e_len--;
    }
    /* A modulus is odd and of a sane size, an exponent odd and above 1:
     * anything else is a module's garbage, not a key. */
    if (n_len < TOK_MIN_MODULUS || n_len > TOK_MAX_MODULUS || !(n[n_len - 1] & 1) ||
        e_len == 0 || e_len > TOK_MAX_EXPONENT || !(e[e_len - 1] & 1) ||
        (e_len == 1 && e[0] == 1))
        return TOK_ERR_ARGS;
    bn = BN_bin2bn(n, (int)n_len, NULL);
    be = BN_bin2bn(e, (int)e_len, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (bn == NULL || be == NULL || bld == NULL)
        goto out;
    if (!OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
        goto out;
    r = pkey_fromdata("RSA", bld, &pk);
    if (r == TOK_OK)
        r = pub_from_pkey(pk, ret);
out:
    EVP_PKEY_free(pk);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    return r;
}

/* Strips a DER OCTET STRING wrapper if the whole buffer is exactly one. */
static bool unwrap_octet_string(const uint8_t *p, size_t n, const uint8_t **ret, size_t *ret_len)
{
    buf_reader_t r, os;

    buf_reader_init(&r, p, n);
    if (buf_get_der(&r, BUF_DER_OCTET_STRING, TOK_MAX_EC_POINT, &os) != BUF_OK ||
        buf_expect_end(&r) != BUF_OK)
        return false;
    buf_rest(&os, ret, ret_len);
    return true;
}

/* Is der[0..len) exactly one DER SEQUENCE of at most max bytes of contents
 * (a certificate, an SPKI)? Checked before OpenSSL sees the bytes, so
 * trailing garbage and absurd lengths are refused up front. */
static bool one_sequence(const uint8_t *der, size_t len, size_t max)
{
    buf_reader_t r, seq;

    buf_reader_init(&r, der, len);
    return buf_get_der(&r, BUF_DER_SEQUENCE, max, &seq) == BUF_OK && buf_expect_end(&r) == BUF_OK;
}

static int pub_from_edwards(const char *type, size_t key_len, const uint8_t *point, size_t n,
                            tok_pub_t *ret)
{
    const uint8_t *raw = point;
    size_t raw_len = n;
    EVP_PKEY *pk;
    int r;

    if (n != key_len && !unwrap_octet_string(point, n, &raw, &raw_len))
        return TOK_ERR_ARGS;
    if (raw_len != key_len)
        return TOK_ERR_ARGS;
    pk = EVP_PKEY_new_raw_public_key_ex(NULL, type, NULL, raw, raw_len);
    if (pk == NULL)
        return TOK_ERR_GENERAL;
    r = pub_from_pkey(pk, ret);
    EVP_PKEY_free(pk);
    return r;
}

static int pub_from_weierstrass(const uint8_t *params, size_t params_len, const uint8_t *point,
                                size_t n, tok_pub_t *ret)
{
    const unsigned char *pp = params;
    ASN1_OBJECT *obj = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY *pk = NULL;
    const char *group = NULL;
    const uint8_t *raw = point;
    size_t raw_len = n, fb = 0;
    buf_reader_t rd, oid;
    int nid, r = TOK_ERR_ARGS;

    /* namedCurve: one OBJECT IDENTIFIER and nothing else (explicit
     * parameters and implicitlyCA are not supported) */
    buf_reader_init(&rd, params, params_len);
    if (buf_get_der(&rd, BUF_DER_OID, 64, &oid) != BUF_OK || buf_expect_end(&rd) != BUF_OK ||
        buf_left(&oid) == 0)
        goto out;
    obj = d2i_ASN1_OBJECT(NULL, &pp, (long)params_len);
    if (obj == NULL || pp != params + params_len)
        goto out;
    nid = OBJ_obj2nid(obj);
    for (size_t i = 0; i < sizeof(curves) / sizeof(curves[0]); i++)
        if (curves[i].nid == nid) {
            group = curves[i].name;
            fb = (curves[i].bits + 7) / 8;
        }
    if (group == NULL && nid != NID_undef)
        group = OBJ_nid2sn(nid);
    if (group == NULL)
        goto out;
    /* CKA_EC_POINT is normally an OCTET STRING around the point; some tokens
     * store the bare point. A bare point has one of two exact lengths. */
    if (fb > 0 && ((n == 1 + 2 * fb && point[0] == 0x04) ||
                   (n == 1 + fb && (point[0] == 0x02 || point[0] == 0x03)))) {
        raw = point;
        raw_len = n;
    } else if (!unwrap_octet_string(point, n, &raw, &raw_len)) {
        raw = point;
        raw_len = n;
    }
    bld = OSSL_PARAM_BLD_new();
    if (bld == NULL) {
        r = TOK_ERR_NO_MEMORY;
        goto out;
    }
    if (!OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, raw, raw_len)) {
        r = TOK_ERR_NO_MEMORY;
        goto out;
    }
    r = pkey_fromdata("EC", bld, &pk);
    if (r == TOK_OK)
        r = pub_from_pkey(pk, ret);
out:
    EVP_PKEY_free(pk);
    OSSL_PARAM_BLD_free(bld);
    ASN1_OBJECT_free(obj);
    return r;
}

int tok_pub_from_ec(CK_KEY_TYPE kt, const uint8_t *params, size_t params_len, const uint8_t *point,
                    size_t point_len, tok_pub_t *ret)
{
    if (params == NULL || point == NULL || params_len == 0 || point_len == 0 ||
        params_len > TOK_MAX_EC_PARAMS || point_len > TOK_MAX_EC_POINT)
        return TOK_ERR_ARGS;
    if (SAME(params, params_len, oid_ed25519) || SAME(params, params_len, str_ed25519) ||
        SAME(params, params_len, oid_ed25519_gnu))
        return pub_from_edwards("ED25519", 32, point, point_len, ret);
    if (SAME(params, params_len, oid_ed448) || SAME(params, params_len, str_ed448))
        return pub_from_edwards("ED448", 57, point, point_len, ret);
    if (kt != CKK_EC)
        return TOK_ERR_ARGS;
    return pub_from_weierstrass(params, params_len, point, point_len, ret);
}

int tok_pub_from_spki(const uint8_t *der, size_t len, tok_pub_t *ret)
{
    const unsigned char *p = der;
    EVP_PKEY *pk;
    int r;

    if (der == NULL || len == 0 || len > TOK_MAX_SPKI || !one_sequence(der, len, TOK_MAX_SPKI))
        return TOK_ERR_ARGS;
    pk = d2i_PUBKEY(NULL, &p, (long)len);
    if (pk == NULL || p != der + len) {
        EVP_PKEY_free(pk);
        return TOK_ERR_ARGS;
    }
    r = pub_from_pkey(pk, ret);
    EVP_PKEY_free(pk);
    return r;
}

int tok_pub_from_cert(const uint8_t *der, size_t len, tok_pub_t *ret)
{
    const unsigned char *p = der;
    X509 *x;
    EVP_PKEY *pk;
    int r = TOK_ERR_ARGS;

    if (der == NULL || len == 0 || len > TOK_MAX_CERT || !one_sequence(der, len, TOK_MAX_CERT))
        return TOK_ERR_ARGS;
    x = d2i_X509(NULL, &p, (long)len);
    if (x == NULL || p != der + len) {
        X509_free(x);
        return TOK_ERR_ARGS;
    }
    pk = X509_get0_pubkey(x);
    if (pk != NULL)
        r = pub_from_pkey(pk, ret);
    X509_free(x);
    return r;
}
