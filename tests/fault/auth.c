/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11fault: C_Login (PIN pad, lock-out, context-specific logins),
 * CKA_ALWAYS_AUTHENTICATE, and the signing calls that enforce it.
 *
 * The real module knows nothing of always-authenticate: the wrapper marks
 * the keys, refuses C_Sign until a C_Login(CKU_CONTEXT_SPECIFIC) with the
 * user PIN (configured `user-pin`, else the PIN of the last good user
 * login), and ends the real signing operation itself when it refuses one.
 */
#include <stdlib.h>
#include <string.h>

#include "call.h"

#define MAX_SIG 16384

static bool pin_equal(const char *want, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
    return want != NULL && strlen(want) == len && memcmp(want, pin, len) == 0;
}

/* A wrong user PIN was entered on the slot. */
static void count_login_failure(CK_SLOT_ID id)
{
    flt_slot_t *s;

    pthread_mutex_lock(&flt.mu);
    if ((s = flt_slot_get_locked(id)) != NULL)
        s->login_failures++;
    pthread_mutex_unlock(&flt.mu);
}

/* C_Login(CKU_CONTEXT_SPECIFIC), handled here: only right after
 * C_SignInit on an always-authenticate key; allows one signature. */
static CK_RV context_login(call_t *c, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
    CK_RV rv = CKR_OK;

    pthread_mutex_lock(&flt.mu);
    if (!c->sess->aa_active)
        rv = CKR_OPERATION_NOT_INITIALIZED;
    else if (pin_equal(flt.user_pin != NULL ? flt.user_pin : flt.learned_pin, pin, len))
        c->sess->aa_authed = true;
    else
        rv = CKR_PIN_INCORRECT;
    pthread_mutex_unlock(&flt.mu);
    if (rv == CKR_PIN_INCORRECT)
        count_login_failure(c->slot);
    return rv;
}

static CK_RV w_C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin,
                       CK_ULONG ulPinLen)
{
    bool user = userType == CKU_USER || userType == CKU_CONTEXT_SPECIFIC;
    bool pad = false, cancel = false, check = false;
    char *pad_pin = NULL;
    long pad_ms = 0;
    flt_slot_t *s;
    call_t c;
    CK_RV rv = call_begin(&c, FLT_FN_C_Login, CALL_SESSION, hSession);

    if (rv == CKR_OK)
        rv = call_delay(&c);
    if (rv != CKR_OK)
        goto out;
    pthread_mutex_lock(&flt.mu);
    s = flt_slot_get_locked(c.slot);
    if (s != NULL && user && flt_slot_locked_out_locked(s))
        rv = CKR_PIN_LOCKED;
    if (s != NULL && pPin == NULL && s->pinpad) {
        pad = true;
        cancel = s->pad_cancel;
        pad_ms = s->pad_delay_ms;
        pad_pin = s->pad_pin != NULL ? strdup(s->pad_pin) : NULL;
    }
    check = userType == CKU_USER && flt.max_login_failures > 0 && flt.user_pin != NULL;
    pthread_mutex_unlock(&flt.mu);
    if (rv != CKR_OK)
        goto out;

    if (pPin == NULL) {
        /* the user types on the reader's PIN pad (or there is none) */
        if (pad && (rv = call_sleep(&c, pad_ms)) != CKR_OK)
            goto out;
        if (cancel) {
            rv = CKR_FUNCTION_CANCELED;
            goto out;
        }
        if (pad_pin == NULL) {
            rv = CKR_PIN_INCORRECT;
            if (user)
                count_login_failure(c.slot);
            goto out;
        }
        pPin = (CK_UTF8CHAR_PTR)pad_pin;
        ulPinLen = strlen(pad_pin);
    }
    if (userType == CKU_CONTEXT_SPECIFIC) {
        rv = context_login(&c, pPin, ulPinLen);
        goto out;
    }
    if (check) {
        /* the wrapper knows the PIN: wrong ones never reach the token */
        pthread_mutex_lock(&flt.mu);
        rv = pin_equal(flt.user_pin, pPin, ulPinLen) ? CKR_OK : CKR_PIN_INCORRECT;
        pthread_mutex_unlock(&flt.mu);
        if (rv != CKR_OK) {
            count_login_failure(c.slot);
            goto out;
        }
    }
    rv = flt.real->C_Login(c.real, userType, pPin, ulPinLen);
    if (userType != CKU_USER)
        goto out;
    if (rv == CKR_PIN_INCORRECT) {
        count_login_failure(c.slot);
    } else if (rv == CKR_OK) {
        char *learned = malloc(ulPinLen + 1);

        pthread_mutex_lock(&flt.mu);
        if ((s = flt_slot_get_locked(c.slot)) != NULL)
            s->login_failures = 0;
        if (learned != NULL) {
            memcpy(learned, pPin, ulPinLen);
            learned[ulPinLen] = '\0';
            flt_free_pin(flt.learned_pin);
            flt.learned_pin = learned;
        }
        pthread_mutex_unlock(&flt.mu);
    }
out:
    flt_free_pin(pad_pin);
    return call_end(&c, rv);
}

