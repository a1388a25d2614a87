/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Marshalling of key records, Sign calls and Status replies. No I/O here. */
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "text.h"

/* Upper bounds on what a peer may send us. Anything larger is malformed. */
#define MAX_BLOB (1u << 20)
#define MAX_KEYS 100000u

static void *memdup(const void *p, size_t n)
{
    void *r;

    if (n == 0)
        return NULL;
    r = malloc(n);
    if (r != NULL)
        memcpy(r, p, n);
    return r;
}

static const char *nz(const char *s)
{
    return s ? s : "";
}

dbus_bool_t bus_append_bytes(DBusMessageIter *it, const uint8_t *p, size_t n)
{
    DBusMessageIter arr;
    static const uint8_t empty[1];

    if (!dbus_message_iter_open_container(it, DBUS_TYPE_ARRAY, DBUS_TYPE_BYTE_AS_STRING, &arr))
        return FALSE;
    if (!p)
        p = empty;
    if (!dbus_message_iter_append_fixed_array(&arr, DBUS_TYPE_BYTE, &p, (int)n)) {
        dbus_message_iter_abandon_container(it, &arr);
        return FALSE;
    }
    return dbus_message_iter_close_container(it, &arr);
}

dbus_bool_t bus_append_string(DBusMessageIter *it, const char *s)
{
    size_t n;
    char *safe;
    dbus_bool_t ok;

    s = nz(s);
    n = strlen(s);
    if (text_utf8_valid(s, n))
        return dbus_message_iter_append_basic(it, DBUS_TYPE_STRING, &s);
    /* room for every byte to become U+FFFD: replaced, never cut */
    safe = text_dbus_safe(s, n * 3 + 4);
    if (!safe)
        return FALSE;
    ok = dbus_message_iter_append_basic(it, DBUS_TYPE_STRING, &safe);
    free(safe);
    return ok;
}

int bus_append_keys(DBusMessage *msg, const bus_key_info_t *keys, size_t n)
{
    DBusMessageIter it, arr;

    dbus_message_iter_init_append(msg, &it);
    if (!dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, BUS_KEY_RECORD_SIG, &arr))
        return BUS_ERR_NO_MEMORY;
    for (size_t i = 0; i < n; i++) {
        const bus_key_info_t *k = &keys[i];
        DBusMessageIter st;
        dbus_uint32_t bits = k->bits, flags = k->flags;

        if (!dbus_message_iter_open_container(&arr, DBUS_TYPE_STRUCT, NULL, &st))
            goto oom;
        /* labels and token names come from the module: any bytes */
        if (!bus_append_string(&st, k->uri) ||
            !bus_append_string(&st, bus_key_type_name(k->type)) ||
            !dbus_message_iter_append_basic(&st, DBUS_TYPE_UINT32, &bits) ||
            !bus_append_string(&st, k->group) || !bus_append_string(&st, k->label) ||
            !bus_append_string(&st, k->token) ||
            !bus_append_bytes(&st, k->spki, k->spki_len) || !bus_append_bytes(&st, k->cert, k->cert_len) ||
            !dbus_message_iter_append_basic(&st, DBUS_TYPE_UINT32, &flags)) {
            dbus_message_iter_abandon_container(&arr, &st);
            goto oom;
        }
        if (!dbus_message_iter_close_container(&arr, &st))
            goto oom;
    }
    if (!dbus_message_iter_close_container(&it, &arr))
        return BUS_ERR_NO_MEMORY;
    return BUS_OK;
oom:
    dbus_message_iter_abandon_container(&it, &arr);
    return BUS_ERR_NO_MEMORY;
}

/* Reads the next field of type `type` from it and advances. */
static int get_basic(DBusMessageIter *it, int type, void *ret)
{
    if (dbus_message_iter_get_arg_type(it) != type)
        return BUS_ERR_PROTOCOL;
    dbus_message_iter_get_basic(it, ret);
    dbus_message_iter_next(it);
    return BUS_OK;
}

