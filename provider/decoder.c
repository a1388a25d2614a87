/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Decoders for key-reference files (format in dbus/keyref.h), so that
 * programs that only take a key *file* (PEM_read_bio_PrivateKey,
 * SSL_CTX_use_PrivateKey_file, OSSL_STORE's file: loader) get a key held
 * by the agent.
 *
 *   "PVK", input=pem: reads one PEM block. OpenSSL 3.0's own PEM->DER
 *       decoder ignores labels it does not know, so ours takes
 *       "P11AGENT KEY REFERENCE" and "PKCS#11 PROVIDER URI" blocks: it
 *       parses the reference and asks the agent for the key (one FindKeys,
 *       at decode time, never at provider start). In a key decoder context
 *       (PEM_read_bio_PrivateKey: a selection) it passes the key by
 *       reference to our keymgmt's load(); in OSSL_STORE's file: loader
 *       (selection 0) it passes the DER on with the key's type and our
 *       structure name. Any other block is consumed and left alone (the next
 *       block must be readable: a certificate followed by the reference is
 *       a common file).
 *   "RSA"/"EC"/"ED25519"/"ED448", input=der, structure=ours: parse the
 *       reference and pass an OSSL_OBJECT_PKEY by reference, exactly as the
 *       store does, to our keymgmt's load().
 *
 * Why "PVK": OpenSSL 3.0 takes a decoder into a context by its name, the
 * type it outputs: any decoder named like the input type of one already
 * there joins as an extra (OSSL_DECODER_CTX_add_extra), and then every
 * provider's decoders are scanned again for what could feed it. Named
 * "DER", ours joined every context that reads DER, i.e. the one OpenSSL
 * builds for each certificate's public key (four per mTLS handshake):
 * ~16 us per certificate for nothing. The file: loader starts from
 * "obj" decoders taking DER, MSBLOB and PVK, so it still takes a decoder
 * named PVK (and hands our output to the store as it is). Key contexts
 * hold a PVK reader (the default provider's, for RSA and DSA, which wants
 * a private key) when they decode a private key of any type, as
 * PEM_read_bio_PrivateKey does, or an RSA or DSA one; public-key contexts
 * never do. A context for a private key of one other given type (EC from
 * PEM, say) does not see reference files.
 *
 * Why the lookup happens in the PEM decoder: OSSL_STORE's file: loader
 * (openssl pkey/s_client -key FILE) takes the PEM decoder's output and
 * decodes it again in a fresh decoder context, discarding every error
 * raised there. Errors of the PEM decoder itself reach the application, so
 * that is where "no such key", "agent not running" and "wrong type" must
 * be found. The record it fetched is handed to the key decoder, which
 * OpenSSL calls from inside the PEM decoder's callback on the same thread
 * (a thread-local pointer valid only during that callback), so a load
 * costs one FindKeys. A key decoder fed DER directly (a DER file, an
 * application's own decoder context) looks the key up itself.
 *
 * Failures that are about a reference (malformed, unknown key, agent down)
 * stop the decoding with an error naming the file's label or the URI.
 */
#include "config.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "keyref.h"
#include "provider.h"

/* The longest PEM line we keep, and the most base64 in one block. */
#define PEM_LINE_MAX 1024
#define PEM_B64_MAX (((BUS_KEYREF_MAX_DER + 2) / 3) * 4 + 4)

/* The key the PEM decoder looked up, for the key decoder running inside
 * its data callback on this thread (see above). NULL outside that call. */
typedef struct handoff {
    const prov_ctx_t *ctx;
    const char *uri;            /* as written in the reference */
    const bus_key_info_t *info;
} handoff_t;
static _Thread_local const handoff_t *dec_handoff;

typedef struct dec_ctx {
    prov_ctx_t *ctx;
    bus_key_type_t type; /* BUS_KEY_UNKNOWN for the PEM decoder */
} dec_ctx_t;

static void *dec_newctx(prov_ctx_t *ctx, bus_key_type_t type)
{
    dec_ctx_t *d = calloc(1, sizeof(*d));

    if (d == NULL) {
        prov_raise(ctx, PROV_R_NO_MEMORY, "p11agent: out of memory");
        return NULL;
    }
    d->ctx = ctx;
    d->type = type;
    return d;
}

static void dec_freectx(void *vd)
{
    free(vd);
}

/*
 * A reference names a private key (the pair, held by the agent); 0 means
 * "anything". A request without the private key is never for us, and
 * saying so matters for speed: OpenSSL 3.0 builds a decoder context for
 * every SubjectPublicKeyInfo it parses (each certificate: d2i_X509 ->
 * OSSL_DECODER_CTX_new_for_pkey(..., EVP_PKEY_PUBLIC_KEY)), four per mTLS
 * handshake. A decoder that accepts the selection is instantiated there and
 * makes OpenSSL scan every provider's decoders once more for what could feed
 * it: ~30 us per certificate, a tenth of a handshake, with no key file in
 * sight. Private-key loads (PEM_read_bio_PrivateKey, the file: store with
 * selection 0) still find us.
 */
static int dec_does_selection(void *provctx, int selection)
{
    return selection == 0 || (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0;
}

/* Keys only ever leave by reference, to our own keymgmt. OpenSSL 3.0 calls
 * this unchecked when another provider's keymgmt is picked. */
static int dec_export_object(void *vd, const void *objref, size_t objref_sz,
                             OSSL_CALLBACK *export_cb, void *export_cbarg)
{
    const dec_ctx_t *d = vd;
    const prov_key_t *key = NULL;

    if (objref != NULL && objref_sz == sizeof(key))
        memcpy(&key, objref, sizeof(key));
    if (d != NULL)
        prov_raise(d->ctx, PROV_R_PRIVATE_REFUSED,
                   "p11agent: the key %s can only be used through the p11agent provider",
                   key != NULL && key->magic == PROV_KEY_MAGIC && key->uri != NULL ? key->uri
                                                                                  : "");
    return 0;
}

/* The one key a reference names: FindKeys, exactly one match, and the
 * type the reference says (if it says one). Raises an error naming the
 * URI and returns 0 otherwise. */
static int ref_lookup(prov_ctx_t *ctx, const bus_keyref_t *ref, bus_key_info_t **ret_keys,
                      size_t *ret_n)
{
    bus_key_info_t *keys = NULL;
    size_t n = 0;

    if (!prov_find_keys(ctx, ref->uri, "named by a key reference file", &keys, &n))
        return 0;
    if (n != 1) {
        prov_raise(ctx, PROV_R_NO_SUCH_KEY,
                   "p11agent: %s matches %zu keys; a key reference must name exactly one "
                   "(write it with p11agentctl ref)", ref->uri, n);
        goto err;
    }
    if (keys[0].type == BUS_KEY_UNKNOWN
        || (ref->type != BUS_KEY_UNKNOWN && keys[0].type != ref->type)) {
        prov_raise(ctx, PROV_R_BAD_KEY,
                   "p11agent: the key reference says %s is a %s key, the agent has a %s key",
                   ref->uri, ref->type != BUS_KEY_UNKNOWN ? bus_key_type_name(ref->type) : "known",
                   bus_key_type_name(keys[0].type));
        goto err;
    }
    *ret_keys = keys;
    *ret_n = n;
    return 1;
err:
    bus_key_info_free_array(keys, n);
    return 0;
}

/* --- PEM -> DER --- */

typedef enum line_status { LINE_OK, LINE_EOF, LINE_TOO_LONG } line_status_t;

/* Reads one line (without its end-of-line and trailing white space) into
 * buf. A line longer than the buffer is consumed whole and reported. */
static line_status_t read_line(const prov_ctx_t *ctx, OSSL_CORE_BIO *in, char *buf, size_t cap)
{
    size_t len = 0;
    bool too_long = false;

    for (;;) {
        char chunk[256];
        int n = ctx->core_bio_gets(in, chunk, sizeof(chunk));
        bool eol;

        if (n <= 0)
            break; /* end of input (or a read error: the same to us) */
        eol = chunk[n - 1] == '\n';
        if (!too_long && len + (size_t)n < cap) {
            memcpy(buf + len, chunk, (size_t)n);
            len += (size_t)n;
        } else {
            too_long = true;
        }
        if (eol)
            break;
    }
    if (len == 0 && !too_long) {
        buf[0] = '\0';
        /* An empty line still ends in '\n'; only EOF gives nothing. */
        return LINE_EOF;
    }
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' '
                       || buf[len - 1] == '\t'))
        len--;
    buf[len] = '\0';
    return too_long ? LINE_TOO_LONG : LINE_OK;
}

/* "-----BEGIN LABEL-----" / "-----END LABEL-----": the label, or NULL. */
static const char *pem_boundary(char *line, const char *kind)
{
    size_t k = strlen(kind), len = strlen(line);

    if (len < 10 + k + 1 || strncmp(line, "-----", 5) != 0 || strncmp(line + 5, kind, k) != 0
        || line[5 + k] != ' ' || strcmp(line + len - 5, "-----") != 0)
        return NULL;
    line[len - 5] = '\0';
    return line + 5 + k + 1;
}

static int pem_decode_b64(const char *b64, size_t b64_len, uint8_t *out, size_t cap,
                          size_t *ret_len)
{
    EVP_ENCODE_CTX *e = EVP_ENCODE_CTX_new();
    int n = 0, m = 0, ok = 0;

    if (e == NULL || b64_len > INT_MAX || cap < (b64_len / 4) * 3 + 3)
        goto out;
    EVP_DecodeInit(e);
    if (EVP_DecodeUpdate(e, out, &n, (const unsigned char *)b64, (int)b64_len) < 0)
        goto out;
    if (EVP_DecodeFinal(e, out + n, &m) < 0)
        goto out;
    *ret_len = (size_t)n + (size_t)m;
    ok = 1;
out:
    EVP_ENCODE_CTX_free(e);
    return ok;
}

static int pem_decode(void *vd, OSSL_CORE_BIO *in, int selection, OSSL_CALLBACK *data_cb,
                      void *data_cbarg, OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    dec_ctx_t *d = vd;
    prov_ctx_t *ctx = d->ctx;
    char line[PEM_LINE_MAX], label[PEM_LINE_MAX], *b64 = NULL;
    uint8_t *der = NULL;
    size_t b64_len = 0, der_len = 0, n = 0;
    bus_key_info_t *keys = NULL;
    bus_keyref_t ref = { 0 };
    const char *why = NULL, *l;
    bool ours;
    line_status_t st;
    int ok = 1; /* "nothing for us here": let the next decoder try */

    if (ctx->core_bio_gets == NULL)
        return 1;
    /* Find a BEGIN line, as PEM_read_bio does (text before it is skipped). */
    for (;;) {
        st = read_line(ctx, in, line, sizeof(line));
        if (st == LINE_EOF)
            return 1;
        if (st == LINE_OK && (l = pem_boundary(line, "BEGIN")) != NULL)
            break;
    }
    strcpy(label, l);
    ours = strcmp(label, BUS_KEYREF_PEM_LABEL) == 0
           || strcmp(label, BUS_KEYREF_PK11PROV_PEM_LABEL) == 0;
    if (ours && (b64 = malloc(PEM_B64_MAX)) == NULL) {
        prov_raise(ctx, PROV_R_NO_MEMORY, "p11agent: out of memory");
        return 0;
    }
    /* Up to the matching END line; other blocks are skipped whole. */
    for (;;) {
        st = read_line(ctx, in, line, sizeof(line));
        if (st == LINE_EOF) {
            if (!ours)
                goto out;
            why = "truncated: the file ends before the END line";
            goto bad;
        }
        if (st == LINE_OK && (l = pem_boundary(line, "END")) != NULL) {
            if (strcmp(l, label) == 0)
                break;
            if (ours) {
                why = "END line does not match the BEGIN line";
                goto bad;
            }
            continue;
        }
        if (!ours)
            continue;
        if (st == LINE_TOO_LONG || strchr(line, ':') != NULL) {
            why = st == LINE_TOO_LONG ? "line too long" : "PEM headers are not supported";
            goto bad;
        }
        if (b64_len + strlen(line) >= PEM_B64_MAX) {
            why = "too large for a key reference";
            goto bad;
        }
        memcpy(b64 + b64_len, line, strlen(line));
        b64_len += strlen(line);
    }
    if (!ours)
        goto out;
    der = malloc(PEM_B64_MAX);
    if (der == NULL) {
        prov_raise(ctx, PROV_R_NO_MEMORY, "p11agent: out of memory");
        ok = 0;
        goto out;
    }
    if (b64_len == 0 || !pem_decode_b64(b64, b64_len, der, PEM_B64_MAX, &der_len)) {
        why = "invalid base64";
        goto bad;
    }
    if (bus_keyref_decode(der, der_len, &ref, &why) != BUS_OK)
        goto bad;
    if (!ref_lookup(ctx, &ref, &keys, &n)) {
        ok = 0;
        goto out;
    }
    if (selection != 0) {
        /* A key decoder context (PEM_read_bio_PrivateKey): the key itself,
         * as no DER decoder would be offered our output (see the top). */
        ok = prov_pass_key(ctx, &keys[0], data_cb, data_cbarg);
        goto out;
    }
    {
        OSSL_PARAM params[6], *p = params;
        int objtype = OSSL_OBJECT_PKEY;
        const char *structure = ref.format == BUS_KEYREF_P11AGENT
                                    ? BUS_KEYREF_STRUCTURE
                                    : BUS_KEYREF_PK11PROV_STRUCTURE;
        handoff_t h = { .ctx = ctx, .uri = ref.uri, .info = &keys[0] };
        const handoff_t *saved = dec_handoff;

        *p++ = OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &objtype);
        *p++ = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE,
                                                (char *)bus_key_type_name(keys[0].type), 0);
        *p++ = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_STRUCTURE,
                                                (char *)structure, 0);
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_DATA, der, der_len);
        *p++ = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DESC, ref.uri, 0);
        *p = OSSL_PARAM_construct_end();
        dec_handoff = &h;
        ok = data_cb(params, data_cbarg);
        dec_handoff = saved;
    }
    goto out;
