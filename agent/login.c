/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Logging in to tokens, retry-safely:
 * - a PIN the token rejected is never offered again (a file's while it is
 *   unchanged, by this agent or a restarted one; a cached one is wiped);
 * - at CKF_USER_PIN_FINAL_TRY no stored PIN is tried, only one the user types;
 * - one login per token at a time (its state's lock), whatever the number of
 *   clients waiting: those queued behind a successful login find the token
 *   logged in; a prompt for one token does not hold up another;
 * - prompts run without keys_lock, so signing on other tokens goes on.
 * Lock order: a token state's lock, then keys_lock (read); never the other
 * way.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

#include "agent.h"

#define PROMPT_ATTEMPTS 3
/* After the n-th wrong Unlock PIN in a row the next waits 2^(n-1) s, at most this. */
#define UNLOCK_DELAY_MAX_MS (512 * 1000)
/* A delay up to this long is waited out; a longer one answers Busy. */
#define UNLOCK_WAIT_MAX_MS 2000

bus_err_t agent_err_from_tok(int st)
{
    static const struct {
        int tok;
        bus_err_t bus;
    } table[] = {
            {TOK_OK, BUS_OK},
            {TOK_ERR_NO_MEMORY, BUS_ERR_NO_MEMORY},
            {TOK_ERR_ARGS, BUS_ERR_INVALID_ARGS},
            {TOK_ERR_NO_KEY, BUS_ERR_NO_SUCH_KEY},
            {TOK_ERR_NOT_LOGGED_IN, BUS_ERR_LOCKED},
            {TOK_ERR_AUTH_REQUIRED, BUS_ERR_LOCKED},
            {TOK_ERR_PIN_INCORRECT, BUS_ERR_PIN_INCORRECT},
            {TOK_ERR_PIN_LOCKED, BUS_ERR_PIN_LOCKED},
            {TOK_ERR_TOKEN_REMOVED, BUS_ERR_TOKEN_REMOVED},
            {TOK_ERR_MECHANISM, BUS_ERR_UNSUPPORTED},
            {TOK_ERR_DEVICE, BUS_ERR_DEVICE},
            {TOK_ERR_BUSY, BUS_ERR_BUSY},
    };

    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (table[i].tok == st)
            return table[i].bus;
    return BUS_ERR_FAILED;
}

int64_t agent_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- token states --- */

agent_token_state_t *agent_token_state_find(agent_t *a, const char *uri)
{
    size_t n = atomic_load(&a->n_token_states);

    for (size_t i = 0; i < n; i++)
        if (strcmp(a->token_states[i].token_uri, uri) == 0)
            return &a->token_states[i];
    return NULL;
}

/* Finds or adds the state of a token. */
static agent_token_state_t *state_get(agent_t *a, const char *uri)
{
    agent_token_state_t *st;
    size_t n;

    pthread_mutex_lock(&a->login_lock);
    st = agent_token_state_find(a, uri);
    n = atomic_load(&a->n_token_states);
    if (!st && n < AGENT_MAX_TOKENS) {
        st = &a->token_states[n];
        st->token_uri = strdup(uri);
        if (st->token_uri) {
            pthread_mutex_init(&st->lock, NULL);
            /* a PIN file an earlier agent saw rejected stays rejected */
            st->pin_rejected = agent_pin_rejected_load(a, uri, &st->rejected);
            atomic_init(&st->has_cached, false);
            atomic_init(&st->login_at_ms, 0);
            atomic_init(&st->login_until_ms, 0);
            atomic_init(&st->last_use_ms, 0);
            atomic_store(&a->n_token_states, n + 1); /* publish once complete */
        } else {
            st = NULL;
        }
    }
    pthread_mutex_unlock(&a->login_lock);
    return st;
}

static void forget_cached_locked(agent_token_state_t *st)
{
    atomic_store(&st->has_cached, false);
    agent_secret_free(&st->cached);
}

void agent_token_states_free(agent_t *a)
{
    size_t n = atomic_load(&a->n_token_states);

    for (size_t i = 0; a->token_states && i < n; i++) {
        forget_cached_locked(&a->token_states[i]);
        free(a->token_states[i].token_uri);
        pthread_mutex_destroy(&a->token_states[i].lock);
    }
    free(a->token_states);
    a->token_states = NULL;
    atomic_store(&a->n_token_states, 0);
}

static int cache_pin_locked(agent_token_state_t *st, const char *pin, size_t len)
{
    agent_secret_t s = {0};
    int r;

    if (st->cached.buf && st->cached.len == len && memcmp(st->cached.buf, pin, len) == 0)
        return 0;
    r = agent_secret_new(&s, pin, len);
    if (r < 0)
        return r;
    forget_cached_locked(st);
    st->cached = s;
    atomic_store(&st->has_cached, true);
    return 0;
}

void agent_token_used(agent_t *a, const char *token_uri)
{
    agent_token_state_t *st;

    if (!a->cache_idle_s)
        return;
    st = agent_token_state_find(a, token_uri);
    if (st)
        atomic_store(&st->last_use_ms, agent_now_ms());
}

int64_t agent_token_expires(agent_t *a, const char *token_uri)
{
    agent_token_state_t *st = agent_token_state_find(a, token_uri);
    int64_t at, until = 0, now = agent_now_ms();

    if (!st || !(at = atomic_load(&st->login_at_ms)))
        return 0;
    if (a->cache_max_s)
        until = at + (int64_t)a->cache_max_s * 1000;
    {
        int64_t given = atomic_load(&st->login_until_ms);

        if (given && (!until || given < until))
            until = given;
    }
    if (a->cache_idle_s) {
        int64_t idle = atomic_load(&st->last_use_ms) + (int64_t)a->cache_idle_s * 1000;

        if (!until || idle < until)
            until = idle;
    }
    return until ? (int64_t)time(NULL) + (until - now) / 1000 : 0;
}

/* --- the token, looked up by URI under keys_lock --- */

typedef struct token_view {
    char label[64];
    unsigned long flags;
    bool logged_in, pin_pad;
    /* A copy of the token's pin source (src.path points into src_path): a
     * reload may replace the configured one while this login reads it. */
    agent_pin_source_t src;
    char src_path[PATH_MAX];
} token_view_t;

static tok_token_t *token_by_uri_locked(agent_t *a, const char *uri)
{
    for (size_t i = 0; i < tok_ctx_n_tokens(a->tok); i++) {
        tok_token_t *t = tok_ctx_token(a->tok, i);

        if (strcmp(tok_token_uri(t), uri) == 0)
            return t;
    }
    return NULL;
}

static bool view_token(agent_t *a, const char *uri, token_view_t *v)
{
    tok_token_t *t;

    pthread_rwlock_rdlock(&a->keys_lock);
    t = token_by_uri_locked(a, uri);
    if (t) {
        tok_token_refresh_info(t);
        snprintf(v->label, sizeof(v->label), "%s", tok_token_label(t));
        v->flags = tok_token_flags(t);
        v->logged_in = tok_token_logged_in(t);
        v->pin_pad = tok_token_has_pin_pad(t);
        const agent_pin_source_t *src = agent_pin_source_for_locked(a, t);

        v->src = *src;
        v->src.path = NULL;
        if (src->path && strlen(src->path) < sizeof(v->src_path)) {
            memcpy(v->src_path, src->path, strlen(src->path) + 1);
            v->src.path = v->src_path;
        } else if (src->path) {
            v->src.kind = AGENT_PIN_NONE; /* cannot be opened anyway */
        }
    }
    pthread_rwlock_unlock(&a->keys_lock);
    return t != NULL;
}

static int login_with(agent_t *a, const char *uri, const char *pin, size_t len,
                      unsigned long *ret_flags)
{
    tok_token_t *t;
    int r = TOK_ERR_TOKEN_REMOVED;

    pthread_rwlock_rdlock(&a->keys_lock);
    t = token_by_uri_locked(a, uri);
    if (t) {
        r = tok_token_login(t, pin, len);
        tok_token_refresh_info(t);
        *ret_flags = tok_token_flags(t);
    }
    pthread_rwlock_unlock(&a->keys_lock);
    return r;
}

static bool same_pin_id(const agent_pin_id_t *x, const agent_pin_id_t *y)
{
    return x->dev == y->dev && x->ino == y->ino && x->size == y->size && x->mtime_ns == y->mtime_ns;
}

typedef enum { PIN_GIVEN, PIN_PAD, PIN_CACHED, PIN_FILE, PIN_PROMPT } pin_origin_t;

static const char *tries_note(unsigned long flags)
{
    if (flags & CKF_USER_PIN_LOCKED)
        return "; the PIN is now locked";
    if (flags & CKF_USER_PIN_FINAL_TRY)
        return "; the token is now at its final try";
    if (flags & CKF_USER_PIN_COUNT_LOW)
        return "; few tries are left";
    return "";
}

static void fill_prompt(agent_prompt_t *p, const agent_login_req_t *req, const token_view_t *v,
                        const char *error, bool context)
{
    *p = (agent_prompt_t){
            .token_label = v->label,
            .key_label = req->key_label,
            .key_uri = req->key_uri,
            .client = req->client,
            .error = error,
            .token_flags = v->flags,
            .context_specific = context,
            .decrypt = req->decrypt,
    };
}

/* Logs in to the token of st; st->lock held. */
static int login_locked(agent_t *a, agent_token_state_t *st, const agent_login_req_t *req,
                        char **errmsg)
{
    token_view_t v = {0};
    const char *error = NULL;
    unsigned prompts = 0;
    bool tried_cache = false, tried_file = false;

    if (!view_token(a, req->token_uri, &v)) {
        agent_set_errmsg(errmsg, "token %s is not present", req->token_uri);
        return TOK_ERR_TOKEN_REMOVED;
    }
    if (v.logged_in)
        return TOK_OK;
    if (v.flags & CKF_USER_PIN_LOCKED) {
        agent_set_errmsg(errmsg, "the user PIN of token '%s' is locked; unblock it with the SO PIN",
                         v.label);
        return TOK_ERR_PIN_LOCKED;
    }

    for (;;) {
        agent_secret_t pin = {0};
        agent_pin_id_t id = {0};
        pin_origin_t origin;
        const char *p = NULL;
        size_t len = 0;
        unsigned long flags = v.flags;
        pid_t notice = -1;
        char *why = NULL;
        int r;

        bool final_try = (v.flags & CKF_USER_PIN_FINAL_TRY) != 0;

        if (req->pin) {
            int64_t wait_ms = st->unlock_not_before_ms - agent_now_ms();

            /* a PIN someone sends over the socket: guessing is slowed down,
             * and the last try is only spent when the person says so */
            if (wait_ms > 0) {
                agent_set_errmsg(errmsg,
                                 "token '%s': %u wrong PIN%s in a row through Unlock; the next "
                                 "Unlock is possible in %lld s",
                                 v.label, st->unlock_failures, st->unlock_failures == 1 ? "" : "s",
                                 (long long)(wait_ms + 999) / 1000);
                return TOK_ERR_BUSY;
            }
            if (final_try && !req->final_try_ok) {
                agent_set_errmsg(errmsg,
                                 "token '%s' is at its final PIN try: a wrong PIN now locks the "
                                 "PIN (only the SO PIN unblocks it), so p11agentd did not try it; "
                                 "if you are sure of the PIN, run 'p11agentctl unlock "
                                 "--final-try'",
                                 v.label);
                return TOK_ERR_NOT_LOGGED_IN;
            }
            origin = PIN_GIVEN;
            p = req->pin;
            len = req->pin_len;
        } else if (v.pin_pad) {
            origin = PIN_PAD;
        } else if (!final_try && !tried_cache && st->cached.buf) {
            origin = PIN_CACHED;
            tried_cache = true;
            p = st->cached.buf;
            len = st->cached.len;
        } else if (!final_try && !tried_file && v.src.kind != AGENT_PIN_NONE) {
            tried_file = true;
            r = agent_pin_source_read(&v.src, &pin, &id, &why);
            if (r < 0) {
                agent_warn("token '%s': %s", v.label, why ? why : "PIN source unreadable");
                free(why);
                continue;
            }
            if (st->pin_rejected && same_pin_id(&st->rejected, &id)) {
                agent_secret_free(&pin);
                agent_set_errmsg(errmsg,
                                 "token '%s' rejected the PIN in %s; not retrying it until the "
                                 "file changes",
                                 v.label, v.src.path);
                if (req->no_prompt || !agent_can_prompt(a))
                    return TOK_ERR_PIN_INCORRECT;
                continue;
            }
            origin = PIN_FILE;
            p = pin.buf;
            len = pin.len;
        } else if (!req->no_prompt && agent_can_prompt(a) && prompts < PROMPT_ATTEMPTS) {
            agent_prompt_t pr;

            fill_prompt(&pr, req, &v, error, false);
            prompts++;
            r = agent_prompt_pin(a, &pr, &pin, &why);
            if (r < 0) {
                agent_set_errmsg(errmsg, "token '%s' needs a PIN: %s", v.label,
                                 why               ? why
                                 : r == -ECANCELED ? "the prompt was cancelled"
                                                   : "no prompt");
                free(why);
                return TOK_ERR_NOT_LOGGED_IN;
            }
            origin = PIN_PROMPT;
            p = pin.buf;
            len = pin.len;
        } else {
            if (final_try)
                agent_set_errmsg(errmsg,
                                 "token '%s' is at its final PIN try; p11agentd will not risk a "
                                 "stored PIN: enter it with 'p11agentctl unlock'",
                                 v.label);
            else if (prompts)
                agent_set_errmsg(errmsg, "token '%s': the PIN was not accepted after %u attempts",
                                 v.label, prompts);
            else if (errmsg && !*errmsg)
                agent_set_errmsg(errmsg,
                                 "token '%s' needs a PIN: run 'p11agentctl unlock', or configure "
                                 "a pin-source or pinentry",
                                 v.label);
            return prompts ? TOK_ERR_PIN_INCORRECT : TOK_ERR_NOT_LOGGED_IN;
        }

        if (origin == PIN_PAD) {
            agent_prompt_t pr;

            fill_prompt(&pr, req, &v, NULL, false);
            notice = agent_prompt_notice_begin(a, &pr);
        }
        agent_debug(AGENT_DBG_PIN, "logging in to token '%s'", v.label);
        r = login_with(a, req->token_uri, p, len, &flags);
        agent_prompt_notice_end(notice);
        if (r == TOK_OK) {
            if (origin == PIN_GIVEN || origin == PIN_PROMPT)
                cache_pin_locked(st, p, len);
            if (origin == PIN_FILE && st->pin_rejected) {
                st->pin_rejected = false;
                agent_pin_rejected_forget(a, req->token_uri);
            }
            st->unlock_failures = 0;
            st->unlock_not_before_ms = 0;
            agent_secret_free(&pin);
            atomic_store(&st->last_use_ms, agent_now_ms());
            atomic_store(&st->login_at_ms, agent_now_ms());
            atomic_store(&st->login_until_ms,
                         req->lifetime_s ? agent_now_ms() + (int64_t)req->lifetime_s * 1000 : 0);
            agent_info("logged in to token '%s'%s", v.label,
                       req->lifetime_s ? " (for the lifetime given to unlock)" : "");
            if (errmsg) {
                free(*errmsg);
                *errmsg = NULL;
            }
            return TOK_OK;
        }
        agent_secret_free(&pin);
        v.flags = flags;
        if (r != TOK_ERR_PIN_INCORRECT) {
            agent_err("login to token '%s' failed: %s%s", v.label, tok_strerror(r),
                      tries_note(flags));
            agent_set_errmsg(errmsg, "login to token '%s' failed: %s%s", v.label, tok_strerror(r),
                             tries_note(flags));
            return r;
        }
        switch (origin) {
        case PIN_FILE:
            st->pin_rejected = true;
            st->rejected = id;
            agent_pin_rejected_save(a, req->token_uri, &id);
            agent_err("token '%s': PIN incorrect (from %s); it will not be tried again until "
                      "the file changes%s",
                      v.label, v.src.path, tries_note(flags));
            agent_set_errmsg(errmsg,
                             "token '%s' rejected the PIN from %s (PIN incorrect); not retrying",
                             v.label, v.src.path);
            if (req->no_prompt || !agent_can_prompt(a))
                return r;
            break;
        case PIN_CACHED:
            agent_warn("token '%s' rejected the cached PIN%s", v.label, tries_note(flags));
            forget_cached_locked(st);
            break;
        case PIN_PROMPT:
            agent_warn("token '%s': the PIN typed was incorrect%s", v.label, tries_note(flags));
            error = (flags & CKF_USER_PIN_FINAL_TRY) ? "Wrong PIN. This is the FINAL try."
                                                     : "Wrong PIN, try again.";
            break;
        case PIN_GIVEN: {
            unsigned shift = st->unlock_failures < 9 ? st->unlock_failures : 9;
            int64_t delay = (int64_t)1000 << shift;

            st->unlock_failures++;
            if (delay > UNLOCK_DELAY_MAX_MS)
                delay = UNLOCK_DELAY_MAX_MS;
            st->unlock_not_before_ms = agent_now_ms() + delay;
            agent_warn("token '%s': PIN incorrect (Unlock, %u in a row; next Unlock in %lld s)%s",
                       v.label, st->unlock_failures, (long long)delay / 1000, tries_note(flags));
            agent_set_errmsg(errmsg,
                             "token '%s' rejected the PIN (PIN incorrect%s); the next Unlock is "
                             "possible in %lld s",
                             v.label, tries_note(flags), (long long)delay / 1000);
            return r;
        }
        default:
            agent_warn("token '%s': PIN incorrect%s", v.label, tries_note(flags));
            agent_set_errmsg(errmsg, "token '%s' rejected the PIN (PIN incorrect%s)", v.label,
                             tries_note(flags));
            return r;
        }
        if (flags & CKF_USER_PIN_LOCKED) {
            agent_set_errmsg(errmsg, "token '%s': PIN incorrect, and the PIN is now locked",
                             v.label);
            return TOK_ERR_PIN_LOCKED;
        }
    }
}

int agent_login(agent_t *a, const agent_login_req_t *req, char **errmsg)
{
    int64_t wait_ms;
    int r;

    agent_token_state_t *st = state_get(a, req->token_uri);

    if (!st)
        return TOK_ERR_NO_MEMORY;
    pthread_mutex_lock(&st->lock);
    wait_ms = req->pin ? st->unlock_not_before_ms - agent_now_ms() : 0;
    if (wait_ms > 0 && wait_ms <= UNLOCK_WAIT_MAX_MS) {
        /* a short delay after a wrong Unlock PIN is waited out (without
         * the lock) rather than refused: a person retyping a PIN is not
         * told to come back; login_locked checks the delay again */
        struct timespec ts = {.tv_sec = wait_ms / 1000, .tv_nsec = (wait_ms % 1000) * 1000000};

        pthread_mutex_unlock(&st->lock);
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
        pthread_mutex_lock(&st->lock);
    }
    r = login_locked(a, st, req, errmsg);
    pthread_mutex_unlock(&st->lock);
    return r;
}

int agent_auth_pin(agent_t *a, const agent_login_req_t *req, agent_secret_t *ret, char **errmsg)
{
    agent_token_state_t *st;
    token_view_t v = {0};
    char *why = NULL;
    int r = 0;

    st = state_get(a, req->token_uri);
    if (!st)
        return -ENOMEM;
    pthread_mutex_lock(&st->lock);
    if (!view_token(a, req->token_uri, &v)) {
        agent_set_errmsg(errmsg, "token %s is not present", req->token_uri);
        r = -ENODEV;
        goto out;
    }
    if (v.pin_pad)
        goto out; /* the reader asks */
    if (a->always_auth_prompt && agent_can_prompt(a)) {
        agent_prompt_t pr;

        fill_prompt(&pr, req, &v, NULL, true);
        r = agent_prompt_pin(a, &pr, ret, &why);
        if (r < 0)
            agent_set_errmsg(errmsg, "key '%s' needs the PIN for each signature: %s",
                             req->key_uri ? req->key_uri : "?", why ? why : "prompt failed");
        free(why);
        goto out;
    }
    if (st->cached.buf && !(v.flags & CKF_USER_PIN_FINAL_TRY)) {
        r = agent_secret_new(ret, st->cached.buf, st->cached.len);
        goto out;
    }
    if (v.src.kind != AGENT_PIN_NONE && !(v.flags & CKF_USER_PIN_FINAL_TRY)) {
        agent_pin_id_t id;

        r = agent_pin_source_read(&v.src, ret, &id, &why);
        if (r == 0 && st->pin_rejected && same_pin_id(&st->rejected, &id)) {
            agent_secret_free(ret);
            r = -EPERM;
        }
        if (r < 0)
            agent_set_errmsg(errmsg, "key '%s' needs the PIN for each signature: %s",
                             req->key_uri ? req->key_uri : "?",
                             r == -EPERM ? "the PIN file was rejected before"
                             : why       ? why
                                         : "unreadable");
        free(why);
        goto out;
    }
    r = -ENOENT;
    agent_set_errmsg(errmsg,
                     "key '%s' needs the PIN for each signature and none is available "
                     "(configure pinentry, or unlock the token with 'p11agentctl unlock')",
                     req->key_uri ? req->key_uri : "?");
out:
    pthread_mutex_unlock(&st->lock);
    return r;
}

void agent_auth_pin_rejected(agent_t *a, const char *token_uri)
{
    agent_token_state_t *st = agent_token_state_find(a, token_uri);

    if (!st)
        return;
    pthread_mutex_lock(&st->lock);
    forget_cached_locked(st);
    pthread_mutex_unlock(&st->lock);
}

void agent_login_all(agent_t *a)
{
    char **uris = NULL;
    size_t n = 0;
    bool any = false;

    /* Which tokens need a login and have a PIN source (no prompts here). */
    pthread_rwlock_rdlock(&a->keys_lock);
    uris = calloc(tok_ctx_n_tokens(a->tok) + 1, sizeof(*uris));
    for (size_t i = 0; uris && i < tok_ctx_n_tokens(a->tok); i++) {
        tok_token_t *t = tok_ctx_token(a->tok, i);

        if (tok_token_login_required(t) && !tok_token_logged_in(t) &&
            agent_pin_source_for_locked(a, t)->kind != AGENT_PIN_NONE && !tok_token_has_pin_pad(t))
            uris[n++] = strdup(tok_token_uri(t));
    }
    pthread_rwlock_unlock(&a->keys_lock);
    for (size_t i = 0; i < n; i++) {
        /* only the PIN source: no prompt that nobody asked for */
        agent_login_req_t req = {.token_uri = uris[i], .no_prompt = true};
        char *msg = NULL;
        int r;

        if (!uris[i])
            continue;
        r = agent_login(a, &req, &msg);
        if (r == TOK_OK)
            any = true;
        else if (msg && (r == TOK_ERR_NOT_LOGGED_IN || r == TOK_ERR_PIN_LOCKED))
            agent_warn("%s", msg); /* no attempt was made, so nothing was logged yet */
        free(msg);
        free(uris[i]);
    }
    free(uris);
    if (any) {
        /* private keys without public objects show only after a login */
        pthread_rwlock_wrlock(&a->keys_lock);
        if (tok_ctx_scan(a->tok) != TOK_OK)
            agent_warn("rescanning tokens after login failed");
        agent_policy_update_locked(a);
        pthread_rwlock_unlock(&a->keys_lock);
    }
}

int agent_lock_tokens(agent_t *a, const char *uri, bool forget_only, char **errmsg)
{
    tok_token_t **toks = NULL;
    char **uris = NULL;
    size_t n = 0, done = 0, skipped = 0;
    int r;

    pthread_rwlock_rdlock(&a->keys_lock);
    r = tok_find_tokens(a->tok, uri && uri[0] ? uri : "pkcs11:", &toks, &n);
    if (r == TOK_OK && !(uris = calloc(n + 1, sizeof(*uris))))
        r = TOK_ERR_NO_MEMORY;
    for (size_t i = 0; r == TOK_OK && i < n; i++)
        if (!(uris[i] = strdup(tok_token_uri(toks[i]))))
            r = TOK_ERR_NO_MEMORY;
    pthread_rwlock_unlock(&a->keys_lock);
    free(toks);
    if (r == TOK_ERR_ARGS) {
        agent_set_errmsg(errmsg, "'%s' is not a valid PKCS#11 URI", uri);
        goto out;
    }
    if (r < 0) {
        agent_set_errmsg(errmsg, "cannot lock tokens matching '%s': %s", uri ? uri : "",
                         tok_strerror(r));
        goto out;
    }
    /* each token under its own lock (a prompt open for it finishes first) */
    for (size_t i = 0; i < n; i++) {
        agent_token_state_t *st = state_get(a, uris[i]);
        tok_token_t *t;

        if (!st) {
            skipped++; /* out of memory (or of token slots) */
            continue;
        }
        pthread_mutex_lock(&st->lock);
        forget_cached_locked(st);
        pthread_rwlock_rdlock(&a->keys_lock);
        t = token_by_uri_locked(a, uris[i]);
        if (t && !forget_only) {
            if (tok_token_logged_in(t))
                tok_token_logout(t);
            atomic_store(&st->login_at_ms, 0);
            atomic_store(&st->login_until_ms, 0);
            agent_info("token '%s' locked (logged out, cached PIN wiped)", tok_token_label(t));
        } else if (t) {
            agent_info("token '%s': cached PIN forgotten", tok_token_label(t));
        }
        done += t != NULL;
        pthread_rwlock_unlock(&a->keys_lock);
        pthread_mutex_unlock(&st->lock);
    }
    if (skipped) {
        r = TOK_ERR_NO_MEMORY;
        agent_err("out of memory locking tokens: %zu of %zu not locked", skipped, n);
        agent_set_errmsg(errmsg, "out of memory: %zu of the %zu tokens matching '%s' were not "
                                 "locked",
                         skipped, n, uri ? uri : "");
        goto out;
    }
    r = (int)done;
out:
    for (size_t i = 0; uris && i < n; i++)
        free(uris[i]);
    free(uris);
    return r;
}

void agent_cache_tick(agent_t *a)
{
    size_t n = atomic_load(&a->n_token_states);
    int64_t now = agent_now_ms();

    for (size_t i = 0; i < n; i++) {
        agent_token_state_t *st = &a->token_states[i];
        int64_t at = atomic_load(&st->login_at_ms), used = atomic_load(&st->last_use_ms);
        int64_t until = atomic_load(&st->login_until_ms);
        const char *why = NULL;

        if (!at)
            continue;
        if (until && now >= until)
            why = "the lifetime given to unlock";
        else if (a->cache_max_s && now - at >= (int64_t)a->cache_max_s * 1000)
            why = "cache-max";
        else if (a->cache_idle_s && now - used >= (int64_t)a->cache_idle_s * 1000)
            why = "cache-idle";
        if (!why)
            continue;
        agent_info("token %s: login expired (%s)", st->token_uri, why);
        agent_lock_tokens(a, st->token_uri, false, NULL);
    }
}

void agent_lock_tokens_gone(agent_t *a, const char *token_uri)
{
    agent_token_state_t *st = agent_token_state_find(a, token_uri);

    if (!st)
        return;
    pthread_mutex_lock(&st->lock);
    forget_cached_locked(st);
    atomic_store(&st->login_at_ms, 0);
    atomic_store(&st->login_until_ms, 0);
    pthread_mutex_unlock(&st->lock);
}
