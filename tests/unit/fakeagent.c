/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The fake agent shared by the unit tests of the agent's clients; see
 * fakeagent.h.
 */
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "fakeagent.h"
#include "loop.h"

pthread_mutex_t fake_lock = PTHREAD_MUTEX_INITIALIZER;
struct fake_state fake;
struct fake_srv srv;

/* The server's own state, touched only by srv_start/srv_stop and the
 * server thread. */
static struct {
    const fake_config_t *cfg;
    agent_loop_t *loop;
    DBusServer *server;
    DBusConnection *conns[64];
    size_t n_conns;
    int ctl[2];     /* tests -> server thread commands */
    int ack[2];     /* server thread -> tests */
    pthread_t thread;
} run;

/* ------------------------------------------------------------------ */
/* Keys and records                                                    */
/* ------------------------------------------------------------------ */

int fake_keys_make(fake_key_t *keys, size_t n, X509 *(*make_cert)(const fake_key_t *k))
{
    for (size_t i = 0; i < n; i++) {
        fake_key_t *k = &keys[i];

        if (k->bits != 0)
            k->soft = EVP_PKEY_Q_keygen(NULL, NULL, k->alg, k->bits);
        else if (k->param != NULL)
            k->soft = EVP_PKEY_Q_keygen(NULL, NULL, k->alg, k->param);
        else
            k->soft = EVP_PKEY_Q_keygen(NULL, NULL, k->alg);
        if (k->soft == NULL)
            return -1;
        k->cert = make_cert(k);
    }
    return 0;
}

void fake_keys_free(fake_key_t *keys, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        EVP_PKEY_free(keys[i].soft);
        X509_free(keys[i].cert);
    }
}

X509 *fake_cert(EVP_PKEY *key, const char *cn, const char *issuer_o, long serial)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    const EVP_MD *md = EVP_PKEY_is_a(key, "ED25519") || EVP_PKEY_is_a(key, "ED448")
                           ? NULL
                           : EVP_sha256();

    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_subject_name(x, name);
    if (issuer_o != NULL)
        X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)issuer_o, -1,
                                   -1, 0);
    X509_set_issuer_name(x, name);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    assert_true(X509_sign(x, key, md) > 0);
    X509_NAME_free(name);
    return x;
}

static uint8_t *dup_bytes(const void *p, size_t n)
{
    uint8_t *d = malloc(n ? n : 1);

    assert_non_null(d);
    memcpy(d, p, n);
    return d;
}

/* The value of a path attribute ("token", "object") of a pkcs11: URI, as
 * written (still percent-encoded); "" if absent. */
static char *uri_attr(const char *uri, const char *name)
{
    size_t nl = strlen(name);
    const char *p = strchr(uri, ':');

    while (p != NULL) {
        p++;
        if (strncmp(p, name, nl) == 0 && p[nl] == '=') {
            p += nl + 1;
            return strndup(p, strcspn(p, ";?"));
        }
        p = strchr(p, ';');
    }
    return strdup("");
}

void fake_record(const fake_key_t *k, const char *uri, bus_key_info_t *r)
{
    unsigned char *der = NULL;
    char group[64] = "";
    int n;

    if (uri == NULL)
        uri = k->uri;
    if (EVP_PKEY_is_a(k->soft, "EC"))
        assert_int_equal(EVP_PKEY_get_utf8_string_param(k->soft, OSSL_PKEY_PARAM_GROUP_NAME,
                                                        group, sizeof(group), NULL),
                         1);
    memset(r, 0, sizeof(*r));
    r->uri = strdup(uri);
    r->type = k->type;
    r->bits = (uint32_t)EVP_PKEY_get_bits(k->soft);
    r->group = strdup(group);
    r->label = uri_attr(uri, "object");
    r->token = uri_attr(uri, "token");
    n = i2d_PUBKEY(k->soft, &der);
    assert_true(n > 0);
    r->spki = dup_bytes(der, (size_t)n);
    r->spki_len = (size_t)n;
    OPENSSL_free(der);
    der = NULL;
    n = i2d_X509(k->cert, &der);
    assert_true(n > 0);
    r->cert = dup_bytes(der, (size_t)n);
    r->cert_len = (size_t)n;
    OPENSSL_free(der);
    r->flags = k->flags;
}