static int get_string_dup(DBusMessageIter *it, char **ret)
{
    const char *s;
    int r = get_basic(it, DBUS_TYPE_STRING, &s);

    if (r < 0)
        return r;
    *ret = strdup(s);
    return *ret ? BUS_OK : BUS_ERR_NO_MEMORY;
}

/* Reads an `ay`; *ret points into the message. */
static int get_bytes(DBusMessageIter *it, const uint8_t **ret, size_t *ret_len)
{
    DBusMessageIter sub;
    const uint8_t *p = NULL;
    int n = 0;

    if (dbus_message_iter_get_arg_type(it) != DBUS_TYPE_ARRAY ||
        dbus_message_iter_get_element_type(it) != DBUS_TYPE_BYTE)
        return BUS_ERR_PROTOCOL;
    dbus_message_iter_recurse(it, &sub);
    dbus_message_iter_get_fixed_array(&sub, &p, &n);
    if (n < 0 || (size_t)n > MAX_BLOB)
        return BUS_ERR_PROTOCOL;
    *ret = n ? p : NULL;
    *ret_len = (size_t)n;
    dbus_message_iter_next(it);
    return BUS_OK;
}

static int get_bytes_dup(DBusMessageIter *it, uint8_t **ret, size_t *ret_len)
{
    const uint8_t *p;
    size_t n;
    int r = get_bytes(it, &p, &n);

    if (r < 0)
        return r;
    *ret = memdup(p, n);
    if (n && !*ret)
        return BUS_ERR_NO_MEMORY;
    *ret_len = n;
    return BUS_OK;
}

static int parse_key(DBusMessageIter *st, bus_key_info_t *k)
{
    const char *type;
    dbus_uint32_t u;
    int r;

    if ((r = get_string_dup(st, &k->uri)) < 0)
        return r;
    if ((r = get_basic(st, DBUS_TYPE_STRING, &type)) < 0)
        return r;
    k->type = bus_key_type_from_name(type);
    if ((r = get_basic(st, DBUS_TYPE_UINT32, &u)) < 0)
        return r;
    k->bits = u;
    if ((r = get_string_dup(st, &k->group)) < 0 || (r = get_string_dup(st, &k->label)) < 0 ||
        (r = get_string_dup(st, &k->token)) < 0 ||
        (r = get_bytes_dup(st, &k->spki, &k->spki_len)) < 0 ||
        (r = get_bytes_dup(st, &k->cert, &k->cert_len)) < 0)
        return r;
    if ((r = get_basic(st, DBUS_TYPE_UINT32, &u)) < 0)
        return r;
    k->flags = u;
    if (dbus_message_iter_get_arg_type(st) != DBUS_TYPE_INVALID)
        return BUS_ERR_PROTOCOL;
    return BUS_OK;
}

int bus_parse_keys(DBusMessage *msg, bus_key_info_t **ret_keys, size_t *ret_n)
{
    DBusMessageIter it, arr;
    bus_key_info_t *keys = NULL;
    size_t n = 0, cap = 0;
    int r = BUS_ERR_PROTOCOL;

    if (!dbus_message_iter_init(msg, &it) || dbus_message_iter_get_arg_type(&it) != DBUS_TYPE_ARRAY ||
        strcmp(dbus_message_get_signature(msg), "a" BUS_KEY_RECORD_SIG) != 0)
        return BUS_ERR_PROTOCOL;
    dbus_message_iter_recurse(&it, &arr);
    while (dbus_message_iter_get_arg_type(&arr) == DBUS_TYPE_STRUCT) {
        DBusMessageIter st;

        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            bus_key_info_t *nk;

            if (ncap > MAX_KEYS) {
                r = BUS_ERR_PROTOCOL;
                goto err;
            }
            nk = realloc(keys, ncap * sizeof(*keys));
            if (!nk) {
                r = BUS_ERR_NO_MEMORY;
                goto err;
            }
            keys = nk;
            cap = ncap;
        }
        memset(&keys[n], 0, sizeof(keys[n]));
        dbus_message_iter_recurse(&arr, &st);
        n++;
        r = parse_key(&st, &keys[n - 1]);
        if (r < 0)
            goto err;
        dbus_message_iter_next(&arr);
    }
    *ret_keys = keys;
    *ret_n = n;
    return BUS_OK;
