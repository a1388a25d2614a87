/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The parts of the client side that call no libdbus function: key records
 * and the socket path. The provider links these directly and reaches the
 * rest (pool.c, client.c: libdbus) only through p11agent-bus.so, loaded on
 * the first agent call (provider/busapi.c): libdbus and its dependencies
 * cost a fresh process milliseconds to load.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"

char *bus_default_socket_path(void)
{
    const char *rt = getenv("XDG_RUNTIME_DIR");
    char *path = NULL;

    if (rt && rt[0] == '/') {
        if (asprintf(&path, "%s/p11agent/agent.sock", rt) < 0)
            return NULL;
    } else if (asprintf(&path, "/run/user/%u/p11agent/agent.sock", (unsigned)getuid()) < 0) {
        return NULL;
    }
    return path;
}

char *bus_socket_path(const char *configured)
{
    const char *env = getenv("P11AGENT_SOCKET");

    if (env && env[0])
        return strdup(env);
    if (configured && configured[0])
        return strdup(configured);
    return bus_default_socket_path();
}

void bus_key_info_clear(bus_key_info_t *k)
{
    if (k == NULL)
        return;
    free(k->uri);
    free(k->group);
    free(k->label);
    free(k->token);
    free(k->spki);
    free(k->cert);
    memset(k, 0, sizeof(*k));
}

void bus_key_info_free_array(bus_key_info_t *keys, size_t n)
{
    if (keys == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        bus_key_info_clear(&keys[i]);
    free(keys);
}

