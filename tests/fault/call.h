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