err:
    bus_key_info_free_array(keys, n);
    return r;
}

static dbus_bool_t append_dict_entry(DBusMessageIter *dict, const char *key, int type,
                                     const void *value)
{
    DBusMessageIter entry, var;
    char sig[2] = {(char)type, 0};

    if (!dbus_message_iter_open_container(dict, DBUS_TYPE_DICT_ENTRY, NULL, &entry))
        return FALSE;
    if (!dbus_message_iter_append_basic(&entry, DBUS_TYPE_STRING, &key) ||
        !dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, sig, &var)) {
        dbus_message_iter_abandon_container(dict, &entry);
        return FALSE;
    }
    if (!(type == DBUS_TYPE_STRING ? bus_append_string(&var, *(const char *const *)value)
                                   : dbus_message_iter_append_basic(&var, type, value))) {
        dbus_message_iter_abandon_container(&entry, &var);
        dbus_message_iter_abandon_container(dict, &entry);
        return FALSE;
    }
    if (!dbus_message_iter_close_container(&entry, &var)) {
        dbus_message_iter_abandon_container(dict, &entry);
        return FALSE;
    }
    return dbus_message_iter_close_container(dict, &entry);
}

DBusMessage *bus_new_sign_template(const char *uri, const bus_sign_params_t *p)
{
    DBusMessage *msg;
    DBusMessageIter it, dict;
    const char *alg = bus_sig_alg_name(p->alg);
    const char *hash = p->hash, *mgf1 = p->mgf1_hash;
    dbus_int32_t salt = p->salt_len;

    /* a URI that is not UTF-8 names no key: refuse it here, libdbus would
     * abort the application */
    if (!alg || !uri || !text_utf8_valid(uri, strlen(uri)))
        return NULL;
    msg = dbus_message_new_method_call(NULL, BUS_PATH, BUS_IFACE, "Sign");
    if (!msg)
        return NULL;
    dbus_message_iter_init_append(msg, &it);
    if (!dbus_message_iter_append_basic(&it, DBUS_TYPE_STRING, &uri) ||
        !dbus_message_iter_append_basic(&it, DBUS_TYPE_STRING, &alg))
        goto oom;
    if (!dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict))
        goto oom;
    if ((hash[0] && !append_dict_entry(&dict, "hash", DBUS_TYPE_STRING, &hash)) ||
        (p->alg == BUS_SIG_RSA_PSS &&
         ((mgf1[0] && !append_dict_entry(&dict, "mgf1-hash", DBUS_TYPE_STRING, &mgf1)) ||
          !append_dict_entry(&dict, "salt-length", DBUS_TYPE_INT32, &salt)))) {
        dbus_message_iter_abandon_container(&it, &dict);
        goto oom;
    }
    if (!dbus_message_iter_close_container(&it, &dict))
        goto oom;
    return msg;
oom:
    dbus_message_unref(msg);
    return NULL;
}

DBusMessage *bus_sign_call_from_template(DBusMessage *tmpl, const uint8_t *data, size_t len)
{
    DBusMessage *msg;
    DBusMessageIter it;

    if (len > MAX_BLOB)
        return NULL;
    msg = dbus_message_copy(tmpl);
    if (!msg)
        return NULL;
    dbus_message_iter_init_append(msg, &it);
    if (!bus_append_bytes(&it, data, len)) {
        dbus_message_unref(msg);
        return NULL;
    }
    return msg;
}

DBusMessage *bus_new_sign_call(const char *uri, const bus_sign_params_t *p, const uint8_t *data,
                               size_t len)
{
    DBusMessage *msg;
    DBusMessageIter it;

    if (len > MAX_BLOB)
        return NULL;
    msg = bus_new_sign_template(uri, p);
    if (!msg)
        return NULL;
    dbus_message_iter_init_append(msg, &it);
    if (!bus_append_bytes(&it, data, len)) {
        dbus_message_unref(msg);
        return NULL;
    }
    return msg;
}

