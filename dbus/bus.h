/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The p11agent protocol: names, records and marshalling shared by the agent
 * (p11agentd), the provider (p11agent.so) and p11agentctl.
 *
 * Interface org.p11agent.Agent1 at /org/p11agent/Agent1 (see
 * dbus/org.p11agent.Agent1.xml):
 *
 *   ListKeys()                         -> a(ssusssayayu) keys
 *   FindKeys(s uri)                    -> a(ssusssayayu) keys
 *   Sign(s key_uri, s algorithm, a{sv} params, ay data) -> ay signature
 *   Decrypt(s key_uri, s algorithm, a{sv} params, ay data) -> ay plaintext
 *   Status()                           -> a{sv}
 *   ListTokens()                       -> a(sssuxu) tokens
 *   Unlock(s token_uri, ay pin)        -> ()   log in (p11agentctl unlock)
 *   UnlockWithOptions(s token_uri, ay pin, a{sv} options) -> ()
 *                                      options: "final-try" b, "lifetime" u
 *                                      (seconds: the login ends then)
 *   Lock(s token_uri, b forget_only)   -> u    log out / forget cached PINs
 *
 * A key record is (uri, type, bits, group, label, token, spki, cert, flags).
 * Errors are org.p11agent.Error.<Name>, with a message a person can act on.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <dbus/dbus.h>

#define BUS_NAME "org.p11agent.Agent1"
#define BUS_PATH "/org/p11agent/Agent1"
#define BUS_IFACE "org.p11agent.Agent1"
#define BUS_ERROR_PREFIX "org.p11agent.Error."

#define BUS_KEY_RECORD_SIG "(ssusssayayu)"

/* Default timeout of a client call, in milliseconds. A signature on a slow
 * token or one waiting for a PIN prompt may take long; nothing waits forever. */
#define BUS_CALL_TIMEOUT_MS 60000

/* Errors. BUS_OK is 0; everything else is negative so that functions can
 * return them like negative errno values. */
typedef enum bus_err {
    BUS_OK = 0,
    BUS_ERR_FAILED = -1,         /* org.p11agent.Error.Failed */
    BUS_ERR_NO_SUCH_KEY = -2,    /* NoSuchKey */
    BUS_ERR_LOCKED = -3,         /* Locked: no PIN available to log in */
    BUS_ERR_PIN_INCORRECT = -4,  /* PinIncorrect */
    BUS_ERR_PIN_LOCKED = -5,     /* PinLocked */
    BUS_ERR_TOKEN_REMOVED = -6,  /* TokenRemoved */
    BUS_ERR_DENIED = -7,         /* Denied */
    BUS_ERR_UNSUPPORTED = -8,    /* Unsupported: mechanism/algorithm */
    BUS_ERR_BUSY = -9,           /* Busy */
    BUS_ERR_INVALID_ARGS = -10,  /* InvalidArgs */
    BUS_ERR_DEVICE = -11,        /* Device: the token reported an error */
    BUS_ERR_NO_MEMORY = -12,     /* NoMemory */
    BUS_ERR_TIMEOUT = -13,       /* Timeout */
    BUS_ERR_NOT_RUNNING = -14,   /* client side: agent not reachable */
    BUS_ERR_DISCONNECTED = -15,  /* client side: agent went away mid-call */
    BUS_ERR_PROTOCOL = -16,      /* client side: malformed reply */
} bus_err_t;

/* "org.p11agent.Error.NoSuchKey" for BUS_ERR_NO_SUCH_KEY, ... */
const char *bus_err_name(bus_err_t err);
/* Short human name: "no such key", "token removed", ... */
const char *bus_err_str(bus_err_t err);
/* Maps a D-Bus error name back; unknown names give BUS_ERR_FAILED,
 * org.freedesktop.DBus.Error.NoReply gives BUS_ERR_TIMEOUT and
 * Disconnected/NoServer give BUS_ERR_DISCONNECTED. */
bus_err_t bus_err_from_name(const char *name);

typedef enum bus_key_type {
    BUS_KEY_UNKNOWN = 0,
    BUS_KEY_RSA = 1,
    BUS_KEY_EC = 2,
    BUS_KEY_ED25519 = 3,
    BUS_KEY_ED448 = 4,
} bus_key_type_t;

/* "RSA", "EC", "ED25519", "ED448"; and back (BUS_KEY_UNKNOWN if unknown). */
const char *bus_key_type_name(bus_key_type_t t);
bus_key_type_t bus_key_type_from_name(const char *name);

