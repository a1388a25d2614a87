/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The token layer: PKCS#11 modules (through p11-kit or explicit paths),
 * slots and tokens, key and certificate discovery, RFC 7512 URI matching
 * (P11KitUri), a session pool per token, login, mechanism mapping and C_Sign.
 *
 * Knows nothing of D-Bus, PINs sources or prompts: the agent decides where a
 * PIN comes from and calls tok_token_login().
 *
 * Threads: tok_sign() and tok_token_login() may be called from several
 * threads at once (each token has its own lock and session pool).
 * tok_ctx_scan() must not run concurrently with any other call on the same
 * context (the agent serialises it).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Status codes: TOK_OK or negative. One table maps CK_RV to these. */
typedef enum tok_status {
    TOK_OK = 0,
    TOK_ERR_GENERAL = -1,
    TOK_ERR_NO_MEMORY = -2,
    TOK_ERR_ARGS = -3,           /* bad input (e.g. digest length, URI) */
    TOK_ERR_NO_KEY = -4,         /* no such key / object gone */
    TOK_ERR_NOT_LOGGED_IN = -5,  /* CKR_USER_NOT_LOGGED_IN: needs a PIN */
    TOK_ERR_PIN_INCORRECT = -6,  /* CKR_PIN_INCORRECT / CKR_PIN_INVALID / LEN_RANGE */
    TOK_ERR_PIN_LOCKED = -7,     /* CKR_PIN_LOCKED */
    TOK_ERR_TOKEN_REMOVED = -8,  /* CKR_TOKEN_NOT_PRESENT, DEVICE_REMOVED, SESSION_* after removal */
    TOK_ERR_MECHANISM = -9,      /* the token lacks the mechanism or key can't do it */
    TOK_ERR_DEVICE = -10,        /* CKR_DEVICE_ERROR, DEVICE_MEMORY, FUNCTION_FAILED, ... */
    TOK_ERR_MODULE = -11,        /* a module failed to load or initialise */
    TOK_ERR_BUSY = -12,          /* no session available within the wait */
    TOK_ERR_AUTH_REQUIRED = -13, /* CKA_ALWAYS_AUTHENTICATE key signed without tok_auth_t */
} tok_status_t;

/* "PIN incorrect", "token removed", ... (static strings). */
const char *tok_strerror(int status);
/* Maps a CK_RV (as unsigned long) to a tok_status_t. */
int tok_status_from_rv(unsigned long rv);

typedef enum tok_key_type {
    TOK_KEY_UNKNOWN = 0,
    TOK_KEY_RSA = 1,
    TOK_KEY_EC = 2,
    TOK_KEY_ED25519 = 3,
    TOK_KEY_ED448 = 4,
} tok_key_type_t;

/* Mechanisms the token offers for a key (from C_GetMechanismInfo, CKF_SIGN). */
#define TOK_MECH_RSA_PKCS (1u << 0)
#define TOK_MECH_RSA_PSS (1u << 1)
#define TOK_MECH_ECDSA (1u << 2)
#define TOK_MECH_EDDSA (1u << 3)

typedef enum tok_sig_alg {
    TOK_SIG_RSA_PKCS1 = 1, /* CKM_RSA_PKCS over DigestInfo(hash, data); hash NONE: raw data */
    TOK_SIG_RSA_PSS = 2,   /* CKM_RSA_PKCS_PSS over data (a digest), hash/mgf1/salt params */
    TOK_SIG_ECDSA = 3,     /* CKM_ECDSA over data (a digest); result is X9.62 DER */
    TOK_SIG_EDDSA = 4,     /* CKM_EDDSA over data (the message) */
} tok_sig_alg_t;

typedef enum tok_hash {
    TOK_HASH_NONE = 0,
    TOK_HASH_SHA1,
    TOK_HASH_SHA224,
    TOK_HASH_SHA256,
    TOK_HASH_SHA384,
    TOK_HASH_SHA512,
} tok_hash_t;

/* "sha256" -> TOK_HASH_SHA256; "" or NULL -> TOK_HASH_NONE; unknown -> -1 */
int tok_hash_from_name(const char *name);
/* digest length in bytes, 0 for NONE */
size_t tok_hash_len(tok_hash_t h);

typedef struct tok_sign_params {
    tok_sig_alg_t alg;
    tok_hash_t hash;
    tok_hash_t mgf1_hash; /* PSS; NONE means same as hash */
    long salt_len;        /* PSS, bytes */
} tok_sign_params_t;

typedef struct tok_ctx tok_ctx_t;
typedef struct tok_token tok_token_t;

/* A key that can sign. Owned by the context; valid until the next
 * tok_ctx_scan() or tok_ctx_free(). Fields are read-only for callers. */
