/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* p11agentctl: talks to p11agentd like any client (dbus/ only). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "bus.h"
#include "ctl.h"
#include "pinmax.h"
#include "keyref.h"
#include "config.h"

static bool c_json_mode; /* print_flags: JSON or words */

typedef struct ctl {
    DBusConnection *conn;
    const char *socket_path;
    bool json;
} ctl_t;

static void usage(FILE *f)
{
    fprintf(f, "Usage: p11agentctl [--socket PATH] COMMAND [ARG...]\n"
               "Ask a running p11agentd about its tokens and keys.\n"
               "\n"
               "Commands:\n"
               "  keys [URI]          list the keys (all, or those matching a pkcs11: URI)\n"
               "  tokens              list the tokens, their login state and when it expires\n"
               "  status              the agent's version, tokens, keys, clients, counters\n"
               "  unlock [-t DURATION] [--final-try] [TOKEN-URI]\n"
               "                      log in to a token with a PIN typed here (no echo; without\n"
               "                      a terminal, the first line of standard input); -t ends\n"
               "                      this login (and wipes the PIN) after DURATION (90, 15m,\n"
               "                      8h, 1d), like ssh-add -t; at the token's final PIN try\n"
               "                      only with --final-try (a wrong PIN then locks the PIN)\n"
               "  lock TOKEN-URI|--all    log out and wipe cached PINs\n"
               "  forget TOKEN-URI|--all  wipe cached PINs, stay logged in\n"
               "  stop                stop the agent (its user and root only)\n"
               "  ref URI -o FILE [--force]\n"
               "                      write a key-reference file (mode 0600) naming the one\n"
               "                      key that matches URI, for programs that only take a\n"
               "                      key file; it holds the key's canonical URI, never a PIN\n"
               "  cert URI -o FILE [--force]\n"
               "                      write the token's certificate of that key (PEM)\n"
               "  pubkey URI [-o FILE] [--force]\n"
               "                      write the key's public key (PEM), to standard output\n"
               "                      unless -o is given\n"
               "  ref and cert never replace an existing FILE without --force;\n"
               "  -o - writes to standard output.\n"
               "\n"
               "Options:\n"
               "  -s, --socket PATH  the agent's socket (default: $P11AGENT_SOCKET, else\n"
               "                     $XDG_RUNTIME_DIR/p11agent/agent.sock)\n"
               "  -j, --json         print keys, tokens and status as JSON\n"
               "  -h, --help         show this help\n"
               "  -V, --version      show the version\n");
}

static void print_subject(const uint8_t *der, size_t len)
{
    char *subject = NULL, expiry[32];

    if (!cert_summary(der, len, &subject, expiry)) {
        printf("    certificate: (unparsable, %zu bytes)\n", len);
        return;
    }
    printf("    certificate: %s\n    expires: %s\n", subject ? subject : "?", expiry);
    OPENSSL_free(subject);
}

