/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The daemon's log: stderr (the journal when run by systemd). Debug lines
 * only for the categories named in P11AGENT_DEBUG. Never log a PIN or the
 * data being signed. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "agent.h"
#include "text.h"

static unsigned debug_mask; /* set once in main before any thread starts */
static bool use_syslog;      /* detached: stderr is no terminal of ours */

void agent_log_to_syslog(void)
{
    openlog("p11agentd", LOG_PID | LOG_NDELAY, LOG_DAEMON);
    use_syslog = true;
}

void agent_log_init(const char *spec)
{
    static const struct {
        const char *name;
        unsigned bit;
    } cats[] = {{"bus", AGENT_DBG_BUS},
                {"sign", AGENT_DBG_SIGN},
                {"pin", AGENT_DBG_PIN},
                {"pkcs11", AGENT_DBG_PKCS11},
                {"all", ~0u}};
    char buf[256], *save = NULL;

    debug_mask = 0;
    if (!spec || !spec[0])
        return;
    snprintf(buf, sizeof(buf), "%s", spec);
    for (char *tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        size_t i = 0;

        while (i < sizeof(cats) / sizeof(cats[0]) && strcmp(tok, cats[i].name) != 0)
            i++;
        if (i < sizeof(cats) / sizeof(cats[0]))
            debug_mask |= cats[i].bit;
        else
            agent_warn("unknown debug category '%s' ignored (known: bus, sign, pin, pkcs11, all)",
                       tok);
    }
}

bool agent_debug_enabled(unsigned category)
{
    return (debug_mask & category) != 0;
}

const char *agent_esc(char *buf, size_t size, const char *s)
{
    text_escape(buf, size, s, s ? strlen(s) : 0);
    return buf;
}

/* The last line of defence against forged journal lines: copies src with
 * each control byte and each byte that is not part of a well-formed UTF-8
 * character escaped (text_escape of that one byte: \n, \xNN). Quotes and
 * backslashes stay as they are, so key="value" fields that callers escaped
 * keep their meaning. Cut only between pieces, ending in "...". */
static void log_safe(char *dst, size_t size, const char *src)
{
    const unsigned char *p = (const unsigned char *)src;
    size_t n = strlen(src), o = 0;

    for (size_t i = 0; i < n;) {
        size_t l = text_utf8_char_len(p + i, n - i);
        char esc[8];
        const char *piece = src + i;
        size_t plen = l;

        if (l == 0 || (l == 1 && (p[i] < 0x20 || p[i] == 0x7f))) {
            text_escape(esc, sizeof(esc), src + i, 1);
            piece = esc;
            plen = strlen(esc);
            l = 1;
        }
        if (o + plen + 4 > size) {
            memcpy(dst + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(dst + o, piece, plen);
        o += plen;
        i += l;
    }
    dst[o] = '\0';
}

void agent_log(agent_log_level_t level, const char *func, const char *fmt, ...)
{
    static const char *const prefix[] = {"<3>", "<4>", "<6>", "<7>"};
    static const char *const word[] = {"error: ", "warning: ", "", "debug: "};
    char raw[4096], line[8192];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(raw, sizeof(raw), fmt, ap);
    va_end(ap);
    /* a cut inside a character above becomes \xNN here, never a bad byte */
    log_safe(line, sizeof(line), raw);
    if (use_syslog) {
        static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};

        if (level == AGENT_LOG_DEBUG)
            syslog(prio[level], "%s%s: %s", word[level], func, line);
        else
            syslog(prio[level], "%s%s", word[level], line);
        return;
    }
    /* The <N> prefix lets journald pick up the level; harmless on a tty. */
    if (level == AGENT_LOG_DEBUG)
        fprintf(stderr, "%sp11agentd: %s%s: %s\n", prefix[level], word[level], func, line);
    else
        fprintf(stderr, "%sp11agentd: %s%s\n", prefix[level], word[level], line);
}

void agent_set_errmsg(char **errmsg, const char *fmt, ...)
{
    va_list ap;

    if (!errmsg)
        return;
    free(*errmsg);
    va_start(ap, fmt);
    if (vasprintf(errmsg, fmt, ap) < 0)
        *errmsg = NULL;
    va_end(ap);
}
