/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Audit records: one line per signature and per refusal, key=value, on the
 * agent's log (the journal under systemd). Never a PIN, never the data. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

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

void agent_audit(const agent_t *a, const agent_client_t *c, const char *event, const char *key_uri,
                 const char *alg, const char *hash, const char *result, long long duration_us)
{
    char key[1024], exe[1024], res[512], when[32], md[32];
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
    agent_log(ok ? AGENT_LOG_INFO : AGENT_LOG_WARN, __func__,
              "audit: time=%s.%06ldZ event=%s key=\"%s\" mechanism=%s%s%s uid=%ld pid=%ld "
              "exe=\"%s\" result=\"%s\" duration_us=%lld",
              when, ts.tv_nsec / 1000, event, key, alg ? alg : "-", md[0] ? "/" : "", md, c && !c->via_session_bus ? (long)c->uid : -1L,
              c && !c->via_session_bus ? (long)c->pid : -1L, exe, res, duration_us);
}