static int cmd_keys(ctl_t *c, int argc, char **argv)
{
    bus_key_info_t *keys = NULL;
    size_t n = 0;
    char *err = NULL, *subject = NULL, fp[64], expiry[32];
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
    if (c->json) {
        printf("[");
        for (size_t i = 0; i < n; i++) {
            const bus_key_info_t *k = &keys[i];

            printf("%s{\"uri\":", i ? "," : "");
            json_str(k->uri);
            printf(",\"type\":");
            json_str(bus_key_type_name(k->type));
            printf(",\"bits\":%u,\"group\":", k->bits);
            json_str(k->group);
            printf(",\"label\":");
            json_str(k->label);
            printf(",\"token\":");
            json_str(k->token);
            spki_fingerprint(k->spki, k->spki_len, fp);
            printf(",\"fingerprint\":");
            json_str(fp);
            printf(",\"logged_in\":%s,\"has_certificate\":%s,\"flags\":%u",
                   (k->flags & BUS_KEY_LOGGED_IN) ? "true" : "false",
                   k->cert_len ? "true" : "false", k->flags);
            if (k->cert_len && cert_summary(k->cert, k->cert_len, &subject, expiry)) {
                printf(",\"certificate\":{\"subject\":");
                json_str(subject);
                printf(",\"not_after\":");
                json_str(expiry);
                printf("}");
                OPENSSL_free(subject);
                subject = NULL;
            }
            printf("}");
        }
        printf("]\n");
    }
    for (size_t i = 0; !c->json && i < n; i++) {
        const bus_key_info_t *k = &keys[i];

        printf("%s\n", k->uri);
        spki_fingerprint(k->spki, k->spki_len, fp);
        printf("    type: %s %u%s%s\n", bus_key_type_name(k->type), k->bits,
               k->group[0] ? " " : "", k->group);
        printf("    fingerprint: %s\n", fp);
        printf("    label: %s\n    token: %s%s\n", k->label, k->token,
               (k->flags & BUS_KEY_LOGGED_IN) ? " (logged in)" : "");
        printf("    mechanisms:%s%s%s%s\n", (k->flags & BUS_KEY_CAN_RSA_PKCS1) ? " RSA-PKCS" : "",
               (k->flags & BUS_KEY_CAN_RSA_PSS) ? " RSA-PSS" : "",
               (k->flags & BUS_KEY_CAN_ECDSA) ? " ECDSA" : "",
               (k->flags & BUS_KEY_CAN_EDDSA) ? " EdDSA" : "");
        if (k->cert_len)
            print_subject(k->cert, k->cert_len);
    }
    bus_key_info_free_array(keys, n);
    if (n == 0 && argc == 2) {
        fprintf(stderr, "p11agentctl: no key matches '%s' (p11agentctl keys lists them all)\n",
                argv[1]);
        return 1;
    }
    return 0;
}

/* Commands without arguments say so instead of ignoring them. */
static bool no_args(int argc, char **argv)
{
    if (argc <= 1)
        return true;
    fprintf(stderr, "p11agentctl: %s takes no arguments (got '%s')\n", argv[0], argv[1]);
    return false;
}

static int cmd_status(ctl_t *c, int argc, char **argv)
{
    bus_status_t s = {0};
    char *err = NULL;
    int r;

    if (!no_args(argc, argv))
        return 2;
    r = bus_client_status(c->conn, BUS_CALL_TIMEOUT_MS, &s, &err);
    if (r < 0) {
        fprintf(stderr, "p11agentctl: %s\n", err ? err : bus_err_str(r));
        free(err);
        return 1;
    }
    if (c->json) {
        printf("{\"version\":");
        json_str(s.version);
        printf(",\"pid\":%u,\"socket\":", s.pid);
        json_str(c->socket_path);
        printf(",\"tokens\":%u,\"keys\":%u,\"clients\":%u,\"signatures\":%llu,"
               "\"sign_failures\":%llu,\"decryptions\":%llu,\"decrypt_failures\":%llu}\n",
               s.tokens, s.keys, s.clients, (unsigned long long)s.signatures,
               (unsigned long long)s.sign_failures, (unsigned long long)s.decryptions,
               (unsigned long long)s.decrypt_failures);
        bus_status_clear(&s);
        return 0;
    }
    printf("agent: p11agentd %s (pid %u)\n", s.version ? s.version : "?", s.pid);
    printf("socket: %s\n", c->socket_path);
    printf("tokens: %u\nkeys: %u\nclients: %u\n", s.tokens, s.keys, s.clients);
    printf("signatures: %llu\nsign-failures: %llu\n", (unsigned long long)s.signatures,
           (unsigned long long)s.sign_failures);
    printf("decryptions: %llu\ndecrypt-failures: %llu\n", (unsigned long long)s.decryptions,
           (unsigned long long)s.decrypt_failures);
    bus_status_clear(&s);
    return 0;
}

/* Options of ref/cert: URI -o FILE [--force]. */
typedef struct out_args {
    const char *uri;
    const char *out;
    bool force;
} out_args_t;

