/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Text from hostile sources (clients, PKCS#11 modules, /proc, files) made
 * safe for the two places it ends up:
 *   - a D-Bus message: must be valid UTF-8 without NUL, or libdbus aborts
 *     the whole process (text_dbus_safe, text_utf8_valid);
 *   - a log or audit line: no control characters (a newline would forge a
 *     journal line), no invalid UTF-8, quotes escaped (text_escape).
 * Cuts happen only at character boundaries. No allocation except in
 * text_dbus_safe; no dependencies beyond libc, so every folder may link it.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* Is s[0..n) well-formed UTF-8 (shortest forms only, no surrogates, nothing
 * above U+10FFFF) without NUL bytes? */
bool text_utf8_valid(const char *s, size_t n);

/* Length in bytes of the UTF-8 sequence starting at s[0..n), or 0 if the
 * bytes there are not one well-formed character (or s[0] is NUL). */
size_t text_utf8_char_len(const unsigned char *s, size_t n);

/* Writes into dst (size >= 1, always NUL-terminated) an escaped copy of
 * s[0..n): printable ASCII and well-formed multi-byte characters are kept;
 * backslash and '"' become \\ and \"; \n \r \t as such; every other control
 * byte and every byte that is not part of a well-formed character becomes
 * \xNN. An escape or a character is never cut: when dst is too small the
 * copy stops before it and ends in "...". Returns false if it was cut. */
bool text_escape(char *dst, size_t size, const char *s, size_t n);

/* A malloc'd copy of the NUL-terminated s (NULL counts as "") that is valid
 * UTF-8 for a D-Bus message: each byte that is not part of a well-formed
 * character becomes U+FFFD, and the copy is cut at a character boundary to
 * at most max bytes (max >= 4), ending in "..." when cut. NULL only when out
 * of memory. */
char *text_dbus_safe(const char *s, size_t max);
