/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Loading and unloading PKCS#11 modules through p11-kit; the context. */
#include "config.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"
#include "tok-internal.h"

static const char *module_message(void)
{
    const char *m = p11_kit_message();

    return m != NULL ? m : "unknown cause";
}

static void module_read_info(tok_ctx_t *ctx, tok_module_t *m)
{
    CK_RV rv = m->f->C_GetInfo(&m->info);

    m->have_info = rv == CKR_OK;
    if (rv != CKR_OK)
        tok_debug(ctx, "C_GetInfo on %s: %s", m->path ? m->path : "module", p11_kit_strerror(rv));
}

/* The agent never uses its own client, p11agent-pkcs11.so: it would call
 * itself (each of its calls waiting for the agent that makes it). The
 * module is known by the marker symbol it exports, looked up in the
 * library p11-kit has just loaded (RTLD_NOLOAD: nothing new is loaded)
 * before it is initialised; its p11-kit file says `disable-in: p11agentd`
 * too, but --module and a hand-written registration bypass that. */
#define OWN_CLIENT_MARKER "p11agent_pkcs11_client_marker"

static bool is_own_client(tok_ctx_t *ctx, const char *path)
{
    void *h;
    bool own = false;

    if (path == NULL)
        return false;
    h = dlopen(path, RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD);
    if (h != NULL) {
        own = dlsym(h, OWN_CLIENT_MARKER) != NULL;
        dlclose(h);
    }
    if (own) {
        char esc[512];

        text_escape(esc, sizeof(esc), path, strlen(path));
        tok_warn(ctx, "module %s refused: it is p11agent-pkcs11.so, the agent's own client "
                      "(loading it would make the agent call itself); the other modules are used",
                 esc);
    }
    return own;
}

static int load_registered(tok_ctx_t *ctx, char **errmsg)
{
    size_t n = 0, kept = 0;

    ctx->p11kit_modules = p11_kit_modules_load(NULL, 0);
    if (ctx->p11kit_modules == NULL) {
        tok_set_errmsg(errmsg, "p11-kit: loading the registered modules failed: %s",
                       module_message());
        return TOK_ERR_MODULE;
    }
    for (size_t i = 0; ctx->p11kit_modules[i] != NULL; i++) {
        CK_FUNCTION_LIST *f = ctx->p11kit_modules[i];
        char *path = p11_kit_module_get_filename(f);

        if (is_own_client(ctx, path))
            p11_kit_module_release(f);
        else
            ctx->p11kit_modules[kept++] = f;
        free(path);
    }
    ctx->p11kit_modules[kept] = NULL;
    /* a module that fails to initialise is taken out of the list and stays
     * loaded (released, its leaks lose their names: LeakSanitizer then
     * reports a registered module's own leak as ours) */
    if (p11_kit_modules_initialize(ctx->p11kit_modules, NULL) != CKR_OK) {
        tok_set_errmsg(errmsg, "p11-kit: initialising the registered modules failed: %s",
                       module_message());
        return TOK_ERR_MODULE;
    }
    while (ctx->p11kit_modules[n] != NULL)
        n++;
    ctx->mods = calloc(n + 1, sizeof(*ctx->mods));
    if (ctx->mods == NULL)
        return TOK_ERR_NO_MEMORY;
    for (size_t i = 0; i < n; i++) {
        tok_module_t *m = &ctx->mods[i];

        m->f = ctx->p11kit_modules[i];
        m->name = p11_kit_module_get_name(m->f);
        m->path = p11_kit_module_get_filename(m->f);
        ctx->n_mods++;
        module_read_info(ctx, m);
        tok_debug(ctx, "loaded registered module %s (%s)", m->name ? m->name : "?",
                  m->path ? m->path : "?");
    }
    return TOK_OK;
}

