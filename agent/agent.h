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
/* A locked copy of len bytes of pin. */
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
    /* readable without the lock: */
    atomic_bool has_cached;
    atomic_int_fast64_t login_at_ms; /* CLOCK_MONOTONIC of our login, 0: none */
    atomic_int_fast64_t last_use_ms;
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
    /* The audit record of a signature, written once the reply is on its way
     * (only this client's thread touches it). */
    struct {
        bool set;
        const char *alg;  /* static */
        char hash[16];
        char key[512];
        long long duration_us;
    } pending_audit;
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
    /* Guards adding entries to token_states (each entry has its own lock
     * for logins). Never held while waiting for anything else. */
    pthread_mutex_t login_lock;
    agent_token_state_t *token_states; /* AGENT_MAX_TOKENS entries */
    atomic_size_t n_token_states;

    /* PIN prompts and the PIN cache. */
    char *pinentry;              /* pinentry program, or NULL */
    pthread_mutex_t prompter_lock;
    char *prompter_name;         /* a desktop prompter on the session bus, or NULL */
    char *prompter_path;
    unsigned cache_idle_s;       /* log out after this long unused (0: never) */
    unsigned cache_max_s;        /* log out this long after login (0: never) */
    bool always_auth_prompt;     /* always-authenticate keys: prompt every time */
    unsigned poll_interval_s;    /* hotplug: how often slots are checked */
    int64_t last_poll_ms;

    /* Client threads. */
    pthread_mutex_t clients_lock;
    pthread_cond_t clients_gone;
    agent_client_t *clients;
    unsigned n_clients;
    agent_client_t bus_client; /* requests from the session bus */
    int64_t refusal_log_ms;    /* rate limit of refusal lines (main thread) */
    unsigned refusals_unlogged;

    atomic_uint_fast64_t signatures;
    atomic_uint_fast64_t sign_failures;
} agent_t;

int agent_init(agent_t *a);
/* Takes settings from a->conf that the command line did not set. */
int agent_apply_conf(agent_t *a, char **errmsg);
void agent_done(agent_t *a);
/* Rescans tokens under the write lock and logs in where a PIN source allows. */
void agent_rescan(agent_t *a);
int64_t agent_now_ms(void);

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
typedef struct agent_login_req {
    const char *token_uri;
    const char *key_uri;          /* for the prompt; may be NULL */
    const char *key_label;
    const agent_client_t *client; /* who asked; may be NULL */
    const char *pin;              /* given (Unlock); NULL: find one */
    size_t pin_len;
    bool no_prompt;               /* stored PINs only */
} agent_login_req_t;

/* Logs in to the token (no agent lock held by the caller): the cached PIN,
 * the pin source, then a prompt; a PIN the token rejected is not replayed,
 * a stored one never at the final try; one login at a time. */
int agent_login(agent_t *a, const agent_login_req_t *req, char **errmsg);
/* A PIN for a context-specific login (CKA_ALWAYS_AUTHENTICATE). On a PIN
 * pad *ret stays empty (buf NULL) and the return is 0. */
int agent_auth_pin(agent_t *a, const agent_login_req_t *req, agent_secret_t *ret, char **errmsg);
/* The token rejected a PIN from agent_auth_pin: don't offer it again. */
void agent_auth_pin_rejected(agent_t *a, const char *token_uri);
/* Logs in to every token that needs it and has a PIN source (no lock held). */
void agent_login_all(agent_t *a);
/* Log out (unless forget_only) and wipe cached PINs of the tokens matching
 * uri ("" : all). Returns how many tokens. */
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
} agent_prompt_t;

bool agent_can_prompt(agent_t *a);
/* A desktop UI registers (or drops) itself as the prompter: the agent calls
 * org.p11agent.Prompter1.GetPin on it, before any pinentry. */
int agent_prompter_register(agent_t *a, const char *name, const char *path);
void agent_prompter_unregister(agent_t *a, const char *name);
/* Runs the pinentry program (Assuan). -ECANCELED if the user cancelled,
 * -ENOENT if no prompter is configured. */
int agent_prompt_pin(agent_t *a, const agent_prompt_t *p, agent_secret_t *ret, char **errmsg);
/* Tells the user to use the reader's PIN pad: a session-bus signal and a
 * pinentry message that stays up until agent_prompt_notice_end(). */
pid_t agent_prompt_notice_begin(agent_t *a, const agent_prompt_t *p);
void agent_prompt_notice_end(pid_t pid);

/* agent/hotplug.c: token insertion and removal */
void agent_hotplug_tick(agent_t *a);
void agent_emit_signal(agent_t *a, const char *name, const char *arg1, const char *arg2);

/* Maps a token-layer status to a protocol error (one table). */
bus_err_t agent_err_from_tok(int tok_status);
