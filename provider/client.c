/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The provider's agent client: a small pool of private D-Bus connections
 * per process, opened on first use; a signing thread takes an idle one so
 * that threads sign in parallel (libdbus connections are thread-safe, so
 * past the pool's size threads share; the mutex only guards the pool).
 *
 * Fork: OpenSSL 3.0 gives providers no fork hook, so every call compares
 * getpid() with the owner of the state. A child never calls into the
 * inherited DBusConnection (its locks may be held by threads that do not
 * exist in the child): it closes the socket fd recorded at connect time,
 * if that fd still is the same socket, and forgets the object.
 *
 * Agent restart: a call failing with Disconnected/NotRunning on a
 * connection that predates the call drops it, reconnects and retries
 * once. FindKeys is idempotent and so is Sign (a signature over the same
 * digest), so both retry.
 *
 * The socket path is resolved once, when the provider starts: nginx
 * workers sign with a scrubbed environment.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "provider.h"

/* At most this many connections per process. A thread takes an idle one,
 * or opens a new one while fewer are open; past that, threads share (the
 * agent serves each connection on a thread of its own, so a connection per
 * signing thread is what lets signatures run in parallel). */
#define POOL_MAX 8

typedef struct pool_slot {
    DBusConnection *conn;     /* NULL when not open */
    int fd;                   /* socket of conn, recorded at connect time */
    dev_t dev;
    ino_t ino;
    unsigned users;           /* threads using it now */
} pool_slot_t;

struct prov_client {
    pthread_mutex_t lock;
    char *socket_path;        /* immutable */
    pool_slot_t slots[POOL_MAX]; /* guarded by lock */
    atomic_int owner;         /* pid the state belongs to */
    atomic_int claim;         /* pid resetting the state after a fork */
};

prov_client_t *prov_client_new(char *socket_path)
{
    prov_client_t *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        free(socket_path);
        return NULL;
    }
    if (pthread_mutex_init(&c->lock, NULL) != 0) {
        free(socket_path);
        free(c);
        return NULL;
    }
    /* libdbus >= 1.7 does this itself; harmless and cheap to repeat. */
    (void)dbus_threads_init_default();
    c->socket_path = socket_path;
    for (size_t i = 0; i < POOL_MAX; i++)
        c->slots[i].fd = -1;
    atomic_store(&c->owner, (int)getpid());
    atomic_store(&c->claim, (int)getpid());
    return c;
}

const char *prov_client_socket(const prov_client_t *c)
{
    return c != NULL ? c->socket_path : NULL;
}

/* Child side of a fork: abandon the parent's connections without touching
 * the DBusConnection objects. */
static void client_abandon_inherited(prov_client_t *c)
{
    for (size_t i = 0; i < POOL_MAX; i++) {
        pool_slot_t *s = &c->slots[i];
        struct stat st;

        if (s->conn != NULL && s->fd >= 0 && fstat(s->fd, &st) == 0 && S_ISSOCK(st.st_mode)
            && st.st_dev == s->dev && st.st_ino == s->ino)
            close(s->fd);
        /* The object (and its memory) is leaked on purpose. */
        s->conn = NULL;
        s->fd = -1;
        s->users = 0;
    }
}

static void client_check_fork(prov_client_t *c)
{
    int me = (int)getpid();

    while (atomic_load(&c->owner) != me) {
        int seen = atomic_load(&c->claim);

        if (seen != me && atomic_compare_exchange_strong(&c->claim, &seen, me)) {
            /* We are the first thread of this child to get here. The
             * inherited mutex may be held by a thread that did not survive
             * the fork: start with a fresh one. */
            pthread_mutex_init(&c->lock, NULL);
            client_abandon_inherited(c);
            atomic_store(&c->owner, me);
        } else {
            sched_yield();
        }
    }
}

/* Picks a slot for this call (lock held): an idle open connection, else a
 * slot to open, else the open one with the fewest users. */
static pool_slot_t *pick_slot_locked(prov_client_t *c)
{
    pool_slot_t *idle = NULL, *empty = NULL, *least = NULL;

    for (size_t i = 0; i < POOL_MAX; i++) {
        pool_slot_t *s = &c->slots[i];

        if (s->conn == NULL) {
            if (!empty)
                empty = s;
        } else if (s->users == 0) {
            idle = s;
            break;
        } else if (!least || s->users < least->users) {
            least = s;
        }
    }
    return idle ? idle : empty ? empty : least;
}

/* Returns a reference to a connection of the pool, opening one if needed.
 * *ret_fresh tells whether it was opened by this call. Release with
 * client_release(). */
