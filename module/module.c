/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11agent-pkcs11.so: C_Initialize/C_Finalize/C_GetInfo, the process
 * state, and listing the agent's tokens and keys (mod_refresh).
 *
 * A guest in other people's programs (GnuTLS and p11-kit-proxy initialise
 * every registered module when a program starts): C_Initialize never talks
 * to the agent, listing tokens waits at most LIST_TIMEOUT_MS, and after an
 * agent that did not answer, nothing waits again for BACKOFF_MS. The module
 * installs no signal handler, prints nothing unless P11AGENT_PKCS11_DEBUG
 * is set, and loads no openssl.cnf (its hashes run in a library context of
 * its own with the default provider only).
 *
 * Fork: every entry point compares getpid() with the state's owner; a
 * child keeps its sessions (they are local state) and the pool (dbus/pool.c)
 * opens its own connections. C_Initialize again in a child starts afresh.
 */
#include "config.h"

#include <errno.h>
#include <stddef.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/provider.h>

#include "state.h"
#include "text.h"

#define LIST_TIMEOUT_MS 2000
#define BACKOFF_MS 10000
/* C_GetSlotList/C_FindObjectsInit list again when the last list is older. */
#define STALE_MS 1000

#define MOD_DESCRIPTION "p11agent-pkcs11 agent client"

mod_state_t mod_g = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .refresh_lock = PTHREAD_MUTEX_INITIALIZER,
    .cond = PTHREAD_COND_INITIALIZER,
};

/* The marker the agent looks for before it uses a module (the agent must
 * never load its own client: it would call itself). */
__attribute__((visibility("default"))) const char p11agent_pkcs11_client_marker[] =
    "p11agent-pkcs11";

int64_t mod_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One line on stderr, only with P11AGENT_PKCS11_DEBUG set. The line holds
 * the agent's words (URIs, messages): escaped as a whole. */
void mod_debug(const char *fn, const char *fmt, ...)
{
    char raw[2048], esc[4096];
    va_list ap;

    if (!mod_g.debug)
        return;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof(raw), fmt, ap);
    va_end(ap);
    text_escape(esc, sizeof(esc), raw, strlen(raw));
    fprintf(stderr, "p11agent-pkcs11: %s: %s\n", fn, esc);
}

/* ------------------------------------------------------------ state */

static void slot_clear(mod_slot_t *s)
{
    for (size_t i = 0; i < s->n_keys; i++)
        mod_key_clear(&s->keys[i]);
    free(s->keys);
    free(s->token_uri);
    memset(s, 0, sizeof(*s));
}

void mod_sign_op_free(mod_sign_op_t *op)
{
    if (op == NULL)
        return;
    EVP_MD_CTX_free(op->md);
    free(op->key_uri);
    free(op->data);
    free(op);
}

void mod_session_clear_locked(mod_session_t *s)
{
    mod_sign_op_free(s->sign);
    free(s->found);
    memset(s, 0, sizeof(*s));
}

/* Frees everything (lock held, no agent call in flight). In a forked
 * child the pool abandons the parent's connections (bus_pool_free). */
static void state_free_locked(void)
{
    for (size_t i = 0; i < mod_g.n_slots; i++)
        slot_clear(&mod_g.slots[i]);
    mod_g.n_slots = 0;
    for (size_t i = 0; i < mod_g.n_sessions; i++)
        mod_session_clear_locked(&mod_g.sessions[i]);
    free(mod_g.sessions);
    mod_g.sessions = NULL;
    mod_g.n_sessions = 0;
    bus_pool_free(mod_g.pool);
    mod_g.pool = NULL;
    if (mod_g.provider != NULL)
        OSSL_PROVIDER_unload(mod_g.provider);
    mod_g.provider = NULL;
    OSSL_LIB_CTX_free(mod_g.libctx);
    mod_g.libctx = NULL;
    mod_g.initialized = false;
    mod_g.listed = false;
    mod_g.backoff_until_ms = 0;
    mod_g.refreshed_ms = 0;
    mod_g.calls = 0;
}

/* In a forked child: fresh locks (a parent thread may have held them at
 * the fork); the state stays. */
