/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * fakep11.so: a PKCS#11 module that answers from the fuzz input (see
 * fakep11.h). It models up to FAKE_MAX_SLOTS tokens with objects and
 * attributes, and lies where the input says so: lengths larger or smaller
 * than the value, CK_UNAVAILABLE_INFORMATION with CKR_OK, a written length
 * larger than the caller's buffer, more objects or slots than asked for,
 * odd return values. It never writes past a buffer the caller passed with
 * its length: those bugs would be the module's, not ours.
 *
 * Input layout read by C_Initialize (every field one byte unless said):
 *   n_slots-1 (& 1), then per slot:
 *     slot flags (bit0 CKF_HW_SLOT; lies: bit1 slot count, bit2 a handle
 *       naming no object, bit3 C_FindObjects count above its buffer)
 *     token flags (bits -> TOKEN_FLAGS[]), max sessions
 *     label, manufacturer, model, serial: length (% 33) + bytes
 *     mechanisms offered, mechanisms that can sign (bits -> MECHS[])
 *     n_objects (% FAKE_MAX_OBJS), per object:
 *       class (% 5 -> CLASSES[]), flags (bit0: private, hidden before login)
 *       n_attrs (% FAKE_MAX_ATTRS), per attribute:
 *         type (% -> ATTR_TYPES[]), lie, length (2 bytes LE), value bytes
 * Later calls: C_Login and C_Sign read one selector byte each (% -> their
 * CK_RV tables); C_Sign then a lie byte, a length (2 bytes) and the bytes.
 * C_DecryptInit and C_Decrypt are C_SignInit and C_Sign.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

#include "fakep11.h"

#ifndef CKA_PUBLIC_KEY_INFO
#define CKA_PUBLIC_KEY_INFO 0x129UL
#endif
#ifndef CKM_EDDSA
#define CKM_EDDSA 0x1057UL
#endif

#define FAKE_MAX_SLOTS 2
#define FAKE_MAX_OBJS 8
#define FAKE_MAX_ATTRS 12
#define FAKE_MAX_SESSIONS 64
#define FAKE_HANDLE_COPY 0x1000UL /* a C_CopyObject copy of object h: h | this */

static const CK_ATTRIBUTE_TYPE ATTR_TYPES[] = {
    CKA_ID, CKA_LABEL, CKA_KEY_TYPE, CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_EC_PARAMS,
    CKA_EC_POINT, CKA_VALUE, CKA_PUBLIC_KEY_INFO, CKA_SIGN, CKA_ALWAYS_AUTHENTICATE,
    CKA_PRIVATE, CKA_TOKEN, CKA_CERTIFICATE_TYPE, CKA_CLASS, CKA_MODULUS_BITS,
};
static const CK_OBJECT_CLASS CLASSES[] = {
    CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKO_CERTIFICATE, CKO_DATA, CKO_SECRET_KEY,
};
static const CK_FLAGS TOKEN_FLAGS[] = {
    CKF_LOGIN_REQUIRED, CKF_PROTECTED_AUTHENTICATION_PATH, CKF_USER_PIN_COUNT_LOW,
    CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED, CKF_WRITE_PROTECTED, CKF_RNG,
    CKF_USER_PIN_INITIALIZED,
};
static const CK_MECHANISM_TYPE MECHS[] = {
    CKM_RSA_PKCS, CKM_RSA_PKCS_PSS, CKM_ECDSA, CKM_EDDSA, CKM_SHA256_RSA_PKCS, CKM_RSA_X_509,
    CKM_ECDSA_SHA256, CKM_AES_CBC,
};
static const CK_RV LOGIN_RVS[] = {
    CKR_OK, CKR_PIN_INCORRECT, CKR_PIN_LOCKED, CKR_USER_ALREADY_LOGGED_IN, CKR_DEVICE_REMOVED,
    CKR_GENERAL_ERROR, CKR_PIN_LEN_RANGE, CKR_TOKEN_NOT_PRESENT, CKR_SESSION_HANDLE_INVALID,
    CKR_USER_TYPE_INVALID,
};
static const CK_RV SIGN_RVS[] = {
    CKR_OK, CKR_USER_NOT_LOGGED_IN, CKR_DEVICE_REMOVED, CKR_BUFFER_TOO_SMALL, CKR_DEVICE_ERROR,
    CKR_KEY_HANDLE_INVALID, CKR_MECHANISM_INVALID, CKR_SESSION_CLOSED, CKR_DATA_LEN_RANGE,
    CKR_FUNCTION_FAILED, CKR_OK, CKR_OK, CKR_ENCRYPTED_DATA_INVALID,
};
#define N(a) (sizeof(a) / sizeof((a)[0]))