static int parse_out_args(const char *cmd, int argc, char **argv, out_args_t *a,
                          const char *default_out)
{
    static const struct option opts[] = {
        {"output", required_argument, NULL, 'o'},
        {"force", no_argument, NULL, 'f'},
        {NULL, 0, NULL, 0},
    };
    int opt;

    optind = 0; /* glibc: full reinitialisation */
    while ((opt = getopt_long(argc, argv, "o:f", opts, NULL)) != -1) {
        switch (opt) {
        case 'o':
            a->out = optarg;
            break;
        case 'f':
            a->force = true;
            break;
        default:
            return 2;
        }
    }
    if (a->out == NULL)
        a->out = default_out;
    if (optind != argc - 1 || a->out == NULL) {
        fprintf(stderr, "p11agentctl: usage: %s URI %s [--force]\n", cmd,
                default_out ? "[-o FILE]" : "-o FILE");
        return 2;
    }
    a->uri = argv[optind];
    return 0;
}

/* The one key matching uri, or an error message and NULL. */
static int find_one(ctl_t *c, const char *uri, bus_key_info_t **ret_keys, size_t *ret_n)
{
    bus_key_info_t *keys = NULL;
    size_t n = 0;
    char *err = NULL;
    int r;

    r = bus_client_find_keys(c->conn, uri, BUS_CALL_TIMEOUT_MS, &keys, &n, &err);
    if (r < 0) {
        if (err)
            fprintf(stderr, "p11agentctl: %s\n", err);
        else
            fprintf(stderr, "p11agentctl: %s: %s\n", uri, bus_err_str(r));
        free(err);
        return 1;
    }
    if (n != 1) {
        if (n == 0)
            fprintf(stderr, "p11agentctl: no key matches '%s'\n", uri);
        else
            fprintf(stderr, "p11agentctl: '%s' matches %zu keys; a reference names exactly "
                            "one (see p11agentctl keys '%s')\n", uri, n, uri);
        bus_key_info_free_array(keys, n);
        return 1;
    }
    *ret_keys = keys;
    *ret_n = n;
    return 0;
}

static int cmd_ref(ctl_t *c, int argc, char **argv)
{
    out_args_t a = {0};
    bus_key_info_t *keys = NULL;
    size_t n = 0, der_len = 0, pem_len = 0;
    uint8_t *der = NULL;
    char *pem = NULL;
    const char *why = NULL;
    int r;

    if ((r = parse_out_args("ref", argc, argv, &a, NULL)) != 0)
        return r;
    if (bus_keyref_check_uri(a.uri, &why) < 0) {
        fprintf(stderr, "p11agentctl: %s: %s\n", a.uri, why);
        return 1;
    }
    if ((r = find_one(c, a.uri, &keys, &n)) != 0)
        return r;
    r = 1;
    if (bus_keyref_encode(keys[0].uri, keys[0].type, &der, &der_len, &why) < 0) {
        fprintf(stderr, "p11agentctl: cannot reference %s: %s\n", keys[0].uri,
                why ? why : "out of memory");
        goto out;
    }
    pem = pem_encode(BUS_KEYREF_PEM_LABEL, der, der_len, &pem_len);
    if (pem == NULL) {
        fprintf(stderr, "p11agentctl: out of memory\n");
        goto out;
    }
    r = write_file(a.out, pem, pem_len, 0600, a.force);
    if (r == 0 && strcmp(a.out, "-") != 0)
        fprintf(stderr, "p11agentctl: wrote %s for %s\n", a.out, keys[0].uri);
out:
    free(pem);
    free(der);
    bus_key_info_free_array(keys, n);
    return r;
}

/* cert/pubkey URI -o FILE: the token's certificate of the one key matching
 * URI, or its public key, as PEM. */
static int write_key_pem(ctl_t *c, int argc, char **argv, bool cert)
{
    const char *cmd = cert ? "cert" : "pubkey";
    out_args_t a = {0};
    bus_key_info_t *keys = NULL;
    size_t n = 0, pem_len = 0;
    char *pem = NULL;
    int r;

    if ((r = parse_out_args(cmd, argc, argv, &a, cert ? NULL : "-")) != 0)
        return r;
    if ((r = find_one(c, a.uri, &keys, &n)) != 0)
        return r;
    r = 1;
    if (cert && (keys[0].cert == NULL || keys[0].cert_len == 0)) {
        fprintf(stderr, "p11agentctl: the token has no certificate for %s\n", keys[0].uri);
        goto out;
    }
    pem = cert ? pem_encode("CERTIFICATE", keys[0].cert, keys[0].cert_len, &pem_len)
               : pem_encode("PUBLIC KEY", keys[0].spki, keys[0].spki_len, &pem_len);
    if (pem == NULL) {
        fprintf(stderr, "p11agentctl: out of memory\n");
        goto out;
    }
    r = write_file(a.out, pem, pem_len, 0644, a.force);
out:
    free(pem);
    bus_key_info_free_array(keys, n);
    return r;
}

