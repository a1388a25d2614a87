/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11fault.so: a PKCS#11 2.40 module for tests. It loads a real module
 * (P11FAULT_MODULE, default SoftHSM), forwards every call to it, and on
 * command from the test's control file (P11FAULT_CONTROL) simulates card
 * removal/insertion, a PIN pad, always-authenticate keys, PIN counter
 * flags and lock-out, injected errors and slow operations. Counters go to
 * the state file (P11FAULT_STATE). The control language and the state file
 * are described at the top of control.c and in README.md.
 *
 * This file: the call frame, slots, sessions, slot events, initialisation.
 * auth.c: login, PIN pad, always-authenticate, signing. forward.c: the rest.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "call.h"

#define DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define WATCH_MS 50
#define WAIT_POLL_MS 100
#define FIRST_HANDLE 0x1001

flt_t flt = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .event_cv = PTHREAD_COND_INITIALIZER,
    .idle_cv = PTHREAD_COND_INITIALIZER,
    .watch_cv = PTHREAD_COND_INITIALIZER,
    .io_mu = PTHREAD_MUTEX_INITIALIZER,
    .next_handle = FIRST_HANDLE,
};

void flt_free_pin(char *pin)
{
    if (pin != NULL) {
        explicit_bzero(pin, strlen(pin));
        free(pin);
    }
}

