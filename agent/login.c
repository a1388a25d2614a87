/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Logging in to tokens with the configured PIN source, retry-safely: a PIN the
 * token rejected is never offered again while its source is unchanged, and a
 * stored PIN is never tried when the token is at its final try. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

#include "agent.h"

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

agent_token_state_t *agent_token_state(agent_t *a, const tok_token_t *t)
{
    const char *uri = tok_token_uri(t);
    agent_token_state_t *n;

    for (size_t i = 0; i < a->n_token_states; i++)
        if (strcmp(a->token_states[i].token_uri, uri) == 0)
            return &a->token_states[i];
    n = realloc(a->token_states, (a->n_token_states + 1) * sizeof(*n));
    if (!n)
        return NULL;
    a->token_states = n;
    n = &a->token_states[a->n_token_states];
    memset(n, 0, sizeof(*n));
    n->token_uri = strdup(uri);
    if (!n->token_uri)
        return NULL;
    a->n_token_states++;
    return n;
}

void agent_token_states_free(agent_t *a)
{
    for (size_t i = 0; i < a->n_token_states; i++)
        free(a->token_states[i].token_uri);
    free(a->token_states);
    a->token_states = NULL;
    a->n_token_states = 0;
}

static bool same_pin_id(const agent_pin_id_t *x, const agent_pin_id_t *y)
{
    return x->dev == y->dev && x->ino == y->ino && x->size == y->size && x->mtime_ns == y->mtime_ns;
}

static void set_msg(char **errmsg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_msg(char **errmsg, const char *fmt, ...)
{
    va_list ap;

    if (!errmsg)
        return;
    free(*errmsg);
    va_start(ap, fmt);
    if (vasprintf(errmsg, fmt, ap) < 0)
        *errmsg = NULL;
    va_end(ap);
}

static int login_token_locked(agent_t *a, tok_token_t *t, char **errmsg)
{
    const char *label = tok_token_label(t);
    const agent_pin_source_t *src = agent_pin_source_for_locked(a, t);
    agent_token_state_t *state = agent_token_state(a, t);
    agent_secret_t pin = {0};
    agent_pin_id_t id = {0};
    char *why = NULL;
    int r;

    if (!state)
        return TOK_ERR_NO_MEMORY;
    if (tok_token_logged_in(t))
        return TOK_OK;
    tok_token_refresh_info(t);
    if (tok_token_flags(t) & CKF_USER_PIN_LOCKED) {
        set_msg(errmsg, "the user PIN of token '%s' is locked; unblock it with the SO PIN", label);
        return TOK_ERR_PIN_LOCKED;
    }
    if (tok_token_has_pin_pad(t)) {
        agent_info("token '%s': enter the PIN on the reader's PIN pad", label);
        r = tok_token_login(t, NULL, 0);
        goto done;
    }
    if (src->kind == AGENT_PIN_NONE) {
        set_msg(errmsg, "token '%s' needs a PIN and no PIN source is configured (--pin-source or "
                        "pin-source in agent.conf)",
                label);
        return TOK_ERR_NOT_LOGGED_IN;
    }
    if (tok_token_flags(t) & CKF_USER_PIN_FINAL_TRY) {
        set_msg(errmsg, "token '%s' is at its final PIN try; p11agentd will not risk a stored PIN "
                        "(log in by hand, e.g. pkcs11-tool --login, to reset the counter)",
                label);
        return TOK_ERR_NOT_LOGGED_IN;
    }
    r = agent_pin_source_read(src, &pin, &id, &why);
    if (r < 0) {
        set_msg(errmsg, "token '%s' needs a PIN: %s", label, why ? why : "PIN source unreadable");
        free(why);
        return TOK_ERR_NOT_LOGGED_IN;
    }
    if (state->pin_rejected && same_pin_id(&state->rejected, &id)) {
        agent_secret_free(&pin);
        set_msg(errmsg, "token '%s' rejected the PIN in %s; not retrying it until the file "
                        "changes",
                label, src->path);
        return TOK_ERR_PIN_INCORRECT;
    }
    agent_debug(AGENT_DBG_PIN, "logging in to token '%s' with the PIN from %s", label,
                src->path);
    r = tok_token_login(t, pin.buf, pin.len);
    agent_secret_free(&pin);
    if (r == TOK_ERR_PIN_INCORRECT) {
        state->pin_rejected = true;
        state->rejected = id;
        tok_token_refresh_info(t);
        agent_err("token '%s': PIN incorrect (from %s); it will not be tried again until the "
                  "file changes%s",
                  label, src->path,
                  (tok_token_flags(t) & CKF_USER_PIN_FINAL_TRY) ? "; the token is now at its "
                                                                   "final try"
                                                                 : "");
        set_msg(errmsg, "token '%s' rejected the PIN from %s (PIN incorrect); not retrying",
                label, src->path);
        return r;
    }
    state->pin_rejected = false;
done:
    if (r == TOK_OK) {
        agent_info("logged in to token '%s'", label);
    } else {
        agent_err("login to token '%s' failed: %s", label, tok_strerror(r));
        set_msg(errmsg, "login to token '%s' failed: %s", label, tok_strerror(r));
    }
    return r;
}

int agent_login_token(agent_t *a, tok_token_t *t, char **errmsg)
{
    int r;

    /* One login at a time, whatever the number of clients waiting: those
     * that queued behind a successful login find the token logged in. */
    pthread_mutex_lock(&a->login_lock);
    r = login_token_locked(a, t, errmsg);
    pthread_mutex_unlock(&a->login_lock);
    return r;
}

void agent_login_all_locked(agent_t *a)
{
    bool rescan = false;
    int r;

    for (size_t i = 0; i < tok_ctx_n_tokens(a->tok); i++) {
        tok_token_t *t = tok_ctx_token(a->tok, i);
        char *msg = NULL;

        if (!tok_token_login_required(t) || tok_token_logged_in(t))
            continue;
        r = agent_login_token(a, t, &msg);
        if (r == TOK_OK)
            rescan = true;
        else if (msg && (r == TOK_ERR_NOT_LOGGED_IN || r == TOK_ERR_PIN_LOCKED))
            agent_warn("%s", msg); /* no attempt was made, so nothing was logged yet */
        free(msg);
    }
    if (rescan && tok_ctx_scan(a->tok) != TOK_OK)
        agent_warn("rescanning tokens after login failed");
}
