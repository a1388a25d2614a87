/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Who may connect, who may use which key, and which PIN source a token uses. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"

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

int agent_client_read_creds(agent_client_t *c, int fd)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    char path[64];
    ssize_t n;

    if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return -errno;
    c->uid = cred.uid;
    c->gid = cred.gid;
    c->pid = cred.pid;
    read_groups(c);
    /* The executable at connect time. A process that execs something else
     * afterwards keeps its connection only if it keeps the socket open
     * across exec, which libdbus prevents (CLOEXEC). */
    snprintf(path, sizeof(path), "/proc/%d/exe", (int)c->pid);
    n = readlink(path, c->exe, sizeof(c->exe) - 1);
    c->exe[n > 0 ? n : 0] = '\0';
    return 0;
}

bool agent_peer_admitted(const agent_t *a, const agent_client_t *c)
{
    if (c->uid == a->owner)
        return true;
    if (!a->system_mode)
        return false;
    return c->uid == 0 ||
           agent_id_list_allows(&a->conf.allow, c->uid, c->gid, c->groups, c->n_groups);
}

bool agent_key_allowed_locked(const agent_t *a, size_t i, const agent_client_t *c,
                              const char **why)
{
    const agent_key_policy_t *p = i < a->n_key_policies ? a->key_policies[i] : NULL;
    bool exe_ok = false;

    if (!p)
        return true;
    if (p->has_ids && (c->via_session_bus ||
                       !agent_id_list_allows(&p->allow, c->uid, c->gid, c->groups, c->n_groups))) {
        *why = "its user and groups are not in the key's allow-users/allow-groups";
        return false;
    }
    if (p->n_exes == 0)
        return true;
    for (size_t j = 0; j < p->n_exes && !exe_ok; j++)
        exe_ok = c->exe[0] && strcmp(p->exes[j], c->exe) == 0;
    if (!exe_ok)
        *why = "its executable is not in the key's allow-exe";
    return exe_ok;
}

/* Does the URI select this key / token? */
static bool uri_selects_key(const tok_ctx_t *ctx, const char *uri, const tok_key_t *k)
{
    const tok_key_t **keys = NULL;
    size_t n = 0;
    bool hit = false;

    if (tok_find_keys(ctx, uri, &keys, &n) != TOK_OK)
        return false;
    for (size_t i = 0; i < n && !hit; i++)
        hit = keys[i] == k;
    free(keys);
    return hit;
}

void agent_policy_update_locked(agent_t *a)
{
    size_t n = tok_ctx_n_keys(a->tok);
    const agent_key_policy_t **p = NULL;

    free(a->key_policies);
    a->key_policies = NULL;
    a->n_key_policies = 0;
    if (a->conf.n_keys == 0 || n == 0)
        return;
    p = calloc(n, sizeof(*p));
    if (!p) {
        /* Fail closed: without the table no key with a policy is usable. */
        agent_err("out of memory computing key policies; refusing signatures");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const tok_key_t *k = tok_ctx_key(a->tok, i);

        for (size_t j = 0; j < a->conf.n_keys && !p[i]; j++)
            if (uri_selects_key(a->tok, a->conf.keys[j].uri, k))
                p[i] = &a->conf.keys[j];
    }
    a->key_policies = p;
    a->n_key_policies = n;
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
