/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <dbus/dbus.h>

#include "bus.h"
#include "conf.h"
#include "loop.h"
#include "tok.h"

/* --- logging (agent/log.c) --- */
typedef enum { AGENT_LOG_ERR, AGENT_LOG_WARN, AGENT_LOG_INFO, AGENT_LOG_DEBUG } agent_log_level_t;

/* Debug categories, switched on by P11AGENT_DEBUG=bus,sign,pin,pkcs11,all */
#define AGENT_DBG_BUS (1u << 0)
#define AGENT_DBG_SIGN (1u << 1)
#define AGENT_DBG_PIN (1u << 2)

void agent_log_init(const char *debug_spec);
bool agent_debug_enabled(unsigned category);
void agent_log(agent_log_level_t level, const char *func, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
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
 * token rejected is never replayed while the file is unchanged. */
typedef struct agent_pin_id {
    dev_t dev;
    ino_t ino;
    off_t size;
    int64_t mtime_ns;
} agent_pin_id_t;
int agent_pin_source_read(const agent_pin_source_t *src, agent_secret_t *ret,
                          agent_pin_id_t *ret_id, char **errmsg);

/* --- the agent --- */

/* Per-token login state the agent keeps across rescans, keyed by token URI. */
typedef struct agent_token_state {
    char *token_uri;
    bool pin_rejected;      /* the pin source's PIN was rejected ... */
    agent_pin_id_t rejected; /* ... while the file looked like this */
} agent_token_state_t;

/* A client on the agent's socket: served by a thread of its own that reads
 * a request, signs and replies (no hand-off between threads). */
#define AGENT_MAX_GROUPS 64

typedef struct agent_client {
    struct agent_client *next;
    struct agent *agent;
    DBusConnection *conn;
    int fd;
    bool via_session_bus; /* no peer credentials: treated as the owner */
    /* Peer credentials, read with SO_PEERCRED when the client connected. */
    uid_t uid;
    gid_t gid;
    pid_t pid;
    gid_t groups[AGENT_MAX_GROUPS]; /* supplementary groups (/proc/PID/status) */
    size_t n_groups;
    char exe[256];        /* /proc/PID/exe at connect time, or "" */
} agent_client_t;

/* Fills c's credentials from its socket. */
int agent_client_read_creds(agent_client_t *c, int fd);

#define AGENT_MAX_CLIENTS_DEFAULT 256

typedef struct agent {
    tok_ctx_t *tok;
    agent_loop_t *loop;
    DBusServer *server;
    DBusConnection *session_bus;
    char *socket_path;
    bool socket_owned; /* we created the socket and unlink it at exit */
    bool socket_activated; /* the socket came from systemd (LISTEN_FDS) */
    unsigned idle_exit_s;  /* socket-activated: exit after this long idle (0: never) */
    int64_t idle_since_ms; /* when the last client left, or 0 while busy */
    agent_pin_source_t pin_source;
    uid_t owner;
    bool system_mode;
    unsigned max_clients;
    agent_conf_t conf;
    agent_audit_t audit;
    /* Per token from the config: pin sources, parsed. */
    agent_pin_source_t *token_pin_sources; /* parallel to conf.tokens */

    /* For each key of tok (same index), the first [key] policy matching it,
     * or NULL; recomputed by every rescan under keys_lock. */
    const agent_key_policy_t **key_policies;
    size_t n_key_policies;

    /* Keys and tokens: readers sign and list; a rescan writes. */
    pthread_rwlock_t keys_lock;
    /* One login at a time; guards token_states. */
    pthread_mutex_t login_lock;
    agent_token_state_t *token_states;
    size_t n_token_states;

    /* Client threads. */
    pthread_mutex_t clients_lock;
    pthread_cond_t clients_gone;
    agent_client_t *clients;
    unsigned n_clients;
    agent_client_t bus_client; /* requests from the session bus */

    atomic_uint_fast64_t signatures;
    atomic_uint_fast64_t sign_failures;
} agent_t;

int agent_init(agent_t *a);
/* Takes settings from a->conf that the command line did not set. */
int agent_apply_conf(agent_t *a, char **errmsg);
void agent_done(agent_t *a);
/* Rescans tokens under the write lock and logs in where a PIN source allows. */
void agent_rescan(agent_t *a);

/* agent/server.c */
int agent_server_start(agent_t *a, char **errmsg);
/* Stops listening, disconnects every client and waits (bounded) for their
 * threads. Returns false if some thread did not finish in time. */
bool agent_server_stop(agent_t *a);
int agent_session_bus_start(agent_t *a);

/* agent/handlers.c: the method table, used by server.c */
DBusHandlerResult agent_dispatch(agent_client_t *c, DBusConnection *conn, DBusMessage *msg);

/* agent/policy.c */
/* May this peer connect at all? (per-user: the owner; system: root, the
 * agent's user and the configured users and groups) */
bool agent_peer_admitted(const agent_t *a, const agent_client_t *c);
/* May this client use key number i? On refusal *why says which rule. */
bool agent_key_allowed_locked(const agent_t *a, size_t key_index, const agent_client_t *c,
                              const char **why);
/* Recomputes key_policies after a scan (keys_lock held for writing). */
void agent_policy_update_locked(agent_t *a);
/* The pin source configured for a token (its [token] section, else the
 * default); never NULL. */
const agent_pin_source_t *agent_pin_source_for_locked(agent_t *a, tok_token_t *t);

/* agent/audit.c: one line per signature or refusal, key=value. */
void agent_audit(const agent_t *a, const agent_client_t *c, const char *event, const char *key_uri,
                 const char *alg, const char *hash, const char *result, long long duration_us);

/* agent/login.c */
/* Logs in to the key's token using the configured PIN source, honouring retry
 * safety. Returns TOK_OK or a tok status; *errmsg names the token and cause. */
int agent_login_token(agent_t *a, tok_token_t *t, char **errmsg);
/* Logs in to every token that needs it and has a PIN source; rescans keys if
 * any login succeeded. Caller holds keys_lock for writing. */
void agent_login_all_locked(agent_t *a);
agent_token_state_t *agent_token_state(agent_t *a, const tok_token_t *t);
void agent_token_states_free(agent_t *a);

/* Maps a token-layer status to a protocol error (one table). */
bus_err_t agent_err_from_tok(int tok_status);
