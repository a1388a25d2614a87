/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The one agent client that lives inside other people's programs (the
 * provider p11agent.so and the PKCS#11 module p11agent-pkcs11.so): a small
 * per-process pool of private connections to the agent, opened on first
 * use, that survives fork (a child never touches the parent's connections)
 * and agent restarts (a dropped connection is reopened and the call retried
 * once; while the agent restarts, calls wait up to a few seconds for it).
 * See pool.c for the rules.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <dbus/dbus.h>

#include "bus.h"

typedef struct bus_pool bus_pool_t;

/* Takes ownership of socket_path (malloc'd; NULL: no socket known, every
 * call fails with BUS_ERR_NOT_RUNNING). NULL only when out of memory. */
bus_pool_t *bus_pool_new(char *socket_path);
/* In the process that made the pool: closes its connections. In a forked
 * child: abandons the inherited ones without touching them. NULL is fine. */
void bus_pool_free(bus_pool_t *p);
const char *bus_pool_socket(const bus_pool_t *p);

/* Connections a process opens at most (threads past that share them and
 * wait for each other): BUS_POOL_DEFAULT_MAX unless set, never past
 * BUS_POOL_MAX_MAX (larger values are cut). 0 keeps the current value. */
#define BUS_POOL_DEFAULT_MAX 32u
#define BUS_POOL_MAX_MAX 64u
void bus_pool_set_max(bus_pool_t *p, unsigned n);

/* A call made on one pooled connection: returns BUS_OK or a bus_err_t and,
 * on error, may set *errmsg (malloc'd). It must be idempotent: after a
 * Disconnected/NotRunning error it runs again on a new connection. */
typedef int (*bus_pool_op_fn)(DBusConnection *conn, void *arg, char **errmsg);

/* Runs op on a connection of the pool (opened if needed; reconnecting and
 * retrying after a fork or an agent restart). errno is left as the caller
 * had it. *errmsg as in bus.h (malloc'd, free()). */
int bus_pool_call(bus_pool_t *p, bus_pool_op_fn op, void *arg, char **errmsg);

/* FindKeys and Sign through the pool (Sign builds its message from a
 * per-pool cache of templates, see bus_new_sign_template). */
int bus_pool_find_keys(bus_pool_t *p, const char *uri, bus_key_info_t **ret_keys, size_t *ret_n,
                       char **errmsg);
/* Decrypt through the pool (idempotent: retried once after a reconnect).
 * *ret_plain as in bus_client_decrypt: the caller wipes and frees it. */
int bus_pool_decrypt(bus_pool_t *p, const char *uri, const bus_decrypt_params_t *params,
                     const uint8_t *data, size_t len, uint8_t **ret_plain, size_t *ret_len,
                     char **errmsg);
int bus_pool_sign(bus_pool_t *p, const char *uri, const bus_sign_params_t *params,
                  const uint8_t *data, size_t len, uint8_t **ret_sig, size_t *ret_len,
                  char **errmsg);
