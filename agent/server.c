/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The agent's transports: a libdbus peer-to-peer server on a unix socket (all
 * signing traffic; EXTERNAL auth, uid checked) and, when a session bus
 * exists, the well-known name org.p11agent.Agent1 there.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

static DBusHandlerResult on_message(DBusConnection *conn, DBusMessage *msg, void *data)
{
    return agent_dispatch(data, conn, msg);
}

static const DBusObjectPathVTable agent_vtable = {
    .message_function = on_message,
};

/* libdbus asks this once the peer authenticated (EXTERNAL: its uid). The
 * decision uses the credentials read from the socket when it connected. */
static dbus_bool_t allow_uid(DBusConnection *conn, unsigned long uid, void *data)
{
    agent_client_t *c = data;
    agent_t *a = c->agent;
    char exe[AGENT_EXE_ESC_MAX];

    if (uid == (unsigned long)c->uid && agent_peer_admitted(a, c))
        return TRUE;
    agent_warn("refused a client: uid %lu (pid %ld, %s) is not allowed to use this agent%s",
               uid, (long)c->pid, c->exe[0] ? agent_esc(exe, sizeof(exe), c->exe) : "?",
               a->system_mode ? " (see allow-users/allow-groups in agent.conf)"
                              : " (per-user mode admits only its owner)");
    agent_audit(a, c, "connect", NULL, NULL, NULL, "denied", 0);
    return FALSE;
}

/* Logs a refused connection, at most one line a second during a flood
 * (with the count of the ones not logged). Main loop thread only. */
static void refuse_quietly(agent_t *a, const agent_client_t *c, const char *why)
{
    int64_t now = agent_now_ms();
    char exe[AGENT_EXE_ESC_MAX];

    if (now - a->refusal_log_ms < 1000) {
        a->refusals_unlogged++;
        return;
    }
    /* the path is the client's choice: escaped, or it could forge lines */
    agent_warn("refused a client: uid %ld (pid %ld, %s) %s%s", (long)c->uid, (long)c->pid,
               c->exe[0] ? agent_esc(exe, sizeof(exe), c->exe) : "?", why,
               a->refusals_unlogged ? " (and more refusals in the last second, not logged)" : "");
    agent_audit(a, c, "connect", NULL, NULL, NULL, "denied", 0);
    a->refusal_log_ms = now;
    a->refusals_unlogged = 0;
}

/* The thread of one client: blocking reads, each request handled (and signed)
 * right here, replies written from here. Ends when the client disconnects
 * or agent_server_stop() shuts its socket down. */
static void *client_thread(void *data)
{
    agent_client_t *c = data;
    agent_t *a = c->agent;

    while (dbus_connection_read_write_dispatch(c->conn, -1))
        ;
    agent_debug(AGENT_DBG_BUS, "client uid %ld pid %ld disconnected", (long)c->uid,
                (long)c->pid);
    dbus_connection_close(c->conn);
    dbus_connection_unref(c->conn);

    pthread_mutex_lock(&a->clients_lock);
    for (agent_client_t **pp = &a->clients; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    a->n_clients--;
    pthread_cond_broadcast(&a->clients_gone);
    pthread_mutex_unlock(&a->clients_lock);
    free(c);
    return NULL;
}

static void on_new_connection(DBusServer *server, DBusConnection *conn, void *data)
{
    agent_t *a = data;
    agent_client_t *c = NULL;
    pthread_attr_t attr;
    pthread_t th;
    bool full;
    int r;

    c = calloc(1, sizeof(*c));
    if (!c)
        goto oom;
    c->agent = a;
    c->conn = dbus_connection_ref(conn);
    if (!dbus_connection_get_socket(conn, &c->fd) || agent_client_read_creds(c, c->fd) < 0) {
        agent_warn("refused a client: cannot read its credentials");
        goto fail;
    }
    /* Peers that may not connect at all are turned away before they take
     * a client slot (and a thread); libdbus checks again after auth. */
    if (!agent_peer_admitted(a, c)) {
        refuse_quietly(a, c, a->system_mode ? "is not allowed to use this agent (see "
                                              "allow-users/allow-groups in agent.conf)"
                                            : "is not allowed to use this agent (per-user mode "
                                              "admits only its owner)");
        goto fail;
    }
    pthread_mutex_lock(&a->clients_lock);
    full = a->n_clients >= a->max_clients;
    pthread_mutex_unlock(&a->clients_lock);
    if (full) {
        refuse_quietly(a, c, "would exceed max-clients: the agent is serving its limit");
        goto fail;
    }
    dbus_connection_set_unix_user_function(conn, allow_uid, c, NULL);
    dbus_connection_set_allow_anonymous(conn, FALSE);
    dbus_connection_set_exit_on_disconnect(conn, FALSE);
    if (!dbus_connection_register_object_path(conn, BUS_PATH, &agent_vtable, c))
        goto oom;

    pthread_mutex_lock(&a->clients_lock);
    c->next = a->clients;
    a->clients = c;
    a->n_clients++;
    pthread_mutex_unlock(&a->clients_lock);

    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 1u << 20);
    r = pthread_create(&th, &attr, client_thread, c);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        agent_err("cannot start a thread for a client: %s", strerror(r));
        pthread_mutex_lock(&a->clients_lock);
        a->clients = c->next;
        a->n_clients--;
        pthread_mutex_unlock(&a->clients_lock);
        goto fail;
    }
    if (agent_debug_enabled(AGENT_DBG_BUS)) {
        char exe[AGENT_EXE_ESC_MAX];

        agent_debug(AGENT_DBG_BUS, "client uid %ld pid %ld (%s) connected", (long)c->uid,
                    (long)c->pid, agent_esc(exe, sizeof(exe), c->exe));
    }
    return;
