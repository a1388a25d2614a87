/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Asking the user for a PIN through a pinentry program (the Assuan protocol
 * over its stdin/stdout, as gpg-agent does). The prompt names the token, the
 * key and the program that asked, and warns when few tries are left. What the
 * pinentry sends back is read into locked memory and wiped.
 */
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "agent.h"
#include "pinmax.h"
#include "buf.h"

#define PROMPT_TIMEOUT_MS 120000
#define LINE_MAX_LEN 2048

static void describe(const agent_prompt_t *p, char *desc, size_t size);

bool agent_can_prompt(agent_t *a)
{
    bool have;

    pthread_mutex_lock(&a->prompter_lock);
    have = a->prompter_name != NULL || a->pinentry != NULL;
    pthread_mutex_unlock(&a->prompter_lock);
    return have;
}

int agent_prompter_register(agent_t *a, const char *name, const char *path)
{
    char *n = strdup(name), *p = strdup(path);

    if (!n || !p) {
        free(n);
        free(p);
        return -ENOMEM;
    }
    pthread_mutex_lock(&a->prompter_lock);
    free(a->prompter_name);
    free(a->prompter_path);
    a->prompter_name = n;
    a->prompter_path = p;
    pthread_mutex_unlock(&a->prompter_lock);
    agent_info("PIN prompter registered: %s %s", name, path);
    return 0;
}

void agent_prompter_unregister(agent_t *a, const char *name)
{
    pthread_mutex_lock(&a->prompter_lock);
    if (a->prompter_name && (!name || strcmp(a->prompter_name, name) == 0)) {
        agent_info("PIN prompter %s gone", a->prompter_name);
        free(a->prompter_name);
        free(a->prompter_path);
        a->prompter_name = a->prompter_path = NULL;
    }
    pthread_mutex_unlock(&a->prompter_lock);
}

/* String values (labels from the module, the client's path, a description
 * that may have been cut inside a character) go through bus_append_string:
 * libdbus aborts the agent on invalid UTF-8. */
static dbus_bool_t dict_add(DBusMessageIter *dict, const char *key, int type, const void *val)
{
    DBusMessageIter e, v;
    char sig[2] = {(char)type, 0};

    return dbus_message_iter_open_container(dict, DBUS_TYPE_DICT_ENTRY, NULL, &e) &&
           dbus_message_iter_append_basic(&e, DBUS_TYPE_STRING, &key) &&
           dbus_message_iter_open_container(&e, DBUS_TYPE_VARIANT, sig, &v) &&
           (type == DBUS_TYPE_STRING ? bus_append_string(&v, *(const char *const *)val)
                                     : dbus_message_iter_append_basic(&v, type, val)) &&
           dbus_message_iter_close_container(&e, &v) &&
           dbus_message_iter_close_container(dict, &e);
}

