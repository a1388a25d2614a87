/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* One handler per method of org.p11agent.Agent1, behind one dispatch table. */
#include <errno.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "agent.h"
#include "config.h"
#include "introspect.h"
#include "text.h"
#include "pinmax.h"

#define error_reply agent_error_reply

/* The longest error text a client gets: a URI or two and a reason fit well
 * (keyuse.c says the same). */
#define ERROR_TEXT_MAX 2048

/* An error reply whose text embeds client and module strings (URIs, labels,
 * paths: any bytes). Formatted without a fixed cut, then made valid UTF-8 and
 * cut at a character boundary: libdbus aborts the whole agent on a string
 * that is not UTF-8. NULL only when out of memory. */
DBusMessage *agent_error_reply(DBusMessage *msg, bus_err_t err, const char *fmt, ...)
{
    DBusMessage *reply = NULL;
    char *text = NULL, *safe = NULL;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&text, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    safe = text_dbus_safe(text, ERROR_TEXT_MAX);
    if (safe)
        reply = dbus_message_new_error(msg, bus_err_name(err), safe);
    free(safe);
    free(text);
    return reply;
}

/* Handlers return 0 with *ret_reply set, or -ENOMEM when no reply could be
 * built (libdbus then dispatches the message again later). */
static int reply_out(DBusMessage *reply, DBusMessage **ret_reply)
{
    if (!reply)
        return -ENOMEM;
    *ret_reply = reply;
    return 0;
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

static int agent_handle_list_keys(agent_client_t *c, DBusConnection *conn, DBusMessage *msg,
                                  DBusMessage **ret_reply)
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
    return reply_out(reply, ret_reply);
}

static int agent_handle_find_keys(agent_client_t *c, DBusConnection *conn, DBusMessage *msg,
                                  DBusMessage **ret_reply)
{
    agent_t *a = c->agent;

    const char *uri;
    const tok_key_t **keys = NULL;
    DBusMessage *reply;
    size_t n = 0;
    int r;

    if (!dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &uri, DBUS_TYPE_INVALID))
        return reply_out(error_reply(msg, BUS_ERR_INVALID_ARGS,
                                     "FindKeys takes one string: a pkcs11: URI"),
                         ret_reply);
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
    return reply_out(reply, ret_reply);
}

typedef struct sign_use {
    tok_sign_params_t tp;
    const uint8_t *data;
    size_t len;
} sign_use_t;

static int run_sign(void *arg, const tok_key_t *key, const tok_auth_t *auth, uint8_t **ret,
                    size_t *ret_len, char **why)
{
    sign_use_t *s = arg;

    return tok_sign_auth(key, &s->tp, s->data, s->len, auth, ret, ret_len, why);
}

void agent_sign(agent_client_t *c, const char *uri, const bus_sign_params_t *bp,
                const uint8_t *data, size_t len, agent_use_result_t *res)
{
    agent_t *a = c->agent;
    sign_use_t su = {.data = data, .len = len};
    agent_key_use_t u = {.event = "sign", .verb = "signing", .run = run_sign, .arg = &su,
                         .ok_count = &a->signatures, .fail_count = &a->sign_failures};
    int h = tok_hash_from_name(bp->hash), m = tok_hash_from_name(bp->mgf1_hash);

    if (h < 0 || m < 0) {
        atomic_fetch_add(&a->sign_failures, 1);
        *res = (agent_use_result_t){0};
        agent_use_result_fail(res, BUS_ERR_UNSUPPORTED, "hash '%s' is not supported for key '%s'",
                              h < 0 ? bp->hash : bp->mgf1_hash, uri);
        return;
    }
    su.tp.alg = (tok_sig_alg_t)bp->alg;
    su.tp.hash = (tok_hash_t)h;
    su.tp.mgf1_hash = m ? (tok_hash_t)m : (tok_hash_t)h;
    su.tp.salt_len = bp->salt_len;
    u.alg = bus_sig_alg_name(bp->alg);
    u.hash = bp->hash;
    agent_use_key(c, uri, &u, res);
}

