/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Signature parameters: pad-mode and saltlen parsing, PSS salt arithmetic,
 * digest names on the wire and hand-encoded DER AlgorithmIdentifiers.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/rsa.h>

#include "provider.h"

int prov_parse_pad_mode(const OSSL_PARAM *p, int *ret_pad)
{
    static const struct {
        const char *name;
        int pad;
    } names[] = {
        { OSSL_PKEY_RSA_PAD_MODE_PKCSV15, RSA_PKCS1_PADDING },
        { OSSL_PKEY_RSA_PAD_MODE_PSS, RSA_PKCS1_PSS_PADDING },
        { OSSL_PKEY_RSA_PAD_MODE_NONE, RSA_NO_PADDING },
        { OSSL_PKEY_RSA_PAD_MODE_X931, RSA_X931_PADDING },
    };
    int pad = 0;

    switch (p->data_type) {
    case OSSL_PARAM_INTEGER:
    case OSSL_PARAM_UNSIGNED_INTEGER:
        if (!OSSL_PARAM_get_int(p, &pad))
            return 0;
        break;
    case OSSL_PARAM_UTF8_STRING:
        if (p->data == NULL)
            return 0;
        pad = -1;
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            if (strcmp(p->data, names[i].name) == 0)
                pad = names[i].pad;
        }
        if (pad == -1)
            return 0;
        break;
    default:
        return 0;
    }
    *ret_pad = pad;
    return 1;
}

int prov_parse_saltlen(const OSSL_PARAM *p, int *ret_saltlen)
{
    int saltlen = 0;

    switch (p->data_type) {
    case OSSL_PARAM_INTEGER:
    case OSSL_PARAM_UNSIGNED_INTEGER:
        if (!OSSL_PARAM_get_int(p, &saltlen))
            return 0;
        break;
    case OSSL_PARAM_UTF8_STRING: {
        const char *s = p->data;
        char *end = NULL;
        long v;

        if (s == NULL)
            return 0;
        if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST) == 0) {
            saltlen = PROV_SALTLEN_DIGEST;
            break;
        }
        if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_MAX) == 0) {
            saltlen = PROV_SALTLEN_MAX;
            break;
        }
        if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO) == 0) {
            saltlen = PROV_SALTLEN_AUTO;
            break;
        }
        v = strtol(s, &end, 10);
        if (end == s || *end != '\0' || v < 0 || v > 65535)
            return 0;
        saltlen = (int)v;
        break;
    }
    default:
        return 0;
    }
    if (saltlen < PROV_SALTLEN_AUTO)
        return 0;
    *ret_saltlen = saltlen;
    return 1;
}

int prov_pss_salt_bytes(int saltlen, int mod_bits, int md_len)
{
    /* RFC 8017 9.1.1: emLen = ceil((modBits - 1) / 8); the salt may use
     * at most emLen - hLen - 2 bytes. */
    int em_len = (mod_bits - 1 + 7) / 8;
    int max = em_len - md_len - 2;
    int salt;

    if (mod_bits <= 0 || md_len <= 0 || max < 0)
        return -1;
    switch (saltlen) {
    case PROV_SALTLEN_DIGEST:
        salt = md_len;
        break;
    case PROV_SALTLEN_MAX:
    case PROV_SALTLEN_AUTO:
        salt = max;
        break;
    default:
        salt = saltlen;
        break;
    }
    if (salt < 0 || salt > max)
        return -1;
    return salt;
}

/* --- digests --- */

typedef struct md_entry {
    const char *ossl_name;  /* as EVP_MD_is_a knows it */
    const char *wire;       /* as the agent knows it */
    uint8_t rsa_oid_last;   /* last arc of <hash>WithRSAEncryption */
    uint8_t ecdsa_oid[8];   /* ecdsa-with-<hash>, DER contents */
    uint8_t ecdsa_oid_len;
    uint8_t oid[9];         /* the hash's own OID, DER contents */
    uint8_t oid_len;
} md_entry_t;

static const md_entry_t md_table[] = {
    { "SHA1", "sha1", 0x05, { 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01 }, 7,
      { 0x2b, 0x0e, 0x03, 0x02, 0x1a }, 5 },
    { "SHA2-224", "sha224", 0x0e, { 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x01 }, 8,
      { 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04 }, 9 },
    { "SHA2-256", "sha256", 0x0b, { 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02 }, 8,
      { 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01 }, 9 },
    { "SHA2-384", "sha384", 0x0c, { 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03 }, 8,
      { 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02 }, 9 },
    { "SHA2-512", "sha512", 0x0d, { 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04 }, 8,
      { 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03 }, 9 },
};

static const md_entry_t *md_lookup(const EVP_MD *md)
{
    if (md == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof(md_table) / sizeof(md_table[0]); i++) {
        if (EVP_MD_is_a(md, md_table[i].ossl_name))
            return &md_table[i];
    }
    return NULL;
}

bool prov_md_is_md5_sha1(const EVP_MD *md)
{
    return md != NULL && EVP_MD_is_a(md, "MD5-SHA1") && EVP_MD_get_size(md) == 36;
}

const char *prov_md_wire_name(const EVP_MD *md)
{
    const md_entry_t *e = md_lookup(md);

    return e != NULL ? e->wire : NULL;
}

/* --- a tiny DER writer, enough for AlgorithmIdentifiers --- */

typedef struct der {
    uint8_t b[160];
    size_t n;
    bool overflow;
} der_t;

