/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * One use of a key, shared by Sign (handlers.c) and Decrypt (decrypt.c):
 * the key is found, the client's access checked (allow-users/groups,
 * allow-exe, the method's own rule), the person asked (confirm =), a login
 * and a PIN for this one use obtained when needed (without the agent's
 * locks held), then the work done, counted, logged and audited.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent.h"

#define error_reply agent_error_reply

/* Finds the one key a request names: its canonical URI (the fast path: that is
 * what FindKeys returned), else any URI that matches exactly one key.
 * Returns its index, or -1 with *ret_err set. */
static ssize_t lookup_key_locked(agent_t *a, DBusMessage *msg, const char *uri,
                                 DBusMessage **ret_err)
{
    const tok_key_t **keys = NULL;
    ssize_t found = -1;
    size_t n = 0;
    int r;

    for (size_t i = 0; i < tok_ctx_n_keys(a->tok); i++)
        if (strcmp(tok_ctx_key(a->tok, i)->uri, uri) == 0)
            return (ssize_t)i;
    r = tok_find_keys(a->tok, uri, &keys, &n);
    if (r == TOK_ERR_ARGS)
        *ret_err = error_reply(msg, BUS_ERR_INVALID_ARGS, "'%s' is not a valid PKCS#11 URI", uri);
    else if (r < 0)
        *ret_err = error_reply(msg, agent_err_from_tok(r), "looking up '%s' failed: %s", uri,
                               tok_strerror(r));
    else if (n == 0)
        *ret_err = error_reply(msg, BUS_ERR_NO_SUCH_KEY,
                               "no key matches '%s' (the agent holds %zu keys on %zu tokens; "
                               "list them with 'p11agentctl keys')",
                               uri, tok_ctx_n_keys(a->tok), tok_ctx_n_tokens(a->tok));
    else if (n > 1)
        *ret_err = error_reply(msg, BUS_ERR_INVALID_ARGS,
                               "'%s' matches %zu keys; name one (e.g. add object= or id=)", uri,
                               n);
    else
        for (size_t i = 0; i < tok_ctx_n_keys(a->tok) && found < 0; i++)
            if (tok_ctx_key(a->tok, i) == keys[0])
                found = (ssize_t)i;
    free(keys);
    return found;
}

static int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* What a use of a key waits for before it can be made. */
typedef enum { NEED_NOTHING, NEED_LOGIN, NEED_AUTH, NEED_CONFIRM } need_t;

typedef struct use_need {
    need_t what;
    unsigned confirm_s; /* NEED_CONFIRM: how long an "allow" counts */
    char *token_uri;
    char *key_uri;
    char *key_label;
} use_need_t;

static void use_need_clear(use_need_t *n)
{
    free(n->token_uri);
    free(n->key_uri);
    free(n->key_label);
    memset(n, 0, sizeof(*n));
}

static bool set_need(use_need_t *n, need_t what, const tok_key_t *key)
{
    use_need_clear(n);
    n->what = what;
    n->token_uri = strdup(tok_token_uri(key->token));
    n->key_uri = strdup(key->uri);
    n->key_label = strdup(key->label ? key->label : "");
    return n->token_uri && n->key_uri && n->key_label;
}

/* use_locked's results besides negative errno */
enum { USE_REPLIED = 0, USE_NEEDS = 1 };

/* An `ay` reply holding out. NULL when out of memory. */
static DBusMessage *bytes_reply(DBusMessage *msg, const uint8_t *out, size_t len)
{
    DBusMessage *reply = dbus_message_new_method_return(msg);

    if (reply && !dbus_message_append_args(reply, DBUS_TYPE_ARRAY, DBUS_TYPE_BYTE, &out,
                                           (int)len, DBUS_TYPE_INVALID)) {
        dbus_message_unref(reply);
        reply = NULL;
    }
    return reply;
}

/* Uses the key the request names; keys_lock is held for reading. Returns
 * USE_REPLIED with *ret_reply set (the result or an error for the client),
 * USE_NEEDS with *need set when a login or a PIN for this use must come
 * first (obtained without the lock, then retried), or -ENOMEM (nothing for
 * the client could be built; *ret_reply untouched). */