int agent_use_reply(agent_client_t *c, DBusMessage *msg, agent_use_result_t *res,
                    DBusMessage **ret_reply)
{
    DBusMessage *reply = NULL;

    if (res->status == 0) {
        const uint8_t *out = res->out;

        reply = dbus_message_new_method_return(msg);
        if (reply && !dbus_message_append_args(reply, DBUS_TYPE_ARRAY, DBUS_TYPE_BYTE, &out,
                                               (int)res->out_len, DBUS_TYPE_INVALID)) {
            dbus_message_unref(reply);
            reply = NULL;
        }
        if (reply) {
            /* the record is written after the reply is sent (agent_dispatch) */
            c->pending_audit = res->audit;
            c->wipe_reply = res->secret;
        } else {
            /* done, but the answer cannot be built: an error, not a missing
             * reply that libdbus would dispatch again */
            agent_err("out of memory replying with the result of a key");
            res->status = BUS_ERR_NO_MEMORY;
        }
    }
    if (res->status != 0)
        reply = dbus_message_new_error(msg, bus_err_name(res->status),
                                       agent_use_result_text(res));
    agent_use_result_clear(res);
    return reply_out(reply, ret_reply);
}

static int agent_handle_sign(agent_client_t *c, DBusConnection *conn, DBusMessage *msg,
                             DBusMessage **ret_reply)
{
    agent_t *a = c->agent;
    const char *uri;
    bus_sign_params_t bp;
    const uint8_t *data;
    size_t len;
    DBusMessage *reply = NULL;
    agent_use_result_t res;
    int r;

    (void)conn;
    r = bus_parse_sign_call(msg, &uri, &bp, &data, &len);
    if (r == BUS_ERR_UNSUPPORTED)
        reply = error_reply(msg, r, "unknown signature algorithm (expected rsa-pkcs1, rsa-pss, "
                                    "ecdsa or eddsa)");
    else if (r < 0)
        reply = error_reply(msg, r, "malformed Sign request (expected key URI, algorithm, "
                                    "parameters and data)");
    if (r < 0) {
        atomic_fetch_add(&a->sign_failures, 1);
        return reply_out(reply, ret_reply);
    }
    agent_sign(c, uri, &bp, data, len, &res);
    return agent_use_reply(c, msg, &res, ret_reply);
}

/* OpenChannel() -> h: the signing channel of this connection (channel.c). */
static int agent_handle_open_channel(agent_client_t *c, DBusConnection *conn, DBusMessage *msg,
                                     DBusMessage **ret_reply)
{
    DBusMessage *reply = NULL;
    char *why = NULL;
    int fd = -1, r;

    if (c->via_session_bus || !dbus_connection_can_send_type(conn, DBUS_TYPE_UNIX_FD))
        return reply_out(error_reply(msg, BUS_ERR_UNSUPPORTED,
                                     "signing channels are offered only on the agent's socket, "
                                     "to clients that accept file descriptors"),
                         ret_reply);
    r = agent_channel_open(c, &fd, &why);
    if (r < 0) {
        reply = error_reply(msg, r == -ENOMEM ? BUS_ERR_NO_MEMORY : BUS_ERR_FAILED,
                            "cannot open a signing channel: %s", why ? why : strerror(-r));
        free(why);
        return reply_out(reply, ret_reply);
    }
    reply = dbus_message_new_method_return(msg);
    if (reply && !dbus_message_append_args(reply, DBUS_TYPE_UNIX_FD, &fd, DBUS_TYPE_INVALID)) {
        dbus_message_unref(reply);
        reply = NULL;
    }
    /* the reply holds its own copy of the fd */
    close(fd);
    if (!reply)
        agent_channel_close(c);
    return reply_out(reply, ret_reply);
}

