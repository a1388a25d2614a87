/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Audit records: one line per refusal, failure, login, lock ..., and per
 * successful use or, with audit-interval, one summary per interval of a
 * client's uses of a key; key=value, on the agent's log (the journal under
 * systemd) and, with audit-file, appended to that file too. Never a PIN,
 * never the data. */
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

/* One record. count > 1: a summary of count uses since *since, duration_us
 * their mean. */
static void audit_line(agent_t *a, const agent_client_t *c, const char *event,
                       const char *key_uri, const char *alg, const char *hash, const char *result,
                       long long duration_us, unsigned long long count,
                       const struct timespec *since)
{
    char key[1024], exe[1024], res[512], when[32], md[32], line[4096], extra[96] = "";
    struct timespec ts;
    struct tm tm;
    bool ok = strcmp(result, "ok") == 0;

    if (a->audit == AGENT_AUDIT_NONE || (a->audit == AGENT_AUDIT_REFUSALS && ok))
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    if (count > 1 && since) {
        char first[32];

        gmtime_r(&since->tv_sec, &tm);
        strftime(first, sizeof(first), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(extra, sizeof(extra), " count=%llu since=%s.%06ldZ", count, first,
                 since->tv_nsec / 1000);
    }
    quote(key, sizeof(key), key_uri);
    quote(exe, sizeof(exe), c ? c->exe : "");
    quote(res, sizeof(res), result);
    word(md, sizeof(md), hash);
    snprintf(line, sizeof(line),
             "time=%s.%06ldZ event=%s key=\"%s\" mechanism=%s%s%s uid=%ld pid=%ld exe=\"%s\" "
             "result=\"%s\" duration_us=%lld%s",
             when, ts.tv_nsec / 1000, event, key, alg ? alg : "-", md[0] ? "/" : "", md,
             c && !c->via_session_bus ? (long)c->uid : -1L,
             c && !c->via_session_bus ? (long)c->pid : -1L, exe, res, duration_us, extra);
    agent_log(ok ? AGENT_LOG_INFO : AGENT_LOG_WARN, __func__, "audit: %s", line);
    audit_file_write(a, line);
}

void agent_audit(agent_t *a, const agent_client_t *c, const char *event, const char *key_uri,
                 const char *alg, const char *hash, const char *result, long long duration_us)
{
    audit_line(a, c, event, key_uri, alg, hash, result, duration_us, 1, NULL);
}

/*
 * audit-interval. Per connection, a table of (key, event, mechanism) with
 * an interval each: the first successful use is written at once and opens
 * the interval; the next ones in it are counted; when it ends the count
 * (if any) is written as one summary record and the next interval begins,
 * else the entry goes and the next use is written at once again. A steady
 * signer thus costs one record per interval and key, and every use is in
 * exactly one record: the summaries' count= add up with the single records
 * to the number of uses. Refusals and failures never come here.
 */

static void batch_lock(agent_audit_batch_t *b)
{
    pthread_mutex_lock(&b->lock);
}

void agent_audit_batch_init(agent_audit_batch_t *b)
{
    memset(b, 0, sizeof(*b));
    pthread_mutex_init(&b->lock, NULL);
    b->lock_ready = true;
}

void agent_audit_batch_done(agent_audit_batch_t *b)
{
    if (!b->lock_ready)
        return;
    for (size_t i = 0; i < b->n; i++)
        free(b->sums[i].key);
    b->n = 0;
    pthread_mutex_destroy(&b->lock);
    b->lock_ready = false;
}

static void next_locked(agent_audit_batch_t *b)
{
    int64_t next = 0;

    for (size_t i = 0; i < b->n; i++)
        if (!next || b->sums[i].until_ms < next)
            next = b->sums[i].until_ms;
    atomic_store(&b->next_ms, next);
}

/* Writes the summary of entry i if it counted uses. */
static void write_sum_locked(agent_t *a, const agent_client_t *c, struct agent_audit_sum *e)
{
    if (e->count == 0)
        return;
    audit_line(a, c, e->event, e->key, e->alg, e->hash, "ok",
               e->total_us / (long long)e->count, e->count, &e->first);
    e->count = 0;
    e->total_us = 0;
}

static void drop_locked(agent_audit_batch_t *b, size_t i)
{
    free(b->sums[i].key);
    b->sums[i] = b->sums[--b->n];
}

/* Ends the interval of entry i (at now): its summary, then a new interval
 * if it counted uses (a steady signer), else the entry goes. */
static void end_interval_locked(agent_t *a, agent_client_t *c, size_t i, int64_t now,
                                int64_t interval_ms, bool drop)
{
    agent_audit_batch_t *b = &c->audit_batch;
    struct agent_audit_sum *e = &b->sums[i];
    bool busy = e->count > 0;

    write_sum_locked(a, c, e);
    if (busy && !drop && interval_ms > 0)
        e->until_ms = now + interval_ms;
    else
        drop_locked(b, i);
}

void agent_audit_use(agent_t *a, agent_client_t *c, agent_use_audit_t *u)
{
    agent_audit_batch_t *b = &c->audit_batch;
    int64_t interval_ms = (int64_t)atomic_load(&a->audit_interval_s) * 1000, now;
    struct agent_audit_sum *e = NULL;
    size_t i;

    u->set = false;
    if (interval_ms == 0 || !b->lock_ready) {
        audit_line(a, c, u->event, u->key, u->alg, u->hash, "ok", u->duration_us, 1, NULL);
        return;
    }
    now = u->at_ms ? u->at_ms : agent_now_ms();
    batch_lock(b);
    for (i = 0; i < b->n; i++) {
        e = &b->sums[i];
        if (e->event == u->event && e->alg == u->alg && strcmp(e->key, u->key) == 0 &&
            strcmp(e->hash, u->hash) == 0)
            break;
    }
    if (i < b->n && now < e->until_ms) {
        /* within the interval: counted */
        if (e->count++ == 0)
            clock_gettime(CLOCK_REALTIME, &e->first);
        e->total_us += u->duration_us;
        goto out;
    }
    if (i < b->n && e->count > 0) {
        /* the interval ended before the thread came to write it: written
         * now, and this use opens the next one */
        write_sum_locked(a, c, e);
        e->until_ms = now + interval_ms;
        e->count = 1;
        e->total_us = u->duration_us;
        clock_gettime(CLOCK_REALTIME, &e->first);
        goto out;
    }
    /* the first use after a quiet interval: written at once */
    audit_line(a, c, u->event, u->key, u->alg, u->hash, "ok", u->duration_us, 1, NULL);
    if (i == b->n) {
        if (b->n == AGENT_AUDIT_BATCH_MAX) {
            /* full: the entry whose interval ends first makes room */
            size_t old = 0;

            for (size_t j = 1; j < b->n; j++)
                if (b->sums[j].until_ms < b->sums[old].until_ms)
                    old = j;
            end_interval_locked(a, c, old, now, interval_ms, true);
        }
        e = &b->sums[b->n];
        *e = (struct agent_audit_sum){.event = u->event, .alg = u->alg, .key = strdup(u->key)};
        if (!e->key)
            goto out; /* not counted: every next use is written at once */
        memcpy(e->hash, u->hash, sizeof(e->hash));
        b->n++;
    }
    e->until_ms = now + interval_ms;
out:
    next_locked(b);
    pthread_mutex_unlock(&b->lock);
}

void agent_audit_flush(agent_t *a, agent_client_t *c, bool all)
{
    agent_audit_batch_t *b = &c->audit_batch;
    int64_t interval_ms = (int64_t)atomic_load(&a->audit_interval_s) * 1000, now;

    if (!b->lock_ready || (!all && atomic_load(&b->next_ms) == 0))
        return;
    now = agent_now_ms();
    batch_lock(b);
    for (size_t i = b->n; i-- > 0;)
        if (all || b->sums[i].until_ms <= now)
            end_interval_locked(a, c, i, now, interval_ms, all);
    next_locked(b);
    pthread_mutex_unlock(&b->lock);
}

int agent_audit_due_ms(agent_client_t *c, int64_t now_ms)
{
    int64_t next = atomic_load(&c->audit_batch.next_ms);

    if (next == 0)
        return -1;
    if (next <= now_ms)
        return 0;
    return next - now_ms > 3600 * 1000 ? 3600 * 1000 : (int)(next - now_ms);
}

void agent_audit_flush_clients(agent_t *a)
{
    pthread_mutex_lock(&a->clients_lock);
    for (agent_client_t *c = a->clients; c; c = c->next)
        agent_audit_flush(a, c, true);
    pthread_mutex_unlock(&a->clients_lock);
    agent_audit_flush(a, &a->bus_client, true);
}