/* Asks the registered desktop prompter. -ENOENT: none (or it went away). */
static int prompt_bus(agent_t *a, const agent_prompt_t *p, agent_secret_t *ret, char **errmsg)
{
    DBusMessage *call = NULL, *reply = NULL;
    DBusMessageIter it, dict;
    DBusError err;
    char *name = NULL, *path = NULL, desc[1024];
    const char *token = p->token_label ? p->token_label : "",
               *key = p->key_label ? p->key_label : "", *key_uri = p->key_uri ? p->key_uri : "",
               *program = p->client && p->client->exe[0] ? p->client->exe : "",
               *error = p->error ? p->error : "", *d = desc, *pin = NULL;
    dbus_uint32_t pid = p->client && !p->client->via_session_bus ? (dbus_uint32_t)p->client->pid
                                                                    : 0;
    dbus_bool_t once = p->context_specific, low = (p->token_flags & CKF_USER_PIN_COUNT_LOW) != 0,
                final = (p->token_flags & CKF_USER_PIN_FINAL_TRY) != 0;
    int r = -ENOENT;

    pthread_mutex_lock(&a->prompter_lock);
    if (a->prompter_name) {
        name = strdup(a->prompter_name);
        path = strdup(a->prompter_path);
    }
    pthread_mutex_unlock(&a->prompter_lock);
    if (!name || !path || !a->session_bus)
        goto out;
    describe(p, desc, sizeof(desc));
    call = dbus_message_new_method_call(name, path, "org.p11agent.Prompter1", "GetPin");
    if (!call)
        goto oom;
    dbus_message_iter_init_append(call, &it);
    if (!dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict) ||
        !dict_add(&dict, "token", DBUS_TYPE_STRING, &token) ||
        !dict_add(&dict, "key", DBUS_TYPE_STRING, &key) ||
        !dict_add(&dict, "key-uri", DBUS_TYPE_STRING, &key_uri) ||
        !dict_add(&dict, "program", DBUS_TYPE_STRING, &program) ||
        !dict_add(&dict, "pid", DBUS_TYPE_UINT32, &pid) ||
        !dict_add(&dict, "description", DBUS_TYPE_STRING, &d) ||
        !dict_add(&dict, "error", DBUS_TYPE_STRING, &error) ||
        !dict_add(&dict, "context-specific", DBUS_TYPE_BOOLEAN, &once) ||
        !dict_add(&dict, "tries-low", DBUS_TYPE_BOOLEAN, &low) ||
        !dict_add(&dict, "final-try", DBUS_TYPE_BOOLEAN, &final) ||
        !dbus_message_iter_close_container(&it, &dict))
        goto oom;
    dbus_error_init(&err);
    reply = dbus_connection_send_with_reply_and_block(a->session_bus, call, PROMPT_TIMEOUT_MS,
                                                      &err);
    if (!reply) {
        if (dbus_error_has_name(&err, "org.p11agent.Prompter1.Error.Cancelled")) {
            r = -ECANCELED;
        } else {
            /* the prompter is gone or broken: drop it, let pinentry ask */
            agent_warn("PIN prompter %s failed: %s", name, err.message);
            agent_prompter_unregister(a, name);
            r = -ENOENT;
        }
        dbus_error_free(&err);
        goto out;
    }
    if (!dbus_message_get_args(reply, NULL, DBUS_TYPE_STRING, &pin, DBUS_TYPE_INVALID) || !pin[0]) {
        r = -ECANCELED;
        goto out;
    }
    r = agent_secret_new(ret, pin, strlen(pin));
    /* libdbus's copy goes with the reply; wipe it first */
    explicit_bzero((char *)pin, strlen(pin));
    goto out;
oom:
    r = -ENOMEM;
out:
    if (r < 0 && r != -ENOENT && errmsg && !*errmsg &&
        asprintf(errmsg, "%s", r == -ECANCELED ? "the PIN prompt was cancelled"
                               : r == -E2BIG  ? "the PIN entered is longer than " PIN_MAX_STR
                                                " bytes (p11agent's limit)"
                                               : "the PIN prompt failed") < 0)
        *errmsg = NULL;
    if (call)
        dbus_message_unref(call);
    if (reply)
        dbus_message_unref(reply);
    free(name);
    free(path);
    return r;
}

typedef struct assuan {
    pid_t pid;
    int to;   /* its stdin */
    int from; /* its stdout */
    agent_secret_t buf; /* incoming bytes: may hold the PIN */
    size_t have;
    size_t consumed; /* bytes of the line last returned, dropped on the next read */
    int64_t deadline_ms;
} assuan_t;

static int spawn(const char *path, assuan_t *as)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1};
    sigset_t all;
    pid_t pid;

    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0)
        goto fail;
    pid = fork();
    if (pid < 0)
        goto fail;
    if (pid == 0) {
        /* async-signal-safe calls only: the agent has other threads */
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGPIPE, SIG_DFL);
        if (dup2(in[0], STDIN_FILENO) < 0 || dup2(out[1], STDOUT_FILENO) < 0)
            _exit(127);
        execl(path, path, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    as->pid = pid;
    as->to = in[1];
    as->from = out[0];
    return 0;
fail:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0)
            close(in[i]);
        if (out[i] >= 0)
            close(out[i]);
    }
    return -errno;
}

static void assuan_close(assuan_t *as)
{
    int status;

    if (as->to >= 0)
        close(as->to);
    if (as->from >= 0)
        close(as->from);
    as->to = as->from = -1;
    if (as->pid > 0) {
        /* a pinentry that does not leave on EOF is ended */
        for (int i = 0; i < 20 && waitpid(as->pid, &status, WNOHANG) == 0; i++) {
            if (i == 10)
                kill(as->pid, SIGTERM);
            usleep(10000);
        }
        if (waitpid(as->pid, &status, WNOHANG) == 0) {
            kill(as->pid, SIGKILL);
            waitpid(as->pid, &status, 0);
        }
        as->pid = -1;
    }
    agent_secret_free(&as->buf);
}

