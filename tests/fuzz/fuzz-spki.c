/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The provider's SPKI sizing (provider/spki.c): prov_spki_sizes on the
 * input as every key kind. Whenever it answers, OpenSSL must read the
 * same bytes as an SPKI (d2i_X509_PUBKEY, all of them) of that algorithm,
 * and when the key in it is valid (an EC point on its curve, ...) decode it
 * into a key of that kind with the same bits, security bits and size. An
 * invalid key in a well-formed SPKI may be answered: it is decoded, and
 * refused, only when first used (provider/keymgmt.c prov_key_pub).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "provider.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int kind = 0; kind < PROV_KEY_KIND_COUNT; kind++) {
        prov_spki_sizes_t sz;
        const unsigned char *p = data;
        X509_PUBKEY *xpk;
        EVP_PKEY *k;

        if (!prov_spki_sizes((prov_key_kind_t)kind, data, size, &sz))
            continue;
        xpk = d2i_X509_PUBKEY(NULL, &p, (long)size);
        if (xpk == NULL || p != data + size) {
            fprintf(stderr, "fuzz-spki: sizes for bytes that are no SPKI\n");
            abort();
        }
        p = data;
        k = d2i_PUBKEY(NULL, &p, (long)size);
        X509_PUBKEY_free(xpk);
        if (k == NULL)
            continue; /* a well-formed SPKI holding an invalid key */
        if (!EVP_PKEY_is_a(k, prov_key_kind_name((prov_key_kind_t)kind)) ||
            EVP_PKEY_get_bits(k) != sz.bits || EVP_PKEY_get_security_bits(k) != sz.security_bits ||
            EVP_PKEY_get_size(k) != sz.max_size) {
            fprintf(stderr, "fuzz-spki: sizes for a %s key OpenSSL does not agree with\n",
                    prov_key_kind_name((prov_key_kind_t)kind));
            abort();
        }
        EVP_PKEY_free(k);
        ERR_clear_error();
    }
    ERR_clear_error();
    return 0;
}
