/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* RFC 7512 URIs: formatting and matching through p11-kit's P11KitUri. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "tok-internal.h"

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

    if (m->have_info && !p11_kit_uri_match_module_info(u, &m->info))
        return false;
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
    bool ok;

    if (p11_kit_uri_any_unrecognized(u))
        return false;
    if (!match_module(u, t->mod))
        return false;
    if (!p11_kit_uri_match_slot_info(u, &t->slot_info))
        return false;
    if (want_slot != (CK_SLOT_ID)-1 && want_slot != t->slot)
        return false;
    pthread_mutex_lock(&t->lock);
    ok = p11_kit_uri_match_token_info(u, &t->info);
    pthread_mutex_unlock(&t->lock);
    return ok;
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
