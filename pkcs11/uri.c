/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* RFC 7512 URIs: formatting and matching through p11-kit's P11KitUri. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "tok-internal.h"

/* PKCS#11 pads its fixed-size strings with blanks, but some modules pad
 * with NULs (tpm2-pkcs11's model is "SW   TPM" and eight NULs) or end the
 * text early with one (tok_ck_string reads them the same way). URIs are
 * built and compared on the blank-padded form: the text up to the first
 * NUL, then blanks. So a canonical URI never carries %00, and an old URI
 * or key-reference file that does (the NULs percent-encoded) still
 * matches. A field whose first byte is NUL is "not given" in a parsed
 * P11KitUri and formats as nothing; empty_is_blank says whether such a
 * field is an empty string (a module's info) or stays as it is (a URI). */
void tok_ck_unpad(unsigned char *s, size_t n, bool empty_is_blank)
{
    size_t end = 0;

    if (s == NULL || n == 0 || (s[0] == '\0' && !empty_is_blank))
        return;
    while (end < n && s[end] != '\0')
        end++;
    memset(s + end, ' ', n - end);
}

#define UNPAD(field, blank) tok_ck_unpad((field), sizeof(field), (blank))

static void unpad_token_info(CK_TOKEN_INFO *ti, bool blank)
{
    UNPAD(ti->label, blank);
    UNPAD(ti->manufacturerID, blank);
    UNPAD(ti->model, blank);
    UNPAD(ti->serialNumber, blank);
}

static void unpad_slot_info(CK_SLOT_INFO *si, bool blank)
{
    UNPAD(si->slotDescription, blank);
    UNPAD(si->manufacturerID, blank);
}

static void unpad_module_info(CK_INFO *mi, bool blank)
{
    UNPAD(mi->manufacturerID, blank);
    UNPAD(mi->libraryDescription, blank);
}

static char *format_uri(const CK_TOKEN_INFO *info, const tok_key_t *k)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE a;
    P11KitUri *u;
    char *s = NULL;

    u = p11_kit_uri_new();
    if (u == NULL)
        return NULL;
    memcpy(p11_kit_uri_get_token_info(u), info, sizeof(*info));
    /* p11-kit trims the blanks, not the NULs */
    unpad_token_info(p11_kit_uri_get_token_info(u), false);
    if (k != NULL) {
        a = (CK_ATTRIBUTE){ CKA_CLASS, &cls, sizeof(cls) };
        if (p11_kit_uri_set_attribute(u, &a) != P11_KIT_URI_OK)
            goto out;
        if (k->id_len > 0) {
            a = (CK_ATTRIBUTE){ CKA_ID, k->id, k->id_len };
            if (p11_kit_uri_set_attribute(u, &a) != P11_KIT_URI_OK)
                goto out;
        }
        if (k->label != NULL && k->label[0] != '\0') {
            a = (CK_ATTRIBUTE){ CKA_LABEL, k->label, strlen(k->label) };
            if (p11_kit_uri_set_attribute(u, &a) != P11_KIT_URI_OK)
                goto out;
        }
    }
    if (p11_kit_uri_format(u, k != NULL ? P11_KIT_URI_FOR_OBJECT_ON_TOKEN : P11_KIT_URI_FOR_TOKEN,
                           &s) != P11_KIT_URI_OK)
        s = NULL;
out:
    p11_kit_uri_free(u);
    return s;
}

char *tok_uri_for_token(const CK_TOKEN_INFO *info)
{
    return format_uri(info, NULL);
}

char *tok_uri_for_key(const CK_TOKEN_INFO *info, const tok_key_t *k)
{
    return format_uri(info, k);
}

static int parse_uri(const char *s, P11KitUri **ret)
{
    P11KitUri *u;

    if (s == NULL)
        return TOK_ERR_ARGS;
    u = p11_kit_uri_new();
    if (u == NULL)
        return TOK_ERR_NO_MEMORY;
    if (p11_kit_uri_parse(s, P11_KIT_URI_FOR_ANY, u) != P11_KIT_URI_OK) {
        p11_kit_uri_free(u);
        return TOK_ERR_ARGS;
    }
    /* model=SW%20%20%20TPM%00%00... (as URIs were made before) matches */
    unpad_module_info(p11_kit_uri_get_module_info(u), false);
    unpad_slot_info(p11_kit_uri_get_slot_info(u), false);
    unpad_token_info(p11_kit_uri_get_token_info(u), false);
    *ret = u;
    return TOK_OK;
}

