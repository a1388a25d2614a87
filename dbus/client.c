/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Client side of the protocol: a private peer-to-peer connection to the
 * agent's socket and one function per method. Used by the provider (inside
 * other people's programs) and by p11agentctl, so: private connections only,
 * never exit on disconnect, never install signal handlers.
 */
#include <errno.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bus.h"
#include "text.h"
#include "pinmax.h"

static void set_errmsg(char **errmsg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_errmsg(char **errmsg, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    if (!errmsg)
        return;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    free(*errmsg);
    *errmsg = s;
}

/* The user the system agent runs as (packaging/systemd: User=p11agent). */
#define BUS_SYSTEM_USER "p11agent"
#define BUS_SYSTEM_SOCKET "/run/p11agent/agent.sock"

/* The uid of the system agent's user, or -1 if there is none. Called only
 * when a peer is neither us nor root, at connect time (never at sign time:
 * it may ask NSS). */
static long system_agent_uid(void)
{
    struct passwd pw, *res = NULL;
    char buf[4096];

    if (getpwnam_r(BUS_SYSTEM_USER, &pw, buf, sizeof(buf), &res) != 0 || !res)
        return -1;
    return (long)res->pw_uid;
}

/* Is the socket the system agent's: the well-known path, or one in a
 * directory owned by root or by the system agent's user? */
static bool is_system_socket(const char *path, long sys_uid)
{
    const char *slash = strrchr(path, '/');
    char *dir;
    struct stat st;
    bool owned;

    if (strcmp(path, BUS_SYSTEM_SOCKET) == 0)
        return true;
    if (!slash)
        return false;
    dir = slash == path ? strdup("/") : strndup(path, (size_t)(slash - path));
    if (!dir)
        return false;
    owned = stat(dir, &st) == 0 && (st.st_uid == 0 || (long)st.st_uid == sys_uid);
    free(dir);
    return owned;
}

/* Who listens on the socket: the kernel's word (SO_PEERCRED of the agent's
 * end), not the file's owner. Digests (and the keys' use) go only to an
 * agent run by this user, by root, or, for the system socket, by the system
 * agent's user; anyone else may have bound a socket where ours should be. */
static int check_agent_peer(DBusConnection *conn, const char *socket_path, char **errmsg)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    long sys_uid;
    int fd = -1;

    errno = 0;
    if (!dbus_connection_get_unix_fd(conn, &fd) || fd < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || len != sizeof(cred)) {
        set_errmsg(errmsg, "cannot tell who serves the agent socket %s (SO_PEERCRED): %s",
                   socket_path, strerror(errno ? errno : EIO));
        return BUS_ERR_DENIED;
    }
    if (cred.uid == getuid() || cred.uid == geteuid() || cred.uid == 0)
        return BUS_OK;
    sys_uid = system_agent_uid();
    if (sys_uid >= 0 && (long)cred.uid == sys_uid && is_system_socket(socket_path, sys_uid))
        return BUS_OK;
    if (sys_uid >= 0)
        set_errmsg(errmsg,
                   "refusing the agent socket %s: it is served by uid %lu (pid %ld), not by "
                   "this user (uid %lu), root, or the system agent's user %s (uid %ld, for "
                   "%s); another user's program may be listening there: check "
                   "P11AGENT_SOCKET / agent-socket",
                   socket_path, (unsigned long)cred.uid, (long)cred.pid,
                   (unsigned long)getuid(), BUS_SYSTEM_USER, sys_uid, BUS_SYSTEM_SOCKET);
    else
        set_errmsg(errmsg,
                   "refusing the agent socket %s: it is served by uid %lu (pid %ld), not by "
                   "this user (uid %lu) or root; another user's program may be listening "
                   "there: check P11AGENT_SOCKET / agent-socket",
                   socket_path, (unsigned long)cred.uid, (long)cred.pid,
                   (unsigned long)getuid());
    return BUS_ERR_DENIED;
}