static void deadline_after(struct timespec *ts, long ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---------------------------------------------------------------- slots */

/* The slot's entry, made on first use; NULL only without memory. */
flt_slot_t *flt_slot_get_locked(CK_SLOT_ID id)
{
    flt_slot_t *n;

    for (size_t i = 0; i < flt.n_slots; i++)
        if (flt.slots[i].id == id)
            return &flt.slots[i];
    n = realloc(flt.slots, (flt.n_slots + 1) * sizeof(*n));
    if (n == NULL)
        return NULL;
    flt.slots = n;
    n = &flt.slots[flt.n_slots++];
    memset(n, 0, sizeof(*n));
    n->id = id;
    for (int f = 0; f < FLT_FN_COUNT; f++)
        n->delay_ms[f] = -1;
    return n;
}

static flt_slot_t *slot_find_locked(CK_SLOT_ID id)
{
    for (size_t i = 0; i < flt.n_slots; i++)
        if (flt.slots[i].id == id)
            return &flt.slots[i];
    return NULL;
}

static bool slot_removed_locked(CK_SLOT_ID id)
{
    const flt_slot_t *s = slot_find_locked(id);

    return s != NULL && s->removed;
}

bool flt_slot_locked_out_locked(const flt_slot_t *s)
{
    return flt.max_login_failures > 0 && s->login_failures >= flt.max_login_failures;
}

/* Remembers the token label for the state file. */
static void slot_note_label_locked(CK_SLOT_ID id, const CK_UTF8CHAR *label)
{
    flt_slot_t *s = flt_slot_get_locked(id);
    size_t len = 32;

    if (s == NULL)
        return;
    while (len > 0 && label[len - 1] == ' ')
        len--;
    memcpy(s->label, label, len);
    s->label[len] = '\0';
}

/* ------------------------------------------------------------- sessions */

static flt_session_t **bucket(CK_SESSION_HANDLE h)
{
    return &flt.buckets[h % FLT_BUCKETS];
}

static flt_session_t *session_find_locked(CK_SESSION_HANDLE h)
{
    for (flt_session_t *s = *bucket(h); s != NULL; s = s->next)
        if (s->handle == h)
            return s;
    return NULL;
}

static void session_close_real_locked(flt_session_t *s)
{
    if (s->real_open && s->busy == 0) {
        flt.real->C_CloseSession(s->real);
        s->real_open = false;
    }
}

/* Makes s unfindable; frees it unless a call is still using it. */
static void session_unlink_locked(flt_session_t *s)
{
    if (s->linked) {
        flt_session_t **pp = bucket(s->handle);

        while (*pp != s)
            pp = &(*pp)->next;
        *pp = s->next;
        s->linked = false;
        flt.n_sessions--;
    }
    if (s->busy == 0) {
        session_close_real_locked(s);
        free(s);
    }
}

static void session_release_locked(flt_session_t *s)
{
    if (--s->busy > 0)
        return;
    if (s->gone)
        session_close_real_locked(s);
    if (!s->linked)
        free(s);
}

/* Calls fn on every session (of slot, unless any); fn may unlink. */
static void sessions_each_locked(bool any, CK_SLOT_ID slot, void (*fn)(flt_session_t *s))
{
    for (size_t b = 0; b < FLT_BUCKETS; b++) {
        flt_session_t *s = flt.buckets[b], *next;

        for (; s != NULL; s = next) {
            next = s->next;
            if (any || s->slot == slot)
                fn(s);
        }
    }
}

static void session_kill(flt_session_t *s)
{
    s->gone = true;
    s->aa_active = s->aa_authed = false;
    session_close_real_locked(s);
}

static void session_drop_gone(flt_session_t *s)
{
    if (s->gone)
        session_unlink_locked(s);
}

/* Our sessions of a slot whose real ones C_CloseAllSessions closes. */
static void session_forget(flt_session_t *s)
{
    s->real_open = false;
    session_unlink_locked(s);
}

/* Card out: every session of the slot is gone (C_DEVICE_REMOVED until the
 * card is back, then CKR_SESSION_HANDLE_INVALID); the real sessions are
 * closed, which logs the real token out, so re-insertion needs a login. */
void flt_slot_remove_locked(flt_slot_t *s)
{
    if (s->removed)
        return;
    s->removed = true;
    s->epoch++;
    s->event = true;
    sessions_each_locked(false, s->id, session_kill);
    flt.state_seq++;
    pthread_cond_broadcast(&flt.event_cv);
}

void flt_slot_insert_locked(flt_slot_t *s)
{
    if (!s->removed)
        return;
    s->removed = false;
    s->event = true;
    sessions_each_locked(false, s->id, session_drop_gone);
    flt.state_seq++;
    pthread_cond_broadcast(&flt.event_cv);
}

/* ----------------------------------------------------------- call frame */

CK_RV call_begin(call_t *c, flt_fn_t fn, call_kind_t kind, CK_ULONG id)
{
    CK_RV rv = CKR_OK;

    memset(c, 0, sizeof(*c));
    c->fn = fn;
    pthread_mutex_lock(&flt.mu);
    flt.calls[fn]++;
    flt.state_seq++;
    if (!flt.initialized || flt.finalizing) {
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
        goto out;
    }
    flt_control_check_locked();
    if (kind == CALL_SLOT) {
        c->slot = id;
        c->has_slot = true;
    } else if (kind == CALL_SESSION) {
        flt_session_t *s = session_find_locked(id);

        if (s == NULL) {
            rv = CKR_SESSION_HANDLE_INVALID;
            goto out;
        }
        c->slot = s->slot;
        c->has_slot = true;
        if (s->gone) {
            rv = slot_removed_locked(s->slot) ? CKR_DEVICE_REMOVED : CKR_SESSION_HANDLE_INVALID;
            goto out;
        }
        s->busy++;
        c->sess = s;
        c->real = s->real;
    }
    if (flt.fail_left[fn] != 0) {
        if (flt.fail_left[fn] > 0)
            flt.fail_left[fn]--;
        rv = flt.fail_rv[fn];
        c->injected = true;
    }
out:
    pthread_mutex_unlock(&flt.mu);
    return rv;
}

/* The session's state after a wait without the lock. */
static CK_RV call_recheck(call_t *c)
{
    CK_RV rv = CKR_OK;

    if (c->sess == NULL)
        return CKR_OK;
    pthread_mutex_lock(&flt.mu);
    if (c->sess->gone)
        rv = slot_removed_locked(c->slot) ? CKR_DEVICE_REMOVED : CKR_SESSION_HANDLE_INVALID;
    else if (!c->sess->linked)
        rv = CKR_SESSION_HANDLE_INVALID;
    pthread_mutex_unlock(&flt.mu);
    return rv;
}

CK_RV call_sleep(call_t *c, long ms)
{
    if (ms <= 0)
        return CKR_OK;
    sleep_ms(ms);
    return call_recheck(c);
}

CK_RV call_delay(call_t *c)
{
    long ms;

    pthread_mutex_lock(&flt.mu);
    ms = flt.delay_ms[c->fn];
    if (c->has_slot) {
        const flt_slot_t *s = slot_find_locked(c->slot);

        if (s != NULL && s->delay_ms[c->fn] >= 0)
            ms = s->delay_ms[c->fn];
    }
    pthread_mutex_unlock(&flt.mu);
    return call_sleep(c, ms);
}

CK_RV call_end(call_t *c, CK_RV rv)
{
    pthread_mutex_lock(&flt.mu);
    if (rv != CKR_OK)
        flt.failed[c->fn]++;
    if (c->sess != NULL)
        session_release_locked(c->sess);
    c->sess = NULL;
    flt.state_seq++;
    pthread_mutex_unlock(&flt.mu);
    flt_state_write();
    return rv;
}

/* ----------------------------------------------------- module functions */

static CK_FUNCTION_LIST function_list;

static CK_RV load_real_locked(void)
{
    const char *path = getenv("P11FAULT_MODULE");
    CK_C_GetFunctionList get;
    void *dl;

    if (flt.real != NULL)
        return CKR_OK;
    if (path == NULL || *path == '\0')
        path = DEFAULT_MODULE;
    /* never dlclose()d: SoftHSM keeps OpenSSL state, and LeakSanitizer
     * must still see its frames at exit */
    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        fprintf(stderr, "p11fault: cannot load %s: %s\n", path, dlerror());
        return CKR_GENERAL_ERROR;
    }
    get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
    if (get == NULL || get(&flt.real) != CKR_OK || flt.real == NULL) {
        fprintf(stderr, "p11fault: %s has no usable C_GetFunctionList\n", path);
        flt.real = NULL;
        return CKR_GENERAL_ERROR;
    }
    return CKR_OK;
}

