/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Per-token session pool, login and logout, token info.
 *
 * PKCS#11 keeps the login state per application and token, as long as one
 * of its sessions stays open: the pool never closes its last session except
 * on errors and when the token goes away.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tok-internal.h"

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct timespec ts_of_ns(int64_t ns)
{
    return (struct timespec){ .tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000 };
}

/* The cap: the configured count (or the default), lowered to the token's
 * ulMaxSessionCount when it tells one. The pool opens read-only sessions
 * only, so ulMaxRwSessionCount does not bound it. */
static size_t pool_cap_locked(const tok_token_t *t)
{
    CK_ULONG m = t->info.ulMaxSessionCount;
    size_t cap = t->want_max > 0 ? t->want_max : TOK_POOL_MAX_DEFAULT;

    if (m != CK_EFFECTIVELY_INFINITE && m != CK_UNAVAILABLE_INFORMATION && m > 0 && m < cap)
        cap = m;
    return cap;
}

int tok_pool_init(tok_token_t *t)
{
    pthread_condattr_t ca;

    t->max_sessions = pool_cap_locked(t);
    t->full_at = SIZE_MAX;
    pthread_mutex_init(&t->lock, NULL);
    pthread_mutex_init(&t->login_lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cond, &ca);
    pthread_condattr_destroy(&ca);
    t->idle_cap = 4;
    t->idle = calloc(t->idle_cap, sizeof(*t->idle));
    t->idle_since_ns = calloc(t->idle_cap, sizeof(*t->idle_since_ns));
    return t->idle != NULL && t->idle_since_ns != NULL ? TOK_OK : TOK_ERR_NO_MEMORY;
}

/* Only for a token whose pool was initialised; no session may be checked out. */
void tok_pool_destroy(tok_token_t *t)
{
    for (size_t i = 0; i < t->n_idle; i++)
        t->f->C_CloseSession(t->idle[i]);
    t->n_open -= t->n_idle;
    t->n_idle = 0;
    free(t->idle);
    t->idle = NULL;
    free(t->idle_since_ns);
    t->idle_since_ns = NULL;
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->lock);
    pthread_mutex_destroy(&t->login_lock);
}

/* Room in the idle array for every session open plus one (a session that
 * comes back always fits). False when out of memory. */
static bool idle_room_locked(tok_token_t *t)
{
    CK_SESSION_HANDLE *n;
    int64_t *since;
    size_t cap;

    if (t->n_open + 1 <= t->idle_cap)
        return true;
    cap = t->idle_cap * 2 > t->n_open + 1 ? t->idle_cap * 2 : t->n_open + 1;
    n = realloc(t->idle, cap * sizeof(*n));
    if (n == NULL)
        return false;
    t->idle = n;
    since = realloc(t->idle_since_ns, cap * sizeof(*since));
    if (since == NULL)
        return false; /* idle_cap unchanged: both arrays hold at least that */
    t->idle_since_ns = since;
    t->idle_cap = cap;
    return true;
}

/* May the pool open one more session now? */
static bool may_grow_locked(const tok_token_t *t, int64_t now)
{
    if (t->n_open >= t->max_sessions)
        return false;
    return t->n_open < t->full_at || now >= t->backoff_until_ns;
}

/*
 * An idle session, or a new one while the pool is under its cap, or the
 * first to come back within TOK_POOL_WAIT_SECONDS. CKR_SESSION_COUNT does
 * not fail the request: the pool stops growing for TOK_POOL_BACKOFF_MS and
 * waits for one of its sessions (or, with none open, tries again after the
 * back-off). TOK_OK, TOK_ERR_BUSY (nothing within the wait),
 * TOK_ERR_NO_MEMORY, or the status of C_OpenSession's error.
 */