int bus_client_connect(const char *socket_path, DBusConnection **ret_conn, char **errmsg)
{
    DBusError err;
    DBusConnection *conn;
    char *escaped = NULL, *address = NULL;
    struct stat st;
    int r;

    if (!socket_path || !socket_path[0]) {
        set_errmsg(errmsg, "no agent socket configured");
        return BUS_ERR_INVALID_ARGS;
    }
    if (stat(socket_path, &st) < 0) {
        set_errmsg(errmsg, "agent not running: cannot reach socket %s: %s (start p11agentd, "
                           "or point P11AGENT_SOCKET / agent-socket at its socket)",
                   socket_path, strerror(errno));
        return BUS_ERR_NOT_RUNNING;
    }
    if (!S_ISSOCK(st.st_mode)) {
        set_errmsg(errmsg, "agent socket %s is not a socket", socket_path);
        return BUS_ERR_NOT_RUNNING;
    }
    escaped = dbus_address_escape_value(socket_path);
    if (!escaped || asprintf(&address, "unix:path=%s", escaped) < 0) {
        address = NULL;
        r = BUS_ERR_NO_MEMORY;
        set_errmsg(errmsg, "out of memory");
        goto out;
    }
    dbus_error_init(&err);
    conn = dbus_connection_open_private(address, &err);
    if (!conn) {
        r = bus_err_from_name(err.name);
        if (r == BUS_ERR_FAILED || r == BUS_ERR_DISCONNECTED)
            r = BUS_ERR_NOT_RUNNING;
        set_errmsg(errmsg, "agent not running: cannot connect to %s: %s", socket_path,
                   err.message ? err.message : "unknown error");
        dbus_error_free(&err);
        goto out;
    }
    dbus_connection_set_exit_on_disconnect(conn, FALSE);
    r = check_agent_peer(conn, socket_path, errmsg);
    if (r < 0) {
        dbus_connection_close(conn);
        dbus_connection_unref(conn);
        goto out;
    }
    *ret_conn = conn;
    r = BUS_OK;
out:
    dbus_free(escaped);
    free(address);
    return r;
}

void bus_client_close(DBusConnection *conn)
{
    if (!conn)
        return;
    dbus_connection_close(conn);
    dbus_connection_unref(conn);
}

/* A new connection authenticates (EXTERNAL) on its first use, and libdbus
 * waits for that without a timeout: an agent that accepted the connection
 * but does not run (SIGSTOPped, hung) would block the call forever. So the
 * handshake is driven here, bounded by the call's own timeout. BUS_OK,
 * BUS_ERR_TIMEOUT or BUS_ERR_DISCONNECTED. */