/* Steps through an a{sv}: the next entry's key and value; false at the end. */
static bool dict_next(DBusMessageIter *dict, const char **ret_key, DBusMessageIter *ret_var)
{
    DBusMessageIter entry;

    if (dbus_message_iter_get_arg_type(dict) != DBUS_TYPE_DICT_ENTRY)
        return false;
    dbus_message_iter_recurse(dict, &entry);
    dbus_message_iter_get_basic(&entry, ret_key);
    dbus_message_iter_next(&entry);
    dbus_message_iter_recurse(&entry, ret_var);
    dbus_message_iter_next(dict);
    return true;
}

static int copy_name(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);

    if (n >= size)
        return BUS_ERR_INVALID_ARGS;
    memcpy(dst, src, n + 1);
    return BUS_OK;
}

/* The head of a Sign or Decrypt call, "ssa{sv}ay": the key URI and the
 * algorithm's name; *it left on the parameters. BUS_OK or
 * BUS_ERR_INVALID_ARGS. */
static int call_head(DBusMessage *msg, DBusMessageIter *it, const char **ret_uri,
                     const char **ret_alg)
{
    if (strcmp(dbus_message_get_signature(msg), "ssa{sv}ay") != 0 ||
        !dbus_message_iter_init(msg, it))
        return BUS_ERR_INVALID_ARGS;
    dbus_message_iter_get_basic(it, ret_uri);
    dbus_message_iter_next(it);
    dbus_message_iter_get_basic(it, ret_alg);
    dbus_message_iter_next(it);
    return BUS_OK;
}

/* A "hash" or "mgf1-hash" parameter into hash or mgf1 (size bytes each):
 * 1 if it was one, 0 if key is another parameter, BUS_ERR_INVALID_ARGS if
 * the value is not a string or too long. */
static int hash_param(const char *key, DBusMessageIter *var, char *hash, char *mgf1, size_t size)
{
    const char *v;

    if (strcmp(key, "hash") != 0 && strcmp(key, "mgf1-hash") != 0)
        return 0;
    if (dbus_message_iter_get_arg_type(var) != DBUS_TYPE_STRING)
        return BUS_ERR_INVALID_ARGS;
    dbus_message_iter_get_basic(var, &v);
    if (copy_name(key[0] == 'h' ? hash : mgf1, size, v) < 0)
        return BUS_ERR_INVALID_ARGS;
    return 1;
}

int bus_parse_sign_call(DBusMessage *msg, const char **ret_uri, bus_sign_params_t *ret_params,
                        const uint8_t **ret_data, size_t *ret_len)
{
    DBusMessageIter it, dict, var;
    const char *key;
    bus_sign_params_t p = {0};
    const char *uri, *alg;
    const uint8_t *data;
    size_t len;
    int r;

    if (call_head(msg, &it, &uri, &alg) != BUS_OK)
        return BUS_ERR_INVALID_ARGS;
    p.alg = bus_sig_alg_from_name(alg);
    if (p.alg == 0)
        return BUS_ERR_UNSUPPORTED;
    p.salt_len = -1;
    dbus_message_iter_recurse(&it, &dict);
    while (dict_next(&dict, &key, &var)) {
        r = hash_param(key, &var, p.hash, p.mgf1_hash, sizeof(p.hash));
        if (r < 0)
            return r;
        if (r == 0 && strcmp(key, "salt-length") == 0) {
            if (dbus_message_iter_get_arg_type(&var) != DBUS_TYPE_INT32)
                return BUS_ERR_INVALID_ARGS;
            dbus_message_iter_get_basic(&var, &p.salt_len);
        }
        /* Unknown parameters are ignored: newer clients may send more. */
    }
    dbus_message_iter_next(&it);
    if (get_bytes(&it, &data, &len) < 0)
        return BUS_ERR_INVALID_ARGS;
    if (p.alg == BUS_SIG_RSA_PSS && p.salt_len < 0)
        return BUS_ERR_INVALID_ARGS;
    *ret_uri = uri;
    *ret_params = p;
    *ret_data = data;
    *ret_len = len;
    return BUS_OK;
}

