/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11fault: a module that lies. Answers no honest module gives, so tests can
 * show that the agent bounds and checks everything a module returns:
 *
 *   lie sig-len N                 a C_Sign into a buffer that succeeds claims N
 *                                 bytes (CKR_OK), more than the buffer holds
 *   lie huge ATTR [LABEL...]      C_GetAttributeValue gives ATTR the length
 *                                 0xfffffff0: length queries CKR_OK, reads
 *                                 into a buffer CKR_BUFFER_TOO_SMALL
 *   lie grow ATTR [LABEL...]      a read into a buffer fills it, then claims
 *                                 4096 bytes more than it holds (CKR_OK)
 *   lie garbage ATTR [LABEL...]   a read into a buffer gets garbage instead of
 *                                 the value (see GARBAGE; at most its length)
 *   lie token-label SLOT [off]    (control.c) the token label is 32 bytes of
 *                                 invalid UTF-8, no blank padding
 *   lie sig-len off | lie ATTR off | lie off (every lie, not token-label)
 *
 * ATTR: CKA_EC_POINT, CKA_EC_PARAMS, CKA_VALUE, CKA_MODULUS,
 * CKA_PUBLIC_EXPONENT, CKA_LABEL, CKA_ID, CKA_PUBLIC_KEY_INFO or a number.
 * With LABELs, only objects whose CKA_LABEL is one of them are lied about.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "p11fault.h"

#ifndef CKA_PUBLIC_KEY_INFO
#define CKA_PUBLIC_KEY_INFO 0x129UL
#endif

#define MAX_LIES 16
#define HUGE_LEN 0xfffffff0UL
#define GROW_BY 4096

/* A DER header that claims 4 GiB, then text: not a point, an OID, a
 * certificate or a modulus of any sane size. */
static const unsigned char GARBAGE[] = { 0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 'g', 'a',
                                         'r',  'b',  'a',  'g',  'e',  0xff, 0x00, 0x01 };

typedef enum lie_kind { LIE_HUGE = 1, LIE_GROW, LIE_GARBAGE } lie_kind_t;

struct flt_lie {
    lie_kind_t kind;
    CK_ATTRIBUTE_TYPE type;
    char **labels; /* NULL: every object */
    size_t n_labels;
};

static const struct {
    const char *name;
    CK_ATTRIBUTE_TYPE type;
} attr_names[] = {
    { "CKA_EC_POINT", CKA_EC_POINT },   { "CKA_EC_PARAMS", CKA_EC_PARAMS },
    { "CKA_VALUE", CKA_VALUE },         { "CKA_MODULUS", CKA_MODULUS },
    { "CKA_PUBLIC_EXPONENT", CKA_PUBLIC_EXPONENT },
    { "CKA_LABEL", CKA_LABEL },         { "CKA_ID", CKA_ID },
    { "CKA_PUBLIC_KEY_INFO", CKA_PUBLIC_KEY_INFO },
};

static bool parse_attr(const char *s, CK_ATTRIBUTE_TYPE *ret)
{
    char *end;
    unsigned long v;

    for (size_t i = 0; i < sizeof(attr_names) / sizeof(attr_names[0]); i++)
        if (strcmp(attr_names[i].name, s) == 0) {
            *ret = attr_names[i].type;
            return true;
        }
    if (*s == '\0' || *s == '-')
        return false;
    v = strtoul(s, &end, 0);
    if (*end != '\0')
        return false;
    *ret = v;
    return true;
}

static void lie_free(struct flt_lie *l)
{
    for (size_t i = 0; i < l->n_labels; i++)
        free(l->labels[i]);
    free(l->labels);
    l->labels = NULL;
    l->n_labels = 0;
}

/* Drops the lies about type (all of them when all). */
static void drop_lies_locked(bool all, CK_ATTRIBUTE_TYPE type)
{
    size_t k = 0;

    for (size_t i = 0; i < flt.n_lies; i++) {
        if (all || flt.lies[i].type == type)
            lie_free(&flt.lies[i]);
        else
            flt.lies[k++] = flt.lies[i];
    }
    flt.n_lies = k;
    if (k == 0) {
        free(flt.lies);
        flt.lies = NULL;
    }
}

void flt_lie_reset_locked(void)
{
    drop_lies_locked(true, 0);
    flt.lie_sig_len = 0;
    for (size_t i = 0; i < flt.n_slots; i++)
        flt.slots[i].lie_label = false;
}