static int agent_handle_list_tokens(agent_client_t *c, DBusConnection *conn, DBusMessage *msg,
                                    DBusMessage **ret_reply)
{
    agent_t *a = c->agent;
    bus_token_info_t *infos;
    DBusMessage *reply = NULL;
    size_t n;

    pthread_rwlock_rdlock(&a->keys_lock);
    n = tok_ctx_n_tokens(a->tok);
    infos = calloc(n ? n : 1, sizeof(*infos));
    for (size_t i = 0; infos && i < n; i++) {
        tok_token_t *t = tok_ctx_token(a->tok, i);
        agent_token_state_t *st = agent_token_state_find(a, tok_token_uri(t));
        unsigned long f = tok_token_flags(t);
        uint32_t flags = 0, keys = 0;

        for (size_t k = 0; k < tok_ctx_n_keys(a->tok); k++)
            keys += tok_ctx_key(a->tok, k)->token == t;
        flags |= tok_token_logged_in(t) ? BUS_TOKEN_LOGGED_IN : 0;
        flags |= tok_token_has_pin_pad(t) ? BUS_TOKEN_PIN_PAD : 0;
        flags |= tok_token_login_required(t) ? BUS_TOKEN_LOGIN_REQUIRED : 0;
        flags |= (f & CKF_USER_PIN_COUNT_LOW) ? BUS_TOKEN_PIN_COUNT_LOW : 0;
        flags |= (f & CKF_USER_PIN_FINAL_TRY) ? BUS_TOKEN_PIN_FINAL_TRY : 0;
        flags |= (f & CKF_USER_PIN_LOCKED) ? BUS_TOKEN_PIN_LOCKED : 0;
        flags |= st && atomic_load(&st->has_cached) ? BUS_TOKEN_PIN_CACHED : 0;
        infos[i] = (bus_token_info_t){
            .uri = (char *)tok_token_uri(t),
            .label = (char *)tok_token_label(t),
            .model = "",
            .flags = flags,
            .expires = tok_token_logged_in(t) ? agent_token_expires(a, tok_token_uri(t)) : 0,
            .keys = keys,
        };
    }
    if (infos) {
        reply = dbus_message_new_method_return(msg);
        if (reply && bus_append_tokens(reply, infos, n) < 0) {
            dbus_message_unref(reply);
            reply = NULL;
        }
    }
    pthread_rwlock_unlock(&a->keys_lock);
    free(infos); /* borrowed contents */
    return reply_out(reply, ret_reply);
}

/* The token a URI names: exactly one, or with "" the only one that needs a
 * login. The URI is copied out (the token may go away once unlocked). */
static DBusMessage *pick_token(agent_t *a, DBusMessage *msg, const char *uri, char **ret_uri)
{
    tok_token_t **toks = NULL;
    DBusMessage *err = NULL;
    size_t n = 0;
    int r;

    pthread_rwlock_rdlock(&a->keys_lock);
    r = tok_find_tokens(a->tok, uri[0] ? uri : "pkcs11:", &toks, &n);
    if (r < 0) {
        err = error_reply(msg, BUS_ERR_INVALID_ARGS, "'%s' is not a valid PKCS#11 URI", uri);
    } else if (!uri[0]) {
        size_t need = 0, which = 0;

        for (size_t i = 0; i < n; i++)
            if (tok_token_login_required(toks[i]) && !tok_token_logged_in(toks[i])) {
                need++;
                which = i;
            }
        if (need == 1)
            *ret_uri = strdup(tok_token_uri(toks[which]));
        else if (need)
            err = error_reply(msg, BUS_ERR_INVALID_ARGS,
                              "%zu tokens need a PIN: name one (p11agentctl tokens)", need);
        else
            err = error_reply(msg, BUS_ERR_INVALID_ARGS, "no token needs a PIN");
    } else if (n != 1) {
        err = error_reply(msg, n ? BUS_ERR_INVALID_ARGS : BUS_ERR_NO_SUCH_KEY,
                          "'%s' matches %zu tokens; name exactly one (p11agentctl tokens)", uri,
                          n);
    } else {
        *ret_uri = strdup(tok_token_uri(toks[0]));
    }
    pthread_rwlock_unlock(&a->keys_lock);
    free(toks);
    return err;
}

/* Lock and Unlock change what every client of the agent can do: in system
 * mode only the agent's user, root and allow-unlock-users/-groups may. */
static DBusMessage *lock_unlock_denied(agent_client_t *c, DBusMessage *msg, const char *what)
{
    agent_audit(c->agent, c, what, NULL, NULL, NULL, "denied", 0);
    agent_warn("refused %s by uid %ld (pid %ld): not the agent's user, root or in "
               "allow-unlock-users/allow-unlock-groups",
               what, (long)c->uid, (long)c->pid);
    return error_reply(msg, BUS_ERR_DENIED,
                       "uid %ld may not %s tokens of this agent: only its own user, root and "
                       "the users and groups in allow-unlock-users/allow-unlock-groups "
                       "(agent.conf) may",
                       (long)c->uid, what);
}

/* Unlock(s token, ay pin) and UnlockWithOptions(s token, ay pin, a{sv}
 * options). The PIN bytes live in msg's body: they are wiped there on every
 * path once the request is read, so the freed message does not hold them. */
