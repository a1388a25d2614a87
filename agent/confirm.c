/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* [key] confirm = DURATION: one "allow" from the person covers the uses of
 * that key for DURATION. A small table of key URIs and until-times, the
 * oldest entry forgotten first; under confirm_lock only. */
#include <stdlib.h>
#include <string.h>

#include "agent.h"

bool agent_confirm_fresh(agent_t *a, const char *key_uri, unsigned window_s)
{
    int64_t now = agent_now_ms();
    bool fresh = false;

    if (window_s == 0)
        return false;
    pthread_mutex_lock(&a->confirm_lock);
    for (size_t i = 0; i < AGENT_MAX_CONFIRMED && !fresh; i++)
        fresh = a->confirmed[i].key_uri && strcmp(a->confirmed[i].key_uri, key_uri) == 0 &&
                now < a->confirmed[i].until_ms;
    pthread_mutex_unlock(&a->confirm_lock);
    return fresh;
}

void agent_confirm_record(agent_t *a, const char *key_uri, unsigned window_s)
{
    struct agent_confirmed *slot = NULL;
    char *copy;

    if (window_s == 0 || !(copy = strdup(key_uri)))
        return; /* out of memory: the next use asks again (fails safe) */
    pthread_mutex_lock(&a->confirm_lock);
    for (size_t i = 0; i < AGENT_MAX_CONFIRMED; i++) {
        struct agent_confirmed *e = &a->confirmed[i];

        if (e->key_uri && strcmp(e->key_uri, key_uri) == 0) {
            slot = e;
            break;
        }
        if (!slot || !e->key_uri || (slot->key_uri && e->until_ms < slot->until_ms))
            slot = e;
    }
    free(slot->key_uri);
    slot->key_uri = copy;
    slot->until_ms = agent_now_ms() + (int64_t)window_s * 1000;
    pthread_mutex_unlock(&a->confirm_lock);
}