static int use_locked(agent_client_t *c, DBusMessage *msg, const char *uri,
                      const agent_key_use_t *u, const tok_auth_t *auth, bool may_need,
                      bool confirmed, use_need_t *need, DBusMessage **ret_reply)
{
    const agent_key_policy_t *pol;
    agent_t *a = c->agent;
    char why_denied[768];
    const tok_key_t *key;
    DBusMessage *reply = NULL;
    uint8_t *out = NULL;
    size_t out_len = 0;
    char *why = NULL;
    int64_t t0 = now_us();
    ssize_t idx;
    int r;

    idx = lookup_key_locked(a, msg, uri, &reply);
    if (idx < 0) {
        agent_audit(a, c, u->event, uri, u->alg, u->hash, "no such key", 0);
        goto out;
    }
    key = tok_ctx_key(a->tok, (size_t)idx);
    pol = (size_t)idx < a->n_key_policies ? a->key_policies[idx] : NULL;
    if (!agent_key_allowed_locked(a, (size_t)idx, c, why_denied, sizeof(why_denied)) ||
        (u->permitted && !u->permitted(a, key, pol, why_denied, sizeof(why_denied)))) {
        agent_audit(a, c, u->event, key->uri, u->alg, u->hash, "denied", 0);
        agent_warn("denied key '%s' to uid %ld pid %ld (%s): %s", key->uri, (long)c->uid,
                   (long)c->pid, u->event, why_denied);
        reply = error_reply(msg, BUS_ERR_DENIED,
                            "this client (uid %ld, %s) may not use key '%s' for %s: %s",
                            (long)c->uid, c->exe[0] ? c->exe : "unknown program", key->uri,
                            u->verb, why_denied);
        goto out;
    }
    /* confirm = yes | DURATION: the person allows this use first (the
     * prompt runs without the lock; then this is called again, confirmed) */
    if (pol && pol->confirm && !confirmed && !agent_confirm_fresh(a, key->uri, pol->confirm_s)) {
        if (!may_need) {
            reply = error_reply(msg, BUS_ERR_DENIED, "key '%s' needs a confirmation", key->uri);
            goto out;
        }
        if (!set_need(need, NEED_CONFIRM, key))
            return -ENOMEM;
        need->confirm_s = pol->confirm_s;
        return USE_NEEDS;
    }
    if (key->always_auth && !auth && may_need && tok_token_logged_in(key->token))
        return set_need(need, NEED_AUTH, key) ? USE_NEEDS : -ENOMEM;
    r = u->run(u->arg, key, key->always_auth ? auth : NULL, &out, &out_len, &why);
    if ((r == TOK_ERR_NOT_LOGGED_IN || r == TOK_ERR_AUTH_REQUIRED) && may_need) {
        free(why);
        return set_need(need, r == TOK_ERR_NOT_LOGGED_IN ? NEED_LOGIN : NEED_AUTH, key)
                       ? USE_NEEDS
                       : -ENOMEM;
    }
    if (r == TOK_ERR_PIN_INCORRECT && auth)
        agent_auth_pin_rejected(a, tok_token_uri(key->token));
    if (r < 0) {
        agent_audit(a, c, u->event, key->uri, u->alg, u->hash, why ? why : tok_strerror(r),
                    now_us() - t0);
        reply = error_reply(msg, agent_err_from_tok(r), "%s with key '%s' on token '%s' failed: %s",
                            u->verb, key->uri, tok_token_label(key->token),
                            why ? why : tok_strerror(r));
        free(why);
        goto out;
    }
    agent_token_used(a, tok_token_uri(key->token));
    agent_debug(AGENT_DBG_SIGN, "%s with '%s' (%s%s%s), out %zu bytes, %lld us", u->verb,
                key->uri, u->alg, u->hash[0] ? "/" : "", u->hash, out_len,
                (long long)(now_us() - t0));
    reply = bytes_reply(msg, out, out_len);
    if (u->secret_result)
        explicit_bzero(out, out_len);
    free(out);
    if (!reply) {
        /* done, but the answer cannot be built: an error, not a NULL that
         * the caller would take for "needs a PIN" */
        agent_err("out of memory replying to %s by key '%s'", u->event, key->uri);
        reply = error_reply(msg, BUS_ERR_NO_MEMORY,
                            "the agent ran out of memory sending the result of key '%s'",
                            key->uri);
        goto out;
    }
    /* the record is written after the reply is sent (agent_dispatch) */
    c->pending_audit.set = a->audit == AGENT_AUDIT_ALL;
    c->pending_audit.event = u->event;
    c->pending_audit.alg = u->alg;
    snprintf(c->pending_audit.hash, sizeof(c->pending_audit.hash), "%s", u->hash);
    snprintf(c->pending_audit.key, sizeof(c->pending_audit.key), "%s", key->uri);
    c->pending_audit.duration_us = now_us() - t0;
    c->wipe_reply = u->secret_result;
out:
    if (!reply)
        return -ENOMEM;
    *ret_reply = reply;
    return USE_REPLIED;
}

/* Asks the person (pinentry CONFIRM) whether c may use the key of need;
 * no lock held. 0 allowed (recorded for confirm = DURATION), else negative
 * with *why saying why not. */