oom:
    agent_err("out of memory accepting a client");
fail:
    dbus_connection_close(conn);
    if (c) {
        dbus_connection_unref(c->conn);
        free(c);
    }
}

/* Creates the socket's directory if it does not exist (0700 for a per-user
 * agent, 0755 in system mode: other users connect, the agent checks each),
 * and checks the one it is about to use, created now or long ago: a real
 * directory (not a symlink), owned by the agent's user (or root in system
 * mode), writable by nobody else; per-user, open to nobody else at all.
 * Anyone who could write there could put their own socket in our place. */
static int make_socket_dir(const char *path, bool system_mode, char **errmsg)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash == path ? strdup("/") : slash ? strndup(path, (size_t)(slash - path))
                                                    : strdup(".");
    uid_t me = geteuid();
    struct stat st;
    int r = 0;

    if (!dir)
        return -ENOMEM;
    if (mkdir(dir, system_mode ? 0755 : 0700) < 0 && errno != EEXIST) {
        r = -errno;
        agent_set_errmsg(errmsg, "cannot create socket directory %s: %s", dir, strerror(errno));
        goto out;
    }
    if (lstat(dir, &st) < 0) {
        r = -errno;
        agent_set_errmsg(errmsg, "cannot check socket directory %s: %s", dir, strerror(errno));
        goto out;
    }
    r = -EPERM;
    if (S_ISLNK(st.st_mode))
        agent_set_errmsg(errmsg, "socket directory %s is a symbolic link; the agent uses only "
                                 "a real directory: remove the link, or choose another --socket",
                         dir);
    else if (!S_ISDIR(st.st_mode))
        agent_set_errmsg(errmsg, "socket directory %s is not a directory: remove it, or choose "
                                 "another --socket",
                         dir);
    else if (st.st_uid != me && !(system_mode && st.st_uid == 0))
        agent_set_errmsg(errmsg, "socket directory %s is owned by uid %lu, not by the agent's "
                                 "user (uid %lu)%s: another user could replace the socket; "
                                 "remove the directory (the agent creates it) or chown it",
                         dir, (unsigned long)st.st_uid, (unsigned long)me,
                         system_mode ? " or root" : "");
    else if (st.st_mode & 022)
        agent_set_errmsg(errmsg, "socket directory %s is writable by %s (mode %04o): another "
                                 "user could replace the socket; chmod go-w %s",
                         dir, (st.st_mode & 002) ? "every user" : "its group",
                         (unsigned)(st.st_mode & 07777), dir);
    else if (!system_mode && (st.st_mode & 077))
        agent_set_errmsg(errmsg, "socket directory %s is open to other users (mode %04o); a "
                                 "per-user agent's directory is mode 0700: chmod 0700 %s",
                         dir, (unsigned)(st.st_mode & 07777), dir);
    else
        r = 0;
out:
    free(dir);
    return r;
}

/* A socket file left by a dead agent is removed; a live one is an error. */
static int check_stale_socket(const char *path, char **errmsg)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    int fd, r;

    if (lstat(path, &st) < 0)
        return 0;
    if (!S_ISSOCK(st.st_mode)) {
        if (asprintf(errmsg, "%s exists and is not a socket; refusing to replace it", path) < 0)
            *errmsg = NULL;
        return -EEXIST;
    }
    if (strlen(path) >= sizeof(sa.sun_path)) {
        if (asprintf(errmsg, "socket path too long: %s", path) < 0)
            *errmsg = NULL;
        return -ENAMETOOLONG;
    }
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    close(fd);
    if (r == 0) {
        if (asprintf(errmsg, "another p11agentd is already serving %s", path) < 0)
            *errmsg = NULL;
        return -EADDRINUSE;
    }
    unlink(path);
    return 0;
}

