/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11fault control file (P11FAULT_CONTROL) and state file (P11FAULT_STATE).
 *
 * CONTROL FILE: one command per line; words split at blanks; `#` starts a
 * comment line. The module stat()s the file on every PKCS#11 call (and a
 * watcher thread every 50 ms) and reads it again only when its inode, size,
 * mtime or ctime changed. Lines are applied once, in order:
 *   - when the file grew and still starts with what was applied, only the
 *     new complete lines are applied (append mode: `echo ... >> control`);
 *   - otherwise (rewritten) the configuration is reset to the defaults and
 *     the whole file is applied. Rewrite with a rename (or make the size
 *     differ): an in-place rewrite of the same size within one mtime tick
 *     can go unnoticed.
 * An incomplete last line (no '\n') waits for its end.
 *
 * SLOT is a real slot ID of the wrapped module (decimal or 0x hex) or
 * token=LABEL (the slot holding that token, looked up when applied).
 *
 *   remove SLOT                  card pulled out of the reader
 *   insert SLOT                  card put back
 *   pinpad SLOT PIN [MS]         reader with a PIN pad; a C_Login with a NULL
 *                                PIN "types" PIN after MS ms
 *   pinpad SLOT cancel [MS]      ... the user presses cancel: CKR_FUNCTION_CANCELED
 *   pinpad SLOT none [MS]        ... nothing right typed: CKR_PIN_INCORRECT
 *   pinpad SLOT off              no PIN pad (NULL PIN: CKR_PIN_INCORRECT)
 *   always-auth all|off|LABEL... private keys (all, or with a CKA_LABEL
 *                                listed) get CKA_ALWAYS_AUTHENTICATE
 *   flags SLOT FLAG...           force token info flags; FLAG: count-low,
 *                                final-try, locked, none (clears)
 *   user-pin PIN|off             the user PIN the wrapper checks context-
 *                                specific logins (and lock-out) against;
 *                                default: the PIN of the last good C_Login
 *   max-login-failures N [pin PIN]  lock the user PIN after N consecutive
 *                                wrong PINs (CKR_PIN_LOCKED, CKF_USER_PIN_*
 *                                flags); with PIN, wrong PINs never reach
 *                                the real module
 *   max-login-failures off
 *   unlock SLOT|all              forget wrong PIN attempts
 *   fail FUNC CKR_X|NUMBER [N|always]  the next N (default 1) calls of FUNC
 *                                return that CK_RV instead of running
 *   fail FUNC off
 *   delay FUNC MS [SLOT]         every call of FUNC (on SLOT) sleeps MS ms
 *                                first; MS 0 removes it
 *   reset                        defaults: every slot inserted, no pad, no
 *                                faults, no delays (counters stay)
 *   reset-counters               call counters back to 0 (inflight-max:
 *                                to the calls running now)
 *   hold FUNC [SLOT]             every call of FUNC (on SLOT) waits, after
 *                                its delay, until released
 *   release FUNC [SLOT] | release all   let them go
 *   limit sessions N [info]      C_OpenSession on a slot with N sessions of
 *                                ours open: CKR_SESSION_COUNT; with info,
 *                                C_GetTokenInfo says ulMaxSessionCount N
 *   limit sessions off
 *   lie ...                      answers no honest module gives (lie.c):
 *                                sig-len N, huge|grow|garbage ATTR [LABEL...],
 *                                token-label SLOT [off], ATTR off, off
 *   sync WORD                    echoed in the state file as `sync WORD`
 *
 * A bad line is skipped and counted (state: control.errors, control.last-error).
 *
 * STATE FILE: `KEY VALUE` lines, rewritten (tmp file + rename) after every
 * call and every control change:
 *   pid N, generation N, sync WORD, control.errors N, control.last-error TEXT,
 *   sessions N (live ones), slot.ID present|removed, slot.ID.label LABEL,
 *   slot.ID.login-failures N, slot.ID.pin-locked 0|1,
 *   C_Xxx N (calls), C_Xxx.failed N (calls that did not return CKR_OK),
 *   C_Xxx.inflight N, C_Xxx.inflight-max N (calls running now, the most at
 *   once), C_Xxx.held N (waiting in a hold; only while some are).
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "p11fault.h"

#define MAX_CONTROL_SIZE (1024 * 1024)
#define MAX_WORDS 32