static int confirm_use(agent_client_t *c, const use_need_t *need, bool decrypt, char **why)
{
    agent_t *a = c->agent;
    agent_prompt_t p = {.key_label = need->key_label, .key_uri = need->key_uri, .client = c,
                        .confirm = true, .decrypt = decrypt};
    char *label = NULL;
    int r;

    pthread_rwlock_rdlock(&a->keys_lock);
    for (size_t i = 0; i < tok_ctx_n_tokens(a->tok) && !label; i++)
        if (strcmp(tok_token_uri(tok_ctx_token(a->tok, i)), need->token_uri) == 0)
            label = strdup(tok_token_label(tok_ctx_token(a->tok, i)));
    pthread_rwlock_unlock(&a->keys_lock);
    p.token_label = label;
    r = agent_can_prompt(a) ? agent_prompt_confirm(a, &p, why) : -ENOENT;
    free(label);
    if (r == 0) {
        agent_info("the use of key '%s' by uid %ld pid %ld was confirmed", need->key_uri,
                   (long)c->uid, (long)c->pid);
        agent_confirm_record(a, need->key_uri, need->confirm_s);
    } else if (!*why) {
        agent_set_errmsg(why, "%s", r == -ECANCELED ? "the person denied it"
                                    : r == -ENOENT  ? "no pinentry is configured to ask"
                                                    : "the confirmation prompt failed");
    }
    return r;
}

int agent_use_key(agent_client_t *c, DBusMessage *msg, const char *uri, const agent_key_use_t *u,
                  DBusMessage **ret_reply)
{
    agent_t *a = c->agent;
    DBusMessage *reply = NULL;
    agent_secret_t pin = {0};
    tok_auth_t auth, *authp = NULL;
    use_need_t need = {0};
    bool confirmed = false;
    int r;

    /* At most: the person's confirmation, a login, then the PIN for this
     * use, then the use itself. */
    for (int round = 0; !reply && round < 4; round++) {
        agent_login_req_t req;
        char *why = NULL;

        pthread_rwlock_rdlock(&a->keys_lock);
        r = use_locked(c, msg, uri, u, authp, round < 3, confirmed, &need, &reply);
        pthread_rwlock_unlock(&a->keys_lock);
        if (r < 0)
            goto oom;
        if (r == USE_REPLIED)
            break;
        /* USE_NEEDS: no agent lock held from here: prompts may take a while */
        req = (agent_login_req_t){.token_uri = need.token_uri, .key_uri = need.key_uri,
                                  .key_label = need.key_label, .client = c,
                                  .decrypt = u->decrypt};
        if (need.what == NEED_CONFIRM) {
            r = confirm_use(c, &need, u->decrypt, &why);
            if (r == 0) {
                confirmed = true;
            } else {
                agent_audit(a, c, u->event, need.key_uri, u->alg, u->hash, "not confirmed", 0);
                reply = error_reply(msg, BUS_ERR_DENIED, "key '%s' may be used only when the "
                                    "person confirms it: %s", need.key_uri,
                                    why ? why : "refused");
                free(why);
                if (!reply)
                    goto oom;
                break;
            }
            free(why);
            continue;
        }
        if (need.what == NEED_LOGIN)
            r = agent_login(a, &req, &why);
        else {
            agent_secret_free(&pin);
            r = agent_auth_pin(a, &req, &pin, &why) < 0 ? TOK_ERR_NOT_LOGGED_IN : TOK_OK;
            auth = (tok_auth_t){.pin = pin.buf, .pin_len = pin.len};
            authp = &auth;
        }
        if (r < 0) {
            agent_audit(a, c, u->event, need.key_uri, u->alg, u->hash,
                        why ? why : tok_strerror(r), 0);
            reply = error_reply(msg, agent_err_from_tok(r), "%s with key '%s' failed: %s",
                                u->verb, need.key_uri, why ? why : tok_strerror(r));
            if (!reply) {
                free(why);
                goto oom;
            }
        }
        free(why);
    }
    r = 0;
    if (!reply) { /* three rounds and still a need: cannot happen, but never hang */
        reply = error_reply(msg, BUS_ERR_FAILED, "%s with key '%s' did not complete", u->verb,
                            need.key_uri ? need.key_uri : uri);
        if (!reply)
            goto oom;
    }
    goto out;
oom:
    r = -ENOMEM;
out:
    agent_secret_free(&pin);
    use_need_clear(&need);
    if (reply && dbus_message_get_type(reply) == DBUS_MESSAGE_TYPE_METHOD_RETURN)
        atomic_fetch_add(u->ok_count, 1);
    else
        atomic_fetch_add(u->fail_count, 1);
    if (r == 0)
        *ret_reply = reply;
    else if (reply)
        dbus_message_unref(reply);
    return r;
}