static int send_line(assuan_t *as, const char *line)
{
    size_t len = strlen(line), off = 0;

    while (off < len) {
        ssize_t n = write(as->to, line + off, len - off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -EPIPE;
        off += (size_t)n;
    }
    return write(as->to, "\n", 1) == 1 ? 0 : -EPIPE;
}

/* Drops the line last returned (wiping what it held). */
static void consume(assuan_t *as)
{
    if (!as->consumed)
        return;
    memmove(as->buf.buf, as->buf.buf + as->consumed, as->have - as->consumed);
    as->have -= as->consumed;
    explicit_bzero(as->buf.buf + as->have, as->consumed);
    as->consumed = 0;
}

/* Reads one line, NUL-terminated, in as->buf; it is dropped on the next call. */
static int read_line(assuan_t *as, char **ret_line)
{
    char *nl;

    consume(as);
    for (;;) {
        struct pollfd p = {.fd = as->from, .events = POLLIN};
        int64_t left = as->deadline_ms - agent_now_ms();
        ssize_t n;

        nl = memchr(as->buf.buf, '\n', as->have);
        if (nl) {
            *nl = '\0';
            as->consumed = (size_t)(nl - as->buf.buf) + 1;
            *ret_line = as->buf.buf;
            return 0;
        }
        if (as->have >= LINE_MAX_LEN)
            return -E2BIG;
        if (left <= 0)
            return -ETIMEDOUT;
        if (poll(&p, 1, (int)left) <= 0)
            continue;
        n = read(as->from, as->buf.buf + as->have, LINE_MAX_LEN - as->have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -EPIPE;
        as->have += (size_t)n;
    }
}

/* Sends a command and waits for OK or ERR. D lines go to ret (unescaped) if
 * given. A D line with a bad escape ("%zz", "%4") or a NUL ("%00") makes the
 * whole answer -EPROTO, one that does not fit the PIN -E2BIG: never a PIN
 * with a NUL inside or silently cut. The lines up to OK/ERR are still read,
 * so the conversation stays in step. */
static int transact(assuan_t *as, const char *cmd, agent_secret_t *ret)
{
    char *line;
    int r, bad = 0;

    if (cmd && (r = send_line(as, cmd)) < 0)
        return r;
    for (;;) {
        r = read_line(as, &line);
        if (r < 0)
            break;
        if (strncmp(line, "OK", 2) == 0 && (line[2] == '\0' || line[2] == ' ')) {
            r = bad;
            break;
        }
        if (strncmp(line, "ERR", 3) == 0) {
            /* 83886179: operation cancelled; 83886194: timeout */
            r = strstr(line, "83886179") || strstr(line, "ancel") ? -ECANCELED : -EIO;
            break;
        }
        if (strncmp(line, "D ", 2) == 0 && ret) {
            size_t limit = ret->cap - 1 < PIN_MAX ? ret->cap - 1 : PIN_MAX, n = 0;
            int st;

            if (bad == 0) {
                st = buf_percent_decode(line + 2, strlen(line + 2), (uint8_t *)ret->buf + ret->len,
                                        limit - ret->len, &n);
                if (st != BUF_OK)
                    bad = st == BUF_ERR_TOO_LARGE ? -E2BIG : -EPROTO;
                ret->len += n;
            }
            if (bad != 0) {
                explicit_bzero(ret->buf, ret->cap);
                ret->len = 0;
            }
            ret->buf[ret->len] = '\0';
        } else if (strncmp(line, "INQUIRE", 7) == 0) {
            if ((r = send_line(as, "CAN")) < 0)
                break;
        }
        /* S (status) and # (comment) lines are ignored */
    }
    consume(as);
    return r;
}

/* "CMD text" with text percent-escaped as Assuan wants (%, CR, LF). */
static int send_escaped(assuan_t *as, const char *cmd, const char *text)
{
    char line[LINE_MAX_LEN];
    size_t o = (size_t)snprintf(line, sizeof(line), "%s ", cmd);

    for (const char *p = text; *p && o + 4 < sizeof(line); p++) {
        if (*p == '%' || *p == '\n' || *p == '\r')
            o += (size_t)snprintf(line + o, sizeof(line) - o, "%%%02X", (unsigned char)*p);
        else
            line[o++] = *p;
    }
    line[o] = '\0';
    return transact(as, line, NULL);
}

/* The terminal the client runs on, if any (for pinentry-tty/curses). */
static bool client_tty(const agent_client_t *c, char *buf, size_t size)
{
    char path[64];

    if (!c || c->via_session_bus || c->pid <= 0)
        return false;
    for (int fd = 0; fd < 3; fd++) {
        ssize_t n;

        snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)c->pid, fd);
        n = readlink(path, buf, size - 1);
        if (n <= 0)
            continue;
        buf[n] = '\0';
        if (strncmp(buf, "/dev/pts/", 9) == 0 || strncmp(buf, "/dev/tty", 8) == 0)
            return true;
    }
    return false;
}