const char *const flt_fn_names[FLT_FN_COUNT] = {
#define FLT_FN_NAME(n) #n,
    FLT_FUNCS(FLT_FN_NAME)
#undef FLT_FN_NAME
};

int flt_fn_lookup(const char *name)
{
    for (int i = 0; i < FLT_FN_COUNT; i++)
        if (strcmp(flt_fn_names[i], name) == 0)
            return i;
    return -1;
}

static const struct {
    const char *name;
    CK_RV rv;
} rv_names[] = {
#define RV(x) { #x, x }
    RV(CKR_OK), RV(CKR_CANCEL), RV(CKR_HOST_MEMORY), RV(CKR_SLOT_ID_INVALID),
    RV(CKR_GENERAL_ERROR), RV(CKR_FUNCTION_FAILED), RV(CKR_ARGUMENTS_BAD), RV(CKR_NO_EVENT),
    RV(CKR_CANT_LOCK), RV(CKR_ATTRIBUTE_SENSITIVE), RV(CKR_ATTRIBUTE_TYPE_INVALID),
    RV(CKR_DATA_INVALID), RV(CKR_DATA_LEN_RANGE), RV(CKR_DEVICE_ERROR), RV(CKR_DEVICE_MEMORY),
    RV(CKR_DEVICE_REMOVED), RV(CKR_FUNCTION_CANCELED), RV(CKR_FUNCTION_NOT_SUPPORTED),
    RV(CKR_KEY_HANDLE_INVALID), RV(CKR_KEY_TYPE_INCONSISTENT), RV(CKR_KEY_FUNCTION_NOT_PERMITTED),
    RV(CKR_MECHANISM_INVALID), RV(CKR_MECHANISM_PARAM_INVALID), RV(CKR_OBJECT_HANDLE_INVALID),
    RV(CKR_OPERATION_ACTIVE), RV(CKR_OPERATION_NOT_INITIALIZED), RV(CKR_PIN_INCORRECT),
    RV(CKR_PIN_INVALID), RV(CKR_PIN_LEN_RANGE), RV(CKR_PIN_EXPIRED), RV(CKR_PIN_LOCKED),
    RV(CKR_SESSION_CLOSED), RV(CKR_SESSION_COUNT), RV(CKR_SESSION_HANDLE_INVALID),
    RV(CKR_SESSION_READ_ONLY), RV(CKR_TOKEN_NOT_PRESENT), RV(CKR_TOKEN_NOT_RECOGNIZED),
    RV(CKR_USER_ALREADY_LOGGED_IN), RV(CKR_USER_NOT_LOGGED_IN), RV(CKR_USER_PIN_NOT_INITIALIZED),
    RV(CKR_USER_TYPE_INVALID), RV(CKR_BUFFER_TOO_SMALL), RV(CKR_CRYPTOKI_NOT_INITIALIZED),
    RV(CKR_CRYPTOKI_ALREADY_INITIALIZED), RV(CKR_FUNCTION_REJECTED),
#undef RV
};

static bool parse_ulong(const char *s, unsigned long *ret)
{
    char *end;
    unsigned long v;

    if (s == NULL || *s == '\0' || *s == '-')
        return false;
    errno = 0;
    v = strtoul(s, &end, 0);
    if (errno != 0 || *end != '\0')
        return false;
    *ret = v;
    return true;
}

static bool parse_ms(const char *s, long *ret)
{
    unsigned long v;

    if (!parse_ulong(s, &v) || v > 3600UL * 1000)
        return false;
    *ret = (long)v;
    return true;
}

