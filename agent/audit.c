/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Audit records: one line per signature and per refusal, key=value, on the
 * agent's log (the journal under systemd). Never a PIN, never the data. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "agent.h"

/* Quotes a value for key="value": backslash-escapes quotes and backslashes,
 * drops control characters. */
static void quote(char *dst, size_t size, const char *s)
{
    size_t o = 0;

    for (; s && *s && o + 3 < size; s++) {
        unsigned char ch = (unsigned char)*s;

        if (ch < 0x20 || ch == 0x7f)
            continue;
        if (ch == '"' || ch == '\\')
            dst[o++] = '\\';
        dst[o++] = (char)ch;
    }
    dst[o] = '\0';
}

void agent_audit(const agent_t *a, const agent_client_t *c, const char *event, const char *key_uri,
                 const char *alg, const char *hash, const char *result, long long duration_us)
{
    char key[512], exe[300], res[512], when[32];
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
    agent_log(ok ? AGENT_LOG_INFO : AGENT_LOG_WARN, __func__,
              "audit: time=%s.%06ldZ event=%s key=\"%s\" mechanism=%s%s%s uid=%ld pid=%ld "
              "exe=\"%s\" result=\"%s\" duration_us=%lld",
              when, ts.tv_nsec / 1000, event, key, alg ? alg : "-", hash && hash[0] ? "/" : "",
              hash ? hash : "", c && !c->via_session_bus ? (long)c->uid : -1L,
              c && !c->via_session_bus ? (long)c->pid : -1L, exe, res, duration_us);
}