void mod_check_fork(void)
{
    int me = (int)getpid(), owner = atomic_load(&mod_g.pid);

    if (owner == me || owner == 0)
        return;
    if (atomic_compare_exchange_strong(&mod_g.pid, &owner, me)) {
        pthread_mutex_init(&mod_g.lock, NULL);
        pthread_mutex_init(&mod_g.refresh_lock, NULL);
        pthread_cond_init(&mod_g.cond, NULL);
        /* calls in flight were the parent's threads' */
        mod_g.calls = 0;
        mod_g.backoff_until_ms = 0;
    }
}

CK_RV mod_enter(void)
{
    mod_check_fork();
    pthread_mutex_lock(&mod_g.lock);
    if (!mod_g.initialized) {
        pthread_mutex_unlock(&mod_g.lock);
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    }
    return CKR_OK;
}

bool mod_call_begin_locked(void)
{
    if (mod_g.backoff_until_ms != 0 && mod_now_ms() < mod_g.backoff_until_ms)
        return false;
    mod_g.calls++;
    return true;
}

void mod_call_end_locked(void)
{
    if (mod_g.calls > 0)
        mod_g.calls--;
    pthread_cond_broadcast(&mod_g.cond);
}

void mod_call_timed_out_locked(void)
{
    mod_g.backoff_until_ms = mod_now_ms() + BACKOFF_MS;
}

/* The value of `key` (e.g. "agent-socket=") in the module argument p11-kit
 * passes in pReserved (a module file's x-init-reserved): settings
 * separated by white space, each starting with a known key, so a socket
 * path may hold spaces ("agent-socket=/a b max-connections=16"). A
 * malloc'd copy, or NULL when absent, empty or out of memory. */
static char *init_arg(const CK_C_INITIALIZE_ARGS *args, const char *key)
{
    static const char *const keys[] = {"agent-socket=", "max-connections="};
    const char *res, *v = NULL, *end;
    size_t n;

    if (args == NULL || args->pReserved == NULL)
        return NULL;
    res = args->pReserved;
    n = strnlen(res, 4096);
    if (n == 4096)
        return NULL;
    end = res + n;
    for (const char *p = res; p < end; p++) {
        if (p != res && p[-1] != ' ' && p[-1] != '\t')
            continue;
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
            if (strncmp(p, keys[k], strlen(keys[k])) != 0)
                continue;
            if (v != NULL) { /* the value before ends here */
                end = p;
                while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
                    end--;
                goto found;
            }
            if (strcmp(keys[k], key) == 0)
                v = p + strlen(keys[k]);
        }
    }
    if (v == NULL)
        return NULL;
found:
    return end > v ? strndup(v, (size_t)(end - v)) : NULL;
}

/* The socket: $P11AGENT_SOCKET, else the module argument p11-kit passes
 * in pReserved (a module file's `x-init-reserved: agent-socket=PATH`),
 * else the per-user default. */
static char *socket_from_args(const CK_C_INITIALIZE_ARGS *args)
{
    char *path = init_arg(args, "agent-socket=");
    char *sock = bus_socket_path(path);

    free(path);
    return sock;
}

/* Connections to the agent at most: $P11AGENT_MAX_CONNECTIONS, else
 * `max-connections=N` in the module argument (x-init-reserved), 1 to
 * BUS_POOL_MAX_MAX (more is cut); 0 (unset or not a number): the pool's
 * default. */
static unsigned max_connections_from_args(const CK_C_INITIALIZE_ARGS *args)
{
    const char *env = getenv("P11AGENT_MAX_CONNECTIONS");
    char *arg = NULL, *end = NULL;
    const char *v = env;
    unsigned long n = 0;

    if (v == NULL || *v == '\0')
        v = arg = init_arg(args, "max-connections=");
    if (v != NULL) {
        n = strtoul(v, &end, 10);
        if (end == v || *end != '\0' || v[0] == '-')
            n = 0;
    }
    free(arg);
    return n > BUS_POOL_MAX_MAX ? BUS_POOL_MAX_MAX : (unsigned)n;
}

