/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The agent client of the provider and the PKCS#11 module: a small pool
 * of private D-Bus connections per process, opened on first use; a signing thread takes an idle one so
 * that threads sign in parallel (libdbus connections are thread-safe, so
 * past the pool's size threads share; the mutex only guards the pool).
 *
 * Fork: OpenSSL 3.0 gives providers no fork hook (and PKCS#11 programs
 * rarely call C_Initialize again in a child), so every call checks whether
 * it runs in a child: a page of the pool is MADV_WIPEONFORK, the kernel
 * gives a child (any fork or clone without CLONE_VM, atfork handlers or
 * not) that page zeroed, so a call that still reads the pool's mark there
 * knows it is in the owner process without a system call; otherwise (or
 * where the kernel lacks MADV_WIPEONFORK) it compares getpid() with the
 * owner of the state. A child never calls into the
 * inherited DBusConnection (its locks may be held by threads that do not
 * exist in the child): it closes the socket fd recorded at connect time,
 * if that fd still is the same socket, and forgets the object.
 *
 * Agent restart: a call failing with Disconnected/NotRunning on a
 * connection that predates the call drops it, reconnects and retries
 * once. FindKeys is idempotent and so is Sign (a signature over the same
 * digest), so both retry. While the agent restarts (SIGKILL and a
 * supervisor starting a new one: a few hundred ms with nothing listening
 * on the socket) connecting is refused; so once a connection of this
 * process has dropped, calls of every thread keep trying to connect for up
 * to RECONNECT_WAIT_MS before they fail. Without that, every signature
 * attempted in the gap fails (thousands under load, where one per thread
 * in flight is what a restart should cost). A process that never had a
 * connection, or whose agent stays away past the window, fails at once.
 *
 * Refused growth: the agent caps its clients (max-clients, and
 * max-clients-per-user across all of a user's processes). An extra
 * connection it refuses (a Busy answer to its first call, or closed before
 * that), or any failure to open one while the pool already holds a live
 * connection, does not fail the call: the connection is dropped and the
 * call waits for, and shares, one of the open ones, as if the pool's cap
 * were reached. The pool remembers: for REFUSED_HOLD_MS it opens no more
 * than it holds, then lets one connection try (one at a time, so refusals
 * cost the agent a connection attempt every few seconds, not a storm);
 * once one is admitted it grows freely again. Only a process's first
 * connection fails the call (with the socket and the cause), as the
 * window above says. A Busy answer from the token itself on a new
 * connection is retried once on a shared one, and lowers the cap alike.
 *
 * Signing channel: on each pooled connection the first Sign goes over
 * D-Bus (a process that signs once spares the channel's two round trips),
 * the next asks the agent for a signing channel (OpenChannel,
 * dbus/channel.h) and signs over it from then on: key URIs bound to handles once, then one small frame each way per
 * signature. An agent without channels (UnknownMethod) or a request the
 * channel cannot carry (a long message, a hash it has no index for) signs
 * with the D-Bus Sign call; P11AGENT_CHANNEL=0 in the environment when the
 * pool is made forces D-Bus Sign (for comparison). Decrypt goes the same
 * way (one count of first uses for both, DECRYPT frames, the same
 * fallbacks to the D-Bus Decrypt call). The channel belongs to
 * its connection: it closes with it, a child abandons it with it (closing
 * its inherited fd), and a channel that breaks (the agent restarted)
 * fails the call as Disconnected, which reconnects and retries as above.
 *
 * The socket path is resolved once, when the pool is made (the provider
 * starts, the module is initialised): nginx workers sign with a scrubbed
 * environment.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chanclient.h"
#include "pool.h"

/* At most this many connections per process (bus_pool_set_max, default
 * BUS_POOL_DEFAULT_MAX). A thread takes an idle one, or opens a new one
 * while fewer are open; past that, threads share and wait for each other
 * (the agent serves each connection on a thread of its own, one request at
 * a time, so a connection per signing thread is what lets signatures run in
 * parallel). */
#define POOL_MAX BUS_POOL_MAX_MAX

/* After a connection dropped: how long calls wait for the agent to accept
 * connections again, and how often they try meanwhile. */
#define RECONNECT_WAIT_MS 3000
#define RECONNECT_POLL_MS 20

/* After the agent refused an extra connection: how long the pool opens no
 * more than it holds; and how many refused connections one call goes past
 * (each refusal lowers the cap, so a call rarely meets more than one). */
#define REFUSED_HOLD_MS 5000
#define REFUSED_RETRIES 8

typedef struct pool_slot {
    DBusConnection *conn;     /* NULL when not open */
    int fd;                   /* socket of conn, recorded at connect time */
    dev_t dev;
    ino_t ino;
    unsigned users;           /* threads using it now */
    bool admitted;            /* a call on it was answered: the agent took it */
    int64_t opened_ms;        /* when it was opened (monotonic) */
    int chan_fd;              /* its signing channel's fd, or -1 (for a child) */
    dev_t chan_dev;
    ino_t chan_ino;
} pool_slot_t;

/* Sign-call templates (dbus/: bus_new_sign_template): per key URI and
 * parameters, the message is marshalled once and copied per signature. */
#define TMPL_MAX 16

typedef struct sign_tmpl {
    char *uri;
    bus_sign_params_t p;
    DBusMessage *msg;
} sign_tmpl_t;

struct bus_pool {
    pthread_mutex_t tmpl_lock;
    sign_tmpl_t tmpl[TMPL_MAX]; /* guarded by tmpl_lock */
    unsigned tmpl_next;         /* the slot to replace next */
    pthread_mutex_t lock;
    char *socket_path;        /* immutable */
    pool_slot_t slots[POOL_MAX]; /* guarded by lock */
    unsigned max;             /* slots in use: 1..POOL_MAX (bus_pool_set_max) */
    bool answered;            /* guarded by lock: the agent answered a call */
    int64_t lost_since_ms;    /* guarded by lock: a connection dropped then; */
    int64_t lost_until_ms;    /* until then (monotonic ms) connecting is
                                 retried; 0: not restarting */
    unsigned grow_cap;        /* guarded by lock: after a refusal, open at
                                 most this many (one more once the hold is
                                 over: a probe); 0: up to max */
    int64_t grow_hold_until_ms; /* guarded by lock: end of that hold */
    bool use_channel;         /* immutable: P11AGENT_CHANNEL is not "0" */
    dbus_int32_t chan_slot;   /* libdbus data slot: a connection's pool_chan_t */
    volatile uint64_t *fork_page; /* MADV_WIPEONFORK page holding fork_mark
                                     while in the owner; NULL: use getpid() */
    size_t fork_page_len;
    uint64_t fork_mark;       /* immutable, non-zero */
    atomic_int owner;         /* pid the state belongs to */
    atomic_int claim;         /* pid resetting the state after a fork */
};

/* (Re)arms the fork detector: the page is made (once) and marked
 * wipe-on-fork in this process, then holds the mark. Without it (old
 * kernel, no memory) every call asks getpid(). */
static void fork_page_arm(bus_pool_t *c)
{
    long pg = sysconf(_SC_PAGESIZE);
    void *m;

    if (c->fork_page == NULL) {
        c->fork_page_len = pg > 0 ? (size_t)pg : 4096;
        m = mmap(NULL, c->fork_page_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
        if (m == MAP_FAILED)
            return;
        c->fork_page = m;
    }
#ifdef MADV_WIPEONFORK
    if (madvise((void *)c->fork_page, c->fork_page_len, MADV_WIPEONFORK) == 0) {
        *c->fork_page = c->fork_mark;
        return;
    }
#endif
    munmap((void *)c->fork_page, c->fork_page_len);
    c->fork_page = NULL;
}

bus_pool_t *bus_pool_new(char *socket_path)
{
    bus_pool_t *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        free(socket_path);
        return NULL;
    }
    if (pthread_mutex_init(&c->lock, NULL) != 0) {
        free(socket_path);
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->tmpl_lock, NULL);
    /* libdbus >= 1.7 does this itself; harmless and cheap to repeat. */
    (void)dbus_threads_init_default();
    c->socket_path = socket_path;
    for (size_t i = 0; i < POOL_MAX; i++) {
        c->slots[i].fd = -1;
        c->slots[i].chan_fd = -1;
    }
    c->max = BUS_POOL_DEFAULT_MAX;
    c->chan_slot = -1;
    c->use_channel = !(getenv("P11AGENT_CHANNEL") && strcmp(getenv("P11AGENT_CHANNEL"), "0") == 0) &&
                     dbus_connection_allocate_data_slot(&c->chan_slot);
    atomic_store(&c->owner, (int)getpid());
    atomic_store(&c->claim, (int)getpid());
    c->fork_mark = 0x70313161706f6f6cull; /* "p11apool" */
    fork_page_arm(c);
    return c;
}

void bus_pool_set_max(bus_pool_t *c, unsigned n)
{
    if (c == NULL || n == 0)
        return;
    pthread_mutex_lock(&c->lock);
    /* only grows or shrinks the slots used from now on; open connections
     * past a lower maximum stay until they drop */
    c->max = n < POOL_MAX ? n : POOL_MAX;
    pthread_mutex_unlock(&c->lock);
}

const char *bus_pool_socket(const bus_pool_t *c)
{
    return c != NULL ? c->socket_path : NULL;
}

/* Child side of a fork: abandon the parent's connections without touching
 * the DBusConnection objects. */
static void client_abandon_inherited(bus_pool_t *c)
{
    for (size_t i = 0; i < POOL_MAX; i++) {
        pool_slot_t *s = &c->slots[i];
        struct stat st;

        if (s->conn != NULL && s->fd >= 0 && fstat(s->fd, &st) == 0 && S_ISSOCK(st.st_mode)
            && st.st_dev == s->dev && st.st_ino == s->ino)
            close(s->fd);
        if (s->conn != NULL && s->chan_fd >= 0 && fstat(s->chan_fd, &st) == 0 &&
            S_ISSOCK(st.st_mode) && st.st_dev == s->chan_dev && st.st_ino == s->chan_ino)
            close(s->chan_fd);
        /* The object (and its memory) is leaked on purpose. */
        s->conn = NULL;
        s->fd = -1;
        s->chan_fd = -1;
        s->users = 0;
    }
    c->lost_until_ms = 0;
    c->grow_cap = 0;
    c->grow_hold_until_ms = 0;
}

static void client_check_fork(bus_pool_t *c)
{
    int me;

    /* In the owner the page holds the mark: no system call. */
    if (c->fork_page != NULL && *c->fork_page == c->fork_mark)
        return;
    me = (int)getpid();
    while (atomic_load(&c->owner) != me) {
        int seen = atomic_load(&c->claim);

        if (seen != me && atomic_compare_exchange_strong(&c->claim, &seen, me)) {
            /* We are the first thread of this child to get here. The
             * inherited mutex may be held by a thread that did not survive
             * the fork: start with a fresh one. */
            pthread_mutex_init(&c->lock, NULL);
            pthread_mutex_init(&c->tmpl_lock, NULL);
            client_abandon_inherited(c);
            fork_page_arm(c);
            atomic_store(&c->owner, me);
        } else {
            sched_yield();
        }
    }
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Open connections of the pool (those past a lowered max aside), but
 * `except` (lock held). */
static unsigned open_count_locked(const bus_pool_t *c, const DBusConnection *except)
{
    unsigned n = 0;

    for (size_t i = 0; i < c->max; i++)
        if (c->slots[i].conn != NULL && c->slots[i].conn != except)
            n++;
    return n;
}

/* How many connections the pool may hold now (lock held): max, or after a
 * refusal what it held then (one more once the hold is over). */
static unsigned grow_limit_locked(const bus_pool_t *c, int64_t now)
{
    unsigned lim;

    if (c->grow_cap == 0)
        return c->max;
    lim = now < c->grow_hold_until_ms ? c->grow_cap : c->grow_cap + 1;
    return lim < c->max ? lim : c->max;
}

/* The agent refused a connection (or one could not be opened) while the
 * pool held `open` others: hold at that many for REFUSED_HOLD_MS. */
static void note_refusal_locked(bus_pool_t *c, unsigned open)
{
    c->grow_cap = open > 0 ? open : 1;
    c->grow_hold_until_ms = now_ms() + REFUSED_HOLD_MS;
}

/* Picks a slot for this call (lock held): an idle open connection, else a
 * slot to open (while the pool is under its limit), else the open one with
 * the fewest users. */
static pool_slot_t *pick_slot_locked(bus_pool_t *c)
{
    pool_slot_t *idle = NULL, *empty = NULL, *least = NULL;

    for (size_t i = 0; i < c->max; i++) {
        pool_slot_t *s = &c->slots[i];

        if (s->conn == NULL) {
            if (!empty)
                empty = s;
        } else if (s->users == 0) {
            idle = s;
            break;
        } else if (!least || (s->admitted && !least->admitted) ||
                   (s->admitted == least->admitted && s->users < least->users)) {
            /* one the agent may still refuse is shared last */
            least = s;
        }
    }
    if (idle)
        return idle;
    if (empty && least && c->grow_cap != 0 &&
        open_count_locked(c, NULL) >= grow_limit_locked(c, now_ms()))
        return least;
    return empty ? empty : least;
}

/* Returns a reference to a connection of the pool, opening one if needed.
 * *ret_fresh tells whether it was opened by this call, *ret_unadmitted
 * whether no call on it was answered yet. Release with client_release(). */
static int client_acquire(bus_pool_t *c, DBusConnection **ret_conn, bool *ret_fresh,
                          bool *ret_unadmitted, char **errmsg)
{
    DBusConnection *conn = NULL;
    pool_slot_t *s;
    bool fresh = false;
    int r = BUS_OK;

    client_check_fork(c);
    pthread_mutex_lock(&c->lock);
retry:
    r = BUS_OK;
    s = pick_slot_locked(c);
    if (s->conn == NULL) {
        struct stat st;
        int fd = -1;

        if (c->socket_path == NULL) {
            r = BUS_ERR_NOT_RUNNING;
            if (errmsg != NULL)
                *errmsg = strdup("no agent socket: set P11AGENT_SOCKET or the agent-socket setting");
            goto out;
        }
        r = bus_client_connect(c->socket_path, &conn, errmsg);
        if (r == BUS_ERR_NOT_RUNNING && c->lost_until_ms != 0) {
            if (now_ms() < c->lost_until_ms) {
                /* The agent went away a moment ago: wait for it to be
                 * back (another thread may reconnect meanwhile). */
                if (errmsg != NULL) {
                    free(*errmsg);
                    *errmsg = NULL;
                }
                pthread_mutex_unlock(&c->lock);
                usleep(RECONNECT_POLL_MS * 1000);
                pthread_mutex_lock(&c->lock);
                goto retry;
            }
            c->lost_until_ms = 0; /* gave up: fail at once from now on */
        }
        if (r < 0 && r != BUS_ERR_NO_MEMORY && c->lost_until_ms == 0 &&
            open_count_locked(c, NULL) > 0) {
            /* An extra connection that cannot be had: share an open one
             * (pick_slot_locked no longer offers an empty slot). */
            note_refusal_locked(c, open_count_locked(c, NULL));
            if (errmsg != NULL) {
                free(*errmsg);
                *errmsg = NULL;
            }
            goto retry;
        }
        if (r < 0)
            goto out;
        s->conn = conn;
        s->fd = -1;
        s->chan_fd = -1;
        s->users = 0;
        s->admitted = false;
        s->opened_ms = now_ms();
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
    *ret_unadmitted = !s->admitted;
out:
    pthread_mutex_unlock(&c->lock);
    return r;
}

static bool is_connection_error(int r)
{
    return r == BUS_ERR_DISCONNECTED || r == BUS_ERR_NOT_RUNNING;
}

/* Ends a call on `used` that returned r. A connection error drops the
 * connection if it still is in the pool (another thread may have replaced
 * it already). If the process had a working connection (this one, or an
 * earlier one), the agent is then taken as restarting: connecting is
 * retried for RECONNECT_WAIT_MS, until a connection opened since answers.
 * But a new connection that the agent refused (closed, or Busy, on its
 * first call: `unadmitted`) while the pool holds others is a limit, not a
 * restart: it is dropped, the pool stops growing for a while and
 * *ret_refused tells the caller to run the call again on a shared one.
 * The caller still owns its reference. Returns whether the agent counts as
 * restarting now. */
static bool client_release(bus_pool_t *c, DBusConnection *used, int r, bool fresh,
                           bool unadmitted, bool *ret_refused)
{
    bool conn_err = is_connection_error(r), restarting, refused = false;
    int64_t now = now_ms();

    pthread_mutex_lock(&c->lock);
    /* Busy comes from a live agent even while a restart is suspected (the
     * agent closed an idle connection of ours to admit another: that
     * looks like one) */
    if (unadmitted && (r == BUS_ERR_BUSY || (conn_err && c->lost_until_ms == 0)) &&
        open_count_locked(c, used) > 0) {
        refused = conn_err = true; /* dropped below, no restart */
        note_refusal_locked(c, open_count_locked(c, used));
    } else if (unadmitted && c->grow_cap != 0 && !conn_err && now >= c->grow_hold_until_ms) {
        c->grow_cap = 0; /* a new one was admitted after the hold: grow again */
    }
    if (conn_err && !refused && c->lost_until_ms == 0 && (!fresh || c->answered)) {
        c->lost_since_ms = now;
        c->lost_until_ms = now + RECONNECT_WAIT_MS;
    }
    for (size_t i = 0; i < POOL_MAX; i++) {
        pool_slot_t *s = &c->slots[i];

        if (s->conn != used)
            continue;
        if (s->users > 0)
            s->users--;
        if (!conn_err)
            s->admitted = true;
        if (conn_err) {
            bus_client_close(s->conn);
            s->conn = NULL;
            s->fd = -1;
            s->chan_fd = -1;
            s->users = 0;
        } else if (c->lost_until_ms != 0 && s->opened_ms >= c->lost_since_ms) {
            c->lost_until_ms = 0; /* the agent is back */
        }
        break;
    }
    if (!conn_err)
        c->answered = true;
    restarting = c->lost_until_ms != 0 && now < c->lost_until_ms;
    pthread_mutex_unlock(&c->lock);
    *ret_refused = refused;
    return restarting;
}

/* Runs op on a pooled connection. errno is left as the caller had it:
 * socket and libdbus calls set it on their way (ENOENT with no agent,
 * EAGAIN after a non-blocking read), and applications that look at errno
 * after an OpenSSL failure (Python's ssl raises FileNotFoundError or
 * BlockingIOError then) must see the OpenSSL error instead. */
int bus_pool_call(bus_pool_t *c, bus_pool_op_fn op, void *arg, char **errmsg)
{
    int r = BUS_ERR_NOT_RUNNING, saved_errno = errno, refusals = 0;

    for (int attempt = 0;; attempt++) {
        DBusConnection *conn = NULL;
        bool fresh = false, unadmitted = false, restarting, refused;
        char *msg = NULL;

        r = client_acquire(c, &conn, &fresh, &unadmitted, &msg);
        if (r < 0) {
            if (errmsg != NULL)
                *errmsg = msg;
            else
                free(msg);
            break;
        }
        r = op(conn, arg, &msg);
        restarting = client_release(c, conn, r, fresh, unadmitted, &refused);
        dbus_connection_unref(conn);
        if (refused && refusals++ < REFUSED_RETRIES) {
            /* the agent would not take one more: again on a shared one,
             * not counted as an attempt (the restart rules stay whole) */
            free(msg);
            attempt--;
            continue;
        }
        if (is_connection_error(r) && ((!fresh && attempt == 0) || restarting)) {
            /* The agent restarted since we connected: once more; and while
             * it restarts (a connection opened now may still reach the
             * dying one), until it answers or the window closes. */
            free(msg);
            if (attempt > 0)
                usleep(RECONNECT_POLL_MS * 1000);
            continue;
        }
        if (errmsg != NULL)
            *errmsg = msg;
        else
            free(msg);
        break;
    }
    errno = saved_errno;
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

int bus_pool_find_keys(bus_pool_t *c, const char *uri, bus_key_info_t **ret_keys,
                          size_t *ret_n, char **errmsg)
{
    find_args_t a = { .uri = uri };
    int r = bus_pool_call(c, op_find_keys, &a, errmsg);

    if (r == BUS_OK) {
        *ret_keys = a.keys;
        *ret_n = a.n;
    }
    return r;
}

static bool same_params(const bus_sign_params_t *a, const bus_sign_params_t *b)
{
    return a->alg == b->alg && a->salt_len == b->salt_len && strcmp(a->hash, b->hash) == 0 &&
           strcmp(a->mgf1_hash, b->mgf1_hash) == 0;
}

/* A Sign call for uri/p with data: a copy of the cached template, made on
 * first use. NULL on bad arguments or out of memory. */
static DBusMessage *sign_call(bus_pool_t *c, const char *uri, const bus_sign_params_t *p,
                              const uint8_t *data, size_t len)
{
    DBusMessage *msg = NULL;
    sign_tmpl_t *t = NULL;

    pthread_mutex_lock(&c->tmpl_lock);
    for (size_t i = 0; i < TMPL_MAX && !t; i++)
        if (c->tmpl[i].msg && strcmp(c->tmpl[i].uri, uri) == 0 && same_params(&c->tmpl[i].p, p))
            t = &c->tmpl[i];
    if (!t) {
        DBusMessage *m = bus_new_sign_template(uri, p);
        char *u = strdup(uri);

        if (m && u) {
            t = &c->tmpl[c->tmpl_next];
            c->tmpl_next = (c->tmpl_next + 1) % TMPL_MAX;
            if (t->msg)
                dbus_message_unref(t->msg);
            free(t->uri);
            *t = (sign_tmpl_t){.uri = u, .p = *p, .msg = m};
        } else {
            if (m)
                dbus_message_unref(m);
            free(u);
        }
    }
    if (t)
        msg = bus_sign_call_from_template(t->msg, data, len);
    pthread_mutex_unlock(&c->tmpl_lock);
    return msg;
}

typedef struct sign_args {
    bus_pool_t *client;
    const char *uri;
    const bus_sign_params_t *p;
    const uint8_t *data;
    size_t len;
    uint8_t *sig;
    size_t sig_len;
} sign_args_t;

/* The signing channel of conn (chanclient.c), made on first use and freed
 * with the connection (NULL: out of memory). */
static bus_chan_client_t *chan_of(bus_pool_t *c, DBusConnection *conn)
{
    bus_chan_client_t *ch = dbus_connection_get_data(conn, c->chan_slot);

    /* libdbus guards its data slots; the pool lock only orders the making */
    if (ch)
        return ch;
    pthread_mutex_lock(&c->lock);
    ch = dbus_connection_get_data(conn, c->chan_slot);
    if (!ch) {
        ch = bus_chan_client_new();
        if (ch && !dbus_connection_set_data(conn, c->chan_slot, ch, bus_chan_client_free)) {
            bus_chan_client_free(ch);
            ch = NULL;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return ch;
}

/* A channel was opened on conn: a forked child closes its fd with the
 * connection's socket (client_abandon_inherited). */
static void chan_opened(void *arg, DBusConnection *conn, int fd, const struct stat *st)
{
    bus_pool_t *c = arg;

    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < POOL_MAX; i++) {
        if (c->slots[i].conn == conn) {
            c->slots[i].chan_fd = fd;
            c->slots[i].chan_dev = st->st_dev;
            c->slots[i].chan_ino = st->st_ino;
        }
    }
    pthread_mutex_unlock(&c->lock);
}

static int op_sign(DBusConnection *conn, void *arg, char **errmsg)
{
    sign_args_t *a = arg;
    DBusMessage *msg;
    int r;

    /* the channel, unless the request cannot go on one */
    if (a->client->use_channel && a->len <= BUS_CHAN_MAX_PAYLOAD &&
        bus_chan_hash_index(a->p->hash) >= 0 && bus_chan_hash_index(a->p->mgf1_hash) >= 0) {
        bus_chan_client_t *ch = chan_of(a->client, conn);

        r = ch ? bus_chan_client_sign(ch, conn, a->uri, a->p, a->data, a->len, chan_opened,
                                      a->client, &a->sig, &a->sig_len, errmsg)
               : BUS_CHAN_UNAVAILABLE;
        if (r != BUS_CHAN_UNAVAILABLE)
            return r;
    }
    msg = sign_call(a->client, a->uri, a->p, a->data, a->len);

    if (!msg) {
        if (errmsg && asprintf(errmsg, "cannot build a signature request (%zu bytes)", a->len) < 0)
            *errmsg = NULL;
        return BUS_ERR_INVALID_ARGS;
    }
    r = bus_client_sign_call(conn, msg, BUS_CALL_TIMEOUT_MS, &a->sig, &a->sig_len, errmsg);
    dbus_message_unref(msg);
    return r;
}

int bus_pool_sign(bus_pool_t *c, const char *uri, const bus_sign_params_t *p,
                     const uint8_t *data, size_t len, uint8_t **ret_sig, size_t *ret_len,
                     char **errmsg)
{
    sign_args_t a = { .client = c, .uri = uri, .p = p, .data = data, .len = len };
    int r = bus_pool_call(c, op_sign, &a, errmsg);

    if (r == BUS_OK) {
        *ret_sig = a.sig;
        *ret_len = a.sig_len;
    }
    return r;
}

typedef struct decrypt_args {
    bus_pool_t *client;
    const char *uri;
    const bus_decrypt_params_t *p;
    const uint8_t *data;
    size_t len;
    uint8_t *plain;
    size_t plain_len;
} decrypt_args_t;

static int op_decrypt(DBusConnection *conn, void *arg, char **errmsg)
{
    decrypt_args_t *a = arg;

    /* the channel as for op_sign, unless the request does not fit a frame */
    if (a->client->use_channel && bus_chan_can_decrypt(a->p, a->len)) {
        bus_chan_client_t *ch = chan_of(a->client, conn);
        int r = ch ? bus_chan_client_decrypt(ch, conn, a->uri, a->p, a->data, a->len,
                                             chan_opened, a->client, &a->plain,
                                             &a->plain_len, errmsg)
                   : BUS_CHAN_UNAVAILABLE;

        if (r != BUS_CHAN_UNAVAILABLE)
            return r;
    }
    return bus_client_decrypt(conn, a->uri, a->p, a->data, a->len, BUS_CALL_TIMEOUT_MS,
                              &a->plain, &a->plain_len, errmsg);
}

int bus_pool_decrypt(bus_pool_t *c, const char *uri, const bus_decrypt_params_t *p,
                     const uint8_t *data, size_t len, uint8_t **ret_plain, size_t *ret_len,
                     char **errmsg)
{
    decrypt_args_t a = {.client = c, .uri = uri, .p = p, .data = data, .len = len};
    int r = bus_pool_call(c, op_decrypt, &a, errmsg);

    if (r == BUS_OK) {
        *ret_plain = a.plain;
        *ret_len = a.plain_len;
    }
    return r;
}

void bus_pool_free(bus_pool_t *c)
{
    if (c == NULL)
        return;
    if (atomic_load(&c->owner) == (int)getpid()) {
        for (size_t i = 0; i < POOL_MAX; i++)
            bus_client_close(c->slots[i].conn);
        pthread_mutex_destroy(&c->lock);
        pthread_mutex_destroy(&c->tmpl_lock);
    } else {
        client_abandon_inherited(c);
    }
    for (size_t i = 0; i < TMPL_MAX; i++) {
        if (c->tmpl[i].msg)
            dbus_message_unref(c->tmpl[i].msg);
        free(c->tmpl[i].uri);
    }
    if (c->chan_slot >= 0)
        dbus_connection_free_data_slot(&c->chan_slot);
    if (c->fork_page != NULL)
        munmap((void *)c->fork_page, c->fork_page_len);
    free(c->socket_path);
    free(c);
}