static char *env_dup(const char *name)
{
    const char *v = getenv(name);

    return v != NULL && *v != '\0' ? strdup(v) : NULL;
}

/* Notes every slot of the real module (and its token's label). */
static void scan_slots_locked(void)
{
    CK_SLOT_ID ids[64];
    CK_ULONG n = 64;

    if (flt.real->C_GetSlotList(CK_FALSE, ids, &n) != CKR_OK)
        return;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;

        if (flt.real->C_GetTokenInfo(ids[i], &ti) == CKR_OK)
            slot_note_label_locked(ids[i], ti.label);
        else
            flt_slot_get_locked(ids[i]);
    }
}

static void *watcher_main(void *arg)
{
    struct timespec ts;
    bool changed;

    pthread_mutex_lock(&flt.mu);
    while (!flt.stop_watcher) {
        deadline_after(&ts, WATCH_MS);
        pthread_cond_timedwait(&flt.watch_cv, &flt.mu, &ts);
        if (flt.stop_watcher)
            break;
        changed = flt_control_check_locked();
        if (changed) {
            pthread_mutex_unlock(&flt.mu);
            flt_state_write();
            pthread_mutex_lock(&flt.mu);
        }
    }
    pthread_mutex_unlock(&flt.mu);
    return NULL;
}

