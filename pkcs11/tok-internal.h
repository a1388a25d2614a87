/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Private to pkcs11/: the structures behind tok.h and the helpers the files
 * of the token layer share. Nothing outside pkcs11/ includes this.
 */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

#include "tok.h"

#ifndef CKM_EDDSA
#define CKM_EDDSA 0x1057UL
#endif
#ifndef CKK_EC_EDWARDS
#define CKK_EC_EDWARDS 0x40UL
#endif
#ifndef CKA_PUBLIC_KEY_INFO
#define CKA_PUBLIC_KEY_INFO 0x129UL
#endif

/* Sessions a token's pool opens at most, unless the token allows fewer or
 * tok_token_set_max_sessions says otherwise. The pool opens them only as
 * concurrent signatures need them. A network or cloud HSM answers each
 * C_Sign in milliseconds but runs many at once, so the sessions in use
 * bound the rate (64 sessions at 5 ms: 12,800/s): 64 lets as many clients
 * sign at once, past which the agent's CPUs are the limit on a small
 * machine anyway. A smart card runs one operation at a time whatever the
 * count, and says how many sessions it allows (ulMaxSessionCount) or
 * answers CKR_SESSION_COUNT, which the pool honours. */
#define TOK_POOL_MAX_DEFAULT 64
/* After CKR_SESSION_COUNT, the pool opens no session past the count it had
 * for this long (the token's other users may close theirs meanwhile). */
#define TOK_POOL_BACKOFF_MS 1000
/* How long tok_sign waits for a free session before TOK_ERR_BUSY. */
#define TOK_POOL_WAIT_SECONDS 10
/* Largest input tok_sign accepts (EdDSA signs the message itself). */
#define TOK_SIGN_MAX_DATA (1024 * 1024)

/* Bounds on what a module may return (bytes). A longer value is garbage:
 * its object is skipped with a warning, nothing that size is allocated. */
#define TOK_MAX_MODULUS 2048        /* RSA up to 16384 bits */
#define TOK_MIN_MODULUS 64          /* ... and from 512 bits */
#define TOK_MAX_EXPONENT 512
#define TOK_MAX_EC_PARAMS 512       /* an OID or a curve name, not explicit parameters */
#define TOK_MAX_EC_POINT 512        /* P-521 uncompressed is 133, wrapped 136 */
#define TOK_MAX_SPKI 4096           /* RSA-16384 is about 2100 */
#define TOK_MAX_CERT (64 * 1024)
#define TOK_MAX_LABEL 1024
#define TOK_MAX_ID 256
#define TOK_MAX_OBJECTS 65536       /* objects of one class on one token */

typedef struct tok_module {
    CK_FUNCTION_LIST *f;
    CK_INFO info;
    bool have_info;
    char *name; /* p11-kit module name, or NULL */
    char *path; /* module file name, or NULL */
} tok_module_t;

struct tok_token {
    tok_ctx_t *ctx;
    tok_module_t *mod;
    CK_FUNCTION_LIST *f;
    CK_SLOT_ID slot;
    CK_SLOT_INFO slot_info;
    CK_TOKEN_INFO info; /* under lock once the token is shared */
    char *label;
    char *uri;
    unsigned mechs; /* TOK_MECH_* the token can sign with */
    bool use_copies; /* software slot (no CKF_HW_SLOT): sign with session copies */

    pthread_mutex_t lock; /* pool, logged_in, info, key handles */
    pthread_cond_t cond;  /* a session came back or a slot freed */
    pthread_mutex_t login_lock; /* one login/logout at a time */
    CK_SESSION_HANDLE *idle; /* idle_cap slots, n_idle of them used */
    int64_t *idle_since_ns;  /* when each came back (CLOCK_MONOTONIC); the
                              * most recent last: taken first, trimmed last */
    size_t idle_cap;
    size_t n_idle;
    size_t n_open;       /* idle, in use, and being opened */
    size_t max_sessions; /* the cap in force: tok_pool_cap_locked */
    size_t want_max;     /* tok_token_set_max_sessions; 0: TOK_POOL_MAX_DEFAULT */
    /* CKR_SESSION_COUNT seen with full_at sessions open: no more are opened
     * before backoff_until_ns (CLOCK_MONOTONIC); SIZE_MAX: not seen */
    size_t full_at;
    int64_t backoff_until_ns;
    bool logged_in;
    bool seen; /* scan bookkeeping */
};

/* tok_key_t plus private state; ctx->keys is an array of these. */
typedef struct tok_key_int {
    tok_key_t k;
    bool handle_from_login; /* handle found after login: gone at logout */
    /* A session-object copy of the private key (C_CopyObject, CKA_TOKEN
     * false) made on copy_session; signing with it spares software tokens
     * re-reading the key's file per signature. 0 when none. Under t->lock. */
    CK_OBJECT_HANDLE copy;
    CK_SESSION_HANDLE copy_session;
} tok_key_int_t;

struct tok_ctx {
    CK_FUNCTION_LIST **p11kit_modules; /* from p11-kit's registry, or NULL */
    tok_module_t *mods;
    size_t n_mods;
    tok_token_t **tokens;
    size_t n_tokens;
    tok_key_int_t *keys;
    size_t n_keys;
    bool debug;
    tok_warn_fn_t warn;
    void *warn_data;
    char *pending_warn;  /* lines warned before a callback was set ('\n'-separated) */
};