typedef struct fake_attr {
    CK_ATTRIBUTE_TYPE type;
    uint8_t lie;
    uint8_t *val;
    size_t len;
} fake_attr_t;

typedef struct fake_obj {
    bool private_obj;
    fake_attr_t attrs[FAKE_MAX_ATTRS + 1]; /* + CKA_CLASS */
    size_t n_attrs;
} fake_obj_t;

typedef struct fake_slot {
    CK_SLOT_INFO sinfo;
    CK_TOKEN_INFO tinfo;
    uint8_t lies;
    uint8_t mechs, sign_mechs;
    fake_obj_t objs[FAKE_MAX_OBJS];
    size_t n_objs;
    bool logged_in;
} fake_slot_t;

typedef struct fake_session {
    bool open;
    CK_SLOT_ID slot;
    /* C_FindObjects state: the template's matches, in order */
    CK_OBJECT_HANDLE found[FAKE_MAX_OBJS + 1];
    size_t n_found, next_found;
    bool finding;
    CK_OBJECT_HANDLE sign_key;
} fake_session_t;

static struct {
    const uint8_t *p;
    size_t len;
    bool initialized;
    fake_slot_t slots[FAKE_MAX_SLOTS];
    size_t n_slots;
    fake_session_t sessions[FAKE_MAX_SESSIONS];
    unsigned honest; /* FAKEP11_HONEST: lies not told */
} fk;

/* Lie classes, for FAKEP11_HONEST (a bit mask): a long run can switch off a
 * lie whose bug is known and being fixed, to find the next one. */
#define LIE_SLOT_COUNT 1u
#define LIE_FIND_COUNT 2u
#define LIE_BAD_HANDLE 4u
#define LIE_ATTR_LEN 8u
#define LIE_SIGN_LEN 16u

static bool may_lie(unsigned cls)
{
    return !(fk.honest & cls);
}

/* --- the input --- */

void fakep11_set_input(const uint8_t *data, size_t len)
{
    fk.p = data;
    fk.len = len;
}

uint8_t fakep11_u8(void)
{
    if (fk.len == 0)
        return 0;
    fk.len--;
    return *fk.p++;
}

size_t fakep11_left(void)
{
    return fk.len;
}

const uint8_t *fakep11_take(size_t max, size_t *ret_len)
{
    const uint8_t *p = fk.p;
    size_t n = max < fk.len ? max : fk.len;

    fk.p += n;
    fk.len -= n;
    *ret_len = n;
    return p;
}

static size_t u16(void)
{
    size_t lo = fakep11_u8();

    return lo | (size_t)fakep11_u8() << 8;
}

/* A blank-padded CK string: a length byte and that many bytes. */
static void ck_string(unsigned char *out, size_t cap)
{
    size_t n = fakep11_u8() % (cap + 1), got;
    const uint8_t *p = fakep11_take(n, &got);

    memset(out, ' ', cap);
    memcpy(out, p, got);
}

/* --- the model --- */

static void model_free(void)
{
    for (size_t s = 0; s < fk.n_slots; s++)
        for (size_t o = 0; o < fk.slots[s].n_objs; o++)
            for (size_t a = 0; a < fk.slots[s].objs[o].n_attrs; a++)
                free(fk.slots[s].objs[o].attrs[a].val);
    memset(fk.slots, 0, sizeof(fk.slots));
    memset(fk.sessions, 0, sizeof(fk.sessions));
    fk.n_slots = 0;
}

