/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Key-reference DER (dbus/keyref.c): bus_keyref_decode on the input. What
 * decodes must be a reference p11agent could have written: its URI passes
 * bus_keyref_check_uri, and a p11agent-format reference encodes back to
 * exactly the input (strict DER has one encoding per value).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keyref.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bus_keyref_t ref = { 0 };
    const char *why = NULL;
    uint8_t *der = NULL;
    size_t len = 0;
    int r;

    r = bus_keyref_decode(data, size, &ref, &why);
    if (r != BUS_OK) {
        if (why == NULL) {
            fprintf(stderr, "fuzz-keyref: an error without a reason\n");
            abort();
        }
        return 0;
    }
    if (bus_keyref_check_uri(ref.uri, &why) != BUS_OK) {
        fprintf(stderr, "fuzz-keyref: decoded a URI the checker refuses: %s\n", why);
        abort();
    }
    if (ref.format == BUS_KEYREF_P11AGENT) {
        if (bus_keyref_encode(ref.uri, ref.type, &der, &len, &why) != BUS_OK) {
            fprintf(stderr, "fuzz-keyref: a decoded reference does not encode: %s\n", why);
            abort();
        }
        if (len != size || memcmp(der, data, size) != 0) {
            fprintf(stderr, "fuzz-keyref: decode then encode changed the DER\n");
            abort();
        }
        free(der);
    }
    bus_keyref_clear(&ref);
    return 0;
}
