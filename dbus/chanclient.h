/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The client end of a signing channel (chanclient.c), used by pool.c. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include <dbus/dbus.h>

#include "channel.h"

typedef struct bus_chan_client bus_chan_client_t;

/* bus_chan_client_sign/_decrypt: no channel to use; call D-Bus Sign/Decrypt */
#define BUS_CHAN_UNAVAILABLE 1

/* A connection's first signatures (or decryptions) go over D-Bus Sign
 * (Decrypt) (the channel costs two round trips to open, OpenChannel and
 * BIND: a process that signs once saves them); the channel opens at the
 * use after these. */
#define BUS_CHAN_OPEN_AFTER 1u

/* Called once the channel of conn is open, with its fd (a forked child
 * closes it, see pool.c). */
typedef void (*bus_chan_opened_fn)(void *arg, DBusConnection *conn, int fd,
                                   const struct stat *st);

/* NULL when out of memory. */
bus_chan_client_t *bus_chan_client_new(void);
/* Closes the channel; a libdbus free function (NULL is not passed). */
void bus_chan_client_free(void *ch);
/* Signs over the channel of conn, opened on first use (OpenChannel): BUS_OK
 * with *ret_sig malloc'd, a BUS_ERR_* as the D-Bus Sign would give it (the
 * agent's error and text; Disconnected when the channel broke), or
 * BUS_CHAN_UNAVAILABLE: the agent offers no channel, this request cannot
 * go on one, or the connection has not made BUS_CHAN_OPEN_AFTER signatures
 * yet. */
int bus_chan_client_sign(bus_chan_client_t *ch, DBusConnection *conn, const char *uri,
                         const bus_sign_params_t *p, const uint8_t *data, size_t len,
                         bus_chan_opened_fn opened, void *opened_arg, uint8_t **ret_sig,
                         size_t *ret_len, char **errmsg);
/* Decrypts over the channel of conn, as bus_chan_client_sign signs: BUS_OK
 * with *ret_plain malloc'd (a secret: the caller wipes it before free();
 * the channel's reply buffer is wiped here), a BUS_ERR_* as the D-Bus
 * Decrypt would give it, or BUS_CHAN_UNAVAILABLE (also for a request that
 * does not fit a frame, see bus_chan_can_decrypt). */
int bus_chan_client_decrypt(bus_chan_client_t *ch, DBusConnection *conn, const char *uri,
                            const bus_decrypt_params_t *p, const uint8_t *data, size_t len,
                            bus_chan_opened_fn opened, void *opened_arg, uint8_t **ret_plain,
                            size_t *ret_len, char **errmsg);
