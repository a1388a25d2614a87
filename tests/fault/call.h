/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* p11fault: the frame around every forwarded call (p11fault.c). */
#pragma once

#include "p11fault.h"

typedef enum call_kind {
    CALL_GLOBAL,  /* no slot, no session */
    CALL_SLOT,    /* id is a slot ID */
    CALL_SESSION, /* id is one of our session handles */
} call_kind_t;

typedef struct call {
    flt_fn_t fn;
    flt_session_t *sess;    /* held busy until call_end */
    CK_SESSION_HANDLE real; /* the real module's session handle */
    CK_SLOT_ID slot;
    bool has_slot;
    bool injected;          /* the rv is a `fail` from the control file */
} call_t;

/* Counts the call, picks up control changes, resolves the session (gone
 * sessions: CKR_DEVICE_REMOVED while the slot is removed, else
 * CKR_SESSION_HANDLE_INVALID) and applies an injected failure. call_end
 * must follow whatever this returns. */
CK_RV call_begin(call_t *c, flt_fn_t fn, call_kind_t kind, CK_ULONG id);

/* Sleeps the `delay` configured for this function (and slot), without
 * flt.mu; fails if the session went away meanwhile. */
CK_RV call_delay(call_t *c);

/* Sleeps ms without flt.mu, then checks the session as call_delay does. */
CK_RV call_sleep(call_t *c, long ms);

/* Counts a failure, releases the session, writes the state file. */
CK_RV call_end(call_t *c, CK_RV rv);

/* forward.c: the plain forwarding wrappers; fills the function list. */
void flt_fill_forwarders(CK_FUNCTION_LIST *f);

/* p11fault.c */
void flt_deadline_after(struct timespec *ts, long ms);

/* slot.c */
flt_slot_t *flt_slot_find_locked(CK_SLOT_ID id);
bool flt_slot_removed_locked(CK_SLOT_ID id);
void flt_slot_note_label_locked(CK_SLOT_ID id, const CK_UTF8CHAR *label);
/* call_begin + call_delay for slot calls that need the token: then
 * CKR_TOKEN_NOT_PRESENT while the card is out. */
CK_RV flt_slot_call_begin(call_t *c, flt_fn_t fn, CK_SLOT_ID id);
void flt_fill_slots(CK_FUNCTION_LIST *f);

/* session.c */
flt_session_t *flt_session_find_locked(CK_SESSION_HANDLE h);
/* One call less on s; frees it (and closes the real session) when due. */
void flt_session_release_locked(flt_session_t *s);
/* Calls fn on every session (of slot, unless any); fn may unlink. */
void flt_sessions_each_locked(bool any, CK_SLOT_ID slot, void (*fn)(flt_session_t *s));
void flt_session_kill(flt_session_t *s);     /* card removed */
void flt_session_drop_gone(flt_session_t *s); /* card back: forget dead ones */
void flt_session_free_any(flt_session_t *s);  /* C_Finalize */
void flt_fill_sessions(CK_FUNCTION_LIST *f);

/* auth.c */
void flt_fill_auth(CK_FUNCTION_LIST *f);
