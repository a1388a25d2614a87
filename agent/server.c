/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The agent's transports: a libdbus peer-to-peer server on a unix socket (all
 * signing traffic; EXTERNAL auth, uid checked) and, when a session bus
 * exists, the well-known name org.p11agent.Agent1 there.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

/* Logs a refused or closed connection, at most one line a second during a
 * flood (with the count of the ones not logged); refusals are audited.
 * clients_lock held. */
static void refuse_quietly_locked(agent_t *a, const agent_client_t *c, const char *what,
                                  const char *why)
{
    int64_t now = agent_now_ms();
    char exe[AGENT_EXE_ESC_MAX];

    if (now - a->refusal_log_ms < 1000) {
        a->refusals_unlogged++;
        return;
    }
    /* the path is the client's choice: escaped, or it could forge lines */
    agent_warn("%s: uid %ld (pid %ld, %s) %s%s", what, (long)c->uid, (long)c->pid,
               c->exe[0] ? agent_esc(exe, sizeof(exe), c->exe) : "?", why,
               a->refusals_unlogged ? " (and more in the last second, not logged)" : "");
    if (strncmp(what, "refused", 7) == 0)
        agent_audit(a, c, "connect", NULL, NULL, NULL, "denied", 0);
    a->refusal_log_ms = now;
    a->refusals_unlogged = 0;
}

/* Takes c out of the count it is in (clients_lock held). */
static void uncount_locked(agent_t *a, agent_client_t *c)
{
    if (c->slot == AGENT_SLOT_PENDING)
        a->n_pending--;
    else if (c->slot == AGENT_SLOT_CLIENT)
        a->n_clients--;
    c->slot = AGENT_SLOT_NONE;
}

/* Closes c if it still is in state `from` (clients_lock held): it leaves its
 * count now, and its thread, woken by the shutdown, ends it. False if c
 * changed state meanwhile (an idle client that began a request). */
static bool close_conn_locked(agent_t *a, agent_client_t *c, int from)
{
    int expected = from;

    if (!atomic_compare_exchange_strong(&c->state, &expected, AGENT_CONN_CLOSING))
        return false;
    uncount_locked(a, c);
    if (c->fd >= 0)
        shutdown(c->fd, SHUT_RDWR);
    return true;
}

/* The first method call of a pending connection: it becomes a client if
 * there is room, made by closing an idle client when a limit is reached.
 * Refused (a Busy error, then the connection closes) only when every
 * client under the limit is in a request. Client thread. */
static bool admit(agent_client_t *c, DBusConnection *conn, DBusMessage *msg)
{
    agent_t *a = c->agent;
    agent_client_t *victim = NULL;
    const char *limit = NULL;
    char why[256];
    DBusMessage *err;
    int r;

    pthread_mutex_lock(&a->clients_lock);
    /* a victim that began a request meanwhile is skipped: choose again */
    for (int tries = 0;; tries++) {
        r = agent_client_room_locked(a, c, &victim, &limit);
        if (r < 0 || !victim || close_conn_locked(a, victim, AGENT_CONN_IDLE))
            break;
        if (tries == 16) {
            r = -EBUSY;
            break;
        }
    }
    if (r < 0) {
        unsigned n = strcmp(limit, "max-clients") == 0 ? a->max_clients
                                                       : agent_max_clients_per_user(a);

        snprintf(why, sizeof(why), "would exceed %s (%u): every connection under it is in a request",
                 limit, n);
        refuse_quietly_locked(a, c, "refused a client", why);
        atomic_store(&c->state, AGENT_CONN_CLOSING);
        uncount_locked(a, c);
        pthread_mutex_unlock(&a->clients_lock);
        snprintf(why, sizeof(why), "the agent serves its limit of busy clients (%s = %u); "
                 "try again, or raise %s in agent.conf", limit, n, limit);
        err = dbus_message_new_error(msg, bus_err_name(BUS_ERR_BUSY), why);
        if (err) {
            dbus_connection_send(conn, err, NULL);
            dbus_connection_flush(conn);
            dbus_message_unref(err);
        }
        return false;
    }
    if (victim) {
        snprintf(why, sizeof(why), "idle for %lld ms, to make room for uid %ld: %s (%u) reached",
                 (long long)(agent_now_ms() - atomic_load(&victim->last_active_ms)),
                 (long)c->uid, limit,
                 strcmp(limit, "max-clients") == 0 ? a->max_clients
                                                   : agent_max_clients_per_user(a));
        refuse_quietly_locked(a, victim, "closed a connection", why);
    }
    uncount_locked(a, c);
    c->slot = AGENT_SLOT_CLIENT;
    a->n_clients++;
    atomic_store(&c->state, AGENT_CONN_BUSY);
    pthread_mutex_unlock(&a->clients_lock);
    return true;
}