static const fake_key_t *key_by_uri(const char *uri)
{
    for (size_t i = 0; i < run.cfg->n_keys; i++) {
        if (strcmp(uri, run.cfg->keys[i].uri) == 0)
            return &run.cfg->keys[i];
    }
    return NULL;
}

static const fake_standin_t *standin_by_uri(const char *uri)
{
    for (size_t i = 0; i < run.cfg->n_standins; i++) {
        if (strcmp(uri, run.cfg->standins[i].uri) == 0)
            return &run.cfg->standins[i];
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Knobs and counters                                                  */
/* ------------------------------------------------------------------ */

void fake_set(bool present, bool odd, sign_mode_t mode, bus_err_t error)
{
    pthread_mutex_lock(&fake_lock);
    fake.token_present = present;
    fake.odd_records = odd;
    fake.sign_mode = mode;
    fake.error = error;
    pthread_mutex_unlock(&fake_lock);
}

static int fake_read(const int *counter)
{
    int n;

    pthread_mutex_lock(&fake_lock);
    n = *counter;
    pthread_mutex_unlock(&fake_lock);
    return n;
}

int fake_signs(void)
{
    return fake_read(&fake.signs);
}

int fake_finds(void)
{
    return fake_read(&fake.finds);
}

int fake_calls(void)
{
    return fake_read(&fake.calls);
}

int fake_connections(void)
{
    return fake_read(&fake.connections);
}

int fake_refused(void)
{
    return fake_read(&fake.refused);
}

void fake_limit_connections(int n)
{
    pthread_mutex_lock(&fake_lock);
    fake.limited = n >= 0;
    fake.admit_left = n;
    fake.refused = 0;
    pthread_mutex_unlock(&fake_lock);
}

/* ------------------------------------------------------------------ */
/* Methods                                                             */
/* ------------------------------------------------------------------ */

static DBusMessage *fake_find_keys(DBusMessage *msg)
{
    const char *uri = NULL;
    const fake_key_t *k = NULL;
    const fake_standin_t *s;
    bus_key_info_t info;
    DBusMessage *reply;

    pthread_mutex_lock(&fake_lock);
    fake.finds++;
    pthread_mutex_unlock(&fake_lock);
    if (!dbus_message_get_args(msg, NULL, DBUS_TYPE_STRING, &uri, DBUS_TYPE_INVALID))
        return dbus_message_new_error(msg, bus_err_name(BUS_ERR_INVALID_ARGS), "bad args");
    k = key_by_uri(uri);
    if (k == NULL && (s = standin_by_uri(uri)) != NULL)
        k = &run.cfg->keys[s->key];
    if (k == NULL)
        return dbus_message_new_error(msg, bus_err_name(BUS_ERR_NO_SUCH_KEY),
                                      "no key on any token matches");
    fake_record(k, uri, &info);
    reply = dbus_message_new_method_return(msg);
    bus_append_keys(reply, &info, 1);
    bus_key_info_clear(&info);
    return reply;
}

static DBusMessage *fake_list_tokens(DBusMessage *msg)
{
    DBusMessage *reply = dbus_message_new_method_return(msg);
    bool present;

    pthread_mutex_lock(&fake_lock);
    present = fake.token_present && run.cfg->token != NULL;
    fake.lists++;
    pthread_mutex_unlock(&fake_lock);
    assert_int_equal(bus_append_tokens(reply, run.cfg->token, present ? 1 : 0), BUS_OK);
    return reply;
}

static DBusMessage *fake_list_keys(DBusMessage *msg)
{
    bus_key_info_t *recs = calloc(run.cfg->n_keys + FAKE_MAX_ODD, sizeof(*recs));
    size_t n = 0;
    DBusMessage *reply = dbus_message_new_method_return(msg);
    bool present, odd;

    assert_non_null(recs);
    pthread_mutex_lock(&fake_lock);
    present = fake.token_present;
    odd = fake.odd_records;
    pthread_mutex_unlock(&fake_lock);
    if (present) {
        for (size_t i = 0; i < run.cfg->n_keys; i++)
            fake_record(&run.cfg->keys[i], NULL, &recs[n++]);
    }
    if (present && odd && run.cfg->odd_records != NULL) {
        size_t added = run.cfg->odd_records(&recs[n]);

        assert_true(added <= FAKE_MAX_ODD);
        n += added;
    }
    assert_int_equal(bus_append_keys(reply, recs, n), BUS_OK);
    bus_key_info_free_array(NULL, 0);
    for (size_t i = 0; i < n; i++)
        bus_key_info_clear(&recs[i]);
    free(recs);
    return reply;
}

static const char *wire_to_ossl(const char *h)
{
    static const char *const map[][2] = {
        { "sha1", "SHA1" },     { "sha224", "SHA224" }, { "sha256", "SHA256" },
        { "sha384", "SHA384" }, { "sha512", "SHA512" },
    };

    for (size_t i = 0; i < 5; i++) {
        if (strcmp(h, map[i][0]) == 0)
            return map[i][1];
    }
    return NULL;
}

/* A method return holding bytes; counts it in *counter. */
static DBusMessage *reply_bytes(DBusMessage *msg, int *counter, const uint8_t *bytes, size_t n)
{
    DBusMessage *reply;

    pthread_mutex_lock(&fake_lock);
    (*counter)++;
    pthread_mutex_unlock(&fake_lock);
    reply = dbus_message_new_method_return(msg);
    dbus_message_append_args(reply, DBUS_TYPE_ARRAY, DBUS_TYPE_BYTE, &bytes, (int)n,
                             DBUS_TYPE_INVALID);
    return reply;
}

static int fake_soft_sign(const fake_key_t *k, const bus_sign_params_t *p, const uint8_t *data,
                          size_t len, uint8_t *sig, size_t *siglen)
{
    EVP_PKEY_CTX *pctx = NULL;
    int ok = 0;

    if (p->alg == BUS_SIG_EDDSA) {
        EVP_MD_CTX *m = EVP_MD_CTX_new();

        ok = EVP_DigestSignInit_ex(m, NULL, NULL, NULL, NULL, k->soft, NULL) == 1
             && EVP_DigestSign(m, sig, siglen, data, len) == 1;
        EVP_MD_CTX_free(m);
        return ok;
    }
    pctx = EVP_PKEY_CTX_new_from_pkey(NULL, k->soft, NULL);
    ok = pctx != NULL && EVP_PKEY_sign_init(pctx) == 1;
    if (ok && p->hash[0] != '\0')
        ok = EVP_PKEY_CTX_set_signature_md(pctx, EVP_get_digestbyname(wire_to_ossl(p->hash)))
             == 1;
    if (ok && p->alg == BUS_SIG_RSA_PKCS1)
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1;
    if (ok && p->alg == BUS_SIG_RSA_PSS) {
        const char *mgf = p->mgf1_hash[0] != '\0' ? p->mgf1_hash : p->hash;

        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1
             && EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, p->salt_len) == 1
             && EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_get_digestbyname(wire_to_ossl(mgf))) == 1;
    }
    ok = ok && EVP_PKEY_sign(pctx, sig, siglen, data, len) == 1;
    EVP_PKEY_CTX_free(pctx);
    return ok;
}