CK_RV mod_C_Initialize(CK_VOID_PTR init_args)
{
    CK_C_INITIALIZE_ARGS *args = init_args;
    const char *dbg = getenv("P11AGENT_PKCS11_DEBUG");
    char *sock;
    CK_RV rv = CKR_OK;

    if (args != NULL) {
        bool some = args->CreateMutex || args->DestroyMutex || args->LockMutex || args->UnlockMutex;
        bool all = args->CreateMutex && args->DestroyMutex && args->LockMutex && args->UnlockMutex;

        if (some && !all)
            return CKR_ARGUMENTS_BAD;
        /* the application's mutexes without CKF_OS_LOCKING_OK: we would
         * have to use them; pthreads only */
        if (all && !(args->flags & CKF_OS_LOCKING_OK))
            return CKR_CANT_LOCK;
    }
    mod_check_fork();
    pthread_mutex_lock(&mod_g.lock);
    if (mod_g.initialized) {
        if (mod_g.init_pid == (int)getpid()) {
            rv = CKR_CRYPTOKI_ALREADY_INITIALIZED;
            goto out;
        }
        /* a forked child initialising again: start afresh */
        state_free_locked();
    }
    mod_g.debug = dbg != NULL && dbg[0] != '\0' && strcmp(dbg, "0") != 0;
    /* p11agentd sets this in itself: should the agent load this module
     * by a way its guard does not see (a proxy module), the module serves
     * no token rather than call the agent from inside it */
    mod_g.inside_agent = getenv("P11AGENT_AGENT_PROCESS") != NULL;
    sock = socket_from_args(args);
    mod_g.pool = bus_pool_new(sock);
    bus_pool_set_max(mod_g.pool, max_connections_from_args(args));
    mod_g.libctx = OSSL_LIB_CTX_new();
    if (mod_g.libctx != NULL)
        mod_g.provider = OSSL_PROVIDER_load(mod_g.libctx, "default");
    if (mod_g.pool == NULL || mod_g.libctx == NULL || mod_g.provider == NULL) {
        state_free_locked();
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    atomic_store(&mod_g.pid, (int)getpid());
    mod_g.init_pid = (int)getpid();
    mod_g.initialized = true;
    mod_debug(__func__, "agent socket %s", bus_pool_socket(mod_g.pool) ? bus_pool_socket(mod_g.pool) : "(none)");
out:
    pthread_mutex_unlock(&mod_g.lock);
    return rv;
}

CK_RV mod_C_Finalize(CK_VOID_PTR reserved)
{
    CK_RV rv;

    if (reserved != NULL)
        return CKR_ARGUMENTS_BAD;
    rv = mod_enter();
    if (rv != CKR_OK)
        return rv;
    /* wake C_WaitForSlotEvent, let agent calls end (each is bounded) */
    mod_g.initialized = false;
    pthread_cond_broadcast(&mod_g.cond);
    while (mod_g.calls > 0)
        pthread_cond_wait(&mod_g.cond, &mod_g.lock);
    state_free_locked();
    mod_leave();
    return CKR_OK;
}

void mod_pad_str(CK_UTF8CHAR *field, size_t size, const char *s)
{
    mod_pad(field, size, (const uint8_t *)s, strlen(s));
}

CK_RV mod_C_GetInfo(CK_INFO_PTR info)
{
    /* answered before C_Initialize too: the agent asks it to recognise
     * (and refuse) this module */
    if (info == NULL)
        return CKR_ARGUMENTS_BAD;
    memset(info, 0, sizeof(*info));
    info->cryptokiVersion.major = 2;
    info->cryptokiVersion.minor = 40;
    mod_pad_str(info->manufacturerID, sizeof(info->manufacturerID), MOD_MANUFACTURER);
    mod_pad_str(info->libraryDescription, sizeof(info->libraryDescription), MOD_DESCRIPTION);
    info->libraryVersion.major = 0;
    info->libraryVersion.minor = 1;
    return CKR_OK;
}

/* ------------------------------------------------------------ refresh */

typedef struct list_args {
    bus_token_info_t *tokens;
    size_t n_tokens;
    bus_key_info_t *keys;
    size_t n_keys;
} list_args_t;

static int op_list(DBusConnection *conn, void *arg, char **errmsg)
{
    list_args_t *a = arg;
    int r;

    r = bus_client_list_tokens(conn, LIST_TIMEOUT_MS, &a->tokens, &a->n_tokens, errmsg);
    if (r != BUS_OK)
        return r;
    r = bus_client_list_keys(conn, LIST_TIMEOUT_MS, &a->keys, &a->n_keys, errmsg);
    if (r != BUS_OK) {
        bus_token_info_free_array(a->tokens, a->n_tokens);
        a->tokens = NULL;
        a->n_tokens = 0;
    }
    return r;
}

static void set_token_fields(mod_slot_t *s, const char *uri)
{
    static const struct {
        const char *attr;
        size_t off, size;
    } fields[] = {
        {"token", offsetof(mod_slot_t, label), 32},
        {"manufacturer", offsetof(mod_slot_t, manufacturer), 32},
        {"model", offsetof(mod_slot_t, model), 16},
        {"serial", offsetof(mod_slot_t, serial), 16},
    };
    uint8_t v[256];
    char desc[300];
    size_t n;

    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        CK_UTF8CHAR *f = (CK_UTF8CHAR *)((char *)s + fields[i].off);

        if (mod_uri_attr(uri, fields[i].attr, v, sizeof(v), &n) != MOD_URI_OK)
            n = 0;
        mod_pad(f, fields[i].size, v, n);
    }
    if (mod_uri_attr(uri, "token", v, sizeof(v) - 1, &n) != MOD_URI_OK)
        n = 0;
    v[n] = 0;
    snprintf(desc, sizeof(desc), "p11agent: %s", (char *)v);
    mod_pad(s->description, sizeof(s->description), (const uint8_t *)desc, strlen(desc));
}

