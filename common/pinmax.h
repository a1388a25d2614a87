/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The longest PIN p11agent handles, in bytes, on every path: PIN files,
 * Unlock over D-Bus, pinentry and desktop prompts, p11agentctl. A longer PIN
 * is refused with an error that says so; it is never cut to fit.
 */
#pragma once

#define PIN_MAX 256
/* "256", for messages */
#define PIN_MAX_STR_(n) #n
#define PIN_MAX_STR_X(n) PIN_MAX_STR_(n)
#define PIN_MAX_STR PIN_MAX_STR_X(PIN_MAX)
