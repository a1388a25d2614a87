/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The provider's SPKI sizing (provider/spki.c): prov_spki_sizes on the
 * input as every key kind. What it answers must be the decoded key's
 * figures: whenever it answers, the default provider must decode the same
 * bytes into a key of that kind with the same bits, security bits and
 * size (an answer for bytes OpenSSL refuses, or other figures, aborts).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "provider.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int kind = 0; kind < PROV_KEY_KIND_COUNT; kind++) {
        prov_spki_sizes_t sz;
        const unsigned char *p = data;
        EVP_PKEY *k;

        if (!prov_spki_sizes((prov_key_kind_t)kind, data, size, &sz))
            continue;
        k = d2i_PUBKEY(NULL, &p, (long)size);
        if (k == NULL || p != data + size ||
            !EVP_PKEY_is_a(k, prov_key_kind_name((prov_key_kind_t)kind)) ||
            EVP_PKEY_get_bits(k) != sz.bits || EVP_PKEY_get_security_bits(k) != sz.security_bits ||
            EVP_PKEY_get_size(k) != sz.max_size) {
            fprintf(stderr, "fuzz-spki: sizes for a %s key OpenSSL does not agree with\n",
                    prov_key_kind_name((prov_key_kind_t)kind));
            abort();
        }
        EVP_PKEY_free(k);
    }
    return 0;
}