static int wait_authenticated(DBusConnection *conn, int timeout_ms, char **errmsg)
{
    struct timespec start, now;

    clock_gettime(CLOCK_MONOTONIC, &start);
    while (!dbus_connection_get_is_authenticated(conn)) {
        long left;

        if (!dbus_connection_get_is_connected(conn)) {
            set_errmsg(errmsg, "agent disconnected during authentication (p11agentd stopped, "
                               "refused this user, or already serves its max-clients)");
            return BUS_ERR_DISCONNECTED;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        left = timeout_ms - ((now.tv_sec - start.tv_sec) * 1000L +
                             (now.tv_nsec - start.tv_nsec) / 1000000L);
        if (left <= 0) {
            set_errmsg(errmsg, "agent did not answer within %d ms (authentication: the agent "
                               "accepted the connection but does not run)", timeout_ms);
            return BUS_ERR_TIMEOUT;
        }
        if (!dbus_connection_read_write(conn, (int)left) &&
            !dbus_connection_get_is_authenticated(conn)) {
            set_errmsg(errmsg, "agent disconnected during authentication");
            return BUS_ERR_DISCONNECTED;
        }
    }
    return BUS_OK;
}

/* Sends msg (not consumed) and waits for the reply. */
static int call(DBusConnection *conn, DBusMessage *msg, int timeout_ms, DBusMessage **ret_reply,
                char **errmsg)
{
    DBusError err;
    DBusMessage *reply;
    int r;

    if (!conn) {
        set_errmsg(errmsg, "not connected to the agent");
        return BUS_ERR_NOT_RUNNING;
    }
    if (!dbus_connection_get_is_connected(conn)) {
        set_errmsg(errmsg, "agent disconnected (p11agentd stopped or restarted, refused "
                           "this user, or already serves its max-clients)");
        return BUS_ERR_DISCONNECTED;
    }
    r = wait_authenticated(conn, timeout_ms, errmsg);
    if (r != BUS_OK)
        return r;
    dbus_error_init(&err);
    reply = dbus_connection_send_with_reply_and_block(conn, msg, timeout_ms, &err);
    if (reply) {
        *ret_reply = reply;
        return BUS_OK;
    }
    r = bus_err_from_name(err.name);
    if (!dbus_connection_get_is_connected(conn) && r != BUS_ERR_DENIED)
        r = BUS_ERR_DISCONNECTED;
    if (r == BUS_ERR_DISCONNECTED)
        set_errmsg(errmsg, "agent disconnected (p11agentd stopped or restarted, refused this "
                           "user, or already serves its max-clients): %s",
                   err.message ? err.message : "connection closed");
    else if (r == BUS_ERR_TIMEOUT)
        set_errmsg(errmsg, "agent did not answer within %d ms: %s", timeout_ms,
                   err.message ? err.message : "timeout");
    else
        set_errmsg(errmsg, "%s", err.message ? err.message : bus_err_str(r));
    dbus_error_free(&err);
    return r;
}

/* A URI that is not UTF-8 names no key or token; libdbus would abort the
 * whole program if it went into a message, so it is refused here. */
static bool uri_ok(const char *uri, char **errmsg)
{
    char shown[256];

    if (text_utf8_valid(uri, strlen(uri)))
        return true;
    text_escape(shown, sizeof(shown), uri, strlen(uri));
    set_errmsg(errmsg, "'%s' is not a valid PKCS#11 URI: it is not UTF-8", shown);
    return false;
}

static DBusMessage *new_call(const char *method)
{
    return dbus_message_new_method_call(NULL, BUS_PATH, BUS_IFACE, method);
}

static int keys_call(DBusConnection *conn, const char *uri, int timeout_ms,
                     bus_key_info_t **ret_keys, size_t *ret_n, char **errmsg)
{
    DBusMessage *msg, *reply = NULL;
    int r;

    msg = new_call(uri ? "FindKeys" : "ListKeys");
    if (!msg || (uri && !dbus_message_append_args(msg, DBUS_TYPE_STRING, &uri, DBUS_TYPE_INVALID))) {
        r = BUS_ERR_NO_MEMORY;
        set_errmsg(errmsg, "out of memory");
        goto out;
    }
    r = call(conn, msg, timeout_ms, &reply, errmsg);
    if (r < 0)
        goto out;
    r = bus_parse_keys(reply, ret_keys, ret_n);
    if (r < 0)
        set_errmsg(errmsg, "malformed key list from the agent");
out:
    if (msg)
        dbus_message_unref(msg);
    if (reply)
        dbus_message_unref(reply);
    return r;
}

int bus_client_list_keys(DBusConnection *conn, int timeout_ms, bus_key_info_t **ret_keys,
                         size_t *ret_n, char **errmsg)
{
    return keys_call(conn, NULL, timeout_ms, ret_keys, ret_n, errmsg);
}

int bus_client_find_keys(DBusConnection *conn, const char *uri, int timeout_ms,
                         bus_key_info_t **ret_keys, size_t *ret_n, char **errmsg)
{
    if (!uri) {
        set_errmsg(errmsg, "no key URI given");
        return BUS_ERR_INVALID_ARGS;
    }
    if (!uri_ok(uri, errmsg))
        return BUS_ERR_INVALID_ARGS;
    return keys_call(conn, uri, timeout_ms, ret_keys, ret_n, errmsg);
}

int bus_client_sign_call(DBusConnection *conn, DBusMessage *msg, int timeout_ms,
                         uint8_t **ret_sig, size_t *ret_sig_len, char **errmsg)
{
    DBusMessage *reply = NULL;
    DBusMessageIter it, sub;
    const uint8_t *sig;
    uint8_t *copy;
    int n = 0, r;

    r = call(conn, msg, timeout_ms, &reply, errmsg);
    if (r < 0)
        goto out;
    if (strcmp(dbus_message_get_signature(reply), "ay") != 0 || !dbus_message_iter_init(reply, &it)) {
        r = BUS_ERR_PROTOCOL;
        set_errmsg(errmsg, "malformed signature reply from the agent");
        goto out;
    }
    dbus_message_iter_recurse(&it, &sub);
    dbus_message_iter_get_fixed_array(&sub, &sig, &n);
    if (n <= 0) {
        r = BUS_ERR_PROTOCOL;
        set_errmsg(errmsg, "empty signature from the agent");
        goto out;
    }
    copy = malloc((size_t)n);
    if (!copy) {
        r = BUS_ERR_NO_MEMORY;
        set_errmsg(errmsg, "out of memory");
        goto out;
    }
    memcpy(copy, sig, (size_t)n);
    *ret_sig = copy;
    *ret_sig_len = (size_t)n;
    r = BUS_OK;
out:
    if (reply)
        dbus_message_unref(reply);
    return r;
}

int bus_client_sign(DBusConnection *conn, const char *uri, const bus_sign_params_t *p,
                    const uint8_t *data, size_t len, int timeout_ms, uint8_t **ret_sig,
                    size_t *ret_sig_len, char **errmsg)
{
    DBusMessage *msg;
    int r;

    if (!uri || !uri_ok(uri, errmsg))
        return BUS_ERR_INVALID_ARGS;
    msg = bus_new_sign_call(uri, p, data, len);
    if (!msg) {
        set_errmsg(errmsg, "cannot build a signature request (algorithm %d, %zu bytes)", p->alg,
                   len);
        return BUS_ERR_INVALID_ARGS;
    }
    r = bus_client_sign_call(conn, msg, timeout_ms, ret_sig, ret_sig_len, errmsg);
    dbus_message_unref(msg);
    return r;
}

int bus_client_status(DBusConnection *conn, int timeout_ms, bus_status_t *ret, char **errmsg)
{
    DBusMessage *msg, *reply = NULL;
    int r;

    msg = new_call("Status");
    if (!msg) {
        set_errmsg(errmsg, "out of memory");
        return BUS_ERR_NO_MEMORY;
    }
    r = call(conn, msg, timeout_ms, &reply, errmsg);
    if (r < 0)
        goto out;
    r = bus_parse_status(reply, ret);
    if (r < 0)
        set_errmsg(errmsg, "malformed status reply from the agent");
out:
    dbus_message_unref(msg);
    if (reply)
        dbus_message_unref(reply);
    return r;
}

int bus_client_list_tokens(DBusConnection *conn, int timeout_ms, bus_token_info_t **ret,
                           size_t *ret_n, char **errmsg)
{
    DBusMessage *msg = new_call("ListTokens"), *reply = NULL;
    int r;

    if (!msg) {
        set_errmsg(errmsg, "out of memory");
        return BUS_ERR_NO_MEMORY;
    }
    r = call(conn, msg, timeout_ms, &reply, errmsg);
    if (r == BUS_OK && (r = bus_parse_tokens(reply, ret, ret_n)) < 0)
        set_errmsg(errmsg, "malformed token list from the agent");
    dbus_message_unref(msg);
    if (reply)
        dbus_message_unref(reply);
    return r;
}

/* Wipes the bytes of the `ay` that is argument number `arg` of msg, in the
 * message body itself (a PIN must not linger in freed memory). */
void bus_wipe_bytes_arg(DBusMessage *msg, int arg)
{
    DBusMessageIter it, sub;
    const char *p = NULL;
    int n = 0;

    if (!msg || !dbus_message_iter_init(msg, &it))
        return;
    for (int i = 0; i < arg; i++)
        if (!dbus_message_iter_next(&it))
            return;
    if (dbus_message_iter_get_arg_type(&it) != DBUS_TYPE_ARRAY ||
        dbus_message_iter_get_element_type(&it) != DBUS_TYPE_BYTE)
        return;
    dbus_message_iter_recurse(&it, &sub);
    dbus_message_iter_get_fixed_array(&sub, &p, &n);
    if (p && n > 0)
        explicit_bzero((char *)p, (size_t)n);
}

/* One "key" -> variant entry of an a{sv} being written. FALSE: no memory. */
static dbus_bool_t append_option(DBusMessageIter *dict, const char *key, int type,
                                 const char *sig, const void *value)
{
    DBusMessageIter entry, var;

    return dbus_message_iter_open_container(dict, DBUS_TYPE_DICT_ENTRY, NULL, &entry) &&
           dbus_message_iter_append_basic(&entry, DBUS_TYPE_STRING, &key) &&
           dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, sig, &var) &&
           dbus_message_iter_append_basic(&var, type, value) &&
           dbus_message_iter_close_container(&entry, &var) &&
           dbus_message_iter_close_container(dict, &entry);
}