int tok_session_get(tok_token_t *t, CK_SESSION_HANDLE *ret)
{
    int64_t deadline = now_ns() + (int64_t)TOK_POOL_WAIT_SECONDS * 1000000000, now, wake;
    struct timespec ts;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_RV rv;
    int r = TOK_OK;

    pthread_mutex_lock(&t->lock);
    for (;;) {
        if (t->n_idle > 0) {
            s = t->idle[--t->n_idle];
            break;
        }
        now = now_ns();
        if (may_grow_locked(t, now)) {
            if (!idle_room_locked(t)) {
                r = TOK_ERR_NO_MEMORY;
                break;
            }
            t->n_open++;
            pthread_mutex_unlock(&t->lock);
            rv = t->f->C_OpenSession(t->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
            pthread_mutex_lock(&t->lock);
            if (rv == CKR_OK) {
                if (t->n_open > t->full_at)
                    t->full_at = SIZE_MAX; /* the token has room again */
                break;
            }
            t->n_open--;
            pthread_cond_signal(&t->cond);
            tok_debug(t->ctx, "C_OpenSession on '%s' with %zu open: %s", t->label, t->n_open,
                      p11_kit_strerror(rv));
            if (rv == CKR_SESSION_COUNT) {
                /* The token (shared with others, or smaller than it said)
                 * has no room: wait for one of ours, grow again later. */
                t->full_at = t->n_open;
                t->backoff_until_ns = now_ns() + (int64_t)TOK_POOL_BACKOFF_MS * 1000000;
                continue;
            }
            if (rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_DEVICE_REMOVED) {
                t->logged_in = false;
                tok_token_forget_login_locked(t);
            }
            r = tok_status_from_rv(rv);
            break;
        }
        if (now >= deadline) {
            r = TOK_ERR_BUSY;
            break;
        }
        /* a session coming back wakes us; so does the end of a back-off
         * that keeps the pool from growing */
        wake = deadline;
        if (t->n_open < t->max_sessions && t->backoff_until_ns > now &&
            t->backoff_until_ns < wake)
            wake = t->backoff_until_ns;
        ts = ts_of_ns(wake);
        pthread_cond_timedwait(&t->cond, &t->lock, &ts);
    }
    pthread_mutex_unlock(&t->lock);
    if (r == TOK_OK)
        *ret = s;
    return r;
}

void tok_session_put(tok_token_t *t, CK_SESSION_HANDLE s)
{
    pthread_mutex_lock(&t->lock);
    if (t->n_open > t->max_sessions && t->n_open > 1) {
        /* the cap went down meanwhile: one fewer */
        pthread_mutex_unlock(&t->lock);
        tok_session_drop(t, s);
        return;
    }
    t->idle_since_ns[t->n_idle] = now_ns();
    t->idle[t->n_idle++] = s;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
}

void tok_session_drop(tok_token_t *t, CK_SESSION_HANDLE s)
{
    t->f->C_CloseSession(s);
    pthread_mutex_lock(&t->lock);
    tok_token_forget_session_locked(t, s);
    t->n_open--;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
}

void tok_token_set_max_sessions(tok_token_t *t, size_t n)
{
    CK_SESSION_HANDLE s;
    size_t old;

    if (t == NULL)
        return;
    pthread_mutex_lock(&t->lock);
    old = t->max_sessions;
    t->want_max = n > TOK_MAX_SESSIONS_LIMIT ? TOK_MAX_SESSIONS_LIMIT : n;
    t->max_sessions = pool_cap_locked(t);
    if (t->max_sessions != old)
        tok_debug(t->ctx, "session pool of '%s': at most %zu (was %zu, %zu open)", t->label,
                  t->max_sessions, old, t->n_open);
    pthread_cond_broadcast(&t->cond); /* waiters may open one now */
    /* Past a lower cap: idle ones close now, busy ones when they come back.
     * The last one stays (it keeps the login). */
    while (t->n_open > t->max_sessions && t->n_open > 1 && t->n_idle > 0) {
        s = t->idle[--t->n_idle];
        pthread_mutex_unlock(&t->lock);
        tok_session_drop(t, s);
        pthread_mutex_lock(&t->lock);
    }
    pthread_mutex_unlock(&t->lock);
}

/* Does session s hold session copies of keys (which go with it)? */
static bool holds_copies_locked(const tok_token_t *t, CK_SESSION_HANDLE s)
{
    const tok_ctx_t *ctx = t->ctx;

    for (size_t i = 0; i < ctx->n_keys; i++)
        if (ctx->keys[i].k.token == t && ctx->keys[i].copy != CK_INVALID_HANDLE &&
            ctx->keys[i].copy_session == s)
            return true;
    return false;
}

/* Closes the sessions of t idle for idle_s seconds or more, oldest first,
 * but not the last one open (it keeps the login) nor one holding key
 * copies. */
static void trim_token(tok_token_t *t, unsigned idle_s)
{
    int64_t before = now_ns() - (int64_t)idle_s * 1000000000;
    CK_SESSION_HANDLE s;
    size_t i = 0, closed = 0;

    pthread_mutex_lock(&t->lock);
    /* the oldest are at the bottom of the stack */
    while (i < t->n_idle && t->idle_since_ns[i] <= before && t->n_open > 1) {
        s = t->idle[i];
        if (holds_copies_locked(t, s)) {
            i++;
            continue;
        }
        memmove(&t->idle[i], &t->idle[i + 1], (t->n_idle - i - 1) * sizeof(*t->idle));
        memmove(&t->idle_since_ns[i], &t->idle_since_ns[i + 1],
                (t->n_idle - i - 1) * sizeof(*t->idle_since_ns));
        t->n_idle--;
        pthread_mutex_unlock(&t->lock);
        tok_session_drop(t, s); /* n_open-- */
        closed++;
        pthread_mutex_lock(&t->lock);
    }
    if (closed > 0)
        tok_debug(t->ctx, "closed %zu sessions of '%s' idle for %us; %zu open", closed, t->label,
                  idle_s, t->n_open);
    pthread_mutex_unlock(&t->lock);
}

void tok_ctx_trim_sessions(tok_ctx_t *ctx, unsigned idle_s)
{
    for (size_t i = 0; ctx != NULL && i < ctx->n_tokens; i++)
        trim_token(ctx->tokens[i], idle_s);
}

size_t tok_token_max_sessions(const tok_token_t *t)
{
    tok_token_t *mt = (tok_token_t *)t;
    size_t n;

    if (t == NULL)
        return 0;
    pthread_mutex_lock(&mt->lock);
    n = mt->max_sessions;
    pthread_mutex_unlock(&mt->lock);
    return n;
}

int tok_token_login(tok_token_t *t, const char *pin, size_t pin_len)
{
    CK_SESSION_HANDLE s;
    CK_RV rv;
    int r;

    if (t == NULL || (pin == NULL && pin_len != 0))
        return TOK_ERR_ARGS;
    pthread_mutex_lock(&t->login_lock);
    r = tok_session_get(t, &s);
    if (r != TOK_OK)
        goto out;
    rv = t->f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, pin != NULL ? pin_len : 0);
    tok_debug(t->ctx, "C_Login on '%s': %s", t->label, p11_kit_strerror(rv));
    if (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN) {
        pthread_mutex_lock(&t->lock);
        t->logged_in = true;
        pthread_mutex_unlock(&t->lock);
        tok_token_find_handles(t, s);
        tok_token_make_copies(t, s);
        r = TOK_OK;
    } else {
        r = tok_status_from_rv(rv);
        if (r == TOK_OK)
            r = TOK_ERR_GENERAL;
    }
    tok_session_return(t, s, rv);
out:
    pthread_mutex_unlock(&t->login_lock);
    return r;
}

