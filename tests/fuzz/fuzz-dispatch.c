/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Every method of org.p11agent.Agent1 through agent_dispatch, as a client
 * on the agent's socket would send it, against an agent whose token layer
 * is the real pkcs11/ code over fakep11.so (answers from the input).
 *
 * Input: the fake module's model (fakep11.c), then a setup byte (which
 * agent.conf policy applies), the client's executable path, then up to
 * MAX_CALLS messages, each either
 *   - raw (mode byte & 3 == 0): a 2-byte length and that many bytes for
 *     dbus_message_demarshal (any valid message; also fed to the client
 *     side's bus_parse_* reply parsers), or
 *   - structured: a method (and interface, flags) and typed arguments built
 *     from the input, with URIs that name the fake token's real keys so
 *     that Sign, Unlock and Lock reach the token layer.
 * The harness only appends valid UTF-8 where it builds a message: a libdbus
 * abort can then only come from the agent.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "fakep11.h"
#include "text.h"

#define MAX_CALLS 4

static DBusConnection *conn;  /* disconnected: replies are built, then dropped */
static char pin_file[] = "/tmp/p11agent-fuzz-pin-XXXXXX";

static const char *const configs[] = {
    "",
    "[key pkcs11:]\nallow-exe = /usr/bin/openssl\n",
    "[key pkcs11:type=private]\nallow-users = 0\n",
    "[agent]\naudit = refusals\n[token pkcs11:]\npin-source = file:/nonexistent/pin\n",
    NULL, /* [agent] pin-source = file:<pin_file> (built at start) */
    NULL, /* the same, and decrypt = yes for every key: Decrypt reaches the token */
};
#define N_CONFIGS (sizeof(configs) / sizeof(configs[0]))
static char pin_config[128];
static char decrypt_config[192];

static void remove_pin_file(void)
{
    unlink(pin_file);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    DBusServer *server;
    DBusError err;
    char *addr;
    int fd;

    /* A private connection to a server of our own, closed at once: the
     * agent's dbus_connection_send then drops each reply after it was
     * built (and validated) by libdbus. */
    dbus_error_init(&err);
    server = dbus_server_listen("unix:tmpdir=/tmp", &err);
    if (server == NULL)
        abort();
    addr = dbus_server_get_address(server);
    conn = dbus_connection_open_private(addr, &err);
    if (conn == NULL)
        abort();
    dbus_free(addr);
    dbus_connection_set_exit_on_disconnect(conn, FALSE);
    dbus_connection_close(conn);
    dbus_server_disconnect(server);
    dbus_server_unref(server);

    fd = mkstemp(pin_file);
    if (fd < 0 || write(fd, "1234\n", 5) != 5)
        abort();
    fchmod(fd, 0600);
    close(fd);
    atexit(remove_pin_file);
    snprintf(pin_config, sizeof(pin_config), "[agent]\npin-source = file:%s\n", pin_file);
    snprintf(decrypt_config, sizeof(decrypt_config),
             "[agent]\npin-source = file:%s\n[key pkcs11:]\ndecrypt = yes\n", pin_file);
    agent_log_init(getenv("P11AGENT_DEBUG"));
    return 0;
}

/* A string for a message: valid UTF-8 without NUL (a malloc'd copy). */
static char *raw_string(size_t max)
{
    size_t n, want = fakep11_u8();
    const uint8_t *p;
    char *s, *safe;

    if (max > 255) /* long strings: a 2-byte length */
        want |= (size_t)fakep11_u8() << 8;
    p = fakep11_take(want % (max + 1), &n);
    s = strndup((const char *)p, n);

    if (s == NULL || text_utf8_valid(s, strlen(s)))
        return s;
    safe = text_dbus_safe(s, 4 * max + 8);
    free(s);
    return safe;
}

/* A URI: often one the agent holds, so that calls reach the token. */
static char *uri_arg(agent_t *a)
{
    size_t nk = tok_ctx_n_keys(a->tok), nt = tok_ctx_n_tokens(a->tok);
    uint8_t k = fakep11_u8();
    char *s, *tail, *out;

    switch (k % 6) {
    case 0:
        return nk ? strdup(tok_ctx_key(a->tok, (k >> 3) % nk)->uri) : strdup("pkcs11:");
    case 1:
        return nt ? strdup(tok_token_uri(tok_ctx_token(a->tok, (k >> 3) % nt))) : strdup("");
    case 2:
        return strdup((k & 8) ? "pkcs11:" : "");
    case 3:
        /* a held key's URI with something appended */
        s = nk ? tok_ctx_key(a->tok, (k >> 3) % nk)->uri : "pkcs11:";
        tail = raw_string(64);
        if (tail == NULL || asprintf(&out, "%s%s", s, tail) < 0)
            out = NULL;
        free(tail);
        return out;
    default:
        /* up to 2 KiB: error messages quoting it exceed their buffers */
        return raw_string(2048);
    }
}

static const char *const algs[] = { "rsa-pkcs1", "rsa-pss", "ecdsa", "eddsa" };
static const char *const dec_algs[] = { "rsa-pkcs1", "rsa-oaep", "rsa-raw" };
static const char *const hashes[] = { "", "sha1", "sha224", "sha256", "sha384", "sha512" };
static const char *const param_names[] = { "hash", "mgf1-hash", "salt-length", "other" };
static const char *const dec_param_names[] = { "hash", "mgf1-hash", "label", "other" };

static bool append_string(DBusMessageIter *it, const char *s)
{
    return dbus_message_iter_append_basic(it, DBUS_TYPE_STRING, &s);
}

static bool append_bytes(DBusMessageIter *it, size_t max)
{
    size_t n;
    const uint8_t *p = fakep11_take(max, &n);

    if ((fakep11_u8() & 3) == 0) /* exactly a digest's length, usually */
        p = fakep11_take((size_t[]){ 20, 28, 32, 48, 64, 0 }[fakep11_u8() % 6], &n);
    return bus_append_bytes(it, p, n);
}

/* Sign (or Decrypt) parameters: known names with the right or wrong
 * variant types; Decrypt's "label" also as the `ay` it should be. */
static bool append_params_named(DBusMessageIter *it, const char *const names[4]);

static bool append_params(DBusMessageIter *it)
{
    return append_params_named(it, param_names);
}

static bool append_params_named(DBusMessageIter *it, const char *const names[4])
{
    DBusMessageIter dict, entry, var;
    size_t n = fakep11_u8() % 5;
    bool ok = dbus_message_iter_open_container(it, DBUS_TYPE_ARRAY, "{sv}", &dict);

    for (size_t i = 0; ok && i < n; i++) {
        uint8_t k = fakep11_u8(), t = fakep11_u8();
        const char *name = names[k % 4], *sv = hashes[(k >> 2) % 6];
        dbus_int32_t iv = (int8_t)fakep11_u8();
        dbus_uint32_t uv = (uint32_t)iv;
        char *raw = NULL;

        ok = dbus_message_iter_open_container(&dict, DBUS_TYPE_DICT_ENTRY, NULL, &entry)
             && append_string(&entry, name);
        switch (ok ? t % 4 : 4) {
        case 0:
            ok = dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, "s", &var)
                 && append_string(&var, sv);
            break;
        case 1:
            ok = dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, "i", &var)
                 && dbus_message_iter_append_basic(&var, DBUS_TYPE_INT32, &iv);
            break;
        case 2:
            ok = dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, "u", &var)
                 && dbus_message_iter_append_basic(&var, DBUS_TYPE_UINT32, &uv);
            break;
        case 3:
            if (strcmp(name, "label") == 0) {
                ok = dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, "ay", &var)
                     && append_bytes(&var, 2100);
                break;
            }
            raw = raw_string(40);
            ok = raw && dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, "s", &var)
                 && append_string(&var, raw);
            break;
        default:
            break;
        }
        free(raw);
        ok = ok && dbus_message_iter_close_container(&entry, &var)
             && dbus_message_iter_close_container(&dict, &entry);
    }
    return ok && dbus_message_iter_close_container(it, &dict);
}