static void describe(const agent_prompt_t *p, char *desc, size_t size)
{
    const agent_client_t *c = p->client;
    const char *exe = c && c->exe[0] ? strrchr(c->exe, '/') : NULL;
    char who[320] = "";

    if (c && !c->via_session_bus && c->pid > 0)
        snprintf(who, sizeof(who), "\nRequested by %s (pid %ld).", exe ? exe + 1 : "a program",
                 (long)c->pid);
    if (p->confirm) {
        snprintf(desc, size,
                 "Allow %s (pid %ld, uid %ld) to %s with key \"%s\" on token \"%s\"?",
                 exe ? exe + 1 : "a program", c ? (long)c->pid : -1L, c ? (long)c->uid : -1L,
                 p->decrypt ? "decrypt" : "sign",
                 p->key_label && p->key_label[0] ? p->key_label : (p->key_uri ? p->key_uri : "?"),
                 p->token_label ? p->token_label : "?");
        return;
    }
    snprintf(desc, size, "%s for token \"%s\"%s%s%s.%s%s",
             p->context_specific ? (p->decrypt ? "Enter the PIN to decrypt once"
                                               : "Enter the PIN to sign once")
                                 : "Please enter the PIN",
             p->token_label ? p->token_label : "?",
             p->key_label && p->key_label[0] ? " to use key \"" : "",
             p->key_label && p->key_label[0] ? p->key_label : "",
             p->key_label && p->key_label[0] ? "\"" : "", who,
             (p->token_flags & CKF_USER_PIN_FINAL_TRY)
                     ? "\n\nWARNING: this is the FINAL try; a wrong PIN locks the token."
             : (p->token_flags & CKF_USER_PIN_COUNT_LOW)
                     ? "\n\nWarning: only a few PIN tries are left."
                     : "");
}

static int open_pinentry(agent_t *a, const agent_prompt_t *p, assuan_t *as, char **errmsg)
{
    char tty[128], opt[256], desc[1024], prog[PATH_MAX];
    const char *term = getenv("TERM");
    int r;

    *as = (assuan_t){.pid = -1, .to = -1, .from = -1};
    /* a reload (SIGHUP) may replace a->pinentry: use a copy */
    pthread_mutex_lock(&a->prompter_lock);
    snprintf(prog, sizeof(prog), "%s", a->pinentry ? a->pinentry : "");
    pthread_mutex_unlock(&a->prompter_lock);
    if (!prog[0])
        return -ENOENT;
    r = agent_secret_new(&as->buf, "", 0);
    if (r < 0)
        return r;
    as->deadline_ms = agent_now_ms() + PROMPT_TIMEOUT_MS;
    r = spawn(prog, as);
    if (r < 0) {
        if (errmsg && asprintf(errmsg, "cannot run %s: %s", prog, strerror(-r)) < 0)
            *errmsg = NULL;
        agent_secret_free(&as->buf);
        return r;
    }
    r = transact(as, NULL, NULL); /* the greeting */
    if (r == 0 && client_tty(p->client, tty, sizeof(tty))) {
        snprintf(opt, sizeof(opt), "OPTION ttyname=%s", tty);
        r = transact(as, opt, NULL);
        snprintf(opt, sizeof(opt), "OPTION ttytype=%s", term && term[0] ? term : "xterm");
        if (r == 0)
            r = transact(as, opt, NULL);
    }
    describe(p, desc, sizeof(desc));
    if (r == 0)
        r = send_escaped(as, "SETTITLE", "p11agent");
    if (r == 0)
        r = send_escaped(as, "SETDESC", desc);
    if (r < 0 && errmsg && asprintf(errmsg, "%s did not speak the pinentry protocol (%s)",
                                    prog, strerror(-r)) < 0)
        *errmsg = NULL;
    return r;
}