static int agent_handle_unlock(agent_client_t *c, DBusConnection *conn, DBusMessage *msg,
                               DBusMessage **ret_reply)
{
    agent_t *a = c->agent;
    DBusMessageIter it, sub;
    const char *uri = "", *pin = NULL;
    char *token_uri = NULL, *why = NULL;
    DBusMessage *reply = NULL;
    bool final_try = false;
    dbus_uint32_t lifetime = 0;
    int n = 0, r;

    dbus_message_iter_init(msg, &it);
    dbus_message_iter_get_basic(&it, &uri);
    dbus_message_iter_next(&it);
    dbus_message_iter_recurse(&it, &sub);
    dbus_message_iter_get_fixed_array(&sub, &pin, &n);
    if (!agent_may_lock_unlock(a, c)) {
        reply = lock_unlock_denied(c, msg, "unlock");
        goto out;
    }
    /* options (UnlockWithOptions): "final-try" b, "lifetime" u (seconds);
     * anything else is refused rather than ignored, it may be a safety
     * request this agent lacks */
    if (dbus_message_iter_next(&it)) {
        DBusMessageIter dict;

        dbus_message_iter_recurse(&it, &dict);
        for (; dbus_message_iter_get_arg_type(&dict) == DBUS_TYPE_DICT_ENTRY;
             dbus_message_iter_next(&dict)) {
            DBusMessageIter e, v;
            const char *key;
            dbus_bool_t b = FALSE;

            dbus_message_iter_recurse(&dict, &e);
            dbus_message_iter_get_basic(&e, &key);
            dbus_message_iter_next(&e);
            dbus_message_iter_recurse(&e, &v);
            if (strcmp(key, "final-try") == 0 &&
                dbus_message_iter_get_arg_type(&v) == DBUS_TYPE_BOOLEAN) {
                dbus_message_iter_get_basic(&v, &b);
                final_try = b;
            } else if (strcmp(key, "lifetime") == 0 &&
                       dbus_message_iter_get_arg_type(&v) == DBUS_TYPE_UINT32) {
                dbus_message_iter_get_basic(&v, &lifetime);
            } else {
                reply = error_reply(msg, BUS_ERR_INVALID_ARGS,
                                    "unknown Unlock option (this agent knows \"final-try\" b "
                                    "and \"lifetime\" u)");
                goto out;
            }
        }
    }
    if (n <= 0 || n > PIN_MAX) {
        reply = error_reply(msg, BUS_ERR_INVALID_ARGS, "a PIN is 1 to %d bytes, not %d", PIN_MAX,
                            n);
        goto out;
    }
    reply = pick_token(a, msg, uri, &token_uri);
    if (reply || !token_uri)
        goto out;
    pthread_rwlock_rdlock(&a->keys_lock);
    for (size_t i = 0; i < tok_ctx_n_tokens(a->tok) && !reply; i++) {
        tok_token_t *t = tok_ctx_token(a->tok, i);

        /* the PIN would not even be checked: say so rather than "unlocked" */
        if (strcmp(tok_token_uri(t), token_uri) == 0 && tok_token_logged_in(t))
            reply = error_reply(msg, BUS_ERR_INVALID_ARGS,
                                "token '%s' is already unlocked (lock it first to re-enter "
                                "the PIN)",
                                tok_token_label(t));
    }
    pthread_rwlock_unlock(&a->keys_lock);
    if (reply)
        goto out;
    {
        agent_login_req_t req = {.token_uri = token_uri, .client = c, .pin = pin,
                                 .pin_len = (size_t)n, .final_try_ok = final_try,
                                 .lifetime_s = lifetime};

        r = agent_login(a, &req, &why);
    }
    agent_audit(a, c, "unlock", token_uri, NULL, NULL, r == TOK_OK ? "ok" : tok_strerror(r), 0);
    if (r == TOK_OK) {
        reply = dbus_message_new_method_return(msg);
        agent_rescan(a); /* private keys without public objects appear now */
    } else {
        reply = error_reply(msg, agent_err_from_tok(r), "%s", why ? why : tok_strerror(r));
    }
out:
    if (pin && n > 0)
        explicit_bzero((char *)pin, (size_t)n);
    free(why);
    free(token_uri);
    /* Never NEED_MEMORY here: libdbus would dispatch the message again,
     * now with a wiped PIN. Out of memory: no reply, the client times out. */
    if (!reply)
        reply = error_reply(msg, BUS_ERR_NO_MEMORY, "the agent ran out of memory");
    if (!reply)
        agent_err("out of memory answering Unlock from uid %ld", (long)c->uid);
    *ret_reply = reply;
    return 0;
}

