/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What p11agent-pkcs11.so parses from the agent (module/): a key record
 * becomes objects (mod_key_from_record: SPKI, certificate, URI id), the
 * objects answer C_GetAttributeValue and C_FindObjects templates, a token
 * URI gives the token's fields, and an ECDSA signature goes from DER to
 * r||s.
 *
 * Input: type (1 byte), bits (2, big-endian), flags (1), then four fields,
 * each a 2-byte big-endian length and its bytes: key URI, label, SPKI,
 * certificate. What is left is an ECDSA signature for mod_ecdsa_der_to_raw.
 *
 * Checks beyond crashes and leaks: a refused record has a reason; an
 * accepted one has the three objects' CKA_CLASS, its signature size, and
 * every readable attribute reads back the same (length query, then a
 * buffer of that size) and matches itself as a template.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "module.h"

typedef struct in {
    const uint8_t *p;
    size_t n;
} in_t;

static bool take(in_t *in, size_t n, const uint8_t **ret)
{
    if (in->n < n)
        return false;
    *ret = in->p;
    in->p += n;
    in->n -= n;
    return true;
}

/* A length-prefixed field; strings are cut at a NUL (as D-Bus gives them). */
static bool field(in_t *in, uint8_t **ret, size_t *ret_len, bool string)
{
    const uint8_t *h, *v;
    size_t n;

    if (!take(in, 2, &h))
        return false;
    n = (size_t)h[0] << 8 | h[1];
    if (!take(in, n, &v))
        return false;
    *ret = malloc(n + 1);
    if (*ret == NULL)
        abort();
    memcpy(*ret, v, n);
    (*ret)[n] = 0;
    *ret_len = string ? strlen((char *)*ret) : n;
    return true;
}

static void check_object(const mod_object_t *o)
{
    for (size_t i = 0; i < o->n; i++) {
        const mod_attr_t *a = &o->attrs[i];
        CK_ATTRIBUTE t = {a->type, NULL, 0};
        uint8_t *buf;

        if (a->value == NULL) {
            if (mod_object_get(o, &t, 1) != CKR_ATTRIBUTE_SENSITIVE ||
                t.ulValueLen != CK_UNAVAILABLE_INFORMATION)
                abort();
            continue;
        }
        if (mod_object_get(o, &t, 1) != CKR_OK || t.ulValueLen != a->len)
            abort();
        buf = malloc(a->len + 1);
        t.pValue = buf;
        if (mod_object_get(o, &t, 1) != CKR_OK || memcmp(buf, a->value, a->len) != 0)
            abort();
        if (a->len > 0) {
            t.ulValueLen = a->len - 1;
            if (mod_object_get(o, &t, 1) != CKR_BUFFER_TOO_SMALL ||
                t.ulValueLen != CK_UNAVAILABLE_INFORMATION)
                abort();
        }
        t.ulValueLen = a->len;
        if (!mod_object_match(o, &t, 1))
            abort();
        free(buf);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    in_t in = {data, size};
    const uint8_t *h;
    bus_key_info_t rec = {0};
    mod_key_t key;
    const char *why = NULL;
    size_t n, uri_len, label_len;
    uint8_t id[MOD_MAX_ID], raw[2 * 66];
    CK_UTF8CHAR field32[32];

    if (!take(&in, 4, &h))
        return 0;
    rec.type = (bus_key_type_t)(h[0] % 6);
    rec.bits = (uint32_t)h[1] << 8 | h[2];
    rec.flags = h[3];
    if (!field(&in, (uint8_t **)&rec.uri, &uri_len, true) ||
        !field(&in, (uint8_t **)&rec.label, &label_len, true) ||
        !field(&in, &rec.spki, &rec.spki_len, false) ||
        !field(&in, &rec.cert, &rec.cert_len, false))
        goto out;
    rec.group = strdup("");
    rec.token = strdup("");

    /* the URI as a token URI: its fields, padded */
    if (mod_uri_attr(rec.uri, "token", id, sizeof(id), &n) == MOD_URI_OK) {
        if (n > sizeof(id))
            abort();
        mod_pad(field32, sizeof(field32), id, n);
    }
    if (mod_key_from_record(&rec, &key, &why) == 0) {
        if (key.sig_len == 0 || key.obj[MOD_OBJ_PRIVATE].klass != CKO_PRIVATE_KEY ||
            mod_object_attr(&key.obj[MOD_OBJ_PUBLIC], CKA_CLASS) == NULL)
            abort();
        for (int i = 0; i < 3; i++)
            check_object(&key.obj[i]);
        mod_key_clear(&key);
    } else if (why == NULL) {
        fprintf(stderr, "fuzz-module: a refused record without a reason\n");
        abort();
    }
    /* the rest: an ECDSA signature of each size */
    for (size_t half = 32; half <= 66; half += 16)
        (void)mod_ecdsa_der_to_raw(in.p, in.n, half > 64 ? 66 : half, raw);
out:
    bus_key_info_clear(&rec);
    return 0;
}