bad:
    prov_raise(ctx, PROV_R_BAD_KEY, "p11agent: malformed key reference (PEM \"%s\"): %s", label,
               why);
    ok = 0;
out:
    bus_key_info_free_array(keys, n);
    bus_keyref_clear(&ref);
    free(der);
    free(b64);
    return ok;
}

/* --- DER -> key --- */

static int key_decode(void *vd, OSSL_CORE_BIO *in, int selection, OSSL_CALLBACK *data_cb,
                      void *data_cbarg, OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    dec_ctx_t *d = vd;
    prov_ctx_t *ctx = d->ctx;
    uint8_t der[BUS_KEYREF_MAX_DER + 1];
    size_t len = 0, got = 0;
    bus_key_info_t *keys = NULL;
    bus_keyref_t ref = { 0 };
    const char *why = NULL;
    size_t n = 0;
    int ok = 1;

    if (ctx->core_bio_read_ex == NULL)
        return 1;
    while (len < sizeof(der) && ctx->core_bio_read_ex(in, der + len, sizeof(der) - len, &got)
           && got > 0)
        len += got;
    /* Not a reference (any DER can come here when no structure is
     * known, e.g. from the file: store): not ours, no error. */
    if (len == 0 || len > BUS_KEYREF_MAX_DER || bus_keyref_decode(der, len, &ref, &why) != BUS_OK)
        return 1;
    if (ref.type != BUS_KEY_UNKNOWN && ref.type != d->type)
        goto out; /* another type's decoder takes it */
    if (dec_handoff != NULL && dec_handoff->ctx == ctx && strcmp(dec_handoff->uri, ref.uri) == 0) {
        /* Looked up a moment ago by the PEM decoder calling us. */
        if (dec_handoff->info->type != d->type)
            goto out;
        ok = prov_pass_key(ctx, dec_handoff->info, data_cb, data_cbarg);
        goto out;
    }
    if (!ref_lookup(ctx, &ref, &keys, &n)) {
        ok = 0;
        goto out;
    }
    ok = prov_pass_key(ctx, &keys[0], data_cb, data_cbarg);
out:
    bus_key_info_free_array(keys, n);
    bus_keyref_clear(&ref);
    return ok;
}