typedef struct tok_key {
    char *uri;            /* canonical: pkcs11:model=..;manufacturer=..;serial=..;token=..;id=..;object=..;type=private */
    tok_key_type_t type;
    unsigned bits;        /* RSA modulus bits; EC field bits; 255 / 448 for EdDSA */
    const char *group;    /* EC: "prime256v1" | "secp384r1" | "secp521r1"; otherwise "" */
    char *label;          /* CKA_LABEL of the private key (or of its public key/cert), may be "" */
    uint8_t *id;          /* CKA_ID */
    size_t id_len;
    uint8_t *spki;        /* SubjectPublicKeyInfo DER, always present */
    size_t spki_len;
    uint8_t *cert;        /* certificate DER with the same CKA_ID, or NULL */
    size_t cert_len;
    unsigned mechs;       /* TOK_MECH_* */
    bool always_auth;     /* CKA_ALWAYS_AUTHENTICATE */
    tok_token_t *token;
    /* private: */
    unsigned long handle; /* private key object handle; 0 until found (e.g. before login) */
} tok_key_t;

/*
 * Creates a context. With n_modules == 0, loads the modules registered with
 * p11-kit (p11_kit_modules_load_and_initialize, honouring the user's p11-kit
 * config); otherwise loads exactly the given module paths
 * (p11_kit_module_load + p11_kit_module_initialize). On failure, *errmsg (if
 * not NULL) gets a malloc'd message naming the module and the cause.
 * Does not scan: call tok_ctx_scan().
 */
int tok_ctx_new(const char *const *modules, size_t n_modules, tok_ctx_t **ret, char **errmsg);
void tok_ctx_free(tok_ctx_t *ctx);

/* Where the token layer tells the operator about a module's bad answers
 * (an object skipped because an attribute is oversized or garbage): one
 * line naming token and object, hostile text escaped. Without a callback
 * these lines go to the debug output only. Set before tok_ctx_scan(). */
typedef void (*tok_warn_fn_t)(void *data, const char *msg);
void tok_ctx_set_warn(tok_ctx_t *ctx, tok_warn_fn_t fn, void *data);

/*
 * (Re)discovers slots with tokens present and their keys. Private keys that
 * can sign are found directly when visible; before login, private objects are
 * hidden, so a key is also listed from a public key or certificate object
 * (handle 0; found by CKA_ID after login). Keys are paired with
 * certificates and public keys by CKA_ID. Invalidates earlier tok_key_t and
 * tok_token_t pointers. Logged-in state of tokens that stay present is kept.
 */
int tok_ctx_scan(tok_ctx_t *ctx);

size_t tok_ctx_n_tokens(const tok_ctx_t *ctx);
tok_token_t *tok_ctx_token(const tok_ctx_t *ctx, size_t i);
size_t tok_ctx_n_keys(const tok_ctx_t *ctx);
const tok_key_t *tok_ctx_key(const tok_ctx_t *ctx, size_t i);

/* Keys matching an RFC 7512 URI ("pkcs11:" matches all keys), via P11KitUri.
 * *ret is a malloc'd array of pointers owned by the caller (the keys are not).
 * TOK_ERR_ARGS if the URI does not parse. Zero matches is TOK_OK with n 0. */
int tok_find_keys(const tok_ctx_t *ctx, const char *uri, const tok_key_t ***ret, size_t *ret_n);

/* Tokens matching a URI (token attributes only). Same ownership as above. */
int tok_find_tokens(const tok_ctx_t *ctx, const char *uri, tok_token_t ***ret, size_t *ret_n);
/* Does the URI parse (RFC 7512, as the two above read it)? TOK_OK,
 * TOK_ERR_ARGS or TOK_ERR_NO_MEMORY. */
int tok_uri_check(const char *uri);

const char *tok_token_label(const tok_token_t *t);
/* pkcs11:model=..;manufacturer=..;serial=..;token=.. */
const char *tok_token_uri(const tok_token_t *t);
/* CK_TOKEN_INFO.flags as last read (tok_token_refresh_info re-reads it) */
unsigned long tok_token_flags(const tok_token_t *t);
int tok_token_refresh_info(tok_token_t *t);
bool tok_token_logged_in(const tok_token_t *t);
/* CKF_LOGIN_REQUIRED set */
bool tok_token_login_required(const tok_token_t *t);
/* CKF_PROTECTED_AUTHENTICATION_PATH set (PIN pad): log in with pin NULL */
bool tok_token_has_pin_pad(const tok_token_t *t);

/*
 * The most sessions the token's pool may open (they are opened only as
 * concurrent signatures need them). n 0: the default, 64; the token's
 * ulMaxSessionCount, when it gives one, lowers it; n is bounded by
 * TOK_MAX_SESSIONS_LIMIT. Takes effect at once: idle sessions past a lower
 * cap close now, busy ones as they come back (the last one stays: it keeps
 * the login). tok_token_max_sessions: the cap in force.
 */
#define TOK_MAX_SESSIONS_LIMIT 4096
void tok_token_set_max_sessions(tok_token_t *t, size_t n);
size_t tok_token_max_sessions(const tok_token_t *t);

/*
 * Closes the pool sessions that have been idle for idle_s seconds or more
 * (a burst of signatures opened them), so that a token shared with other
 * programs gets them back. Keeps each token's last session (the login) and
 * the one holding the keys' session copies. Safe while other threads sign;
 * not concurrently with tok_ctx_scan().
 */