static DBusMessage *fake_sign(DBusMessage *msg)
{
    const char *uri = NULL;
    const uint8_t *data = NULL;
    bus_sign_params_t p;
    const fake_key_t *k = NULL;
    const fake_standin_t *s;
    uint8_t sig[1024];
    size_t len = 0, siglen = sizeof(sig);
    sign_mode_t mode;
    bus_err_t error;
    int delay_us;

    if (bus_parse_sign_call(msg, &uri, &p, &data, &len) < 0)
        return dbus_message_new_error(msg, bus_err_name(BUS_ERR_INVALID_ARGS), "bad args");
    pthread_mutex_lock(&fake_lock);
    fake.last = p;
    fake.last_len = len;
    mode = fake.sign_mode;
    error = fake.error;
    delay_us = fake.sign_delay_us;
    pthread_mutex_unlock(&fake_lock);
    if (delay_us > 0) /* a slow token: callers wait with their connection */
        usleep((useconds_t)delay_us);
    if (mode == SIGN_ERROR)
        return dbus_message_new_error(msg, bus_err_name(error), "the fake agent says no");
    s = standin_by_uri(uri);
    if (s != NULL) {
        if (s->only_alg == 0 || s->only_alg == p.alg)
            return dbus_message_new_error(msg, bus_err_name(s->error), s->message);
        k = &run.cfg->keys[s->key];
    } else {
        k = key_by_uri(uri);
    }
    if (k == NULL)
        return dbus_message_new_error(msg, bus_err_name(BUS_ERR_NO_SUCH_KEY), "no such key");
    if (!fake_soft_sign(k, &p, data, len, sig, &siglen))
        return dbus_message_new_error(msg, bus_err_name(BUS_ERR_DEVICE), "fake token failed");
    if (mode == SIGN_SHORT)
        siglen--;
    else if (mode == SIGN_LONG)
        siglen++;
    else if (mode == SIGN_BAD_DER)
        sig[0] = 0x31;
    return reply_bytes(msg, &fake.signs, sig, siglen);
}