static CK_RV w_C_Initialize(CK_VOID_PTR pInitArgs)
{
    CK_C_INITIALIZE_ARGS *args = pInitArgs, real_args = { .flags = CKF_OS_LOCKING_OK };
    bool no_threads = args != NULL && (args->flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS);
    CK_RV rv;

    pthread_mutex_lock(&flt.mu);
    flt.calls[FLT_FN_C_Initialize]++;
    flt.state_seq++;
    if (flt.initialized) {
        rv = CKR_CRYPTOKI_ALREADY_INITIALIZED;
        goto out;
    }
    if (args != NULL && args->pReserved != NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    if ((rv = load_real_locked()) != CKR_OK)
        goto out;
    if (flt.control_path == NULL)
        flt.control_path = env_dup("P11FAULT_CONTROL");
    if (flt.state_path == NULL)
        flt.state_path = env_dup("P11FAULT_STATE");
    rv = flt.real->C_Initialize(&real_args);
    if (rv != CKR_OK)
        goto out;
    flt.initialized = true;
    scan_slots_locked();
    flt_control_check_locked();
    flt.stop_watcher = false;
    if (!no_threads && (flt.control_path != NULL || flt.state_path != NULL))
        flt.watcher_running = pthread_create(&flt.watcher, NULL, watcher_main, NULL) == 0;
out:
    if (rv != CKR_OK)
        flt.failed[FLT_FN_C_Initialize]++;
    pthread_mutex_unlock(&flt.mu);
    flt_state_write();
    return rv;
}

static void session_free_any(flt_session_t *s)
{
    s->busy = 0;
    s->real_open = false; /* the real C_Finalize closes them */
    session_unlink_locked(s);
}

static CK_RV w_C_Finalize(CK_VOID_PTR pReserved)
{
    bool join;
    CK_RV rv;

    if (pReserved != NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&flt.mu);
    flt.calls[FLT_FN_C_Finalize]++;
    if (!flt.initialized || flt.finalizing) {
        pthread_mutex_unlock(&flt.mu);
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    }
    /* wake blocked C_WaitForSlotEvent callers and wait until they left */
    flt.finalizing = true;
    pthread_cond_broadcast(&flt.event_cv);
    while (flt.n_waiters > 0)
        pthread_cond_wait(&flt.idle_cv, &flt.mu);
    join = flt.watcher_running;
    flt.stop_watcher = true;
    flt.watcher_running = false;
    pthread_cond_broadcast(&flt.watch_cv);
    pthread_mutex_unlock(&flt.mu);
    if (join)
        pthread_join(flt.watcher, NULL);

    rv = flt.real->C_Finalize(NULL);
    pthread_mutex_lock(&flt.mu);
    sessions_each_locked(true, 0, session_free_any);
    flt.initialized = false;
    flt.finalizing = false;
    if (rv != CKR_OK)
        flt.failed[FLT_FN_C_Finalize]++;
    flt.state_seq++;
    pthread_mutex_unlock(&flt.mu);
    flt_state_write();
    return rv;
}

static CK_RV w_C_GetInfo(CK_INFO_PTR pInfo)
{
    static const char desc[] = "p11fault";
    call_t c;
    CK_RV rv = call_begin(&c, FLT_FN_C_GetInfo, CALL_GLOBAL, 0);

    if (rv == CKR_OK)
        rv = call_delay(&c);
    if (rv == CKR_OK)
        rv = flt.real->C_GetInfo(pInfo);
    if (rv == CKR_OK) {
        memset(pInfo->libraryDescription, ' ', sizeof(pInfo->libraryDescription));
        memcpy(pInfo->libraryDescription, desc, sizeof(desc) - 1);
    }
    return call_end(&c, rv);
}

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList);

static CK_RV w_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    return C_GetFunctionList(ppFunctionList);
}

