/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Decrypt(s key, s algorithm, a{sv} params, ay data) -> ay plaintext.
 *
 * Off unless a [key] section says `decrypt = yes`. Signing and decrypting
 * are different powers: a signature only vouches for a handshake happening
 * now, while decrypting RSA key exchanges (TLS_RSA_* suites, which have no
 * forward secrecy) opens every recorded session ever made to that key, and
 * "rsa-raw" is the RSA private-key primitive itself. An agent that guards
 * keys for other programs does not hand that out by default; a server that
 * keeps TLS_RSA_* suites says so per key, and a refusal names the key and
 * this setting (the handshake then ends with decrypt_error, which is also
 * what a server configured without those suites would avoid altogether).
 *
 * A padding error of "rsa-pkcs1" comes back as an error (InvalidArgs for
 * CKR_ENCRYPTED_DATA_INVALID, Device for SoftHSM's CKR_GENERAL_ERROR): a
 * client decrypting TLS premaster secrets must not use it (that is a
 * Bleichenbacher oracle, through the error and through the token's timing). The provider
 * asks for "rsa-raw" (CKM_RSA_X_509) in TLS mode and unpads in constant time
 * itself, see provider/asymcipher.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "text.h"

#define ERROR_TEXT_MAX 2048
#define STR_(x) #x
#define STR(x) STR_(x)

static bool decrypt_permitted(const agent_t *a, const tok_key_t *key,
                              const agent_key_policy_t *pol, char *why, size_t why_size)
{
    (void)a;
    if (pol && pol->decrypt)
        return true;
    snprintf(why, why_size,
             "decryption with key '%s' is off: a [key] section of agent.conf matching it must "
             "say 'decrypt = yes' (see agent.conf(5))%s",
             key->uri, pol ? "" : "; no [key] section matches it");
    return false;
}

typedef struct decrypt_use {
    tok_decrypt_params_t tp;
    const uint8_t *data;
    size_t len;
} decrypt_use_t;

static int run_decrypt(void *arg, const tok_key_t *key, const tok_auth_t *auth, uint8_t **ret,
                       size_t *ret_len, char **why)
{
    decrypt_use_t *d = arg;

    return tok_decrypt(key, &d->tp, d->data, d->len, auth, ret, ret_len, why);
}

/* The text of a Decrypt request refused before any key is looked at
 * (BUS_ERR_UNSUPPORTED or BUS_ERR_INVALID_ARGS): D-Bus and the channel
 * say the same. */
const char *agent_decrypt_refusal(int r)
{
    return r == BUS_ERR_UNSUPPORTED
                   ? "unknown decryption algorithm (expected rsa-pkcs1, rsa-oaep or rsa-raw)"
                   : "malformed Decrypt request (expected key URI, algorithm, parameters and 1 "
                     "to " STR(BUS_DECRYPT_MAX_DATA) " bytes of data; hash, mgf1-hash and label "
                     "only with rsa-oaep)";
}

void agent_decrypt(agent_client_t *c, const char *uri, const bus_decrypt_params_t *bp,
                   const uint8_t *data, size_t len, agent_use_result_t *res)
{
    agent_t *a = c->agent;
    decrypt_use_t du = {.data = data, .len = len};
    agent_key_use_t u = {.event = "decrypt", .verb = "decrypting",
                         .permitted = decrypt_permitted, .run = run_decrypt, .arg = &du,
                         .secret_result = true, .decrypt = true, .ok_count = &a->decryptions,
                         .fail_count = &a->decrypt_failures};
    int h = tok_hash_from_name(bp->hash), m = tok_hash_from_name(bp->mgf1_hash);

    if (h < 0 || m < 0) {
        atomic_fetch_add(&a->decrypt_failures, 1);
        *res = (agent_use_result_t){.secret = true};
        agent_use_result_fail(res, BUS_ERR_UNSUPPORTED,
                              "hash '%s' is not supported for OAEP with key '%s'",
                              h < 0 ? bp->hash : bp->mgf1_hash, uri);
        return;
    }
    du.tp.alg = (tok_dec_alg_t)bp->alg;
    du.tp.hash = (tok_hash_t)h;
    du.tp.mgf1_hash = (tok_hash_t)m;
    du.tp.label = bp->label;
    du.tp.label_len = bp->label_len;
    u.alg = bus_dec_alg_name(bp->alg);
    u.hash = bp->hash;
    agent_use_key(c, uri, &u, res);
}

int agent_handle_decrypt(agent_client_t *c, DBusConnection *conn, DBusMessage *msg,
                         DBusMessage **ret_reply)
{
    agent_t *a = c->agent;
    const char *uri;
    bus_decrypt_params_t bp;
    const uint8_t *data;
    size_t len;
    agent_use_result_t res;
    int r;

    (void)conn;
    r = bus_parse_decrypt_call(msg, &uri, &bp, &data, &len);
    if (r < 0) {
        DBusMessage *reply = agent_error_reply(msg, r, "%s", agent_decrypt_refusal(r));

        atomic_fetch_add(&a->decrypt_failures, 1);
        if (!reply)
            return -ENOMEM;
        *ret_reply = reply;
        return 0;
    }
    agent_decrypt(c, uri, &bp, data, len, &res);
    return agent_use_reply(c, msg, &res, ret_reply);
}
