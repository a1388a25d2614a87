/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11fault: slots. Card removal and insertion, the slot and token calls
 * that show them, and C_WaitForSlotEvent.
 */
#include <stdlib.h>
#include <string.h>

#include "call.h"

/* how often a blocked C_WaitForSlotEvent looks at the control file */
#define WAIT_POLL_MS 100

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

flt_slot_t *flt_slot_find_locked(CK_SLOT_ID id)
{
    for (size_t i = 0; i < flt.n_slots; i++)
        if (flt.slots[i].id == id)
            return &flt.slots[i];
    return NULL;
}

bool flt_slot_removed_locked(CK_SLOT_ID id)
{
    const flt_slot_t *s = flt_slot_find_locked(id);

    return s != NULL && s->removed;
}

bool flt_slot_locked_out_locked(const flt_slot_t *s)
{
    return flt.max_login_failures > 0 && s->login_failures >= flt.max_login_failures;
}

/* Remembers the token label for the state file. */
void flt_slot_note_label_locked(CK_SLOT_ID id, const CK_UTF8CHAR *label)
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
    flt_sessions_each_locked(false, s->id, flt_session_kill);
    flt.state_seq++;
    pthread_cond_broadcast(&flt.event_cv);
}

void flt_slot_insert_locked(flt_slot_t *s)
{
    if (!s->removed)
        return;
    s->removed = false;
    s->event = true;
    flt_sessions_each_locked(false, s->id, flt_session_drop_gone);
    flt.state_seq++;
    pthread_cond_broadcast(&flt.event_cv);
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
        if (!flt_slot_removed_locked(ids[i]))
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
        if (flt_slot_removed_locked(slotID))
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
    rv = flt_slot_removed_locked(slotID) ? CKR_TOKEN_NOT_PRESENT : CKR_OK;
    pthread_mutex_unlock(&flt.mu);
    if (rv == CKR_OK)
        rv = flt.real->C_GetTokenInfo(slotID, pInfo);
    if (rv != CKR_OK)
        goto out;
    pthread_mutex_lock(&flt.mu);
    flt_slot_note_label_locked(slotID, pInfo->label);
    if ((s = flt_slot_find_locked(slotID)) != NULL) {
        pInfo->flags |= s->forced_flags;
        if (s->pinpad)
            pInfo->flags |= CKF_PROTECTED_AUTHENTICATION_PATH;
        if (flt_slot_locked_out_locked(s))
            pInfo->flags |= CKF_USER_PIN_LOCKED;
        else if (flt.max_login_failures > 0 && s->login_failures + 1 == flt.max_login_failures)
            pInfo->flags |= CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_COUNT_LOW;
        else if (flt.max_login_failures > 0 && s->login_failures > 0)
            pInfo->flags |= CKF_USER_PIN_COUNT_LOW;
        flt_lie_token_info_locked(s, pInfo);
    }
    if (flt.session_limit > 0 && flt.session_limit_info) {
        pInfo->ulMaxSessionCount = flt.session_limit;
        pInfo->ulMaxRwSessionCount = flt.session_limit;
    }
    pthread_mutex_unlock(&flt.mu);
out:
    return call_end(&c, rv);
}

/* Slot functions that need the token: CKR_TOKEN_NOT_PRESENT without it. */
CK_RV flt_slot_call_begin(call_t *c, flt_fn_t fn, CK_SLOT_ID id)
{
    CK_RV rv = call_begin(c, fn, CALL_SLOT, id);

    if (rv == CKR_OK)
        rv = call_delay(c);
    if (rv == CKR_OK) {
        pthread_mutex_lock(&flt.mu);
        if (flt_slot_removed_locked(id))
            rv = CKR_TOKEN_NOT_PRESENT;
        pthread_mutex_unlock(&flt.mu);
    }
    return rv;
}

static CK_RV w_C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pList, CK_ULONG_PTR pulCount)
{
    call_t c;
    CK_RV rv = flt_slot_call_begin(&c, FLT_FN_C_GetMechanismList, slotID);

    if (rv == CKR_OK)
        rv = flt.real->C_GetMechanismList(slotID, pList, pulCount);
    return call_end(&c, rv);
}

static CK_RV w_C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo)
{
    call_t c;
    CK_RV rv = flt_slot_call_begin(&c, FLT_FN_C_GetMechanismInfo, slotID);

    if (rv == CKR_OK)
        rv = flt.real->C_GetMechanismInfo(slotID, type, pInfo);
    return call_end(&c, rv);
}

static CK_RV w_C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
                           CK_UTF8CHAR_PTR pLabel)
{
    call_t c;
    CK_RV rv = flt_slot_call_begin(&c, FLT_FN_C_InitToken, slotID);

    if (rv == CKR_OK)
        rv = flt.real->C_InitToken(slotID, pPin, ulPinLen, pLabel);
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
            flt_deadline_after(&ts, WAIT_POLL_MS);
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

void flt_fill_slots(CK_FUNCTION_LIST *f)
{
    f->C_GetSlotList = w_C_GetSlotList;
    f->C_GetSlotInfo = w_C_GetSlotInfo;
    f->C_GetTokenInfo = w_C_GetTokenInfo;
    f->C_GetMechanismList = w_C_GetMechanismList;
    f->C_GetMechanismInfo = w_C_GetMechanismInfo;
    f->C_InitToken = w_C_InitToken;
    f->C_WaitForSlotEvent = w_C_WaitForSlotEvent;
}
