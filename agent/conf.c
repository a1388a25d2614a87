/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* agent.conf parsing (format in conf.h). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
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

int agent_conf_parse_duration(const char *s, unsigned long min, unsigned long max, unsigned *ret)
{
    static const struct {
        char unit;
        unsigned long mult;
    } units[] = {{'s', 1}, {'m', 60}, {'h', 3600}, {'d', 86400}};
    unsigned long mult = 1, v;
    char num[24];
    size_t n = strspn(s, "0123456789");

    if (n == 0 || n >= sizeof(num))
        return -EINVAL;
    if (s[n] != '\0') {
        size_t i = 0;

        while (i < sizeof(units) / sizeof(units[0]) && units[i].unit != s[n])
            i++;
        if (i == sizeof(units) / sizeof(units[0]) || s[n + 1] != '\0')
            return -EINVAL;
        mult = units[i].mult;
    }
    memcpy(num, s, n);
    num[n] = '\0';
    if (parse_number(num, max / mult, &v) < 0)
        return -ERANGE;
    v *= mult;
    if (v < min)
        return -ERANGE;
    *ret = (unsigned)v;
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

/* --- the settings: one row each, {section, name, parser, field} --- */

typedef enum { SEC_NONE = 0, SEC_AGENT = 1, SEC_TOKEN = 2, SEC_KEY = 4 } section_t;

typedef struct setting setting_t;

/* A parser reads value into the field at s->field of the section's struct
 * (agent_conf_t, agent_token_conf_t or agent_key_policy_t). 0, -ENOMEM, or
 * -EINVAL with a sentence in why (what is wrong with the value, and what
 * is expected). */
typedef int (*setting_parse_fn)(const setting_t *s, void *base, char *value, char *why,
                                size_t why_size);

struct setting {
    const char *name;
    section_t section;
    setting_parse_fn parse;
    size_t field;
    /* a second field: the count of a list (parse_paths), or a bool set
     * when the setting is given (AUX_NONE: none) */
    size_t aux;
    unsigned long min, max; /* numbers and durations */
    bool repeats;           /* a list: each line adds to it */
};

#define AUX_NONE SIZE_MAX
#define FIELD(base, member) ((void *)((char *)(base) + (member)))
#define YEAR_S (86400ul * 365)

static void set_aux(const setting_t *s, void *base)
{
    if (s->aux != AUX_NONE)
        *(bool *)FIELD(base, s->aux) = true;
}

static int parse_string(const setting_t *s, void *base, char *value, char *why, size_t why_size)
{
    char **dst = FIELD(base, s->field), *d;

    if (!value[0]) {
        snprintf(why, why_size, "%s is empty", s->name);
        return -EINVAL;
    }
    if (!(d = strdup(value)))
        return -ENOMEM;
    free(*dst);
    *dst = d;
    return 0;
}

static int parse_path(const setting_t *s, void *base, char *value, char *why, size_t why_size)
{
    if (value[0] != '/') {
        snprintf(why, why_size, "%s = '%s': expected an absolute path", s->name, value);
        return -EINVAL;
    }
    return parse_string(s, base, value, why, why_size);
}

/* Appends every word of value (split at blanks and commas). */
static int parse_paths(const setting_t *s, void *base, char *value, char *why, size_t why_size)
{
    char ***strs = FIELD(base, s->field), *save = NULL;
    size_t *n = FIELD(base, s->aux);

    for (char *w = strtok_r(value, " \t,", &save); w; w = strtok_r(NULL, " \t,", &save)) {
        char **nv, *dup;

        if (w[0] != '/') {
            snprintf(why, why_size, "%s: '%s' is not an absolute path", s->name, w);
            return -EINVAL;
        }
        dup = strdup(w);
        nv = dup ? realloc(*strs, (*n + 1) * sizeof(*nv)) : NULL;
        if (!nv) {
            free(dup);
            return -ENOMEM;
        }
        nv[(*n)++] = dup;
        *strs = nv;
    }
    return 0;
}

static int parse_ids(const setting_t *s, void *base, char *value, char *why, size_t why_size,
                     bool users)
{
    agent_id_list_t *l = FIELD(base, s->field);
    char *save = NULL;

    for (char *w = strtok_r(value, " \t,", &save); w; w = strtok_r(NULL, " \t,", &save)) {
        if (users) {
            uid_t uid, *nv;

            if (agent_conf_lookup_user(w, &uid) < 0) {
                snprintf(why, why_size, "%s: no such user '%s'", s->name, w);
                return -EINVAL;
            }
            if (!(nv = realloc(l->uids, (l->n_uids + 1) * sizeof(*nv))))
                return -ENOMEM;
            nv[l->n_uids++] = uid;
            l->uids = nv;
        } else {
            gid_t gid, *nv;

            if (agent_conf_lookup_group(w, &gid) < 0) {
                snprintf(why, why_size, "%s: no such group '%s'", s->name, w);
                return -EINVAL;
            }
            if (!(nv = realloc(l->gids, (l->n_gids + 1) * sizeof(*nv))))
                return -ENOMEM;
            nv[l->n_gids++] = gid;
            l->gids = nv;
        }
    }
    set_aux(s, base);
    return 0;
}

static int parse_users(const setting_t *s, void *base, char *value, char *why, size_t why_size)
{
    return parse_ids(s, base, value, why, why_size, true);
}

static int parse_groups(const setting_t *s, void *base, char *value, char *why, size_t why_size)
{
    return parse_ids(s, base, value, why, why_size, false);
}

static int parse_count(const setting_t *s, void *base, char *value, char *why, size_t why_size)
{
    unsigned long n;

    if (parse_number(value, s->max, &n) < 0 || n < s->min) {
        snprintf(why, why_size, "%s = '%s': expected a whole number from %lu to %lu", s->name,
                 value, s->min, s->max);
        return -EINVAL;
    }
    *(unsigned *)FIELD(base, s->field) = (unsigned)n;
    set_aux(s, base);
    return 0;
}

/* 3600 -> "1h", 90 -> "90s": the largest unit that divides it. */
static void format_duration(char *buf, size_t size, unsigned long v)
{
    if (v == 0)
        snprintf(buf, size, "0");
    else if (v % 86400 == 0)
        snprintf(buf, size, "%lud", v / 86400);
    else if (v % 3600 == 0)
        snprintf(buf, size, "%luh", v / 3600);
    else if (v % 60 == 0)
        snprintf(buf, size, "%lum", v / 60);
    else
        snprintf(buf, size, "%lus", v);
}

static int parse_duration(const setting_t *s, void *base, char *value, char *why, size_t why_size)
{
    char lo[24], hi[24];
    unsigned v;
    int r = agent_conf_parse_duration(value, s->min, s->max, &v);

    if (r < 0) {
        format_duration(lo, sizeof(lo), s->min);
        format_duration(hi, sizeof(hi), s->max);
        snprintf(why, why_size,
                 "%s = '%s': %s: expected a duration from %s to %s (seconds, or a number with "
                 "a unit: 30s, 15m, 8h, 1d)%s",
                 s->name, value, r == -ERANGE ? "out of range" : "not a duration", lo, hi,
                 s->min != 0                               ? ""
                 : strcmp(s->name, "audit-interval") == 0 ? "; 0 records every use"
                                                          : "; 0 means never");
        return -EINVAL;
    }
    *(unsigned *)FIELD(base, s->field) = v;
    set_aux(s, base);
    return 0;
}

static int parse_audit(const setting_t *s, void *base, char *value, char *why, size_t why_size)
{
    agent_audit_t *a = FIELD(base, s->field);

    if (strcmp(value, "all") == 0)
        *a = AGENT_AUDIT_ALL;
    else if (strcmp(value, "refusals") == 0)
        *a = AGENT_AUDIT_REFUSALS;
    else if (strcmp(value, "none") == 0)
        *a = AGENT_AUDIT_NONE;
    else {
        snprintf(why, why_size, "%s = '%s': expected all, refusals or none", s->name, value);
        return -EINVAL;
    }
    return 0;
}

static int parse_always_auth(const setting_t *s, void *base, char *value, char *why,
                             size_t why_size)
{
    if (strcmp(value, "prompt") != 0 && strcmp(value, "stored") != 0) {
        snprintf(why, why_size, "%s = '%s': expected prompt or stored", s->name, value);
        return -EINVAL;
    }
    *(bool *)FIELD(base, s->field) = strcmp(value, "prompt") == 0;
    set_aux(s, base);
    return 0;
}

/* A yes/no setting into a bool field. */
static int parse_yes_no(const setting_t *s, void *base, char *value, char *why, size_t why_size)
{
    if (strcmp(value, "yes") != 0 && strcmp(value, "no") != 0) {
        snprintf(why, why_size, "%s = '%s': expected yes or no", s->name, value);
        return -EINVAL;
    }
    *(bool *)FIELD(base, s->field) = value[0] == 'y';
    set_aux(s, base);
    return 0;
}

/* confirm = yes | no | DURATION (once per DURATION) */
static int parse_confirm(const setting_t *s, void *base, char *value, char *why, size_t why_size)
{
    agent_key_policy_t *k = base;
    unsigned v;

    if (strcmp(value, "yes") == 0 || strcmp(value, "no") == 0) {
        k->confirm = value[0] == 'y';
        k->confirm_s = 0;
        return 0;
    }
    if (agent_conf_parse_duration(value, 1, 86400, &v) < 0) {
        snprintf(why, why_size,
                 "%s = '%s': expected yes (every use), no, or a duration from 1s to 1d (one "
                 "confirmation covers the uses in that time)",
                 s->name, value);
        return -EINVAL;
    }
    k->confirm = true;
    k->confirm_s = v;
    return 0;
}

#define A(member) offsetof(agent_conf_t, member)
#define T(member) offsetof(agent_token_conf_t, member)
#define K(member) offsetof(agent_key_policy_t, member)

/* Every setting of agent.conf (agent.conf(5) documents each one). */
static const setting_t settings[] = {
    {"module", SEC_AGENT, parse_paths, A(modules), A(n_modules), 0, 0, true},
    {"pin-source", SEC_AGENT, parse_string, A(pin_source), AUX_NONE, 0, 0, false},
    {"max-clients", SEC_AGENT, parse_count, A(max_clients), AUX_NONE, 1, 65536, false},
    {"max-clients-per-user", SEC_AGENT, parse_count, A(max_clients_per_user), AUX_NONE, 1, 65536,
     false},
    {"auth-timeout", SEC_AGENT, parse_duration, A(auth_timeout_s), AUX_NONE, 1, 3600, false},
    {"client-idle-timeout", SEC_AGENT, parse_duration, A(client_idle_s), AUX_NONE, 0, YEAR_S,
     false},
    {"idle-exit", SEC_AGENT, parse_duration, A(idle_exit_s), A(idle_exit_set), 0, YEAR_S, false},
    {"pinentry", SEC_AGENT, parse_path, A(pinentry), AUX_NONE, 0, 0, false},
    {"cache-idle", SEC_AGENT, parse_duration, A(cache_idle_s), A(cache_idle_set), 0, YEAR_S,
     false},
    {"cache-max", SEC_AGENT, parse_duration, A(cache_max_s), A(cache_max_set), 0, YEAR_S, false},
    {"poll-interval", SEC_AGENT, parse_duration, A(poll_interval_s), AUX_NONE, 1, YEAR_S, false},
    {"always-auth", SEC_AGENT, parse_always_auth, A(always_auth_prompt), A(always_auth_set), 0, 0,
     false},
    {"audit", SEC_AGENT, parse_audit, A(audit), AUX_NONE, 0, 0, false},
    {"audit-file", SEC_AGENT, parse_path, A(audit_file), AUX_NONE, 0, 0, false},
    {"audit-interval", SEC_AGENT, parse_duration, A(audit_interval_s), A(audit_interval_set), 0,
     3600, false},
    {"allow-users", SEC_AGENT, parse_users, A(allow), AUX_NONE, 0, 0, true},
    {"allow-groups", SEC_AGENT, parse_groups, A(allow), AUX_NONE, 0, 0, true},
    {"allow-unlock-users", SEC_AGENT, parse_users, A(allow_unlock), AUX_NONE, 0, 0, true},
    {"allow-unlock-groups", SEC_AGENT, parse_groups, A(allow_unlock), AUX_NONE, 0, 0, true},
    {"max-sessions", SEC_AGENT, parse_count, A(max_sessions), AUX_NONE, 1,
     TOK_MAX_SESSIONS_LIMIT, false},
    {"pin-source", SEC_TOKEN, parse_string, T(pin_source), AUX_NONE, 0, 0, false},
    {"max-sessions", SEC_TOKEN, parse_count, T(max_sessions), AUX_NONE, 1,
     TOK_MAX_SESSIONS_LIMIT, false},
    {"allow-users", SEC_KEY, parse_users, K(allow), K(has_ids), 0, 0, true},
    {"allow-groups", SEC_KEY, parse_groups, K(allow), K(has_ids), 0, 0, true},
    {"allow-exe", SEC_KEY, parse_paths, K(exes), K(n_exes), 0, 0, true},
    {"confirm", SEC_KEY, parse_confirm, K(confirm), AUX_NONE, 0, 0, false},
    {"decrypt", SEC_KEY, parse_yes_no, K(decrypt), AUX_NONE, 0, 0, false},
};

#define N_SETTINGS (sizeof(settings) / sizeof(settings[0]))

static const char *section_name(section_t sec)
{
    return sec == SEC_AGENT ? "[agent]" : sec == SEC_TOKEN ? "[token pkcs11:...]"
                                                           : "[key pkcs11:...]";
}

typedef struct parser {
    agent_conf_t conf;
    section_t sec;
    void *base;                         /* the current section's struct */
    char head[256];                     /* for messages: "[agent]", "[key URI]" */
    unsigned agent_seen[N_SETTINGS];    /* line of each [agent] setting, 0: not yet */
    unsigned section_seen[N_SETTINGS];  /* the same in the current [token]/[key] */
} parser_t;

static int parse_setting(parser_t *p, char *key, char *value, unsigned lineno, char *why,
                         size_t why_size)
{
    const setting_t *s = NULL;
    const char *elsewhere = NULL;
    unsigned *seen;
    size_t i;

    for (i = 0; i < N_SETTINGS && !s; i++) {
        if (strcmp(settings[i].name, key) != 0)
            continue;
        if (settings[i].section == p->sec)
            s = &settings[i];
        else if (!elsewhere)
            elsewhere = section_name(settings[i].section);
    }
    if (!s && p->sec == SEC_NONE) {
        snprintf(why, why_size, "'%s' is outside a section (settings follow [agent], "
                                "[token pkcs11:...] or [key pkcs11:...])", key);
        return -EINVAL;
    }
    if (!s && elsewhere) {
        snprintf(why, why_size, "'%s' is not a setting of %s: it belongs in %s", key,
                 section_name(p->sec), elsewhere);
        return -EINVAL;
    }
    if (!s) {
        snprintf(why, why_size, "unknown setting '%s' in %s", key, section_name(p->sec));
        return -EINVAL;
    }
    i--;
    seen = p->sec == SEC_AGENT ? &p->agent_seen[i] : &p->section_seen[i];
    if (*seen && !s->repeats) {
        snprintf(why, why_size, "%s is set twice in %s (first at line %u); keep one", key,
                 p->head, *seen);
        return -EINVAL;
    }
    if (!*seen)
        *seen = lineno;
    return s->parse(s, p->base, value, why, why_size);
}

/* A [token URI] or [key URI] header: the URI must be one p11agent reads. */
static int check_section_uri(const char *head, const char *arg, char *why, size_t why_size)
{
    const char *example = strcmp(head, "key") == 0 ? "[key pkcs11:object=web;type=private]"
                                                   : "[token pkcs11:token=hsm1]";
    const char *what = strcmp(head, "key") == 0 ? "keys" : "tokens";
    int r;

    if (!arg) {
        snprintf(why, why_size, "[%s] needs a pkcs11: URI naming the %s it applies to, e.g. %s",
                 head, what, example);
        return -EINVAL;
    }
    if (strncmp(arg, "pkcs11:", 7) != 0) {
        snprintf(why, why_size,
                 "[%s %s]: '%s' is not a pkcs11: URI; a [%s] section names the %s it applies "
                 "to with one, e.g. %s",
                 head, arg, arg, head, what, example);
        return -EINVAL;
    }
    r = tok_uri_check(arg);
    if (r == TOK_ERR_NO_MEMORY)
        return -ENOMEM;
    if (r != TOK_OK) {
        snprintf(why, why_size,
                 "[%s %s]: the URI does not parse or has an attribute p11agent does not know "
                 "(RFC 7512: pkcs11:token=...;object=...;type=private)",
                 head, arg);
        return -EINVAL;
    }
    return 0;
}

static int open_section(parser_t *p, char *head, char *why, size_t why_size)
{
    agent_conf_t *c = &p->conf;
    char *arg = strchr(head, ' ');
    int r;

    if (arg) {
        *arg++ = '\0';
        arg = trim(arg);
        if (!*arg)
            arg = NULL;
    }
    snprintf(p->head, sizeof(p->head), "[%s%s%s]", head, arg ? " " : "", arg ? arg : "");
    memset(p->section_seen, 0, sizeof(p->section_seen));
    if (strcmp(head, "agent") == 0) {
        if (arg) {
            snprintf(why, why_size, "[agent] takes no argument (got '%s')", arg);
            return -EINVAL;
        }
        p->sec = SEC_AGENT;
        p->base = c;
        return 0;
    }
    if (strcmp(head, "token") != 0 && strcmp(head, "key") != 0) {
        snprintf(why, why_size,
                 "unknown section [%s] (expected [agent], [token pkcs11:...] or [key pkcs11:...])",
                 head);
        return -EINVAL;
    }
    if ((r = check_section_uri(head, arg, why, why_size)) < 0)
        return r;
    if (strcmp(head, "token") == 0) {
        agent_token_conf_t *n = realloc(c->tokens, (c->n_tokens + 1) * sizeof(*n));

        if (!n)
            return -ENOMEM;
        c->tokens = n;
        memset(&n[c->n_tokens], 0, sizeof(*n));
        if (!(n[c->n_tokens].uri = strdup(arg)))
            return -ENOMEM;
        p->base = &n[c->n_tokens++];
        p->sec = SEC_TOKEN;
        return 0;
    }
    agent_key_policy_t *n = realloc(c->keys, (c->n_keys + 1) * sizeof(*n));

    if (!n)
        return -ENOMEM;
    c->keys = n;
    memset(&n[c->n_keys], 0, sizeof(*n));
    if (!(n[c->n_keys].uri = strdup(arg)))
        return -ENOMEM;
    p->base = &n[c->n_keys++];
    p->sec = SEC_KEY;
    return 0;
}

int agent_conf_parse(const char *text, const char *name, agent_conf_t *ret, char **errmsg)
{
    parser_t *p = calloc(1, sizeof(*p));
    char *copy = strdup(text), *save = NULL, *line;
    unsigned lineno = 0;
    int r = 0;

    if (!copy || !p) {
        r = -ENOMEM;
        goto out;
    }
    /* strsep keeps empty lines, so line numbers stay right */
    save = copy;
    while ((line = strsep(&save, "\n")) != NULL) {
        char *s, *eq, *hash, why[512] = "";

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
            r = open_section(p, trim(s + 1), why, sizeof(why));
        } else if ((eq = strchr(s, '=')) != NULL) {
            *eq = '\0';
            r = parse_setting(p, trim(s), trim(eq + 1), lineno, why, sizeof(why));
        } else {
            r = -EINVAL;
            snprintf(why, sizeof(why), "expected 'name = value'");
        }
        if (r == -ENOMEM)
            goto out;
        if (r < 0) {
            agent_set_errmsg(errmsg, "%s:%u: %s", name, lineno, why);
            goto out;
        }
    }
    if (name && !(p->conf.path = strdup(name))) {
        r = -ENOMEM;
        goto out;
    }
    *ret = p->conf;
    memset(&p->conf, 0, sizeof(p->conf));
out:
    if (r == -ENOMEM)
        agent_set_errmsg(errmsg, "%s: out of memory", name);
    if (p)
        agent_conf_clear(&p->conf);
    free(p);
    free(copy);
    return r;
}

int agent_conf_check_file(int fd, const char *path, const char *what, char **errmsg)
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
                                 "(uid %lu) or root, and %s; chown it to uid %lu or root",
                         path, (unsigned long)st.st_uid, (unsigned long)me, what,
                         (unsigned long)me);
        return -EPERM;
    }
    if (st.st_mode & 022) {
        agent_set_errmsg(errmsg, "refusing %s: it is writable by %s (owner uid %lu, mode %04o), "
                                 "and %s; chmod go-w %s",
                         path, (st.st_mode & 002) ? "every user" : "its group",
                         (unsigned long)st.st_uid, (unsigned)(st.st_mode & 07777), what, path);
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
    /* agent.conf names the modules the agent loads and the pinentry it
     * runs: checked on the open file, so it cannot be swapped. */
    r = agent_conf_check_file(fd, path, "it names the modules and programs the agent runs",
                              errmsg);
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
    free(c->audit_file);
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