static bool parse_rv(const char *s, CK_RV *ret)
{
    unsigned long v;

    for (size_t i = 0; i < sizeof(rv_names) / sizeof(rv_names[0]); i++) {
        if (strcmp(rv_names[i].name, s) == 0) {
            *ret = rv_names[i].rv;
            return true;
        }
    }
    if (!parse_ulong(s, &v))
        return false;
    *ret = v;
    return true;
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

/* ------------------------------------------------------------ commands */

typedef struct line {
    char *w[MAX_WORDS];
    size_t n;
    unsigned long lineno;
} line_t;

static void line_error_locked(const line_t *l, const char *fmt, ...)
{
    char msg[200];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    flt.n_errors++;
    snprintf(flt.last_error, sizeof(flt.last_error), "line %lu: %s", l->lineno, msg);
}

/* Looks a slot selector up in the real module: ID or token=LABEL. */
static flt_slot_t *slot_arg_locked(const line_t *l, const char *arg)
{
    CK_SLOT_ID ids[64];
    CK_ULONG n = 64;
    unsigned long id;
    bool by_label = strncmp(arg, "token=", 6) == 0;

    if (!by_label && !parse_ulong(arg, &id)) {
        line_error_locked(l, "bad slot '%s'", arg);
        return NULL;
    }
    if (flt.real->C_GetSlotList(by_label ? CK_TRUE : CK_FALSE, ids, &n) != CKR_OK) {
        line_error_locked(l, "C_GetSlotList failed");
        return NULL;
    }
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        size_t len = sizeof(ti.label);

        if (!by_label) {
            if (ids[i] == id)
                return flt_slot_get_locked(id);
            continue;
        }
        if (flt.real->C_GetTokenInfo(ids[i], &ti) != CKR_OK)
            continue;
        while (len > 0 && ti.label[len - 1] == ' ')
            len--;
        if (strlen(arg + 6) == len && memcmp(arg + 6, ti.label, len) == 0)
            return flt_slot_get_locked(ids[i]);
    }
    line_error_locked(l, "no slot %s", arg);
    return NULL;
}

static void cmd_remove_insert_locked(const line_t *l)
{
    flt_slot_t *s;

    if (l->n != 2) {
        line_error_locked(l, "usage: %s SLOT", l->w[0]);
        return;
    }
    if ((s = slot_arg_locked(l, l->w[1])) == NULL)
        return;
    if (strcmp(l->w[0], "remove") == 0)
        flt_slot_remove_locked(s);
    else
        flt_slot_insert_locked(s);
}

static void cmd_pinpad_locked(const line_t *l)
{
    flt_slot_t *s;
    long ms = 0;
    const char *what;

    if (l->n < 3 || l->n > 4 || (l->n == 4 && !parse_ms(l->w[3], &ms))) {
        line_error_locked(l, "usage: pinpad SLOT PIN|cancel|none|off [MS]");
        return;
    }
    if ((s = slot_arg_locked(l, l->w[1])) == NULL)
        return;
    what = l->w[2];
    flt_free_pin(s->pad_pin);
    s->pad_pin = NULL;
    s->pinpad = strcmp(what, "off") != 0;
    s->pad_cancel = strcmp(what, "cancel") == 0;
    s->pad_delay_ms = ms;
    if (s->pinpad && !s->pad_cancel && strcmp(what, "none") != 0)
        s->pad_pin = strdup(what);
}

static void cmd_always_auth_locked(const line_t *l)
{
    for (size_t i = 0; i < flt.n_aa_labels; i++)
        free(flt.aa_labels[i]);
    free(flt.aa_labels);
    flt.aa_labels = NULL;
    flt.n_aa_labels = 0;
    flt.aa_all = false;
    if (l->n < 2) {
        line_error_locked(l, "usage: always-auth all|off|LABEL...");
        return;
    }
    if (l->n == 2 && strcmp(l->w[1], "off") == 0)
        return;
    if (l->n == 2 && strcmp(l->w[1], "all") == 0) {
        flt.aa_all = true;
        return;
    }
    flt.aa_labels = calloc(l->n - 1, sizeof(char *));
    if (flt.aa_labels == NULL)
        return;
    for (size_t i = 1; i < l->n; i++)
        if ((flt.aa_labels[flt.n_aa_labels] = strdup(l->w[i])) != NULL)
            flt.n_aa_labels++;
}

static void cmd_flags_locked(const line_t *l)
{
    static const struct {
        const char *name;
        CK_FLAGS flag;
    } names[] = {
        { "none", 0 },
        { "count-low", CKF_USER_PIN_COUNT_LOW },
        { "final-try", CKF_USER_PIN_FINAL_TRY },
        { "locked", CKF_USER_PIN_LOCKED },
    };
    flt_slot_t *s;
    CK_FLAGS flags = 0;

    if (l->n < 3) {
        line_error_locked(l, "usage: flags SLOT none|count-low|final-try|locked...");
        return;
    }
    for (size_t i = 2; i < l->n; i++) {
        size_t k;

        for (k = 0; k < sizeof(names) / sizeof(names[0]); k++)
            if (strcmp(l->w[i], names[k].name) == 0)
                break;
        if (k == sizeof(names) / sizeof(names[0])) {
            line_error_locked(l, "unknown flag '%s'", l->w[i]);
            return;
        }
        flags |= names[k].flag;
    }
    if ((s = slot_arg_locked(l, l->w[1])) != NULL)
        s->forced_flags = flags;
}

