/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* One handler per method of org.p11agent.Agent1, behind one dispatch table. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "config.h"
#include "introspect.h"

static DBusMessage *error_reply(DBusMessage *msg, bus_err_t err, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static DBusMessage *error_reply(DBusMessage *msg, bus_err_t err, const char *fmt, ...)
{
    char text[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    return dbus_message_new_error(msg, bus_err_name(err), text);
}

static uint32_t key_flags(const tok_key_t *k)
{
    uint32_t f = 0;

    if (k->mechs & TOK_MECH_RSA_PKCS)
        f |= BUS_KEY_CAN_RSA_PKCS1;
    if (k->mechs & TOK_MECH_RSA_PSS)
        f |= BUS_KEY_CAN_RSA_PSS;
    if (k->mechs & TOK_MECH_ECDSA)
        f |= BUS_KEY_CAN_ECDSA;
    if (k->mechs & TOK_MECH_EDDSA)
        f |= BUS_KEY_CAN_EDDSA;
    if (tok_token_logged_in(k->token))
        f |= BUS_KEY_LOGGED_IN;
    if (k->always_auth)
        f |= BUS_KEY_ALWAYS_AUTH;
    return f;
}

/* A view of a token key as a protocol record; pointers are borrowed. */
static void key_to_info(const tok_key_t *k, bus_key_info_t *ret)
{
    static const bus_key_type_t types[] = {
        [TOK_KEY_RSA] = BUS_KEY_RSA,
        [TOK_KEY_EC] = BUS_KEY_EC,
        [TOK_KEY_ED25519] = BUS_KEY_ED25519,
        [TOK_KEY_ED448] = BUS_KEY_ED448,
    };

    *ret = (bus_key_info_t){
        .uri = k->uri,
        .type = (size_t)k->type < sizeof(types) / sizeof(types[0]) ? types[k->type]
                                                                    : BUS_KEY_UNKNOWN,
        .bits = k->bits,
        .group = (char *)k->group,
        .label = k->label,
        .token = (char *)tok_token_label(k->token),
        .spki = k->spki,
        .spki_len = k->spki_len,
        .cert = k->cert,
        .cert_len = k->cert_len,
        .flags = key_flags(k),
    };
}

static DBusMessage *keys_reply(DBusMessage *msg, const tok_key_t *const *keys, size_t n)
{
    bus_key_info_t *infos = calloc(n ? n : 1, sizeof(*infos));
    DBusMessage *reply = NULL;

    if (!infos)
        return NULL;
    for (size_t i = 0; i < n; i++)
        key_to_info(keys[i], &infos[i]);
    reply = dbus_message_new_method_return(msg);
    if (reply && bus_append_keys(reply, infos, n) < 0) {
        dbus_message_unref(reply);
        reply = NULL;
    }
    free(infos); /* borrowed contents */
    return reply;
}

static DBusMessage *agent_handle_list_keys(agent_client_t *c, DBusConnection *conn, DBusMessage *msg)
{
    agent_t *a = c->agent;

    const tok_key_t **keys;
    DBusMessage *reply = NULL;
    size_t n;

    pthread_rwlock_rdlock(&a->keys_lock);
    n = tok_ctx_n_keys(a->tok);
    keys = calloc(n ? n : 1, sizeof(*keys));
    if (keys) {
        for (size_t i = 0; i < n; i++)
            keys[i] = tok_ctx_key(a->tok, i);
        reply = keys_reply(msg, keys, n);
    }
    pthread_rwlock_unlock(&a->keys_lock);
    free(keys);
    return reply;
}

static DBusMessage *agent_handle_find_keys(agent_client_t *c, DBusConnection *conn, DBusMessage *msg)
{
    agent_t *a = c->agent;

    const char *uri;
    const tok_key_t **keys = NULL;
    DBusMessage *reply;
    size_t n = 0;
    int r;

    if (!dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &uri, DBUS_TYPE_INVALID))
        return error_reply(msg, BUS_ERR_INVALID_ARGS, "FindKeys takes one string: a pkcs11: URI");
    pthread_rwlock_rdlock(&a->keys_lock);
    r = tok_find_keys(a->tok, uri, &keys, &n);
    if (r == TOK_ERR_ARGS)
        reply = error_reply(msg, BUS_ERR_INVALID_ARGS, "'%s' is not a valid PKCS#11 URI", uri);
    else if (r < 0)
        reply = error_reply(msg, agent_err_from_tok(r), "looking up '%s' failed: %s", uri,
                            tok_strerror(r));
    else
        reply = keys_reply(msg, keys, n);
    pthread_rwlock_unlock(&a->keys_lock);
    free(keys);
    return reply;
}

/* Finds the one key a Sign names: its canonical URI (the fast path: that is
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

/* Signs with the key the request names; keys_lock is held for reading. */
static DBusMessage *sign_locked(agent_client_t *c, DBusMessage *msg, const char *uri,
                                const bus_sign_params_t *bp, const uint8_t *data, size_t len)
{
    agent_t *a = c->agent;
    const char *why_denied = NULL;
    ssize_t idx;
    tok_sign_params_t tp = {0};
    const tok_key_t *key;
    DBusMessage *reply = NULL;
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    char *why = NULL;
    int64_t t0 = now_us();
    int r, h, m;

    idx = lookup_key_locked(a, msg, uri, &reply);
    if (idx < 0) {
        agent_audit(a, c, "sign", uri, bus_sig_alg_name(bp->alg), bp->hash, "no such key", 0);
        return reply;
    }
    key = tok_ctx_key(a->tok, (size_t)idx);
    if (!agent_key_allowed_locked(a, (size_t)idx, c, &why_denied)) {
        agent_audit(a, c, "sign", key->uri, bus_sig_alg_name(bp->alg), bp->hash, "denied", 0);
        return error_reply(msg, BUS_ERR_DENIED,
                           "this client (uid %ld, %s) may not use key '%s': %s", (long)c->uid,
                           c->exe[0] ? c->exe : "unknown program", key->uri, why_denied);
    }
    h = tok_hash_from_name(bp->hash);
    m = tok_hash_from_name(bp->mgf1_hash);
    if (h < 0 || m < 0)
        return error_reply(msg, BUS_ERR_UNSUPPORTED, "hash '%s' is not supported for key '%s'",
                           h < 0 ? bp->hash : bp->mgf1_hash, key->uri);
    tp.alg = (tok_sig_alg_t)bp->alg;
    tp.hash = (tok_hash_t)h;
    tp.mgf1_hash = m ? (tok_hash_t)m : (tok_hash_t)h;
    tp.salt_len = bp->salt_len;

    r = tok_sign(key, &tp, data, len, &sig, &sig_len, &why);
    if (r == TOK_ERR_NOT_LOGGED_IN) {
        free(why);
        why = NULL;
        r = agent_login_token(a, key->token, &why);
        if (r == TOK_OK)
            r = tok_sign(key, &tp, data, len, &sig, &sig_len, &why);
    }
    if (r < 0) {
        agent_audit(a, c, "sign", key->uri, bus_sig_alg_name(bp->alg), bp->hash,
                    why ? why : tok_strerror(r), now_us() - t0);
        reply = error_reply(msg, agent_err_from_tok(r),
                            "signing with key '%s' on token '%s' failed: %s", key->uri,
                            tok_token_label(key->token), why ? why : tok_strerror(r));
        free(why);
        return reply;
    }
    agent_audit(a, c, "sign", key->uri, bus_sig_alg_name(bp->alg), bp->hash, "ok",
                now_us() - t0);
    reply = dbus_message_new_method_return(msg);
    if (reply && !dbus_message_append_args(reply, DBUS_TYPE_ARRAY, DBUS_TYPE_BYTE, &sig,
                                           (int)sig_len, DBUS_TYPE_INVALID)) {
        dbus_message_unref(reply);
        reply = NULL;
    }
    free(sig);
    return reply;
}

static DBusMessage *agent_handle_sign(agent_client_t *c, DBusConnection *conn, DBusMessage *msg)
{
    agent_t *a = c->agent;

    const char *uri;
    const uint8_t *data;
    size_t len;
    bus_sign_params_t bp;
    DBusMessage *reply;
    int r;

    r = bus_parse_sign_call(msg, &uri, &bp, &data, &len);
    if (r == BUS_ERR_UNSUPPORTED)
        reply = error_reply(msg, r, "unknown signature algorithm (expected rsa-pkcs1, rsa-pss, "
                                    "ecdsa or eddsa)");
    else if (r < 0)
        reply = error_reply(msg, r, "malformed Sign request (expected key URI, algorithm, "
                                    "parameters and data)");
    else {
        pthread_rwlock_rdlock(&a->keys_lock);
        reply = sign_locked(c, msg, uri, &bp, data, len);
        pthread_rwlock_unlock(&a->keys_lock);
    }
    if (reply && dbus_message_get_type(reply) == DBUS_MESSAGE_TYPE_METHOD_RETURN)
        atomic_fetch_add(&a->signatures, 1);
    else
        atomic_fetch_add(&a->sign_failures, 1);
    return reply;
}

static DBusMessage *agent_handle_status(agent_client_t *c, DBusConnection *conn, DBusMessage *msg)
{
    agent_t *a = c->agent;

    bus_status_t s = {
        .version = (char *)P11AGENT_VERSION,
        .pid = (uint32_t)getpid(),
        .signatures = atomic_load(&a->signatures),
        .sign_failures = atomic_load(&a->sign_failures),
    };
    DBusMessage *reply = dbus_message_new_method_return(msg);

    pthread_rwlock_rdlock(&a->keys_lock);
    s.tokens = (uint32_t)tok_ctx_n_tokens(a->tok);
    s.keys = (uint32_t)tok_ctx_n_keys(a->tok);
    pthread_rwlock_unlock(&a->keys_lock);
    pthread_mutex_lock(&a->clients_lock);
    s.clients = a->n_clients;
    pthread_mutex_unlock(&a->clients_lock);

    if (reply && bus_append_status(reply, &s) < 0) {
        dbus_message_unref(reply);
        reply = NULL;
    }
    return reply;
}

static DBusMessage *agent_handle_introspect(agent_client_t *c, DBusConnection *conn,
                                           DBusMessage *msg)
{
    const char *xml = bus_introspect_xml;
    DBusMessage *reply = dbus_message_new_method_return(msg);

    if (reply && !dbus_message_append_args(reply, DBUS_TYPE_STRING, &xml, DBUS_TYPE_INVALID)) {
        dbus_message_unref(reply);
        reply = NULL;
    }
    return reply;
}

typedef DBusMessage *(*agent_handler_t)(agent_client_t *c, DBusConnection *conn,
                                         DBusMessage *msg);

static const struct {
    const char *iface;
    const char *member;
    const char *signature;
    agent_handler_t fn;
} methods[] = {
    {BUS_IFACE, "ListKeys", "", agent_handle_list_keys},
    {BUS_IFACE, "FindKeys", "s", agent_handle_find_keys},
    {BUS_IFACE, "Sign", "ssa{sv}ay", agent_handle_sign},
    {BUS_IFACE, "Status", "", agent_handle_status},
    {DBUS_INTERFACE_INTROSPECTABLE, "Introspect", "", agent_handle_introspect},
};

DBusHandlerResult agent_dispatch(agent_client_t *c, DBusConnection *conn, DBusMessage *msg)
{
    const char *iface = dbus_message_get_interface(msg);
    const char *member = dbus_message_get_member(msg);
    DBusMessage *reply = NULL;

    if (dbus_message_get_type(msg) != DBUS_MESSAGE_TYPE_METHOD_CALL || !member)
        return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (strcmp(methods[i].member, member) != 0 || (iface && strcmp(methods[i].iface, iface)))
            continue;
        if (strcmp(dbus_message_get_signature(msg), methods[i].signature) != 0)
            reply = error_reply(msg, BUS_ERR_INVALID_ARGS, "%s takes arguments '%s', not '%s'",
                                member, methods[i].signature, dbus_message_get_signature(msg));
        else
            reply = methods[i].fn(c, conn, msg);
        if (!reply)
            return DBUS_HANDLER_RESULT_NEED_MEMORY;
        if (!dbus_message_get_no_reply(msg))
            dbus_connection_send(conn, reply, NULL);
        dbus_message_unref(reply);
        return DBUS_HANDLER_RESULT_HANDLED;
    }
    return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
}
