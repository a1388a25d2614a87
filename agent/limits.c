/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Connection limits: which connection the agent closes to make room for
 * another. Pure choices over the clients list (clients_lock held by the
 * caller); server.c closes what is chosen.
 *
 * A flood of connections must not lock real clients out, so a full table
 * makes room rather than refusing the newcomer: the connection closed is
 * one that costs its owner least. An idle client closed this way reconnects
 * transparently at its next call (the provider retries a call on a
 * connection that dropped); a connection in the middle of a request is
 * never chosen.
 */
#include <errno.h>

#include "agent.h"

unsigned agent_max_clients_per_user(const agent_t *a)
{
    unsigned n = a->max_clients_per_user ? a->max_clients_per_user
                                         : AGENT_MAX_CLIENTS_PER_USER_DEFAULT;

    return n < a->max_clients ? n : a->max_clients;
}

/* Pending connections: past AGENT_MAX_PENDING, the oldest pending one of the
 * uid that holds the most. A uid flooding the agent thus only closes its
 * own connections while others wait to authenticate, and a real client
 * (the newest) is the last one of its uid to go. */
agent_client_t *agent_pending_victim_locked(const agent_t *a)
{
    agent_client_t *victim = NULL;
    unsigned victim_count = 0;

    if (a->n_pending < AGENT_MAX_PENDING)
        return NULL;
    for (agent_client_t *c = a->clients; c; c = c->next) {
        unsigned count = 0;
        agent_client_t *oldest = NULL;

        if (c->slot != AGENT_SLOT_PENDING)
            continue;
        /* quadratic in AGENT_MAX_PENDING at worst (64): fine, and no
         * allocation on this path */
        for (agent_client_t *d = a->clients; d; d = d->next) {
            if (d->slot != AGENT_SLOT_PENDING || d->uid != c->uid)
                continue;
            count++;
            if (!oldest || d->since_ms < oldest->since_ms)
                oldest = d;
        }
        if (count > victim_count) {
            victim_count = count;
            victim = oldest;
        }
    }
    return victim;
}

/* The client of `uid` (any uid if !by_uid) idle the longest, or NULL. */
static agent_client_t *longest_idle(const agent_t *a, bool by_uid, uid_t uid)
{
    agent_client_t *best = NULL;
    int64_t best_ms = 0;

    for (agent_client_t *c = a->clients; c; c = c->next) {
        int64_t ms;

        if (c->slot != AGENT_SLOT_CLIENT || (by_uid && c->uid != uid) ||
            atomic_load(&c->state) != AGENT_CONN_IDLE)
            continue;
        ms = atomic_load(&c->last_active_ms);
        if (!best || ms < best_ms) {
            best = c;
            best_ms = ms;
        }
    }
    return best;
}

int agent_client_room_locked(const agent_t *a, const agent_client_t *c, agent_client_t **victim,
                             const char **limit)
{
    unsigned per_user = agent_max_clients_per_user(a), same_uid = 0;

    *victim = NULL;
    for (const agent_client_t *d = a->clients; d; d = d->next)
        if (d->slot == AGENT_SLOT_CLIENT && d->uid == c->uid)
            same_uid++;
    if (same_uid >= per_user) {
        /* without a lower max-clients-per-user, max-clients is the limit */
        *limit = per_user < a->max_clients ? "max-clients-per-user" : "max-clients";
        *victim = longest_idle(a, true, c->uid);
        return *victim ? 0 : -EBUSY;
    }
    if (a->n_clients >= a->max_clients) {
        *limit = "max-clients";
        *victim = longest_idle(a, false, 0);
        return *victim ? 0 : -EBUSY;
    }
    return 0;
}
