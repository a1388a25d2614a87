/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The process-wide state of p11agent-pkcs11.so (a PKCS#11 module is one
 * per process by definition: the state is `mod_g`, guarded by mod_g.lock).
 *
 * Lock order: mod_g.refresh_lock, then mod_g.lock. No lock is held during
 * an agent call except refresh_lock (one thread lists tokens at a time).
 */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>

#include <openssl/evp.h>
#include <openssl/provider.h>

#include "module.h"
#include "pool.h"

/* One slot per token the agent has served since C_Initialize: its id
 * (the index) stays the token's for the life of the process. */
typedef struct mod_slot {
    char *token_uri;
    CK_UTF8CHAR label[32], manufacturer[32], model[16], serial[16];
    CK_UTF8CHAR description[64];
    bool present;
    bool event;            /* presence changed since the last C_WaitForSlotEvent */
    mod_key_t *keys;       /* indexes stay: a key gone keeps its place, empty */
    size_t n_keys;
} mod_slot_t;

/* A signature in progress (C_SignInit .. C_Sign/C_SignFinal). */
typedef struct mod_sign_op {
    const mod_mech_t *mech;
    bus_sign_params_t params;
    char *key_uri;
    bus_key_type_t key_type;
    size_t sig_len;        /* what the key makes, in PKCS#11 form */
    EVP_MD_CTX *md;        /* hash-and-sign mechanisms */
    uint8_t *data;         /* the others: the data so far */
    size_t len, cap;
    bool updated;          /* C_SignUpdate was called: C_Sign is refused */
} mod_sign_op_t;

typedef struct mod_session {
    bool used;
    CK_SLOT_ID slot;
    CK_FLAGS flags;
    CK_OBJECT_HANDLE *found;   /* C_FindObjectsInit's result */
    size_t n_found, pos;
    bool finding;
    mod_sign_op_t *sign;       /* NULL: no signature in progress */
} mod_session_t;

typedef struct mod_state {
    pthread_mutex_t lock;
    pthread_mutex_t refresh_lock;
    pthread_cond_t cond;       /* slot events, Finalize, agent calls ending */
    bool initialized;
    atomic_int pid;            /* the process the state belongs to */
    int init_pid;              /* the process that called C_Initialize */
    bus_pool_t *pool;
    unsigned calls;            /* agent calls in flight (Finalize waits) */
    int64_t backoff_until_ms;  /* after a timeout: no agent call until then */
    int64_t refreshed_ms;      /* last successful listing */
    bool listed;               /* tokens were listed once since C_Initialize */
    mod_slot_t slots[MOD_MAX_SLOTS];
    size_t n_slots;
    mod_session_t *sessions;   /* handle = index + 1 */
    size_t n_sessions;
    OSSL_LIB_CTX *libctx;      /* our own: the default provider only */
    OSSL_PROVIDER *provider;   /* its default provider */
    bool debug;
    bool inside_agent;         /* loaded by p11agentd itself: serve nothing */
} mod_state_t;

extern mod_state_t mod_g;

/* Object handles: (slot + 1) << 24 | key index << 2 | MOD_OBJ_*. */
#define MOD_HANDLE(slot, key, kind) \
    ((CK_OBJECT_HANDLE)(((CK_ULONG)(slot) + 1) << 24 | (CK_ULONG)(key) << 2 | (CK_ULONG)(kind)))

#define MOD_MANUFACTURER "p11agent"

int64_t mod_now_ms(void);
/* In a forked child: fresh locks, the state kept (every entry point). */
void mod_check_fork(void);
/* mod_pad for a C string. */
void mod_pad_str(CK_UTF8CHAR *field, size_t size, const char *s);
void mod_debug(const char *fn, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Entered by every entry point: CKR_OK with mod_g.lock held, or
 * CKR_CRYPTOKI_NOT_INITIALIZED (lock not held). Handles a fork. */
CK_RV mod_enter(void);
#define mod_leave() pthread_mutex_unlock(&mod_g.lock)

/* Lists tokens and keys again (no lock held on entry; takes them): always
 * (MOD_REFRESH_FORCE), when the last list is older than a second
 * (MOD_REFRESH_STALE) or only if nothing was listed yet (MOD_REFRESH_FIRST).
 * Without an agent every token counts as gone; slot IDs stay. */
typedef enum mod_refresh_mode {
    MOD_REFRESH_FIRST,
    MOD_REFRESH_STALE,
    MOD_REFRESH_FORCE,
} mod_refresh_mode_t;
void mod_refresh(mod_refresh_mode_t mode);
/* Enters and finds slot id: CKR_OK with the lock held and *ret set, else
 * CKR_SLOT_ID_INVALID, CKR_TOKEN_NOT_PRESENT (if need_token) or mod_enter's
 * error, the lock not held. */
CK_RV mod_enter_slot(CK_SLOT_ID id, bool need_token, mod_slot_t **ret);
/* Lock held: the session, or NULL. */
mod_session_t *mod_session_locked(CK_SESSION_HANDLE h);
/* Lock held: the key of an object handle of a present slot, or NULL. */
mod_key_t *mod_object_locked(CK_OBJECT_HANDLE h, CK_SLOT_ID *ret_slot, int *ret_kind);
void mod_sign_op_free(mod_sign_op_t *op);
void mod_session_clear_locked(mod_session_t *s);

/* An agent call ends (lock held). */
void mod_call_end_locked(void);
/* Before an agent call (lock held): false in backoff (fail fast). */
bool mod_call_begin_locked(void);
/* After an agent call that timed out (lock held): back off. */
void mod_call_timed_out_locked(void);

/* The entry points (entry.c puts them in the function list). */
CK_RV mod_C_Initialize(CK_VOID_PTR init_args);
CK_RV mod_C_Finalize(CK_VOID_PTR reserved);
CK_RV mod_C_GetInfo(CK_INFO_PTR info);
CK_RV mod_C_GetSlotList(CK_BBOOL present_only, CK_SLOT_ID_PTR list, CK_ULONG_PTR count);
CK_RV mod_C_GetSlotInfo(CK_SLOT_ID id, CK_SLOT_INFO_PTR info);
CK_RV mod_C_GetTokenInfo(CK_SLOT_ID id, CK_TOKEN_INFO_PTR info);
CK_RV mod_C_GetMechanismList(CK_SLOT_ID id, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count);
CK_RV mod_C_GetMechanismInfo(CK_SLOT_ID id, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info);
CK_RV mod_C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved);
CK_RV mod_C_OpenSession(CK_SLOT_ID id, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR ret);
CK_RV mod_C_CloseSession(CK_SESSION_HANDLE h);
CK_RV mod_C_CloseAllSessions(CK_SLOT_ID id);
CK_RV mod_C_GetSessionInfo(CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR info);
CK_RV mod_C_Login(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len);
CK_RV mod_C_Logout(CK_SESSION_HANDLE h);
CK_RV mod_C_FindObjectsInit(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n);
CK_RV mod_C_FindObjects(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR out, CK_ULONG max, CK_ULONG_PTR count);
CK_RV mod_C_FindObjectsFinal(CK_SESSION_HANDLE h);
CK_RV mod_C_GetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n);
CK_RV mod_C_GetObjectSize(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ULONG_PTR size);
CK_RV mod_C_SignInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key);
CK_RV mod_C_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len);
CK_RV mod_C_SignUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len);
CK_RV mod_C_SignFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len);