static CK_RV model_read(void)
{
    fk.n_slots = 1 + (fakep11_u8() & 1);
    for (size_t s = 0; s < fk.n_slots; s++) {
        fake_slot_t *sl = &fk.slots[s];
        uint8_t tflags, sflags;

        sflags = fakep11_u8();
        sl->lies = sflags;
        sl->sinfo.flags = CKF_TOKEN_PRESENT | ((sflags & 1) ? CKF_HW_SLOT : 0);
        memset(sl->sinfo.slotDescription, ' ', sizeof(sl->sinfo.slotDescription));
        memset(sl->sinfo.manufacturerID, ' ', sizeof(sl->sinfo.manufacturerID));
        tflags = fakep11_u8();
        sl->tinfo.flags = CKF_TOKEN_INITIALIZED;
        for (size_t i = 0; i < N(TOKEN_FLAGS); i++)
            if (tflags & (1u << i))
                sl->tinfo.flags |= TOKEN_FLAGS[i];
        sl->tinfo.ulMaxSessionCount = fakep11_u8();
        sl->tinfo.ulMaxPinLen = 64;
        sl->tinfo.ulMinPinLen = 1;
        ck_string(sl->tinfo.label, sizeof(sl->tinfo.label));
        ck_string(sl->tinfo.manufacturerID, sizeof(sl->tinfo.manufacturerID));
        ck_string(sl->tinfo.model, sizeof(sl->tinfo.model));
        ck_string(sl->tinfo.serialNumber, sizeof(sl->tinfo.serialNumber));
        memset(sl->tinfo.utcTime, ' ', sizeof(sl->tinfo.utcTime));
        sl->mechs = fakep11_u8();
        sl->sign_mechs = fakep11_u8();
        sl->n_objs = fakep11_u8() % (FAKE_MAX_OBJS + 1);
        for (size_t o = 0; o < sl->n_objs; o++) {
            fake_obj_t *ob = &sl->objs[o];
            CK_OBJECT_CLASS cls = CLASSES[fakep11_u8() % N(CLASSES)];
            size_t n;

            ob->private_obj = fakep11_u8() & 1;
            ob->attrs[0].type = CKA_CLASS;
            ob->attrs[0].val = malloc(sizeof(cls));
            if (ob->attrs[0].val == NULL)
                return CKR_HOST_MEMORY;
            memcpy(ob->attrs[0].val, &cls, sizeof(cls));
            ob->attrs[0].len = sizeof(cls);
            ob->n_attrs = 1;
            n = fakep11_u8() % (FAKE_MAX_ATTRS + 1);
            for (size_t a = 0; a < n; a++) {
                fake_attr_t *at = &ob->attrs[ob->n_attrs];
                const uint8_t *p;
                size_t want, got;

                at->type = ATTR_TYPES[fakep11_u8() % N(ATTR_TYPES)];
                at->lie = fakep11_u8();
                want = u16();
                p = fakep11_take(want, &got);
                at->val = malloc(got ? got : 1);
                if (at->val == NULL)
                    return CKR_HOST_MEMORY;
                memcpy(at->val, p, got);
                at->len = got;
                ob->n_attrs++;
            }
        }
    }
    return CKR_OK;
}

static fake_slot_t *slot_get(CK_SLOT_ID id)
{
    return fk.initialized && id < fk.n_slots ? &fk.slots[id] : NULL;
}

static fake_session_t *session_get(CK_SESSION_HANDLE h)
{
    if (!fk.initialized || h == 0 || h > FAKE_MAX_SESSIONS || !fk.sessions[h - 1].open)
        return NULL;
    return &fk.sessions[h - 1];
}

/* Object handle: slot * 100 + index + 1 (so handles differ across slots). */
static fake_obj_t *object_get(fake_session_t *s, CK_OBJECT_HANDLE h)
{
    fake_slot_t *sl = slot_get(s->slot);
    size_t i;

    h &= ~FAKE_HANDLE_COPY;
    if (sl == NULL || h < s->slot * 100 + 1)
        return NULL;
    i = h - s->slot * 100 - 1;
    if (i >= sl->n_objs || (sl->objs[i].private_obj && !sl->logged_in))
        return NULL;
    return &sl->objs[i];
}

static fake_attr_t *attr_get(fake_obj_t *o, CK_ATTRIBUTE_TYPE type)
{
    for (size_t i = 0; i < o->n_attrs; i++)
        if (o->attrs[i].type == type)
            return &o->attrs[i];
    return NULL;
}

/* --- the functions --- */

static CK_FUNCTION_LIST fake_functions;