/* Decrypt with the software key: rsa-pkcs1, rsa-oaep (hash, mgf1, label)
 * and rsa-raw (no padding), as a token would. */
static DBusMessage *fake_decrypt(DBusMessage *msg)
{
    const char *uri = NULL;
    const uint8_t *data = NULL;
    bus_decrypt_params_t p;
    const fake_key_t *k;
    uint8_t out[1024];
    size_t len = 0, outlen = sizeof(out);
    EVP_PKEY_CTX *pctx;
    int pad, ok;

    if (bus_parse_decrypt_call(msg, &uri, &p, &data, &len) < 0)
        return dbus_message_new_error(msg, bus_err_name(BUS_ERR_INVALID_ARGS), "bad args");
    pthread_mutex_lock(&fake_lock);
    fake.last_dec = p;
    fake.last_dec.label = NULL;
    pthread_mutex_unlock(&fake_lock);
    k = key_by_uri(uri);
    if (k == NULL || k->type != BUS_KEY_RSA)
        return dbus_message_new_error(msg, bus_err_name(BUS_ERR_NO_SUCH_KEY), "no such key");
    pad = p.alg == BUS_DEC_RSA_OAEP  ? RSA_PKCS1_OAEP_PADDING
          : p.alg == BUS_DEC_RSA_RAW ? RSA_NO_PADDING
                                     : RSA_PKCS1_PADDING;
    pctx = EVP_PKEY_CTX_new_from_pkey(NULL, k->soft, NULL);
    ok = pctx != NULL && EVP_PKEY_decrypt_init(pctx) == 1 &&
         EVP_PKEY_CTX_set_rsa_padding(pctx, pad) == 1;
    if (ok && p.alg == BUS_DEC_RSA_OAEP) {
        const char *h = p.hash[0] ? wire_to_ossl(p.hash) : "SHA1";
        const char *m = p.mgf1_hash[0] ? wire_to_ossl(p.mgf1_hash) : h;

        ok = EVP_PKEY_CTX_set_rsa_oaep_md_name(pctx, h, NULL) == 1 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, m, NULL) == 1;
        if (ok && p.label_len > 0) {
            void *l = OPENSSL_memdup(p.label, p.label_len);

            ok = l != NULL && EVP_PKEY_CTX_set0_rsa_oaep_label(pctx, l, (int)p.label_len) == 1;
        }
    }
    ok = ok && EVP_PKEY_decrypt(pctx, out, &outlen, data, len) == 1;
    EVP_PKEY_CTX_free(pctx);
    if (!ok)
        return dbus_message_new_error(msg, bus_err_name(BUS_ERR_INVALID_ARGS),
                                      "CKR_ENCRYPTED_DATA_INVALID");
    return reply_bytes(msg, &fake.decrypts, out, outlen);
}

static DBusMessage *fake_unlock(DBusMessage *msg)
{
    pthread_mutex_lock(&fake_lock);
    fake.unlocks++;
    pthread_mutex_unlock(&fake_lock);
    return dbus_message_new_method_return(msg);
}

