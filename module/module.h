/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11agent-pkcs11.so: a PKCS#11 module that is a client of the agent.
 *
 * The pure parts (no I/O, no global state; unit-tested and fuzzed) are
 * declared here: objects built from the agent's key records (objects.c),
 * attribute lookup and template matching by PKCS#11 rules (objects.c), URI
 * attribute parsing (uri.c), mechanisms and signature formats (mech.c).
 * The exported symbols and the function list are in entry.c; C_Initialize,
 * the process-wide state and the listing of tokens in module.c; slots,
 * tokens, mechanisms and slot events in slots.c; sessions, objects and
 * signatures in session.c.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <p11-kit/pkcs11.h>

#include "bus.h"

/* Bounds on what the agent sends (a hostile or broken agent must not make
 * the module allocate without limit). */
#define MOD_MAX_SLOTS 64
#define MOD_MAX_KEYS 1024       /* per token */
#define MOD_MAX_ID 256          /* CKA_ID bytes */
#define MOD_MAX_ATTR 65536      /* bytes of one attribute value */
#define MOD_MAX_SIG_DATA (1u << 20) /* bytes accumulated by a multi-part raw operation */

/* ------------------------------------------------------------ uri.c */

/* The value of attribute `name` (path attributes of a pkcs11: URI, RFC
 * 7512) percent-decoded into out[0..cap): MOD_URI_OK with *ret_len, else
 * MOD_URI_ABSENT (no such attribute, or not a pkcs11: URI) or
 * MOD_URI_BAD (bad escape, longer than cap). Binary values (id) may hold
 * any byte, NUL included. */
#define MOD_URI_OK 0
#define MOD_URI_ABSENT 1
#define MOD_URI_BAD (-1)
int mod_uri_attr(const char *uri, const char *name, uint8_t *out, size_t cap, size_t *ret_len);

/* Copies src[0..n) into a blank-padded PKCS#11 field of `size` bytes, cut
 * at a UTF-8 character boundary. */
void mod_pad(CK_UTF8CHAR *field, size_t size, const uint8_t *src, size_t n);

/* ------------------------------------------------------------ objects.c */

typedef struct mod_attr {
    CK_ATTRIBUTE_TYPE type;
    uint8_t *value; /* NULL with len CK_UNAVAILABLE_INFORMATION: sensitive */
    CK_ULONG len;
} mod_attr_t;

typedef struct mod_object {
    CK_OBJECT_CLASS klass;
    mod_attr_t *attrs;
    size_t n;
} mod_object_t;

/* What one agent key becomes: a private key, its public key and, when the
 * agent has one, its certificate. Signing needs the rest. */
typedef struct mod_key {
    char *uri;              /* the agent's key URI (what Sign names) */
    bus_key_type_t type;
    uint32_t bits;
    uint32_t flags;         /* BUS_KEY_* */
    size_t sig_len;         /* bytes of a signature (PKCS#11 form) */
    mod_object_t obj[3];    /* MOD_OBJ_PRIVATE, MOD_OBJ_PUBLIC, MOD_OBJ_CERT */
    bool has_cert;
} mod_key_t;

#define MOD_OBJ_PRIVATE 0
#define MOD_OBJ_PUBLIC 1
#define MOD_OBJ_CERT 2

/* Builds the objects of one key record. 0 on success; -1 if the record is
 * unusable (errmsg says why: a static string); -2 out of memory. */
int mod_key_from_record(const bus_key_info_t *rec, mod_key_t *ret, const char **errmsg);
void mod_key_clear(mod_key_t *k);

/* C_GetAttributeValue on one object: fills the template by PKCS#11 rules
 * (each attribute on its own; the returned CK_RV is the one of the rules
 * for the whole call). */
CK_RV mod_object_get(const mod_object_t *o, CK_ATTRIBUTE *tmpl, CK_ULONG n);
/* Does the object match every attribute of the template (C_FindObjects)? */
bool mod_object_match(const mod_object_t *o, const CK_ATTRIBUTE *tmpl, CK_ULONG n);
/* The attribute of a type, or NULL. */
const mod_attr_t *mod_object_attr(const mod_object_t *o, CK_ATTRIBUTE_TYPE type);

/* ------------------------------------------------------------ mech.c */

/* What a PKCS#11 mechanism asks of the agent. */
typedef struct mod_mech {
    CK_MECHANISM_TYPE type;
    const char *name;       /* for messages */
    bus_sig_alg_t alg;
    const char *hash;       /* the module hashes with this ("sha256") or NULL */
    uint32_t need;          /* BUS_KEY_CAN_* the key must have */
} mod_mech_t;

/* The mechanism, or NULL if the module does not know it. */
const mod_mech_t *mod_mech_find(CK_MECHANISM_TYPE type);
/* Every mechanism, for C_GetMechanismList: *ret_n entries. */
const mod_mech_t *mod_mech_all(size_t *ret_n);
/* Does a key of this type with these flags sign with m? */
bool mod_mech_key_ok(const mod_mech_t *m, bus_key_type_t type, uint32_t flags);

/* Digest sizes by name ("sha256" -> 32), 0 if unknown. */
size_t mod_hash_len(const char *hash);
/* CKM_SHA256 -> "sha256" and CKG_MGF1_SHA256 -> "sha256"; NULL if unknown. */
const char *mod_hash_from_ckm(CK_MECHANISM_TYPE m);
const char *mod_hash_from_mgf(CK_RSA_PKCS_MGF_TYPE g);

/* Parameters of a mechanism into what the agent's Sign takes (PSS:
 * hashAlg, mgf, sLen; EdDSA: only pure Ed25519/Ed448 without context).
 * CKR_OK, CKR_MECHANISM_PARAM_INVALID. hash_len_in: the length data given
 * to the agent will have (PSS checks that it matches hashAlg; 0: unknown). */
CK_RV mod_mech_params(const mod_mech_t *m, const CK_MECHANISM *mech, bus_sign_params_t *ret);

/* An X9.62 DER ECDSA signature into r||s, each of `half` bytes. CKR_OK or
 * CKR_DEVICE_ERROR (malformed, or a number longer than half). */
CK_RV mod_ecdsa_der_to_raw(const uint8_t *der, size_t len, size_t half, uint8_t *out);

/* The size of a signature of this key (PKCS#11 form), 0 if unknown. */
size_t mod_sig_len(bus_key_type_t type, uint32_t bits);

/* Agent errors as CK_RV. */
CK_RV mod_rv_from_bus(int bus_err);
