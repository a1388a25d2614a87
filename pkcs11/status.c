/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Status codes, the CK_RV table, hash helpers, DigestInfo prefixes, debug. */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"
#include "tok-internal.h"

const char *tok_strerror(int status)
{
    switch (status) {
    case TOK_OK: return "success";
    case TOK_ERR_GENERAL: return "token error";
    case TOK_ERR_NO_MEMORY: return "out of memory";
    case TOK_ERR_ARGS: return "invalid arguments";
    case TOK_ERR_NO_KEY: return "no such key";
    case TOK_ERR_NOT_LOGGED_IN: return "token not logged in";
    case TOK_ERR_PIN_INCORRECT: return "PIN incorrect";
    case TOK_ERR_PIN_LOCKED: return "PIN locked";
    case TOK_ERR_TOKEN_REMOVED: return "token removed";
    case TOK_ERR_MECHANISM: return "mechanism not supported";
    case TOK_ERR_DEVICE: return "device error";
    case TOK_ERR_MODULE: return "PKCS#11 module error";
    case TOK_ERR_BUSY: return "token busy";
    case TOK_ERR_AUTH_REQUIRED: return "the key needs the PIN for every signature";
    default: return "unknown error";
    }
}

static const struct {
    CK_RV rv;
    int status;
} rv_table[] = {
    { CKR_OK, TOK_OK },
    { CKR_USER_ALREADY_LOGGED_IN, TOK_OK },
    { CKR_HOST_MEMORY, TOK_ERR_NO_MEMORY },
    { CKR_ARGUMENTS_BAD, TOK_ERR_ARGS },
    { CKR_DATA_INVALID, TOK_ERR_ARGS },
    { CKR_DATA_LEN_RANGE, TOK_ERR_ARGS },
    { CKR_MECHANISM_PARAM_INVALID, TOK_ERR_ARGS },
    { CKR_BUFFER_TOO_SMALL, TOK_ERR_ARGS },
    { CKR_ATTRIBUTE_VALUE_INVALID, TOK_ERR_ARGS },
    { CKR_TEMPLATE_INCOMPLETE, TOK_ERR_ARGS },
    { CKR_TEMPLATE_INCONSISTENT, TOK_ERR_ARGS },
    { CKR_OBJECT_HANDLE_INVALID, TOK_ERR_NO_KEY },
    { CKR_KEY_HANDLE_INVALID, TOK_ERR_NO_KEY },
    { CKR_USER_NOT_LOGGED_IN, TOK_ERR_NOT_LOGGED_IN },
    { CKR_PIN_INCORRECT, TOK_ERR_PIN_INCORRECT },
    { CKR_PIN_INVALID, TOK_ERR_PIN_INCORRECT },
    { CKR_PIN_LEN_RANGE, TOK_ERR_PIN_INCORRECT },
    { CKR_PIN_LOCKED, TOK_ERR_PIN_LOCKED },
    { CKR_TOKEN_NOT_PRESENT, TOK_ERR_TOKEN_REMOVED },
    { CKR_TOKEN_NOT_RECOGNIZED, TOK_ERR_TOKEN_REMOVED },
    { CKR_DEVICE_REMOVED, TOK_ERR_TOKEN_REMOVED },
    { CKR_SESSION_HANDLE_INVALID, TOK_ERR_TOKEN_REMOVED },
    { CKR_SESSION_CLOSED, TOK_ERR_TOKEN_REMOVED },
    { CKR_SLOT_ID_INVALID, TOK_ERR_TOKEN_REMOVED },
    { CKR_MECHANISM_INVALID, TOK_ERR_MECHANISM },
    { CKR_KEY_TYPE_INCONSISTENT, TOK_ERR_MECHANISM },
    { CKR_KEY_FUNCTION_NOT_PERMITTED, TOK_ERR_MECHANISM },
    { CKR_KEY_SIZE_RANGE, TOK_ERR_MECHANISM },
    { CKR_FUNCTION_NOT_SUPPORTED, TOK_ERR_MECHANISM },
    { CKR_DEVICE_ERROR, TOK_ERR_DEVICE },
    { CKR_DEVICE_MEMORY, TOK_ERR_DEVICE },
    { CKR_FUNCTION_FAILED, TOK_ERR_DEVICE },
    { CKR_GENERAL_ERROR, TOK_ERR_DEVICE },
    { CKR_CRYPTOKI_NOT_INITIALIZED, TOK_ERR_MODULE },
    { CKR_CRYPTOKI_ALREADY_INITIALIZED, TOK_ERR_MODULE },
    { CKR_SESSION_COUNT, TOK_ERR_BUSY },
    { CKR_OPERATION_ACTIVE, TOK_ERR_BUSY },
};

int tok_status_from_rv(unsigned long rv)
{
    for (size_t i = 0; i < sizeof(rv_table) / sizeof(rv_table[0]); i++)
        if (rv_table[i].rv == rv)
            return rv_table[i].status;
    return TOK_ERR_GENERAL;
}

bool tok_rv_is_removal(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
           rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT;
}

