/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11agent.so internals: the provider context, the key object shared by
 * keymgmt, signature and store, the agent client and error reporting.
 *
 * Nothing here is exported from the module; the only exported symbol is
 * OSSL_provider_init (see p11agent.sym).
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/evp.h>

#include "bus.h"
#include "pool.h"

#define PROV_NAME "p11agent"
#define PROV_PROPS "provider=p11agent"

/* Reason codes; the strings are in provider.c (prov_reason_strings). */
enum {
    PROV_R_AGENT = 1,         /* the agent answered with an error */
    PROV_R_NOT_RUNNING = 2,   /* the agent could not be reached */
    PROV_R_NO_SUCH_KEY = 3,   /* a URI that matches nothing */
    PROV_R_NO_MEMORY = 4,
    PROV_R_BAD_KEY = 5,       /* unusable key data (SPKI, type) */
    PROV_R_PRIVATE_REFUSED = 6, /* import/export of private parts */
    PROV_R_BAD_PARAM = 7,     /* unsupported or malformed parameter */
    PROV_R_UNSUPPORTED = 8,   /* algorithm/digest/padding we can't do */
    PROV_R_BUFFER_TOO_SMALL = 9,
    PROV_R_NOT_INITIALIZED = 10,
    PROV_R_BAD_SIGNATURE = 11, /* the agent returned something odd */
    PROV_R_AMBIGUOUS = 12,     /* a URI that matches several keys where one is needed */
    PROV_R_BAD_PLAINTEXT = 13, /* the agent's decryption has an impossible length */
};


/* Digests fetched once per provider context (prov_fetch_md): a signature
 * context is made per signature by many callers, and a fetch each time
 * costs locks and hash lookups. Append-only; an entry is published by
 * storing md last. */
#define PROV_MD_CACHE 16
#define PROV_MD_NAME_MAX 32

typedef struct prov_md_slot {
    _Atomic(EVP_MD *) md;     /* NULL until published */
    char name[PROV_MD_NAME_MAX];
    const char *wire;         /* prov_md_wire_name(md) */
    bool md5sha1;             /* prov_md_is_md5_sha1(md) */
} prov_md_slot_t;

typedef struct prov_ctx {
    const OSSL_CORE_HANDLE *handle;
    OSSL_FUNC_core_new_error_fn *core_new_error;
    OSSL_FUNC_core_set_error_debug_fn *core_set_error_debug;
    OSSL_FUNC_core_vset_error_fn *core_vset_error;
    /* The core's BIO functions, for decoders reading an OSSL_CORE_BIO. */
    OSSL_FUNC_BIO_read_ex_fn *core_bio_read_ex;
    OSSL_FUNC_BIO_gets_fn *core_bio_gets;
    OSSL_FUNC_BIO_write_ex_fn *core_bio_write_ex;
    /* Our own library context with the default provider: digests, SPKI
     * decoding and public-key work never pick our own algorithms. Made on
     * first use (prov_libctx): a process that loads the provider and never
     * uses an agent key, or only signs a digest with one, never pays for
     * it. */
    _Atomic(OSSL_LIB_CTX *) libctx;
    OSSL_PROVIDER *default_prov; /* set with libctx */
    /* The agent client (dbus/pool.h), in p11agent-bus.so: module and pool
     * are loaded and made on the first agent call (busapi.c). */
    _Atomic(const struct prov_bus_api *) bus;
    _Atomic(bus_pool_t *) client;
    char *socket_path;        /* resolved once, at load (NULL: none) */
    unsigned max_connections; /* 0: the pool's default */
    bool disabled;            /* running inside p11agentd: no operations */
    prov_md_slot_t md_cache[PROV_MD_CACHE];
    atomic_uint md_used;      /* slots claimed (some may not be published yet) */
} prov_ctx_t;

/* p11agent-bus.so's one export (busmod.c): the pool functions the
 * provider calls. */