/* Key capability flags (what the token's mechanisms allow). */
#define BUS_KEY_CAN_RSA_PKCS1 (1u << 0)
#define BUS_KEY_CAN_RSA_PSS (1u << 1)
#define BUS_KEY_CAN_ECDSA (1u << 2)
#define BUS_KEY_CAN_EDDSA (1u << 3)
#define BUS_KEY_LOGGED_IN (1u << 8)     /* token session is logged in */
#define BUS_KEY_ALWAYS_AUTH (1u << 9)   /* CKA_ALWAYS_AUTHENTICATE */

typedef struct bus_key_info {
    char *uri;            /* canonical pkcs11: URI of the private key */
    bus_key_type_t type;
    uint32_t bits;        /* modulus or field size */
    char *group;          /* EC: "prime256v1", "secp384r1", "secp521r1"; else "" */
    char *label;          /* CKA_LABEL, may be "" */
    char *token;          /* token label */
    uint8_t *spki;        /* SubjectPublicKeyInfo DER */
    size_t spki_len;
    uint8_t *cert;        /* certificate DER, NULL/0 if none */
    size_t cert_len;
    uint32_t flags;       /* BUS_KEY_* */
} bus_key_info_t;

void bus_key_info_clear(bus_key_info_t *k);
void bus_key_info_free_array(bus_key_info_t *keys, size_t n);

/* Signature algorithms, as sent on the wire. */
typedef enum bus_sig_alg {
    BUS_SIG_RSA_PKCS1 = 1, /* "rsa-pkcs1": data is the digest (DigestInfo is
                              added by the agent) or, with hash "", raw data */
    BUS_SIG_RSA_PSS = 2,   /* "rsa-pss": data is the digest */
    BUS_SIG_ECDSA = 3,     /* "ecdsa": data is the digest; reply is X9.62 DER */
    BUS_SIG_EDDSA = 4,     /* "eddsa": data is the whole message */
} bus_sig_alg_t;

const char *bus_sig_alg_name(bus_sig_alg_t a);
/* 0 if unknown */
bus_sig_alg_t bus_sig_alg_from_name(const char *name);

typedef struct bus_sign_params {
    bus_sig_alg_t alg;
    char hash[16];       /* "sha1", "sha224", "sha256", "sha384", "sha512" or "" */
    char mgf1_hash[16];  /* PSS only; "" means same as hash */
    int32_t salt_len;    /* PSS only; bytes, >= 0 */
} bus_sign_params_t;

/* --- marshalling (used by both sides; no I/O) --- */

/* Appends an `ay`. FALSE means out of memory. */
dbus_bool_t bus_append_bytes(DBusMessageIter *it, const uint8_t *p, size_t n);
/* Appends an `s` that may hold any bytes (a label from a PKCS#11 module, a
 * client's path): valid UTF-8 goes as is, anything else as a copy with each
 * bad byte replaced by U+FFFD (libdbus aborts the process on invalid UTF-8).
 * NULL counts as "". FALSE means out of memory. */
dbus_bool_t bus_append_string(DBusMessageIter *it, const char *s);

/* Appends an array of key records to msg. BUS_OK or BUS_ERR_NO_MEMORY. */
int bus_append_keys(DBusMessage *msg, const bus_key_info_t *keys, size_t n);
/* Parses a reply holding an array of key records. On success *ret_keys is
 * owned by the caller (bus_key_info_free_array). BUS_ERR_PROTOCOL on a
 * malformed message. */
int bus_parse_keys(DBusMessage *msg, bus_key_info_t **ret_keys, size_t *ret_n);

/* Builds/parses a Sign method call. */
DBusMessage *bus_new_sign_call(const char *uri, const bus_sign_params_t *p, const uint8_t *data,
                               size_t len);
/* The same call in two steps, so that a client signing often with the same
 * key and parameters builds the message once: the template holds key,
 * algorithm and parameters; a call is a copy of it plus the data (copying
 * costs a fraction of marshalling the dictionary and the URI again). The
 * template is only read: several threads may copy it under a lock. */
DBusMessage *bus_new_sign_template(const char *uri, const bus_sign_params_t *p);
DBusMessage *bus_sign_call_from_template(DBusMessage *tmpl, const uint8_t *data, size_t len);
/* Sends a Sign call built by the functions above (not consumed). */
int bus_client_sign_call(DBusConnection *conn, DBusMessage *call, int timeout_ms,
                         uint8_t **ret_sig, size_t *ret_sig_len, char **errmsg);

