/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The few pieces of a pkcs11: URI (RFC 7512) the module needs: a key's id
 * (CKA_ID) and a token's label, manufacturer, model and serial. The URIs
 * come from the agent (its canonical form), but are still hostile: every
 * length is bounded and a bad escape is an error, never a guess.
 */
#include <string.h>

#include "buf.h"
#include "module.h"
#include "text.h"

int mod_uri_attr(const char *uri, const char *name, uint8_t *out, size_t cap, size_t *ret_len)
{
    size_t name_len, path_len;
    const char *p, *end;

    if (uri == NULL || name == NULL || ret_len == NULL || strncmp(uri, "pkcs11:", 7) != 0)
        return MOD_URI_ABSENT;
    name_len = strlen(name);
    p = uri + 7;
    path_len = strcspn(p, "?");
    end = p + path_len;
    while (p < end) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *next = semi ? semi : end;

        if ((size_t)(next - p) > name_len && p[name_len] == '=' && memcmp(p, name, name_len) == 0) {
            const char *v = p + name_len + 1;
            size_t n = 0;

            while (v < next) {
                int c;

                if (*v == '%') {
                    int hi, lo;

                    if (next - v < 3)
                        return MOD_URI_BAD;
                    hi = buf_hexval((unsigned char)v[1]);
                    lo = buf_hexval((unsigned char)v[2]);
                    if (hi < 0 || lo < 0)
                        return MOD_URI_BAD;
                    c = hi * 16 + lo;
                    v += 3;
                } else {
                    c = (unsigned char)*v++;
                }
                if (n >= cap)
                    return MOD_URI_BAD;
                out[n++] = (uint8_t)c;
            }
            *ret_len = n;
            return MOD_URI_OK;
        }
        p = semi ? semi + 1 : end;
    }
    return MOD_URI_ABSENT;
}

void mod_pad(CK_UTF8CHAR *field, size_t size, const uint8_t *src, size_t n)
{
    size_t out = 0, i = 0;

    memset(field, ' ', size);
    /* whole UTF-8 characters only (the field is UTF-8 by definition); a
     * byte that starts none is dropped, a character that does not fit
     * ends the copy */
    while (i < n) {
        size_t c = text_utf8_char_len(src + i, n - i);

        if (c == 0) {
            i++;
            continue;
        }
        if (out + c > size)
            break;
        memcpy(field + out, src + i, c);
        out += c;
        i += c;
    }
}
