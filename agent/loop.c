/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loop.h"

/* Entries are never freed while a poll round walks them: removal marks them
 * dead and the sweep at the end of the round frees them. */
typedef enum { SRC_WATCH, SRC_TIMEOUT, SRC_FD, SRC_CONN } src_kind_t;

typedef struct source {
    struct source *next;
    src_kind_t kind;
    bool dead;
    union {
        DBusWatch *watch;
        DBusTimeout *timeout;
        DBusConnection *conn;
        struct {
            int fd;
            short events;
            agent_fd_cb cb;
            void *userdata;
        } fd;
    } u;
    int64_t deadline_ms; /* SRC_TIMEOUT */
    int pollidx;         /* index into the pollfd array this round, or -1 */
} source_t;

struct agent_loop {
    source_t *sources;
    bool quit;
    struct pollfd *pfds;
    size_t pfds_cap;
};

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int agent_loop_new(agent_loop_t **ret)
{
    agent_loop_t *loop = calloc(1, sizeof(*loop));

    if (!loop)
        return -ENOMEM;
    *ret = loop;
    return 0;
}

static void sweep(agent_loop_t *loop)
{
    source_t **pp = &loop->sources;

    while (*pp) {
        source_t *s = *pp;

        if (s->dead) {
            *pp = s->next;
            if (s->kind == SRC_CONN) {
                /* Our connections are private: close before the last unref. */
                dbus_connection_close(s->u.conn);
                dbus_connection_unref(s->u.conn);
            }
            free(s);
        } else {
            pp = &s->next;
        }
    }
}

void agent_loop_free(agent_loop_t *loop)
{
    if (!loop)
        return;
    for (source_t *s = loop->sources; s; s = s->next)
        if (s->kind == SRC_CONN)
            s->dead = true;
    sweep(loop);
    /* Remaining watches/timeouts belong to libdbus objects freed elsewhere. */
    while (loop->sources) {
        source_t *s = loop->sources;

        loop->sources = s->next;
        free(s);
    }
    free(loop->pfds);
    free(loop);
}

static source_t *add_source(agent_loop_t *loop, src_kind_t kind)
{
    source_t *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->kind = kind;
    s->pollidx = -1;
    s->next = loop->sources;
    loop->sources = s;
    return s;
}

static source_t *find_source(agent_loop_t *loop, src_kind_t kind, const void *p)
{
    for (source_t *s = loop->sources; s; s = s->next)
        if (!s->dead && s->kind == kind && s->u.watch == p)
            return s;
    return NULL;
}

static dbus_bool_t watch_add(DBusWatch *watch, void *data)
{
    source_t *s = add_source(data, SRC_WATCH);

    if (!s)
        return FALSE;
    s->u.watch = watch;
    return TRUE;
}

static void watch_remove(DBusWatch *watch, void *data)
{
    source_t *s = find_source(data, SRC_WATCH, watch);

    if (s)
        s->dead = true;
}

static void watch_toggled(DBusWatch *watch, void *data)
{
    /* Enabled state is read from the watch at every poll round. */
}

static dbus_bool_t timeout_add(DBusTimeout *timeout, void *data)
{
    source_t *s = add_source(data, SRC_TIMEOUT);

    if (!s)
        return FALSE;
    s->u.timeout = timeout;
    s->deadline_ms = now_ms() + dbus_timeout_get_interval(timeout);
    return TRUE;
}

static void timeout_remove(DBusTimeout *timeout, void *data)
{
    source_t *s = find_source(data, SRC_TIMEOUT, timeout);

    if (s)
        s->dead = true;
}

static void timeout_toggled(DBusTimeout *timeout, void *data)
{
    source_t *s = find_source(data, SRC_TIMEOUT, timeout);

    if (s)
        s->deadline_ms = now_ms() + dbus_timeout_get_interval(timeout);
}

bool agent_loop_attach_server(agent_loop_t *loop, DBusServer *server)
{
    return dbus_server_set_watch_functions(server, watch_add, watch_remove, watch_toggled, loop,
                                           NULL) &&
           dbus_server_set_timeout_functions(server, timeout_add, timeout_remove, timeout_toggled,
                                             loop, NULL);
}

bool agent_loop_attach_connection(agent_loop_t *loop, DBusConnection *conn)
{
    source_t *s = add_source(loop, SRC_CONN);

    if (!s)
        return false;
    s->u.conn = dbus_connection_ref(conn);
    if (!dbus_connection_set_watch_functions(conn, watch_add, watch_remove, watch_toggled, loop,
                                             NULL) ||
        !dbus_connection_set_timeout_functions(conn, timeout_add, timeout_remove, timeout_toggled,
                                               loop, NULL)) {
        s->dead = true;
        return false;
    }
    return true;
}