/* pubkey URI [-o FILE]: what `openssl pkey -pubout` prints, to stdout by
 * default */
static int cmd_pubkey(ctl_t *c, int argc, char **argv)
{
    return write_key_pem(c, argc, argv, false);
}

static int cmd_cert(ctl_t *c, int argc, char **argv)
{
    return write_key_pem(c, argc, argv, true);
}

/* The token's flags: its state (logged in or out, PIN cached) apart from
 * what the token says of itself (login-required, pin-pad, PIN counters). */
static const struct {
    uint32_t bit;
    const char *name;
} token_flag_names[] = {
    {BUS_TOKEN_LOGGED_IN, "logged-in"},         {BUS_TOKEN_PIN_CACHED, "pin-cached"},
    {BUS_TOKEN_PIN_PAD, "pin-pad"},             {BUS_TOKEN_LOGIN_REQUIRED, "login-required"},
    {BUS_TOKEN_PIN_COUNT_LOW, "pin-count-low"}, {BUS_TOKEN_PIN_FINAL_TRY, "pin-final-try"},
    {BUS_TOKEN_PIN_LOCKED, "pin-locked"},
};

#define TOKEN_STATE_BITS (BUS_TOKEN_LOGGED_IN | BUS_TOKEN_PIN_CACHED)

/* Names of the bits of f within mask: JSON strings or words. */
static void print_flags(uint32_t f, uint32_t mask)
{
    bool first = true;

    for (size_t i = 0; i < sizeof(token_flag_names) / sizeof(token_flag_names[0]); i++) {
        if (!(f & mask & token_flag_names[i].bit))
            continue;
        if (c_json_mode)
            printf("%s\"%s\"", first ? "" : ",", token_flag_names[i].name);
        else
            printf("%s%s", first ? "" : " ", token_flag_names[i].name);
        first = false;
    }
    if (first && !c_json_mode)
        printf("-");
}

static int cmd_tokens(ctl_t *c, int argc, char **argv)
{
    bus_token_info_t *t = NULL;
    size_t n = 0;
    char *err = NULL;
    int r;

    if (!no_args(argc, argv))
        return 2;
    r = bus_client_list_tokens(c->conn, BUS_CALL_TIMEOUT_MS, &t, &n, &err);

    if (r < 0) {
        fprintf(stderr, "p11agentctl: %s\n", err ? err : bus_err_str(r));
        free(err);
        return 1;
    }
    c_json_mode = c->json;
    if (c->json)
        printf("[");
    for (size_t i = 0; i < n; i++) {
        if (c->json) {
            printf("%s{\"uri\":", i ? "," : "");
            json_str(t[i].uri);
            printf(",\"label\":");
            json_str(t[i].label);
            printf(",\"keys\":%u,\"expires\":%lld,\"state\":\"%s\",\"pin_cached\":%s,"
                   "\"flags\":[",
                   t[i].keys, (long long)t[i].expires,
                   (t[i].flags & BUS_TOKEN_LOGGED_IN) ? "logged-in" : "logged-out",
                   (t[i].flags & BUS_TOKEN_PIN_CACHED) ? "true" : "false");
            print_flags(t[i].flags, ~0u);
            printf("]}");
            continue;
        }
        printf("%s\n    label: %s\n    keys: %u\n    state: %s", t[i].uri, t[i].label,
               t[i].keys, (t[i].flags & BUS_TOKEN_LOGGED_IN) ? "logged-in" : "logged-out");
        if (t[i].flags & BUS_TOKEN_PIN_CACHED)
            printf(" pin-cached");
        printf("\n    token: ");
        print_flags(t[i].flags, ~(uint32_t)TOKEN_STATE_BITS);
        if (t[i].expires) {
            long long left = (long long)t[i].expires - (long long)time(NULL);

            printf("\n    login expires: in %lld s", left > 0 ? left : 0);
        }
        printf("\n");
    }
    if (c->json)
        printf("]\n");
    bus_token_info_free_array(t, n);
    return 0;
}

