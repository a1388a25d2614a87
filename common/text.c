/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* UTF-8 validation, escaping for logs and sanitising for D-Bus. */
#include "text.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t text_utf8_char_len(const unsigned char *s, size_t n)
{
    uint32_t cp;
    size_t len;

    if (n == 0 || s[0] == 0)
        return 0;
    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2;
        cp = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3;
        cp = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4;
        cp = s[0] & 0x07;
    } else {
        return 0; /* continuation byte, 0xc0/0xc1 (overlong) or > U+10FFFF */
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

bool text_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;

    if (s == NULL)
        return n == 0;
    for (size_t i = 0; i < n;) {
        size_t l = text_utf8_char_len(p + i, n - i);

        if (l == 0)
            return false;
        i += l;
    }
    return true;
}

/* One piece of escaped output for the input at p[i]: sets *piece and *plen and
 * returns how many input bytes it stands for. */
static size_t escape_piece(const unsigned char *p, size_t n, size_t i, char esc[8],
                           const char **piece, size_t *plen)
{
    size_t l = text_utf8_char_len(p + i, n - i);

    if (l > 1 || (l == 1 && p[i] >= 0x20 && p[i] != 0x7f && p[i] != '\\' && p[i] != '"')) {
        *piece = (const char *)p + i;
        *plen = l;
        return l;
    }
    *piece = esc;
    switch (p[i]) {
    case '\\': *plen = (size_t)snprintf(esc, 8, "\\\\"); break;
    case '"': *plen = (size_t)snprintf(esc, 8, "\\\""); break;
    case '\n': *plen = (size_t)snprintf(esc, 8, "\\n"); break;
    case '\r': *plen = (size_t)snprintf(esc, 8, "\\r"); break;
    case '\t': *plen = (size_t)snprintf(esc, 8, "\\t"); break;
    default: *plen = (size_t)snprintf(esc, 8, "\\x%02x", p[i]); break;
    }
    return 1;
}

bool text_escape(char *dst, size_t size, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0, total = 0;
    bool fits;

    if (size == 0)
        return false;
    if (p == NULL)
        n = 0;
    for (size_t i = 0; i < n;) {
        char esc[8];
        const char *piece;
        size_t plen;

        i += escape_piece(p, n, i, esc, &piece, &plen);
        total += plen;
    }
    fits = total + 1 <= size;
    for (size_t i = 0; i < n;) {
        char esc[8];
        const char *piece;
        size_t plen, l = escape_piece(p, n, i, esc, &piece, &plen);

        /* when cutting, keep room for "..." and the NUL */
        if (!fits && o + plen + 4 > size) {
            size_t dots = size - o > 3 ? 3 : 0;

            memcpy(dst + o, "...", dots);
            o += dots;
            break;
        }
        memcpy(dst + o, piece, plen);
        o += plen;
        i += l;
    }
    dst[o] = '\0';
    return fits;
}

char *text_dbus_safe(const char *s, size_t max)
{
    static const char repl[] = "\xef\xbf\xbd"; /* U+FFFD */
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    size_t n = strlen((const char *)p), o = 0, cap, total = 0;
    bool fits;
    char *out;

    if (max < 4)
        max = 4;
    for (size_t i = 0; i < n;) {
        size_t l = text_utf8_char_len(p + i, n - i);

        total += l ? l : 3;
        i += l ? l : 1;
    }
    fits = total <= max;
    cap = (fits ? total : max) + 1;
    out = malloc(cap);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n;) {
        size_t l = text_utf8_char_len(p + i, n - i);
        const char *piece = l ? (const char *)p + i : repl;
        size_t plen = l ? l : 3;

        if (!fits && o + plen + 3 > max) {
            /* cut here: every piece so far left room for "..." */
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(out + o, piece, plen);
        o += plen;
        i += l ? l : 1;
    }
    out[o] = '\0';
    return out;
}
