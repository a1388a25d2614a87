/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The provider's agent calls, through p11agent-bus.so (busmod.c): the
 * module is loaded, and the connection pool made, on the first call that
 * needs the agent (key lookup, signature, decryption), not when the
 * provider is loaded. It is looked for beside p11agent.so (both install in
 * OpenSSL's modules directory) and must be of the same build. The unit
 * tests and fuzz targets link it in (PROV_BUS_STATIC).
 */
#include "config.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "provider.h"

#define BUS_MODULE "p11agent-bus.so"

#ifdef PROV_BUS_STATIC
extern const prov_bus_api_t p11agent_bus_api;

static const prov_bus_api_t *bus_load(char **errmsg)
{
    return &p11agent_bus_api;
}
#else
/* dlopen of the module beside this one; the table, or NULL with *errmsg. */
static const prov_bus_api_t *bus_load(char **errmsg)
{
    Dl_info info;
    const char *slash;
    char *path = NULL;
    void *h;
    const prov_bus_api_t *api;

    if (dladdr((void *)bus_load, &info) == 0 || info.dli_fname == NULL
        || (slash = strrchr(info.dli_fname, '/')) == NULL) {
        if (asprintf(errmsg, "cannot tell where p11agent.so is to load " BUS_MODULE) < 0)
            *errmsg = NULL;
        return NULL;
    }
    if (asprintf(&path, "%.*s/" BUS_MODULE, (int)(slash - info.dli_fname), info.dli_fname) < 0)
        return NULL;
    /* never unloaded: the pool's connections and libdbus's state live in it */
    h = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    api = h != NULL ? dlsym(h, "p11agent_bus_api") : NULL;
    if (api == NULL) {
        const char *why = dlerror(); /* once: a second call gives NULL */

        if (asprintf(errmsg, "cannot load the agent client %s: %s", path,
                     why != NULL ? why : "no p11agent_bus_api in it") < 0)
            *errmsg = NULL;
    } else if (api->version != PROV_BUS_API_VERSION || strcmp(api->build, P11AGENT_VERSION) != 0) {
        if (asprintf(errmsg, "the agent client %s is of another build (%s) than p11agent.so (%s)",
                     path, api->build, P11AGENT_VERSION) < 0)
            *errmsg = NULL;
        api = NULL;
    }
    free(path);
    return api;
}
#endif

/* The pool (made on first use) with its module; NULL with *errmsg. */
static bus_pool_t *prov_pool(prov_ctx_t *ctx, const prov_bus_api_t **ret_api, char **errmsg)
{
    const prov_bus_api_t *api = atomic_load_explicit(&ctx->bus, memory_order_acquire);
    bus_pool_t *pool = atomic_load_explicit(&ctx->client, memory_order_acquire), *expected = NULL;
    char *path;

    if (api != NULL && pool != NULL) {
        *ret_api = api;
        return pool;
    }
    if (api == NULL) {
        /* racing threads get the same table: dlopen counts references */
        if ((api = bus_load(errmsg)) == NULL)
            return NULL;
        atomic_store_explicit(&ctx->bus, api, memory_order_release);
    }
    path = ctx->socket_path != NULL ? strdup(ctx->socket_path) : NULL;
    if (ctx->socket_path != NULL && path == NULL)
        return NULL;
    if ((pool = api->pool_new(path)) == NULL)
        return NULL;
    api->pool_set_max(pool, ctx->max_connections);
    /* racing threads: one pool wins, the others (no connection yet) go */
    if (!atomic_compare_exchange_strong_explicit(&ctx->client, &expected, pool,
                                                 memory_order_acq_rel, memory_order_acquire)) {
        api->pool_free(pool);
        pool = expected;
    }
    *ret_api = api;
    return pool;
}

#define NO_POOL(errmsg)                                                                       \
    ((errmsg) != NULL && *(errmsg) != NULL ? BUS_ERR_NOT_RUNNING : BUS_ERR_NO_MEMORY)

int prov_bus_find_keys(prov_ctx_t *ctx, const char *uri, bus_key_info_t **ret_keys, size_t *ret_n,
                       char **errmsg)
{
    const prov_bus_api_t *api;
    bus_pool_t *pool = prov_pool(ctx, &api, errmsg);

    return pool ? api->pool_find_keys(pool, uri, ret_keys, ret_n, errmsg) : NO_POOL(errmsg);
}

int prov_bus_sign(prov_ctx_t *ctx, const char *uri, const bus_sign_params_t *p,
                  const uint8_t *data, size_t len, uint8_t **ret_sig, size_t *ret_len,
                  char **errmsg)
{
    const prov_bus_api_t *api;
    bus_pool_t *pool = prov_pool(ctx, &api, errmsg);

    return pool ? api->pool_sign(pool, uri, p, data, len, ret_sig, ret_len, errmsg)
                : NO_POOL(errmsg);
}

int prov_bus_decrypt(prov_ctx_t *ctx, const char *uri, const bus_decrypt_params_t *p,
                     const uint8_t *data, size_t len, uint8_t **ret_plain, size_t *ret_len,
                     char **errmsg)
{
    const prov_bus_api_t *api;
    bus_pool_t *pool = prov_pool(ctx, &api, errmsg);

    return pool ? api->pool_decrypt(pool, uri, p, data, len, ret_plain, ret_len, errmsg)
                : NO_POOL(errmsg);
}

void prov_bus_free(prov_ctx_t *ctx)
{
    const prov_bus_api_t *api = atomic_load(&ctx->bus);
    bus_pool_t *pool = atomic_load(&ctx->client);

    if (api != NULL && pool != NULL)
        api->pool_free(pool);
    atomic_store(&ctx->client, NULL);
}
