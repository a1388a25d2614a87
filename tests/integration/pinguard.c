/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * pinguard: a raw client of the agent for test-pinguard.sh (not installed).
 *
 *   pinguard sign SOCKET KEY-URI
 *       one ECDSA/SHA-256 signature
 *   pinguard exec-other SOCKET KEY-URI RESULT-FILE
 *       signs once, then forks: the parent (the process that connected)
 *       execs sleep(1) while the child keeps the connection and signs again
 *       once the parent's /proc/PID/exe changed; the child writes the result
 *       to RESULT-FILE and ends the parent
 *   pinguard delete-self SOCKET KEY-URI
 *       signs once, deletes its own executable, signs again
 *   pinguard unlock-raw SOCKET TOKEN-URI LEN
 *       a plain Unlock with a PIN of LEN bytes ('1'), built by hand (no
 *       client-side length check)
 *
 * Each signature prints "signed" or "error NAME: MESSAGE" on stdout; the
 * exit status is 0 when every step ran (whatever the agent answered), 2 on
 * a usage or setup error, 3 when the first (allowed) signature failed.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bus.h"

static const uint8_t digest[32] = {0x11, 0x22, 0x33, 0x44};

/* One signature; prints the outcome to f. 0 if signed. */
static int sign_once(DBusConnection *conn, const char *uri, FILE *f)
{
    bus_sign_params_t p = {.alg = BUS_SIG_ECDSA, .hash = "sha256"};
    uint8_t *sig = NULL;
    size_t len = 0;
    char *err = NULL;
    int r;

    r = bus_client_sign(conn, uri, &p, digest, sizeof(digest), 20000, &sig, &len, &err);
    if (r == BUS_OK)
        fprintf(f, "signed\n");
    else
        fprintf(f, "error %s: %s\n", bus_err_name(r), err ? err : "?");
    fflush(f);
    free(sig);
    free(err);
    return r;
}

static int exec_other(DBusConnection *conn, const char *uri, const char *result)
{
    char self[1024], path[64], now[1024];
    ssize_t n;
    pid_t parent = getpid(), child;

    n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return 2;
    self[n] = '\0';
    child = fork();
    if (child < 0)
        return 2;
    if (child > 0) {
        /* the process the agent knows becomes another program; the
         * connection's socket is CLOEXEC: only the child keeps it */
        execl("/bin/sleep", "sleep", "30", (char *)NULL);
        _exit(2);
    }
    snprintf(path, sizeof(path), "/proc/%ld/exe", (long)parent);
    for (int i = 0; i < 500; i++) {
        n = readlink(path, now, sizeof(now) - 1);
        if (n > 0) {
            now[n] = '\0';
            if (strcmp(now, self) != 0)
                break;
        }
        usleep(10000);
    }
    {
        FILE *f = fopen(result, "w");

        if (!f)
            _exit(2);
        fprintf(f, "parent now runs %s\n", now);
        sign_once(conn, uri, f);
        fclose(f);
    }
    kill(parent, SIGTERM);
    _exit(0);
}

static int delete_self(DBusConnection *conn, const char *uri)
{
    char self[1024];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

    if (n <= 0)
        return 2;
    self[n] = '\0';
    if (unlink(self) < 0) {
        perror("unlink");
        return 2;
    }
    printf("deleted %s\n", self);
    sign_once(conn, uri, stdout);
    return 0;
}

static int unlock_raw(DBusConnection *conn, const char *token, long len)
{
    DBusMessage *msg, *reply;
    DBusMessageIter it;
    DBusError err;
    uint8_t *pin;
    int r = 0;

    if (len < 0 || len > 65536)
        return 2;
    pin = malloc((size_t)len + 1);
    msg = dbus_message_new_method_call(NULL, BUS_PATH, BUS_IFACE, "Unlock");
    if (!pin || !msg)
        return 2;
    memset(pin, '1', (size_t)len);
    dbus_message_iter_init_append(msg, &it);
    if (!dbus_message_iter_append_basic(&it, DBUS_TYPE_STRING, &token) ||
        !bus_append_bytes(&it, pin, (size_t)len))
        return 2;
    dbus_error_init(&err);
    reply = dbus_connection_send_with_reply_and_block(conn, msg, 20000, &err);
    if (reply) {
        printf("unlocked\n");
        dbus_message_unref(reply);
    } else {
        printf("error %s: %s\n", err.name, err.message);
        dbus_error_free(&err);
    }
    dbus_message_unref(msg);
    free(pin);
    return r;
}

int main(int argc, char **argv)
{
    DBusConnection *conn = NULL;
    char *err = NULL;
    int r;

    if (argc < 4) {
        fprintf(stderr, "usage: pinguard sign|exec-other|delete-self|unlock-raw SOCKET ARG...\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (bus_client_connect(argv[2], &conn, &err) < 0) {
        fprintf(stderr, "pinguard: %s\n", err ? err : "cannot connect");
        return 2;
    }
    if (strcmp(argv[1], "unlock-raw") == 0 && argc == 5) {
        r = unlock_raw(conn, argv[3], strtol(argv[4], NULL, 10));
        goto out;
    }
    /* the first signature: the program is allowed */
    if (sign_once(conn, argv[3], stdout) != BUS_OK) {
        r = 3;
        goto out;
    }
    if (strcmp(argv[1], "sign") == 0)
        r = 0;
    else if (strcmp(argv[1], "exec-other") == 0 && argc == 5)
        r = exec_other(conn, argv[3], argv[4]);
    else if (strcmp(argv[1], "delete-self") == 0)
        r = delete_self(conn, argv[3]);
    else
        r = 2;
out:
    bus_client_close(conn);
    free(err);
    return r;
}