/* On success *ret_uri and *ret_data point into msg (valid while msg lives). */
int bus_parse_sign_call(DBusMessage *msg, const char **ret_uri, bus_sign_params_t *ret_params,
                        const uint8_t **ret_data, size_t *ret_len);

/* Decryption algorithms, as sent on the wire (RSA keys only). */
typedef enum bus_dec_alg {
    BUS_DEC_RSA_PKCS1 = 1, /* "rsa-pkcs1": CKM_RSA_PKCS (PKCS#1 v1.5 type 2) */
    BUS_DEC_RSA_OAEP = 2,  /* "rsa-oaep": CKM_RSA_PKCS_OAEP; "hash", "mgf1-hash", "label" */
    BUS_DEC_RSA_RAW = 3,   /* "rsa-raw": CKM_RSA_X_509; exactly the modulus size in and
                              out (the provider's constant-time TLS unpadding) */
} bus_dec_alg_t;

const char *bus_dec_alg_name(bus_dec_alg_t a);
/* 0 if unknown */
bus_dec_alg_t bus_dec_alg_from_name(const char *name);

/* Longest ciphertext and OAEP label a Decrypt carries: an RSA-16384
 * modulus; a label longer than that is refused. */
#define BUS_DECRYPT_MAX_DATA 2048
#define BUS_DECRYPT_MAX_LABEL 2048

typedef struct bus_decrypt_params {
    bus_dec_alg_t alg;
    char hash[16];         /* OAEP: "sha1" (default), "sha224", ... "sha512" */
    char mgf1_hash[16];    /* OAEP; "" means same as hash */
    const uint8_t *label;  /* OAEP label, NULL/0 for none; parsed: points into msg */
    size_t label_len;
} bus_decrypt_params_t;

/* Builds a Decrypt call; NULL when out of memory or on bad input (URI not
 * UTF-8, data or label too long, unknown algorithm). */
DBusMessage *bus_new_decrypt_call(const char *uri, const bus_decrypt_params_t *p,
                                  const uint8_t *data, size_t len);
/* Parses one. On success *ret_uri, ret_params->label and *ret_data point
 * into msg (valid while msg lives). BUS_ERR_INVALID_ARGS on a malformed
 * message (wrong types, a name too long, data empty or longer than
 * BUS_DECRYPT_MAX_DATA), BUS_ERR_UNSUPPORTED for an unknown algorithm. */
int bus_parse_decrypt_call(DBusMessage *msg, const char **ret_uri,
                           bus_decrypt_params_t *ret_params, const uint8_t **ret_data,
                           size_t *ret_len);

/* --- client side: private peer-to-peer connection to the agent --- */

/* The socket path a client uses: $P11AGENT_SOCKET, else `configured` if
 * non-NULL/non-empty, else $XDG_RUNTIME_DIR/p11agent/agent.sock, else
 * /run/user/UID/p11agent/agent.sock. Returns a malloc'd string or NULL. */
char *bus_socket_path(const char *configured);
/* Same without reading the environment (fork-safe callers cache the result). */
char *bus_default_socket_path(void);

/* Opens a private connection (never the shared bus connection), with
 * exit-on-disconnect off. The agent's end must be served (SO_PEERCRED) by
 * this user, root or, for the system socket, the user p11agent; otherwise
 * BUS_ERR_DENIED. On failure returns an error and, if errmsg is not NULL, a
 * malloc'd message naming the socket and the cause. */
int bus_client_connect(const char *socket_path, DBusConnection **ret_conn, char **errmsg);
/* Closes and unrefs a connection from bus_client_connect. NULL is fine. */
void bus_client_close(DBusConnection *conn);

/* Each call returns BUS_OK or an error; on error, if errmsg is not NULL,
 * *errmsg is a malloc'd message (the agent's, or one naming the cause). */
int bus_client_list_keys(DBusConnection *conn, int timeout_ms, bus_key_info_t **ret_keys,
                         size_t *ret_n, char **errmsg);
int bus_client_find_keys(DBusConnection *conn, const char *uri, int timeout_ms,
                         bus_key_info_t **ret_keys, size_t *ret_n, char **errmsg);
int bus_client_sign(DBusConnection *conn, const char *uri, const bus_sign_params_t *p,
                    const uint8_t *data, size_t len, int timeout_ms, uint8_t **ret_sig,
                    size_t *ret_sig_len, char **errmsg);