/* Why a peer is not admitted (agent_peer_admitted said no). */
static const char *denied_why(const agent_t *a)
{
    return a->system_mode ? "is not allowed to use this agent (see allow-users/allow-groups "
                            "in agent.conf)"
                          : "is not allowed to use this agent (per-user mode admits only its "
                            "owner)";
}

/* The first call of a peer that may not use the agent: a Denied error that
 * names its uid and the setting, then the connection closes. */
static void answer_denied(agent_client_t *c, DBusConnection *conn, DBusMessage *msg)
{
    agent_t *a = c->agent;
    DBusMessage *err;
    char text[256];

    snprintf(text, sizeof(text), "uid %ld %s", (long)c->uid, denied_why(a));
    err = dbus_message_new_error(msg, bus_err_name(BUS_ERR_DENIED), text);
    if (err) {
        dbus_connection_send(conn, err, NULL);
        dbus_connection_flush(conn);
        dbus_message_unref(err);
    }
    pthread_mutex_lock(&a->clients_lock);
    close_conn_locked(a, c, AGENT_CONN_PENDING);
    pthread_mutex_unlock(&a->clients_lock);
}

static DBusHandlerResult on_message(DBusConnection *conn, DBusMessage *msg, void *data)
{
    agent_client_t *c = data;
    DBusHandlerResult res;
    int expected = AGENT_CONN_IDLE;

    if (c->via_session_bus || dbus_message_get_type(msg) != DBUS_MESSAGE_TYPE_METHOD_CALL)
        return agent_dispatch(c, conn, msg);
    if (c->denied) {
        answer_denied(c, conn, msg);
        return DBUS_HANDLER_RESULT_HANDLED;
    }
    /* Idle -> busy: from now on the agent does not close this connection.
     * A connection being closed is not served (its client retries on
     * another one). */
    if (!atomic_compare_exchange_strong(&c->state, &expected, AGENT_CONN_BUSY) &&
        (expected != AGENT_CONN_PENDING || !admit(c, conn, msg)))
        return DBUS_HANDLER_RESULT_HANDLED;
    res = agent_dispatch(c, conn, msg);
    atomic_store(&c->last_active_ms, agent_now_ms());
    expected = AGENT_CONN_BUSY;
    atomic_compare_exchange_strong(&c->state, &expected, AGENT_CONN_IDLE);
    return res;
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

    /* a peer refused at connect authenticates only to be told so */
    if (uid == (unsigned long)c->uid && (c->denied || agent_peer_admitted(a, c)))
        return TRUE;
    agent_warn("refused a client: uid %lu (pid %ld, %s) is not allowed to use this agent%s",
               uid, (long)c->pid, c->exe[0] ? agent_esc(exe, sizeof(exe), c->exe) : "?",
               a->system_mode ? " (see allow-users/allow-groups in agent.conf)"
                              : " (per-user mode admits only its owner)");
    agent_audit(a, c, "connect", NULL, NULL, NULL, "denied", 0);
    return FALSE;
}

/* How long the thread of c may wait for input: until a pending connection's
 * auth-timeout or an idle client's client-idle-timeout (-1: no deadline;
 * the agent wakes it by shutting the socket down when it closes it). */
static int wait_ms(const agent_t *a, agent_client_t *c, int64_t now)
{
    int state = atomic_load(&c->state);
    int64_t deadline;

    if (state == AGENT_CONN_PENDING)
        deadline = c->since_ms + (int64_t)a->auth_timeout_s * 1000;
    else if (state == AGENT_CONN_IDLE && a->client_idle_s)
        deadline = atomic_load(&c->last_active_ms) + (int64_t)a->client_idle_s * 1000;
    else
        return -1;
    if (deadline <= now)
        return 0;
    return deadline - now > 3600 * 1000 ? 3600 * 1000 : (int)(deadline - now);
}

/* A deadline of c passed: a pending connection past auth-timeout, an idle
 * client past client-idle-timeout is closed. Returns whether c is closing. */
static bool expire(agent_t *a, agent_client_t *c)
{
    char why[160];
    bool closing;

    pthread_mutex_lock(&a->clients_lock);
    if (wait_ms(a, c, agent_now_ms()) == 0) {
        if (atomic_load(&c->state) == AGENT_CONN_PENDING &&
            close_conn_locked(a, c, AGENT_CONN_PENDING)) {
            snprintf(why, sizeof(why), "did not authenticate and send a request within "
                     "auth-timeout (%u s)", a->auth_timeout_s);
            refuse_quietly_locked(a, c, "closed a connection", why);
        } else if (close_conn_locked(a, c, AGENT_CONN_IDLE)) {
            agent_debug(AGENT_DBG_BUS, "client uid %ld pid %ld idle for client-idle-timeout "
                        "(%u s): closed", (long)c->uid, (long)c->pid, a->client_idle_s);
        }
    }
    closing = atomic_load(&c->state) == AGENT_CONN_CLOSING;
    pthread_mutex_unlock(&a->clients_lock);
    return closing;
}