int tok_uri_check(const char *uri)
{
    P11KitUri *u = NULL;
    int r = parse_uri(uri, &u);

    if (r != TOK_OK)
        return r;
    /* an attribute p11-kit does not know makes the URI match nothing */
    r = p11_kit_uri_any_unrecognized(u) ? TOK_ERR_ARGS : TOK_OK;
    p11_kit_uri_free(u);
    return r;
}

static bool match_module(P11KitUri *u, const tok_module_t *m)
{
    const char *name = p11_kit_uri_get_module_name(u);
    const char *path = p11_kit_uri_get_module_path(u);
    CK_INFO info;

    if (m->have_info) {
        info = m->info;
        unpad_module_info(&info, true);
        if (!p11_kit_uri_match_module_info(u, &info))
            return false;
    }
    if (name != NULL && (m->name == NULL || strcmp(name, m->name) != 0))
        return false;
    if (path != NULL) {
        const char *base = m->path != NULL ? strrchr(m->path, '/') : NULL;

        if (m->path == NULL)
            return false;
        if (strcmp(path, m->path) != 0 && (base == NULL || strcmp(path, base + 1) != 0))
            return false;
    }
    return true;
}

static bool match_token(P11KitUri *u, tok_token_t *t)
{
    CK_SLOT_ID want_slot = p11_kit_uri_get_slot_id(u);
    CK_SLOT_INFO si;
    CK_TOKEN_INFO ti;

    if (p11_kit_uri_any_unrecognized(u))
        return false;
    if (!match_module(u, t->mod))
        return false;
    si = t->slot_info;
    unpad_slot_info(&si, true);
    if (!p11_kit_uri_match_slot_info(u, &si))
        return false;
    if (want_slot != (CK_SLOT_ID)-1 && want_slot != t->slot)
        return false;
    pthread_mutex_lock(&t->lock);
    ti = t->info;
    pthread_mutex_unlock(&t->lock);
    unpad_token_info(&ti, true);
    return p11_kit_uri_match_token_info(u, &ti);
}

static bool match_key(P11KitUri *u, const tok_key_t *k)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE attrs[3];
    CK_ULONG n = 0;

    attrs[n++] = (CK_ATTRIBUTE){ CKA_CLASS, &cls, sizeof(cls) };
    attrs[n++] = (CK_ATTRIBUTE){ CKA_ID, k->id, k->id_len };
    attrs[n++] = (CK_ATTRIBUTE){ CKA_LABEL, k->label, k->label ? strlen(k->label) : 0 };
    return p11_kit_uri_match_attributes(u, attrs, n);
}

int tok_find_keys(const tok_ctx_t *ctx, const char *uri, const tok_key_t ***ret, size_t *ret_n)
{
    const tok_key_t **found = NULL;
    P11KitUri *u = NULL;
    size_t n = 0;
    int r;

    if (ctx == NULL || ret == NULL || ret_n == NULL)
        return TOK_ERR_ARGS;
    r = parse_uri(uri, &u);
    if (r != TOK_OK)
        goto out;
    found = calloc(ctx->n_keys + 1, sizeof(*found));
    if (found == NULL) {
        r = TOK_ERR_NO_MEMORY;
        goto out;
    }
    for (size_t i = 0; i < ctx->n_keys; i++) {
        const tok_key_t *k = &ctx->keys[i].k;

        if (match_token(u, k->token) && match_key(u, k))
            found[n++] = k;
    }
    *ret = found;
    *ret_n = n;
    found = NULL;
    r = TOK_OK;
out:
    free(found);
    if (u != NULL)
        p11_kit_uri_free(u);
    return r;
}

int tok_find_tokens(const tok_ctx_t *ctx, const char *uri, tok_token_t ***ret, size_t *ret_n)
{
    tok_token_t **found = NULL;
    P11KitUri *u = NULL;
    size_t n = 0;
    int r;

    if (ctx == NULL || ret == NULL || ret_n == NULL)
        return TOK_ERR_ARGS;
    r = parse_uri(uri, &u);
    if (r != TOK_OK)
        goto out;
    found = calloc(ctx->n_tokens + 1, sizeof(*found));
    if (found == NULL) {
        r = TOK_ERR_NO_MEMORY;
        goto out;
    }
    for (size_t i = 0; i < ctx->n_tokens; i++)
        if (match_token(u, ctx->tokens[i]))
            found[n++] = ctx->tokens[i];
    *ret = found;
    *ret_n = n;
    found = NULL;
    r = TOK_OK;
out:
    free(found);
    if (u != NULL)
        p11_kit_uri_free(u);
    return r;
}