/* Decrypts with the key. *ret_plain is malloc'd and holds a secret: the
 * caller wipes it (OPENSSL_cleanse/explicit_bzero) before free(); the reply
 * message is wiped before it is freed. The plaintext may be empty (PKCS#1 /
 * OAEP of an empty message). BUS_OK or a BUS_ERR_* (the agent's, or
 * INVALID_ARGS/NO_MEMORY/NOT_RUNNING/PROTOCOL locally). */
int bus_client_decrypt(DBusConnection *conn, const char *uri, const bus_decrypt_params_t *p,
                       const uint8_t *data, size_t len, int timeout_ms, uint8_t **ret_plain,
                       size_t *ret_len, char **errmsg);

/* Status: a{sv} with at least "version" s, "tokens" u, "keys" u,
 * "signatures" t (count of successful signatures since start),
 * "sign-failures" t, "clients" u, "pid" u; "decryptions" t and
 * "decrypt-failures" t (0 from an agent too old to send them). Parsed into
 * this struct. */
typedef struct bus_status {
    char *version;
    uint32_t pid;
    uint32_t tokens;
    uint32_t keys;
    uint32_t clients;
    uint64_t signatures;
    uint64_t sign_failures;
    uint64_t decryptions;
    uint64_t decrypt_failures;
} bus_status_t;
void bus_status_clear(bus_status_t *s);
int bus_append_status(DBusMessage *msg, const bus_status_t *s);
int bus_parse_status(DBusMessage *msg, bus_status_t *ret);
int bus_client_status(DBusConnection *conn, int timeout_ms, bus_status_t *ret, char **errmsg);

/* --- tokens --- */

#define BUS_TOKEN_RECORD_SIG "(sssuxu)"

#define BUS_TOKEN_LOGGED_IN (1u << 0)
#define BUS_TOKEN_PIN_PAD (1u << 1)        /* CKF_PROTECTED_AUTHENTICATION_PATH */
#define BUS_TOKEN_LOGIN_REQUIRED (1u << 2)
#define BUS_TOKEN_PIN_COUNT_LOW (1u << 3)
#define BUS_TOKEN_PIN_FINAL_TRY (1u << 4)
#define BUS_TOKEN_PIN_LOCKED (1u << 5)
#define BUS_TOKEN_PIN_CACHED (1u << 6)     /* the agent holds its PIN */

typedef struct bus_token_info {
    char *uri;          /* pkcs11:model=..;manufacturer=..;serial=..;token=.. */
    char *label;
    char *model;
    uint32_t flags;     /* BUS_TOKEN_* */
    int64_t expires;    /* when the login/cached PIN expires (unix seconds), 0: never/none */
    uint32_t keys;      /* number of keys on it */
} bus_token_info_t;

void bus_token_info_free_array(bus_token_info_t *t, size_t n);
int bus_append_tokens(DBusMessage *msg, const bus_token_info_t *t, size_t n);
int bus_parse_tokens(DBusMessage *msg, bus_token_info_t **ret, size_t *ret_n);

int bus_client_list_tokens(DBusConnection *conn, int timeout_ms, bus_token_info_t **ret,
                           size_t *ret_n, char **errmsg);
/* Sends a PIN (1 to PIN_MAX bytes) for a token ("" : the only token that
 * needs one). flags 0 sends Unlock; BUS_UNLOCK_FINAL_TRY sends
 * UnlockWithOptions with "final-try" true: the person accepts that a wrong
 * PIN at the token's final try locks it. The PIN bytes in the message are
 * wiped before it is freed; the caller wipes its copy. BUS_OK or a BUS_ERR_*
 * (the agent's error, or INVALID_ARGS/NO_MEMORY/NOT_RUNNING/... locally). */
#define BUS_UNLOCK_FINAL_TRY (1u << 0)
int bus_client_unlock(DBusConnection *conn, const char *token_uri, const char *pin, size_t len,
                      unsigned flags, uint32_t lifetime_s, int timeout_ms, char **errmsg);
/* Wipes the bytes of the `ay` argument number arg (0-based) inside msg. */
void bus_wipe_bytes_arg(DBusMessage *msg, int arg);
/* Logs out (forget_only false) or only forgets cached PINs, for the tokens
 * matching token_uri ("" or "pkcs11:": all). *ret_count: tokens affected. */
/* Asks the agent to stop (its user and root only). */
int bus_client_stop(DBusConnection *conn, int timeout_ms, char **errmsg);
int bus_client_lock(DBusConnection *conn, const char *token_uri, bool forget_only, int timeout_ms,
                    uint32_t *ret_count, char **errmsg);
