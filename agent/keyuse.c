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
#include <stdarg.h>
#include <time.h>

#include "agent.h"
#include "text.h"

#define ERROR_TEXT_MAX 2048

/* Sets res to the error err with a sentence (any bytes: URIs, labels; made
 * valid UTF-8 and cut at a character boundary, as it goes on D-Bus). On out
 * of memory the text stays NULL: the status still tells the client. */
void agent_use_result_fail(agent_use_result_t *res, bus_err_t err, const char *fmt, ...)
{
    char *text = NULL;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&text, fmt, ap);
    va_end(ap);
    free(res->text);
    res->status = err;
    res->text = n < 0 ? NULL : text_dbus_safe(text, ERROR_TEXT_MAX);
    if (n >= 0)
        free(text);
}

void agent_use_result_clear(agent_use_result_t *res)
{
    if (res->out && res->secret)
        explicit_bzero(res->out, res->out_len);
    free(res->out);
    free(res->text);
    res->out = NULL;
    res->out_len = 0;
    res->text = NULL;
}

const char *agent_use_result_text(const agent_use_result_t *res)
{
    return res->text ? res->text : "the agent ran out of memory";
}

/* Finds the one key a request names: its canonical URI (the fast path: that is
 * what FindKeys returned), else any URI that matches exactly one key.
 * Returns its index, or -1 with res set to the error. */
static ssize_t lookup_key_locked(agent_t *a, const char *uri, agent_use_result_t *res)
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
        agent_use_result_fail(res, BUS_ERR_INVALID_ARGS, "'%s' is not a valid PKCS#11 URI", uri);
    else if (r < 0)
        agent_use_result_fail(res, agent_err_from_tok(r), "looking up '%s' failed: %s", uri,
                              tok_strerror(r));
    else if (n == 0)
        agent_use_result_fail(res, BUS_ERR_NO_SUCH_KEY,
                              "no key matches '%s' (the agent holds %zu keys on %zu tokens; "
                              "list them with 'p11agentctl keys')",
                              uri, tok_ctx_n_keys(a->tok), tok_ctx_n_tokens(a->tok));
    else if (n > 1)
        agent_use_result_fail(res, BUS_ERR_INVALID_ARGS,
                              "'%s' matches %zu keys; name one (e.g. add object= or id=)", uri, n);
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
enum { USE_DONE = 0, USE_NEEDS = 1 };

/* Copies at most size - 1 bytes of s and a NUL. */
static void copy_cut(char *dst, size_t size, const char *s)
{
    size_t n = strnlen(s, size - 1);

    memcpy(dst, s, n);
    dst[n] = '\0';
}

/* Uses the key the request names; keys_lock is held for reading. Returns
 * USE_DONE with *res set (the result or an error for the client),
 * USE_NEEDS with *need set when a login or a PIN for this use must come
 * first (obtained without the lock, then retried), or -ENOMEM. */
