/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Who may connect, who may use which key, and which PIN source a token uses. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"
#include "text.h"

/* Supplementary groups from /proc/PID/status ("Groups:\t1 2 3"). */
static void read_groups(agent_client_t *c)
{
    char path[64], line[4096];
    FILE *f;

    c->n_groups = 0;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)c->pid);
    f = fopen(path, "re");
    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        char *p = line + 7, *end;

        if (strncmp(line, "Groups:", 7) != 0)
            continue;
        while (c->n_groups < AGENT_MAX_GROUPS) {
            unsigned long g = strtoul(p, &end, 10);

            if (end == p)
                break;
            c->groups[c->n_groups++] = (gid_t)g;
            p = end;
        }
        break;
    }
    fclose(f);
}

int agent_proc_identity(pid_t pid, char *exe, size_t exe_size, unsigned long long *ret_start)
{
    char path[64], stat[1024], *p;
    unsigned long long start = 0;
    int dfd = -1, fd = -1, r;
    ssize_t n;

    if (exe_size < 2 || pid <= 0)
        return -EINVAL;
    exe[0] = '\0';
    /* One directory fd for both reads: if the pid is reused meanwhile, the
     * fd still names the old process and the reads fail (ESRCH). */
    snprintf(path, sizeof(path), "/proc/%ld", (long)pid);
    dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        r = errno == ENOENT ? -ESRCH : -errno;
        goto out;
    }
    fd = openat(dfd, "stat", O_RDONLY | O_CLOEXEC);
    n = fd < 0 ? -1 : read(fd, stat, sizeof(stat) - 1);
    if (n <= 0) {
        r = n == 0 || errno == ENOENT ? -ESRCH : -errno;
        goto out;
    }
    stat[n] = '\0';
    /* "pid (comm) state ppid ...": comm may hold spaces and ')'; field 22
     * (starttime) is the 20th after the last ')'. */
    p = strrchr(stat, ')');
    for (int field = 2; p && field < 22; field++)
        p = strchr(p + 1, ' ');
    if (!p || sscanf(p + 1, "%llu", &start) != 1) {
        r = -EIO;
        goto out;
    }
    n = readlinkat(dfd, "exe", exe, exe_size);
    if (n < 0) {
        r = errno == ENOENT ? -ESRCH : -errno;
        exe[0] = '\0';
        goto out;
    }
    if ((size_t)n >= exe_size) {
        /* readlink does not say it cut the path: a full buffer may be one */
        exe[exe_size - 1] = '\0';
        r = -ENAMETOOLONG;
        goto out;
    }
    exe[n] = '\0';
    *ret_start = start;
    r = 0;
out:
    if (fd >= 0)
        close(fd);
    if (dfd >= 0)
        close(dfd);
    return r;
}

int agent_client_read_creds(agent_client_t *c, int fd)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);

    if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return -errno;
    c->uid = cred.uid;
    c->gid = cred.gid;
    c->pid = cred.pid;
    read_groups(c);
    /* The executable and start time at connect time. They are read again
     * for each request on a key with allow-exe (agent_client_exe_check):
     * the connecting process may exec another program while a child it
     * forked keeps the socket. */
    c->exe_err = -agent_proc_identity(c->pid, c->exe, sizeof(c->exe), &c->start_time);
    if (c->exe_err == ENAMETOOLONG)
        c->exe[0] = '\0';
    return 0;
}

/* Ends in " (deleted)": the file was removed or replaced since it started. */
static bool exe_deleted(const char *exe)
{
    size_t n = strlen(exe), s = strlen(" (deleted)");

    return n > s && strcmp(exe + n - s, " (deleted)") == 0;
}

