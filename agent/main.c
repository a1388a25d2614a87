/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* p11agentd: keeps keys on PKCS#11 tokens and signs with them for clients. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <stddef.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "agent.h"
#include "config.h"

#define MAX_MODULES 32

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: p11agentd [OPTION...]\n"
            "Keep private keys on smart cards and HSMs (PKCS#11) and sign with them for\n"
            "applications (through the p11agent OpenSSL provider) over D-Bus.\n"
            "\n"
            "  -f, --foreground        stay in the foreground (default: detach once ready)\n"
            "  -m, --module PATH       load this PKCS#11 module (may repeat); without it the\n"
            "                          modules registered with p11-kit are loaded\n"
            "  -s, --socket PATH       listen on PATH (default:\n"
            "                          $XDG_RUNTIME_DIR/p11agent/agent.sock)\n"
            "  -p, --pin-source SPEC   where token PINs come from: file:PATH (first line of\n"
            "                          the file; a PIN the token rejects is not retried\n"
            "                          until the file changes, even after a restart) or\n"
            "                          credential:NAME (systemd LoadCredential=)\n"
            "  -c, --config PATH       read this agent.conf (default:\n"
            "                          $XDG_CONFIG_HOME/p11agent/agent.conf, or\n"
            "                          /etc/p11agent/agent.conf with --system)\n"
            "      --pinentry PATH     the PIN prompt program (pinentry, Assuan protocol);\n"
            "                          also pinentry= in agent.conf\n"
            "      --system            system mode: socket /run/p11agent/agent.sock, clients\n"
            "                          admitted by allow-users/allow-groups in the config,\n"
            "                          PIN files readable by other users refused\n"
            "      --idle-exit TIME    when started by socket activation, exit after this\n"
            "                          long with no client and no token logged in\n"
            "                          (seconds or 30s, 15m, 8h, 1d; default 10m; 0: never)\n"
            "  -d, --debug CATS        debug logging: bus,sign,pin,pkcs11 or all, a comma-\n"
            "                          separated list (the same as P11AGENT_DEBUG=CATS)\n"
            "  -h, --help              show this help\n"
            "  -V, --version           show the version\n"
            "\n"
            "Signals: SIGTERM/SIGINT stop the agent; SIGHUP reloads agent.conf (a file that\n"
            "does not parse is refused and the settings in force stay) and rescans the\n"
            "tokens. Settings: agent.conf(5).\n");
}

/* The token layer's word on a module's bad answers (hostile text escaped). */
static void tok_warning(void *data, const char *msg)
{
    agent_warn("%s", msg);
}

static void on_signal(void *userdata, int fd, short revents)
{
    agent_t *a = userdata;
    struct signalfd_siginfo si;

    if (read(fd, &si, sizeof(si)) != sizeof(si))
        return;
    if (si.ssi_signo == SIGHUP) {
        agent_info("SIGHUP: reloading agent.conf and rescanning tokens");
        agent_reload_conf(a);
        agent_rescan(a);
        return;
    }
    agent_info("signal %u: stopping", si.ssi_signo);
    agent_loop_quit(a->loop);
}

/* Detaches from the terminal; the parent exits once the child says it is
 * ready (or failed), so that `p11agentd && client` works. Returns the write
 * end of the readiness pipe in the child. */
static int daemonize(void)
{
    int p[2];
    pid_t pid;
    char c = 1;

    if (pipe(p) < 0)
        return -errno;
    pid = fork();
    if (pid < 0)
        return -errno;
    if (pid > 0) {
        close(p[1]);
        if (read(p[0], &c, 1) != 1)
            c = 1;
        _exit(c == 0 ? EXIT_SUCCESS : EXIT_FAILURE);
    }
    close(p[0]);
    setsid();
    return p[1];
}

