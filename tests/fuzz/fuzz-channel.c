/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Signing-channel frames (dbus/channel.c): the input is a byte stream as the
 * agent reads it from a channel. It is parsed as the agent does (frame after
 * frame until one is incomplete or breaks the rules), and once more fed in
 * pieces (the piece size from the first byte): both must agree, a frame is
 * never longer than what was there nor than the maximum, a SIGN that
 * parsed re-encodes to the same bytes, and so does a DECRYPT whose
 * parameters were accepted (its label and ciphertext lie inside the
 * frame, within the D-Bus Decrypt's bounds); a DECRYPT refused is refused
 * with Unsupported or InvalidArgs only. The same bytes go to the reply
 * parser (the client's side).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channel.h"

#define FRAME_MAX (sizeof(bus_chan_req_hdr_t) + BUS_CHAN_MAX_PAYLOAD)

static void fail(const char *why)
{
    fprintf(stderr, "fuzz-channel: %s\n", why);
    abort();
}

static void check_decrypt(const bus_chan_req_t *q, const uint8_t *frame, long n)
{
    static uint8_t again[FRAME_MAX];
    const uint8_t *end = frame + n;
    long m;

    if (q->status != BUS_OK) {
        if (q->status != BUS_ERR_UNSUPPORTED && q->status != BUS_ERR_INVALID_ARGS)
            fail("a DECRYPT refused with another error");
        return;
    }
    if (q->len == 0 || q->len > BUS_DECRYPT_MAX_DATA ||
        q->dparams.label_len > BUS_DECRYPT_MAX_LABEL || q->data < frame + sizeof(bus_chan_req_hdr_t) ||
        q->data + q->len != end ||
        (q->dparams.label_len &&
         (q->dparams.label != frame + sizeof(bus_chan_req_hdr_t) ||
          q->dparams.label + q->dparams.label_len != q->data)) ||
        (q->dparams.alg != BUS_DEC_RSA_OAEP &&
         (q->dparams.hash[0] || q->dparams.mgf1_hash[0] || q->dparams.label_len)))
        fail("an accepted DECRYPT out of its frame or bounds");
    m = bus_chan_encode_decrypt(again, q->id, q->handle, &q->dparams, q->data, q->len);
    if (m != n || memcmp(again, frame, (size_t)n) != 0)
        fail("a DECRYPT frame does not re-encode to itself");
}

/* Parses the stream whole; returns the bytes consumed by whole frames and
 * whether it stopped on a protocol error. */
static size_t parse_all(const uint8_t *data, size_t size, bool *bad)
{
    size_t off = 0;

    *bad = false;
    for (;;) {
        bus_chan_req_t q;
        long n = bus_chan_parse_request(data + off, size - off, &q);

        if (n == 0)
            return off;
        if (n < 0) {
            if (n != BUS_ERR_PROTOCOL)
                fail("an error other than BUS_ERR_PROTOCOL");
            *bad = true;
            return off;
        }
        /* an accepted DECRYPT's len is its ciphertext, after the label */
        size_t payload = q.len + (q.op == BUS_CHAN_OP_DECRYPT && q.status == BUS_OK
                                          ? q.dparams.label_len
                                          : 0);

        if ((size_t)n > size - off || (size_t)n > FRAME_MAX ||
            payload + sizeof(bus_chan_req_hdr_t) != (size_t)n)
            fail("a frame longer than its input or the maximum");
        if (q.op == BUS_CHAN_OP_SIGN && q.status == BUS_OK) {
            static uint8_t again[FRAME_MAX];
            long m = bus_chan_encode_sign(again, q.id, q.handle, &q.params, q.data, q.len);

            /* salt_len of a non-PSS frame is not carried over */
            if (m != n || (q.params.alg == BUS_SIG_RSA_PSS &&
                           memcmp(again, data + off, (size_t)n) != 0) ||
                memcmp(again + sizeof(bus_chan_req_hdr_t), q.data, q.len) != 0)
                fail("a SIGN frame does not re-encode to itself");
        }
        if (q.op == BUS_CHAN_OP_DECRYPT)
            check_decrypt(&q, data + off, n);
        off += (size_t)n;
    }
}

/* The agent's way: a buffer filled piece by piece, whole frames taken off
 * its front. */
static size_t parse_pieces(const uint8_t *data, size_t size, size_t piece, bool *bad)
{
    static uint8_t buf[FRAME_MAX];
    size_t have = 0, off = 0, consumed = 0;

    *bad = false;
    while (off < size || have > 0) {
        size_t take = size - off < piece ? size - off : piece;
        bus_chan_req_t q;
        long n;

        if (take > sizeof(buf) - have)
            take = sizeof(buf) - have;
        memcpy(buf + have, data + off, take);
        have += take;
        off += take;
        while ((n = bus_chan_parse_request(buf, have, &q)) > 0) {
            memmove(buf, buf + n, have - (size_t)n);
            have -= (size_t)n;
            consumed += (size_t)n;
        }
        if (n < 0) {
            *bad = true;
            return consumed;
        }
        if (take == 0) {
            if (have == sizeof(buf))
                fail("a full buffer without a whole frame");
            return consumed;
        }
    }
    return consumed;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bus_chan_rep_hdr_t h;
    const uint8_t *rd;
    size_t whole, pieces;
    bool bad_whole, bad_pieces;
    long n;

    if (size == 0)
        return 0;
    whole = parse_all(data + 1, size - 1, &bad_whole);
    pieces = parse_pieces(data + 1, size - 1, 1 + data[0] % 64, &bad_pieces);
    if (whole != pieces || bad_whole != bad_pieces)
        fail("the stream parses differently in pieces");
    n = bus_chan_parse_reply(data, size, &h, &rd);
    if (n > 0 && ((size_t)n > size || rd != data + sizeof(h) || h.len + sizeof(h) != (size_t)n ||
                  h.status > 0))
        fail("a reply longer than its input, or a positive status");
    return 0;
}