/* Slot list without removed cards when tokenPresent. */
static CK_RV w_C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount)
{
    call_t c;
    CK_SLOT_ID *ids = NULL;
    CK_ULONG n = 0, m = 0;
    CK_RV rv = call_begin(&c, FLT_FN_C_GetSlotList, CALL_GLOBAL, 0);

    if (rv == CKR_OK)
        rv = call_delay(&c);
    if (rv != CKR_OK)
        goto out;
    if (pulCount == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    if (!tokenPresent) {
        rv = flt.real->C_GetSlotList(CK_FALSE, pSlotList, pulCount);
        goto out;
    }
    do {
        free(ids);
        ids = NULL;
        if ((rv = flt.real->C_GetSlotList(CK_TRUE, NULL, &n)) != CKR_OK)
            goto out;
        if ((ids = calloc(n + 1, sizeof(*ids))) == NULL) {
            rv = CKR_HOST_MEMORY;
            goto out;
        }
        rv = flt.real->C_GetSlotList(CK_TRUE, ids, &n);
    } while (rv == CKR_BUFFER_TOO_SMALL);
    if (rv != CKR_OK)
        goto out;
    pthread_mutex_lock(&flt.mu);
    for (CK_ULONG i = 0; i < n; i++)
        if (!slot_removed_locked(ids[i]))
            ids[m++] = ids[i];
    pthread_mutex_unlock(&flt.mu);
    if (pSlotList != NULL && *pulCount < m)
        rv = CKR_BUFFER_TOO_SMALL;
    else if (pSlotList != NULL)
        memcpy(pSlotList, ids, m * sizeof(*ids));
    *pulCount = m;
out:
    free(ids);
    return call_end(&c, rv);
}

static CK_RV w_C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
    call_t c;
    CK_RV rv = call_begin(&c, FLT_FN_C_GetSlotInfo, CALL_SLOT, slotID);

    if (rv == CKR_OK)
        rv = call_delay(&c);
    if (rv == CKR_OK)
        rv = flt.real->C_GetSlotInfo(slotID, pInfo);
    if (rv == CKR_OK) {
        /* every slot is a reader the card can be pulled out of */
        pInfo->flags |= CKF_REMOVABLE_DEVICE;
        pthread_mutex_lock(&flt.mu);
        if (slot_removed_locked(slotID))
            pInfo->flags &= ~(CK_FLAGS)CKF_TOKEN_PRESENT;
        pthread_mutex_unlock(&flt.mu);
    }
    return call_end(&c, rv);
}

static CK_RV w_C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
    call_t c;
    CK_RV rv = call_begin(&c, FLT_FN_C_GetTokenInfo, CALL_SLOT, slotID);
    flt_slot_t *s;

    if (rv == CKR_OK)
        rv = call_delay(&c);
    if (rv != CKR_OK)
        goto out;
    pthread_mutex_lock(&flt.mu);
    rv = slot_removed_locked(slotID) ? CKR_TOKEN_NOT_PRESENT : CKR_OK;
    pthread_mutex_unlock(&flt.mu);
    if (rv == CKR_OK)
        rv = flt.real->C_GetTokenInfo(slotID, pInfo);
    if (rv != CKR_OK)
        goto out;
    pthread_mutex_lock(&flt.mu);
    slot_note_label_locked(slotID, pInfo->label);
    if ((s = slot_find_locked(slotID)) != NULL) {
        pInfo->flags |= s->forced_flags;
        if (s->pinpad)
            pInfo->flags |= CKF_PROTECTED_AUTHENTICATION_PATH;
        if (flt_slot_locked_out_locked(s))
            pInfo->flags |= CKF_USER_PIN_LOCKED;
        else if (flt.max_login_failures > 0 && s->login_failures + 1 == flt.max_login_failures)
            pInfo->flags |= CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_COUNT_LOW;
        else if (flt.max_login_failures > 0 && s->login_failures > 0)
            pInfo->flags |= CKF_USER_PIN_COUNT_LOW;
    }
    pthread_mutex_unlock(&flt.mu);
out:
    return call_end(&c, rv);
}

/* Slot functions that need the token: CKR_TOKEN_NOT_PRESENT without it. */
static CK_RV slot_call_begin(call_t *c, flt_fn_t fn, CK_SLOT_ID id)
{
    CK_RV rv = call_begin(c, fn, CALL_SLOT, id);

    if (rv == CKR_OK)
        rv = call_delay(c);
    if (rv == CKR_OK) {
        pthread_mutex_lock(&flt.mu);
        if (slot_removed_locked(id))
            rv = CKR_TOKEN_NOT_PRESENT;
        pthread_mutex_unlock(&flt.mu);
    }
    return rv;
}