void agent_loop_detach_connection(agent_loop_t *loop, DBusConnection *conn)
{
    source_t *s = find_source(loop, SRC_CONN, conn);

    if (!s)
        return;
    /* Stop routing its watches here; libdbus calls watch_remove for each. */
    dbus_connection_set_watch_functions(conn, NULL, NULL, NULL, NULL, NULL);
    dbus_connection_set_timeout_functions(conn, NULL, NULL, NULL, NULL, NULL);
    s->dead = true;
}

int agent_loop_add_fd(agent_loop_t *loop, int fd, short events, agent_fd_cb cb, void *userdata)
{
    source_t *s = add_source(loop, SRC_FD);

    if (!s)
        return -ENOMEM;
    s->u.fd.fd = fd;
    s->u.fd.events = events;
    s->u.fd.cb = cb;
    s->u.fd.userdata = userdata;
    return 0;
}

void agent_loop_quit(agent_loop_t *loop)
{
    loop->quit = true;
}

static int prepare(agent_loop_t *loop, nfds_t *ret_n, int *ret_timeout)
{
    size_t n = 0;
    int64_t now = now_ms(), next = INT64_MAX;

    for (source_t *s = loop->sources; s; s = s->next) {
        s->pollidx = -1;
        if (s->dead)
            continue;
        if (s->kind == SRC_TIMEOUT && dbus_timeout_get_enabled(s->u.timeout)) {
            if (s->deadline_ms < next)
                next = s->deadline_ms;
            continue;
        }
        if (s->kind != SRC_WATCH && s->kind != SRC_FD)
            continue;
        if (s->kind == SRC_WATCH && !dbus_watch_get_enabled(s->u.watch))
            continue;
        if (n == loop->pfds_cap) {
            size_t cap = loop->pfds_cap ? loop->pfds_cap * 2 : 16;
            struct pollfd *p = realloc(loop->pfds, cap * sizeof(*p));

            if (!p)
                return -ENOMEM;
            loop->pfds = p;
            loop->pfds_cap = cap;
        }
        if (s->kind == SRC_WATCH) {
            unsigned flags = dbus_watch_get_flags(s->u.watch);

            loop->pfds[n].fd = dbus_watch_get_unix_fd(s->u.watch);
            loop->pfds[n].events = (short)(((flags & DBUS_WATCH_READABLE) ? POLLIN : 0) |
                                           ((flags & DBUS_WATCH_WRITABLE) ? POLLOUT : 0));
        } else {
            loop->pfds[n].fd = s->u.fd.fd;
            loop->pfds[n].events = s->u.fd.events;
        }
        loop->pfds[n].revents = 0;
        s->pollidx = (int)n++;
    }
    *ret_n = n;
    if (next == INT64_MAX)
        *ret_timeout = -1;
    else if (next <= now)
        *ret_timeout = 0;
    else
        *ret_timeout = next - now > INT_MAX ? INT_MAX : (int)(next - now);
    return 0;
}

static void handle_sources(agent_loop_t *loop)
{
    int64_t now = now_ms();

    for (source_t *s = loop->sources; s; s = s->next) {
        short re;

        if (s->dead)
            continue;
        if (s->kind == SRC_TIMEOUT) {
            if (dbus_timeout_get_enabled(s->u.timeout) && s->deadline_ms <= now) {
                s->deadline_ms = now + dbus_timeout_get_interval(s->u.timeout);
                dbus_timeout_handle(s->u.timeout);
            }
            continue;
        }
        if (s->pollidx < 0)
            continue;
        re = loop->pfds[s->pollidx].revents;
        if (!re)
            continue;
        if (s->kind == SRC_WATCH) {
            unsigned flags = 0;

            if (re & POLLIN)
                flags |= DBUS_WATCH_READABLE;
            if (re & POLLOUT)
                flags |= DBUS_WATCH_WRITABLE;
            if (re & POLLHUP)
                flags |= DBUS_WATCH_HANGUP;
            if (re & (POLLERR | POLLNVAL))
                flags |= DBUS_WATCH_ERROR;
            dbus_watch_handle(s->u.watch, flags);
        } else {
            s->u.fd.cb(s->u.fd.userdata, s->u.fd.fd, re);
        }
    }
}

static void dispatch_connections(agent_loop_t *loop)
{
    for (source_t *s = loop->sources; s; s = s->next) {
        if (s->dead || s->kind != SRC_CONN)
            continue;
        while (!s->dead &&
               dbus_connection_get_dispatch_status(s->u.conn) == DBUS_DISPATCH_DATA_REMAINS)
            dbus_connection_dispatch(s->u.conn);
    }
}

int agent_loop_run(agent_loop_t *loop)
{
    while (!loop->quit) {
        nfds_t n;
        int timeout, r;

        /* Messages read while handling watches (or queued during setup). */
        dispatch_connections(loop);
        sweep(loop);
        if (loop->quit)
            break;
        r = prepare(loop, &n, &timeout);
        if (r < 0)
            return r;
        r = poll(loop->pfds, n, timeout);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        handle_sources(loop);
        sweep(loop);
    }
    return 0;
}
