/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Mechanisms: what each PKCS#11 signature mechanism asks of the agent
 * (one Sign per signature), their parameters, the ECDSA signature format
 * and the mapping of agent errors to CK_RV.
 */
#include <string.h>

#include "buf.h"
#include "module.h"

static const mod_mech_t MECHS[] = {
    {CKM_RSA_PKCS, "CKM_RSA_PKCS", BUS_SIG_RSA_PKCS1, NULL, BUS_KEY_CAN_RSA_PKCS1},
    {CKM_SHA1_RSA_PKCS, "CKM_SHA1_RSA_PKCS", BUS_SIG_RSA_PKCS1, "sha1", BUS_KEY_CAN_RSA_PKCS1},
    {CKM_SHA224_RSA_PKCS, "CKM_SHA224_RSA_PKCS", BUS_SIG_RSA_PKCS1, "sha224", BUS_KEY_CAN_RSA_PKCS1},
    {CKM_SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS", BUS_SIG_RSA_PKCS1, "sha256", BUS_KEY_CAN_RSA_PKCS1},
    {CKM_SHA384_RSA_PKCS, "CKM_SHA384_RSA_PKCS", BUS_SIG_RSA_PKCS1, "sha384", BUS_KEY_CAN_RSA_PKCS1},
    {CKM_SHA512_RSA_PKCS, "CKM_SHA512_RSA_PKCS", BUS_SIG_RSA_PKCS1, "sha512", BUS_KEY_CAN_RSA_PKCS1},
    {CKM_RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS", BUS_SIG_RSA_PSS, NULL, BUS_KEY_CAN_RSA_PSS},
    {CKM_SHA1_RSA_PKCS_PSS, "CKM_SHA1_RSA_PKCS_PSS", BUS_SIG_RSA_PSS, "sha1", BUS_KEY_CAN_RSA_PSS},
    {CKM_SHA224_RSA_PKCS_PSS, "CKM_SHA224_RSA_PKCS_PSS", BUS_SIG_RSA_PSS, "sha224", BUS_KEY_CAN_RSA_PSS},
    {CKM_SHA256_RSA_PKCS_PSS, "CKM_SHA256_RSA_PKCS_PSS", BUS_SIG_RSA_PSS, "sha256", BUS_KEY_CAN_RSA_PSS},
    {CKM_SHA384_RSA_PKCS_PSS, "CKM_SHA384_RSA_PKCS_PSS", BUS_SIG_RSA_PSS, "sha384", BUS_KEY_CAN_RSA_PSS},
    {CKM_SHA512_RSA_PKCS_PSS, "CKM_SHA512_RSA_PKCS_PSS", BUS_SIG_RSA_PSS, "sha512", BUS_KEY_CAN_RSA_PSS},
    {CKM_ECDSA, "CKM_ECDSA", BUS_SIG_ECDSA, NULL, BUS_KEY_CAN_ECDSA},
    {CKM_ECDSA_SHA1, "CKM_ECDSA_SHA1", BUS_SIG_ECDSA, "sha1", BUS_KEY_CAN_ECDSA},
    {CKM_ECDSA_SHA224, "CKM_ECDSA_SHA224", BUS_SIG_ECDSA, "sha224", BUS_KEY_CAN_ECDSA},
    {CKM_ECDSA_SHA256, "CKM_ECDSA_SHA256", BUS_SIG_ECDSA, "sha256", BUS_KEY_CAN_ECDSA},
    {CKM_ECDSA_SHA384, "CKM_ECDSA_SHA384", BUS_SIG_ECDSA, "sha384", BUS_KEY_CAN_ECDSA},
    {CKM_ECDSA_SHA512, "CKM_ECDSA_SHA512", BUS_SIG_ECDSA, "sha512", BUS_KEY_CAN_ECDSA},
    {CKM_EDDSA, "CKM_EDDSA", BUS_SIG_EDDSA, NULL, BUS_KEY_CAN_EDDSA},
};

const mod_mech_t *mod_mech_find(CK_MECHANISM_TYPE type)
{
    for (size_t i = 0; i < sizeof(MECHS) / sizeof(MECHS[0]); i++)
        if (MECHS[i].type == type)
            return &MECHS[i];
    return NULL;
}

const mod_mech_t *mod_mech_all(size_t *ret_n)
{
    *ret_n = sizeof(MECHS) / sizeof(MECHS[0]);
    return MECHS;
}

bool mod_mech_key_ok(const mod_mech_t *m, bus_key_type_t type, uint32_t flags)
{
    bool type_ok;

    switch (m->alg) {
    case BUS_SIG_RSA_PKCS1:
    case BUS_SIG_RSA_PSS:
        type_ok = type == BUS_KEY_RSA;
        break;
    case BUS_SIG_ECDSA:
        type_ok = type == BUS_KEY_EC;
        break;
    case BUS_SIG_EDDSA:
        type_ok = type == BUS_KEY_ED25519 || type == BUS_KEY_ED448;
        break;
    default:
        type_ok = false;
    }
    return type_ok && (flags & m->need) != 0;
}

static const struct {
    const char *name;
    size_t len;
    CK_MECHANISM_TYPE ckm;
    CK_RSA_PKCS_MGF_TYPE mgf;
} HASHES[] = {
    {"sha1", 20, CKM_SHA_1, CKG_MGF1_SHA1},
    {"sha224", 28, CKM_SHA224, CKG_MGF1_SHA224},
    {"sha256", 32, CKM_SHA256, CKG_MGF1_SHA256},
    {"sha384", 48, CKM_SHA384, CKG_MGF1_SHA384},
    {"sha512", 64, CKM_SHA512, CKG_MGF1_SHA512},
};
#define N_HASHES (sizeof(HASHES) / sizeof(HASHES[0]))

size_t mod_hash_len(const char *hash)
{
    for (size_t i = 0; hash && i < N_HASHES; i++)
        if (strcmp(HASHES[i].name, hash) == 0)
            return HASHES[i].len;
    return 0;
}

const char *mod_hash_from_ckm(CK_MECHANISM_TYPE m)
{
    for (size_t i = 0; i < N_HASHES; i++)
        if (HASHES[i].ckm == m)
            return HASHES[i].name;
    return NULL;
}

const char *mod_hash_from_mgf(CK_RSA_PKCS_MGF_TYPE g)
{
    for (size_t i = 0; i < N_HASHES; i++)
        if (HASHES[i].mgf == g)
            return HASHES[i].name;
    return NULL;
}

static void set_name(char dst[16], const char *src)
{
    size_t n = src ? strlen(src) : 0;

    memset(dst, 0, 16);
    if (n > 0 && n < 16)
        memcpy(dst, src, n);
}

CK_RV mod_mech_params(const mod_mech_t *m, const CK_MECHANISM *mech, bus_sign_params_t *ret)
{
    memset(ret, 0, sizeof(*ret));
    ret->alg = m->alg;
    set_name(ret->hash, m->hash);
    switch (m->alg) {
    case BUS_SIG_RSA_PSS: {
        const CK_RSA_PKCS_PSS_PARAMS *pss = mech->pParameter;
        const char *h, *mgf;

        if (pss == NULL || mech->ulParameterLen != sizeof(*pss))
            return CKR_MECHANISM_PARAM_INVALID;
        h = mod_hash_from_ckm(pss->hashAlg);
        mgf = mod_hash_from_mgf(pss->mgf);
        /* the hash-and-sign forms hash with their own hash: hashAlg must
         * say the same */
        if (h == NULL || mgf == NULL || (m->hash != NULL && strcmp(h, m->hash) != 0) ||
            pss->sLen > 4096)
            return CKR_MECHANISM_PARAM_INVALID;
        set_name(ret->hash, h);
        set_name(ret->mgf1_hash, mgf);
        ret->salt_len = (int32_t)pss->sLen;
        return CKR_OK;
    }
    case BUS_SIG_EDDSA: {
        /* CK_EDDSA_PARAMS { CK_BBOOL phFlag; CK_ULONG ulContextDataLen;
         * CK_BYTE_PTR pContextData } (3.0): only pure EdDSA without a
         * context is what the agent signs */
        struct {
            CK_BBOOL phFlag;
            CK_ULONG ulContextDataLen;
            CK_BYTE_PTR pContextData;
        } const *ed = mech->pParameter;

        if (ed == NULL && mech->ulParameterLen == 0)
            return CKR_OK;
        if (ed == NULL || mech->ulParameterLen != sizeof(*ed) || ed->phFlag ||
            ed->ulContextDataLen != 0)
            return CKR_MECHANISM_PARAM_INVALID;
        return CKR_OK;
    }
    default:
        if (mech->pParameter != NULL || mech->ulParameterLen != 0)
            return CKR_MECHANISM_PARAM_INVALID;
        return CKR_OK;
    }
}

CK_RV mod_ecdsa_der_to_raw(const uint8_t *der, size_t len, size_t half, uint8_t *out)
{
    buf_reader_t r, seq, num[2];

    buf_reader_init(&r, der, len);
    buf_get_der(&r, BUF_DER_SEQUENCE, 1024, &seq);
    buf_expect_end(&r);
    buf_get_der(&seq, BUF_DER_INTEGER, 1024, &num[0]);
    buf_get_der(&seq, BUF_DER_INTEGER, 1024, &num[1]);
    buf_expect_end(&seq);
    if (buf_error(&r) || buf_error(&seq) || half == 0)
        return CKR_DEVICE_ERROR;
    for (int i = 0; i < 2; i++) {
        const uint8_t *p;
        size_t n;

        buf_rest(&num[i], &p, &n);
        if (n == 0 || (p[0] & 0x80)) /* empty or negative */
            return CKR_DEVICE_ERROR;
        while (n > 0 && p[0] == 0) {
            p++;
            n--;
        }
        if (n > half)
            return CKR_DEVICE_ERROR;
        memset(out + i * half, 0, half - n);
        memcpy(out + i * half + (half - n), p, n);
    }
    return CKR_OK;
}

/* One table: agent error -> CK_RV (README, "PKCS#11 module", says why). */
CK_RV mod_rv_from_bus(int e)
{
    switch (e) {
    case BUS_OK:
        return CKR_OK;
    case BUS_ERR_NO_SUCH_KEY:
        return CKR_KEY_HANDLE_INVALID;
    case BUS_ERR_LOCKED: /* the agent has no PIN and could not get one */
        return CKR_USER_NOT_LOGGED_IN;
    case BUS_ERR_PIN_INCORRECT:
        return CKR_PIN_INCORRECT;
    case BUS_ERR_PIN_LOCKED:
        return CKR_PIN_LOCKED;
    case BUS_ERR_TOKEN_REMOVED:
        return CKR_DEVICE_REMOVED;
    case BUS_ERR_DENIED: /* the agent's policy or the person said no */
        return CKR_FUNCTION_REJECTED;
    case BUS_ERR_UNSUPPORTED:
        return CKR_MECHANISM_INVALID;
    case BUS_ERR_INVALID_ARGS:
        return CKR_DATA_LEN_RANGE;
    case BUS_ERR_NO_MEMORY:
        return CKR_DEVICE_MEMORY;
    case BUS_ERR_DEVICE:
    case BUS_ERR_TIMEOUT:
    case BUS_ERR_NOT_RUNNING:
    case BUS_ERR_DISCONNECTED:
    case BUS_ERR_PROTOCOL:
        return CKR_DEVICE_ERROR;
    case BUS_ERR_BUSY:
    case BUS_ERR_FAILED:
    default:
        return CKR_FUNCTION_FAILED;
    }
}
