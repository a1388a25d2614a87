/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Token insertion and removal: the main loop polls the slots (a cheap
 * C_GetSlotList + C_GetTokenInfo) and rescans when the set of tokens
 * changed. A removed token's cached PIN is wiped; a re-inserted one is found
 * again by its URI (serial, label) and its keys by CKA_ID, so key handles the
 * provider holds keep working after a new login. Desktop programs hear
 * about it on the session bus: TokenInserted, TokenRemoved, KeysChanged.
 */
#include <stdlib.h>
#include <string.h>

#include "agent.h"

void agent_emit_signal(agent_t *a, const char *name, const char *arg1, const char *arg2)
{
    DBusMessage *sig;
    DBusMessageIter it;

    if (!a->session_bus)
        return;
    sig = dbus_message_new_signal(BUS_PATH, BUS_IFACE, name);
    if (!sig)
        return;
    /* token labels come from the module: any bytes, made valid UTF-8 */
    dbus_message_iter_init_append(sig, &it);
    if ((arg1 && !bus_append_string(&it, arg1)) || (arg2 && !bus_append_string(&it, arg2))) {
        dbus_message_unref(sig);
        return;
    }
    dbus_connection_send(a->session_bus, sig, NULL);
    dbus_message_unref(sig);
}

typedef struct token_list {
    char **uris;
    char **labels;
    size_t n;
} token_list_t;

static void token_list_clear(token_list_t *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->uris[i]);
        free(l->labels[i]);
    }
    free(l->uris);
    free(l->labels);
    memset(l, 0, sizeof(*l));
}

static void token_list_read_locked(agent_t *a, token_list_t *l)
{
    size_t n = tok_ctx_n_tokens(a->tok);

    l->uris = calloc(n + 1, sizeof(char *));
    l->labels = calloc(n + 1, sizeof(char *));
    if (!l->uris || !l->labels)
        return;
    for (size_t i = 0; i < n; i++) {
        tok_token_t *t = tok_ctx_token(a->tok, i);

        l->uris[l->n] = strdup(tok_token_uri(t));
        l->labels[l->n] = strdup(tok_token_label(t));
        if (l->uris[l->n] && l->labels[l->n])
            l->n++;
    }
}

static bool token_list_has(const token_list_t *l, const char *uri)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->uris[i], uri) == 0)
            return true;
    return false;
}

void agent_hotplug_tick(agent_t *a)
{
    token_list_t before = {0}, after = {0};
    int64_t now = agent_now_ms();
    bool changed = false;
    int r;

    if (now - a->last_poll_ms < (int64_t)a->poll_interval_s * 1000)
        return;
    a->last_poll_ms = now;
    pthread_rwlock_rdlock(&a->keys_lock);
    /* sessions a burst of signatures opened go back to the token */
    tok_ctx_trim_sessions(a->tok, AGENT_SESSION_IDLE_S);
    r = tok_ctx_tokens_changed(a->tok, &changed);
    if (r == TOK_OK && changed)
        token_list_read_locked(a, &before);
    pthread_rwlock_unlock(&a->keys_lock);
    if (r != TOK_OK || !changed)
        return;

    pthread_rwlock_wrlock(&a->keys_lock);
    r = tok_ctx_scan(a->tok);
    if (r != TOK_OK)
        agent_warn("rescanning tokens failed: %s", tok_strerror(r));
    agent_policy_update_locked(a);
    token_list_read_locked(a, &after);
    pthread_rwlock_unlock(&a->keys_lock);

    for (size_t i = 0; i < before.n; i++) {
        char label[AGENT_LABEL_ESC_MAX];

        if (token_list_has(&after, before.uris[i]))
            continue;
        /* labels come from the module: escaped in the log */
        agent_info("token '%s' removed: its login and cached PIN are gone",
                   agent_esc(label, sizeof(label), before.labels[i]));
        agent_lock_tokens_gone(a, before.uris[i]);
        agent_emit_signal(a, "TokenRemoved", before.uris[i], before.labels[i]);
    }
    for (size_t i = 0; i < after.n; i++) {
        char label[AGENT_LABEL_ESC_MAX];

        if (token_list_has(&before, after.uris[i]))
            continue;
        agent_info("token '%s' inserted", agent_esc(label, sizeof(label), after.labels[i]));
        agent_emit_signal(a, "TokenInserted", after.uris[i], after.labels[i]);
    }
    agent_emit_signal(a, "KeysChanged", NULL, NULL);
    token_list_clear(&before);
    token_list_clear(&after);
    agent_login_all(a);
}
