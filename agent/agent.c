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
    agent_conf_clear(&a->conf);
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

int agent_apply_conf(agent_t *a, char **errmsg)
{
    if (a->conf.max_clients)
        a->max_clients = a->conf.max_clients;
    if (a->conf.max_clients_per_user)
        a->max_clients_per_user = a->conf.max_clients_per_user;
    if (a->conf.auth_timeout_s)
        a->auth_timeout_s = a->conf.auth_timeout_s;
    a->client_idle_s = a->conf.client_idle_s;
    a->audit = a->conf.audit;
    if (a->conf.idle_exit_set && !a->idle_exit_s)
        a->idle_exit_s = a->conf.idle_exit_s;
    if (!a->pinentry && a->conf.pinentry && !(a->pinentry = strdup(a->conf.pinentry)))
        return -ENOMEM;
    a->cache_idle_s = a->conf.cache_idle_s;
    a->cache_max_s = a->conf.cache_max_s;
    if (a->conf.always_auth_set)
        a->always_auth_prompt = a->conf.always_auth_prompt;
    if (a->conf.poll_interval_s)
        a->poll_interval_s = a->conf.poll_interval_s;
    if (a->pin_source.kind == AGENT_PIN_NONE && a->conf.pin_source) {
        int r = agent_pin_source_parse(a->conf.pin_source, &a->pin_source, errmsg);

        if (r < 0)
            return r;
    }
    a->pin_source.strict = a->system_mode;
    if (a->conf.n_tokens) {
        a->token_pin_sources = calloc(a->conf.n_tokens, sizeof(*a->token_pin_sources));
        if (!a->token_pin_sources)
            return -ENOMEM;
    }
    for (size_t i = 0; i < a->conf.n_tokens; i++) {
        if (!a->conf.tokens[i].pin_source)
            continue;
        int r = agent_pin_source_parse(a->conf.tokens[i].pin_source, &a->token_pin_sources[i],
                                       errmsg);
        if (r < 0)
            return r;
        a->token_pin_sources[i].strict = a->system_mode;
    }
    return 0;
}