int agent_server_start(agent_t *a, char **errmsg)
{
    static const char *mechs[] = {"EXTERNAL", NULL};
    DBusError err;
    char *escaped = NULL, *address = NULL;
    mode_t old_umask;
    int r;

    if (a->socket_activated) {
        /* systemd (or systemd-socket-activate) passed the listening socket:
         * libdbus takes it from LISTEN_FDS; the socket is systemd's. */
        dbus_error_init(&err);
        a->server = dbus_server_listen("systemd:", &err);
        if (!a->server) {
            if (asprintf(errmsg, "cannot use the socket passed by systemd: %s", err.message) < 0)
                *errmsg = NULL;
            dbus_error_free(&err);
            return -EIO;
        }
        goto listening;
    }
    r = make_socket_dir(a->socket_path, a->system_mode, errmsg);
    if (r < 0)
        return r;
    r = check_stale_socket(a->socket_path, errmsg);
    if (r < 0)
        return r;
    escaped = dbus_address_escape_value(a->socket_path);
    if (!escaped || asprintf(&address, "unix:path=%s", escaped) < 0) {
        dbus_free(escaped);
        return -ENOMEM;
    }
    dbus_free(escaped);
    dbus_error_init(&err);
    /* bind() creates the socket with its mode (0600; 0666 in system mode,
     * where the agent checks each peer): it is never more open than that
     * while it is ours alone to set... */
    old_umask = umask(a->system_mode ? 0111 : 0177);
    a->server = dbus_server_listen(address, &err);
    umask(old_umask);
    free(address);
    if (!a->server) {
        if (asprintf(errmsg, "cannot listen on %s: %s", a->socket_path, err.message) < 0)
            *errmsg = NULL;
        dbus_error_free(&err);
        return -EIO;
    }
    a->socket_owned = true;
    /* ...but libdbus chmods every socket it binds to 0777, by path. Set the
     * mode back, never through a symlink (the directory was checked: no
     * one else can swap the path meanwhile). In per-user mode the 0700
     * directory kept others out during that moment. */
    if (fchmodat(AT_FDCWD, a->socket_path, a->system_mode ? 0666 : 0600,
                 AT_SYMLINK_NOFOLLOW) < 0) {
        r = -errno;
        agent_set_errmsg(errmsg, "cannot set the mode of socket %s: %s", a->socket_path,
                         strerror(errno));
        return r;
    }
listening:
    if (!dbus_server_set_auth_mechanisms(a->server, mechs) ||
        !agent_loop_attach_server(a->loop, a->server))
        return -ENOMEM;
    dbus_server_set_new_connection_function(a->server, on_new_connection, a, NULL);
    return 0;
}

bool agent_server_stop(agent_t *a)
{
    struct timespec deadline;
    bool all_gone = true;

    if (a->server) {
        dbus_server_disconnect(a->server);
        dbus_server_unref(a->server);
        a->server = NULL;
    }
    if (a->socket_owned) {
        unlink(a->socket_path);
        a->socket_owned = false;
    }
    /* Wake every client thread: its blocking read sees the shutdown. A
     * thread inside a slow C_Sign finishes that first; wait a bounded time. */
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    pthread_mutex_lock(&a->clients_lock);
    for (agent_client_t *c = a->clients; c; c = c->next)
        if (c->fd >= 0)
            shutdown(c->fd, SHUT_RDWR);
    while (a->n_clients > 0) {
        if (pthread_cond_timedwait(&a->clients_gone, &a->clients_lock, &deadline) != 0) {
            agent_warn("%u clients still busy at exit", a->n_clients);
            all_gone = false;
            break;
        }
    }
    pthread_mutex_unlock(&a->clients_lock);
    if (a->session_bus) {
        dbus_connection_close(a->session_bus);
        dbus_connection_unref(a->session_bus);
        a->session_bus = NULL;
    }
    return all_gone;
}

int agent_session_bus_start(agent_t *a)
{
    DBusError err;
    DBusConnection *bus;
    int r;

    if (!getenv("DBUS_SESSION_BUS_ADDRESS"))
        return 0;
    dbus_error_init(&err);
    bus = dbus_bus_get_private(DBUS_BUS_SESSION, &err);
    if (!bus) {
        agent_warn("session bus unavailable (%s); serving the socket only", err.message);
        dbus_error_free(&err);
        return 0;
    }
    dbus_connection_set_exit_on_disconnect(bus, FALSE);
    r = dbus_bus_request_name(bus, BUS_NAME, DBUS_NAME_FLAG_DO_NOT_QUEUE, &err);
    if (r != DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER) {
        agent_warn("cannot own %s on the session bus (%s); serving the socket only", BUS_NAME,
                   dbus_error_is_set(&err) ? err.message : "another agent owns it");
        dbus_error_free(&err);
        dbus_connection_close(bus);
        dbus_connection_unref(bus);
        return 0;
    }
    a->bus_client.agent = a;
    a->bus_client.via_session_bus = true;
    a->bus_client.uid = a->owner;
    a->bus_client.fd = -1;
    if (!dbus_connection_register_object_path(bus, BUS_PATH, &agent_vtable, &a->bus_client) ||
        !agent_loop_attach_connection(a->loop, bus)) {
        dbus_connection_close(bus);
        dbus_connection_unref(bus);
        return -ENOMEM;
    }
    a->session_bus = bus;
    agent_info("owning %s on the session bus", BUS_NAME);
    return 0;
}
