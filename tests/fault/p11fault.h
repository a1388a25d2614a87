/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11fault: internals shared by the module (p11fault.c, forward.c) and the
 * control/state files (control.c). The control language is documented at
 * the top of control.c and in README.md.
 *
 * Files: p11fault.c (call frame, C_Initialize/C_Finalize, function list),
 * slot.c (removal, slot events), session.c (session handles), auth.c
 * (login, PIN pad, always-authenticate, signing), forward.c (the rest),
 * control.c (control and state files). call.h: the call frame.
 *
 * A PKCS#11 module has no context argument: all state lives in the one
 * `flt` below, guarded by flt.mu (fields marked [mu]). flt.mu is never held
 * across a delay, a PIN pad wait or a blocking wait.
 */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

/* Every PKCS#11 2.40 function, in CK_FUNCTION_LIST order. */
#define FLT_FUNCS(X)                                                                        \
    X(C_Initialize) X(C_Finalize) X(C_GetInfo) X(C_GetFunctionList) X(C_GetSlotList)        \
    X(C_GetSlotInfo) X(C_GetTokenInfo) X(C_GetMechanismList) X(C_GetMechanismInfo)          \
    X(C_InitToken) X(C_InitPIN) X(C_SetPIN) X(C_OpenSession) X(C_CloseSession)              \
    X(C_CloseAllSessions) X(C_GetSessionInfo) X(C_GetOperationState)                        \
    X(C_SetOperationState) X(C_Login) X(C_Logout) X(C_CreateObject) X(C_CopyObject)         \
    X(C_DestroyObject) X(C_GetObjectSize) X(C_GetAttributeValue) X(C_SetAttributeValue)     \
    X(C_FindObjectsInit) X(C_FindObjects) X(C_FindObjectsFinal) X(C_EncryptInit)            \
    X(C_Encrypt) X(C_EncryptUpdate) X(C_EncryptFinal) X(C_DecryptInit) X(C_Decrypt)         \
    X(C_DecryptUpdate) X(C_DecryptFinal) X(C_DigestInit) X(C_Digest) X(C_DigestUpdate)      \
    X(C_DigestKey) X(C_DigestFinal) X(C_SignInit) X(C_Sign) X(C_SignUpdate) X(C_SignFinal)  \
    X(C_SignRecoverInit) X(C_SignRecover) X(C_VerifyInit) X(C_Verify) X(C_VerifyUpdate)     \
    X(C_VerifyFinal) X(C_VerifyRecoverInit) X(C_VerifyRecover) X(C_DigestEncryptUpdate)     \
    X(C_DecryptDigestUpdate) X(C_SignEncryptUpdate) X(C_DecryptVerifyUpdate)                \
    X(C_GenerateKey) X(C_GenerateKeyPair) X(C_WrapKey) X(C_UnwrapKey) X(C_DeriveKey)        \
    X(C_SeedRandom) X(C_GenerateRandom) X(C_GetFunctionStatus) X(C_CancelFunction)          \
    X(C_WaitForSlotEvent)

typedef enum flt_fn {
#define FLT_FN_ENUM(n) FLT_FN_##n,
    FLT_FUNCS(FLT_FN_ENUM)
#undef FLT_FN_ENUM
        FLT_FN_COUNT
} flt_fn_t;

extern const char *const flt_fn_names[FLT_FN_COUNT];

/* One slot of the real module, as far as the faults are concerned. */
typedef struct flt_slot {
    CK_SLOT_ID id;
    char label[33];          /* token label, trailing blanks cut ("" if none) */
    bool removed;
    bool event;              /* a change not yet reported by C_WaitForSlotEvent */
    unsigned long epoch;     /* bumped on each removal */
    bool pinpad;             /* CKF_PROTECTED_AUTHENTICATION_PATH */
    bool pad_cancel;         /* the user presses cancel on the pad */
    char *pad_pin;           /* what the user types; NULL: nothing right */
    long pad_delay_ms;
    CK_FLAGS forced_flags;   /* CKF_USER_PIN_* ORed into the token info */
    unsigned long login_failures; /* consecutive wrong user PINs */
    long delay_ms[FLT_FN_COUNT];  /* per-slot delay; -1: the global one */
    bool lie_label;          /* token label: invalid UTF-8, no padding (lie.c) */
    bool hold[FLT_FN_COUNT]; /* `hold FUNC SLOT`: calls wait for `release` */
    unsigned long opening;   /* C_OpenSession calls past the session limit check */
} flt_slot_t;

/* A session handed out by us. Our handles are never reused; flt maps them
 * to the real module's. */
