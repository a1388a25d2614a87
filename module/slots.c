/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Slots, tokens, mechanisms and slot events of p11agent-pkcs11.so: one slot
 * per token the agent has served since C_Initialize (module.c lists them:
 * mod_refresh), its ID kept for the life of the process.
 */
#include <string.h>
#include <time.h>

#include "state.h"

/* C_WaitForSlotEvent without CKF_DONT_BLOCK asks the agent this often. */
#define EVENT_POLL_MS 1000

/* ------------------------------------------------------------ slots */

CK_RV mod_C_GetSlotList(CK_BBOOL present_only, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
    CK_ULONG n = 0;
    CK_RV rv;

    if (count == NULL)
        return CKR_ARGUMENTS_BAD;
    mod_check_fork();
    /* a length query lists again; the call that fills the list uses the
     * same state (the usual two calls must agree), unless nothing was
     * listed yet (a program passing a big enough array at once) */
    mod_refresh(list == NULL ? MOD_REFRESH_STALE : MOD_REFRESH_FIRST);
    rv = mod_enter();
    if (rv != CKR_OK)
        return rv;
    for (size_t i = 0; i < mod_g.n_slots; i++) {
        if (present_only && !mod_g.slots[i].present)
            continue;
        if (list != NULL && n < *count)
            list[n] = i;
        n++;
    }
    if (list != NULL && n > *count)
        rv = CKR_BUFFER_TOO_SMALL;
    *count = n;
    mod_leave();
    return rv;
}

CK_RV mod_enter_slot(CK_SLOT_ID id, bool need_token, mod_slot_t **ret)
{
    CK_RV rv = mod_enter();

    if (rv != CKR_OK)
        return rv;
    if (id >= mod_g.n_slots)
        rv = CKR_SLOT_ID_INVALID;
    else if (need_token && !mod_g.slots[id].present)
        rv = CKR_TOKEN_NOT_PRESENT;
    if (rv != CKR_OK) {
        mod_leave();
        return rv;
    }
    *ret = &mod_g.slots[id];
    return CKR_OK;
}

