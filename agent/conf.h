/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * agent.conf: $XDG_CONFIG_HOME/p11agent/agent.conf (per-user mode) or
 * /etc/p11agent/agent.conf (--system). An INI file with an [agent] section,
 * [token pkcs11:URI] sections (a PIN source per token) and [key pkcs11:URI]
 * sections (who may use matching keys). Every setting is one row of the
 * table in conf.c; agent.conf(5) (packaging/man/agent.conf.5) documents each.
 *
 * A key with no [key] section may be used by every admitted client; a key
 * matched by a [key] section only by the clients that section allows (any
 * allow-users/allow-groups match, AND allow-exe when given). When several
 * sections match a key, the first one in the file applies.
 *
 * Durations are seconds, or a number with a unit (30s, 15m, 8h, 1d). A
 * setting given twice in one section is an error, except the lists
 * (module, allow-*), where each line adds to the list.
 *
 * Connection limits: a connection that has not yet authenticated and sent
 * its first method call takes no client slot (at most 64 such, past which
 * the oldest of the uid holding most is closed) and is closed after
 * auth-timeout. At max-clients-per-user (its uid) or max-clients (all), the
 * client idle the longest is closed to make room (it reconnects at its next
 * call); a newcomer is refused only when every client under the limit is in
 * a request. Messages longer than 4 MiB are refused as they arrive.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef enum { AGENT_AUDIT_ALL, AGENT_AUDIT_REFUSALS, AGENT_AUDIT_NONE } agent_audit_t;

typedef struct agent_id_list {
    uid_t *uids;
    size_t n_uids;
    gid_t *gids;
    size_t n_gids;
} agent_id_list_t;

typedef struct agent_token_conf {
    char *uri;
    char *pin_source; /* spec, parsed by agent_pin_source_parse */
    unsigned max_sessions; /* 0: not set here */
} agent_token_conf_t;

typedef struct agent_key_policy {
    char *uri;
    agent_id_list_t allow;
    bool has_ids;      /* allow-users or allow-groups given */
    char **exes;
    size_t n_exes;
    /* confirm = yes | DURATION: the person allows each use (0) or one use
     * per DURATION seconds (pinentry CONFIRM); confirm = no: never asked */
    bool confirm;
    unsigned confirm_s;
    /* decrypt = yes: Decrypt (RSA) is allowed besides Sign; default no, see
     * agent/decrypt.c for why */
    bool decrypt;
} agent_key_policy_t;

typedef struct agent_conf {
    char *path;        /* the file read, or NULL */
    char **modules;
    size_t n_modules;
    char *pin_source;
    unsigned max_sessions; /* per token, unless its [token] says; 0: default */
    unsigned max_clients; /* 0: default */
    unsigned max_clients_per_user; /* 0: default */
    unsigned auth_timeout_s;       /* 0: default */
    unsigned client_idle_s;        /* 0: never */
    unsigned idle_exit_s;
    bool idle_exit_set;
    char *pinentry;
    unsigned cache_idle_s;
    unsigned cache_max_s;
    bool cache_idle_set; /* given in the file (else the mode's default) */
    bool cache_max_set;
    bool always_auth_prompt;
    bool always_auth_set;
    unsigned poll_interval_s;
    agent_id_list_t allow;
    agent_id_list_t allow_unlock; /* Lock/Unlock besides the owner and root */
    agent_audit_t audit;
    /* audit-interval: successful uses of a key by a connection within this
     * many seconds after one is recorded are counted into one summary
     * record; 0 records each one */
    unsigned audit_interval_s;
    bool audit_interval_set;
    char *audit_file;  /* audit lines also go here, or NULL */
    agent_token_conf_t *tokens;
    size_t n_tokens;
    agent_key_policy_t *keys;
    size_t n_keys;
} agent_conf_t;

/* Reads a config file. A missing file is an empty config (0) unless
 * `required`. Errors name the file and line. */
int agent_conf_load(const char *path, bool required, agent_conf_t *ret, char **errmsg);
/* Parses config text (for tests); `name` is used in messages. */
int agent_conf_parse(const char *text, const char *name, agent_conf_t *ret, char **errmsg);
void agent_conf_clear(agent_conf_t *c);
/* A duration: seconds, or digits and one unit s, m, h or d ("90", "15m").
 * 0, -EINVAL (not a duration) or -ERANGE (outside min..max seconds). */
int agent_conf_parse_duration(const char *s, unsigned long min, unsigned long max, unsigned *ret);

/* Is the file open on fd one the agent may trust: a regular file owned by
 * the agent's user or root and writable by no one else? what says why it
 * matters, for the message ("it names the modules ..."). 0, or -EINVAL /
 * -EPERM / -errno with *errmsg naming path, owner and mode and the fix. */
int agent_conf_check_file(int fd, const char *path, const char *what, char **errmsg);

/* Resolves a user or group name (or a number) to its id. */
int agent_conf_lookup_user(const char *name, uid_t *ret);
int agent_conf_lookup_group(const char *name, gid_t *ret);

/* Is a peer with this uid, gid and supplementary groups in the list? */
bool agent_id_list_allows(const agent_id_list_t *l, uid_t uid, gid_t gid, const gid_t *groups,
                          size_t n_groups);