DBusMessage *bus_new_decrypt_call(const char *uri, const bus_decrypt_params_t *p,
                                  const uint8_t *data, size_t len)
{
    DBusMessage *msg;
    DBusMessageIter it, dict, entry, var;
    const char *alg = bus_dec_alg_name(p->alg);
    const char *hash = p->hash, *mgf1 = p->mgf1_hash, *lkey = "label";

    if (!alg || !uri || !text_utf8_valid(uri, strlen(uri)) || len == 0 ||
        len > BUS_DECRYPT_MAX_DATA || p->label_len > BUS_DECRYPT_MAX_LABEL ||
        (p->label == NULL && p->label_len > 0) || !memchr(p->hash, 0, sizeof(p->hash)) ||
        !memchr(p->mgf1_hash, 0, sizeof(p->mgf1_hash)))
        return NULL;
    msg = dbus_message_new_method_call(NULL, BUS_PATH, BUS_IFACE, "Decrypt");
    if (!msg)
        return NULL;
    dbus_message_iter_init_append(msg, &it);
    if (!dbus_message_iter_append_basic(&it, DBUS_TYPE_STRING, &uri) ||
        !dbus_message_iter_append_basic(&it, DBUS_TYPE_STRING, &alg) ||
        !dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict))
        goto oom;
    if (p->alg == BUS_DEC_RSA_OAEP) {
        if ((hash[0] && !append_dict_entry(&dict, "hash", DBUS_TYPE_STRING, &hash)) ||
            (mgf1[0] && !append_dict_entry(&dict, "mgf1-hash", DBUS_TYPE_STRING, &mgf1)))
            goto oom_dict;
        if (p->label_len > 0) {
            if (!dbus_message_iter_open_container(&dict, DBUS_TYPE_DICT_ENTRY, NULL, &entry))
                goto oom_dict;
            if (!dbus_message_iter_append_basic(&entry, DBUS_TYPE_STRING, &lkey) ||
                !dbus_message_iter_open_container(&entry, DBUS_TYPE_VARIANT, "ay", &var)) {
                dbus_message_iter_abandon_container(&dict, &entry);
                goto oom_dict;
            }
            if (!bus_append_bytes(&var, p->label, p->label_len)) {
                dbus_message_iter_abandon_container(&entry, &var);
                dbus_message_iter_abandon_container(&dict, &entry);
                goto oom_dict;
            }
            if (!dbus_message_iter_close_container(&entry, &var)) {
                dbus_message_iter_abandon_container(&dict, &entry);
                goto oom_dict;
            }
            if (!dbus_message_iter_close_container(&dict, &entry))
                goto oom_dict;
        }
    }
    if (!dbus_message_iter_close_container(&it, &dict) || !bus_append_bytes(&it, data, len))
        goto oom;
    return msg;
oom_dict:
    dbus_message_iter_abandon_container(&it, &dict);
oom:
    dbus_message_unref(msg);
    return NULL;
}

int bus_parse_decrypt_call(DBusMessage *msg, const char **ret_uri,
                           bus_decrypt_params_t *ret_params, const uint8_t **ret_data,
                           size_t *ret_len)
{
    DBusMessageIter it, dict, var;
    const char *key, *uri, *alg;
    bus_decrypt_params_t p = {0};
    const uint8_t *data;
    size_t len;
    int r;

    if (call_head(msg, &it, &uri, &alg) != BUS_OK)
        return BUS_ERR_INVALID_ARGS;
    p.alg = bus_dec_alg_from_name(alg);
    if (p.alg == 0)
        return BUS_ERR_UNSUPPORTED;
    dbus_message_iter_recurse(&it, &dict);
    while (dict_next(&dict, &key, &var)) {
        r = hash_param(key, &var, p.hash, p.mgf1_hash, sizeof(p.hash));
        if (r < 0)
            return r;
        if (r == 0 && strcmp(key, "label") == 0) {
            if (get_bytes(&var, &p.label, &p.label_len) < 0 ||
                p.label_len > BUS_DECRYPT_MAX_LABEL)
                return BUS_ERR_INVALID_ARGS;
        }
        /* Unknown parameters are ignored: newer clients may send more. */
    }
    dbus_message_iter_next(&it);
    if (get_bytes(&it, &data, &len) < 0 || len == 0 || len > BUS_DECRYPT_MAX_DATA)
        return BUS_ERR_INVALID_ARGS;
    if (p.alg != BUS_DEC_RSA_OAEP && (p.hash[0] || p.mgf1_hash[0] || p.label_len))
        return BUS_ERR_INVALID_ARGS; /* parameters only OAEP takes */
    *ret_uri = uri;
    *ret_params = p;
    *ret_data = data;
    *ret_len = len;
    return BUS_OK;
}

