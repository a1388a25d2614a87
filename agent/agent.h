/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include <dbus/dbus.h>

#include "bus.h"
#include "conf.h"
#include "loop.h"
#include "tok.h"

/* --- logging (agent/log.c) --- */
typedef enum { AGENT_LOG_ERR, AGENT_LOG_WARN, AGENT_LOG_INFO, AGENT_LOG_DEBUG } agent_log_level_t;

/* Debug categories, switched on by P11AGENT_DEBUG=bus,sign,pin,pkcs11,all
 * or --debug (the same list; pkcs11 is the token layer's trace, which reads
 * P11AGENT_DEBUG itself: main sets it from --debug). */
#define AGENT_DBG_BUS (1u << 0)
#define AGENT_DBG_SIGN (1u << 1)
#define AGENT_DBG_PIN (1u << 2)
#define AGENT_DBG_PKCS11 (1u << 3)

void agent_log_init(const char *debug_spec);
/* From now on log lines go to syslog (the journal), not stderr: a detached
 * agent must not keep writing to the terminal that started it. */
void agent_log_to_syslog(void);
/* Replaces *errmsg (if errmsg is not NULL) with a formatted message. */
void agent_set_errmsg(char **errmsg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool agent_debug_enabled(unsigned category);
/* Writes one line. Whatever the arguments hold, the line has no control
 * character and no invalid UTF-8 (each such byte becomes \xNN, \n etc.);
 * callers still escape client and module strings with agent_esc. */
void agent_log(agent_log_level_t level, const char *func, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
/* text_escape of s (NULL: "") into buf, for a log line; returns buf. */
const char *agent_esc(char *buf, size_t size, const char *s);
/* Room for an escaped client path (agent_client_t.exe, 4 bytes a byte). */
#define AGENT_EXE_ESC_MAX 1040
/* Room for an escaped token or key label (a token label is 32 bytes). */
#define AGENT_LABEL_ESC_MAX 512
#define agent_err(...) agent_log(AGENT_LOG_ERR, __func__, __VA_ARGS__)
#define agent_warn(...) agent_log(AGENT_LOG_WARN, __func__, __VA_ARGS__)
#define agent_info(...) agent_log(AGENT_LOG_INFO, __func__, __VA_ARGS__)
#define agent_debug(cat, ...)                                                                      \
    do {                                                                                           \
        if (agent_debug_enabled(cat))                                                              \
            agent_log(AGENT_LOG_DEBUG, __func__, __VA_ARGS__);                                     \
    } while (0)

/* --- PIN sources and secure buffers (agent/pin.c) --- */

/* A PIN in mlock'ed memory, wiped on free. */
typedef struct agent_secret {
    char *buf; /* NUL-terminated */
    size_t len;
    size_t cap;
} agent_secret_t;

void agent_secret_free(agent_secret_t *s);
/* A locked copy of len bytes of pin: 0, -E2BIG (len > PIN_MAX) or the
 * -errno of mmap. */
int agent_secret_new(agent_secret_t *ret, const char *pin, size_t len);

typedef enum { AGENT_PIN_NONE, AGENT_PIN_FILE } agent_pin_kind_t;

typedef struct agent_pin_source {
    agent_pin_kind_t kind;
    char *path;   /* AGENT_PIN_FILE */
    bool strict;  /* refuse a file others can read (system mode) */
} agent_pin_source_t;

/* "file:PATH", or "credential:NAME" (systemd LoadCredential=, read from
 * $CREDENTIALS_DIRECTORY/NAME) -> source. -EINVAL with a message on bad
 * syntax. */
int agent_pin_source_parse(const char *spec, agent_pin_source_t *ret, char **errmsg);
void agent_pin_source_clear(agent_pin_source_t *src);
/* Reads the PIN (one line; a trailing newline is dropped). The identity of
 * what was read (device, inode, size, mtime) goes to ret_id so that a PIN the
 * token rejected is never replayed while the file is unchanged. Returns 0,
 * or with *errmsg naming the file: -ENOENT (no source), -E2BIG (first line
 * over PIN_MAX bytes), -ENODATA (empty), -EINVAL (not a regular file),
 * -EPERM (strict and others can read it), another -errno (open/read). */
typedef struct agent_pin_id {
    dev_t dev;
    ino_t ino;
    off_t size;
    int64_t mtime_ns;
} agent_pin_id_t;
int agent_pin_source_read(const agent_pin_source_t *src, agent_secret_t *ret,
                          agent_pin_id_t *ret_id, char **errmsg);

/* --- the agent --- */

/* Per-token login state the agent keeps across rescans, keyed by token URI.
 * Entries live in a fixed array and are never moved or freed while the agent
 * runs, so signing threads read the atomics without taking login_lock. */
#define AGENT_MAX_TOKENS 128

typedef struct agent_token_state {
    char *token_uri;         /* immutable once published */
    /* One login (and prompt) per token at a time; taken before keys_lock. */
    pthread_mutex_t lock;
    /* under lock: */
    bool pin_rejected;       /* the pin source's PIN was rejected ... */
    agent_pin_id_t rejected; /* ... while the file looked like this */
    agent_secret_t cached;   /* a PIN from a prompt or unlock, for re-login and always-auth */
    unsigned unlock_failures;       /* wrong Unlock PINs in a row */
    int64_t unlock_not_before_ms;   /* no Unlock PIN is tried before (CLOCK_MONOTONIC) */
    /* readable without the lock: */
    atomic_bool has_cached;
    atomic_int_fast64_t login_at_ms; /* CLOCK_MONOTONIC of our login, 0: none */
    atomic_int_fast64_t last_use_ms;
    /* this login ends then (unlock -t, CLOCK_MONOTONIC ms), 0: only the cache
     * settings apply */
    atomic_int_fast64_t login_until_ms;
} agent_token_state_t;

/* A client on the agent's socket: served by a thread of its own that reads
 * a request, signs and replies (no hand-off between threads). */
#define AGENT_MAX_GROUPS 64

/* A socket connection's state. PENDING until it has authenticated and its
 * first method call arrived: it costs no client slot, only one of the
 * AGENT_MAX_PENDING, and is closed after auth-timeout. Then IDLE and BUSY
 * (in a request: never closed by the agent) alternate; CLOSING once the agent
 * chose to close it (its thread ends it). */
typedef enum {
    AGENT_CONN_PENDING,
    AGENT_CONN_IDLE,
    AGENT_CONN_BUSY,
    AGENT_CONN_CLOSING,
} agent_conn_state_t;

/* Which count of agent_t a connection is in (under clients_lock). */
typedef enum { AGENT_SLOT_NONE, AGENT_SLOT_PENDING, AGENT_SLOT_CLIENT } agent_slot_t;

/* What the audit record of a successful use says; written once the result
 * is on its way (agent_audit_use). */
typedef struct agent_use_audit {
    bool set;
    const char *event; /* static: "sign", "decrypt" */
    const char *alg;   /* static */
    char hash[16];
    char key[512];
    long long duration_us;
    int64_t at_ms; /* when it ended (CLOCK_MONOTONIC ms, as agent_now_ms) */
} agent_use_audit_t;

/* audit-interval: per connection, the successful uses of a (key, event,
 * mechanism) counted since the last record, written as one summary record
 * when the interval ends (audit.c). lock is a leaf but for audit_lock. */
#define AGENT_AUDIT_BATCH_MAX 8
typedef struct agent_audit_batch {
    pthread_mutex_t lock;
    bool lock_ready;
    atomic_int_fast64_t next_ms; /* the earliest end of an interval (monotonic ms), 0: none */
    size_t n;
    struct agent_audit_sum {
        const char *event;
        const char *alg;
        char hash[16];
        char *key;              /* malloc'd */
        int64_t until_ms;       /* this interval ends (monotonic ms) */
        unsigned long long count; /* uses in it not yet written */
        long long total_us;
        struct timespec first;  /* CLOCK_REALTIME of the first of them */
    } sums[AGENT_AUDIT_BATCH_MAX];
} agent_audit_batch_t;

typedef struct agent_client {
    struct agent_client *next;
    struct agent *agent;
    DBusConnection *conn;
    int fd;
    atomic_int state;                   /* agent_conn_state_t */
    agent_slot_t slot;                  /* under clients_lock */
    int64_t since_ms;                   /* accepted (monotonic ms) */
    atomic_int_fast64_t last_active_ms; /* its last request ended, or since_ms */
    bool via_session_bus; /* no peer credentials: treated as the owner */
    /* Not admitted (allow-users/groups, per-user owner): authenticated as
     * a pending connection only to get org.p11agent.Error.Denied as the
     * answer to its first call, then closed; never takes a client slot. */
    bool denied;
    bool stop_after_reply; /* Stop(): SIGTERM ourselves once replied */
    /* Peer credentials, read with SO_PEERCRED when the client connected. */
    uid_t uid;
    gid_t gid;
    pid_t pid;
    gid_t groups[AGENT_MAX_GROUPS]; /* supplementary groups (/proc/PID/status) */
    size_t n_groups;
    char exe[1024];       /* /proc/PID/exe at connect time, or "" */
    int exe_err;          /* 0, or the errno that left exe "" (EACCES, ENAMETOOLONG, ...) */
    unsigned long long start_time; /* field 22 of /proc/PID/stat at connect time */
    /* The audit record of a signature, written once the reply is on its way
     * (only this client's thread touches it). */
    agent_use_audit_t pending_audit;
    /* Successful uses counted for summary records (audit-interval; audit.c). */
    agent_audit_batch_t audit_batch;
    /* The reply about to be sent holds a secret (a plaintext): flushed,
     * then wiped before it is freed (only this client's thread touches it). */
    bool wipe_reply;
    /* The signing channel handed out by OpenChannel, or NULL (channel.c;
     * only this client's thread touches it). */
    struct agent_chan *chan;
    /* With a channel (server.c, this client's thread only): libdbus was
     * called since its queues were last looked at; it had replies to write */
    bool dbus_called;
    bool dbus_pollout;
} agent_client_t;

/* Fills c's credentials from its socket: uid, gid, pid, groups, and the
 * executable and start time of the process. 0, or -errno when SO_PEERCRED
 * fails (an unreadable executable only sets exe_err). */
int agent_client_read_creds(agent_client_t *c, int fd);
/* The executable (readlink /proc/PID/exe) and start time (field 22 of
 * /proc/PID/stat) of a process, both read through one /proc/PID fd.
 * Returns 0; -ESRCH (gone), -EACCES/-EPERM (not ours to read: needs
 * CAP_SYS_PTRACE), -ENAMETOOLONG (the path does not fit in exe_size), or
 * another -errno. */
int agent_proc_identity(pid_t pid, char *exe, size_t exe_size, unsigned long long *ret_start);
/* Re-reads the client's executable now (into exe) and checks it is still
 * what connected: 0, or a negative errno with a sentence in why naming the
 * cause and the fix: -EACCES/-EPERM (unreadable: CAP_SYS_PTRACE), -ESRCH
 * (exited, pid reused), -ENAMETOOLONG (truncated), -ENOENT (deleted),
 * -ESTALE (a different executable than at connect). */
int agent_client_exe_check(const agent_client_t *c, char *exe, size_t exe_size, char *why,
                           size_t why_size);

#define AGENT_MAX_CLIENTS_DEFAULT 256
/* audit-interval when not set: a summary record per second and key */
#define AGENT_AUDIT_INTERVAL_DEFAULT_S 1
/* a token's pool sessions idle this long close (the last one stays) */
#define AGENT_SESSION_IDLE_S 60
/* keys whose confirmation is remembered at once (the oldest is forgotten) */
#define AGENT_MAX_CONFIRMED 64
/* PIN cache and login lifetime of a per-user agent (system mode: 0, never) */
#define AGENT_CACHE_IDLE_DEFAULT_S 3600
#define AGENT_CACHE_MAX_DEFAULT_S (12 * 3600)
/* max-clients-per-user when not set (at most max-clients). */
#define AGENT_MAX_CLIENTS_PER_USER_DEFAULT 128
/* Connections not yet authenticated or without a first call: at most this
 * many at once (past it the oldest of the uid holding most is closed). */
#define AGENT_MAX_PENDING 64
#define AGENT_AUTH_TIMEOUT_DEFAULT_S 5
/* The largest message a client may send (the largest legal Sign carries
 * 1 MiB of data) and how much one connection may have read but not yet
 * handled: libdbus refuses a longer message from its header. */
#define AGENT_MAX_MESSAGE_SIZE (4l << 20)
#define AGENT_MAX_RECEIVED_SIZE (8l << 20)

typedef struct agent {
    tok_ctx_t *tok;
    agent_loop_t *loop;
    DBusServer *server;
    DBusConnection *session_bus;
    char *socket_path;
    bool socket_owned; /* we created the socket and unlink it at exit */
    bool socket_activated; /* the socket came from systemd (LISTEN_FDS) */
    unsigned idle_exit_s;  /* socket-activated: exit after this long idle (0: never); main thread */
    int64_t idle_since_ms; /* when the last client left, or 0 while busy */
    agent_pin_source_t pin_source;
    uid_t owner;
    bool system_mode;
    /* Settings a reload (SIGHUP) may change while client threads read
     * them: atomics, so each read sees the old or the new value. */
    atomic_uint max_clients;
    atomic_uint max_clients_per_user;
    atomic_uint auth_timeout_s;   /* a pending connection is closed after this */
    atomic_uint client_idle_s;    /* an idle client is closed after this (0: never) */
    _Atomic(agent_audit_t) audit;
    atomic_uint audit_interval_s; /* audit-interval: 0, one record per use */
    /* agent.conf: the path read at start and at each reload, and the
     * settings in force. conf, pin_source and token_pin_sources are
     * replaced by a reload under keys_lock (write): read them under
     * keys_lock. What the command line set, a reload leaves alone. */
    char *conf_path;
    bool conf_required;
    bool cli_modules, cli_pin_source, cli_pinentry, cli_idle_exit;
    agent_conf_t conf;
    /* Per token from the config: pin sources, parsed. */
    agent_pin_source_t *token_pin_sources; /* parallel to conf.tokens */
    /* audit-file: the open file or -1; audit_lock guards it (a leaf lock:
     * held only to write one line or to swap the file). */
    pthread_mutex_t audit_lock;
    int audit_fd;
    char *audit_path;
    bool audit_write_failed; /* under audit_lock: warned once until a write works */

    /* For each key of tok (same index), the first [key] policy matching it,
     * or NULL; recomputed by every rescan under keys_lock. */
    const agent_key_policy_t **key_policies;
    size_t n_key_policies;

    /* Keys and tokens: readers sign and list; a rescan writes. */
    pthread_rwlock_t keys_lock;
    /* Guards adding entries to token_states (each entry has its own lock
     * for logins). Never held while waiting for anything else. */
    pthread_mutex_t login_lock;
    agent_token_state_t *token_states; /* AGENT_MAX_TOKENS entries */
    atomic_size_t n_token_states;

    /* PIN prompts and the PIN cache. */
    char *pinentry;              /* pinentry program, or NULL (under prompter_lock) */
    pthread_mutex_t prompter_lock;
    char *prompter_name;         /* a desktop prompter on the session bus, or NULL */
    char *prompter_path;
    atomic_uint cache_idle_s;    /* log out after this long unused (0: never) */
    atomic_uint cache_max_s;     /* log out this long after login (0: never) */
    atomic_bool always_auth_prompt; /* always-authenticate keys: prompt every time */
    atomic_uint poll_interval_s; /* hotplug: how often slots are checked */
    int64_t last_poll_ms;

    /* Client threads: every socket connection is on `clients`, each with a
     * thread of its own; n_clients counts those in a client slot, n_pending
     * the others (see agent_conn_state_t). */
    pthread_mutex_t clients_lock;
    pthread_cond_t clients_gone;
    agent_client_t *clients;
    unsigned n_clients;
    unsigned n_pending;
    agent_client_t bus_client; /* requests from the session bus */
    int64_t refusal_log_ms;    /* rate limit of refusal lines (clients_lock) */
    unsigned refusals_unlogged;

    /* Recent confirmations of keys with confirm = DURATION (confirm.c). */
    pthread_mutex_t confirm_lock;
    struct agent_confirmed {
        char *key_uri;
        int64_t until_ms;
    } confirmed[AGENT_MAX_CONFIRMED];

    atomic_uint_fast64_t signatures;
    atomic_uint_fast64_t sign_failures;
    atomic_uint_fast64_t decryptions;
    atomic_uint_fast64_t decrypt_failures;
} agent_t;

int agent_init(agent_t *a);
/* Takes settings from a->conf that the command line did not set (at start,
 * before any thread): pin sources, pinentry, limits, audit-file (opened). */
int agent_apply_conf(agent_t *a, char **errmsg);
/* SIGHUP: reads a->conf_path again and puts what it says in force (key
 * policies, pin sources, caches, limits, audit, ...) under keys_lock. A file
 * that cannot be read, fails its owner/mode check or does not parse, or an
 * audit-file that cannot be opened, is refused with a log line and the
 * settings in force stay; settings that need a restart (module) are logged.
 * Main thread; no lock held. 0 or the negative errno of the refusal. */
int agent_reload_conf(agent_t *a);
void agent_done(agent_t *a);
/* Rescans tokens under the write lock and logs in where a PIN source allows. */
void agent_rescan(agent_t *a);
/* What the agent cannot do now, for systemd's STATUS= and the log: tokens
 * that need a login the agent could not make, or none at all. malloc'd, or
 * NULL when all is well. */
char *agent_health(agent_t *a);
int64_t agent_now_ms(void);

/* agent/server.c */
int agent_server_start(agent_t *a, char **errmsg);
/* Stops listening, disconnects every client and waits (bounded) for their
 * threads. Returns false if some thread did not finish in time. */
bool agent_server_stop(agent_t *a);
int agent_session_bus_start(agent_t *a);

/* agent/limits.c: which connection makes room for another (clients_lock held).
 * The pending connection to close before one more is accepted: the oldest
 * of the uid holding most pending connections; NULL while fewer than
 * AGENT_MAX_PENDING are pending. */
agent_client_t *agent_pending_victim_locked(const agent_t *a);
/* Room for the pending connection c to become a client: 0 with *victim NULL
 * (room), 0 with *victim set (close that one first: the longest idle of c's
 * uid at max-clients-per-user, else the longest idle of all at max-clients),
 * or -EBUSY when the limit named in *limit is reached and every connection
 * under it is in a request. Never chooses a busy or pending connection. */
int agent_client_room_locked(const agent_t *a, const agent_client_t *c, agent_client_t **victim,
                             const char **limit);
/* max-clients-per-user in effect (the setting, or the default, at most
 * max-clients). */
unsigned agent_max_clients_per_user(const agent_t *a);

/* agent/handlers.c: the method table, used by server.c */
DBusHandlerResult agent_dispatch(agent_client_t *c, DBusConnection *conn, DBusMessage *msg);
/* An error reply; its text (any bytes: URIs, labels) is made valid UTF-8
 * and cut at a character boundary. NULL only when out of memory. */
DBusMessage *agent_error_reply(DBusMessage *msg, bus_err_t err, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* agent/keyuse.c: one use of a key (Sign, Decrypt), with the checks every
 * use makes, in this order: the key exists, the client may use it (allow-users/groups,
 * allow-exe, then `permitted`), the person confirms (confirm =), a login
 * and a context-specific PIN when needed, then `run`. Each outcome is
 * counted, audited and logged under `event`. */
typedef struct agent_key_use {
    const char *event;  /* static: "sign", "decrypt" (audit records, log lines) */
    const char *verb;   /* static: "signing", "decrypting" (messages) */
    const char *alg;    /* the wire algorithm name, for the audit */
    const char *hash;   /* "" or a hash name, for the audit */
    /* NULL, or an extra check under keys_lock (pol may be NULL: no [key]
     * section): false refuses the use with a sentence in why. */
    bool (*permitted)(const agent_t *a, const tok_key_t *key, const agent_key_policy_t *pol,
                      char *why, size_t why_size);
    /* Does the work (keys_lock held for reading): TOK_OK with *ret malloc'd,
     * or a TOK_ERR_* with *why a malloc'd sentence (or NULL). */
    int (*run)(void *arg, const tok_key_t *key, const tok_auth_t *auth, uint8_t **ret,
               size_t *ret_len, char **why);
    void *arg;
    bool secret_result; /* the result is wiped wherever it was held */
    bool decrypt;       /* prompts (confirm, PIN for one use) say "decrypt" */
    atomic_uint_fast64_t *ok_count;
    atomic_uint_fast64_t *fail_count;
} agent_key_use_t;
/* The outcome of one use, for either transport to send. */
typedef struct agent_use_result {
    int status;       /* 0: out holds the result; else a bus_err_t, text says why */
    uint8_t *out;     /* malloc'd; wiped by agent_use_result_clear when secret */
    size_t out_len;
    bool secret;      /* out is a plaintext: wiped wherever it was copied */
    char *text;       /* status != 0: valid UTF-8 sentence naming key, token and
                         cause, malloc'd; NULL when out of memory */
    agent_use_audit_t audit; /* status 0: the record to write once sent */
} agent_use_result_t;
/* Runs u for the key uri names: *res is filled with the result or an error
 * (on out of memory: status BUS_ERR_NO_MEMORY, text NULL), counted in
 * u->ok_count or u->fail_count; refusals and failures are audited here,
 * the record of a success is in res->audit for the caller to write with
 * agent_audit_use once the result is sent. No agent lock held. */
void agent_use_key(agent_client_t *c, const char *uri, const agent_key_use_t *u,
                   agent_use_result_t *res);
/* Wipes (secret) and frees what res holds. */
void agent_use_result_clear(agent_use_result_t *res);
/* Sets res to the error err with a sentence (any bytes: made valid UTF-8 and
 * cut to fit D-Bus); on out of memory the text stays NULL. */
void agent_use_result_fail(agent_use_result_t *res, bus_err_t err, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
/* The error text of res, or a fixed one when there is none (out of memory). */
const char *agent_use_result_text(const agent_use_result_t *res);

/* agent/handlers.c: the D-Bus reply to msg of a use (an `ay`, or the
 * error); a result to write after it is sent goes to c->pending_audit and
 * c->wipe_reply. res is cleared. 0, or -ENOMEM when no reply could be built. */
int agent_use_reply(agent_client_t *c, DBusMessage *msg, agent_use_result_t *res,
                    DBusMessage **ret_reply);
/* agent/handlers.c: one signature with the parameters of a Sign call, for
 * D-Bus and the channel alike. */
void agent_sign(agent_client_t *c, const char *uri, const bus_sign_params_t *bp,
                const uint8_t *data, size_t len, agent_use_result_t *res);

/* agent/channel.c: the signing channel of a client (see dbus/channel.h),
 * served by the client's own thread. */
/* Makes the socketpair: keeps one end in c->chan, *ret_fd the other (the
 * caller closes it once it is in the reply). -EBUSY when c has one open. */
int agent_channel_open(agent_client_t *c, int *ret_fd, char **why);
void agent_channel_close(agent_client_t *c);
/* The agent's end of c's channel, or -1. */
int agent_channel_fd(const agent_client_t *c);
/* Reads what the channel holds and answers every whole frame. Returns
 * false when the channel ended (EOF, a frame breaking the rules, a client
 * that does not read its replies): it is closed then, the D-Bus connection
 * goes on. Sets *closing when the client is being closed (a limit). */
bool agent_channel_serve(agent_client_t *c, bool *closing);

/* agent/decrypt.c: the Decrypt method */
/* One decryption, the path of every one (D-Bus Decrypt and the channel's
 * DECRYPT): the OAEP hashes checked, then agent_use_key with the key's
 * decrypt = setting; *res as there (res->out is a secret). */
void agent_decrypt(agent_client_t *c, const char *uri, const bus_decrypt_params_t *bp,
                   const uint8_t *data, size_t len, agent_use_result_t *res);
/* The error text for a Decrypt refused before a key is looked at (r is
 * BUS_ERR_UNSUPPORTED or BUS_ERR_INVALID_ARGS), the same on both paths. */
const char *agent_decrypt_refusal(int r);
int agent_handle_decrypt(agent_client_t *c, DBusConnection *conn, DBusMessage *msg,
                         DBusMessage **ret_reply);

/* agent/policy.c */
/* May this peer connect at all? (per-user: the owner; system: root, the
 * agent's user and the configured users and groups). Takes keys_lock for
 * reading: the caller must not hold it (nor does agent_may_lock_unlock). */
bool agent_peer_admitted(agent_t *a, const agent_client_t *c);
/* May this client Lock or Unlock tokens? Per-user mode: the owner (the only
 * one admitted). System mode: the agent's user, root, and allow-unlock-users
 * / allow-unlock-groups; every other admitted client only signs. */
bool agent_may_lock_unlock(agent_t *a, const agent_client_t *c);
/* May this client use key number i? On refusal why holds a sentence naming
 * the rule (and the fix). allow-exe is checked against the client's
 * executable now, not only at connect. Fails closed: with [key] sections
 * configured and no policy table (out of memory), every key is refused. */
bool agent_key_allowed_locked(const agent_t *a, size_t key_index, const agent_client_t *c,
                              char *why, size_t why_size);
/* Recomputes key_policies after a scan or a reload (keys_lock held for
 * writing), and sets each token's session cap (max-sessions). On out of
 * memory the table stays NULL, which refuses every key. */
void agent_policy_update_locked(agent_t *a);
/* The pin source configured for a token (its [token] section, else the
 * default); never NULL. */
const agent_pin_source_t *agent_pin_source_for_locked(agent_t *a, tok_token_t *t);

/* agent/audit.c: one line per refusal, failure, login ..., key=value;
 * successful uses through agent_audit_use (audit-interval). */
void agent_audit(agent_t *a, const agent_client_t *c, const char *event, const char *key_uri,
                 const char *alg, const char *hash, const char *result, long long duration_us);
/* A successful use (u->set) once its result is sent: with audit = all, a
 * record now when it is the first of its (key, event, mechanism) on this
 * connection within audit-interval, else counted for the summary record
 * written when the interval ends. Clears u->set. */
void agent_audit_use(agent_t *a, agent_client_t *c, agent_use_audit_t *u);
/* Writes the summary records of c whose interval ended (all: every one,
 * as when the connection or its channel closes, the agent reloads or
 * exits). Any thread. */
void agent_audit_flush(agent_t *a, agent_client_t *c, bool all);
/* Milliseconds until c has a summary record to write (0: now), or -1. */
int agent_audit_due_ms(agent_client_t *c, int64_t now_ms);
void agent_audit_batch_init(agent_audit_batch_t *b);
/* Frees what b holds (its counts must have been flushed). */
void agent_audit_batch_done(agent_audit_batch_t *b);
/* agent_audit_flush(all) of every connection and the session bus. */
void agent_audit_flush_clients(agent_t *a);
/* Opens path for audit lines: O_APPEND, created 0600, no symlink, owned by
 * the agent's user or root and not writable by others. An fd, or a negative
 * errno with *errmsg naming the file and the cause. */
int agent_audit_open(const char *path, char **errmsg);
/* Makes fd (or -1: none) the audit file, named path (owned, may be NULL);
 * closes the one it replaces. */
void agent_audit_set_fd(agent_t *a, int fd, char *path);

/* agent/login.c */
typedef struct agent_login_req {
    const char *token_uri;
    const char *key_uri;          /* for the prompt; may be NULL */
    const char *key_label;
    const agent_client_t *client; /* who asked; may be NULL */
    const char *pin;              /* given (Unlock); NULL: find one */
    size_t pin_len;
    bool final_try_ok;            /* the person accepts trying pin at the final try */
    unsigned lifetime_s;          /* Unlock: this login ends after so long (0: cache settings) */
    bool no_prompt;               /* stored PINs only */
    bool decrypt;                 /* for a decryption (the prompt says so) */
} agent_login_req_t;

/* Logs in to the token (no agent lock held by the caller): the cached PIN,
 * the pin source, then a prompt; a PIN the token rejected is not replayed,
 * a stored one never at the final try; one login at a time. A given PIN
 * (Unlock) is not tried at the final try unless req->final_try_ok, and after
 * each wrong one the next waits 1 s, 2 s, 4 s ... (up to 512 s): a delay of
 * up to 2 s is waited out, a longer one is refused (TOK_ERR_BUSY).
 * Returns TOK_OK or a TOK_ERR_* code, with *errmsg set on failure:
 * TOK_ERR_NOT_LOGGED_IN (no PIN tried: none available, prompt cancelled, or
 * final try without final_try_ok), TOK_ERR_BUSY (a wrong Unlock PIN was
 * given less than the delay ago), TOK_ERR_PIN_INCORRECT, TOK_ERR_PIN_LOCKED,
 * TOK_ERR_TOKEN_REMOVED, TOK_ERR_NO_MEMORY, or what C_Login gave. */
int agent_login(agent_t *a, const agent_login_req_t *req, char **errmsg);
/* A PIN for a context-specific login (CKA_ALWAYS_AUTHENTICATE). On a PIN
 * pad *ret stays empty (buf NULL) and the return is 0. */
int agent_auth_pin(agent_t *a, const agent_login_req_t *req, agent_secret_t *ret, char **errmsg);
/* The token rejected a PIN from agent_auth_pin: don't offer it again. */
void agent_auth_pin_rejected(agent_t *a, const char *token_uri);

/* A PIN file the token rejected, remembered across restarts (a TPM counts
 * each wrong try towards its lock-out): a record per token next to the
 * socket. load: true and *ret set when one is recorded; save and forget
 * fail quietly (a warning), the in-memory state still applies. */
bool agent_pin_rejected_load(const agent_t *a, const char *token_uri, agent_pin_id_t *ret);
void agent_pin_rejected_save(const agent_t *a, const char *token_uri, const agent_pin_id_t *id);
void agent_pin_rejected_forget(const agent_t *a, const char *token_uri);
/* Logs in to every token that needs it and has a PIN source (no lock held). */
void agent_login_all(agent_t *a);
/* Log out (unless forget_only) and wipe cached PINs of the tokens matching
 * uri ("" : all). Returns how many tokens (>= 0), or TOK_ERR_ARGS (uri does
 * not parse) or TOK_ERR_NO_MEMORY (some or all tokens not locked), with
 * *errmsg set. */
int agent_lock_tokens(agent_t *a, const char *uri, bool forget_only, char **errmsg);
/* A token went away: its cached PIN is wiped. */
void agent_lock_tokens_gone(agent_t *a, const char *token_uri);
/* Expires cached PINs and logins per cache-idle/cache-max; main loop tick. */
void agent_cache_tick(agent_t *a);
/* A signature was made on this token (for the idle timeout). */
void agent_token_used(agent_t *a, const char *token_uri);
agent_token_state_t *agent_token_state_find(agent_t *a, const char *token_uri);
void agent_token_states_free(agent_t *a);
/* When the token's login expires (unix seconds), or 0. */
int64_t agent_token_expires(agent_t *a, const char *token_uri);

/* agent/prompt.c: asking the user */
typedef struct agent_prompt {
    const char *token_label;
    const char *key_label;
    const char *key_uri;
    const agent_client_t *client;
    const char *error;          /* shown above the prompt on a retry */
    unsigned long token_flags;  /* CKF_USER_PIN_COUNT_LOW / FINAL_TRY warnings */
    bool context_specific;      /* the PIN for one signature */
    bool confirm;               /* a yes/no question: may the client use the key? */
    bool decrypt;               /* the use is a decryption, not a signature */
} agent_prompt_t;

bool agent_can_prompt(agent_t *a);
/* A desktop UI registers (or drops) itself as the prompter: the agent calls
 * org.p11agent.Prompter1.GetPin on it, before any pinentry. */
int agent_prompter_register(agent_t *a, const char *name, const char *path);
void agent_prompter_unregister(agent_t *a, const char *name);
/* Asks the registered prompter, else runs the pinentry program (Assuan).
 * 0, or -ECANCELED (the user cancelled), -ENOENT (no prompter configured),
 * -E2BIG (the PIN typed is over PIN_MAX bytes), -ETIMEDOUT, another -errno;
 * *errmsg says which. */
int agent_prompt_pin(agent_t *a, const agent_prompt_t *p, agent_secret_t *ret, char **errmsg);
/* Asks the person whether p->client may use p->key_label (pinentry
 * CONFIRM): 0 allowed, -ECANCELED refused, -ENOENT no pinentry, another
 * negative errno when the prompt failed (*errmsg says how). */
int agent_prompt_confirm(agent_t *a, const agent_prompt_t *p, char **errmsg);

/* agent/confirm.c: [key] confirm = yes | DURATION. Has the person allowed
 * this key within the last `window_s` seconds (0: never counts)? */
bool agent_confirm_fresh(agent_t *a, const char *key_uri, unsigned window_s);
/* Records an allowed use (window_s 0: nothing to record). */
void agent_confirm_record(agent_t *a, const char *key_uri, unsigned window_s);
/* Tells the user to use the reader's PIN pad: a session-bus signal and a
 * pinentry message that stays up until agent_prompt_notice_end(). */
pid_t agent_prompt_notice_begin(agent_t *a, const agent_prompt_t *p);
void agent_prompt_notice_end(pid_t pid);

/* agent/hotplug.c: token insertion and removal */
void agent_hotplug_tick(agent_t *a);
void agent_emit_signal(agent_t *a, const char *name, const char *arg1, const char *arg2);

/* Maps a token-layer status to a protocol error (one table). */
bus_err_t agent_err_from_tok(int tok_status);