static void set_user_pin_locked(const char *pin)
{
    flt_free_pin(flt.user_pin);
    flt.user_pin = dup_or_null(pin);
}

static void cmd_user_pin_locked(const line_t *l)
{
    if (l->n != 2) {
        line_error_locked(l, "usage: user-pin PIN|off");
        return;
    }
    set_user_pin_locked(strcmp(l->w[1], "off") == 0 ? NULL : l->w[1]);
}

static void cmd_max_login_failures_locked(const line_t *l)
{
    unsigned long n;

    if (l->n == 2 && strcmp(l->w[1], "off") == 0) {
        flt.max_login_failures = 0;
        return;
    }
    if ((l->n != 2 && l->n != 4) || !parse_ulong(l->w[1], &n) || n == 0 ||
        (l->n == 4 && strcmp(l->w[2], "pin") != 0)) {
        line_error_locked(l, "usage: max-login-failures N [pin PIN] | off");
        return;
    }
    flt.max_login_failures = n;
    if (l->n == 4)
        set_user_pin_locked(l->w[3]);
}

static void cmd_unlock_locked(const line_t *l)
{
    flt_slot_t *s;

    if (l->n != 2) {
        line_error_locked(l, "usage: unlock SLOT|all");
        return;
    }
    if (strcmp(l->w[1], "all") == 0) {
        for (size_t i = 0; i < flt.n_slots; i++)
            flt.slots[i].login_failures = 0;
        return;
    }
    if ((s = slot_arg_locked(l, l->w[1])) != NULL)
        s->login_failures = 0;
}

static void cmd_fail_locked(const line_t *l)
{
    int fn = l->n >= 2 ? flt_fn_lookup(l->w[1]) : -1;
    unsigned long count = 1;
    CK_RV rv;

    if (fn < 0 || fn == FLT_FN_C_Initialize || fn == FLT_FN_C_Finalize ||
        fn == FLT_FN_C_GetFunctionList) {
        line_error_locked(l, "fail: unknown or unsupported function '%s'",
                          l->n >= 2 ? l->w[1] : "");
        return;
    }
    if (l->n == 3 && strcmp(l->w[2], "off") == 0) {
        flt.fail_left[fn] = 0;
        return;
    }
    if (l->n < 3 || l->n > 4 || !parse_rv(l->w[2], &rv) ||
        (l->n == 4 && strcmp(l->w[3], "always") != 0 && !parse_ulong(l->w[3], &count))) {
        line_error_locked(l, "usage: fail FUNC CKR_X|NUMBER [N|always] | fail FUNC off");
        return;
    }
    flt.fail_rv[fn] = rv;
    flt.fail_left[fn] = (l->n == 4 && strcmp(l->w[3], "always") == 0) ? -1 : (long)count;
}

static void cmd_delay_locked(const line_t *l)
{
    int fn = l->n >= 2 ? flt_fn_lookup(l->w[1]) : -1;
    flt_slot_t *s;
    long ms;

    if (fn < 0 || l->n < 3 || l->n > 4 || !parse_ms(l->w[2], &ms)) {
        line_error_locked(l, "usage: delay FUNC MS [SLOT]");
        return;
    }
    if (l->n == 3) {
        flt.delay_ms[fn] = ms;
        return;
    }
    if ((s = slot_arg_locked(l, l->w[3])) != NULL)
        s->delay_ms[fn] = ms;
}

