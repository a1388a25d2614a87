/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Audit records: one line per signature and per refusal, key=value, on the
 * agent's log (the journal under systemd) and, with audit-file, appended to
 * that file too. Never a PIN, never the data. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "text.h"

/* Quotes a value for key="value": text_escape (quotes and backslashes
 * escaped, control bytes and bytes that are not UTF-8 as \xNN), so a
 * client's path or URI cannot end the field or the line. */
static void quote(char *dst, size_t size, const char *s)
{
    text_escape(dst, size, s ? s : "", s ? strlen(s) : 0);
}

/* An unquoted word (the hash name a client sent): letters, digits and '-'
 * only, anything else becomes '?', so it cannot add a field. */
static void word(char *dst, size_t size, const char *s)
{
    size_t o = 0;

    for (; s && *s && o + 1 < size; s++)
        dst[o++] = (isalnum((unsigned char)*s) || *s == '-') ? *s : '?';
    dst[o] = '\0';
}

int agent_audit_open(const char *path, char **errmsg)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
    int r;

    if (fd < 0) {
        r = -errno;
        agent_set_errmsg(errmsg, "cannot open audit-file %s: %s%s", path, strerror(errno),
                         errno == ELOOP ? " (a symbolic link is not followed)" : "");
        return r;
    }
    r = agent_conf_check_file(fd, path, "it holds the agent's audit records", errmsg);
    if (r < 0) {
        close(fd);
        return r;
    }
    return fd;
}

void agent_audit_set_fd(agent_t *a, int fd, char *path)
{
    char *old_path;
    int old;

    pthread_mutex_lock(&a->audit_lock);
    old = a->audit_fd;
    old_path = a->audit_path;
    a->audit_fd = fd;
    a->audit_path = path;
    a->audit_write_failed = false;
    pthread_mutex_unlock(&a->audit_lock);
    if (old >= 0)
        close(old);
    free(old_path);
}

/* Appends line and a newline to the audit file, if there is one. */
static void audit_file_write(agent_t *a, const char *line)
{
    char buf[4200];
    int n = snprintf(buf, sizeof(buf), "%s\n", line), err = 0;
    bool warn = false;

    char path[1024] = "";

    if (n < 0 || (size_t)n >= sizeof(buf))
        return; /* cannot happen: line is snprintf'd into 4096 bytes */
    pthread_mutex_lock(&a->audit_lock);
    if (a->audit_fd >= 0) {
        /* O_APPEND: one write puts the whole line at the end of the file */
        ssize_t w = write(a->audit_fd, buf, (size_t)n);

        if (w != n) {
            err = w < 0 ? errno : EIO;
            warn = !a->audit_write_failed;
            snprintf(path, sizeof(path), "%s", a->audit_path ? a->audit_path : "?");
            a->audit_write_failed = true;
        } else {
            a->audit_write_failed = false;
        }
    }
    pthread_mutex_unlock(&a->audit_lock);
    if (warn)
        agent_warn("cannot write to audit-file %s: %s (records go to this log only until a "
                   "write succeeds)",
                   path, strerror(err));
}

void agent_audit(agent_t *a, const agent_client_t *c, const char *event, const char *key_uri,
                 const char *alg, const char *hash, const char *result, long long duration_us)
{
    char key[1024], exe[1024], res[512], when[32], md[32], line[4096];
    struct timespec ts;
    struct tm tm;
    bool ok = strcmp(result, "ok") == 0;

    if (a->audit == AGENT_AUDIT_NONE || (a->audit == AGENT_AUDIT_REFUSALS && ok))
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    quote(key, sizeof(key), key_uri);
    quote(exe, sizeof(exe), c ? c->exe : "");
    quote(res, sizeof(res), result);
    word(md, sizeof(md), hash);
    snprintf(line, sizeof(line),
             "time=%s.%06ldZ event=%s key=\"%s\" mechanism=%s%s%s uid=%ld pid=%ld exe=\"%s\" "
             "result=\"%s\" duration_us=%lld",
             when, ts.tv_nsec / 1000, event, key, alg ? alg : "-", md[0] ? "/" : "", md,
             c && !c->via_session_bus ? (long)c->uid : -1L,
             c && !c->via_session_bus ? (long)c->pid : -1L, exe, res, duration_us);
    agent_log(ok ? AGENT_LOG_INFO : AGENT_LOG_WARN, __func__, "audit: %s", line);
    audit_file_write(a, line);
}