/* The slot of a token URI, made if new (lock held). NULL when full. */
static mod_slot_t *slot_for_token_locked(const char *uri)
{
    mod_slot_t *s;

    for (size_t i = 0; i < mod_g.n_slots; i++)
        if (strcmp(mod_g.slots[i].token_uri, uri) == 0)
            return &mod_g.slots[i];
    if (mod_g.n_slots >= MOD_MAX_SLOTS)
        return NULL;
    s = &mod_g.slots[mod_g.n_slots];
    memset(s, 0, sizeof(*s));
    s->token_uri = strdup(uri);
    if (s->token_uri == NULL)
        return NULL;
    set_token_fields(s, uri);
    mod_g.n_slots++;
    return s;
}

/* Does a key belong to a token? The key URI carries the token's
 * attributes; the agent's canonical URIs put them the same way. */
static bool key_on_token(const bus_key_info_t *k, const mod_slot_t *s)
{
    static const char *const attrs[] = {"token", "manufacturer", "model", "serial"};

    for (size_t i = 0; i < 4; i++) {
        uint8_t a[256], b[256];
        size_t na = 0, nb = 0;
        int ra = mod_uri_attr(k->uri, attrs[i], a, sizeof(a), &na);
        int rb = mod_uri_attr(s->token_uri, attrs[i], b, sizeof(b), &nb);

        if (ra != rb || (ra == MOD_URI_OK && (na != nb || memcmp(a, b, na) != 0)))
            return false;
    }
    return true;
}

/* A slot's keys from the agent's records: a key seen before keeps its
 * index (object handles stay valid), a new one takes the next, a gone
 * one stays as an empty place. */