static CK_RV fake_initialize(CK_VOID_PTR args)
{
    CK_RV rv;

    const char *h = getenv("FAKEP11_HONEST");

    if (fk.initialized)
        return CKR_CRYPTOKI_ALREADY_INITIALIZED;
    fk.honest = h != NULL ? (unsigned)strtoul(h, NULL, 0) : 0;
    rv = model_read();
    if (rv != CKR_OK) {
        model_free();
        return rv;
    }
    fk.initialized = true;
    return CKR_OK;
}

static CK_RV fake_finalize(CK_VOID_PTR reserved)
{
    if (!fk.initialized)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    model_free();
    fk.initialized = false;
    return CKR_OK;
}

static void pad(unsigned char *s, size_t n, const char *text)
{
    memset(s, ' ', n);
    memcpy(s, text, strlen(text) < n ? strlen(text) : n);
}

static CK_RV fake_get_info(CK_INFO_PTR info)
{
    if (!fk.initialized)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    memset(info, 0, sizeof(*info));
    info->cryptokiVersion.major = 2;
    info->cryptokiVersion.minor = 40;
    pad(info->manufacturerID, sizeof(info->manufacturerID), "p11agent fuzz");
    pad(info->libraryDescription, sizeof(info->libraryDescription), "fakep11");
    return CKR_OK;
}

static CK_RV fake_get_slot_list(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
    CK_ULONG n = fk.n_slots;

    if (!fk.initialized)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (count == NULL)
        return CKR_ARGUMENTS_BAD;
    if (list != NULL) {
        if (*count < n) {
            *count = n;
            return CKR_BUFFER_TOO_SMALL;
        }
        for (CK_ULONG i = 0; i < n; i++)
            list[i] = i;
        /* lie: claim more slots than were written (and than the buffer) */
        if ((fk.slots[0].lies & 2) && may_lie(LIE_SLOT_COUNT))
            n += 3;
    }
    *count = n;
    return CKR_OK;
}

static CK_RV fake_get_slot_info(CK_SLOT_ID id, CK_SLOT_INFO_PTR info)
{
    fake_slot_t *sl = slot_get(id);

    if (sl == NULL)
        return CKR_SLOT_ID_INVALID;
    *info = sl->sinfo;
    return CKR_OK;
}

static CK_RV fake_get_token_info(CK_SLOT_ID id, CK_TOKEN_INFO_PTR info)
{
    fake_slot_t *sl = slot_get(id);

    if (sl == NULL)
        return CKR_SLOT_ID_INVALID;
    *info = sl->tinfo;
    return CKR_OK;
}

static CK_RV fake_get_mechanism_list(CK_SLOT_ID id, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count)
{
    fake_slot_t *sl = slot_get(id);
    CK_ULONG n = 0;

    if (sl == NULL)
        return CKR_SLOT_ID_INVALID;
    for (size_t i = 0; i < N(MECHS); i++) {
        if (!(sl->mechs & (1u << i)))
            continue;
        if (list != NULL) {
            if (n >= *count)
                return CKR_BUFFER_TOO_SMALL;
            list[n] = MECHS[i];
        }
        n++;
    }
    *count = n;
    return CKR_OK;
}

static CK_RV fake_get_mechanism_info(CK_SLOT_ID id, CK_MECHANISM_TYPE type,
                                     CK_MECHANISM_INFO_PTR info)
{
    fake_slot_t *sl = slot_get(id);

    if (sl == NULL)
        return CKR_SLOT_ID_INVALID;
    for (size_t i = 0; i < N(MECHS); i++) {
        if (MECHS[i] != type || !(sl->mechs & (1u << i)))
            continue;
        info->ulMinKeySize = 256;
        info->ulMaxKeySize = 4096;
        info->flags = (sl->sign_mechs & (1u << i)) ? CKF_SIGN : CKF_VERIFY;
        return CKR_OK;
    }
    return CKR_MECHANISM_INVALID;
}

