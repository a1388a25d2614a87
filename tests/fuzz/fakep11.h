/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * fakep11.so: a PKCS#11 module whose every answer comes from the fuzz input
 * (tests/fuzz/fakep11.c). The harness sets the input, then loads the module
 * through the token layer as any module (tok_ctx_new with its path).
 * C_Initialize reads the token model (slots, token info, mechanisms,
 * objects and their attributes, including lies about lengths) from the
 * front of the input; later calls (C_Login, C_Sign, ...) read their
 * answers from what follows, and so does the harness (fakep11_u8,
 * fakep11_take), in call order. Once the input is used up every read
 * gives zeros: truthful, successful answers.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define FAKEP11_EXPORT __attribute__((visibility("default")))

/* The input for the next C_Initialize (not copied: keep it alive). */
FAKEP11_EXPORT void fakep11_set_input(const uint8_t *data, size_t len);
/* The next byte of the input, 0 once it is used up. */
FAKEP11_EXPORT uint8_t fakep11_u8(void);
/* How many bytes of the input are left. */
FAKEP11_EXPORT size_t fakep11_left(void);
/* Up to `max` bytes of the input (fewer near its end); *ret_len says how many. */
FAKEP11_EXPORT const uint8_t *fakep11_take(size_t max, size_t *ret_len);