static int use_locked(agent_client_t *c, const char *uri, const agent_key_use_t *u,
                      const tok_auth_t *auth, bool may_need, bool confirmed, use_need_t *need,
                      agent_use_result_t *res)
{
    const agent_key_policy_t *pol;
    agent_t *a = c->agent;
    char why_denied[768];
    const tok_key_t *key;
    uint8_t *out = NULL;
    size_t out_len = 0;
    char *why = NULL;
    int64_t t0 = now_us(), t1;
    ssize_t idx;
    int r;

    idx = lookup_key_locked(a, uri, res);
    if (idx < 0) {
        agent_audit(a, c, u->event, uri, u->alg, u->hash, "no such key", 0);
        return USE_DONE;
    }
    key = tok_ctx_key(a->tok, (size_t)idx);
    pol = (size_t)idx < a->n_key_policies ? a->key_policies[idx] : NULL;
    if (!agent_key_allowed_locked(a, (size_t)idx, c, why_denied, sizeof(why_denied)) ||
        (u->permitted && !u->permitted(a, key, pol, why_denied, sizeof(why_denied)))) {
        agent_audit(a, c, u->event, key->uri, u->alg, u->hash, "denied", 0);
        agent_warn("denied key '%s' to uid %ld pid %ld (%s): %s", key->uri, (long)c->uid,
                   (long)c->pid, u->event, why_denied);
        agent_use_result_fail(res, BUS_ERR_DENIED,
                              "this client (uid %ld, %s) may not use key '%s' for %s: %s",
                              (long)c->uid, c->exe[0] ? c->exe : "unknown program", key->uri,
                              u->verb, why_denied);
        return USE_DONE;
    }
    /* confirm = yes | DURATION: the person allows this use first (the
     * prompt runs without the lock; then this is called again, confirmed) */
    if (pol && pol->confirm && !confirmed && !agent_confirm_fresh(a, key->uri, pol->confirm_s)) {
        if (!may_need) {
            agent_use_result_fail(res, BUS_ERR_DENIED, "key '%s' needs a confirmation", key->uri);
            return USE_DONE;
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
        agent_use_result_fail(res, agent_err_from_tok(r),
                              "%s with key '%s' on token '%s' failed: %s", u->verb, key->uri,
                              tok_token_label(key->token), why ? why : tok_strerror(r));
        free(why);
        return USE_DONE;
    }
    t1 = now_us();
    agent_token_used(a, tok_token_uri(key->token));
    agent_debug(AGENT_DBG_SIGN, "%s with '%s' (%s%s%s), out %zu bytes, %lld us", u->verb,
                key->uri, u->alg, u->hash[0] ? "/" : "", u->hash, out_len, (long long)(t1 - t0));
    res->status = 0;
    res->out = out;
    res->out_len = out_len;
    /* the record is written once the result is sent (agent_audit_use) */
    res->audit.set = a->audit == AGENT_AUDIT_ALL;
    if (res->audit.set) {
        res->audit.event = u->event;
        res->audit.alg = u->alg;
        copy_cut(res->audit.hash, sizeof(res->audit.hash), u->hash);
        copy_cut(res->audit.key, sizeof(res->audit.key), key->uri);
        res->audit.duration_us = t1 - t0;
        res->audit.at_ms = t1 / 1000;
    }
    return USE_DONE;
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

void agent_use_key(agent_client_t *c, const char *uri, const agent_key_use_t *u,
                   agent_use_result_t *res)
{
    agent_t *a = c->agent;
    agent_secret_t pin = {0};
    tok_auth_t auth, *authp = NULL;
    use_need_t need = {0};
    bool confirmed = false, done = false;
    int r;

    *res = (agent_use_result_t){.status = BUS_ERR_FAILED, .secret = u->secret_result};
    /* At most: the person's confirmation, a login, then the PIN for this
     * use, then the use itself. */
    for (int round = 0; !done && round < 4; round++) {
        agent_login_req_t req;
        char *why = NULL;

        pthread_rwlock_rdlock(&a->keys_lock);
        r = use_locked(c, uri, u, authp, round < 3, confirmed, &need, res);
        pthread_rwlock_unlock(&a->keys_lock);
        if (r < 0) {
            agent_use_result_fail(res, BUS_ERR_NO_MEMORY,
                                  "the agent ran out of memory %s with key '%s'", u->verb, uri);
            done = true;
            break;
        }
        if (r == USE_DONE) {
            done = true;
            break;
        }
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
                agent_use_result_fail(res, BUS_ERR_DENIED,
                         "key '%s' may be used only when the person confirms it: %s",
                         need.key_uri, why ? why : "refused");
                done = true;
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
            agent_audit(a, c, u->event, need.key_uri, u->alg, u->hash, why ? why : tok_strerror(r),
                        0);
            agent_use_result_fail(res, agent_err_from_tok(r), "%s with key '%s' failed: %s",
                                  u->verb, need.key_uri, why ? why : tok_strerror(r));
            done = true;
        }
        free(why);
    }
    /* three rounds and still a need: cannot happen, but never hang */
    if (!done)
        agent_use_result_fail(res, BUS_ERR_FAILED, "%s with key '%s' did not complete", u->verb,
                 need.key_uri ? need.key_uri : uri);
    agent_secret_free(&pin);
    use_need_clear(&need);
    atomic_fetch_add(res->status == 0 ? u->ok_count : u->fail_count, 1);
}