/* Reads a PIN without echo from the terminal (or, with no terminal, the
 * first line of standard input) into locked memory. Keeps at most size - 1
 * bytes and reports the length typed (which may be more) in *ret_len. */
static int read_pin(const char *prompt, char *buf, size_t size, size_t *ret_len)
{
    struct termios old, quiet;
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
    bool tty = fd >= 0 && tcgetattr(fd, &old) == 0;
    size_t len = 0;
    char ch;

    if (!tty) {
        if (fd >= 0)
            close(fd);
        fd = STDIN_FILENO;
    } else {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
        quiet.c_lflag |= ICANON;
        if (write(fd, prompt, strlen(prompt)) < 0 || tcsetattr(fd, TCSAFLUSH, &quiet) < 0) {
            close(fd);
            return -EIO;
        }
    }
    while (read(fd, &ch, 1) == 1 && ch != '\n' && ch != '\r') {
        if (len + 1 < size)
            buf[len] = ch;
        len++;
    }
    buf[len < size ? len : size - 1] = '\0';
    ch = 0;
    if (tty) {
        tcsetattr(fd, TCSAFLUSH, &old);
        if (write(fd, "\n", 1) < 0) {
            /* the newline is cosmetic */
        }
        close(fd);
    }
    *ret_len = len;
    return len ? 0 : -ENODATA;
}

/* "90", "90s", "15m", "8h", "1d" -> seconds, 1 s to 30 days. */
static int parse_duration(const char *text, uint32_t *ret)
{
    static const struct {
        char unit;
        unsigned long mul;
    } units[] = {{'s', 1}, {'m', 60}, {'h', 3600}, {'d', 86400}};
    unsigned long v, mul = 1;
    char *end;

    if (!text[0] || text[0] == '-' || text[0] == '+')
        return -EINVAL;
    errno = 0;
    v = strtoul(text, &end, 10);
    if (errno || end == text)
        return -EINVAL;
    if (*end) {
        mul = 0;
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
            if (end[0] == units[i].unit && end[1] == '\0')
                mul = units[i].mul;
    }
    if (!mul || v == 0 || v > 30ul * 86400 / mul)
        return -EINVAL;
    *ret = (uint32_t)(v * mul);
    return 0;
}

static int cmd_unlock(ctl_t *c, int argc, char **argv)
{
    const char *uri = "";
    char *pin, *err = NULL, prompt[512];
    size_t len = 0, size = 4096;
    unsigned flags = 0;
    uint32_t lifetime = 0;
    int r, uris = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--final-try") == 0) {
            flags |= BUS_UNLOCK_FINAL_TRY;
        } else if (strcmp(argv[i], "-t") == 0 || strcmp(argv[i], "--lifetime") == 0) {
            if (i + 1 >= argc || parse_duration(argv[i + 1], &lifetime) < 0) {
                fprintf(stderr, "p11agentctl: unlock: %s takes a duration: seconds, or a number "
                                "with s, m, h or d (e.g. 30m), from 1 s to 30 d\n",
                        argv[i]);
                return 2;
            }
            i++;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "p11agentctl: unlock: unknown option '%s'\n", argv[i]);
            return 2;
        } else {
            uri = argv[i];
            uris++;
        }
    }
    if (uris > 1) {
        fprintf(stderr, "p11agentctl: unlock takes at most one token URI\n");
        return 2;
    }
    pin = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pin == MAP_FAILED)
        return 1;
    (void)mlock(pin, size);
    snprintf(prompt, sizeof(prompt), "PIN for %s: ", uri[0] ? uri : "the token");
    r = read_pin(prompt, pin, PIN_MAX + 1, &len);
    if (r < 0) {
        fprintf(stderr, "p11agentctl: no PIN entered\n");
        r = 1;
        goto out;
    }
    if (len > PIN_MAX) {
        fprintf(stderr, "p11agentctl: the PIN entered is %zu bytes; a PIN is at most %d\n", len,
                PIN_MAX);
        r = 1;
        goto out;
    }
    /* Connected only now: the agent closes a connection that sends no
     * request within its auth-timeout, and typing a PIN takes longer. */
    r = bus_client_connect(c->socket_path, &c->conn, &err);
    if (r == 0)
        r = bus_client_unlock(c->conn, uri, pin, len, flags, lifetime, BUS_CALL_TIMEOUT_MS, &err);
    if (r < 0) {
        fprintf(stderr, "p11agentctl: %s\n", err ? err : bus_err_str(r));
        r = 1;
    } else {
        printf("unlocked\n");
        r = 0;
    }