#define FN(id, f) { id, (void (*)(void))(f) }

#define DEFINE_NEWCTX(name, type)                  \
    static void *name(void *provctx)               \
    {                                              \
        return dec_newctx(provctx, type);          \
    }
DEFINE_NEWCTX(pem_newctx, BUS_KEY_UNKNOWN)
DEFINE_NEWCTX(rsa_newctx, BUS_KEY_RSA)
DEFINE_NEWCTX(ec_newctx, BUS_KEY_EC)
DEFINE_NEWCTX(ed25519_newctx, BUS_KEY_ED25519)
DEFINE_NEWCTX(ed448_newctx, BUS_KEY_ED448)

const OSSL_DISPATCH prov_pem_decoder_functions[] = {
    FN(OSSL_FUNC_DECODER_NEWCTX, pem_newctx),
    FN(OSSL_FUNC_DECODER_FREECTX, dec_freectx),
    FN(OSSL_FUNC_DECODER_DECODE, pem_decode),
    FN(OSSL_FUNC_DECODER_EXPORT_OBJECT, dec_export_object),
    { 0, NULL },
};

#define KEY_DECODER_TABLE(name, newctx)                                   \
    const OSSL_DISPATCH name[] = {                                        \
        FN(OSSL_FUNC_DECODER_NEWCTX, newctx),                             \
        FN(OSSL_FUNC_DECODER_FREECTX, dec_freectx),                       \
        FN(OSSL_FUNC_DECODER_DOES_SELECTION, dec_does_selection),         \
        FN(OSSL_FUNC_DECODER_DECODE, key_decode),                         \
        FN(OSSL_FUNC_DECODER_EXPORT_OBJECT, dec_export_object),           \
        { 0, NULL },                                                      \
    }

KEY_DECODER_TABLE(prov_rsa_decoder_functions, rsa_newctx);
KEY_DECODER_TABLE(prov_ec_decoder_functions, ec_newctx);
KEY_DECODER_TABLE(prov_ed25519_decoder_functions, ed25519_newctx);
KEY_DECODER_TABLE(prov_ed448_decoder_functions, ed448_newctx);