int tok_token_logout(tok_token_t *t)
{
    CK_SESSION_HANDLE s;
    CK_RV rv;
    int r;

    if (t == NULL)
        return TOK_ERR_ARGS;
    pthread_mutex_lock(&t->login_lock);
    r = tok_session_get(t, &s);
    if (r != TOK_OK)
        goto out;
    rv = t->f->C_Logout(s);
    tok_debug(t->ctx, "C_Logout on '%s': %s", t->label, p11_kit_strerror(rv));
    if (rv == CKR_OK || rv == CKR_USER_NOT_LOGGED_IN || tok_rv_is_removal(rv)) {
        pthread_mutex_lock(&t->lock);
        t->logged_in = false;
        tok_token_forget_login_locked(t);
        pthread_mutex_unlock(&t->lock);
    }
    r = rv == CKR_USER_NOT_LOGGED_IN ? TOK_OK : tok_status_from_rv(rv);
    tok_session_return(t, s, rv);
out:
    pthread_mutex_unlock(&t->login_lock);
    return r;
}

int tok_token_refresh_info(tok_token_t *t)
{
    CK_TOKEN_INFO info;
    CK_RV rv;

    if (t == NULL)
        return TOK_ERR_ARGS;
    rv = t->f->C_GetTokenInfo(t->slot, &info);
    if (rv != CKR_OK)
        return tok_status_from_rv(rv);
    pthread_mutex_lock(&t->lock);
    t->info = info;
    pthread_mutex_unlock(&t->lock);
    return TOK_OK;
}

unsigned long tok_token_flags(const tok_token_t *t)
{
    tok_token_t *mt = (tok_token_t *)t;
    unsigned long flags;

    if (t == NULL)
        return 0;
    pthread_mutex_lock(&mt->lock);
    flags = mt->info.flags;
    pthread_mutex_unlock(&mt->lock);
    return flags;
}

bool tok_token_logged_in(const tok_token_t *t)
{
    tok_token_t *mt = (tok_token_t *)t;
    bool v;

    if (t == NULL)
        return false;
    pthread_mutex_lock(&mt->lock);
    v = mt->logged_in;
    pthread_mutex_unlock(&mt->lock);
    return v;
}

bool tok_token_login_required(const tok_token_t *t)
{
    return (tok_token_flags(t) & CKF_LOGIN_REQUIRED) != 0;
}

bool tok_token_has_pin_pad(const tok_token_t *t)
{
    return (tok_token_flags(t) & CKF_PROTECTED_AUTHENTICATION_PATH) != 0;
}

const char *tok_token_label(const tok_token_t *t)
{
    return t != NULL ? t->label : NULL;
}

const char *tok_token_uri(const tok_token_t *t)
{
    return t != NULL ? t->uri : NULL;
}

void tok_session_return(tok_token_t *t, CK_SESSION_HANDLE s, CK_RV rv)
{
    if (tok_rv_is_removal(rv))
        tok_session_drop(t, s);
    else
        tok_session_put(t, s);
}
