/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The agent object: its locks and the token rescan. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"

int agent_init(agent_t *a)
{
    pthread_rwlockattr_t attr;

    memset(a, 0, sizeof(*a));
    a->owner = getuid();
    a->max_clients = AGENT_MAX_CLIENTS_DEFAULT;
    a->auth_timeout_s = AGENT_AUTH_TIMEOUT_DEFAULT_S;
    /* Writers (rescans) are rare; don't let a stream of signatures starve one. */
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    if (pthread_rwlock_init(&a->keys_lock, &attr) != 0) {
        pthread_rwlockattr_destroy(&attr);
        return -ENOMEM;
    }
    pthread_rwlockattr_destroy(&attr);
    pthread_mutex_init(&a->login_lock, NULL);
    pthread_mutex_init(&a->prompter_lock, NULL);
    pthread_mutex_init(&a->confirm_lock, NULL);
    pthread_mutex_init(&a->audit_lock, NULL);
    a->audit_fd = -1;
    a->audit_interval_s = AGENT_AUDIT_INTERVAL_DEFAULT_S;
    agent_audit_batch_init(&a->bus_client.audit_batch);
    a->token_states = calloc(AGENT_MAX_TOKENS, sizeof(*a->token_states));
    if (!a->token_states)
        return -ENOMEM;
    atomic_init(&a->n_token_states, 0);
    a->always_auth_prompt = true;
    a->poll_interval_s = 2;
    pthread_mutex_init(&a->clients_lock, NULL);
    pthread_cond_init(&a->clients_gone, NULL);
    atomic_init(&a->signatures, 0);
    atomic_init(&a->sign_failures, 0);
    return 0;
}

void agent_done(agent_t *a)
{
    agent_token_states_free(a);
    agent_pin_source_clear(&a->pin_source);
    for (size_t i = 0; a->token_pin_sources && i < a->conf.n_tokens; i++)
        agent_pin_source_clear(&a->token_pin_sources[i]);
    free(a->token_pin_sources);
    free(a->key_policies);
    free(a->pinentry);
    free(a->prompter_name);
    free(a->prompter_path);
    pthread_mutex_destroy(&a->prompter_lock);
    for (size_t i = 0; i < AGENT_MAX_CONFIRMED; i++)
        free(a->confirmed[i].key_uri);
    pthread_mutex_destroy(&a->confirm_lock);
    agent_audit_batch_done(&a->bus_client.audit_batch);
    agent_audit_set_fd(a, -1, NULL);
    pthread_mutex_destroy(&a->audit_lock);
    agent_conf_clear(&a->conf);
    free(a->conf_path);
    a->conf_path = NULL;
    free(a->socket_path);
    a->socket_path = NULL;
    pthread_cond_destroy(&a->clients_gone);
    pthread_mutex_destroy(&a->clients_lock);
    pthread_mutex_destroy(&a->login_lock);
    pthread_rwlock_destroy(&a->keys_lock);
}

/* Loud warnings for what looks like a setup mistake rather than a fact:
 * no token at all, or a logged-in token without a key (under
 * ProtectSystem=strict, SoftHSM without its token directory shows its
 * tokens empty or not at all). */
static void warn_empty_locked(agent_t *a)
{
    if (tok_ctx_n_tokens(a->tok) == 0)
        agent_warn("the PKCS#11 modules report no token present: no key can be used until one "
                   "appears (is the card inserted? a software token's directory readable by the "
                   "agent? under systemd, ProtectSystem=strict needs ReadWritePaths= for it)");
    for (size_t i = 0; i < tok_ctx_n_tokens(a->tok); i++) {
        tok_token_t *t = tok_ctx_token(a->tok, i);
        size_t keys = 0;

        for (size_t k = 0; k < tok_ctx_n_keys(a->tok); k++)
            keys += tok_ctx_key(a->tok, k)->token == t;
        if (keys == 0 && tok_token_logged_in(t))
            agent_warn("token '%s' is logged in but shows no key that can sign (are the keys on "
                       "another token? readable by the agent's user?)",
                       tok_token_label(t));
    }
}

void agent_rescan(agent_t *a)
{
    int r;

    pthread_rwlock_wrlock(&a->keys_lock);
    r = tok_ctx_scan(a->tok);
    if (r != TOK_OK)
        agent_warn("rescanning tokens failed: %s", tok_strerror(r));
    agent_policy_update_locked(a);
    pthread_rwlock_unlock(&a->keys_lock);
    /* logins take a token lock, then keys_lock: not under the write lock */
    agent_login_all(a);
    pthread_rwlock_rdlock(&a->keys_lock);
    agent_info("%zu keys on %zu tokens", tok_ctx_n_keys(a->tok), tok_ctx_n_tokens(a->tok));
    warn_empty_locked(a);
    pthread_rwlock_unlock(&a->keys_lock);
}

