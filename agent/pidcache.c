/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * getpid() for the whole p11agentd process, remembered after the first
 * call. OpenSSL 3.0's random generator asks getpid() on every draw to
 * notice a fork (openssl_get_fork_id), and SoftHSM draws five times per
 * ECDSA signature: five system calls per signature, ~15% of the agent's
 * CPU per P-256 signature on this (paravirtualised) machine, where the
 * round trip itself costs only three (poll, recv, send). Defined in the
 * executable, this getpid is the one every library of the process binds
 * to (the executable comes first in the lookup scope).
 *
 * Why a cache is right here, where glibc dropped its own in 2.25: the
 * agent makes children only with fork() (daemonize, the pinentry), whose
 * child handler below forgets the pid, so the child asks the kernel
 * again; nothing in the agent uses vfork() or a raw clone(), the cases
 * that broke glibc's cache. Only p11agentd has it: not the static library
 * (unit tests, fuzzers), not the provider or the PKCS#11 module, which
 * live in other people's processes.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

static atomic_int cached_pid;

static void forget_pid(void)
{
    atomic_store_explicit(&cached_pid, 0, memory_order_relaxed);
}

__attribute__((constructor)) static void pidcache_init(void)
{
    pthread_atfork(NULL, NULL, forget_pid);
}

__attribute__((visibility("default"))) pid_t getpid(void)
{
    int pid = atomic_load_explicit(&cached_pid, memory_order_relaxed);

    if (pid == 0) {
        pid = (int)syscall(SYS_getpid);
        atomic_store_explicit(&cached_pid, pid, memory_order_relaxed);
    }
    return (pid_t)pid;
}