static const char *const members[] = {
    "ListKeys", "FindKeys", "Sign", "Status", "ListTokens", "Unlock", "Lock",
    "RegisterPrompter", "UnregisterPrompter", "Introspect", "Bogus", "Decrypt",
};
#define N_MEMBERS (sizeof(members) / sizeof(members[0]))
static const char *const ifaces[] = {
    BUS_IFACE, NULL, DBUS_INTERFACE_INTROSPECTABLE, "org.example.Other",
};

static DBusMessage *structured_call(agent_t *a, agent_client_t *c)
{
    uint8_t m = fakep11_u8() % N_MEMBERS, f = fakep11_u8();
    DBusMessage *msg = dbus_message_new_method_call(NULL, BUS_PATH, ifaces[(f >> 4) % 4],
                                                    members[m]);
    DBusMessageIter it;
    char *s1 = NULL, *s2 = NULL;
    bool ok = msg != NULL;

    if (!ok)
        return NULL;
    dbus_message_iter_init_append(msg, &it);
    switch (m) {
    case 1: /* FindKeys s */
        ok = (s1 = uri_arg(a)) && append_string(&it, s1);
        break;
    case 2: /* Sign ssa{sv}ay */
        s2 = (fakep11_u8() & 7) ? strdup(algs[fakep11_u8() % 4]) : raw_string(16);
        ok = (s1 = uri_arg(a)) && s2 && append_string(&it, s1) && append_string(&it, s2)
             && append_params(&it) && append_bytes(&it, 600);
        break;
    case 11: /* Decrypt ssa{sv}ay */
        s2 = (fakep11_u8() & 7) ? strdup(dec_algs[fakep11_u8() % 3]) : raw_string(16);
        ok = (s1 = uri_arg(a)) && s2 && append_string(&it, s1) && append_string(&it, s2)
             && append_params_named(&it, dec_param_names) && append_bytes(&it, 2100);
        break;
    case 5: /* Unlock say */
        ok = (s1 = uri_arg(a)) && append_string(&it, s1) && append_bytes(&it, 300);
        break;
    case 6: { /* Lock sb */
        dbus_bool_t b = fakep11_u8() & 1;

        ok = (s1 = uri_arg(a)) && append_string(&it, s1)
             && dbus_message_iter_append_basic(&it, DBUS_TYPE_BOOLEAN, &b);
        break;
    }
    case 7: { /* RegisterPrompter o */
        const char *path = (fakep11_u8() & 1) ? "/org/example/Prompter" : "/";

        ok = dbus_message_iter_append_basic(&it, DBUS_TYPE_OBJECT_PATH, &path);
        break;
    }
    default:
        break;
    }
    if (ok && (f & 1)) /* a wrong signature: one argument more */
        ok = append_string(&it, "extra");
    if (ok && (f & 2))
        dbus_message_set_no_reply(msg, TRUE);
    if (ok && (f & 4)) {
        c->via_session_bus = true;
        ok = dbus_message_set_sender(msg, ":1.42");
    }
    free(s1);
    free(s2);
    if (!ok) {
        dbus_message_unref(msg);
        return NULL;
    }
    dbus_message_set_serial(msg, 7);
    return msg;
}

