/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The signing channel: a lean data plane beside the D-Bus control plane.
 * A client admitted on D-Bus calls OpenChannel() and gets one end of a
 * socketpair (a unix fd in the reply); the agent serves the other end on
 * the thread of that D-Bus connection, with that connection's identity,
 * limits and policy. Frames are fixed binary records in host byte order
 * (both ends are on this machine):
 *
 *   request:  bus_chan_req_hdr_t, then `len` bytes
 *     BIND     payload: a key URI (no NUL, valid UTF-8) -> reply.handle
 *     SIGN     handle of a BIND on this channel, alg/hash/mgf1/salt_len,
 *              payload: the digest (or message, eddsa) -> reply payload:
 *              signature
 *     DECRYPT  handle, alg (bus_dec_alg_t), hash/mgf1 (OAEP; 0: none, as
 *              the D-Bus Decrypt without "hash"/"mgf1-hash"), label_len;
 *              payload: the OAEP label (label_len bytes), then the
 *              ciphertext -> reply payload: the plaintext (a secret: both
 *              ends wipe the buffers that held it)
 *   reply:    bus_chan_rep_hdr_t, then `len` bytes: the result when status
 *             is 0, else the error text (status is a bus_err_t).
 *
 * Every Sign still goes through the agent's one key-use path (lookup,
 * access, allow-exe, confirm, login, audit, counters). A frame that breaks
 * the rules (unknown op, length past the maximum, reserved bits set) ends
 * the channel, not the D-Bus connection.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bus.h"

#define BUS_CHAN_MAGIC 0x4350u       /* "PC" */
#define BUS_CHAN_MAX_PAYLOAD 4096u   /* digests, URIs, signatures, errors */
#define BUS_CHAN_MAX_URI 2048u
#define BUS_CHAN_MAX_HANDLES 32u     /* bound keys per channel */

enum { BUS_CHAN_OP_BIND = 1, BUS_CHAN_OP_SIGN = 2, BUS_CHAN_OP_DECRYPT = 3 };

typedef struct bus_chan_req_hdr {
    uint16_t magic;   /* BUS_CHAN_MAGIC */
    uint8_t op;       /* BUS_CHAN_OP_* */
    uint8_t alg;      /* SIGN: bus_sig_alg_t; DECRYPT: bus_dec_alg_t */
    uint8_t hash;     /* SIGN, DECRYPT: index in the hash table of channel.c (0: none) */
    uint8_t mgf1;     /* SIGN: same; 0: as hash. DECRYPT: same; 0: none */
    uint16_t reserved; /* 0 */
    uint32_t id;      /* echoed in the reply */
    uint32_t handle;  /* SIGN, DECRYPT: from BIND */
    union {
        int32_t salt_len;   /* SIGN, rsa-pss: bytes; else -1 */
        uint32_t label_len; /* DECRYPT: label bytes at the start of the payload */
    };
    uint32_t len;     /* payload bytes that follow, <= BUS_CHAN_MAX_PAYLOAD */
} bus_chan_req_hdr_t;

typedef struct bus_chan_rep_hdr {
    uint16_t magic;
    uint8_t op;       /* the request's */
    uint8_t reserved;
    uint32_t id;      /* the request's */
    int32_t status;   /* 0 or a bus_err_t */
    uint32_t handle;  /* BIND: the handle */
    uint32_t len;
} bus_chan_rep_hdr_t;

_Static_assert(sizeof(bus_chan_req_hdr_t) == 24, "request header is 24 bytes");
_Static_assert(sizeof(bus_chan_rep_hdr_t) == 20, "reply header is 20 bytes");

/* A request parsed from a buffer; data points into it. */
typedef struct bus_chan_req {
    uint8_t op;
    uint32_t id;
    uint32_t handle;
    bus_sign_params_t params; /* SIGN */
    bus_decrypt_params_t dparams; /* DECRYPT; label points into the buffer */
    const uint8_t *data;      /* payload (DECRYPT: the ciphertext, after the label) */
    size_t len;
    int status; /* BUS_OK; or, for a whole frame answered with an error while
                   the channel goes on: BUS_ERR_UNSUPPORTED, a SIGN or
                   DECRYPT with an unknown algorithm or hash index;
                   BUS_ERR_INVALID_ARGS, a DECRYPT the D-Bus Decrypt would
                   refuse (no ciphertext or more than BUS_DECRYPT_MAX_DATA,
                   a label past BUS_DECRYPT_MAX_LABEL or the payload, hash,
                   mgf1 or label with a padding other than OAEP) */
} bus_chan_req_t;

/* Parses the request at the start of buf (avail bytes). Returns the size
 * of the whole frame (> 0) with *ret set, 0 when more bytes are needed
 * (never more than sizeof header + BUS_CHAN_MAX_PAYLOAD in all), or
 * BUS_ERR_PROTOCOL for a frame that breaks the rules (bad magic, unknown
 * op, reserved bits, length past the maximum). */
long bus_chan_parse_request(const uint8_t *buf, size_t avail, bus_chan_req_t *ret);
/* Same for a reply: data/len set, *ret_hdr filled. */
long bus_chan_parse_reply(const uint8_t *buf, size_t avail, bus_chan_rep_hdr_t *ret_hdr,
                          const uint8_t **ret_data);

/* The hash index of a name ("" -> 0), or -1 when the channel cannot carry
 * it (the caller signs over D-Bus then). */
int bus_chan_hash_index(const char *name);

/* Encodes a SIGN (p, data) or BIND (uri as data) request into out (room
 * for sizeof header + BUS_CHAN_MAX_PAYLOAD). The frame's size, or
 * BUS_ERR_INVALID_ARGS when it cannot go on a channel (too long, a hash
 * the channel does not carry). */
long bus_chan_encode_sign(uint8_t *out, uint32_t id, uint32_t handle, const bus_sign_params_t *p,
                          const uint8_t *data, size_t len);
long bus_chan_encode_bind(uint8_t *out, uint32_t id, const char *uri);
/* A DECRYPT request (label, then data, as the payload); the frame's size,
 * or BUS_ERR_INVALID_ARGS when it cannot go on a channel (see
 * bus_chan_can_decrypt) or the D-Bus Decrypt would refuse it too. */
long bus_chan_encode_decrypt(uint8_t *out, uint32_t id, uint32_t handle,
                             const bus_decrypt_params_t *p, const uint8_t *data, size_t len);
/* Whether a Decrypt with p and len bytes fits a DECRYPT frame (its hashes
 * have an index, label and data fit the payload); if not, the client
 * decrypts over D-Bus. */
bool bus_chan_can_decrypt(const bus_decrypt_params_t *p, size_t len);
/* A reply frame into out (same room); len is cut at BUS_CHAN_MAX_PAYLOAD. */
size_t bus_chan_encode_reply(uint8_t *out, uint8_t op, uint32_t id, int32_t status,
                             uint32_t handle, const void *data, size_t len);