int agent_client_exe_check(const agent_client_t *c, char *exe, size_t exe_size, char *why,
                           size_t why_size)
{
    unsigned long long start = 0;
    char esc[2][300];
    int r;

    exe[0] = '\0';
    if (c->via_session_bus || c->pid <= 0) {
        snprintf(why, why_size, "the agent does not know the executable of a session-bus caller");
        return -ESRCH;
    }
    r = agent_proc_identity(c->pid, exe, exe_size, &start);
    if (r == -EACCES || r == -EPERM || (r == 0 && !exe[0])) {
        snprintf(why, why_size,
                 "the agent (uid %ld) cannot read /proc/%ld/exe of this uid %ld process: it "
                 "needs CAP_SYS_PTRACE for allow-exe (systemd: a drop-in with "
                 "AmbientCapabilities=CAP_SYS_PTRACE and CapabilityBoundingSet=CAP_SYS_PTRACE, "
                 "see p11agentd(1))",
                 (long)geteuid(), (long)c->pid, (long)c->uid);
        return r < 0 ? r : -EACCES;
    }
    if (r == -ESRCH || (r == 0 && start != c->start_time)) {
        snprintf(why, why_size,
                 "the process that connected (pid %ld) has exited%s; a connection is "
                 "checked against the process that opened it",
                 (long)c->pid, r == 0 ? " and its pid was reused" : "");
        return -ESRCH;
    }
    if (r == -ENAMETOOLONG) {
        snprintf(why, why_size,
                 "its executable path is longer than %zu bytes; allow-exe needs the whole "
                 "path (install the program under a shorter path)",
                 exe_size - 1);
        return r;
    }
    if (r < 0) {
        snprintf(why, why_size, "the agent cannot read /proc/%ld/exe: %s", (long)c->pid,
                 strerror(-r));
        return r;
    }
    text_escape(esc[0], sizeof(esc[0]), exe, strlen(exe));
    if (exe_deleted(exe)) {
        snprintf(why, why_size,
                 "its executable \"%s\" was deleted or replaced since the program started "
                 "(restart the program)",
                 esc[0]);
        return -ENOENT;
    }
    if (c->exe_err || strcmp(exe, c->exe) != 0) {
        text_escape(esc[1], sizeof(esc[1]), c->exe, strlen(c->exe));
        snprintf(why, why_size,
                 "its executable changed since it connected (\"%s\", now \"%s\"): a "
                 "connection inherited across exec is not trusted; connect again from the "
                 "allowed program",
                 c->exe_err ? "unknown" : esc[1], esc[0]);
        return -ESTALE;
    }
    return 0;
}

bool agent_peer_admitted(agent_t *a, const agent_client_t *c)
{
    bool ok;

    if (c->uid == a->owner)
        return true;
    if (!a->system_mode)
        return false;
    if (c->uid == 0)
        return true;
    /* a reload replaces a->conf under the write lock */
    pthread_rwlock_rdlock(&a->keys_lock);
    ok = agent_id_list_allows(&a->conf.allow, c->uid, c->gid, c->groups, c->n_groups);
    pthread_rwlock_unlock(&a->keys_lock);
    return ok;
}

bool agent_may_lock_unlock(agent_t *a, const agent_client_t *c)
{
    bool ok;

    if (c->via_session_bus || c->uid == a->owner || c->uid == 0)
        return true;
    pthread_rwlock_rdlock(&a->keys_lock);
    ok = agent_id_list_allows(&a->conf.allow_unlock, c->uid, c->gid, c->groups, c->n_groups);
    pthread_rwlock_unlock(&a->keys_lock);
    return ok;
}

bool agent_key_allowed_locked(const agent_t *a, size_t i, const agent_client_t *c, char *why,
                              size_t why_size)
{
    const agent_key_policy_t *p;
    char exe[sizeof(c->exe)], esc[300];
    bool exe_ok = false;

    /* Fail closed: [key] sections exist but the table that says which one
     * applies to this key could not be computed (out of memory). */
    if (a->conf.n_keys > 0 && (!a->key_policies || i >= a->n_key_policies)) {
        snprintf(why, why_size,
                 "the agent could not work out the key policies (out of memory at the last "
                 "token scan); every key is refused until a rescan succeeds");
        return false;
    }
    p = i < a->n_key_policies ? a->key_policies[i] : NULL;
    if (!p)
        return true;
    if (p->has_ids && (c->via_session_bus ||
                       !agent_id_list_allows(&p->allow, c->uid, c->gid, c->groups, c->n_groups))) {
        snprintf(why, why_size,
                 "its user and groups are not in the key's allow-users/allow-groups");
        return false;
    }
    if (p->n_exes == 0)
        return true;
    /* Checked again for every request, not only at connect. */
    if (agent_client_exe_check(c, exe, sizeof(exe), why, why_size) < 0)
        return false;
    for (size_t j = 0; j < p->n_exes && !exe_ok; j++)
        exe_ok = strcmp(p->exes[j], exe) == 0;
    if (!exe_ok) {
        text_escape(esc, sizeof(esc), exe, strlen(exe));
        snprintf(why, why_size, "its executable \"%s\" is not in the key's allow-exe", esc);
    }
    return exe_ok;
}

