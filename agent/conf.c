/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* agent.conf parsing (format in conf.h). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

#define CONF_MAX_SIZE (1u << 20)

static char *trim(char *s)
{
    char *e;

    while (isspace((unsigned char)*s))
        s++;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static int parse_number(const char *s, unsigned long max, unsigned long *ret)
{
    char *end;
    unsigned long v;

    if (!*s || !isdigit((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || *end || v > max)
        return -EINVAL;
    *ret = v;
    return 0;
}

int agent_conf_lookup_user(const char *name, uid_t *ret)
{
    struct passwd pw, *res = NULL;
    char buf[4096];
    unsigned long n;

    if (parse_number(name, UINT_MAX - 1, &n) == 0) {
        *ret = (uid_t)n;
        return 0;
    }
    if (getpwnam_r(name, &pw, buf, sizeof(buf), &res) != 0 || !res)
        return -ENOENT;
    *ret = res->pw_uid;
    return 0;
}

int agent_conf_lookup_group(const char *name, gid_t *ret)
{
    struct group gr, *res = NULL;
    char buf[16384];
    unsigned long n;

    if (parse_number(name, UINT_MAX - 1, &n) == 0) {
        *ret = (gid_t)n;
        return 0;
    }
    if (getgrnam_r(name, &gr, buf, sizeof(buf), &res) != 0 || !res)
        return -ENOENT;
    *ret = res->gr_gid;
    return 0;
}

bool agent_id_list_allows(const agent_id_list_t *l, uid_t uid, gid_t gid, const gid_t *groups,
                          size_t n_groups)
{
    for (size_t i = 0; i < l->n_uids; i++)
        if (l->uids[i] == uid)
            return true;
    for (size_t i = 0; i < l->n_gids; i++) {
        if (l->gids[i] == gid)
            return true;
        for (size_t j = 0; j < n_groups; j++)
            if (l->gids[i] == groups[j])
                return true;
    }
    return false;
}

/* Appends every word of `value` through `add`. */
static int for_each_word(char *value, int (*add)(void *ctx, const char *word), void *ctx)
{
    char *save = NULL;
    int r;

    for (char *w = strtok_r(value, " \t,", &save); w; w = strtok_r(NULL, " \t,", &save))
        if ((r = add(ctx, w)) < 0)
            return r;
    return 0;
}

typedef struct word_ctx {
    agent_id_list_t *ids;
    char ***strs;
    size_t *n_strs;
    const char *bad; /* the word that failed */
} word_ctx_t;

static int add_user(void *p, const char *w)
{
    word_ctx_t *c = p;
    uid_t uid, *n;

    if (agent_conf_lookup_user(w, &uid) < 0) {
        c->bad = w;
        return -ENOENT;
    }
    n = realloc(c->ids->uids, (c->ids->n_uids + 1) * sizeof(*n));
    if (!n)
        return -ENOMEM;
    n[c->ids->n_uids++] = uid;
    c->ids->uids = n;
    return 0;
}

static int add_group(void *p, const char *w)
{
    word_ctx_t *c = p;
    gid_t gid, *n;

    if (agent_conf_lookup_group(w, &gid) < 0) {
        c->bad = w;
        return -ENOENT;
    }
    n = realloc(c->ids->gids, (c->ids->n_gids + 1) * sizeof(*n));
    if (!n)
        return -ENOMEM;
    n[c->ids->n_gids++] = gid;
    c->ids->gids = n;
    return 0;
}

static int add_str(void *p, const char *w)
{
    word_ctx_t *c = p;
    char **n, *dup;

    if (w[0] != '/') {
        c->bad = w;
        return -EINVAL;
    }
    dup = strdup(w);
    n = dup ? realloc(*c->strs, (*c->n_strs + 1) * sizeof(*n)) : NULL;
    if (!n) {
        free(dup);
        return -ENOMEM;
    }
    n[(*c->n_strs)++] = dup;
    *c->strs = n;
    return 0;
}

static int replace_str(char **dst, const char *v)
{
    char *d = strdup(v);

    if (!d)
        return -ENOMEM;
    free(*dst);
    *dst = d;
    return 0;
}

typedef enum { SEC_NONE, SEC_AGENT, SEC_TOKEN, SEC_KEY } section_t;

static int parse_line(agent_conf_t *c, section_t sec, char *key, char *value, const char **why,
                      const char **bad)
{
    word_ctx_t w = {0};
    unsigned long n;
    int r;

    if (sec == SEC_AGENT && strcmp(key, "module") == 0) {
        w.strs = &c->modules;
        w.n_strs = &c->n_modules;
        *why = "module must be an absolute path";
        r = for_each_word(value, add_str, &w);
    } else if (sec == SEC_AGENT && strcmp(key, "pin-source") == 0) {
        r = replace_str(&c->pin_source, value);
    } else if (sec == SEC_TOKEN && strcmp(key, "pin-source") == 0) {
        r = replace_str(&c->tokens[c->n_tokens - 1].pin_source, value);
    } else if (sec == SEC_AGENT && strcmp(key, "max-clients") == 0) {
        *why = "max-clients must be a number from 1 to 65536";
        r = parse_number(value, 65536, &n);
        if (r == 0 && n == 0)
            r = -EINVAL;
        if (r == 0)
            c->max_clients = (unsigned)n;
    } else if (sec == SEC_AGENT && strcmp(key, "max-clients-per-user") == 0) {
        *why = "max-clients-per-user must be a number from 1 to 65536";
        r = parse_number(value, 65536, &n);
        if (r == 0 && n == 0)
            r = -EINVAL;
        if (r == 0)
            c->max_clients_per_user = (unsigned)n;
    } else if (sec == SEC_AGENT && strcmp(key, "auth-timeout") == 0) {
        *why = "auth-timeout must be a number of seconds from 1 to 3600";
        r = parse_number(value, 3600, &n);
        if (r == 0 && n == 0)
            r = -EINVAL;
        if (r == 0)
            c->auth_timeout_s = (unsigned)n;
    } else if (sec == SEC_AGENT && strcmp(key, "client-idle-timeout") == 0) {
        *why = "client-idle-timeout must be a number of seconds (0: never)";
        r = parse_number(value, 86400 * 365, &n);
        if (r == 0)
            c->client_idle_s = (unsigned)n;
    } else if (sec == SEC_AGENT && strcmp(key, "idle-exit") == 0) {
        *why = "idle-exit must be a number of seconds (0: never)";
        r = parse_number(value, 86400 * 365, &n);
        if (r == 0) {
            c->idle_exit_s = (unsigned)n;
            c->idle_exit_set = true;
        }
    } else if (sec == SEC_AGENT && strcmp(key, "pinentry") == 0) {
        *why = "pinentry must be an absolute path";
        r = value[0] == '/' ? replace_str(&c->pinentry, value) : -EINVAL;
    } else if (sec == SEC_AGENT &&
               (strcmp(key, "cache-idle") == 0 || strcmp(key, "cache-max") == 0 ||
                strcmp(key, "poll-interval") == 0)) {
        *why = "expected a number of seconds";
        r = parse_number(value, 86400 * 365, &n);
        if (r == 0 && key[0] == 'p' && n == 0)
            r = -EINVAL;
        if (r == 0)
            *(key[0] == 'p'   ? &c->poll_interval_s
              : key[6] == 'i' ? &c->cache_idle_s
                              : &c->cache_max_s) = (unsigned)n;
    } else if (sec == SEC_AGENT && strcmp(key, "always-auth") == 0) {
        *why = "always-auth must be prompt or stored";
        r = strcmp(value, "prompt") == 0 || strcmp(value, "stored") == 0 ? 0 : -EINVAL;
        c->always_auth_prompt = strcmp(value, "prompt") == 0;
        c->always_auth_set = true;
    } else if (sec == SEC_AGENT && strcmp(key, "audit") == 0) {
        *why = "audit must be all, refusals or none";
        r = 0;
        if (strcmp(value, "all") == 0)
            c->audit = AGENT_AUDIT_ALL;
        else if (strcmp(value, "refusals") == 0)
            c->audit = AGENT_AUDIT_REFUSALS;
        else if (strcmp(value, "none") == 0)
            c->audit = AGENT_AUDIT_NONE;
        else
            r = -EINVAL;
    } else if ((sec == SEC_AGENT || sec == SEC_KEY) &&
               (strcmp(key, "allow-users") == 0 || strcmp(key, "allow-groups") == 0)) {
        bool users = key[6] == 'u';

        w.ids = sec == SEC_AGENT ? &c->allow : &c->keys[c->n_keys - 1].allow;
        if (sec == SEC_KEY)
            c->keys[c->n_keys - 1].has_ids = true;
        *why = users ? "no such user" : "no such group";
        r = for_each_word(value, users ? add_user : add_group, &w);
    } else if (sec == SEC_AGENT && (strcmp(key, "allow-unlock-users") == 0 ||
                                    strcmp(key, "allow-unlock-groups") == 0)) {
        bool users = strcmp(key, "allow-unlock-users") == 0;

        w.ids = &c->allow_unlock;
        *why = users ? "no such user" : "no such group";
        r = for_each_word(value, users ? add_user : add_group, &w);
    } else if (sec == SEC_KEY && strcmp(key, "allow-exe") == 0) {
        w.strs = &c->keys[c->n_keys - 1].exes;
        w.n_strs = &c->keys[c->n_keys - 1].n_exes;
        *why = "allow-exe takes absolute paths";
        r = for_each_word(value, add_str, &w);
    } else {
        *why = sec == SEC_NONE ? "setting outside a section" : "unknown setting here";
        *bad = key;
        return -EINVAL;
    }
    if (w.bad)
        *bad = w.bad;
    return r;
}

static int open_section(agent_conf_t *c, char *head, section_t *sec)
{
    char *arg = strchr(head, ' ');

    if (arg) {
        *arg++ = '\0';
        arg = trim(arg);
    }
    if (strcmp(head, "agent") == 0 && !arg) {
        *sec = SEC_AGENT;
        return 0;
    }
    if (strcmp(head, "token") == 0 && arg && strncmp(arg, "pkcs11:", 7) == 0) {
        agent_token_conf_t *n = realloc(c->tokens, (c->n_tokens + 1) * sizeof(*n));

        if (!n)
            return -ENOMEM;
        c->tokens = n;
        memset(&n[c->n_tokens], 0, sizeof(*n));
        if (!(n[c->n_tokens].uri = strdup(arg)))
            return -ENOMEM;
        c->n_tokens++;
        *sec = SEC_TOKEN;
        return 0;
    }
    if (strcmp(head, "key") == 0 && arg && strncmp(arg, "pkcs11:", 7) == 0) {
        agent_key_policy_t *n = realloc(c->keys, (c->n_keys + 1) * sizeof(*n));

        if (!n)
            return -ENOMEM;
        c->keys = n;
        memset(&n[c->n_keys], 0, sizeof(*n));
        if (!(n[c->n_keys].uri = strdup(arg)))
            return -ENOMEM;
        c->n_keys++;
        *sec = SEC_KEY;
        return 0;
    }
    return -EINVAL;
}

int agent_conf_parse(const char *text, const char *name, agent_conf_t *ret, char **errmsg)
{
    agent_conf_t c = {0};
    section_t sec = SEC_NONE;
    char *copy = strdup(text), *save = NULL, *line;
    unsigned lineno = 0;
    int r = 0;

    if (!copy)
        return -ENOMEM;
    /* strsep keeps empty lines, so line numbers stay right */
    save = copy;
    while ((line = strsep(&save, "\n")) != NULL) {
        char *s, *eq, *hash;
        const char *why = "syntax error", *bad = NULL;

        lineno++;
        if ((hash = strchr(line, '#')) != NULL)
            *hash = '\0';
        s = trim(line);
        if (!*s)
            continue;
        if (*s == '[') {
            char *end = strchr(s, ']');

            if (!end || end[1] != '\0') {
                r = -EINVAL;
                agent_set_errmsg(errmsg,
                                 "%s:%u: a section header is [agent], [token URI] or [key URI]",
                                 name, lineno);
                goto out;
            }
            *end = '\0';
            r = open_section(&c, trim(s + 1), &sec);
            if (r < 0) {
                agent_set_errmsg(errmsg,
                                 "%s:%u: unknown section [%s] (expected [agent], "
                                 "[token pkcs11:...] or [key pkcs11:...])",
                                 name, lineno, s + 1);
                goto out;
            }
            continue;
        }
        eq = strchr(s, '=');
        if (!eq) {
            r = -EINVAL;
            agent_set_errmsg(errmsg, "%s:%u: expected 'name = value'", name, lineno);
            goto out;
        }
        *eq = '\0';
        r = parse_line(&c, sec, trim(s), trim(eq + 1), &why, &bad);
        if (r == -ENOMEM)
            goto out;
        if (r < 0) {
            agent_set_errmsg(errmsg, "%s:%u: %s%s%s%s", name, lineno, why, bad ? " ('" : "",
                             bad ? bad : "", bad ? "')" : "");
            goto out;
        }
    }
    if (name && !(c.path = strdup(name))) {
        r = -ENOMEM;
        goto out;
    }
    *ret = c;
    memset(&c, 0, sizeof(c));
out:
    if (r == -ENOMEM)
        agent_set_errmsg(errmsg, "%s: out of memory", name);
    agent_conf_clear(&c);
    free(copy);
    return r;
}

/* agent.conf names the modules the agent loads and the pinentry it runs:
 * only a regular file that no one but the agent's user (or root) can
 * change is trusted. Checked on the open file, so it cannot be swapped. */
static int check_conf_file(int fd, const char *path, char **errmsg)
{
    uid_t me = geteuid();
    struct stat st;

    if (fstat(fd, &st) < 0) {
        int r = -errno;

        agent_set_errmsg(errmsg, "cannot check %s: %s", path, strerror(errno));
        return r;
    }
    if (!S_ISREG(st.st_mode)) {
        agent_set_errmsg(errmsg, "%s is not a regular file", path);
        return -EINVAL;
    }
    if (st.st_uid != me && st.st_uid != 0) {
        agent_set_errmsg(errmsg, "refusing %s: it is owned by uid %lu, not by the agent's user "
                                 "(uid %lu) or root, and it names the modules and programs the "
                                 "agent runs; chown it to uid %lu or root",
                         path, (unsigned long)st.st_uid, (unsigned long)me, (unsigned long)me);
        return -EPERM;
    }
    if (st.st_mode & 022) {
        agent_set_errmsg(errmsg, "refusing %s: it is writable by %s (owner uid %lu, mode %04o), "
                                 "and it names the modules and programs the agent runs; "
                                 "chmod go-w %s",
                         path, (st.st_mode & 002) ? "every user" : "its group",
                         (unsigned long)st.st_uid, (unsigned)(st.st_mode & 07777), path);
        return -EPERM;
    }
    return 0;
}

int agent_conf_load(const char *path, bool required, agent_conf_t *ret, char **errmsg)
{
    FILE *f = NULL;
    char *text = NULL;
    size_t len = 0;
    int fd, r;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        if (errno == ENOENT && !required) {
            *ret = (agent_conf_t){0};
            return 0;
        }
        r = -errno;
        agent_set_errmsg(errmsg, "cannot read %s: %s", path, strerror(errno));
        return r;
    }
    r = check_conf_file(fd, path, errmsg);
    if (r < 0) {
        close(fd);
        return r;
    }
    f = fdopen(fd, "r");
    if (!f) {
        close(fd);
        return -ENOMEM;
    }
    text = malloc(CONF_MAX_SIZE + 1);
    if (!text) {
        fclose(f);
        return -ENOMEM;
    }
    len = fread(text, 1, CONF_MAX_SIZE + 1, f);
    fclose(f);
    if (len > CONF_MAX_SIZE) {
        free(text);
        agent_set_errmsg(errmsg, "%s is larger than 1 MiB", path);
        return -EFBIG;
    }
    text[len] = '\0';
    if (strlen(text) != len) {
        free(text);
        agent_set_errmsg(errmsg, "%s contains a NUL byte", path);
        return -EINVAL;
    }
    r = agent_conf_parse(text, path, ret, errmsg);
    free(text);
    return r;
}

static void id_list_clear(agent_id_list_t *l)
{
    free(l->uids);
    free(l->gids);
}

static void strv_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void agent_conf_clear(agent_conf_t *c)
{
    if (!c)
        return;
    free(c->path);
    strv_free(c->modules, c->n_modules);
    free(c->pin_source);
    free(c->pinentry);
    id_list_clear(&c->allow);
    id_list_clear(&c->allow_unlock);
    for (size_t i = 0; i < c->n_tokens; i++) {
        free(c->tokens[i].uri);
        free(c->tokens[i].pin_source);
    }
    free(c->tokens);
    for (size_t i = 0; i < c->n_keys; i++) {
        free(c->keys[i].uri);
        id_list_clear(&c->keys[i].allow);
        strv_free(c->keys[i].exes, c->keys[i].n_exes);
    }
    free(c->keys);
    memset(c, 0, sizeof(*c));
}