char *agent_health(agent_t *a)
{
    char *out = NULL, *more;

    pthread_rwlock_rdlock(&a->keys_lock);
    if (tok_ctx_n_tokens(a->tok) == 0 && asprintf(&out, "no token present") < 0)
        out = NULL;
    for (size_t i = 0; i < tok_ctx_n_tokens(a->tok); i++) {
        tok_token_t *t = tok_ctx_token(a->tok, i);

        /* a PIN source is configured, yet the login did not happen */
        if (!tok_token_login_required(t) || tok_token_logged_in(t) ||
            agent_pin_source_for_locked(a, t)->kind == AGENT_PIN_NONE)
            continue;
        if (asprintf(&more, "%s%stoken '%s' is not logged in (its PIN source failed: see the log)",
                     out ? out : "", out ? "; " : "", tok_token_label(t)) < 0)
            break;
        free(out);
        out = more;
    }
    pthread_rwlock_unlock(&a->keys_lock);
    return out;
}

/* What a configuration needs beyond its text: pin sources parsed, the
 * pinentry path, the audit file opened. Built before anything changes, so
 * that a configuration that fails here leaves the agent as it was. */
typedef struct conf_live {
    agent_pin_source_t pin_source;
    agent_pin_source_t *token_pin_sources; /* parallel to the conf's tokens */
    char *pinentry;
    int audit_fd;
    char *audit_path;
} conf_live_t;

static void live_clear(conf_live_t *l, size_t n_tokens)
{
    agent_pin_source_clear(&l->pin_source);
    for (size_t i = 0; l->token_pin_sources && i < n_tokens; i++)
        agent_pin_source_clear(&l->token_pin_sources[i]);
    free(l->token_pin_sources);
    free(l->pinentry);
    if (l->audit_fd >= 0)
        close(l->audit_fd);
    free(l->audit_path);
    memset(l, 0, sizeof(*l));
    l->audit_fd = -1;
}

static int live_build(const agent_t *a, const agent_conf_t *c, conf_live_t *l, char **errmsg)
{
    int r;

    memset(l, 0, sizeof(*l));
    l->audit_fd = -1;
    if (!a->cli_pin_source && c->pin_source &&
        (r = agent_pin_source_parse(c->pin_source, &l->pin_source, errmsg)) < 0)
        goto err;
    l->pin_source.strict = a->system_mode;
    if (c->n_tokens &&
        !(l->token_pin_sources = calloc(c->n_tokens, sizeof(*l->token_pin_sources)))) {
        r = -ENOMEM;
        goto err;
    }
    for (size_t i = 0; i < c->n_tokens; i++) {
        if (!c->tokens[i].pin_source)
            continue;
        r = agent_pin_source_parse(c->tokens[i].pin_source, &l->token_pin_sources[i], errmsg);
        if (r < 0)
            goto err;
        l->token_pin_sources[i].strict = a->system_mode;
    }
    if (!a->cli_pinentry && c->pinentry && !(l->pinentry = strdup(c->pinentry))) {
        r = -ENOMEM;
        goto err;
    }
    if (c->audit_file) {
        if (!(l->audit_path = strdup(c->audit_file))) {
            r = -ENOMEM;
            goto err;
        }
        if ((r = agent_audit_open(c->audit_file, errmsg)) < 0)
            goto err;
        l->audit_fd = r;
    }
    return 0;
err:
    if (r == -ENOMEM)
        agent_set_errmsg(errmsg, "out of memory");
    live_clear(l, c->n_tokens);
    return r;
}

#define SWAP(x, y)                                                                                 \
    do {                                                                                           \
        __typeof__(x) tmp_ = (x);                                                                  \
        (x) = (y);                                                                                 \
        (y) = tmp_;                                                                                \
    } while (0)

/* Puts *c and *l in force; they get the ones they replace (to be freed by
 * the caller after the locks are released). keys_lock held for writing,
 * or no other thread yet. */
