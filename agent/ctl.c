/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* p11agentctl: talks to p11agentd like any client (dbus/ only). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/x509.h>

#include "bus.h"
#include "config.h"

typedef struct ctl {
    DBusConnection *conn;
    const char *socket_path;
} ctl_t;

static void usage(FILE *f)
{
    fprintf(f, "Usage: p11agentctl [--socket PATH] COMMAND [ARG...]\n"
               "Ask a running p11agentd about its tokens and keys.\n"
               "\n"
               "Commands:\n"
               "  keys [URI]   list the keys (all, or those matching a pkcs11: URI)\n"
               "  status       show the agent's version, tokens, keys, clients and counters\n"
               "\n"
               "Options:\n"
               "  -s, --socket PATH  the agent's socket (default: $P11AGENT_SOCKET, else\n"
               "                     $XDG_RUNTIME_DIR/p11agent/agent.sock)\n"
               "  -h, --help         show this help\n"
               "  -V, --version      show the version\n");
}

static void print_subject(const uint8_t *der, size_t len)
{
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    char *s;

    if (!x) {
        printf("    certificate: (unparsable, %zu bytes)\n", len);
        return;
    }
    s = X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
    printf("    certificate: %s\n", s ? s : "?");
    OPENSSL_free(s);
    X509_free(x);
}

static int cmd_keys(ctl_t *c, int argc, char **argv)
{
    bus_key_info_t *keys = NULL;
    size_t n = 0;
    char *err = NULL;
    int r;

    if (argc > 2) {
        fprintf(stderr, "p11agentctl: keys takes at most one URI\n");
        return 2;
    }
    if (argc == 2)
        r = bus_client_find_keys(c->conn, argv[1], BUS_CALL_TIMEOUT_MS, &keys, &n, &err);
    else
        r = bus_client_list_keys(c->conn, BUS_CALL_TIMEOUT_MS, &keys, &n, &err);
    if (r < 0) {
        fprintf(stderr, "p11agentctl: %s\n", err ? err : bus_err_str(r));
        free(err);
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        const bus_key_info_t *k = &keys[i];

        printf("%s\n", k->uri);
        printf("    type: %s %u%s%s\n", bus_key_type_name(k->type), k->bits,
               k->group[0] ? " " : "", k->group);
        printf("    label: %s\n    token: %s%s\n", k->label, k->token,
               (k->flags & BUS_KEY_LOGGED_IN) ? " (logged in)" : "");
        printf("    mechanisms:%s%s%s%s\n", (k->flags & BUS_KEY_CAN_RSA_PKCS1) ? " RSA-PKCS" : "",
               (k->flags & BUS_KEY_CAN_RSA_PSS) ? " RSA-PSS" : "",
               (k->flags & BUS_KEY_CAN_ECDSA) ? " ECDSA" : "",
               (k->flags & BUS_KEY_CAN_EDDSA) ? " EdDSA" : "");
        if (k->cert_len)
            print_subject(k->cert, k->cert_len);
    }
    if (n == 0 && argc == 2) {
        fprintf(stderr, "p11agentctl: no key matches '%s'\n", argv[1]);
        r = 1;
    }
    bus_key_info_free_array(keys, n);
    return r < 0 ? 1 : 0;
}

static int cmd_status(ctl_t *c, int argc, char **argv)
{
    bus_status_t s = {0};
    char *err = NULL;
    int r;

    r = bus_client_status(c->conn, BUS_CALL_TIMEOUT_MS, &s, &err);
    if (r < 0) {
        fprintf(stderr, "p11agentctl: %s\n", err ? err : bus_err_str(r));
        free(err);
        return 1;
    }
    printf("agent: p11agentd %s (pid %u)\n", s.version ? s.version : "?", s.pid);
    printf("socket: %s\n", c->socket_path);
    printf("tokens: %u\nkeys: %u\nclients: %u\n", s.tokens, s.keys, s.clients);
    printf("signatures: %llu\nsign-failures: %llu\n", (unsigned long long)s.signatures,
           (unsigned long long)s.sign_failures);
    bus_status_clear(&s);
    return 0;
}

static const struct {
    const char *name;
    int (*fn)(ctl_t *c, int argc, char **argv);
} commands[] = {
    {"keys", cmd_keys},
    {"status", cmd_status},
};

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    ctl_t c = {0};
    char *path = NULL, *err = NULL;
    const char *socket_opt = NULL;
    int opt, r = 2;

    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL);
    while ((opt = getopt_long(argc, argv, "+s:hV", opts, NULL)) != -1) {
        switch (opt) {
        case 's':
            socket_opt = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("p11agentctl %s\n", P11AGENT_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(commands[i].name, argv[optind]) != 0)
            continue;
        /* --socket wins over P11AGENT_SOCKET, which wins over the default. */
        path = socket_opt ? strdup(socket_opt) : bus_socket_path(NULL);
        if (!path) {
            fprintf(stderr, "p11agentctl: cannot determine the agent's socket\n");
            return 1;
        }
        c.socket_path = path;
        r = bus_client_connect(path, &c.conn, &err);
        if (r < 0) {
            fprintf(stderr, "p11agentctl: %s\n", err ? err : bus_err_str(r));
            r = 1;
        } else {
            r = commands[i].fn(&c, argc - optind, argv + optind);
        }
        bus_client_close(c.conn);
        free(err);
        free(path);
        return r;
    }
    fprintf(stderr, "p11agentctl: unknown command '%s'\n", argv[optind]);
    usage(stderr);
    return 2;
}