int bus_client_unlock(DBusConnection *conn, const char *token_uri, const char *pin, size_t len,
                      unsigned flags, uint32_t lifetime_s, int timeout_ms, char **errmsg)
{
    /* Without options the plain Unlock, which every agent version knows. */
    bool options = flags || lifetime_s;
    DBusMessage *msg = new_call(options ? "UnlockWithOptions" : "Unlock"), *reply = NULL;
    DBusMessageIter it, dict;
    dbus_bool_t final_try = (flags & BUS_UNLOCK_FINAL_TRY) != 0;
    dbus_uint32_t lifetime = lifetime_s;
    int r;

    if (!token_uri || !uri_ok(token_uri, errmsg)) {
        if (msg)
            dbus_message_unref(msg);
        return BUS_ERR_INVALID_ARGS;
    }
    if (len == 0 || len > PIN_MAX) {
        if (msg)
            dbus_message_unref(msg);
        set_errmsg(errmsg, "a PIN is 1 to " PIN_MAX_STR " bytes");
        return BUS_ERR_INVALID_ARGS;
    }
    if (msg)
        dbus_message_iter_init_append(msg, &it);
    if (!msg || !dbus_message_iter_append_basic(&it, DBUS_TYPE_STRING, &token_uri) ||
        !bus_append_bytes(&it, (const uint8_t *)pin, len) ||
        (options &&
         (!dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict) ||
          (final_try && !append_option(&dict, "final-try", DBUS_TYPE_BOOLEAN, "b", &final_try)) ||
          (lifetime && !append_option(&dict, "lifetime", DBUS_TYPE_UINT32, "u", &lifetime)) ||
          !dbus_message_iter_close_container(&it, &dict)))) {
        bus_wipe_bytes_arg(msg, 1);
        if (msg)
            dbus_message_unref(msg);
        set_errmsg(errmsg, "cannot build the request");
        return BUS_ERR_NO_MEMORY;
    }
    r = call(conn, msg, timeout_ms, &reply, errmsg);
    if (r == BUS_ERR_FAILED && options && errmsg && *errmsg &&
        strstr(*errmsg, "UnlockWithOptions"))
        set_errmsg(errmsg, "this agent is too old for unlock options (no UnlockWithOptions)");
    else if (r == BUS_ERR_INVALID_ARGS && lifetime && errmsg && *errmsg &&
             strstr(*errmsg, "unknown Unlock option"))
        set_errmsg(errmsg, "this agent is too old for 'unlock -t' (no \"lifetime\" option)");
    bus_wipe_bytes_arg(msg, 1);
    dbus_message_unref(msg);
    if (reply)
        dbus_message_unref(reply);
    return r;
}