static int load_paths(tok_ctx_t *ctx, const char *const *paths, size_t n, char **errmsg)
{
    ctx->mods = calloc(n, sizeof(*ctx->mods));
    if (ctx->mods == NULL)
        return TOK_ERR_NO_MEMORY;
    for (size_t i = 0; i < n; i++) {
        tok_module_t *m = &ctx->mods[ctx->n_mods];
        CK_FUNCTION_LIST *f;
        CK_RV rv;

        if (paths[i] == NULL) {
            tok_set_errmsg(errmsg, "module path %zu is NULL", i);
            return TOK_ERR_ARGS;
        }
        f = p11_kit_module_load(paths[i], 0);
        if (f == NULL) {
            tok_set_errmsg(errmsg, "module %s: cannot load: %s", paths[i], module_message());
            return TOK_ERR_MODULE;
        }
        if (is_own_client(ctx, paths[i])) {
            p11_kit_module_release(f);
            continue;
        }
        rv = p11_kit_module_initialize(f);
        if (rv != CKR_OK) {
            tok_set_errmsg(errmsg, "module %s: C_Initialize failed: %s", paths[i],
                           p11_kit_strerror(rv));
            p11_kit_module_release(f);
            return TOK_ERR_MODULE;
        }
        m->f = f;
        m->path = strdup(paths[i]);
        m->name = p11_kit_module_get_name(f);
        ctx->n_mods++;
        if (m->path == NULL)
            return TOK_ERR_NO_MEMORY;
        module_read_info(ctx, m);
        tok_debug(ctx, "loaded module %s", paths[i]);
    }
    return TOK_OK;
}

int tok_ctx_new(const char *const *modules, size_t n_modules, tok_ctx_t **ret, char **errmsg)
{
    tok_ctx_t *ctx = NULL;
    int r;

    if (ret == NULL || (n_modules > 0 && modules == NULL))
        return TOK_ERR_ARGS;
    ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return TOK_ERR_NO_MEMORY;
    ctx->debug = tok_debug_enabled_from_env();
    if (n_modules == 0)
        r = load_registered(ctx, errmsg);
    else
        r = load_paths(ctx, modules, n_modules, errmsg);
    if (r != TOK_OK)
        goto out;
    *ret = ctx;
    ctx = NULL;
out:
    tok_ctx_free(ctx);
    return r;
}

static void free_keys(tok_ctx_t *ctx)
{
    for (size_t i = 0; i < ctx->n_keys; i++)
        tok_key_clear(&ctx->keys[i].k);
    free(ctx->keys);
    ctx->keys = NULL;
    ctx->n_keys = 0;
}

void tok_ctx_free(tok_ctx_t *ctx)
{
    if (ctx == NULL)
        return;
    free_keys(ctx);
    for (size_t i = 0; i < ctx->n_tokens; i++)
        tok_token_free(ctx->tokens[i]);
    free(ctx->tokens);
    if (ctx->p11kit_modules != NULL) {
        p11_kit_modules_finalize_and_release(ctx->p11kit_modules);
    } else {
        for (size_t i = 0; i < ctx->n_mods; i++) {
            p11_kit_module_finalize(ctx->mods[i].f);
            p11_kit_module_release(ctx->mods[i].f);
        }
    }
    for (size_t i = 0; i < ctx->n_mods; i++) {
        free(ctx->mods[i].name);
        free(ctx->mods[i].path);
    }
    free(ctx->mods);
    free(ctx->pending_warn);
    free(ctx);
}

void tok_ctx_free_keys(tok_ctx_t *ctx)
{
    free_keys(ctx);
}

size_t tok_ctx_n_tokens(const tok_ctx_t *ctx)
{
    return ctx != NULL ? ctx->n_tokens : 0;
}

tok_token_t *tok_ctx_token(const tok_ctx_t *ctx, size_t i)
{
    return ctx != NULL && i < ctx->n_tokens ? ctx->tokens[i] : NULL;
}

size_t tok_ctx_n_keys(const tok_ctx_t *ctx)
{
    return ctx != NULL ? ctx->n_keys : 0;
}

const tok_key_t *tok_ctx_key(const tok_ctx_t *ctx, size_t i)
{
    return ctx != NULL && i < ctx->n_keys ? &ctx->keys[i].k : NULL;
}