/* hold FUNC [SLOT] | release FUNC [SLOT] | release all */
static void cmd_hold_locked(const line_t *l)
{
    bool hold = strcmp(l->w[0], "hold") == 0;
    int fn = l->n >= 2 ? flt_fn_lookup(l->w[1]) : -1;
    flt_slot_t *s;

    if (!hold && l->n == 2 && strcmp(l->w[1], "all") == 0) {
        memset(flt.hold, 0, sizeof(flt.hold));
        for (size_t i = 0; i < flt.n_slots; i++)
            memset(flt.slots[i].hold, 0, sizeof(flt.slots[i].hold));
        pthread_cond_broadcast(&flt.hold_cv);
        return;
    }
    if (fn < 0 || fn == FLT_FN_C_Initialize || fn == FLT_FN_C_Finalize ||
        fn == FLT_FN_C_GetFunctionList || fn == FLT_FN_C_WaitForSlotEvent || l->n < 2 ||
        l->n > 3) {
        line_error_locked(l, "usage: hold FUNC [SLOT] | release FUNC [SLOT] | release all");
        return;
    }
    if (l->n == 3) {
        if ((s = slot_arg_locked(l, l->w[2])) != NULL)
            s->hold[fn] = hold;
    } else {
        flt.hold[fn] = hold;
        for (size_t i = 0; !hold && i < flt.n_slots; i++)
            flt.slots[i].hold[fn] = false;
    }
    if (!hold)
        pthread_cond_broadcast(&flt.hold_cv);
}

/* limit sessions N [info] | limit sessions off */
static void cmd_limit_locked(const line_t *l)
{
    unsigned long n = 0;

    if (l->n == 3 && strcmp(l->w[1], "sessions") == 0 && strcmp(l->w[2], "off") == 0) {
        flt.session_limit = 0;
        flt.session_limit_info = false;
        return;
    }
    if (l->n < 3 || l->n > 4 || strcmp(l->w[1], "sessions") != 0 || !parse_ulong(l->w[2], &n) ||
        n == 0 || n > 100000 || (l->n == 4 && strcmp(l->w[3], "info") != 0)) {
        line_error_locked(l, "usage: limit sessions N [info] | limit sessions off");
        return;
    }
    flt.session_limit = n;
    flt.session_limit_info = l->n == 4;
}

static void cmd_lie_locked(const line_t *l)
{
    char err[200];
    flt_slot_t *s;

    if (l->n >= 2 && strcmp(l->w[1], "token-label") == 0) {
        if (l->n < 3 || l->n > 4 || (l->n == 4 && strcmp(l->w[3], "off") != 0)) {
            line_error_locked(l, "usage: lie token-label SLOT [off]");
            return;
        }
        if ((s = slot_arg_locked(l, l->w[2])) != NULL)
            s->lie_label = l->n == 3;
        return;
    }
    if (!flt_lie_cmd_locked(l->n, l->w, err, sizeof(err)))
        line_error_locked(l, "%s", err);
}

static void cmd_sync_locked(const line_t *l)
{
    if (l->n != 2) {
        line_error_locked(l, "usage: sync WORD");
        return;
    }
    free(flt.sync);
    flt.sync = strdup(l->w[1]);
}

void flt_config_reset_locked(void)
{
    line_t none = { .n = 2, .w = { "always-auth", "off" } };

    for (size_t i = 0; i < flt.n_slots; i++) {
        flt_slot_t *s = &flt.slots[i];

        if (s->removed)
            flt_slot_insert_locked(s);
        flt_free_pin(s->pad_pin);
        s->pad_pin = NULL;
        s->pinpad = s->pad_cancel = false;
        s->pad_delay_ms = 0;
        s->forced_flags = 0;
        s->login_failures = 0;
        for (int f = 0; f < FLT_FN_COUNT; f++)
            s->delay_ms[f] = -1;
    }
    for (int f = 0; f < FLT_FN_COUNT; f++) {
        flt.delay_ms[f] = 0;
        flt.fail_left[f] = 0;
    }
    memset(flt.hold, 0, sizeof(flt.hold));
    for (size_t i = 0; i < flt.n_slots; i++)
        memset(flt.slots[i].hold, 0, sizeof(flt.slots[i].hold));
    pthread_cond_broadcast(&flt.hold_cv);
    flt.session_limit = 0;
    flt.session_limit_info = false;
    cmd_always_auth_locked(&none);
    set_user_pin_locked(NULL);
    flt.max_login_failures = 0;
    flt_lie_reset_locked();
}