static CK_RV fake_open_session(CK_SLOT_ID id, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                               CK_SESSION_HANDLE_PTR ret)
{
    if (slot_get(id) == NULL)
        return CKR_SLOT_ID_INVALID;
    if (!(flags & CKF_SERIAL_SESSION))
        return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
    for (size_t i = 0; i < FAKE_MAX_SESSIONS; i++) {
        if (fk.sessions[i].open)
            continue;
        memset(&fk.sessions[i], 0, sizeof(fk.sessions[i]));
        fk.sessions[i].open = true;
        fk.sessions[i].slot = id;
        *ret = i + 1;
        return CKR_OK;
    }
    return CKR_SESSION_COUNT;
}

static CK_RV fake_close_session(CK_SESSION_HANDLE h)
{
    fake_session_t *s = session_get(h);

    if (s == NULL)
        return CKR_SESSION_HANDLE_INVALID;
    s->open = false;
    return CKR_OK;
}

static CK_RV fake_close_all_sessions(CK_SLOT_ID id)
{
    for (size_t i = 0; i < FAKE_MAX_SESSIONS; i++)
        if (fk.sessions[i].slot == id)
            fk.sessions[i].open = false;
    return CKR_OK;
}

static CK_RV fake_get_session_info(CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR info)
{
    fake_session_t *s = session_get(h);

    if (s == NULL)
        return CKR_SESSION_HANDLE_INVALID;
    memset(info, 0, sizeof(*info));
    info->slotID = s->slot;
    info->flags = CKF_SERIAL_SESSION;
    info->state = fk.slots[s->slot].logged_in ? CKS_RO_USER_FUNCTIONS : CKS_RO_PUBLIC_SESSION;
    return CKR_OK;
}

static CK_RV fake_login(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
    fake_session_t *s = session_get(h);
    CK_RV rv;

    if (s == NULL)
        return CKR_SESSION_HANDLE_INVALID;
    rv = LOGIN_RVS[fakep11_u8() % N(LOGIN_RVS)];
    if (rv == CKR_OK && user == CKU_USER)
        fk.slots[s->slot].logged_in = true;
    return rv;
}

static CK_RV fake_logout(CK_SESSION_HANDLE h)
{
    fake_session_t *s = session_get(h);

    if (s == NULL)
        return CKR_SESSION_HANDLE_INVALID;
    if (!fk.slots[s->slot].logged_in)
        return CKR_USER_NOT_LOGGED_IN;
    fk.slots[s->slot].logged_in = false;
    return CKR_OK;
}

static CK_RV fake_copy_object(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR tmpl,
                              CK_ULONG n, CK_OBJECT_HANDLE_PTR ret)
{
    fake_session_t *s = session_get(h);

    if (s == NULL)
        return CKR_SESSION_HANDLE_INVALID;
    if (object_get(s, o) == NULL)
        return CKR_OBJECT_HANDLE_INVALID;
    *ret = o | FAKE_HANDLE_COPY;
    return CKR_OK;
}

static CK_RV fake_destroy_object(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o)
{
    fake_session_t *s = session_get(h);

    if (s == NULL)
        return CKR_SESSION_HANDLE_INVALID;
    return object_get(s, o) != NULL && (o & FAKE_HANDLE_COPY) ? CKR_OK : CKR_OBJECT_HANDLE_INVALID;
}

/* One attribute, with the lie its model entry asks for:
 *   0 truthful; 1 size query says more; 2 size query says less;
 *   3 a short buffer gets CKR_OK and the full length (more than it holds);
 *   4 size query says huge; 5 size query says CK_UNAVAILABLE_INFORMATION
 *   with CKR_OK; 6 a filled value claims 1000 bytes more than the buffer. */
static CK_RV get_one(fake_obj_t *o, CK_ATTRIBUTE_PTR a)
{
    fake_attr_t *at = attr_get(o, a->type);
    uint8_t lie;

    if (at == NULL) {
        a->ulValueLen = CK_UNAVAILABLE_INFORMATION;
        return CKR_ATTRIBUTE_TYPE_INVALID;
    }
    lie = may_lie(LIE_ATTR_LEN) ? at->lie % 8 : 0;
    if (a->pValue == NULL) {
        a->ulValueLen = at->len;
        if (lie == 1)
            a->ulValueLen += 1 + at->lie / 8;
        else if (lie == 2)
            a->ulValueLen -= at->len < 1u + at->lie / 8 ? at->len : 1u + at->lie / 8;
        else if (lie == 4)
            a->ulValueLen = 0x7fffffffUL + at->lie;
        else if (lie == 5)
            a->ulValueLen = CK_UNAVAILABLE_INFORMATION;
        return CKR_OK;
    }
    if (a->ulValueLen < at->len) {
        if (lie == 3) {
            memcpy(a->pValue, at->val, a->ulValueLen);
            a->ulValueLen = at->len;
            return CKR_OK;
        }
        a->ulValueLen = CK_UNAVAILABLE_INFORMATION;
        return CKR_BUFFER_TOO_SMALL;
    }
    memcpy(a->pValue, at->val, at->len);
    a->ulValueLen = lie == 6 ? a->ulValueLen + 1000 : at->len;
    return CKR_OK;
}