static CK_RV w_C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pList, CK_ULONG_PTR pulCount)
{
    call_t c;
    CK_RV rv = slot_call_begin(&c, FLT_FN_C_GetMechanismList, slotID);

    if (rv == CKR_OK)
        rv = flt.real->C_GetMechanismList(slotID, pList, pulCount);
    return call_end(&c, rv);
}

static CK_RV w_C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo)
{
    call_t c;
    CK_RV rv = slot_call_begin(&c, FLT_FN_C_GetMechanismInfo, slotID);

    if (rv == CKR_OK)
        rv = flt.real->C_GetMechanismInfo(slotID, type, pInfo);
    return call_end(&c, rv);
}

static CK_RV w_C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
                           CK_UTF8CHAR_PTR pLabel)
{
    call_t c;
    CK_RV rv = slot_call_begin(&c, FLT_FN_C_InitToken, slotID);

    if (rv == CKR_OK)
        rv = flt.real->C_InitToken(slotID, pPin, ulPinLen, pLabel);
    return call_end(&c, rv);
}

static CK_RV w_C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication,
                             CK_NOTIFY Notify, CK_SESSION_HANDLE_PTR phSession)
{
    call_t c;
    CK_SESSION_HANDLE real;
    flt_session_t *s = NULL;
    unsigned long epoch = 0;
    CK_RV rv = slot_call_begin(&c, FLT_FN_C_OpenSession, slotID);

    if (rv != CKR_OK)
        goto out;
    if (phSession == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    pthread_mutex_lock(&flt.mu);
    s = flt_slot_get_locked(slotID) != NULL ? calloc(1, sizeof(*s)) : NULL;
    if (s != NULL)
        epoch = flt_slot_get_locked(slotID)->epoch;
    pthread_mutex_unlock(&flt.mu);
    if (s == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    /* callbacks would carry the real handle: not passed on */
    rv = flt.real->C_OpenSession(slotID, flags, NULL, NULL, &real);
    if (rv != CKR_OK) {
        free(s);
        goto out;
    }
    pthread_mutex_lock(&flt.mu);
    s->handle = flt.next_handle++;
    s->real = real;
    s->slot = slotID;
    s->real_open = s->linked = true;
    s->next = *bucket(s->handle);
    *bucket(s->handle) = s;
    flt.n_sessions++;
    if (flt_slot_get_locked(slotID)->epoch != epoch) {
        /* the card went away while the session was being opened */
        session_kill(s);
        rv = CKR_DEVICE_REMOVED;
    } else {
        *phSession = s->handle;
    }
    pthread_mutex_unlock(&flt.mu);
out:
    return call_end(&c, rv);
}

static CK_RV w_C_CloseSession(CK_SESSION_HANDLE hSession)
{
    call_t c;
    CK_RV rv = call_begin(&c, FLT_FN_C_CloseSession, CALL_SESSION, hSession);

    if (rv != CKR_OK && c.sess == NULL && c.has_slot && !c.injected) {
        /* a gone session: forget it, say so */
        flt_session_t *s;

        pthread_mutex_lock(&flt.mu);
        if ((s = session_find_locked(hSession)) != NULL)
            session_unlink_locked(s);
        pthread_mutex_unlock(&flt.mu);
        goto out;
    }
    if (rv == CKR_OK)
        rv = call_delay(&c);
    if (rv != CKR_OK)
        goto out;
    rv = flt.real->C_CloseSession(c.real);
    if (rv == CKR_OK) {
        pthread_mutex_lock(&flt.mu);
        c.sess->real_open = false;
        session_unlink_locked(c.sess);
        pthread_mutex_unlock(&flt.mu);
    }
out:
    return call_end(&c, rv);
}

static CK_RV w_C_CloseAllSessions(CK_SLOT_ID slotID)
{
    call_t c;
    bool removed;
    CK_RV rv = call_begin(&c, FLT_FN_C_CloseAllSessions, CALL_SLOT, slotID);

    if (rv == CKR_OK)
        rv = call_delay(&c);
    if (rv != CKR_OK)
        goto out;
    pthread_mutex_lock(&flt.mu);
    removed = slot_removed_locked(slotID);
    sessions_each_locked(false, slotID, removed ? session_drop_gone : session_forget);
    pthread_mutex_unlock(&flt.mu);
    if (!removed)
        rv = flt.real->C_CloseAllSessions(slotID);
out:
    return call_end(&c, rv);
}

/* A slot with an unreported change, or NULL. */
static flt_slot_t *take_event_locked(void)
{
    for (size_t i = 0; i < flt.n_slots; i++) {
        if (flt.slots[i].event) {
            flt.slots[i].event = false;
            flt.state_seq++;
            return &flt.slots[i];
        }
    }
    return NULL;
}

/* Reports removals and insertions made through the control file only (the
 * real module's own events are not passed on). Blocking callers poll the
 * control file too, so no watcher thread is needed for them. */
static CK_RV w_C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved)
{
    call_t c;
    flt_slot_t *s = NULL;
    struct timespec ts;
    CK_RV rv = call_begin(&c, FLT_FN_C_WaitForSlotEvent, CALL_GLOBAL, 0);

    if (rv != CKR_OK)
        goto out;
    if (pSlot == NULL || pReserved != NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    pthread_mutex_lock(&flt.mu);
    if (flags & CKF_DONT_BLOCK) {
        s = take_event_locked();
        rv = s != NULL ? CKR_OK : CKR_NO_EVENT;
    } else {
        flt.n_waiters++;
        for (;;) {
            if (flt.finalizing || !flt.initialized) {
                rv = CKR_CRYPTOKI_NOT_INITIALIZED;
                break;
            }
            if (flt_control_check_locked()) {
                pthread_mutex_unlock(&flt.mu);
                flt_state_write();
                pthread_mutex_lock(&flt.mu);
                continue;
            }
            if ((s = take_event_locked()) != NULL)
                break;
            deadline_after(&ts, WAIT_POLL_MS);
            pthread_cond_timedwait(&flt.event_cv, &flt.mu, &ts);
        }
        if (--flt.n_waiters == 0)
            pthread_cond_broadcast(&flt.idle_cv);
    }
    if (s != NULL)
        *pSlot = s->id;
    pthread_mutex_unlock(&flt.mu);
out:
    return call_end(&c, rv);
}

/* auth.c */
void flt_fill_auth(CK_FUNCTION_LIST *f);

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    if (ppFunctionList == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&flt.mu);
    flt.calls[FLT_FN_C_GetFunctionList]++;
    if (function_list.C_Initialize == NULL) {
        function_list.version.major = 2;
        function_list.version.minor = 40;
        flt_fill_forwarders(&function_list);
        flt_fill_auth(&function_list);
        function_list.C_GetSlotList = w_C_GetSlotList;
        function_list.C_GetSlotInfo = w_C_GetSlotInfo;
        function_list.C_GetTokenInfo = w_C_GetTokenInfo;
        function_list.C_GetMechanismList = w_C_GetMechanismList;
        function_list.C_GetMechanismInfo = w_C_GetMechanismInfo;
        function_list.C_InitToken = w_C_InitToken;
        function_list.C_OpenSession = w_C_OpenSession;
        function_list.C_CloseSession = w_C_CloseSession;
        function_list.C_CloseAllSessions = w_C_CloseAllSessions;
        function_list.C_WaitForSlotEvent = w_C_WaitForSlotEvent;
        function_list.C_GetInfo = w_C_GetInfo;
        function_list.C_GetFunctionList = w_C_GetFunctionList;
        function_list.C_Finalize = w_C_Finalize;
        function_list.C_Initialize = w_C_Initialize; /* last: marks it filled */
    }
    pthread_mutex_unlock(&flt.mu);
    *ppFunctionList = &function_list;
    return CKR_OK;
}