/* ------------------------------------------------------------------ */
/* The D-Bus side: a libdbus server on a temporary socket, driven by   */
/* the agent's poll loop in a thread of its own                        */
/* ------------------------------------------------------------------ */

static const struct {
    unsigned bit;
    const char *name;
    DBusMessage *(*handle)(DBusMessage *msg);
} fake_methods[] = {
    { FAKE_FIND_KEYS, "FindKeys", fake_find_keys },
    { FAKE_LIST_TOKENS, "ListTokens", fake_list_tokens },
    { FAKE_LIST_KEYS, "ListKeys", fake_list_keys },
    { FAKE_SIGN, "Sign", fake_sign },
    { FAKE_DECRYPT, "Decrypt", fake_decrypt },
    { FAKE_UNLOCK, "Unlock", fake_unlock },
};

static DBusHandlerResult srv_on_message(DBusConnection *conn, DBusMessage *msg, void *data)
{
    DBusMessage *reply = NULL;

    /* OpenChannel (which this fake does not know) comes once per pooled
     * connection, with its first signature. */
    if (dbus_message_get_type(msg) == DBUS_MESSAGE_TYPE_METHOD_CALL
        && !dbus_message_is_method_call(msg, BUS_IFACE, "OpenChannel")) {
        pthread_mutex_lock(&fake_lock);
        fake.calls++;
        pthread_mutex_unlock(&fake_lock);
    }
    for (size_t i = 0; i < sizeof(fake_methods) / sizeof(fake_methods[0]); i++) {
        if ((run.cfg->methods & fake_methods[i].bit)
            && dbus_message_is_method_call(msg, BUS_IFACE, fake_methods[i].name)) {
            reply = fake_methods[i].handle(msg);
            break;
        }
    }
    if (reply == NULL)
        return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
    dbus_connection_send(conn, reply, NULL);
    dbus_message_unref(reply);
    return DBUS_HANDLER_RESULT_HANDLED;
}

static const DBusObjectPathVTable srv_vtable = { .message_function = srv_on_message };

static void srv_forget(DBusConnection *conn)
{
    for (size_t i = 0; i < run.n_conns; i++) {
        if (run.conns[i] == conn) {
            run.conns[i] = run.conns[--run.n_conns];
            return;
        }
    }
}

static DBusHandlerResult srv_on_filter(DBusConnection *conn, DBusMessage *msg, void *data)
{
    if (dbus_message_is_signal(msg, DBUS_INTERFACE_LOCAL, "Disconnected")) {
        srv_forget(conn);
        agent_loop_detach_connection(run.loop, conn);
        return DBUS_HANDLER_RESULT_HANDLED;
    }
    return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
}

/* A connection past the limit, refused as the agent refuses one when every
 * client under max-clients is in a request: its first call gets Busy, then
 * it closes. */
static DBusHandlerResult srv_on_refused_message(DBusConnection *conn, DBusMessage *msg,
                                                void *data)
{
    DBusMessage *err;

    if (dbus_message_get_type(msg) != DBUS_MESSAGE_TYPE_METHOD_CALL)
        return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
    err = dbus_message_new_error(msg, bus_err_name(BUS_ERR_BUSY),
                                 "the fake agent serves its limit of busy clients");
    if (err) {
        dbus_connection_send(conn, err, NULL);
        dbus_connection_flush(conn);
        dbus_message_unref(err);
    }
    dbus_connection_close(conn);
    return DBUS_HANDLER_RESULT_HANDLED;
}

static const DBusObjectPathVTable srv_refused_vtable = {
    .message_function = srv_on_refused_message
};