out:
    explicit_bzero(pin, size);
    munlock(pin, size);
    munmap(pin, size);
    free(err);
    return r;
}

static int lock_common(ctl_t *c, int argc, char **argv, bool forget)
{
    const char *uri = "";
    uint32_t count = 0;
    char *err = NULL;
    int r;

    if (argc == 2 && strcmp(argv[1], "--all") != 0)
        uri = argv[1];
    else if (argc != 2) {
        fprintf(stderr, "p11agentctl: %s takes a token URI or --all\n", argv[0]);
        return 2;
    }
    r = bus_client_lock(c->conn, uri, forget, BUS_CALL_TIMEOUT_MS, &count, &err);
    if (r < 0) {
        fprintf(stderr, "p11agentctl: %s\n", err ? err : bus_err_str(r));
        free(err);
        return 1;
    }
    printf("%s %u token%s\n", forget ? "forgot the PINs of" : "locked", count,
           count == 1 ? "" : "s");
    return 0;
}

static int cmd_lock(ctl_t *c, int argc, char **argv)
{
    return lock_common(c, argc, argv, false);
}

static int cmd_forget(ctl_t *c, int argc, char **argv)
{
    return lock_common(c, argc, argv, true);
}

static int cmd_stop(ctl_t *c, int argc, char **argv)
{
    char *err = NULL;
    int r;

    if (!no_args(argc, argv))
        return 2;
    r = bus_client_stop(c->conn, BUS_CALL_TIMEOUT_MS, &err);
    if (r < 0) {
        fprintf(stderr, "p11agentctl: %s\n", err ? err : bus_err_str(r));
        free(err);
        return 1;
    }
    printf("stopping\n");
    return 0;
}

static const struct {
    const char *name;
    int (*fn)(ctl_t *c, int argc, char **argv);
} commands[] = {
    {"keys", cmd_keys},
    {"status", cmd_status},
    {"ref", cmd_ref},
    {"cert", cmd_cert},
    {"pubkey", cmd_pubkey},
    {"tokens", cmd_tokens},
    {"unlock", cmd_unlock},
    {"lock", cmd_lock},
    {"forget", cmd_forget},
    {"stop", cmd_stop},
};

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    ctl_t c = {0};
    char *path = NULL, *err = NULL;
    const char *socket_opt = NULL;
    int opt, r = 2;

    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL);
    while ((opt = getopt_long(argc, argv, "+s:jhV", opts, NULL)) != -1) {
        switch (opt) {
        case 's':
            socket_opt = optarg;
            break;
        case 'j':
            c.json = true;
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
    /* "keys --json" as well as "--json keys": take the flag out of the
     * command's arguments */
    for (int i = optind + 1, o = optind + 1; i <= argc; i++) {
        if (i < argc && (strcmp(argv[i], "-j") == 0 || strcmp(argv[i], "--json") == 0)) {
            c.json = true;
            continue;
        }
        argv[o++] = argv[i]; /* argv[argc] is NULL */
        if (i == argc)
            argc = o - 1;
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
        /* unlock connects once it has the PIN */
        r = commands[i].fn == cmd_unlock ? 0 : bus_client_connect(path, &c.conn, &err);
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