void bus_status_clear(bus_status_t *s)
{
    if (!s)
        return;
    free(s->version);
    memset(s, 0, sizeof(*s));
}

int bus_append_status(DBusMessage *msg, const bus_status_t *s)
{
    DBusMessageIter it, dict;
    const char *version = s->version;
    dbus_uint32_t pid = s->pid, tokens = s->tokens, keys = s->keys, clients = s->clients;
    dbus_uint64_t sigs = s->signatures, fails = s->sign_failures;
    dbus_uint64_t decs = s->decryptions, dfails = s->decrypt_failures;

    dbus_message_iter_init_append(msg, &it);
    if (!dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, "{sv}", &dict))
        return BUS_ERR_NO_MEMORY;
    if (!append_dict_entry(&dict, "version", DBUS_TYPE_STRING, &version) ||
        !append_dict_entry(&dict, "pid", DBUS_TYPE_UINT32, &pid) ||
        !append_dict_entry(&dict, "tokens", DBUS_TYPE_UINT32, &tokens) ||
        !append_dict_entry(&dict, "keys", DBUS_TYPE_UINT32, &keys) ||
        !append_dict_entry(&dict, "clients", DBUS_TYPE_UINT32, &clients) ||
        !append_dict_entry(&dict, "signatures", DBUS_TYPE_UINT64, &sigs) ||
        !append_dict_entry(&dict, "sign-failures", DBUS_TYPE_UINT64, &fails) ||
        !append_dict_entry(&dict, "decryptions", DBUS_TYPE_UINT64, &decs) ||
        !append_dict_entry(&dict, "decrypt-failures", DBUS_TYPE_UINT64, &dfails)) {
        dbus_message_iter_abandon_container(&it, &dict);
        return BUS_ERR_NO_MEMORY;
    }
    return dbus_message_iter_close_container(&it, &dict) ? BUS_OK : BUS_ERR_NO_MEMORY;
}

int bus_parse_status(DBusMessage *msg, bus_status_t *ret)
{
    DBusMessageIter it, dict, var;
    const char *key;
    bus_status_t s = {0};

    if (strcmp(dbus_message_get_signature(msg), "a{sv}") != 0 || !dbus_message_iter_init(msg, &it))
        return BUS_ERR_PROTOCOL;
    dbus_message_iter_recurse(&it, &dict);
    while (dict_next(&dict, &key, &var)) {
        int vtype = dbus_message_iter_get_arg_type(&var);

        if (strcmp(key, "version") == 0 && vtype == DBUS_TYPE_STRING) {
            const char *v;

            dbus_message_iter_get_basic(&var, &v);
            free(s.version);
            s.version = strdup(v);
            if (!s.version)
                return BUS_ERR_NO_MEMORY;
        } else if (vtype == DBUS_TYPE_UINT32) {
            dbus_uint32_t v;

            dbus_message_iter_get_basic(&var, &v);
            if (strcmp(key, "pid") == 0)
                s.pid = v;
            else if (strcmp(key, "tokens") == 0)
                s.tokens = v;
            else if (strcmp(key, "keys") == 0)
                s.keys = v;
            else if (strcmp(key, "clients") == 0)
                s.clients = v;
        } else if (vtype == DBUS_TYPE_UINT64) {
            dbus_uint64_t v;

            dbus_message_iter_get_basic(&var, &v);
            if (strcmp(key, "signatures") == 0)
                s.signatures = v;
            else if (strcmp(key, "sign-failures") == 0)
                s.sign_failures = v;
            else if (strcmp(key, "decryptions") == 0)
                s.decryptions = v;
            else if (strcmp(key, "decrypt-failures") == 0)
                s.decrypt_failures = v;
        }
    }
    *ret = s;
    return BUS_OK;
}