int agent_prompt_pin(agent_t *a, const agent_prompt_t *p, agent_secret_t *ret, char **errmsg)
{
    agent_secret_t pin = {0};
    assuan_t as;
    int r;

    if (!agent_can_prompt(a))
        return -ENOENT;
    r = prompt_bus(a, p, ret, errmsg);
    if (r != -ENOENT)
        return r;
    r = open_pinentry(a, p, &as, errmsg);
    if (r < 0)
        goto out;
    r = send_escaped(&as, "SETPROMPT", "PIN:");
    if (r == 0 && p->error)
        r = send_escaped(&as, "SETERROR", p->error);
    if (r == 0)
        r = agent_secret_new(&pin, "", 0);
    if (r == 0)
        r = transact(&as, "GETPIN", &pin);
    if (r == 0 && pin.len == 0)
        r = -ECANCELED;
    if (r == 0 && pin.len > PIN_MAX)
        r = -E2BIG; /* the reader keeps PIN_MAX + 1 bytes to tell */
    if (r < 0) {
        agent_secret_free(&pin);
        if (errmsg && !*errmsg &&
            asprintf(errmsg, "%s",
                     r == -ECANCELED   ? "the PIN prompt was cancelled"
                     : r == -ETIMEDOUT ? "the PIN prompt timed out"
                     : r == -EPROTO    ? "the PIN prompt sent a malformed PIN (bad %-escape or NUL)"
                     : r == -E2BIG     ? "the PIN entered is longer than " PIN_MAX_STR
                                         " bytes (p11agent's limit)"
                                       : "the PIN prompt failed") < 0)
            *errmsg = NULL;
        goto out;
    }
    (void)transact(&as, "BYE", NULL);
    *ret = pin;
out:
    assuan_close(&as);
    return r;
}

int agent_prompt_confirm(agent_t *a, const agent_prompt_t *p, char **errmsg)
{
    assuan_t as;
    int r;

    r = open_pinentry(a, p, &as, errmsg);
    if (r < 0)
        goto out;
    r = send_escaped(&as, "SETOK", "Allow");
    if (r == 0)
        r = send_escaped(&as, "SETCANCEL", "Deny");
    if (r == 0)
        r = transact(&as, "CONFIRM", NULL);
    if (r < 0 && r != -ECANCELED && errmsg && !*errmsg &&
        asprintf(errmsg, "%s", r == -ETIMEDOUT ? "the confirmation prompt timed out"
                                               : "the confirmation prompt failed") < 0)
        *errmsg = NULL;
    if (r == 0)
        (void)transact(&as, "BYE", NULL);
out:
    assuan_close(&as);
    return r;
}

/* --- PIN pad notice: a pinentry MESSAGE shown while the reader asks --- */

typedef struct notice {
    assuan_t as;
} notice_t;

static void *notice_thread(void *data)
{
    notice_t *n = data;

    (void)transact(&n->as, "MESSAGE", NULL); /* returns when dismissed or killed */
    assuan_close(&n->as);
    free(n);
    return NULL;
}

pid_t agent_prompt_notice_begin(agent_t *a, const agent_prompt_t *p)
{
    notice_t *n;
    pthread_t th;
    pid_t pid;

    {
        char label[AGENT_LABEL_ESC_MAX];

        agent_info("token '%s': enter the PIN on the reader's PIN pad",
                   agent_esc(label, sizeof(label), p->token_label));
    }
    agent_emit_signal(a, "PinPadPrompt", p->token_label, p->key_uri ? p->key_uri : "");
    if (!agent_can_prompt(a) || !(n = calloc(1, sizeof(*n))))
        return -1;
    {
        agent_prompt_t q = *p;
        char desc[1024];

        if (open_pinentry(a, &q, &n->as, NULL) < 0) {
            assuan_close(&n->as);
            free(n);
            return -1;
        }
        snprintf(desc, sizeof(desc), "Enter the PIN for token \"%s\" on the reader's PIN pad.",
                 p->token_label);
        (void)send_escaped(&n->as, "SETDESC", desc);
    }
    pid = n->as.pid;
    if (pthread_create(&th, NULL, notice_thread, n) != 0) {
        assuan_close(&n->as);
        free(n);
        return -1;
    }
    pthread_detach(th);
    return pid;
}

void agent_prompt_notice_end(pid_t pid)
{
    if (pid > 0)
        kill(pid, SIGTERM); /* the thread reaps it */
}