/* The client side's reply parsers on any message. */
static void parse_as_replies(DBusMessage *msg)
{
    bus_key_info_t *keys = NULL;
    bus_token_info_t *toks = NULL;
    bus_status_t st = { 0 };
    bus_sign_params_t p;
    bus_decrypt_params_t dp;
    const char *uri;
    const uint8_t *data;
    size_t n = 0, len;

    if (bus_parse_keys(msg, &keys, &n) == BUS_OK)
        bus_key_info_free_array(keys, n);
    n = 0;
    if (bus_parse_tokens(msg, &toks, &n) == BUS_OK)
        bus_token_info_free_array(toks, n);
    if (bus_parse_status(msg, &st) == BUS_OK)
        bus_status_clear(&st);
    bus_parse_sign_call(msg, &uri, &p, &data, &len);
    bus_parse_decrypt_call(msg, &uri, &dp, &data, &len);
    if (dbus_message_get_type(msg) == DBUS_MESSAGE_TYPE_ERROR)
        (void)bus_err_from_name(dbus_message_get_error_name(msg));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *modules[] = { FAKEP11_PATH };
    agent_client_t c = { 0 };
    char *err = NULL;
    const char *cfg;
    size_t n_cfg;
    const uint8_t *exe;
    size_t exe_len;
    agent_t a;

    if (agent_init(&a) != 0)
        abort();
    fakep11_set_input(data, size);
    if (tok_ctx_new(modules, 1, &a.tok, &err) != TOK_OK) {
        free(err);
        agent_done(&a);
        return 0;
    }
    n_cfg = fakep11_u8() % N_CONFIGS;
    cfg = configs[n_cfg] ? configs[n_cfg] : n_cfg == N_CONFIGS - 1 ? decrypt_config : pin_config;
    if (agent_conf_parse(cfg, "fuzz.conf", &a.conf, &err) < 0
        || agent_apply_conf(&a, &err) < 0)
        abort();
    pthread_rwlock_wrlock(&a.keys_lock);
    tok_ctx_scan(a.tok);
    agent_policy_update_locked(&a);
    pthread_rwlock_unlock(&a.keys_lock);

    c.agent = &a;
    c.uid = getuid();
    c.gid = getgid();
    c.pid = getpid();
    /* the client's executable path: any bytes (as /proc/PID/exe may hold) */
    exe = fakep11_take(fakep11_u8() % sizeof(c.exe), &exe_len);
    memcpy(c.exe, exe, exe_len);
    c.exe[exe_len] = '\0';

    for (int i = 0; i < MAX_CALLS && fakep11_left() > 0; i++) {
        DBusMessage *msg = NULL;

        c.via_session_bus = false;
        if ((fakep11_u8() & 3) == 0) {
            size_t len = fakep11_u8(), got;
            const uint8_t *p;

            len |= (size_t)fakep11_u8() << 8;
            p = fakep11_take(len, &got);
            msg = dbus_message_demarshal((const char *)p, (int)got, NULL);
            if (msg != NULL)
                parse_as_replies(msg);
        } else {
            msg = structured_call(&a, &c);
        }
        if (msg == NULL)
            continue;
        agent_dispatch(&c, conn, msg);
        dbus_message_unref(msg);
    }
    tok_ctx_free(a.tok);
    a.tok = NULL;
    agent_done(&a);
    return 0;
}