int bus_client_stop(DBusConnection *conn, int timeout_ms, char **errmsg)
{
    DBusMessage *msg = new_call("Stop"), *reply = NULL;
    int r;

    if (!msg) {
        set_errmsg(errmsg, "out of memory");
        return BUS_ERR_NO_MEMORY;
    }
    r = call(conn, msg, timeout_ms, &reply, errmsg);
    dbus_message_unref(msg);
    if (reply)
        dbus_message_unref(reply);
    return r;
}

int bus_client_lock(DBusConnection *conn, const char *token_uri, bool forget_only, int timeout_ms,
                    uint32_t *ret_count, char **errmsg)
{
    DBusMessage *msg, *reply = NULL;
    dbus_bool_t forget = forget_only;
    dbus_uint32_t count = 0;
    int r;

    if (!token_uri || !uri_ok(token_uri, errmsg))
        return BUS_ERR_INVALID_ARGS;
    msg = new_call("Lock");
    if (!msg || !dbus_message_append_args(msg, DBUS_TYPE_STRING, &token_uri, DBUS_TYPE_BOOLEAN,
                                          &forget, DBUS_TYPE_INVALID)) {
        if (msg)
            dbus_message_unref(msg);
        set_errmsg(errmsg, "out of memory");
        return BUS_ERR_NO_MEMORY;
    }
    r = call(conn, msg, timeout_ms, &reply, errmsg);
    if (r == BUS_OK && !dbus_message_get_args(reply, NULL, DBUS_TYPE_UINT32, &count,
                                              DBUS_TYPE_INVALID)) {
        r = BUS_ERR_PROTOCOL;
        set_errmsg(errmsg, "malformed reply from the agent");
    }
    if (r == BUS_OK && ret_count)
        *ret_count = count;
    dbus_message_unref(msg);
    if (reply)
        dbus_message_unref(reply);
    return r;
}

