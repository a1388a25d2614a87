/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The sizes of an agent key read straight from its SubjectPublicKeyInfo,
 * without decoding it into an EVP_PKEY: loading a key then needs no
 * library context, decoders or key management of the provider's own (in
 * a fresh process their first use costs about a millisecond, more than
 * the whole signature), and a process that only signs never decodes the
 * public key at all (keymgmt.c decodes it on first use).
 *
 * Only shapes whose figures are certain are answered: RSA (rsaEncryption)
 * moduli of 2048, 3072 and 4096 bits, EC on P-256, P-384 and P-521 (named),
 * Ed25519 and Ed448. Everything else (other sizes and curves, explicit
 * parameters, RSA-PSS) is decoded at load as before. The SPKI is hostile
 * input: read with the bounded DER reader (common/buf.h). Its structure is
 * checked here, the key in it (an EC point on its curve) only when it is
 * decoded: a token whose public key is invalid then loads, signs, and
 * fails with "cannot decode the public key" where the public key is
 * needed (certificate matching, export).
 */
#include "config.h"

#include <string.h>

#include "buf.h"
#include "provider.h"

static const uint8_t oid_rsa[] = { 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01 };
static const uint8_t oid_ec[] = { 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01 };
static const uint8_t oid_ed25519[] = { 0x2b, 0x65, 0x70 };
static const uint8_t oid_ed448[] = { 0x2b, 0x65, 0x71 };

/* Named curves: the OID of the parameters, OpenSSL's group name and the
 * figures EVP_PKEY_get_bits/get_security_bits/get_size give. */
static const struct {
    uint8_t oid[8];
    size_t oid_len;
    const char *group;
    int bits, security_bits, max_size, point_len;
} curves[] = {
    { { 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 }, 8, "prime256v1", 256, 128, 72, 65 },
    { { 0x2b, 0x81, 0x04, 0x00, 0x22 }, 5, "secp384r1", 384, 192, 104, 97 },
    { { 0x2b, 0x81, 0x04, 0x00, 0x23 }, 5, "secp521r1", 521, 256, 139, 133 },
};

static bool oid_is(const buf_reader_t *oid, const uint8_t *want, size_t want_len)
{
    const uint8_t *p;
    size_t n;

    buf_rest(oid, &p, &n);
    return p != NULL && n == want_len && memcmp(p, want, n) == 0;
}

/* RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }:
 * the modulus's bits, or 0. */
static int rsa_modulus_bits(buf_reader_t *key)
{
    buf_reader_t seq, n, e;
    const uint8_t *p;
    size_t len;
    int bits;

    if (buf_get_der(key, BUF_DER_SEQUENCE, 4096, &seq) != BUF_OK || buf_expect_end(key) != BUF_OK
        || buf_get_der(&seq, BUF_DER_INTEGER, 4096, &n) != BUF_OK
        || buf_get_der(&seq, BUF_DER_INTEGER, 4096, &e) != BUF_OK
        || buf_expect_end(&seq) != BUF_OK)
        return 0;
    buf_rest(&n, &p, &len);
    if (p == NULL || len == 0 || (p[0] & 0x80))
        return 0; /* empty or negative */
    if (p[0] == 0) {
        /* minimal: one zero byte only before a set top bit */
        if (len < 2 || !(p[1] & 0x80))
            return 0;
        p++;
        len--;
    }
    if (len > 4096)
        return 0;
    bits = (int)(len - 1) * 8;
    for (uint8_t top = p[0]; top; top >>= 1)
        bits++;
    buf_rest(&e, &p, &len);
    if (p == NULL || len == 0 || (p[0] & 0x80) || (len == 1 && p[0] < 3))
        return 0;
    return bits;
}

int prov_spki_sizes(prov_key_kind_t kind, const uint8_t *spki, size_t spki_len,
                    prov_spki_sizes_t *ret)
{
    buf_reader_t r, top, alg, oid, params, key;
    const uint8_t *kp;
    size_t klen;
    uint8_t unused;

    memset(ret, 0, sizeof(*ret));
    buf_reader_init(&r, spki, spki_len);
    if (buf_get_der(&r, BUF_DER_SEQUENCE, spki_len, &top) != BUF_OK || buf_expect_end(&r) != BUF_OK
        || buf_get_der(&top, BUF_DER_SEQUENCE, 256, &alg) != BUF_OK
        || buf_get_der(&top, BUF_DER_BIT_STRING, spki_len, &key) != BUF_OK
        || buf_expect_end(&top) != BUF_OK || buf_get_der(&alg, BUF_DER_OID, 32, &oid) != BUF_OK
        || buf_get_u8(&key, &unused) != BUF_OK || unused != 0)
        return 0;
    switch (kind) {
    case PROV_KEY_RSA: {
        int bits;

        /* parameters: NULL */
        if (!oid_is(&oid, oid_rsa, sizeof(oid_rsa))
            || buf_get_der(&alg, BUF_DER_NULL, 0, &params) != BUF_OK
            || buf_expect_end(&alg) != BUF_OK)
            return 0;
        bits = rsa_modulus_bits(&key);
        /* OpenSSL's canonical security bits (SP 800-56B rev 2) */
        if (bits == 2048)
            ret->security_bits = 112;
        else if (bits == 3072)
            ret->security_bits = 128;
        else if (bits == 4096)
            ret->security_bits = 152;
        else
            return 0;
        ret->bits = bits;
        ret->max_size = bits / 8;
        return 1;
    }
    case PROV_KEY_EC:
        if (!oid_is(&oid, oid_ec, sizeof(oid_ec))
            || buf_get_der(&alg, BUF_DER_OID, 32, &params) != BUF_OK
            || buf_expect_end(&alg) != BUF_OK)
            return 0;
        buf_rest(&key, &kp, &klen);
        for (size_t i = 0; i < sizeof(curves) / sizeof(curves[0]); i++) {
            /* an uncompressed point of the curve's size */
            if (!oid_is(&params, curves[i].oid, curves[i].oid_len) || kp == NULL
                || klen != (size_t)curves[i].point_len || kp[0] != 0x04)
                continue;
            ret->group = curves[i].group;
            ret->bits = curves[i].bits;
            ret->security_bits = curves[i].security_bits;
            ret->max_size = curves[i].max_size;
            return 1;
        }
        return 0;
    case PROV_KEY_ED25519:
    case PROV_KEY_ED448: {
        bool ed25519 = kind == PROV_KEY_ED25519;

        /* no parameters; the key is 32 or 57 bytes */
        if (!oid_is(&oid, ed25519 ? oid_ed25519 : oid_ed448,
                    ed25519 ? sizeof(oid_ed25519) : sizeof(oid_ed448))
            || buf_expect_end(&alg) != BUF_OK || buf_left(&key) != (ed25519 ? 32u : 57u))
            return 0;
        ret->bits = ed25519 ? 256 : 456;
        ret->security_bits = ed25519 ? 128 : 224;
        ret->max_size = ed25519 ? 64 : 114;
        return 1;
    }
    default:
        return 0;
    }
}