static int agent_handle_lock(agent_client_t *c, DBusConnection *conn, DBusMessage *msg,
                             DBusMessage **ret_reply)
{
    agent_t *a = c->agent;
    const char *uri;
    dbus_bool_t forget;
    dbus_uint32_t count;
    DBusMessage *reply = NULL;
    char *why = NULL;
    int r;

    if (!dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &uri, DBUS_TYPE_BOOLEAN, &forget,
                               DBUS_TYPE_INVALID)) {
        reply = error_reply(msg, BUS_ERR_INVALID_ARGS, "Lock takes a token URI and a boolean");
        goto out;
    }
    if (!agent_may_lock_unlock(a, c)) {
        reply = lock_unlock_denied(c, msg, forget ? "forget" : "lock");
        goto out;
    }
    r = agent_lock_tokens(a, uri, forget, &why);
    if (r < 0) {
        /* TOK_ERR_ARGS: a bad URI; TOK_ERR_NO_MEMORY: some not locked */
        agent_audit(a, c, forget ? "forget" : "lock", uri, NULL, NULL, tok_strerror(r), 0);
        reply = error_reply(msg, agent_err_from_tok(r), "%s", why ? why : tok_strerror(r));
        goto out;
    }
    agent_audit(a, c, forget ? "forget" : "lock", uri, NULL, NULL, "ok", 0);
    count = (dbus_uint32_t)r;
    reply = dbus_message_new_method_return(msg);
    if (reply && !dbus_message_append_args(reply, DBUS_TYPE_UINT32, &count, DBUS_TYPE_INVALID)) {
        dbus_message_unref(reply);
        reply = NULL;
    }
out:
    free(why);
    if (!reply)
        return -ENOMEM;
    *ret_reply = reply;
    return 0;
}

