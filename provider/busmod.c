/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11agent-bus.so: the provider's agent client (dbus/pool.c and libdbus),
 * apart from p11agent.so so that loading the provider loads no libdbus.
 * libdbus pulls in libsystemd, libgcrypt, liblzma, libzstd, liblz4,
 * libcap and libgpg-error: about 2 ms of a fresh process's start (more
 * than the rest of the provider), paid by every program an openssl.cnf
 * loads the provider into, most of which never use an agent key. The
 * provider loads this module on its first agent call (busapi.c) and calls
 * it through the one table below, its only export.
 */
#include "config.h"

#include "provider.h"

#ifndef PROV_BUS_STATIC
__attribute__((visibility("default")))
#endif
const prov_bus_api_t p11agent_bus_api = {
    .version = PROV_BUS_API_VERSION,
    .build = P11AGENT_VERSION,
    .pool_new = bus_pool_new,
    .pool_free = bus_pool_free,
    .pool_set_max = bus_pool_set_max,
    .pool_find_keys = bus_pool_find_keys,
    .pool_sign = bus_pool_sign,
    .pool_decrypt = bus_pool_decrypt,
};