static void apply_line_locked(line_t *l)
{
    static const struct {
        const char *name;
        void (*fn)(const line_t *l);
    } cmds[] = {
        { "remove", cmd_remove_insert_locked },
        { "insert", cmd_remove_insert_locked },
        { "pinpad", cmd_pinpad_locked },
        { "always-auth", cmd_always_auth_locked },
        { "flags", cmd_flags_locked },
        { "user-pin", cmd_user_pin_locked },
        { "max-login-failures", cmd_max_login_failures_locked },
        { "unlock", cmd_unlock_locked },
        { "fail", cmd_fail_locked },
        { "delay", cmd_delay_locked },
        { "hold", cmd_hold_locked },
        { "release", cmd_hold_locked },
        { "limit", cmd_limit_locked },
        { "lie", cmd_lie_locked },
        { "sync", cmd_sync_locked },
    };

    if (l->n == 0 || l->w[0][0] == '#')
        return;
    if (strcmp(l->w[0], "reset") == 0 && l->n == 1) {
        flt_config_reset_locked();
        return;
    }
    if (strcmp(l->w[0], "reset-counters") == 0 && l->n == 1) {
        memset(flt.calls, 0, sizeof(flt.calls));
        memset(flt.failed, 0, sizeof(flt.failed));
        memcpy(flt.inflight_max, flt.inflight, sizeof(flt.inflight_max));
        return;
    }
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        if (strcmp(l->w[0], cmds[i].name) == 0) {
            cmds[i].fn(l);
            return;
        }
    }
    line_error_locked(l, "unknown command '%s'", l->w[0]);
}

/* Applies the complete lines of text[0, len); text is modified. */
static void apply_text_locked(char *text, size_t len, unsigned long lineno)
{
    char *p = text, *end = text + len;

    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        line_t l = { .lineno = lineno++ };
        char *save = NULL, *w;

        *nl = '\0';
        for (w = strtok_r(p, " \t\r", &save); w != NULL && l.n < MAX_WORDS;
             w = strtok_r(NULL, " \t\r", &save))
            l.w[l.n++] = w;
        if (w != NULL)
            line_error_locked(&l, "too many words");
        else
            apply_line_locked(&l);
        p = nl + 1;
    }
}

static char *read_file(const char *path, size_t *ret_len)
{
    FILE *fp = fopen(path, "r");
    char *buf = NULL;
    size_t len = 0;

    if (fp == NULL)
        return NULL;
    buf = malloc(MAX_CONTROL_SIZE + 1);
    if (buf != NULL) {
        len = fread(buf, 1, MAX_CONTROL_SIZE, fp);
        buf[len] = '\0';
        *ret_len = len;
    }
    fclose(fp);
    return buf;
}

/* Picks up control file changes; true if anything was applied. */
bool flt_control_check_locked(void)
{
    struct stat st;

    if (flt.control_path == NULL || stat(flt.control_path, &st) != 0)
        return false;
    return flt_control_check_stat_locked(&st);
}

bool flt_control_check_stat_locked(const struct stat *stp)
{
    const struct stat st = *stp;
    char *buf, *copy, *last_nl;
    size_t len = 0, upto, from = 0;
    unsigned long lineno = 1;

    if (flt.control_path == NULL)
        return false;
    if (flt.ctl_stat.exists && flt.ctl_stat.dev == st.st_dev && flt.ctl_stat.ino == st.st_ino &&
        flt.ctl_stat.size == st.st_size && flt.ctl_stat.mtime.tv_sec == st.st_mtim.tv_sec &&
        flt.ctl_stat.mtime.tv_nsec == st.st_mtim.tv_nsec &&
        flt.ctl_stat.ctime.tv_sec == st.st_ctim.tv_sec &&
        flt.ctl_stat.ctime.tv_nsec == st.st_ctim.tv_nsec)
        return false;
    flt.ctl_stat.exists = true;
    flt.ctl_stat.dev = st.st_dev;
    flt.ctl_stat.ino = st.st_ino;
    flt.ctl_stat.size = st.st_size;
    flt.ctl_stat.mtime = st.st_mtim;
    flt.ctl_stat.ctime = st.st_ctim;

    if ((buf = read_file(flt.control_path, &len)) == NULL)
        return false;
    last_nl = memrchr(buf, '\n', len);
    upto = last_nl != NULL ? (size_t)(last_nl - buf) + 1 : 0;
    if (flt.applied_len <= upto && (flt.applied_len == 0 || memcmp(flt.applied, buf, flt.applied_len) == 0)) {
        from = flt.applied_len;
        for (size_t i = 0; i < from; i++)
            lineno += buf[i] == '\n';
    } else {
        flt_config_reset_locked();
    }
    if (from == upto && flt.applied_len == upto) {
        free(buf);
        return false;
    }
    /* keep the applied prefix; apply a copy of the new part (split in place) */
    copy = malloc(upto - from + 1);
    if (copy != NULL) {
        memcpy(copy, buf + from, upto - from);
        copy[upto - from] = '\0';
        apply_text_locked(copy, upto - from, lineno);
        free(copy);
    }
    free(flt.applied);
    buf[upto] = '\0';
    flt.applied = buf;
    flt.applied_len = upto;
    flt.generation++;
    flt.state_seq++;
    return true;
}