typedef struct flt_session {
    struct flt_session *next; /* hash chain */
    CK_SESSION_HANDLE handle, real;
    CK_SLOT_ID slot;
    unsigned busy;           /* calls in flight (entry not freed meanwhile) */
    bool linked;             /* findable; freed once unlinked and not busy */
    bool gone;               /* opened before a removal of its slot */
    bool real_open;          /* the real session still needs C_CloseSession */
    bool aa_active;          /* a sign operation on an always-authenticate key */
    bool aa_authed;          /* ... and its context-specific login happened */
} flt_session_t;

#define FLT_BUCKETS 64

typedef struct flt {
    pthread_mutex_t mu;
    pthread_cond_t event_cv;   /* slot events, C_Finalize */
    pthread_cond_t idle_cv;    /* the last blocked waiter left */
    pthread_cond_t watch_cv;   /* stops the watcher */
    pthread_cond_t hold_cv;    /* a `release`, `reset` or C_Finalize */

    CK_FUNCTION_LIST *real;    /* loaded once, never unloaded */
    bool initialized, finalizing;
    unsigned n_waiters;        /* threads blocked in C_WaitForSlotEvent */
    bool watcher_running, stop_watcher;
    pthread_t watcher;

    char *control_path, *state_path;

    /* control file: what was read, and how much of it is applied [mu] */
    struct {
        bool exists;
        dev_t dev;
        ino_t ino;
        off_t size;
        struct timespec mtime, ctime;
    } ctl_stat;
    char *applied;
    size_t applied_len;
    unsigned long generation;  /* control file reads that applied something */
    char *sync;                /* last `sync` word */
    unsigned long n_errors;
    char last_error[256];

    /* configuration [mu] */
    flt_slot_t *slots;
    size_t n_slots;
    long delay_ms[FLT_FN_COUNT];
    CK_RV fail_rv[FLT_FN_COUNT];
    long fail_left[FLT_FN_COUNT];  /* -1: forever */
    bool aa_all;
    char **aa_labels;
    size_t n_aa_labels;
    char *user_pin;                /* configured: `user-pin`, `max-login-failures ... pin` */
    unsigned long max_login_failures; /* 0: never lock */
    char *learned_pin;             /* from the last successful user login */
    CK_ULONG lie_sig_len;          /* `lie sig-len N`; 0: off (lie.c) */
    struct flt_lie *lies;          /* `lie huge|grow|garbage ATTR [LABEL...]` */
    size_t n_lies;
    bool hold[FLT_FN_COUNT];       /* `hold FUNC`: every call waits for `release` */
    unsigned long session_limit;   /* `limit sessions N`: per slot; 0: none */
    bool session_limit_info;       /* ... and C_GetTokenInfo tells it */

    /* sessions [mu] */
    flt_session_t *buckets[FLT_BUCKETS];
    CK_SESSION_HANDLE next_handle;

    /* counters [mu] */
    unsigned long calls[FLT_FN_COUNT], failed[FLT_FN_COUNT];
    /* calls running now, the most at once since `reset-counters`, and
     * those waiting in a `hold` */
    unsigned long inflight[FLT_FN_COUNT], inflight_max[FLT_FN_COUNT], held[FLT_FN_COUNT];
    unsigned long state_seq;       /* bumped on every change worth writing */

    pthread_mutex_t io_mu;         /* one state file writer at a time */
    unsigned long written_seq;     /* [io_mu] */
} flt_t;

extern flt_t flt;

/* slot.c; p11fault.c: flt_free_pin (wipes, frees; NULL ok) */
flt_slot_t *flt_slot_get_locked(CK_SLOT_ID id);
void flt_slot_remove_locked(flt_slot_t *s);
void flt_slot_insert_locked(flt_slot_t *s);
bool flt_slot_locked_out_locked(const flt_slot_t *s);
void flt_free_pin(char *pin);

/* lie.c: answers a real module would never give. `lie ...` control lines
 * (words w[0..n), w[0] "lie"); false with a message in err on a bad line. */
bool flt_lie_cmd_locked(size_t n, char *const *w, char *err, size_t err_size);
void flt_lie_reset_locked(void);
/* After the real C_GetAttributeValue: applies attribute lies (rv updated). */
CK_RV flt_lie_attributes(CK_SESSION_HANDLE real, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR t,
                         CK_ULONG n, CK_RV rv);
/* After a successful real C_Sign into a buffer: the claimed length. */
void flt_lie_sig_len(CK_ULONG_PTR len);
/* After the real C_GetTokenInfo. [mu] */
void flt_lie_token_info_locked(const flt_slot_t *s, CK_TOKEN_INFO_PTR info);

/* control.c */
bool flt_control_check_locked(void);
/* The same with the control file's stat() made by the caller, before it
 * took flt.mu (so that the many threads of a process do not wait on one
 * another's stat() calls). */
bool flt_control_check_stat_locked(const struct stat *st);
void flt_config_reset_locked(void);
void flt_state_write(void);
int flt_fn_lookup(const char *name);