/* status.c */
void tok_debug_print(const char *func, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define tok_debug(ctx, ...)                                                                        \
    do {                                                                                           \
        if ((ctx) != NULL && (ctx)->debug)                                                         \
            tok_debug_print(__func__, __VA_ARGS__);                                                \
    } while (0)
bool tok_debug_enabled_from_env(void);
/* A line for the operator (ctx's warn callback) and the debug output.
 * Hostile text in it must be escaped by the caller (text_escape). */
void tok_warn(tok_ctx_t *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* *errmsg = malloc'd printf result, if errmsg is not NULL. Call once per failure. */
void tok_set_errmsg(char **errmsg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Copies a blank-padded CK string of n bytes (not NUL-terminated; a NUL
 * ends it early), without the padding, as valid UTF-8 (bad bytes become
 * U+FFFD). malloc'd; NULL only when out of memory. */
char *tok_ck_string(const unsigned char *s, size_t n);
bool tok_rv_is_removal(CK_RV rv);

/* module.c */
void tok_ctx_free_keys(tok_ctx_t *ctx);

/* session.c */
int tok_pool_init(tok_token_t *t);
void tok_pool_destroy(tok_token_t *t);
int tok_session_get(tok_token_t *t, CK_SESSION_HANDLE *ret);
void tok_session_put(tok_token_t *t, CK_SESSION_HANDLE s);
void tok_session_drop(tok_token_t *t, CK_SESSION_HANDLE s);
/* Puts s back in the pool, or drops it if rv says the token went away. */
void tok_session_return(tok_token_t *t, CK_SESSION_HANDLE s, CK_RV rv);

/* token.c */
tok_token_t *tok_token_new(tok_ctx_t *ctx, tok_module_t *mod, CK_SLOT_ID slot,
                           const CK_SLOT_INFO *slot_info, const CK_TOKEN_INFO *info);
void tok_token_free(tok_token_t *t);
/* Looks up the private key handle by CKA_ID on session s. 0 if none. */
CK_OBJECT_HANDLE tok_find_private_by_id(tok_token_t *t, CK_SESSION_HANDLE s, const uint8_t *id,
                                        size_t id_len);
/* After login: fills in handles of the token's keys that have none. */
void tok_token_find_handles(tok_token_t *t, CK_SESSION_HANDLE s);
/* After logout or loss of login: forgets handles found through login. */
void tok_token_forget_login_locked(tok_token_t *t);

/* sign.c, shared with decrypt.c */
/* Marks the token logged out (its private handles are gone). Takes t->lock. */
void tok_token_lost_login(tok_token_t *t);
/* Finds the key's private object again by CKA_ID and records the handle;
 * CK_INVALID_HANDLE if it is not there. Takes t->lock. */
CK_OBJECT_HANDLE tok_key_refind(tok_key_int_t *ki, CK_SESSION_HANDLE s);
/* After C_SignInit or C_DecryptInit: the context-specific login of a
 * CKA_ALWAYS_AUTHENTICATE key with auth's PIN (CKR_OK without auth);
 * CKR_USER_NOT_LOGGED_IN from it counts as CKR_PIN_INCORRECT. */
CK_RV tok_context_login(tok_token_t *t, CK_SESSION_HANDLE s, const tok_auth_t *auth);
/* Whether a failed signature or decryption (r from rv) costs the session:
 * a removed token, an operation the module may have left active, or a
 * wrong context-specific PIN. */
bool tok_op_drops_session(int r, CK_RV rv, const tok_auth_t *auth);
/* Makes session copies of the token's keys that have a handle but no copy. */
void tok_token_make_copies(tok_token_t *t, CK_SESSION_HANDLE s);
/* Session s is closing: its session objects (key copies) go with it. */
void tok_token_forget_session_locked(tok_token_t *t, CK_SESSION_HANDLE s);
void tok_ctx_destroy_copies(tok_ctx_t *ctx);
void tok_key_clear(tok_key_t *k);

/* uri.c */
/* A blank-padded CK string field of n bytes as the standard has it: the
 * text up to the first NUL, then blanks (NUL padding and an early NUL
 * become blanks). A field starting with NUL is left alone unless
 * empty_is_blank (then it is all blanks: an empty string). */
void tok_ck_unpad(unsigned char *s, size_t n, bool empty_is_blank);
char *tok_uri_for_token(const CK_TOKEN_INFO *info);
char *tok_uri_for_key(const CK_TOKEN_INFO *info, const tok_key_t *k);

/* keydata.c: public key material -> SPKI DER (OpenSSL, default library context) */
typedef struct tok_pub {
    tok_key_type_t type;
    unsigned bits;
    const char *group;
    uint8_t *spki;
    size_t spki_len;
} tok_pub_t;
/* Each builds *ret (SPKI DER, type, bits, group) from attribute bytes as a
 * module returned them; no module is needed (unit tests, fuzz targets).
 * TOK_OK, TOK_ERR_ARGS for bytes that do not make a public key (garbage),
 * TOK_ERR_NO_MEMORY, TOK_ERR_GENERAL. *ret is untouched on failure. */
int tok_pub_from_rsa(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len, tok_pub_t *ret);
int tok_pub_from_ec(CK_KEY_TYPE kt, const uint8_t *params, size_t params_len, const uint8_t *point,
                    size_t point_len, tok_pub_t *ret);
int tok_pub_from_spki(const uint8_t *der, size_t len, tok_pub_t *ret);
int tok_pub_from_cert(const uint8_t *der, size_t len, tok_pub_t *ret);
void tok_pub_clear(tok_pub_t *p);