void bus_token_info_free_array(bus_token_info_t *t, size_t n)
{
    if (!t)
        return;
    for (size_t i = 0; i < n; i++) {
        free(t[i].uri);
        free(t[i].label);
        free(t[i].model);
    }
    free(t);
}

int bus_append_tokens(DBusMessage *msg, const bus_token_info_t *t, size_t n)
{
    DBusMessageIter it, arr;

    dbus_message_iter_init_append(msg, &it);
    if (!dbus_message_iter_open_container(&it, DBUS_TYPE_ARRAY, BUS_TOKEN_RECORD_SIG, &arr))
        return BUS_ERR_NO_MEMORY;
    for (size_t i = 0; i < n; i++) {
        DBusMessageIter st;
        dbus_uint32_t flags = t[i].flags, keys = t[i].keys;
        dbus_int64_t expires = t[i].expires;

        if (!dbus_message_iter_open_container(&arr, DBUS_TYPE_STRUCT, NULL, &st))
            goto oom;
        /* label and model come from the module: any bytes */
        if (!bus_append_string(&st, t[i].uri) || !bus_append_string(&st, t[i].label) ||
            !bus_append_string(&st, t[i].model) ||
            !dbus_message_iter_append_basic(&st, DBUS_TYPE_UINT32, &flags) ||
            !dbus_message_iter_append_basic(&st, DBUS_TYPE_INT64, &expires) ||
            !dbus_message_iter_append_basic(&st, DBUS_TYPE_UINT32, &keys)) {
            dbus_message_iter_abandon_container(&arr, &st);
            goto oom;
        }
        if (!dbus_message_iter_close_container(&arr, &st))
            goto oom;
    }
    return dbus_message_iter_close_container(&it, &arr) ? BUS_OK : BUS_ERR_NO_MEMORY;
oom:
    dbus_message_iter_abandon_container(&it, &arr);
    return BUS_ERR_NO_MEMORY;
}

int bus_parse_tokens(DBusMessage *msg, bus_token_info_t **ret, size_t *ret_n)
{
    DBusMessageIter it, arr;
    bus_token_info_t *t = NULL;
    size_t n = 0;
    int r = BUS_ERR_PROTOCOL;

    if (strcmp(dbus_message_get_signature(msg), "a" BUS_TOKEN_RECORD_SIG) != 0 ||
        !dbus_message_iter_init(msg, &it))
        return BUS_ERR_PROTOCOL;
    dbus_message_iter_recurse(&it, &arr);
    while (dbus_message_iter_get_arg_type(&arr) == DBUS_TYPE_STRUCT) {
        DBusMessageIter st;
        bus_token_info_t *nt;
        dbus_int64_t expires;
        dbus_uint32_t u;

        if (n >= MAX_KEYS) {
            r = BUS_ERR_PROTOCOL;
            goto err;
        }
        nt = realloc(t, (n + 1) * sizeof(*t));
        if (!nt) {
            r = BUS_ERR_NO_MEMORY;
            goto err;
        }
        t = nt;
        memset(&t[n], 0, sizeof(t[n]));
        n++;
        dbus_message_iter_recurse(&arr, &st);
        if ((r = get_string_dup(&st, &t[n - 1].uri)) < 0 ||
            (r = get_string_dup(&st, &t[n - 1].label)) < 0 ||
            (r = get_string_dup(&st, &t[n - 1].model)) < 0 ||
            (r = get_basic(&st, DBUS_TYPE_UINT32, &u)) < 0)
            goto err;
        t[n - 1].flags = u;
        if ((r = get_basic(&st, DBUS_TYPE_INT64, &expires)) < 0 ||
            (r = get_basic(&st, DBUS_TYPE_UINT32, &u)) < 0)
            goto err;
        t[n - 1].expires = expires;
        t[n - 1].keys = u;
        dbus_message_iter_next(&arr);
    }
    *ret = t;
    *ret_n = n;
    return BUS_OK;
err:
    bus_token_info_free_array(t, n);
    return r;
}