static void install_locked(agent_t *a, agent_conf_t *c, conf_live_t *l)
{
    const agent_conf_t *n;
    char *p;

    SWAP(a->conf, *c);
    n = &a->conf;
    a->max_clients = n->max_clients ? n->max_clients : AGENT_MAX_CLIENTS_DEFAULT;
    a->max_clients_per_user = n->max_clients_per_user;
    a->auth_timeout_s = n->auth_timeout_s ? n->auth_timeout_s : AGENT_AUTH_TIMEOUT_DEFAULT_S;
    a->client_idle_s = n->client_idle_s;
    a->audit = n->audit;
    a->audit_interval_s = n->audit_interval_set ? n->audit_interval_s
                                                : AGENT_AUDIT_INTERVAL_DEFAULT_S;
    /* Defaults: a desktop login (and its PIN) ends after an hour unused or
     * a working day, as gpg-agent users expect a TTL; a system agent's
     * PINs come from files or credentials: its logins stay. */
    a->cache_idle_s = n->cache_idle_set ? n->cache_idle_s
                      : a->system_mode  ? 0
                                        : AGENT_CACHE_IDLE_DEFAULT_S;
    a->cache_max_s = n->cache_max_set ? n->cache_max_s
                     : a->system_mode ? 0
                                      : AGENT_CACHE_MAX_DEFAULT_S;
    a->always_auth_prompt = n->always_auth_set ? n->always_auth_prompt : true;
    a->poll_interval_s = n->poll_interval_s ? n->poll_interval_s : 2;
    if (!a->cli_idle_exit)
        a->idle_exit_s = n->idle_exit_set ? n->idle_exit_s : 600;
    if (!a->socket_activated)
        a->idle_exit_s = 0; /* nobody would start us again */
    if (!a->cli_pin_source)
        SWAP(a->pin_source, l->pin_source);
    a->pin_source.strict = a->system_mode;
    SWAP(a->token_pin_sources, l->token_pin_sources);
    if (!a->cli_pinentry) {
        pthread_mutex_lock(&a->prompter_lock);
        SWAP(a->pinentry, l->pinentry);
        pthread_mutex_unlock(&a->prompter_lock);
    }
    /* the file in force stays open in l until the caller frees it: the
     * swap closes nothing under keys_lock */
    p = l->audit_path;
    l->audit_path = NULL;
    pthread_mutex_lock(&a->audit_lock);
    SWAP(a->audit_fd, l->audit_fd);
    SWAP(a->audit_path, p);
    a->audit_write_failed = false;
    pthread_mutex_unlock(&a->audit_lock);
    l->audit_path = p;
}

int agent_apply_conf(agent_t *a, char **errmsg)
{
    agent_conf_t none = {0};
    conf_live_t l;
    int r = live_build(a, &a->conf, &l, errmsg);

    if (r < 0)
        return r;
    /* a->conf is the one to install: move it out first */
    SWAP(none, a->conf);
    install_locked(a, &none, &l);
    live_clear(&l, none.n_tokens);
    agent_conf_clear(&none);
    return 0;
}

/* Are the two lists of module paths the same? */
static bool same_modules(const agent_conf_t *x, const agent_conf_t *y)
{
    if (x->n_modules != y->n_modules)
        return false;
    for (size_t i = 0; i < x->n_modules; i++)
        if (strcmp(x->modules[i], y->modules[i]) != 0)
            return false;
    return true;
}

int agent_reload_conf(agent_t *a)
{
    agent_conf_t c = {0};
    conf_live_t l = {.audit_fd = -1};
    const char *path = a->conf_path ? a->conf_path : "agent.conf";
    char *errmsg = NULL;
    int r;

    if (!a->conf_path) {
        agent_info("reload: no agent.conf path (no $HOME or $XDG_CONFIG_HOME); nothing to read");
        return 0;
    }
    r = agent_conf_load(a->conf_path, a->conf_required, &c, &errmsg);
    if (r == 0)
        r = live_build(a, &c, &l, &errmsg);
    if (r < 0) {
        agent_err("reload refused: %s; the configuration in force stays unchanged",
                  errmsg ? errmsg : strerror(-r));
        goto out;
    }
    /* The agent has loaded its modules and listens on its socket: those
     * change only with a restart. The command line's --module wins anyway. */
    if (!same_modules(&a->conf, &c))
        agent_warn("reload: %s: module changed: needs a restart (the agent keeps the modules it "
                   "loaded at start%s)",
                   path, a->cli_modules ? "; --module on the command line overrides it" : "");
    /* the uses counted so far are summed up under the settings they were
     * made with */
    agent_audit_flush_clients(a);
    pthread_rwlock_wrlock(&a->keys_lock);
    install_locked(a, &c, &l);
    agent_policy_update_locked(a);
    pthread_rwlock_unlock(&a->keys_lock);
    agent_info("reloaded %s: %zu [token] and %zu [key] sections, audit %s%s%s", path,
               a->conf.n_tokens, a->conf.n_keys,
               a->conf.audit == AGENT_AUDIT_ALL        ? "all"
               : a->conf.audit == AGENT_AUDIT_REFUSALS ? "refusals"
                                                       : "none",
               a->conf.audit_file ? " also to " : "",
               a->conf.audit_file ? a->conf.audit_file : "");
out:
    /* the replaced settings (or the refused ones) */
    live_clear(&l, c.n_tokens);
    agent_conf_clear(&c);
    free(errmsg);
    return r;
}