/* Whether key (seen through the real session) is an always-authenticate
 * private key by the control file. */
static bool key_always_auth(CK_SESSION_HANDLE real, CK_OBJECT_HANDLE key)
{
    CK_OBJECT_CLASS cls = 0;
    char label[256];
    CK_ATTRIBUTE a[] = {
        { CKA_CLASS, &cls, sizeof(cls) },
        { CKA_LABEL, label, sizeof(label) - 1 },
    };
    bool any, match = false;

    pthread_mutex_lock(&flt.mu);
    any = flt.aa_all || flt.n_aa_labels > 0;
    pthread_mutex_unlock(&flt.mu);
    if (!any)
        return false;
    if (flt.real->C_GetAttributeValue(real, key, a, 2) != CKR_OK || cls != CKO_PRIVATE_KEY)
        return false;
    label[a[1].ulValueLen] = '\0';
    pthread_mutex_lock(&flt.mu);
    match = flt.aa_all;
    for (size_t i = 0; i < flt.n_aa_labels && !match; i++)
        match = strcmp(flt.aa_labels[i], label) == 0;
    pthread_mutex_unlock(&flt.mu);
    return match;
}

static CK_RV w_C_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                                   CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
    CK_ULONG i, aa = ulCount;
    call_t c;
    CK_RV rv = call_begin(&c, FLT_FN_C_GetAttributeValue, CALL_SESSION, hSession);

    if (rv == CKR_OK)
        rv = call_delay(&c);
    if (rv != CKR_OK)
        goto out;
    rv = flt.real->C_GetAttributeValue(c.real, hObject, pTemplate, ulCount);
    rv = flt_lie_attributes(c.real, hObject, pTemplate, ulCount, rv);
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE &&
        rv != CKR_BUFFER_TOO_SMALL)
        goto out;
    for (i = 0; i < ulCount && pTemplate != NULL; i++)
        if (pTemplate[i].type == CKA_ALWAYS_AUTHENTICATE)
            aa = i;
    if (aa == ulCount || !key_always_auth(c.real, hObject))
        goto out;
    if (pTemplate[aa].pValue == NULL) {
        pTemplate[aa].ulValueLen = sizeof(CK_BBOOL);
    } else if (pTemplate[aa].ulValueLen < sizeof(CK_BBOOL)) {
        pTemplate[aa].ulValueLen = CK_UNAVAILABLE_INFORMATION;
        if (rv == CKR_OK)
            rv = CKR_BUFFER_TOO_SMALL;
    } else {
        *(CK_BBOOL *)pTemplate[aa].pValue = CK_TRUE;
        pTemplate[aa].ulValueLen = sizeof(CK_BBOOL);
    }
    if (rv == CKR_ATTRIBUTE_TYPE_INVALID) {
        /* the real module may not have known the attribute */
        rv = CKR_OK;
        for (i = 0; i < ulCount; i++)
            if (pTemplate[i].ulValueLen == CK_UNAVAILABLE_INFORMATION)
                rv = CKR_ATTRIBUTE_TYPE_INVALID;
    }
out:
    return call_end(&c, rv);
}

static CK_RV w_C_SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    bool aa = false;
    call_t c;
    CK_RV rv = call_begin(&c, FLT_FN_C_SignInit, CALL_SESSION, hSession);

    if (rv == CKR_OK)
        rv = call_delay(&c);
    if (rv != CKR_OK)
        goto out;
    aa = key_always_auth(c.real, hKey);
    rv = flt.real->C_SignInit(c.real, pMechanism, hKey);
    pthread_mutex_lock(&flt.mu);
    c.sess->aa_active = rv == CKR_OK && aa;
    c.sess->aa_authed = false;
    pthread_mutex_unlock(&flt.mu);
out:
    return call_end(&c, rv);
}