/* One round of a connection with a signing channel: a message libdbus has
 * queued is dispatched; else both sockets are watched (up to ms) and what
 * arrived is served. False when the D-Bus connection ended or the client
 * is being closed; a channel that ends alone only closes itself. */
static bool serve_with_channel(agent_client_t *c, int ms)
{
    struct pollfd p[2];
    bool closing = false;

    /* libdbus queues messages read and replies not yet written only inside
     * its own calls: asked again only after one (two locked calls less per
     * frame) */
    if (c->dbus_called) {
        if (dbus_connection_get_dispatch_status(c->conn) == DBUS_DISPATCH_DATA_REMAINS)
            return dbus_connection_read_write_dispatch(c->conn, 0);
        c->dbus_pollout = dbus_connection_has_messages_to_send(c->conn);
        c->dbus_called = false;
    }
    p[0] = (struct pollfd){.fd = c->fd, .events = POLLIN | (c->dbus_pollout ? POLLOUT : 0)};
    p[1] = (struct pollfd){.fd = agent_channel_fd(c), .events = POLLIN};
    if (poll(p, 2, ms) < 0)
        return errno == EINTR;
    if (p[1].revents && !agent_channel_serve(c, &closing) && closing)
        return false;
    if (p[0].revents) {
        c->dbus_called = true;
        return dbus_connection_read_write_dispatch(c->conn, 0);
    }
    return true;
}

/* The thread of one connection: reads, each request handled (and signed)
 * right here, replies written from here; the same for its signing channel,
 * once it has one. Wakes at the connection's deadline (auth-timeout,
 * client-idle-timeout). Ends when the client disconnects, a deadline
 * passes, or the agent shuts its socket down (a limit made room,
 * agent_server_stop()). */