static CK_RV fake_get_attribute_value(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE oh,
                                      CK_ATTRIBUTE_PTR tmpl, CK_ULONG n)
{
    fake_session_t *s = session_get(h);
    fake_obj_t *o;
    CK_RV rv = CKR_OK;

    if (s == NULL)
        return CKR_SESSION_HANDLE_INVALID;
    if ((o = object_get(s, oh)) == NULL)
        return CKR_OBJECT_HANDLE_INVALID;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_RV r = get_one(o, &tmpl[i]);

        if (r != CKR_OK && rv == CKR_OK)
            rv = r;
    }
    return rv;
}

static bool matches(fake_obj_t *o, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n)
{
    for (CK_ULONG i = 0; i < n; i++) {
        fake_attr_t *at = attr_get(o, tmpl[i].type);

        if (at == NULL || at->len != tmpl[i].ulValueLen
            || (at->len > 0 && memcmp(at->val, tmpl[i].pValue, at->len) != 0))
            return false;
    }
    return true;
}

static CK_RV fake_find_objects_init(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n)
{
    fake_session_t *s = session_get(h);
    fake_slot_t *sl;

    if (s == NULL)
        return CKR_SESSION_HANDLE_INVALID;
    if (s->finding)
        return CKR_OPERATION_ACTIVE;
    sl = &fk.slots[s->slot];
    s->n_found = s->next_found = 0;
    for (size_t i = 0; i < sl->n_objs; i++)
        if ((!sl->objs[i].private_obj || sl->logged_in) && matches(&sl->objs[i], tmpl, n))
            s->found[s->n_found++] = s->slot * 100 + i + 1;
    /* lie: a handle that names no object */
    if ((sl->lies & 4) && may_lie(LIE_BAD_HANDLE) && s->n_found < N(s->found))
        s->found[s->n_found++] = 9999;
    s->finding = true;
    return CKR_OK;
}

static CK_RV fake_find_objects(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR out, CK_ULONG max,
                               CK_ULONG_PTR ret_n)
{
    fake_session_t *s = session_get(h);
    CK_ULONG n = 0;

    if (s == NULL)
        return CKR_SESSION_HANDLE_INVALID;
    if (!s->finding)
        return CKR_OPERATION_NOT_INITIALIZED;
    while (n < max && s->next_found < s->n_found)
        out[n++] = s->found[s->next_found++];
    /* lie: claim more handles than the buffer holds */
    if ((fk.slots[s->slot].lies & 8) && may_lie(LIE_FIND_COUNT) && n > 0)
        n = max + 1;
    *ret_n = n;
    return CKR_OK;
}

static CK_RV fake_find_objects_final(CK_SESSION_HANDLE h)
{
    fake_session_t *s = session_get(h);

    if (s == NULL)
        return CKR_SESSION_HANDLE_INVALID;
    if (!s->finding)
        return CKR_OPERATION_NOT_INITIALIZED;
    s->finding = false;
    return CKR_OK;
}

static CK_RV fake_sign_init(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key)
{
    fake_session_t *s = session_get(h);

    if (s == NULL)
        return CKR_SESSION_HANDLE_INVALID;
    if (object_get(s, key) == NULL)
        return CKR_KEY_HANDLE_INVALID;
    if (mech == NULL)
        return CKR_ARGUMENTS_BAD;
    s->sign_key = key;
    return CKR_OK;
}

/* Answer: selector (SIGN_RVS), lie, length (2 bytes), bytes. Lies: 1 a
 * short buffer gets CKR_OK and the full length; 2 the size query says
 * less; 3 a filled signature claims more than the buffer. */
