/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A fake agent for unit tests of the agent's clients (test-module.c,
 * test-provider.c): a libdbus peer-to-peer server on a temporary socket,
 * driven by the agent's poll loop (agent/loop.c) in a thread of the test
 * process, answering like p11agentd with software keys made by the default
 * provider, and recording what it was asked.
 *
 * Each test program says what it needs in a fake_config_t: its keys, the
 * methods answered, stand-in URIs that fail in set ways, the token that
 * ListTokens shows, and the hostile records ListKeys adds on demand. At
 * run time fake_set() makes Sign misbehave, srv_command() drops clients or
 * takes the socket away, and the counters in `fake` say what was asked.
 */
#ifndef P11AGENT_TEST_FAKEAGENT_H
#define P11AGENT_TEST_FAKEAGENT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "bus.h"

/* A key on the fake token: a software key and its certificate. */
typedef struct fake_key {
    const char *uri;
    const char *alg;     /* for EVP_PKEY_Q_keygen */
    const char *param;   /* curve or NULL */
    size_t bits;         /* RSA */
    bus_key_type_t type;
    uint32_t flags;
    EVP_PKEY *soft;      /* the "token" key, default provider */
    X509 *cert;
} fake_key_t;

/* A URI that FindKeys answers with another key's record (under this URI)
 * and that Sign answers with an error: for every algorithm, or, when
 * only_alg is set, for that one only (the others sign with the key). */
typedef struct fake_standin {
    const char *uri;
    size_t key;              /* index in fake_config_t.keys */
    bus_err_t error;
    const char *message;
    bus_sig_alg_t only_alg;  /* 0: every algorithm */
} fake_standin_t;

/* The methods the fake answers (others get UnknownMethod). */
enum {
    FAKE_FIND_KEYS = 1u << 0,
    FAKE_LIST_TOKENS = 1u << 1,
    FAKE_LIST_KEYS = 1u << 2,
    FAKE_SIGN = 1u << 3,
    FAKE_DECRYPT = 1u << 4,  /* RSA keys: rsa-pkcs1, rsa-oaep, rsa-raw */
    FAKE_UNLOCK = 1u << 5,   /* counts, always succeeds */
};

/* ListKeys with the odd_records knob on: at most this many are added. */
#define FAKE_MAX_ODD 8

typedef struct fake_config {
    fake_key_t *keys;
    size_t n_keys;
    const fake_standin_t *standins;
    size_t n_standins;
    unsigned methods;                 /* FAKE_* */
    const bus_token_info_t *token;    /* ListTokens' one token (when present) */
    /* ListKeys with odd_records: writes hostile records to recs, returns
     * how many (at most FAKE_MAX_ODD). Runs in the server thread. */
    size_t (*odd_records)(bus_key_info_t *recs);
} fake_config_t;

/* How Sign answers (fake_set). */
typedef enum sign_mode {
    SIGN_OK,
    SIGN_SHORT,    /* one byte less than the key makes */
    SIGN_LONG,     /* one byte more */
    SIGN_BAD_DER,  /* ECDSA: not DER */
    SIGN_ERROR,    /* error reply named by fake_set's error */
} sign_mode_t;

/* What the fake agent saw, and its knobs; written by the server thread
 * under fake_lock, read by tests after their (synchronous) call returned. */
extern pthread_mutex_t fake_lock;
extern struct fake_state {
    bool token_present;   /* ListTokens shows the token, ListKeys its keys */
    bool odd_records;     /* ListKeys adds hostile records */
    sign_mode_t sign_mode;
    bus_err_t error;      /* for SIGN_ERROR */
    int signs;
    int finds;            /* FindKeys calls */
    int lists;            /* ListTokens calls */
    int unlocks;
    int calls;            /* every method call but OpenChannel */
    int connections;      /* accepted so far */
    bool limited;         /* admit only admit_left more connections: */
    int admit_left;       /* past them each new one is refused, as the */
    int refused;          /* agent's max-clients does; refused so far */
    int sign_delay_us;    /* each Sign answers this late (a slow token) */
    bus_sign_params_t last;
    size_t last_len;
    int decrypts;
    bus_decrypt_params_t last_dec; /* label: not kept (points into a freed message) */
} fake;

/* The server's temporary directory and socket (set by srv_start). */
extern struct fake_srv {
    char dir[64];
    char socket[128];
} srv;

/* A certificate for key, signed by itself: subject CN=cn, issuer the same
 * name plus O=issuer_o (NULL: the subject), serial number serial. */
X509 *fake_cert(EVP_PKEY *key, const char *cn, const char *issuer_o, long serial);

/* Makes each key's software key and certificate (make_cert); 0 or -1. */
int fake_keys_make(fake_key_t *keys, size_t n, X509 *(*make_cert)(const fake_key_t *k));
void fake_keys_free(fake_key_t *keys, size_t n);

/* A key record as the agent sends it, under uri (NULL: the key's): token
 * and label are the URI's token= and object=, group the key's curve or ""
 * (caller clears it). */
void fake_record(const fake_key_t *k, const char *uri, bus_key_info_t *r);

/* Starts the server thread answering as cfg says (cfg must outlive it);
 * 0 or -1. srv_stop stops it and removes the socket. */
int srv_start(const fake_config_t *cfg);
void srv_stop(void);

/* Commands, each acknowledged before it returns: 'r' drops every client
 * connection, as an agent restart would; 'd' does that and moves the
 * socket away (nothing listens at the path: the agent is down), 'm' only
 * moves it away (open connections stay, new ones cannot be made), 'u'
 * puts it back (a new agent listens); 'q' stops the loop. */
void srv_command(char c);

/* Sign's behaviour and what ListTokens/ListKeys show. */
void fake_set(bool present, bool odd, sign_mode_t mode, bus_err_t error);

/* Counters, read under the lock. */
int fake_signs(void);
int fake_finds(void);
int fake_calls(void);
int fake_connections(void);
int fake_refused(void);

/* Admit n more connections, refuse the ones after (n < 0: no limit): the
 * first call of a refused one gets Busy and it closes, or (every other
 * one) it is closed before its first call. */
void fake_limit_connections(int n);

#endif