int bus_client_decrypt(DBusConnection *conn, const char *uri, const bus_decrypt_params_t *p,
                       const uint8_t *data, size_t len, int timeout_ms, uint8_t **ret_plain,
                       size_t *ret_len, char **errmsg)
{
    DBusMessage *msg, *reply = NULL;
    DBusMessageIter it, sub;
    const uint8_t *plain = NULL;
    uint8_t *copy;
    int n = 0, r;

    if (!uri || !p || !ret_plain || !ret_len || !uri_ok(uri, errmsg))
        return BUS_ERR_INVALID_ARGS;
    msg = bus_new_decrypt_call(uri, p, data, len);
    if (!msg) {
        set_errmsg(errmsg, "cannot build a decryption request (algorithm %d, %zu bytes, "
                           "label %zu bytes)", (int)p->alg, len, p->label_len);
        return BUS_ERR_INVALID_ARGS;
    }
    r = call(conn, msg, timeout_ms, &reply, errmsg);
    dbus_message_unref(msg);
    if (r < 0)
        goto out;
    if (strcmp(dbus_message_get_signature(reply), "ay") != 0 ||
        !dbus_message_iter_init(reply, &it)) {
        r = BUS_ERR_PROTOCOL;
        set_errmsg(errmsg, "malformed decryption reply from the agent");
        goto out;
    }
    dbus_message_iter_recurse(&it, &sub);
    dbus_message_iter_get_fixed_array(&sub, &plain, &n);
    /* the agent never returns more than the ciphertext's length */
    if (n < 0 || (size_t)n > BUS_DECRYPT_MAX_DATA) {
        r = BUS_ERR_PROTOCOL;
        set_errmsg(errmsg, "a %d-byte plaintext from the agent is longer than any RSA key", n);
        goto out;
    }
    copy = malloc(n > 0 ? (size_t)n : 1);
    if (!copy) {
        r = BUS_ERR_NO_MEMORY;
        set_errmsg(errmsg, "out of memory");
        goto out;
    }
    if (n > 0)
        memcpy(copy, plain, (size_t)n);
    *ret_plain = copy;
    *ret_len = (size_t)n;
    r = BUS_OK;
out:
    if (reply) {
        bus_wipe_bytes_arg(reply, 0); /* the plaintext is a secret */
        dbus_message_unref(reply);
    }
    return r;
}