#define PROV_BUS_API_VERSION 1u
typedef struct prov_bus_api {
    unsigned version;         /* PROV_BUS_API_VERSION */
    const char *build;        /* P11AGENT_VERSION */
    bus_pool_t *(*pool_new)(char *socket_path);
    void (*pool_free)(bus_pool_t *p);
    void (*pool_set_max)(bus_pool_t *p, unsigned n);
    int (*pool_find_keys)(bus_pool_t *p, const char *uri, bus_key_info_t **ret_keys,
                          size_t *ret_n, char **errmsg);
    int (*pool_sign)(bus_pool_t *p, const char *uri, const bus_sign_params_t *params,
                     const uint8_t *data, size_t len, uint8_t **ret_sig, size_t *ret_len,
                     char **errmsg);
    int (*pool_decrypt)(bus_pool_t *p, const char *uri, const bus_decrypt_params_t *params,
                        const uint8_t *data, size_t len, uint8_t **ret_plain, size_t *ret_len,
                        char **errmsg);
} prov_bus_api_t;

/* Raises an OpenSSL error with our reason code and a formatted message
 * (through the core's error functions, so the reason strings apply). */
void prov_raise_at(const prov_ctx_t *ctx, int reason, const char *file, int line,
                   const char *func, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
#define prov_raise(ctx, reason, ...) \
    prov_raise_at((ctx), (reason), __FILE__, __LINE__, __func__, __VA_ARGS__)

/* Raises an error for a failed agent call: "p11agent: <what> <uri> failed:
 * <cause>: <agent message>". */
void prov_raise_bus(const prov_ctx_t *ctx, int err, const char *what, const char *uri,
                    const char *msg);

/* Builds a provider context: own libctx with "default", the client (not
 * connected). socket_path may be NULL (default resolution). */
prov_ctx_t *prov_ctx_new(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                         const char *socket_path, bool disabled);
void prov_ctx_free(prov_ctx_t *ctx);

/* busapi.c: the pool calls of dbus/pool.h on the context's pool, made (and
 * p11agent-bus.so loaded) on first use; a failure to load is
 * BUS_ERR_NOT_RUNNING with *errmsg saying why. errmsg must not be NULL. */
int prov_bus_find_keys(prov_ctx_t *ctx, const char *uri, bus_key_info_t **ret_keys, size_t *ret_n,
                       char **errmsg);
int prov_bus_sign(prov_ctx_t *ctx, const char *uri, const bus_sign_params_t *p,
                  const uint8_t *data, size_t len, uint8_t **ret_sig, size_t *ret_len,
                  char **errmsg);
int prov_bus_decrypt(prov_ctx_t *ctx, const char *uri, const bus_decrypt_params_t *p,
                     const uint8_t *data, size_t len, uint8_t **ret_plain, size_t *ret_len,
                     char **errmsg);
/* Closes the pool (teardown). */
void prov_bus_free(prov_ctx_t *ctx);
/* The provider's own library context, made on first use; NULL (error
 * raised) when it cannot be made. */
OSSL_LIB_CTX *prov_libctx(prov_ctx_t *ctx);
/* EVP_MD_fetch(ctx->libctx, name, NULL) through the context's cache: a
 * reference the caller frees, or NULL (no error raised). */
EVP_MD *prov_fetch_md(prov_ctx_t *ctx, const char *name);
/* prov_md_wire_name(md), and prov_md_is_md5_sha1(md) in *ret_md5sha1,
 * without asking OpenSSL (EVP_MD_is_a: name-map lookups under locks, a
 * fifth of the client's CPU per signature) when md came from the cache. */
const char *prov_md_wire(prov_ctx_t *ctx, const EVP_MD *md, bool *ret_md5sha1);

/* --- key object (keymgmt.c) --- */

typedef enum prov_key_kind {
    PROV_KEY_RSA = 0,
    PROV_KEY_RSA_PSS,
    PROV_KEY_EC,
    PROV_KEY_ED25519,
    PROV_KEY_ED448,
    PROV_KEY_KIND_COUNT,
} prov_key_kind_t;

#define PROV_KEY_MAGIC 0x70313161u /* "p11a" */

/* A key held by the agent (uri != NULL), or the public half of some other
 * key imported for comparison (uri == NULL). Immutable once built; shared
 * by reference count across threads. */
typedef struct prov_key {
    uint32_t magic;
    atomic_int refs;
    prov_ctx_t *ctx;
    prov_key_kind_t kind;
    char *uri;
    uint32_t flags;           /* BUS_KEY_* */
    char *group;              /* EC group name, NULL otherwise */
    uint8_t *spki;
    size_t spki_len;
    uint8_t *cert;
    size_t cert_len;
    /* The public part, in the provider's libctx. An agent key whose sizes
     * prov_spki_sizes read from its SPKI gets it decoded on first use
     * (prov_key_pub); others have it from the start. NULL: not (yet)
     * decoded, or an empty imported key. */
    _Atomic(EVP_PKEY *) pub;
    int bits;
    int security_bits;
    int max_size;
} prov_key_t;

/* Name of a kind as OpenSSL knows it ("RSA", "RSA-PSS", "EC", "ED25519",
 * "ED448"). */
const char *prov_key_kind_name(prov_key_kind_t kind);
/* An empty key (no public part yet). */
prov_key_t *prov_key_new(prov_ctx_t *ctx, prov_key_kind_t kind);
/* A key from an agent record: decodes the SPKI in the provider's libctx,
 * caches bits/security-bits/max-size. Raises an error and returns NULL on
 * failure. */
prov_key_t *prov_key_from_info(prov_ctx_t *ctx, const bus_key_info_t *info);
/* Same from parts (tests use it with a software key's SPKI). uri may be
 * NULL for a public-only key. */
prov_key_t *prov_key_from_spki(prov_ctx_t *ctx, prov_key_kind_t kind, const char *uri,
                               const uint8_t *spki, size_t spki_len, const uint8_t *cert,
                               size_t cert_len, uint32_t flags);
prov_key_t *prov_key_up_ref(prov_key_t *key);
/* The key's public part (decoded from the SPKI on first use; not a new
 * reference), or NULL: none, or it does not decode (error raised). */
EVP_PKEY *prov_key_pub(const prov_key_t *key);
/* Whether the key has a public part (decoded or not). */
bool prov_key_has_pub(const prov_key_t *key);

/* spki.c: the figures of an SPKI without decoding it. */
typedef struct prov_spki_sizes {
    const char *group; /* EC: OpenSSL's group name (static); else NULL */
    int bits, security_bits, max_size;
} prov_spki_sizes_t;
/* 1 with *ret set when spki is a key of `kind` whose figures are known
 * here (see spki.c), else 0 (decode it to learn them). */
int prov_spki_sizes(prov_key_kind_t kind, const uint8_t *spki, size_t spki_len,
                    prov_spki_sizes_t *ret);
void prov_key_free(prov_key_t *key);
/* True if the key can sign (held by the agent). */
static inline bool prov_key_is_private(const prov_key_t *key)
{
    return key != NULL && key->uri != NULL;
}

extern const OSSL_DISPATCH prov_rsa_keymgmt_functions[];
extern const OSSL_DISPATCH prov_rsapss_keymgmt_functions[];
extern const OSSL_DISPATCH prov_ec_keymgmt_functions[];
extern const OSSL_DISPATCH prov_ed25519_keymgmt_functions[];
extern const OSSL_DISPATCH prov_ed448_keymgmt_functions[];

/* --- signature (signature.c, sigparams.c) --- */

extern const OSSL_DISPATCH prov_rsa_signature_functions[];
extern const OSSL_DISPATCH prov_ecdsa_signature_functions[];
extern const OSSL_DISPATCH prov_ed25519_signature_functions[];
extern const OSSL_DISPATCH prov_ed448_signature_functions[];

/* PSS salt length special values, as OpenSSL's RSA_PSS_SALTLEN_*. */
#define PROV_SALTLEN_DIGEST (-1)
#define PROV_SALTLEN_MAX (-2)
#define PROV_SALTLEN_AUTO (-3)

/* Parses a pad-mode parameter (integer RSA_*_PADDING or string "pkcs1",
 * "pss", "none", ...) into an RSA_*_PADDING value. */
int prov_parse_pad_mode(const OSSL_PARAM *p, int *ret_pad);
/* Parses saltlen (integer, or string "digest"/"max"/"auto"/number). */
int prov_parse_saltlen(const OSSL_PARAM *p, int *ret_saltlen);
/* The salt length actually used for a key of mod_bits bits and a digest of
 * md_len bytes: digest -> md_len; max/auto -> emLen - md_len - 2. -1 if the
 * salt does not fit. */
int prov_pss_salt_bytes(int saltlen, int mod_bits, int md_len);
/* Maps an EVP_MD to the wire name ("sha256", ...); NULL if unsupported. */
const char *prov_md_wire_name(const EVP_MD *md);
/* MD5-SHA1 (TLS 1.0/1.1): the agent signs its 36 bytes as raw PKCS#1 v1.5
 * ("rsa-pkcs1" with hash ""), since it has no DigestInfo. */
bool prov_md_is_md5_sha1(const EVP_MD *md);

/* DER AlgorithmIdentifier of a signature. md may be NULL for EdDSA.
 * For PSS, salt_bytes is the effective salt length and mgf1 the MGF1 digest.
 * Writes at most cap bytes into buf; returns the length or 0 on failure. */
typedef enum prov_sig_scheme {
    PROV_SIG_RSA_PKCS1,
    PROV_SIG_RSA_PSS,
    PROV_SIG_ECDSA,
    PROV_SIG_ED25519,
    PROV_SIG_ED448,
} prov_sig_scheme_t;
size_t prov_algorithm_id(prov_sig_scheme_t scheme, const EVP_MD *md, const EVP_MD *mgf1,
                         int salt_bytes, uint8_t *buf, size_t cap);

/* --- asymmetric cipher (asymcipher.c): RSA decryption through the agent --- */

extern const OSSL_DISPATCH prov_rsa_asym_cipher_functions[];
/* The TLS premaster from a raw RSA result em (k bytes), in constant time:
 * em's 48 last bytes when em is 00 02 <non-zero padding> 00 and they start
 * with client_version (or alt_version when non-zero), otherwise random.
 * Always writes out; 0 only when k is too small to hold a premaster
 * (public). Exposed for unit tests. */
int prov_tls_premaster_unpad(uint8_t out[48], const uint8_t *em, size_t k,
                             const uint8_t random[48], unsigned int client_version,
                             unsigned int alt_version);

/* --- store (store.c) --- */

extern const OSSL_DISPATCH prov_store_functions[];

/* encoder.c: `openssl pkey -text` (output=text) and `-out` (a key reference
 * as PEM PrivateKeyInfo) of agent keys */
extern const OSSL_DISPATCH prov_text_encoder_functions[];
extern const OSSL_DISPATCH prov_ref_encoder_functions[];

/* FindKeys for uri through the provider's client. On failure, and when
 * nothing matches, raises an error naming the URI (and `what`, e.g. "key
 * reference file", if not NULL) and returns 0. */
int prov_find_keys(prov_ctx_t *ctx, const char *uri, const char *what,
                   bus_key_info_t **ret_keys, size_t *ret_n);
/* Hands a key from an agent record to an OSSL_CALLBACK as an
 * OSSL_OBJECT_PKEY by reference (the object keymgmt load() takes). */
int prov_pass_key(prov_ctx_t *ctx, const bus_key_info_t *info, OSSL_CALLBACK *cb,
                  void *cbarg);

/* --- decoders (decoder.c) --- */

extern const OSSL_DISPATCH prov_pem_decoder_functions[];
extern const OSSL_DISPATCH prov_rsa_decoder_functions[];
extern const OSSL_DISPATCH prov_ec_decoder_functions[];
extern const OSSL_DISPATCH prov_ed25519_decoder_functions[];
extern const OSSL_DISPATCH prov_ed448_decoder_functions[];

/* Exported for the module only. */
OSSL_provider_init_fn OSSL_provider_init;