static void slot_set_keys_locked(mod_slot_t *s, const bus_key_info_t *recs, size_t n)
{
    bool *seen = calloc(s->n_keys + 1, sizeof(bool));

    if (seen == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        mod_key_t k;
        const char *why = NULL;
        size_t j;

        if (!key_on_token(&recs[i], s))
            continue;
        if (mod_key_from_record(&recs[i], &k, &why) != 0) {
            mod_debug(__func__, "key %s skipped: %s", recs[i].uri ? recs[i].uri : "?",
                      why ? why : "out of memory");
            continue;
        }
        for (j = 0; j < s->n_keys; j++)
            if (s->keys[j].uri != NULL && strcmp(s->keys[j].uri, k.uri) == 0)
                break;
        if (j < s->n_keys) {
            if (!seen[j]) {
                mod_key_clear(&s->keys[j]);
                s->keys[j] = k;
                seen[j] = true;
            } else {
                mod_key_clear(&k); /* the same URI twice: keep the first */
            }
            continue;
        }
        /* a new key: a free place (one never used), else the end */
        if (s->n_keys >= MOD_MAX_KEYS) {
            mod_key_clear(&k);
            continue;
        }
        {
            mod_key_t *nk = realloc(s->keys, (s->n_keys + 1) * sizeof(*nk));
            bool *ns = realloc(seen, (s->n_keys + 2) * sizeof(bool));

            if (nk)
                s->keys = nk;
            if (ns)
                seen = ns;
            if (!nk || !ns) {
                mod_key_clear(&k);
                continue;
            }
            s->keys[s->n_keys] = k;
            seen[s->n_keys] = true;
            s->n_keys++;
        }
    }
    for (size_t j = 0; j < s->n_keys; j++) {
        if (!seen[j] && s->keys[j].uri != NULL) {
            /* gone: the place stays, with its URI (it may come back) */
            char *uri = s->keys[j].uri;

            s->keys[j].uri = NULL;
            mod_key_clear(&s->keys[j]);
            s->keys[j].uri = uri;
            s->keys[j].type = BUS_KEY_UNKNOWN;
        }
    }
    free(seen);
}

void mod_refresh(mod_refresh_mode_t mode)
{
    list_args_t a = {0};
    bus_pool_t *pool;
    char *msg = NULL;
    int r;

    pthread_mutex_lock(&mod_g.refresh_lock);
    pthread_mutex_lock(&mod_g.lock);
    if (!mod_g.initialized || mod_g.inside_agent || (mode == MOD_REFRESH_FIRST && mod_g.listed) ||
        (mode == MOD_REFRESH_STALE && mod_g.refreshed_ms != 0 &&
         mod_now_ms() - mod_g.refreshed_ms < STALE_MS)) {
        pthread_mutex_unlock(&mod_g.lock);
        pthread_mutex_unlock(&mod_g.refresh_lock);
        return;
    }
    if (!mod_call_begin_locked()) {
        /* the agent did not answer a moment ago: no waiting again yet */
        pthread_mutex_unlock(&mod_g.lock);
        pthread_mutex_unlock(&mod_g.refresh_lock);
        return;
    }
    pool = mod_g.pool;
    pthread_mutex_unlock(&mod_g.lock);

    r = bus_pool_call(pool, op_list, &a, &msg);

    pthread_mutex_lock(&mod_g.lock);
    mod_call_end_locked();
    if (r == BUS_ERR_TIMEOUT)
        mod_call_timed_out_locked();
    if (r != BUS_OK) {
        mod_debug(__func__, "listing tokens: %s", msg ? msg : bus_err_str(r));
        /* no agent: every token is gone for now (slot ids stay) */
        for (size_t i = 0; i < mod_g.n_slots; i++) {
            if (mod_g.slots[i].present && mod_g.listed)
                mod_g.slots[i].event = true;
            mod_g.slots[i].present = false;
        }
        goto out;
    }
    {
        bool present[MOD_MAX_SLOTS] = {false};

        for (size_t i = 0; i < a.n_tokens; i++) {
            mod_slot_t *s;

            if (a.tokens[i].uri == NULL || strlen(a.tokens[i].uri) > 4096)
                continue;
            s = slot_for_token_locked(a.tokens[i].uri);
            if (s == NULL)
                continue;
            present[s - mod_g.slots] = true;
            slot_set_keys_locked(s, a.keys, a.n_keys);
        }
        for (size_t i = 0; i < mod_g.n_slots; i++) {
            mod_slot_t *s = &mod_g.slots[i];

            if (s->present != present[i] && mod_g.listed)
                s->event = true;
            s->present = present[i];
        }
    }
    mod_g.listed = true;
    mod_g.refreshed_ms = mod_now_ms();
out:
    pthread_cond_broadcast(&mod_g.cond);
    pthread_mutex_unlock(&mod_g.lock);
    pthread_mutex_unlock(&mod_g.refresh_lock);
    bus_token_info_free_array(a.tokens, a.n_tokens);
    bus_key_info_free_array(a.keys, a.n_keys);
    free(msg);
}