static int client_acquire(prov_client_t *c, DBusConnection **ret_conn, bool *ret_fresh,
                          char **errmsg)
{
    DBusConnection *conn = NULL;
    pool_slot_t *s;
    bool fresh = false;
    int r = BUS_OK;

    client_check_fork(c);
    pthread_mutex_lock(&c->lock);
    s = pick_slot_locked(c);
    if (s->conn == NULL) {
        struct stat st;
        int fd = -1;

        if (c->socket_path == NULL) {
            r = BUS_ERR_NOT_RUNNING;
            if (errmsg != NULL)
                *errmsg = strdup("no agent socket: set P11AGENT_SOCKET or agent-socket");
            goto out;
        }
        r = bus_client_connect(c->socket_path, &conn, errmsg);
        if (r < 0)
            goto out;
        s->conn = conn;
        s->fd = -1;
        s->users = 0;
        if (dbus_connection_get_unix_fd(conn, &fd) && fd >= 0 && fstat(fd, &st) == 0) {
            s->fd = fd;
            s->dev = st.st_dev;
            s->ino = st.st_ino;
        }
        fresh = true;
    }
    s->users++;
    *ret_conn = dbus_connection_ref(s->conn);
    *ret_fresh = fresh;
out:
    pthread_mutex_unlock(&c->lock);
    return r;
}

/* Ends a call on `used`. With drop, closes it if it still is in the pool
 * (another thread may have replaced it already): the agent went away. The
 * caller still owns its reference. */
static void client_release(prov_client_t *c, DBusConnection *used, bool drop)
{
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < POOL_MAX; i++) {
        pool_slot_t *s = &c->slots[i];

        if (s->conn != used)
            continue;
        if (s->users > 0)
            s->users--;
        if (drop) {
            bus_client_close(s->conn);
            s->conn = NULL;
            s->fd = -1;
            s->users = 0;
        }
        break;
    }
    pthread_mutex_unlock(&c->lock);
}

typedef int (*client_op_fn)(DBusConnection *conn, void *arg, char **errmsg);

static bool is_connection_error(int r)
{
    return r == BUS_ERR_DISCONNECTED || r == BUS_ERR_NOT_RUNNING;
}

static int client_call(prov_client_t *c, client_op_fn op, void *arg, char **errmsg)
{
    int r = BUS_ERR_NOT_RUNNING;

    for (int attempt = 0; attempt < 2; attempt++) {
        DBusConnection *conn = NULL;
        bool fresh = false;
        char *msg = NULL;

        r = client_acquire(c, &conn, &fresh, &msg);
        if (r < 0) {
            if (errmsg != NULL)
                *errmsg = msg;
            else
                free(msg);
            break;
        }
        r = op(conn, arg, &msg);
        client_release(c, conn, is_connection_error(r));
        dbus_connection_unref(conn);
        if (is_connection_error(r) && !fresh && attempt == 0) {
            /* The agent restarted since we connected: try once more. */
            free(msg);
            continue;
        }
        if (errmsg != NULL)
            *errmsg = msg;
        else
            free(msg);
        break;
    }
    return r;
}

typedef struct find_args {
    const char *uri;
    bus_key_info_t *keys;
    size_t n;
} find_args_t;

static int op_find_keys(DBusConnection *conn, void *arg, char **errmsg)
{
    find_args_t *a = arg;

    return bus_client_find_keys(conn, a->uri, BUS_CALL_TIMEOUT_MS, &a->keys, &a->n, errmsg);
}

int prov_client_find_keys(prov_client_t *c, const char *uri, bus_key_info_t **ret_keys,
                          size_t *ret_n, char **errmsg)
{
    find_args_t a = { .uri = uri };
    int r = client_call(c, op_find_keys, &a, errmsg);

    if (r == BUS_OK) {
        *ret_keys = a.keys;
        *ret_n = a.n;
    }
    return r;
}

typedef struct sign_args {
    const char *uri;
    const bus_sign_params_t *p;
    const uint8_t *data;
    size_t len;
    uint8_t *sig;
    size_t sig_len;
} sign_args_t;

static int op_sign(DBusConnection *conn, void *arg, char **errmsg)
{
    sign_args_t *a = arg;

    return bus_client_sign(conn, a->uri, a->p, a->data, a->len, BUS_CALL_TIMEOUT_MS, &a->sig,
                           &a->sig_len, errmsg);
}

int prov_client_sign(prov_client_t *c, const char *uri, const bus_sign_params_t *p,
                     const uint8_t *data, size_t len, uint8_t **ret_sig, size_t *ret_len,
                     char **errmsg)
{
    sign_args_t a = { .uri = uri, .p = p, .data = data, .len = len };
    int r = client_call(c, op_sign, &a, errmsg);

    if (r == BUS_OK) {
        *ret_sig = a.sig;
        *ret_len = a.sig_len;
    }
    return r;
}

void prov_client_free(prov_client_t *c)
{
    if (c == NULL)
        return;
    if (atomic_load(&c->owner) == (int)getpid()) {
        for (size_t i = 0; i < POOL_MAX; i++)
            bus_client_close(c->slots[i].conn);
        pthread_mutex_destroy(&c->lock);
    } else {
        client_abandon_inherited(c);
    }
    free(c->socket_path);
    free(c);
}