CK_RV mod_C_GetSlotInfo(CK_SLOT_ID id, CK_SLOT_INFO_PTR info)
{
    mod_slot_t *s;
    CK_RV rv;

    if (info == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = mod_enter_slot(id, false, &s);
    if (rv != CKR_OK)
        return rv;
    memset(info, 0, sizeof(*info));
    memcpy(info->slotDescription, s->description, sizeof(info->slotDescription));
    mod_pad_str(info->manufacturerID, sizeof(info->manufacturerID), MOD_MANUFACTURER);
    info->flags = CKF_REMOVABLE_DEVICE | (s->present ? CKF_TOKEN_PRESENT : 0);
    mod_leave();
    return rv;
}

CK_RV mod_C_GetTokenInfo(CK_SLOT_ID id, CK_TOKEN_INFO_PTR info)
{
    mod_slot_t *s;
    CK_RV rv;

    if (info == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = mod_enter_slot(id, true, &s);
    if (rv != CKR_OK)
        return rv;
    memset(info, 0, sizeof(*info));
    memcpy(info->label, s->label, sizeof(info->label));
    memcpy(info->manufacturerID, s->manufacturer, sizeof(info->manufacturerID));
    memcpy(info->model, s->model, sizeof(info->model));
    memcpy(info->serialNumber, s->serial, sizeof(info->serialNumber));
    /* no CKF_LOGIN_REQUIRED: the agent logs in and asks for the PIN */
    info->flags = CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED;
    info->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
    info->ulSessionCount = CK_UNAVAILABLE_INFORMATION;
    info->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
    info->ulRwSessionCount = CK_UNAVAILABLE_INFORMATION;
    info->ulMaxPinLen = 0;
    info->ulMinPinLen = 0;
    info->ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
    info->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
    info->ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
    info->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
    memset(info->utcTime, ' ', sizeof(info->utcTime));
    mod_leave();
    return rv;
}

/* Lock held: the mechanisms the slot's keys can use, by bit in the table. */
static uint64_t slot_mechs_locked(const mod_slot_t *s, uint32_t *ret_min, uint32_t *ret_max,
                                  const mod_mech_t *only)
{
    size_t n_all;
    const mod_mech_t *all = mod_mech_all(&n_all);
    uint64_t set = 0;
    uint32_t lo = 0, hi = 0;

    for (size_t k = 0; k < s->n_keys; k++) {
        const mod_key_t *key = &s->keys[k];

        if (key->type == BUS_KEY_UNKNOWN)
            continue;
        for (size_t i = 0; i < n_all && i < 64; i++) {
            if (!mod_mech_key_ok(&all[i], key->type, key->flags))
                continue;
            set |= 1ull << i;
            if (only == &all[i]) {
                if (lo == 0 || key->bits < lo)
                    lo = key->bits;
                if (key->bits > hi)
                    hi = key->bits;
            }
        }
    }
    if (ret_min)
        *ret_min = lo;
    if (ret_max)
        *ret_max = hi;
    return set;
}

CK_RV mod_C_GetMechanismList(CK_SLOT_ID id, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count)
{
    size_t n_all;
    const mod_mech_t *all = mod_mech_all(&n_all);
    mod_slot_t *s;
    uint64_t set;
    CK_ULONG n = 0;
    CK_RV rv;

    if (count == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = mod_enter_slot(id, true, &s);
    if (rv != CKR_OK)
        return rv;
    set = slot_mechs_locked(s, NULL, NULL, NULL);
    for (size_t i = 0; i < n_all && i < 64; i++) {
        if (!(set & (1ull << i)))
            continue;
        if (list != NULL && n < *count)
            list[n] = all[i].type;
        n++;
    }
    if (list != NULL && n > *count)
        rv = CKR_BUFFER_TOO_SMALL;
    *count = n;
    mod_leave();
    return rv;
}

CK_RV mod_C_GetMechanismInfo(CK_SLOT_ID id, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info)
{
    const mod_mech_t *m = mod_mech_find(type);
    size_t n_all;
    const mod_mech_t *all = mod_mech_all(&n_all);
    mod_slot_t *s;
    uint32_t lo, hi;
    CK_RV rv;

    if (info == NULL)
        return CKR_ARGUMENTS_BAD;
    rv = mod_enter_slot(id, true, &s);
    if (rv != CKR_OK)
        return rv;
    if (m == NULL || !(slot_mechs_locked(s, &lo, &hi, m) & (1ull << (m - all)))) {
        rv = CKR_MECHANISM_INVALID;
        goto out;
    }
    memset(info, 0, sizeof(*info));
    info->ulMinKeySize = lo;
    info->ulMaxKeySize = hi;
    info->flags = CKF_SIGN;
    if (m->alg == BUS_SIG_ECDSA)
        info->flags |= CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
out:
    mod_leave();
    return rv;
}

static bool take_event_locked(CK_SLOT_ID *ret)
{
    for (size_t i = 0; i < mod_g.n_slots; i++) {
        if (mod_g.slots[i].event) {
            mod_g.slots[i].event = false;
            *ret = i;
            return true;
        }
    }
    return false;
}

CK_RV mod_C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved)
{
    CK_RV rv;

    if (slot == NULL || reserved != NULL)
        return CKR_ARGUMENTS_BAD;
    mod_check_fork();
    mod_refresh(MOD_REFRESH_FORCE);
    rv = mod_enter();
    if (rv != CKR_OK)
        return rv;
    /* counted as a call in flight for the whole wait: C_Finalize wakes
     * this thread and waits until it has left */
    mod_g.calls++;
    for (;;) {
        struct timespec until;

        if (take_event_locked(slot))
            break;
        if (flags & CKF_DONT_BLOCK) {
            rv = CKR_NO_EVENT;
            break;
        }
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += EVENT_POLL_MS / 1000;
        pthread_cond_timedwait(&mod_g.cond, &mod_g.lock, &until);
        if (!mod_g.initialized) {
            rv = CKR_CRYPTOKI_NOT_INITIALIZED;
            break;
        }
        if (take_event_locked(slot))
            break;
        mod_leave();
        mod_refresh(MOD_REFRESH_FORCE);
        pthread_mutex_lock(&mod_g.lock);
        if (!mod_g.initialized) {
            rv = CKR_CRYPTOKI_NOT_INITIALIZED;
            break;
        }
    }
    mod_call_end_locked();
    mod_leave();
    return rv;
}