static void der_put(der_t *d, const uint8_t *p, size_t n)
{
    if (d->overflow || n > sizeof(d->b) - d->n) {
        d->overflow = true;
        return;
    }
    memcpy(d->b + d->n, p, n);
    d->n += n;
}

static void der_tlv(der_t *d, uint8_t tag, const uint8_t *content, size_t len)
{
    uint8_t hdr[4];
    size_t h = 0;

    hdr[h++] = tag;
    if (len < 0x80) {
        hdr[h++] = (uint8_t)len;
    } else if (len < 0x100) {
        hdr[h++] = 0x81;
        hdr[h++] = (uint8_t)len;
    } else {
        d->overflow = true; /* never needed here */
        return;
    }
    der_put(d, hdr, h);
    der_put(d, content, len);
}

static void der_wrap(der_t *d, uint8_t tag, const der_t *inner)
{
    if (inner->overflow) {
        d->overflow = true;
        return;
    }
    der_tlv(d, tag, inner->b, inner->n);
}

#define DER_SEQUENCE 0x30
#define DER_OID 0x06
#define DER_NULL 0x05
#define DER_INTEGER 0x02
#define DER_CTX(n) (0xa0 | (n))

static const uint8_t oid_pkcs1[] = { 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01 };
static const uint8_t der_null[] = { DER_NULL, 0x00 };

/* AlgorithmIdentifier { hash OID, NULL }: how OpenSSL writes hashes inside
 * RSASSA-PSS-params. */
static void der_hash_aid(der_t *d, const md_entry_t *e)
{
    der_t seq = { 0 };

    der_tlv(&seq, DER_OID, e->oid, e->oid_len);
    der_put(&seq, der_null, sizeof(der_null));
    der_wrap(d, DER_SEQUENCE, &seq);
}

static void der_pkcs1_oid(der_t *d, uint8_t last)
{
    uint8_t oid[sizeof(oid_pkcs1) + 1];

    memcpy(oid, oid_pkcs1, sizeof(oid_pkcs1));
    oid[sizeof(oid_pkcs1)] = last;
    der_tlv(d, DER_OID, oid, sizeof(oid));
}

/* RSASSA-PSS-params (RFC 8017 A.2.3), defaults omitted as DER requires. */
static void der_pss_params(der_t *d, const md_entry_t *hash, const md_entry_t *mgf1,
                           int salt)
{
    der_t params = { 0 };

    if (strcmp(hash->wire, "sha1") != 0) {
        der_t h = { 0 };

        der_hash_aid(&h, hash);
        der_wrap(&params, DER_CTX(0), &h);
    }
    if (strcmp(mgf1->wire, "sha1") != 0) {
        der_t mgf = { 0 }, wrapped = { 0 };

        der_pkcs1_oid(&mgf, 0x08); /* id-mgf1 */
        der_hash_aid(&mgf, mgf1);
        der_wrap(&wrapped, DER_SEQUENCE, &mgf);
        der_wrap(&params, DER_CTX(1), &wrapped);
    }
    if (salt != 20) {
        der_t v = { 0 };
        uint8_t be[4];
        size_t n = 0;
        unsigned u = (unsigned)salt;

        /* minimal big-endian, with a leading zero if the top bit is set */
        for (int shift = 24; shift >= 0; shift -= 8) {
            uint8_t byte = (uint8_t)(u >> shift);

            if (n == 0 && byte == 0 && shift != 0)
                continue;
            if (n == 0 && (byte & 0x80))
                be[n++] = 0;
            be[n++] = byte;
        }
        der_tlv(&v, DER_INTEGER, be, n);
        der_wrap(&params, DER_CTX(2), &v);
    }
    der_wrap(d, DER_SEQUENCE, &params);
}

size_t prov_algorithm_id(prov_sig_scheme_t scheme, const EVP_MD *md, const EVP_MD *mgf1,
                         int salt_bytes, uint8_t *buf, size_t cap)
{
    static const uint8_t oid_ed25519[] = { 0x2b, 0x65, 0x70 };
    static const uint8_t oid_ed448[] = { 0x2b, 0x65, 0x71 };
    const md_entry_t *e = md_lookup(md);
    der_t aid = { 0 }, out = { 0 };

    switch (scheme) {
    case PROV_SIG_RSA_PKCS1:
        if (e == NULL)
            return 0;
        der_pkcs1_oid(&aid, e->rsa_oid_last);
        der_put(&aid, der_null, sizeof(der_null));
        break;
    case PROV_SIG_RSA_PSS: {
        const md_entry_t *m = mgf1 != NULL ? md_lookup(mgf1) : e;

        if (e == NULL || m == NULL || salt_bytes < 0)
            return 0;
        der_pkcs1_oid(&aid, 0x0a); /* id-RSASSA-PSS */
        der_pss_params(&aid, e, m, salt_bytes);
        break;
    }
    case PROV_SIG_ECDSA:
        if (e == NULL)
            return 0;
        der_tlv(&aid, DER_OID, e->ecdsa_oid, e->ecdsa_oid_len);
        break;
    case PROV_SIG_ED25519:
        der_tlv(&aid, DER_OID, oid_ed25519, sizeof(oid_ed25519));
        break;
    case PROV_SIG_ED448:
        der_tlv(&aid, DER_OID, oid_ed448, sizeof(oid_ed448));
        break;
    default:
        return 0;
    }
    der_wrap(&out, DER_SEQUENCE, &aid);
    if (out.overflow || out.n > cap)
        return 0;
    memcpy(buf, out.b, out.n);
    return out.n;
}