static const struct {
    const char *name;
    tok_hash_t hash;
    size_t len;
} hash_table[] = {
    { "sha1", TOK_HASH_SHA1, 20 },     { "sha-1", TOK_HASH_SHA1, 20 },
    { "sha224", TOK_HASH_SHA224, 28 }, { "sha2-224", TOK_HASH_SHA224, 28 },
    { "sha256", TOK_HASH_SHA256, 32 }, { "sha2-256", TOK_HASH_SHA256, 32 },
    { "sha384", TOK_HASH_SHA384, 48 }, { "sha2-384", TOK_HASH_SHA384, 48 },
    { "sha512", TOK_HASH_SHA512, 64 }, { "sha2-512", TOK_HASH_SHA512, 64 },
};

int tok_hash_from_name(const char *name)
{
    if (name == NULL || name[0] == '\0')
        return TOK_HASH_NONE;
    for (size_t i = 0; i < sizeof(hash_table) / sizeof(hash_table[0]); i++)
        if (strcasecmp(hash_table[i].name, name) == 0)
            return hash_table[i].hash;
    return -1;
}

size_t tok_hash_len(tok_hash_t h)
{
    for (size_t i = 0; i < sizeof(hash_table) / sizeof(hash_table[0]); i++)
        if (hash_table[i].hash == h)
            return hash_table[i].len;
    return 0;
}

/* DER of DigestInfo up to (and including) the OCTET STRING header of the digest. */
static const uint8_t di_sha1[] = { 0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e,
                                   0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14 };
static const uint8_t di_sha224[] = { 0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x04, 0x05, 0x00, 0x04, 0x1c };
static const uint8_t di_sha256[] = { 0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20 };
static const uint8_t di_sha384[] = { 0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30 };
static const uint8_t di_sha512[] = { 0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40 };

const uint8_t *tok_digest_info_prefix(tok_hash_t h, size_t *ret_len)
{
    const uint8_t *p = NULL;
    size_t n = 0;

    switch (h) {
    case TOK_HASH_SHA1: p = di_sha1, n = sizeof(di_sha1); break;
    case TOK_HASH_SHA224: p = di_sha224, n = sizeof(di_sha224); break;
    case TOK_HASH_SHA256: p = di_sha256, n = sizeof(di_sha256); break;
    case TOK_HASH_SHA384: p = di_sha384, n = sizeof(di_sha384); break;
    case TOK_HASH_SHA512: p = di_sha512, n = sizeof(di_sha512); break;
    default: return NULL;
    }
    if (ret_len != NULL)
        *ret_len = n;
    return p;
}

bool tok_debug_enabled_from_env(void)
{
    const char *e = getenv("P11AGENT_DEBUG");

    /* the words of a list split at commas and spaces, as the agent reads it */
    while (e != NULL && *e != '\0') {
        size_t n = strcspn(e, ", ");

        if ((n == 6 && strncmp(e, "pkcs11", 6) == 0) || (n == 3 && strncmp(e, "all", 3) == 0))
            return true;
        e += n;
        e += strspn(e, ", ");
    }
    return false;
}

void tok_debug_print(const char *func, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    fprintf(stderr, "p11agent[pkcs11] %s: %s\n", func, buf);
}

void tok_set_errmsg(char **errmsg, const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;

    if (errmsg == NULL)
        return;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    *errmsg = s;
}

char *tok_ck_string(const unsigned char *s, size_t n)
{
    char raw[256];

    /* Blank padded, not NUL-terminated; some modules end early with a NUL.
     * The bytes are the module's: the copy is made valid UTF-8. */
    if (n >= sizeof(raw))
        n = sizeof(raw) - 1;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\0')
            n = i;
    while (n > 0 && s[n - 1] == ' ')
        n--;
    memcpy(raw, s, n);
    raw[n] = '\0';
    return text_dbus_safe(raw, 3 * sizeof(raw));
}

void tok_ctx_set_warn(tok_ctx_t *ctx, tok_warn_fn_t fn, void *data)
{
    if (ctx == NULL)
        return;
    ctx->warn = fn;
    ctx->warn_data = data;
    /* what tok_ctx_new warned about (a refused module) reaches the log now */
    if (fn != NULL && ctx->pending_warn != NULL) {
        char *save = NULL;

        for (char *line = strtok_r(ctx->pending_warn, "\n", &save); line != NULL;
             line = strtok_r(NULL, "\n", &save))
            fn(data, line);
        free(ctx->pending_warn);
        ctx->pending_warn = NULL;
    }
}

void tok_warn(tok_ctx_t *ctx, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    tok_debug(ctx, "%s", msg);
    if (ctx != NULL && ctx->warn != NULL) {
        ctx->warn(ctx->warn_data, msg);
    } else if (ctx != NULL) {
        /* kept for tok_ctx_set_warn (bounded: a few lines at load time) */
        size_t old = ctx->pending_warn ? strlen(ctx->pending_warn) : 0;
        char *p;

        if (old < 16384 && (p = realloc(ctx->pending_warn, old + strlen(msg) + 2)) != NULL) {
            sprintf(p + old, "%s\n", msg);
            ctx->pending_warn = p;
        }
    }
}