/* --------------------------------------------------------------- state */

static void state_print_locked(FILE *fp)
{
    size_t live = 0;

    fprintf(fp, "pid %ld\n", (long)getpid());
    fprintf(fp, "generation %lu\n", flt.generation);
    if (flt.sync != NULL)
        fprintf(fp, "sync %s\n", flt.sync);
    fprintf(fp, "control.errors %lu\n", flt.n_errors);
    if (flt.n_errors > 0)
        fprintf(fp, "control.last-error %s\n", flt.last_error);
    fprintf(fp, "initialized %d\n", flt.initialized ? 1 : 0);
    for (size_t b = 0; b < FLT_BUCKETS; b++)
        for (const flt_session_t *s = flt.buckets[b]; s != NULL; s = s->next)
            live += !s->gone;
    fprintf(fp, "sessions %zu\n", live);
    for (size_t i = 0; i < flt.n_slots; i++) {
        const flt_slot_t *s = &flt.slots[i];

        fprintf(fp, "slot.%lu %s\n", s->id, s->removed ? "removed" : "present");
        if (s->label[0] != '\0')
            fprintf(fp, "slot.%lu.label %s\n", s->id, s->label);
        fprintf(fp, "slot.%lu.login-failures %lu\n", s->id, s->login_failures);
        fprintf(fp, "slot.%lu.pin-locked %d\n", s->id, flt_slot_locked_out_locked(s) ? 1 : 0);
    }
    for (int f = 0; f < FLT_FN_COUNT; f++) {
        if (flt.calls[f] > 0)
            fprintf(fp, "%s %lu\n", flt_fn_names[f], flt.calls[f]);
        if (flt.failed[f] > 0)
            fprintf(fp, "%s.failed %lu\n", flt_fn_names[f], flt.failed[f]);
        if (flt.inflight_max[f] > 0)
            fprintf(fp, "%s.inflight %lu\n%s.inflight-max %lu\n", flt_fn_names[f],
                    flt.inflight[f], flt_fn_names[f], flt.inflight_max[f]);
        if (flt.held[f] > 0)
            fprintf(fp, "%s.held %lu\n", flt_fn_names[f], flt.held[f]);
    }
}

/* Rewrites the state file if anything changed since the last write. Call
 * without flt.mu. Writers are serialised, so the file never goes back. */
void flt_state_write(void)
{
    char *text = NULL, *tmp = NULL;
    size_t len = 0;
    unsigned long seq;
    FILE *fp;

    /* set once by the first C_Initialize, before any other call */
    if (flt.state_path == NULL)
        return;
    pthread_mutex_lock(&flt.io_mu);
    pthread_mutex_lock(&flt.mu);
    seq = flt.state_seq;
    if (flt.state_path == NULL || seq == flt.written_seq) {
        pthread_mutex_unlock(&flt.mu);
        goto out;
    }
    fp = open_memstream(&text, &len);
    if (fp != NULL) {
        state_print_locked(fp);
        fclose(fp);
    }
    if (asprintf(&tmp, "%s.tmp.%ld", flt.state_path, (long)getpid()) < 0)
        tmp = NULL;
    pthread_mutex_unlock(&flt.mu);
    if (text == NULL || tmp == NULL)
        goto out;
    fp = fopen(tmp, "w");
    if (fp == NULL)
        goto out;
    if (fwrite(text, 1, len, fp) != len) {
        fclose(fp);
        unlink(tmp);
        goto out;
    }
    if (fclose(fp) != 0 || rename(tmp, flt.state_path) != 0) {
        unlink(tmp);
        goto out;
    }
    flt.written_seq = seq;
out:
    pthread_mutex_unlock(&flt.io_mu);
    free(text);
    free(tmp);
}