static void *client_thread(void *data)
{
    agent_client_t *c = data;
    agent_t *a = c->agent;

    for (;;) {
        int64_t now = agent_now_ms();
        int ms = wait_ms(a, c, now), due;

        /* audit-interval: the summaries are written on time even when the
         * client goes quiet */
        if (ms != 0 && (due = agent_audit_due_ms(c, now)) >= 0) {
            if (due == 0) {
                agent_audit_flush(a, c, false);
                continue;
            }
            if (ms < 0 || due < ms)
                ms = due;
        }
        if (!c->chan)
            c->dbus_called = true;
        if (ms == 0 ? expire(a, c)
            : c->chan ? !serve_with_channel(c, ms)
                      : !dbus_connection_read_write_dispatch(c->conn, ms))
            break;
        if (atomic_load(&c->state) == AGENT_CONN_CLOSING)
            break;
    }
    agent_channel_close(c);
    agent_audit_flush(a, c, true);
    agent_debug(AGENT_DBG_BUS, "client uid %ld pid %ld disconnected", (long)c->uid,
                (long)c->pid);
    /* Out of every count, and nobody shuts down its fd once it is closed. */
    pthread_mutex_lock(&a->clients_lock);
    atomic_store(&c->state, AGENT_CONN_CLOSING);
    uncount_locked(a, c);
    c->fd = -1;
    pthread_mutex_unlock(&a->clients_lock);
    dbus_connection_close(c->conn);
    dbus_connection_unref(c->conn);

    pthread_mutex_lock(&a->clients_lock);
    for (agent_client_t **pp = &a->clients; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    pthread_cond_broadcast(&a->clients_gone);
    pthread_mutex_unlock(&a->clients_lock);
    agent_audit_batch_done(&c->audit_batch);
    free(c);
    return NULL;
}

static void on_new_connection(DBusServer *server, DBusConnection *conn, void *data)
{
    agent_t *a = data;
    agent_client_t *c = NULL, *victim;
    pthread_attr_t attr;
    pthread_t th;
    char why[200];
    int r;

    c = calloc(1, sizeof(*c));
    if (!c)
        goto oom;
    c->agent = a;
    agent_audit_batch_init(&c->audit_batch);
    c->conn = dbus_connection_ref(conn);
    c->since_ms = agent_now_ms();
    atomic_init(&c->state, AGENT_CONN_PENDING);
    atomic_init(&c->last_active_ms, c->since_ms);
    if (!dbus_connection_get_socket(conn, &c->fd) || agent_client_read_creds(c, c->fd) < 0) {
        agent_warn("refused a client: cannot read its credentials");
        goto fail;
    }
    /* Peers that may not use the agent at all never take a client slot:
     * they stay pending (bounded, auth-timeout) just long enough to get
     * org.p11agent.Error.Denied as the answer to their first call, so the
     * program can say why (on_message). */
    if (!agent_peer_admitted(a, c)) {
        c->denied = true;
        pthread_mutex_lock(&a->clients_lock);
        refuse_quietly_locked(a, c, "refused a client", denied_why(a));
        pthread_mutex_unlock(&a->clients_lock);
    }
    /* Hostile sizes are refused while they arrive: a header announcing a
     * longer message closes the connection, and a connection stops being
     * read while it holds more than this unhandled. */
    dbus_connection_set_max_message_size(conn, AGENT_MAX_MESSAGE_SIZE);
    dbus_connection_set_max_received_size(conn, AGENT_MAX_RECEIVED_SIZE);
    /* No client of ours passes file descriptors; a message carrying some is
     * refused rather than filling the agent's descriptor table. */
    dbus_connection_set_max_message_unix_fds(conn, 0);
    dbus_connection_set_unix_user_function(conn, allow_uid, c, NULL);
    dbus_connection_set_allow_anonymous(conn, FALSE);
    dbus_connection_set_exit_on_disconnect(conn, FALSE);
    if (!dbus_connection_register_object_path(conn, BUS_PATH, &agent_vtable, c))
        goto oom;

    /* Pending: no client slot yet, but one of AGENT_MAX_PENDING; a full
     * table closes the oldest of the uid holding most, never refuses the
     * newcomer (which may be the real client behind a flood). */
    pthread_mutex_lock(&a->clients_lock);
    victim = agent_pending_victim_locked(a);
    if (victim && close_conn_locked(a, victim, AGENT_CONN_PENDING)) {
        snprintf(why, sizeof(why), "had not authenticated and sent a request after %lld ms: "
                 "the oldest of its uid's while %d connections were waiting to",
                 (long long)(c->since_ms - victim->since_ms), AGENT_MAX_PENDING);
        refuse_quietly_locked(a, victim, "closed a connection", why);
    }
    c->slot = AGENT_SLOT_PENDING;
    a->n_pending++;
    c->next = a->clients;
    a->clients = c;
    pthread_mutex_unlock(&a->clients_lock);

    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 1u << 20);
    r = pthread_create(&th, &attr, client_thread, c);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        agent_err("cannot start a thread for a client: %s", strerror(r));
        pthread_mutex_lock(&a->clients_lock);
        for (agent_client_t **pp = &a->clients; *pp; pp = &(*pp)->next) {
            if (*pp == c) {
                *pp = c->next;
                break;
            }
        }
        uncount_locked(a, c);
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
        agent_audit_batch_done(&c->audit_batch);
        free(c);
    }
}

/* Creates the socket's directory if it does not exist (0700 for a per-user
 * agent, 0755 in system mode: other users connect, the agent checks each),
 * and checks the one it is about to use, created now or long ago: a real
 * directory (not a symlink), owned by the agent's user or root, writable by
 * nobody else unless it is sticky (like /tmp: others cannot remove or
 * rename our socket there). Anyone who could replace entries there could put
 * their own socket in our place. Who may connect is checked per peer
 * (SO_PEERCRED), so a directory others can read is fine (a 0755 home). */
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
    else if (st.st_uid != me && st.st_uid != 0)
        agent_set_errmsg(errmsg, "socket directory %s is owned by uid %lu, not by the agent's "
                                 "user (uid %lu) or root: another user could replace the "
                                 "socket; remove the directory (the agent creates it) or chown it",
                         dir, (unsigned long)st.st_uid, (unsigned long)me);
    else if ((st.st_mode & 022) && !(st.st_mode & S_ISVTX))
        agent_set_errmsg(errmsg, "socket directory %s is writable by %s (mode %04o): another "
                                 "user could replace the socket; chmod go-w %s",
                         dir, (st.st_mode & 002) ? "every user" : "its group",
                         (unsigned)(st.st_mode & 07777), dir);
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
     * one else can swap the path meanwhile). A peer that connects in that
     * moment is still checked by its credentials like every other. */
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
    while (a->clients) {
        if (pthread_cond_timedwait(&a->clients_gone, &a->clients_lock, &deadline) != 0) {
            agent_warn("%u clients still busy at exit", a->n_clients + a->n_pending);
            all_gone = false;
            break;
        }
    }
    pthread_mutex_unlock(&a->clients_lock);
    agent_audit_flush(a, &a->bus_client, true);
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
