/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * agent.conf (agent/conf.c): agent_conf_parse on the input as text, then
 * agent_apply_conf on a fresh agent (it parses the pin-source settings).
 * Errors must come with a message; nothing may leak.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    agent_conf_t conf = { 0 };
    char *text, *err = NULL;
    agent_t a;
    int r;

    if (size > 64 * 1024)
        return 0;
    text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    r = agent_conf_parse(text, "fuzz.conf", &conf, &err);
    free(text);
    if (r < 0) {
        if (err == NULL && r != -ENOMEM) {
            fprintf(stderr, "fuzz-conf: error %d without a message\n", r);
            abort();
        }
        free(err);
        return 0;
    }
    free(err);
    err = NULL;
    /* audit-file would create the file the input names: parsed above,
     * not opened here (agent_audit_open has its unit test) */
    free(conf.audit_file);
    conf.audit_file = NULL;
    if (agent_init(&a) == 0) {
        a.conf = conf;
        agent_apply_conf(&a, &err);
        free(err);
        agent_done(&a); /* clears a.conf */
    } else {
        agent_conf_clear(&conf);
    }
    return 0;
}