static void srv_on_new_connection(DBusServer *server, DBusConnection *conn, void *data)
{
    bool refuse = false, at_once = false;

    dbus_connection_set_exit_on_disconnect(conn, FALSE);
    pthread_mutex_lock(&fake_lock);
    if (fake.limited && fake.admit_left == 0) {
        refuse = true;
        /* every other one is closed before its first call */
        at_once = fake.refused++ % 2 == 1;
    } else if (fake.limited) {
        fake.admit_left--;
    }
    pthread_mutex_unlock(&fake_lock);
    if (at_once)
        return; /* not referenced: libdbus closes it */
    if (refuse) {
        if (!dbus_connection_add_filter(conn, srv_on_filter, NULL, NULL)
            || !dbus_connection_register_object_path(conn, BUS_PATH, &srv_refused_vtable, NULL)
            || !agent_loop_attach_connection(run.loop, conn))
            dbus_connection_close(conn);
        return;
    }
    if (run.n_conns == sizeof(run.conns) / sizeof(run.conns[0])
        || !dbus_connection_add_filter(conn, srv_on_filter, NULL, NULL)
        || !dbus_connection_register_object_path(conn, BUS_PATH, &srv_vtable, NULL)
        || !agent_loop_attach_connection(run.loop, conn)) {
        dbus_connection_close(conn);
        return;
    }
    run.conns[run.n_conns++] = conn;
    pthread_mutex_lock(&fake_lock);
    fake.connections++;
    pthread_mutex_unlock(&fake_lock);
}

/* The commands of srv_command, run in the server thread. */
static void srv_on_ctl(void *userdata, int fd, short revents)
{
    char c = 0;

    if (read(fd, &c, 1) != 1)
        return;
    if (c == 'r' || c == 'd') {
        while (run.n_conns > 0) {
            DBusConnection *conn = run.conns[--run.n_conns];

            agent_loop_detach_connection(run.loop, conn);
        }
    }
    if (c == 'd' || c == 'u' || c == 'm') {
        char away[sizeof(srv.socket) + 8];

        snprintf(away, sizeof(away), "%s.away", srv.socket);
        if (c != 'u' ? rename(srv.socket, away) : rename(away, srv.socket))
            abort();
    } else if (c == 'q') {
        agent_loop_quit(run.loop);
    }
    if (write(run.ack[1], &c, 1) != 1)
        abort();
}

void srv_command(char c)
{
    char a = 0;

    assert_int_equal(write(run.ctl[1], &c, 1), 1);
    assert_int_equal(read(run.ack[0], &a, 1), 1);
    assert_int_equal(a, c);
}

static void *srv_thread(void *arg)
{
    agent_loop_run(run.loop);
    return NULL;
}

int srv_start(const fake_config_t *cfg)
{
    static const char *const mechs[] = { "EXTERNAL", NULL };
    char addr[192];
    DBusError err;

    run.cfg = cfg;
    snprintf(srv.dir, sizeof(srv.dir), "/tmp/p11agent-test-XXXXXX");
    if (mkdtemp(srv.dir) == NULL)
        return -1;
    snprintf(srv.socket, sizeof(srv.socket), "%s/agent.sock", srv.dir);
    snprintf(addr, sizeof(addr), "unix:path=%s", srv.socket);
    dbus_error_init(&err);
    run.server = dbus_server_listen(addr, &err);
    if (run.server == NULL) {
        fprintf(stderr, "listen %s: %s\n", addr, err.message);
        dbus_error_free(&err);
        return -1;
    }
    dbus_server_set_auth_mechanisms(run.server, (const char **)mechs);
    if (agent_loop_new(&run.loop) < 0 || pipe(run.ctl) < 0 || pipe(run.ack) < 0)
        return -1;
    dbus_server_set_new_connection_function(run.server, srv_on_new_connection, NULL, NULL);
    if (!agent_loop_attach_server(run.loop, run.server)
        || agent_loop_add_fd(run.loop, run.ctl[0], POLLIN, srv_on_ctl, NULL) < 0)
        return -1;
    return pthread_create(&run.thread, NULL, srv_thread, NULL) == 0 ? 0 : -1;
}

void srv_stop(void)
{
    srv_command('q');
    pthread_join(run.thread, NULL);
    dbus_server_disconnect(run.server);
    dbus_server_unref(run.server);
    agent_loop_free(run.loop);
    close(run.ctl[0]);
    close(run.ctl[1]);
    close(run.ack[0]);
    close(run.ack[1]);
    unlink(srv.socket);
    rmdir(srv.dir);
}