static void signal_ready(int *fd, bool ok)
{
    char c = ok ? 0 : 1;

    if (*fd < 0)
        return;
    if (write(*fd, &c, 1) != 1) {
        /* the parent is gone; nothing to tell */
    }
    close(*fd);
    *fd = -1;
    if (ok) {
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);

        if (null >= 0) {
            /* the terminal that started us is left alone from now on */
            agent_log_to_syslog();
            dup2(null, STDIN_FILENO);
            dup2(null, STDOUT_FILENO);
            dup2(null, STDERR_FILENO);
            close(null);
        }
    }
}

/* Started by systemd socket activation with our socket? */
static bool socket_activated(void)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");

    return pid && fds && strtol(pid, NULL, 10) == (long)getpid() && strtol(fds, NULL, 10) >= 1;
}

/* sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET. */
static void notify_systemd(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    socklen_t len;
    int fd;

    if (!path || (path[0] != '/' && path[0] != '@') || strlen(path) >= sizeof(sa.sun_path))
        return;
    strcpy(sa.sun_path, path);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace */
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, len) < 0)
        agent_debug(AGENT_DBG_BUS, "sd_notify: %s", strerror(errno));
    close(fd);
}

static bool any_token_logged_in(agent_t *a)
{
    bool any = false;

    pthread_rwlock_rdlock(&a->keys_lock);
    for (size_t i = 0; i < tok_ctx_n_tokens(a->tok) && !any; i++)
        any = tok_token_logged_in(tok_ctx_token(a->tok, i));
    pthread_rwlock_unlock(&a->keys_lock);
    return any;
}

/* Socket-activated agents leave when nobody needs them: no client, no
 * token logged in (a login is state worth keeping), for idle_exit_s. */
static void check_idle(agent_t *a)
{
    unsigned clients;

    pthread_mutex_lock(&a->clients_lock);
    clients = a->n_clients + a->n_pending;
    pthread_mutex_unlock(&a->clients_lock);
    if (clients > 0 || any_token_logged_in(a)) {
        a->idle_since_ms = 0;
        return;
    }
    if (!a->idle_since_ms)
        a->idle_since_ms = agent_now_ms();
    else if (agent_now_ms() - a->idle_since_ms >= (int64_t)a->idle_exit_s * 1000) {
        agent_info("idle for %u s with no token logged in: exiting (socket activation starts "
                   "the agent again on demand)",
                   a->idle_exit_s);
        agent_loop_quit(a->loop);
    }
}

/* The main loop's clock: idle exit, PIN cache expiry, slot polling. */
static void on_tick(void *userdata, int fd, short revents)
{
    agent_t *a = userdata;
    uint64_t ticks;

    if (read(fd, &ticks, sizeof(ticks)) != sizeof(ticks))
        return;
    if (a->idle_exit_s)
        check_idle(a);
    agent_cache_tick(a);
    agent_hotplug_tick(a);
    /* requests from the session bus are served by this thread */
    agent_audit_flush(a, &a->bus_client, false);
}