bool flt_lie_cmd_locked(size_t n, char *const *w, char *err, size_t err_size)
{
    static const char usage[] =
        "usage: lie sig-len N|off | lie huge|grow|garbage ATTR [LABEL...] | lie ATTR off | "
        "lie off | lie token-label SLOT [off]";
    struct flt_lie l = { 0 };
    CK_ATTRIBUTE_TYPE type;
    unsigned long v;
    char *end;

    if (n == 2 && strcmp(w[1], "off") == 0) {
        drop_lies_locked(true, 0);
        flt.lie_sig_len = 0;
        return true;
    }
    if (n == 3 && strcmp(w[1], "sig-len") == 0) {
        if (strcmp(w[2], "off") == 0) {
            flt.lie_sig_len = 0;
            return true;
        }
        v = strtoul(w[2], &end, 0);
        if (*w[2] == '\0' || *w[2] == '-' || *end != '\0' || v == 0)
            goto bad;
        flt.lie_sig_len = v;
        return true;
    }
    if (n == 3 && strcmp(w[2], "off") == 0 && parse_attr(w[1], &type)) {
        drop_lies_locked(false, type);
        return true;
    }
    if (n < 3 || !parse_attr(w[2], &type))
        goto bad;
    if (strcmp(w[1], "huge") == 0)
        l.kind = LIE_HUGE;
    else if (strcmp(w[1], "grow") == 0)
        l.kind = LIE_GROW;
    else if (strcmp(w[1], "garbage") == 0)
        l.kind = LIE_GARBAGE;
    else
        goto bad;
    l.type = type;
    if (n > 3) {
        l.labels = calloc(n - 3, sizeof(char *));
        if (l.labels == NULL)
            goto nomem;
        for (size_t i = 3; i < n; i++) {
            if ((l.labels[l.n_labels] = strdup(w[i])) == NULL)
                goto nomem;
            l.n_labels++;
        }
    }
    drop_lies_locked(false, type); /* one lie per attribute */
    if (flt.n_lies == 0 && (flt.lies = calloc(MAX_LIES, sizeof(*flt.lies))) == NULL)
        goto nomem;
    if (flt.n_lies == MAX_LIES) {
        snprintf(err, err_size, "lie: more than %d attribute lies", MAX_LIES);
        lie_free(&l);
        return false;
    }
    flt.lies[flt.n_lies++] = l;
    return true;
nomem:
    lie_free(&l);
    snprintf(err, err_size, "lie: out of memory");
    return false;
bad:
    snprintf(err, err_size, "%s", usage);
    return false;
}

/* Does the lie apply to obj (its CKA_LABEL, read from the real module)? */
static bool lie_matches(const struct flt_lie *l, CK_SESSION_HANDLE real, CK_OBJECT_HANDLE obj)
{
    char label[256];
    CK_ATTRIBUTE a = { CKA_LABEL, label, sizeof(label) - 1 };

    if (l->n_labels == 0)
        return true;
    if (flt.real->C_GetAttributeValue(real, obj, &a, 1) != CKR_OK ||
        a.ulValueLen >= sizeof(label))
        return false;
    label[a.ulValueLen] = '\0';
    for (size_t i = 0; i < l->n_labels; i++)
        if (strcmp(l->labels[i], label) == 0)
            return true;
    return false;
}

CK_RV flt_lie_attributes(CK_SESSION_HANDLE real, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR t,
                         CK_ULONG n, CK_RV rv)
{
    if (t == NULL || (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL))
        return rv;
    /* flt.mu across the label look-up in the real module, as control.c
     * does for slot look-ups: a quick call, never a blocking one */
    pthread_mutex_lock(&flt.mu);
    for (size_t i = 0; i < flt.n_lies; i++) {
        const struct flt_lie *l = &flt.lies[i];

        for (CK_ULONG k = 0; k < n; k++) {
            CK_ATTRIBUTE *a = &t[k];

            if (a->type != l->type || a->ulValueLen == CK_UNAVAILABLE_INFORMATION ||
                !lie_matches(l, real, obj))
                continue;
            switch (l->kind) {
            case LIE_HUGE:
                if (a->pValue != NULL)
                    rv = CKR_BUFFER_TOO_SMALL;
                a->ulValueLen = HUGE_LEN;
                break;
            case LIE_GROW:
                if (a->pValue != NULL && rv == CKR_OK)
                    a->ulValueLen += GROW_BY;
                break;
            case LIE_GARBAGE:
                if (a->pValue != NULL && rv == CKR_OK) {
                    CK_ULONG len = a->ulValueLen < sizeof(GARBAGE) ? a->ulValueLen
                                                                  : sizeof(GARBAGE);

                    memcpy(a->pValue, GARBAGE, len);
                    a->ulValueLen = len;
                }
                break;
            }
        }
    }
    pthread_mutex_unlock(&flt.mu);
    return rv;
}

void flt_lie_sig_len(CK_ULONG_PTR len)
{
    CK_ULONG v;

    pthread_mutex_lock(&flt.mu);
    v = flt.lie_sig_len;
    pthread_mutex_unlock(&flt.mu);
    if (v != 0 && len != NULL)
        *len = v;
}

void flt_lie_token_info_locked(const flt_slot_t *s, CK_TOKEN_INFO_PTR info)
{
    /* stray continuation bytes, a cut sequence, 0xff; no blank at the end */
    static const unsigned char bad[32] = { 0xff, 0xfe, 'l',  'i',  'a',  'r',  0xc3, 0x28,
                                           0x80, 0x80, 0xed, 0xa0, 0x80, 'x',  0xe2, 0x82,
                                           '\n', 'e',  'v',  'i',  'l',  0xf8, 0x88, 0x80,
                                           0x80, 0x80, 'z',  'z',  'z',  'z',  'z',  0xc3 };

    if (s != NULL && s->lie_label)
        memcpy(info->label, bad, sizeof(info->label));
}