void tok_ctx_trim_sessions(tok_ctx_t *ctx, unsigned idle_s);

/*
 * C_Login(CKU_USER). pin may be NULL (PIN pad). CKR_USER_ALREADY_LOGGED_IN is
 * success. On success, finds the private key handles of this token's keys.
 * Does not copy or keep the PIN. Only one login runs per token at a time.
 */
int tok_token_login(tok_token_t *t, const char *pin, size_t pin_len);
int tok_token_logout(tok_token_t *t);

/*
 * Signs with the key. *ret_sig is malloc'd (caller frees). For ECDSA the
 * token's r||s is converted to X9.62 DER. Returns TOK_ERR_NOT_LOGGED_IN when
 * the token needs a login first (the caller gets a PIN, logs in, retries),
 * TOK_ERR_MECHANISM when the token or key cannot do the algorithm, with a
 * message in *errmsg (if not NULL) naming the mechanism.
 * Thread-safe; uses a session from the token's pool.
 */
int tok_sign(const tok_key_t *key, const tok_sign_params_t *p, const uint8_t *data, size_t len,
             uint8_t **ret_sig, size_t *ret_sig_len, char **errmsg);

/* The PIN of a context-specific login (CKU_CONTEXT_SPECIFIC) for keys with
 * CKA_ALWAYS_AUTHENTICATE; pin NULL on a PIN pad. Not copied or kept. */
typedef struct tok_auth {
    const char *pin;
    size_t pin_len;
} tok_auth_t;

/* tok_sign with a context-specific login between C_SignInit and C_Sign when
 * auth is not NULL. A wrong PIN gives TOK_ERR_PIN_INCORRECT. */
int tok_sign_auth(const tok_key_t *key, const tok_sign_params_t *p, const uint8_t *data,
                  size_t len, const tok_auth_t *auth, uint8_t **ret_sig, size_t *ret_sig_len,
                  char **errmsg);

/* RSA decryption (pkcs11/decrypt.c). */
typedef enum tok_dec_alg {
    TOK_DEC_RSA_PKCS1 = 1, /* CKM_RSA_PKCS: PKCS#1 v1.5 type 2 */
    TOK_DEC_RSA_OAEP = 2,  /* CKM_RSA_PKCS_OAEP with hash, mgf1 hash, label */
    TOK_DEC_RSA_RAW = 3,   /* CKM_RSA_X_509: the modulus-sized integer, unpadded */
} tok_dec_alg_t;

typedef struct tok_decrypt_params {
    tok_dec_alg_t alg;
    tok_hash_t hash;      /* OAEP; NONE means SHA-1 (the PKCS#1 default) */
    tok_hash_t mgf1_hash; /* OAEP; NONE means same as hash */
    const uint8_t *label; /* OAEP label, NULL/0 for none */
    size_t label_len;
} tok_decrypt_params_t;

/*
 * Decrypts with an RSA key (C_DecryptInit + C_Decrypt; a context-specific
 * login in between when auth is not NULL). data is 1 to the modulus size
 * bytes (rsa-raw: shorter input is taken as the same integer). The output is
 * never longer than the modulus, whatever the module says: *ret_plain is
 * malloc'd, holds a secret, and the caller wipes it before free(). For
 * TOK_DEC_RSA_RAW it is exactly the modulus size (a module that drops
 * leading zero bytes is right-aligned). Returns TOK_OK or: TOK_ERR_ARGS
 * (bad input, or the ciphertext does not decrypt: CKR_ENCRYPTED_DATA_INVALID
 * / LEN_RANGE), TOK_ERR_MECHANISM (the token or key cannot decrypt with
 * it: no mechanism, CKA_DECRYPT false), TOK_ERR_NOT_LOGGED_IN,
 * TOK_ERR_AUTH_REQUIRED, TOK_ERR_TOKEN_REMOVED, TOK_ERR_DEVICE, ... with
 * *errmsg naming key, token and cause.
 */
int tok_decrypt(const tok_key_t *key, const tok_decrypt_params_t *p, const uint8_t *data,
                size_t len, const tok_auth_t *auth, uint8_t **ret_plain, size_t *ret_len,
                char **errmsg);

/*
 * Did the set of present tokens change since the last tok_ctx_scan()? Cheap
 * (C_GetSlotList + C_GetTokenInfo per slot); safe while other threads sign.
 * Must not run concurrently with tok_ctx_scan().
 */
int tok_ctx_tokens_changed(tok_ctx_t *ctx, bool *ret_changed);

/* Helpers exposed for unit tests. */
/* r||s (2*n bytes) -> DER ECDSA-Sig-Value. malloc'd. */
int tok_ecdsa_raw_to_der(const uint8_t *raw, size_t raw_len, uint8_t **ret, size_t *ret_len);
/* DigestInfo DER prefix for a hash, and its length; NULL for NONE/unknown. */
const uint8_t *tok_digest_info_prefix(tok_hash_t h, size_t *ret_len);
