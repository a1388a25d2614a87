/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11fault: sessions. Our own handles (never reused) mapped to the real
 * module's, so that sessions killed by a removal stay dead.
 */
#include <stdlib.h>

#include "call.h"

static flt_session_t **bucket(CK_SESSION_HANDLE h)
{
    return &flt.buckets[h % FLT_BUCKETS];
}

flt_session_t *flt_session_find_locked(CK_SESSION_HANDLE h)
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
    }
    if (s->busy == 0) {
        session_close_real_locked(s);
        free(s);
    }
}

void flt_session_release_locked(flt_session_t *s)
{
    if (--s->busy > 0)
        return;
    if (s->gone)
        session_close_real_locked(s);
    if (!s->linked)
        free(s);
}

/* Calls fn on every session (of slot, unless any); fn may unlink. */
void flt_sessions_each_locked(bool any, CK_SLOT_ID slot, void (*fn)(flt_session_t *s))
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

void flt_session_kill(flt_session_t *s)
{
    s->gone = true;
    s->aa_active = s->aa_authed = false;
    session_close_real_locked(s);
}

void flt_session_drop_gone(flt_session_t *s)
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

void flt_session_free_any(flt_session_t *s)
{
    s->busy = 0;
    s->real_open = false; /* the real C_Finalize closes them */
    session_unlink_locked(s);
}

/* Sessions of ours open on the slot (not those a removal killed). */
static unsigned long live_sessions_locked(CK_SLOT_ID slot)
{
    unsigned long n = 0;

    for (size_t b = 0; b < FLT_BUCKETS; b++)
        for (const flt_session_t *s = flt.buckets[b]; s != NULL; s = s->next)
            n += s->linked && !s->gone && s->slot == slot;
    return n;
}

static CK_RV w_C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication,
                             CK_NOTIFY Notify, CK_SESSION_HANDLE_PTR phSession)
{
    call_t c;
    CK_SESSION_HANDLE real;
    flt_session_t *s = NULL;
    flt_slot_t *slot;
    unsigned long epoch = 0;
    CK_RV rv = flt_slot_call_begin(&c, FLT_FN_C_OpenSession, slotID);

    if (rv != CKR_OK)
        goto out;
    if (phSession == NULL) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    if ((s = calloc(1, sizeof(*s))) == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    pthread_mutex_lock(&flt.mu);
    if ((slot = flt_slot_get_locked(slotID)) != NULL) {
        epoch = slot->epoch;
        /* `limit sessions N`: the ones open and the ones being opened */
        if (flt.session_limit > 0 &&
            live_sessions_locked(slotID) + slot->opening >= flt.session_limit) {
            pthread_mutex_unlock(&flt.mu);
            free(s);
            rv = CKR_SESSION_COUNT;
            goto out;
        }
        slot->opening++;
    }
    pthread_mutex_unlock(&flt.mu);
    /* callbacks would carry the real handle: not passed on */
    rv = flt.real->C_OpenSession(slotID, flags, NULL, NULL, &real);
    pthread_mutex_lock(&flt.mu);
    if ((slot = flt_slot_find_locked(slotID)) != NULL && slot->opening > 0)
        slot->opening--;
    if (rv != CKR_OK) {
        pthread_mutex_unlock(&flt.mu);
        free(s);
        goto out;
    }
    s->handle = flt.next_handle++;
    s->real = real;
    s->slot = slotID;
    s->real_open = s->linked = true;
    s->next = *bucket(s->handle);
    *bucket(s->handle) = s;
    slot = flt_slot_get_locked(slotID);
    if (slot != NULL && slot->epoch != epoch) {
        /* the card went away while the session was being opened */
        flt_session_kill(s);
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
        if ((s = flt_session_find_locked(hSession)) != NULL)
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
    removed = flt_slot_removed_locked(slotID);
    flt_sessions_each_locked(false, slotID, removed ? flt_session_drop_gone : session_forget);
    pthread_mutex_unlock(&flt.mu);
    if (!removed)
        rv = flt.real->C_CloseAllSessions(slotID);
out:
    return call_end(&c, rv);
}

void flt_fill_sessions(CK_FUNCTION_LIST *f)
{
    f->C_OpenSession = w_C_OpenSession;
    f->C_CloseSession = w_C_CloseSession;
    f->C_CloseAllSessions = w_C_CloseAllSessions;
}