/* Does the URI select this key? 1 yes, 0 no, a negative TOK_ERR_* when the
 * lookup failed (out of memory: the caller must not read that as "no"). */
static int uri_selects_key(const tok_ctx_t *ctx, const char *uri, const tok_key_t *k)
{
    const tok_key_t **keys = NULL;
    size_t n = 0;
    int r, hit = 0;

    r = tok_find_keys(ctx, uri, &keys, &n);
    if (r == TOK_ERR_ARGS)
        return 0; /* a [key] URI that does not parse selects nothing */
    if (r < 0)
        return r;
    for (size_t i = 0; i < n && !hit; i++)
        hit = keys[i] == k;
    free(keys);
    return hit;
}

/* Is t one of the tokens the URI selects? -ENOMEM, 0 or 1. */
static int uri_selects_token(tok_ctx_t *tok, const char *uri, const tok_token_t *t)
{
    tok_token_t **toks = NULL;
    size_t n = 0;
    bool hit = false;
    int r = tok_find_tokens(tok, uri, &toks, &n);

    if (r == TOK_ERR_NO_MEMORY)
        return -ENOMEM;
    for (size_t i = 0; r == TOK_OK && i < n && !hit; i++)
        hit = toks[i] == t;
    free(toks);
    return hit;
}

/* Each token's session cap: max-sessions of the first [token] section that
 * selects it and sets one, else of [agent], else the token layer's default. */
static void sessions_update_locked(agent_t *a)
{
    for (size_t i = 0; i < tok_ctx_n_tokens(a->tok); i++) {
        tok_token_t *t = tok_ctx_token(a->tok, i);
        unsigned n = a->conf.max_sessions;

        for (size_t j = 0; j < a->conf.n_tokens; j++)
            if (a->conf.tokens[j].max_sessions > 0 &&
                uri_selects_token(a->tok, a->conf.tokens[j].uri, t) > 0) {
                n = a->conf.tokens[j].max_sessions;
                break;
            }
        tok_token_set_max_sessions(t, n);
    }
}

void agent_policy_update_locked(agent_t *a)
{
    size_t n = tok_ctx_n_keys(a->tok);
    const agent_key_policy_t **p = NULL;

    sessions_update_locked(a);
    free(a->key_policies);
    a->key_policies = NULL;
    a->n_key_policies = 0;
    if (a->conf.n_keys == 0 || n == 0)
        return;
    p = calloc(n, sizeof(*p));
    if (!p)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        const tok_key_t *k = tok_ctx_key(a->tok, i);

        for (size_t j = 0; j < a->conf.n_keys && !p[i]; j++) {
            int r = uri_selects_key(a->tok, a->conf.keys[j].uri, k);

            if (r < 0)
                goto oom;
            if (r)
                p[i] = &a->conf.keys[j];
        }
    }
    a->key_policies = p;
    a->n_key_policies = n;
    return;
oom:
    /* Fail closed: without the table agent_key_allowed_locked refuses every key. */
    free(p);
    agent_err("out of memory computing key policies; refusing every key until the next rescan");
}

const agent_pin_source_t *agent_pin_source_for_locked(agent_t *a, tok_token_t *t)
{
    for (size_t i = 0; i < a->conf.n_tokens; i++) {
        tok_token_t **toks = NULL;
        size_t n = 0;
        bool hit = false;

        if (tok_find_tokens(a->tok, a->conf.tokens[i].uri, &toks, &n) != TOK_OK)
            continue;
        for (size_t j = 0; j < n && !hit; j++)
            hit = toks[j] == t;
        free(toks);
        if (hit && a->token_pin_sources[i].kind != AGENT_PIN_NONE)
            return &a->token_pin_sources[i];
    }
    return &a->pin_source;
}
