/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* A small poll(2) main loop that drives libdbus watches and timeouts, plus
 * plain file descriptors (signalfd). Single-threaded. */
#pragma once

#include <stdbool.h>

#include <dbus/dbus.h>

typedef struct agent_loop agent_loop_t;

typedef void (*agent_fd_cb)(void *userdata, int fd, short revents);

int agent_loop_new(agent_loop_t **ret);
void agent_loop_free(agent_loop_t *loop);

/* Routes the watches and timeouts of a server or connection into the loop. */
bool agent_loop_attach_server(agent_loop_t *loop, DBusServer *server);
bool agent_loop_attach_connection(agent_loop_t *loop, DBusConnection *conn);
/* Connections with pending data are dispatched after each poll round. The
 * loop holds a reference until detach (or until the connection drops). */
void agent_loop_detach_connection(agent_loop_t *loop, DBusConnection *conn);

int agent_loop_add_fd(agent_loop_t *loop, int fd, short events, agent_fd_cb cb, void *userdata);

/* Runs until agent_loop_quit(). Returns 0, or negative errno on poll failure. */
int agent_loop_run(agent_loop_t *loop);
void agent_loop_quit(agent_loop_t *loop);