static int start_tick_timer(agent_t *a)
{
    struct itimerspec its = {0};
    long period_ms = a->idle_exit_s && a->idle_exit_s < 4 ? (long)a->idle_exit_s * 250 : 1000;
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);

    if (fd < 0) {
        agent_err("timerfd: %s", strerror(errno));
        return -errno;
    }
    its.it_interval.tv_sec = period_ms / 1000;
    its.it_interval.tv_nsec = (period_ms % 1000) * 1000000;
    its.it_value = its.it_interval;
    if (timerfd_settime(fd, 0, &its, NULL) < 0 ||
        agent_loop_add_fd(a->loop, fd, POLLIN, on_tick, a) < 0) {
        agent_err("cannot start the main loop's timer");
        close(fd);
        return -EIO;
    }
    return fd;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"foreground", no_argument, NULL, 'f'}, {"module", required_argument, NULL, 'm'},
        {"socket", required_argument, NULL, 's'}, {"pin-source", required_argument, NULL, 'p'},
        {"debug", required_argument, NULL, 'd'},  {"help", no_argument, NULL, 'h'},
        {"config", required_argument, NULL, 'c'}, {"system", no_argument, NULL, 'S'},
        {"idle-exit", required_argument, NULL, 'I'},
        {"pinentry", required_argument, NULL, 'P'},
        {"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0},
    };
    const char *modules[MAX_MODULES];
    size_t n_modules = 0;
    const char *debug = getenv("P11AGENT_DEBUG");
    bool foreground = false;
    const char *config_path = NULL;
    char *default_config = NULL;
    agent_t a;
    struct rlimit no_core = {0, 0};
    sigset_t mask;
    char *errmsg = NULL, *health = NULL;
    int c, r, sfd = -1, tfd = -1, ready_fd = -1, ret = EXIT_FAILURE;

    /* This process must never load the p11agent provider (it would call
     * itself): no openssl.cnf, and the provider stands down if loaded. */
    if (agent_init(&a) < 0) {
        fprintf(stderr, "p11agentd: out of memory\n");
        return EXIT_FAILURE;
    }
    /* A thread per client would otherwise give each its own malloc arena. */
    mallopt(M_ARENA_MAX, 2);
    setenv("P11AGENT_AGENT_PROCESS", "1", 1);
    dbus_threads_init_default();
    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL);
    /* PINs live in this process: no core dumps, no ptrace by other processes. */
    setrlimit(RLIMIT_CORE, &no_core);
    prctl(PR_SET_DUMPABLE, 0);
    signal(SIGPIPE, SIG_IGN);

    while ((c = getopt_long(argc, argv, "fm:s:p:d:c:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'f':
            foreground = true;
            break;
        case 'm':
            if (n_modules == MAX_MODULES) {
                fprintf(stderr, "p11agentd: at most %d --module options\n", MAX_MODULES);
                return EXIT_FAILURE;
            }
            modules[n_modules++] = optarg;
            break;
        case 's':
            free(a.socket_path);
            a.socket_path = strdup(optarg);
            break;
        case 'p':
            agent_pin_source_clear(&a.pin_source);
            if (agent_pin_source_parse(optarg, &a.pin_source, &errmsg) < 0) {
                fprintf(stderr, "p11agentd: %s\n", errmsg ? errmsg : "bad --pin-source");
                free(errmsg);
                return EXIT_FAILURE;
            }
            a.cli_pin_source = true;
            break;
        case 'd':
            debug = optarg;
            break;
        case 'c':
            config_path = optarg;
            break;
        case 'S':
            a.system_mode = true;
            break;
        case 'P':
            free(a.pinentry);
            a.pinentry = strdup(optarg);
            a.cli_pinentry = true;
            break;
        case 'I':
            if (agent_conf_parse_duration(optarg, 0, 86400ul * 365, &a.idle_exit_s) < 0) {
                fprintf(stderr, "p11agentd: --idle-exit '%s': expected a duration from 0 to 365d "
                                "(seconds, or a number with a unit: 30s, 15m, 8h, 1d)\n",
                        optarg);
                return EXIT_FAILURE;
            }
            a.cli_idle_exit = true;
            break;
        case 'h':
            usage(stdout);
            return EXIT_SUCCESS;
        case 'V':
            printf("p11agentd %s\n", P11AGENT_VERSION);
            return EXIT_SUCCESS;
        default:
            usage(stderr);
            return EXIT_FAILURE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "p11agentd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return EXIT_FAILURE;
    }
    /* One list for both: the token layer reads P11AGENT_DEBUG for pkcs11. */
    if (debug && setenv("P11AGENT_DEBUG", debug, 1) < 0) {
        fprintf(stderr, "p11agentd: out of memory\n");
        return EXIT_FAILURE;
    }
    agent_log_init(debug);

    if (!config_path) {
        const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");

        if (a.system_mode)
            default_config = strdup(P11AGENT_SYSCONFDIR "/p11agent/agent.conf");
        else if (xdg && xdg[0] == '/' &&
                 asprintf(&default_config, "%s/p11agent/agent.conf", xdg) < 0)
            default_config = NULL;
        else if ((!xdg || xdg[0] != '/') && home && home[0] == '/' &&
                 asprintf(&default_config, "%s/.config/p11agent/agent.conf", home) < 0)
            default_config = NULL;
    }
    a.cli_modules = n_modules > 0;
    a.conf_path = config_path ? strdup(config_path) : default_config;
    default_config = NULL;
    a.conf_required = config_path != NULL;
    r = agent_conf_load(a.conf_path ? a.conf_path : "/nonexistent", a.conf_required, &a.conf,
                        &errmsg);
    if (r < 0) {
        agent_err("%s", errmsg ? errmsg : "cannot read the configuration");
        goto out; /* frees what the options allocated */
    }
    if (n_modules == 0) {
        for (size_t i = 0; i < a.conf.n_modules && n_modules < MAX_MODULES; i++)
            modules[n_modules++] = a.conf.modules[i];
    }
    a.socket_activated = socket_activated();
    if (agent_apply_conf(&a, &errmsg) < 0) {
        agent_err("%s", errmsg ? errmsg : "bad configuration");
        goto out; /* frees what the options allocated */
    }
    if (!a.socket_path)
        a.socket_path = a.system_mode ? strdup("/run/p11agent/agent.sock")
                                      : bus_default_socket_path();
    if (!a.socket_path) {
        agent_err("cannot determine the socket path");
        goto out; /* frees what the options allocated */
    }

    if (!foreground) {
        ready_fd = daemonize();
        if (ready_fd < 0) {
            agent_err("cannot detach: %s", strerror(-ready_fd));
            goto out;
        }
    }

    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        agent_err("signalfd: %s", strerror(errno));
        goto out;
    }

    r = tok_ctx_new(modules, n_modules, &a.tok, &errmsg);
    if (r < 0) {
        agent_err("%s", errmsg ? errmsg : tok_strerror(r));
        goto out;
    }
    tok_ctx_set_warn(a.tok, tok_warning, NULL);
    agent_rescan(&a);

    if (agent_loop_new(&a.loop) < 0 || agent_loop_add_fd(a.loop, sfd, POLLIN, on_signal, &a) < 0) {
        agent_err("out of memory");
        goto out;
    }
    r = agent_server_start(&a, &errmsg);
    if (r < 0) {
        agent_err("%s", errmsg ? errmsg : strerror(-r));
        goto out;
    }
    agent_session_bus_start(&a);
    a.last_poll_ms = agent_now_ms();
    tfd = start_tick_timer(&a);
    if (tfd < 0)
        goto out;
    agent_info("ready: %zu keys on %zu tokens; listening on %s%s", tok_ctx_n_keys(a.tok),
               tok_ctx_n_tokens(a.tok),
               a.socket_activated ? "the socket passed by systemd" : a.socket_path,
               a.idle_exit_s ? " (exits when idle)" : "");
    health = agent_health(&a);
    if (health)
        agent_warn("ready, but %s", health);
    signal_ready(&ready_fd, true);
    {
        char *state = NULL;

        if (asprintf(&state, "READY=1\nSTATUS=%s%s", health ? "cannot sign yet: " : "serving",
                     health ? health : " every token") < 0)
            state = NULL;
        notify_systemd(state ? state : "READY=1");
        free(state);
    }

    r = agent_loop_run(a.loop);
    notify_systemd("STOPPING=1");
    if (r < 0)
        agent_err("main loop: %s", strerror(-r));
    else
        ret = EXIT_SUCCESS;
out:
    signal_ready(&ready_fd, false);
    if (!agent_server_stop(&a)) {
        /* a client thread is still inside the token: leave it all to exit() */
        return ret;
    }
    agent_loop_free(a.loop);
    tok_ctx_free(a.tok);
    agent_done(&a);
    free(errmsg);
    free(health);
    if (sfd >= 0)
        close(sfd);
    if (tfd >= 0)
        close(tfd);
    return ret;
}