/* Ends the real signing operation: the card "failed" (injected error) or
 * refused (no context-specific login). data NULL: a multi-part one. */
static void end_real_sign(CK_SESSION_HANDLE real, CK_BYTE_PTR data, CK_ULONG len, bool one_part)
{
    CK_ULONG n = 0;
    CK_BYTE *buf;
    CK_RV rv = one_part ? flt.real->C_Sign(real, data, len, NULL, &n)
                        : flt.real->C_SignFinal(real, NULL, &n);

    if (rv != CKR_OK)
        return; /* the error ended it */
    if (n == 0 || n > MAX_SIG || (buf = malloc(n)) == NULL) {
        flt.real->C_SignFinal(real, NULL, NULL); /* CKR_ARGUMENTS_BAD ends it too */
        return;
    }
    if (one_part)
        flt.real->C_Sign(real, data, len, buf, &n);
    else
        flt.real->C_SignFinal(real, buf, &n);
    free(buf);
}

/* Before a signing call: may it go on? Ends the operation if not. */
static CK_RV sign_gate(call_t *c, CK_RV rv, bool length_query, CK_BYTE_PTR data, CK_ULONG len,
                       bool one_part)
{
    bool refuse;

    if (c->sess == NULL)
        return rv; /* no live session */
    if (rv == CKR_OK)
        rv = call_delay(c);
    if (rv == CKR_OK && length_query)
        return CKR_OK;
    pthread_mutex_lock(&flt.mu);
    refuse = c->sess->aa_active && !c->sess->aa_authed;
    pthread_mutex_unlock(&flt.mu);
    if (rv == CKR_OK && !refuse)
        return CKR_OK;
    if (rv == CKR_OK)
        rv = CKR_USER_NOT_LOGGED_IN;
    if (rv != CKR_DEVICE_REMOVED && rv != CKR_SESSION_HANDLE_INVALID)
        end_real_sign(c->real, data, len, one_part);
    return rv;
}

/* After a signing call: the operation is over unless it only told a size. */
static void sign_done(call_t *c, CK_RV rv, bool length_query, bool final)
{
    if (c->sess == NULL || (rv == CKR_OK && length_query) || rv == CKR_BUFFER_TOO_SMALL)
        return;
    if (rv == CKR_OK && !final)
        return;
    pthread_mutex_lock(&flt.mu);
    c->sess->aa_active = c->sess->aa_authed = false;
    pthread_mutex_unlock(&flt.mu);
}

static CK_RV w_C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                      CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
    bool query = pSignature == NULL;
    call_t c;
    CK_RV rv = call_begin(&c, FLT_FN_C_Sign, CALL_SESSION, hSession);

    rv = sign_gate(&c, rv, query, pData, ulDataLen, true);
    if (rv == CKR_OK)
        rv = flt.real->C_Sign(c.real, pData, ulDataLen, pSignature, pulSignatureLen);
    if (rv == CKR_OK && !query)
        flt_lie_sig_len(pulSignatureLen); /* `lie sig-len N` */
    sign_done(&c, rv, query, true);
    return call_end(&c, rv);
}

static CK_RV w_C_SignUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
    call_t c;
    CK_RV rv = call_begin(&c, FLT_FN_C_SignUpdate, CALL_SESSION, hSession);

    rv = sign_gate(&c, rv, false, NULL, 0, false);
    if (rv == CKR_OK)
        rv = flt.real->C_SignUpdate(c.real, pPart, ulPartLen);
    sign_done(&c, rv, false, false);
    return call_end(&c, rv);
}

static CK_RV w_C_SignFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature,
                           CK_ULONG_PTR pulSignatureLen)
{
    bool query = pSignature == NULL;
    call_t c;
    CK_RV rv = call_begin(&c, FLT_FN_C_SignFinal, CALL_SESSION, hSession);

    rv = sign_gate(&c, rv, query, NULL, 0, false);
    if (rv == CKR_OK)
        rv = flt.real->C_SignFinal(c.real, pSignature, pulSignatureLen);
    sign_done(&c, rv, query, true);
    return call_end(&c, rv);
}

void flt_fill_auth(CK_FUNCTION_LIST *f)
{
    f->C_Login = w_C_Login;
    f->C_GetAttributeValue = w_C_GetAttributeValue;
    f->C_SignInit = w_C_SignInit;
    f->C_Sign = w_C_Sign;
    f->C_SignUpdate = w_C_SignUpdate;
    f->C_SignFinal = w_C_SignFinal;
}
