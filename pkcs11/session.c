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

int tok_pool_init(tok_token_t *t)
{
    pthread_condattr_t ca;
    CK_ULONG m = t->info.ulMaxSessionCount;

    t->max_sessions = TOK_POOL_MAX_DEFAULT;
    if (m != CK_EFFECTIVELY_INFINITE && m != CK_UNAVAILABLE_INFORMATION && m < t->max_sessions)
        t->max_sessions = m;
    pthread_mutex_init(&t->lock, NULL);
    pthread_mutex_init(&t->login_lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cond, &ca);
    pthread_condattr_destroy(&ca);
    t->idle = calloc(TOK_POOL_MAX_DEFAULT, sizeof(*t->idle));
    return t->idle != NULL ? TOK_OK : TOK_ERR_NO_MEMORY;
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
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->lock);
    pthread_mutex_destroy(&t->login_lock);
}

int tok_session_get(tok_token_t *t, CK_SESSION_HANDLE *ret)
{
    struct timespec deadline;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_RV rv;
    int r = TOK_OK;

    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += TOK_POOL_WAIT_SECONDS;
    pthread_mutex_lock(&t->lock);
    for (;;) {
        if (t->n_idle > 0) {
            s = t->idle[--t->n_idle];
            break;
        }
        if (t->n_open < t->max_sessions) {
            t->n_open++;
            pthread_mutex_unlock(&t->lock);
            rv = t->f->C_OpenSession(t->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
            pthread_mutex_lock(&t->lock);
            if (rv == CKR_OK)
                break;
            t->n_open--;
            pthread_cond_signal(&t->cond);
            tok_debug(t->ctx, "C_OpenSession on '%s': %s", t->label, p11_kit_strerror(rv));
            if (rv == CKR_SESSION_COUNT && t->n_open > 0) {
                /* The token allows fewer than it said: wait for ours. */
                t->max_sessions = t->n_open;
                continue;
            }
            if (rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_DEVICE_REMOVED) {
                t->logged_in = false;
                tok_token_forget_login_locked(t);
            }
            r = tok_status_from_rv(rv);
            break;
        }
        if (pthread_cond_timedwait(&t->cond, &t->lock, &deadline) == ETIMEDOUT) {
            r = TOK_ERR_BUSY;
            break;
        }
    }
    pthread_mutex_unlock(&t->lock);
    if (r == TOK_OK)
        *ret = s;
    return r;
}

void tok_session_put(tok_token_t *t, CK_SESSION_HANDLE s)
{
    pthread_mutex_lock(&t->lock);
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
