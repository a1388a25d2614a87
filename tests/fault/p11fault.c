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
 * This file: the call frame, initialisation, the function list. slot.c:
 * slots, removal, slot events. session.c: session handles. auth.c: login,
 * PIN pad, always-authenticate, signing. forward.c: the rest.
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
#define FIRST_HANDLE 0x1001

flt_t flt = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .event_cv = PTHREAD_COND_INITIALIZER,
    .idle_cv = PTHREAD_COND_INITIALIZER,
    .watch_cv = PTHREAD_COND_INITIALIZER,
    .hold_cv = PTHREAD_COND_INITIALIZER,
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

void flt_deadline_after(struct timespec *ts, long ms)
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

/* ----------------------------------------------------------- call frame */

CK_RV call_begin(call_t *c, flt_fn_t fn, call_kind_t kind, CK_ULONG id)
{
    CK_RV rv = CKR_OK;
    /* control_path is set once by the first C_Initialize (under flt.mu)
     * and never changes: stat() the file before taking the lock */
    const char *ctl = __atomic_load_n(&flt.control_path, __ATOMIC_ACQUIRE);
    struct stat st;
    bool have_st = ctl != NULL && stat(ctl, &st) == 0;

    memset(c, 0, sizeof(*c));
    c->fn = fn;
    pthread_mutex_lock(&flt.mu);
    flt.calls[fn]++;
    if (++flt.inflight[fn] > flt.inflight_max[fn])
        flt.inflight_max[fn] = flt.inflight[fn];
    flt.state_seq++;
    if (!flt.initialized || flt.finalizing) {
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
        goto out;
    }
    if (have_st)
        flt_control_check_stat_locked(&st);
    else
        flt_control_check_locked(); /* the first call after C_Initialize set the path */
    if (kind == CALL_SLOT) {
        c->slot = id;
        c->has_slot = true;
    } else if (kind == CALL_SESSION) {
        flt_session_t *s = flt_session_find_locked(id);

        if (s == NULL) {
            rv = CKR_SESSION_HANDLE_INVALID;
            goto out;
        }
        c->slot = s->slot;
        c->has_slot = true;
        if (s->gone) {
            rv = flt_slot_removed_locked(s->slot) ? CKR_DEVICE_REMOVED : CKR_SESSION_HANDLE_INVALID;
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
        rv = flt_slot_removed_locked(c->slot) ? CKR_DEVICE_REMOVED : CKR_SESSION_HANDLE_INVALID;
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

static bool held_locked(const call_t *c)
{
    const flt_slot_t *s = c->has_slot ? flt_slot_find_locked(c->slot) : NULL;

    return flt.initialized && !flt.finalizing && (flt.hold[c->fn] || (s != NULL && s->hold[c->fn]));
}

/* Waits while a `hold` covers this call. The control file is checked here
 * too (every 50 ms), so a release is seen without the watcher thread. */
static CK_RV call_hold(call_t *c)
{
    struct timespec ts;
    bool waited = false;

    pthread_mutex_lock(&flt.mu);
    if (held_locked(c)) {
        waited = true;
        flt.held[c->fn]++;
        flt.state_seq++;
        /* the test reads the state file to see who is waiting */
        pthread_mutex_unlock(&flt.mu);
        flt_state_write();
        pthread_mutex_lock(&flt.mu);
        while (held_locked(c)) {
            flt_deadline_after(&ts, 50);
            pthread_cond_timedwait(&flt.hold_cv, &flt.mu, &ts);
            flt_control_check_locked();
        }
        flt.held[c->fn]--;
        flt.state_seq++;
    }
    pthread_mutex_unlock(&flt.mu);
    return waited ? call_recheck(c) : CKR_OK;
}

CK_RV call_delay(call_t *c)
{
    long ms;
    CK_RV rv;

    pthread_mutex_lock(&flt.mu);
    ms = flt.delay_ms[c->fn];
    if (c->has_slot) {
        const flt_slot_t *s = flt_slot_find_locked(c->slot);

        if (s != NULL && s->delay_ms[c->fn] >= 0)
            ms = s->delay_ms[c->fn];
    }
    pthread_mutex_unlock(&flt.mu);
    rv = call_sleep(c, ms);
    if (rv == CKR_OK)
        rv = call_hold(c);
    return rv;
}

CK_RV call_end(call_t *c, CK_RV rv)
{
    pthread_mutex_lock(&flt.mu);
    flt.inflight[c->fn]--;
    if (rv != CKR_OK)
        flt.failed[c->fn]++;
    if (c->sess != NULL)
        flt_session_release_locked(c->sess);
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
            flt_slot_note_label_locked(ids[i], ti.label);
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
        flt_deadline_after(&ts, WATCH_MS);
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
        __atomic_store_n(&flt.control_path, env_dup("P11FAULT_CONTROL"), __ATOMIC_RELEASE);
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
    pthread_cond_broadcast(&flt.hold_cv);
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
    flt_sessions_each_locked(true, 0, flt_session_free_any);
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
        flt_fill_slots(&function_list);
        flt_fill_sessions(&function_list);
        function_list.C_GetInfo = w_C_GetInfo;
        function_list.C_GetFunctionList = w_C_GetFunctionList;
        function_list.C_Finalize = w_C_Finalize;
        function_list.C_Initialize = w_C_Initialize; /* last: marks it filled */
    }
    pthread_mutex_unlock(&flt.mu);
    *ppFunctionList = &function_list;
    return CKR_OK;
}