static int agent_handle_status(agent_client_t *c, DBusConnection *conn, DBusMessage *msg,
                               DBusMessage **ret_reply)
{
    agent_t *a = c->agent;

    bus_status_t s = {
        .version = (char *)P11AGENT_VERSION,
        .pid = (uint32_t)getpid(),
        .signatures = atomic_load(&a->signatures),
        .sign_failures = atomic_load(&a->sign_failures),
        .decryptions = atomic_load(&a->decryptions),
        .decrypt_failures = atomic_load(&a->decrypt_failures),
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
    return reply_out(reply, ret_reply);
}

static int agent_handle_introspect(agent_client_t *c, DBusConnection *conn, DBusMessage *msg,
                                   DBusMessage **ret_reply)
{
    const char *xml = bus_introspect_xml;
    DBusMessage *reply = dbus_message_new_method_return(msg);

    if (reply && !dbus_message_append_args(reply, DBUS_TYPE_STRING, &xml, DBUS_TYPE_INVALID)) {
        dbus_message_unref(reply);
        reply = NULL;
    }
    return reply_out(reply, ret_reply);
}

static int agent_handle_register_prompter(agent_client_t *c, DBusConnection *conn,
                                          DBusMessage *msg, DBusMessage **ret_reply)
{
    agent_t *a = c->agent;
    const char *path = NULL, *sender = dbus_message_get_sender(msg);
    unsigned long uid;

    if (!c->via_session_bus || !sender)
        return reply_out(error_reply(msg, BUS_ERR_DENIED, "prompters register on the session bus, "
                                                          "not on the agent's socket"),
                         ret_reply);
    /* only the agent's own user may see PINs typed */
    uid = dbus_bus_get_unix_user(conn, sender, NULL);
    if (uid != (unsigned long)a->owner)
        return reply_out(error_reply(msg, BUS_ERR_DENIED,
                                     "%s (uid %lu) may not be this agent's prompter", sender, uid),
                         ret_reply);
    dbus_message_get_args(msg, NULL, DBUS_TYPE_OBJECT_PATH, &path, DBUS_TYPE_INVALID);
    if (agent_prompter_register(a, sender, path) < 0)
        return -ENOMEM;
    return reply_out(dbus_message_new_method_return(msg), ret_reply);
}

static int agent_handle_unregister_prompter(agent_client_t *c, DBusConnection *conn,
                                            DBusMessage *msg, DBusMessage **ret_reply)
{
    const char *sender = dbus_message_get_sender(msg);

    if (sender)
        agent_prompter_unregister(c->agent, sender);
    return reply_out(dbus_message_new_method_return(msg), ret_reply);
}

/* A handler returns 0 and hands its reply out in *ret_reply (NULL: handled,
 * nothing can be sent), or -ENOMEM to have libdbus dispatch the message
 * again once memory is available. */
/* Stop(): the agent's user and root only (p11agentctl stop). The agent
 * stops like on SIGTERM, once the reply is on its way (agent_dispatch). */
static int agent_handle_stop(agent_client_t *c, DBusConnection *conn, DBusMessage *msg,
                             DBusMessage **ret_reply)
{
    agent_t *a = c->agent;
    DBusMessage *reply;

    if (!c->via_session_bus && c->uid != a->owner && c->uid != 0) {
        agent_audit(a, c, "stop", NULL, NULL, NULL, "denied", 0);
        reply = error_reply(msg, BUS_ERR_DENIED,
                            "uid %ld may not stop this agent: only its user (uid %ld) and root "
                            "may",
                            (long)c->uid, (long)a->owner);
    } else {
        agent_audit(a, c, "stop", NULL, NULL, NULL, "ok", 0);
        reply = dbus_message_new_method_return(msg);
        c->stop_after_reply = reply != NULL;
    }
    if (!reply)
        return -ENOMEM;
    *ret_reply = reply;
    return 0;
}

typedef int (*agent_handler_t)(agent_client_t *c, DBusConnection *conn, DBusMessage *msg,
                               DBusMessage **ret_reply);

static const struct {
    const char *iface;
    const char *member;
    const char *signature;
    agent_handler_t fn;
} methods[] = {
    {BUS_IFACE, "ListKeys", "", agent_handle_list_keys},
    {BUS_IFACE, "FindKeys", "s", agent_handle_find_keys},
    {BUS_IFACE, "Sign", "ssa{sv}ay", agent_handle_sign},
    {BUS_IFACE, "OpenChannel", "", agent_handle_open_channel},
    {BUS_IFACE, "Decrypt", "ssa{sv}ay", agent_handle_decrypt},
    {BUS_IFACE, "Status", "", agent_handle_status},
    {BUS_IFACE, "ListTokens", "", agent_handle_list_tokens},
    {BUS_IFACE, "Unlock", "say", agent_handle_unlock},
    {BUS_IFACE, "UnlockWithOptions", "saya{sv}", agent_handle_unlock},
    {BUS_IFACE, "Lock", "sb", agent_handle_lock},
    {BUS_IFACE, "Stop", "", agent_handle_stop},
    {BUS_IFACE, "RegisterPrompter", "o", agent_handle_register_prompter},
    {BUS_IFACE, "UnregisterPrompter", "", agent_handle_unregister_prompter},
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
        if (strcmp(dbus_message_get_signature(msg), methods[i].signature) != 0) {
            /* a PIN sent with the wrong signature is wiped all the same */
            if (methods[i].fn == agent_handle_unlock)
                bus_wipe_bytes_arg(msg, 1);
            reply = error_reply(msg, BUS_ERR_INVALID_ARGS, "%s takes arguments '%s', not '%s'",
                                member, methods[i].signature, dbus_message_get_signature(msg));
            if (!reply)
                return DBUS_HANDLER_RESULT_NEED_MEMORY;
        } else if (methods[i].fn(c, conn, msg, &reply) < 0) {
            return DBUS_HANDLER_RESULT_NEED_MEMORY;
        }
        if (!reply) {
            agent_err("no reply to %s: out of memory", member);
        } else {
            if (!dbus_message_get_no_reply(msg))
                dbus_connection_send(conn, reply, NULL);
            if (c->wipe_reply) {
                /* a plaintext: written out, then wiped before libdbus frees it */
                c->wipe_reply = false;
                dbus_connection_flush(conn);
                bus_wipe_bytes_arg(reply, 0);
            }
            dbus_message_unref(reply);
        }
        if (c->pending_audit.set)
            agent_audit_use(c->agent, c, &c->pending_audit);
        if (c->stop_after_reply) {
            /* the main loop stops as on SIGTERM (signals go to its signalfd) */
            c->stop_after_reply = false;
            dbus_connection_flush(conn);
            agent_info("stopping: asked by uid %ld (pid %ld)", (long)c->uid, (long)c->pid);
            kill(getpid(), SIGTERM);
        }
        return DBUS_HANDLER_RESULT_HANDLED;
    }
    return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
}
