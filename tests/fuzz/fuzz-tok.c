/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Module answers: the token layer's public API (tok_ctx_new, tok_ctx_scan,
 * tok_find_keys, tok_token_login, tok_sign_auth) against fakep11.so, whose
 * slots, token info, objects, attribute values and lengths, login and
 * C_Sign answers all come from the input (layout in fakep11.c). After the
 * model, the input says what the harness does: which keys to sign with,
 * how, and whether to log in first.
 *
 * Checks beyond "no crash, no leak": every key has an SPKI, and its
 * canonical URI finds it again.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fakep11.h"
#include "text.h"
#include "tok.h"

#ifndef FAKEP11_PATH
#error "FAKEP11_PATH: the fake module's path"
#endif

static void check_key(tok_ctx_t *ctx, const tok_key_t *k)
{
    const tok_key_t **found = NULL;
    size_t n = 0;
    bool self = false;

    if (k->uri == NULL || k->spki == NULL || k->spki_len == 0 || k->token == NULL) {
        fprintf(stderr, "fuzz-tok: key without URI, SPKI or token\n");
        abort();
    }
    if (tok_find_keys(ctx, k->uri, &found, &n) != TOK_OK) {
        fprintf(stderr, "fuzz-tok: a key's canonical URI does not parse: %s\n", k->uri);
        abort();
    }
    for (size_t i = 0; i < n; i++)
        self |= found[i] == k;
    free(found);
    if (!self) {
        fprintf(stderr, "fuzz-tok: a key's canonical URI does not find it: %s\n", k->uri);
        abort();
    }
}

static void sign_with(const tok_key_t *k)
{
    uint8_t sel = fakep11_u8(), *sig = NULL;
    tok_sign_params_t p = {
        .alg = (tok_sig_alg_t)(1 + sel % 4),
        .hash = (tok_hash_t)((sel >> 2) % 6),
        .mgf1_hash = (tok_hash_t)((sel >> 5) % 6),
        .salt_len = fakep11_u8(),
    };
    tok_auth_t auth = { .pin = "1234", .pin_len = 4 };
    uint8_t data[128] = { 0 };
    size_t len = fakep11_u8() % sizeof(data), sig_len = 0;
    char *why = NULL;
    int r;

    if (sel & 0x80)
        len = tok_hash_len(p.hash);
    r = tok_sign_auth(k, &p, data, len, (fakep11_u8() & 1) ? &auth : NULL, &sig, &sig_len, &why);
    /* An empty signature is let through today (a module's CKR_OK with
     * ulSignatureLen 0): not checked here, reported. */
    if (r == TOK_OK && ((sig == NULL && sig_len > 0) || sig_len > 65536)) {
        fprintf(stderr, "fuzz-tok: tok_sign gave a signature of %zu bytes\n", sig_len);
        abort();
    }
    free(sig);
    free(why);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *modules[] = { FAKEP11_PATH };
    tok_ctx_t *ctx = NULL;
    char *err = NULL;
    uint8_t ops;

    fakep11_set_input(data, size);
    if (tok_ctx_new(modules, 1, &ctx, &err) != TOK_OK) {
        free(err);
        return 0;
    }
    tok_ctx_scan(ctx);
    for (size_t i = 0; i < tok_ctx_n_tokens(ctx); i++) {
        tok_token_t *t = tok_ctx_token(ctx, i);

        if (!text_utf8_valid(tok_token_uri(t), strlen(tok_token_uri(t)))) {
            fprintf(stderr, "fuzz-tok: token URI is not UTF-8\n");
            abort();
        }
        (void)tok_token_label(t);
        (void)tok_token_flags(t);
    }
    for (size_t i = 0; i < tok_ctx_n_keys(ctx); i++)
        check_key(ctx, tok_ctx_key(ctx, i));
    ops = fakep11_u8();
    for (size_t i = 0; i < tok_ctx_n_tokens(ctx); i++)
        if (ops & (1u << i))
            tok_token_login(tok_ctx_token(ctx, i), (ops & 4) ? NULL : "1234", 4);
    if (ops & 8)
        tok_ctx_scan(ctx); /* keys found after login */
    for (size_t i = 0; i < tok_ctx_n_keys(ctx) && i < 4; i++)
        sign_with(tok_ctx_key(ctx, i));
    if (ops & 16) {
        bool changed;

        tok_ctx_tokens_changed(ctx, &changed);
        for (size_t i = 0; i < tok_ctx_n_tokens(ctx); i++)
            tok_token_logout(tok_ctx_token(ctx, i));
    }
    tok_ctx_free(ctx);
    return 0;
}