static CK_RV fake_sign(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig,
                       CK_ULONG_PTR sig_len)
{
    fake_session_t *s = session_get(h);
    CK_RV rv;
    uint8_t lie;
    const uint8_t *p;
    size_t want, got;

    if (s == NULL)
        return CKR_SESSION_HANDLE_INVALID;
    if (s->sign_key == 0)
        return CKR_OPERATION_NOT_INITIALIZED;
    rv = SIGN_RVS[fakep11_u8() % N(SIGN_RVS)];
    lie = fakep11_u8() % 4;
    if (!may_lie(LIE_SIGN_LEN))
        lie = 0;
    want = u16();
    p = fakep11_take(want, &got);
    if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL) {
        s->sign_key = 0;
        return rv;
    }
    if (sig == NULL) {
        *sig_len = lie == 2 && want > 0 ? want - 1 : want;
        return CKR_OK;
    }
    if (*sig_len < want || rv == CKR_BUFFER_TOO_SMALL) {
        if (lie == 1) {
            memcpy(sig, p, got < *sig_len ? got : *sig_len);
            *sig_len = want;
            s->sign_key = 0;
            return CKR_OK;
        }
        *sig_len = want;
        return CKR_BUFFER_TOO_SMALL;
    }
    memset(sig, 0, want);
    memcpy(sig, p, got);
    *sig_len = lie == 3 ? *sig_len + 4096 : want;
    s->sign_key = 0;
    return CKR_OK;
}

static CK_RV fake_wait_for_slot_event(CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV fake_not_supported(void)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

FAKEP11_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ret)
{
    CK_RV (**fn)(void) = (CK_RV (**)(void))&fake_functions.C_Initialize;
    size_t n = (sizeof(fake_functions) - offsetof(CK_FUNCTION_LIST, C_Initialize))
               / sizeof(*fn);

    if (ret == NULL)
        return CKR_ARGUMENTS_BAD;
    /* Every entry not set below answers CKR_FUNCTION_NOT_SUPPORTED; they
     * take arguments, but none is called by the token layer. */
    for (size_t i = 0; i < n; i++)
        fn[i] = fake_not_supported;
    fake_functions.version.major = 2;
    fake_functions.version.minor = 40;
    fake_functions.C_Initialize = fake_initialize;
    fake_functions.C_Finalize = fake_finalize;
    fake_functions.C_GetInfo = fake_get_info;
    fake_functions.C_GetFunctionList = C_GetFunctionList;
    fake_functions.C_GetSlotList = fake_get_slot_list;
    fake_functions.C_GetSlotInfo = fake_get_slot_info;
    fake_functions.C_GetTokenInfo = fake_get_token_info;
    fake_functions.C_GetMechanismList = fake_get_mechanism_list;
    fake_functions.C_GetMechanismInfo = fake_get_mechanism_info;
    fake_functions.C_OpenSession = fake_open_session;
    fake_functions.C_CloseSession = fake_close_session;
    fake_functions.C_CloseAllSessions = fake_close_all_sessions;
    fake_functions.C_GetSessionInfo = fake_get_session_info;
    fake_functions.C_Login = fake_login;
    fake_functions.C_Logout = fake_logout;
    fake_functions.C_CopyObject = fake_copy_object;
    fake_functions.C_DestroyObject = fake_destroy_object;
    fake_functions.C_GetAttributeValue = fake_get_attribute_value;
    fake_functions.C_FindObjectsInit = fake_find_objects_init;
    fake_functions.C_FindObjects = fake_find_objects;
    fake_functions.C_FindObjectsFinal = fake_find_objects_final;
    fake_functions.C_SignInit = fake_sign_init;
    fake_functions.C_Sign = fake_sign;
    /* C_Decrypt answers from the input as C_Sign does (same selector, lie,
     * length and bytes): lengths beyond the modulus, short buffers, odd
     * return values */
    fake_functions.C_DecryptInit = fake_sign_init;
    fake_functions.C_Decrypt = fake_sign;
    fake_functions.C_WaitForSlotEvent = fake_wait_for_slot_event;
    *ret = &fake_functions;
    return CKR_OK;
}
