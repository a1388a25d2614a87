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
 * glibc dropped its own cache in 2.25 because children made without its
 * fork() wrapper (a raw clone(), later _Fork()) saw the parent's pid; a
 * random generator that believes it was not forked hands parent and child
 * the same bytes, and the same ECDSA nonce gives the key away. So the pid
 * lives in a page marked MADV_WIPEONFORK: the kernel zeroes it in every
 * child that does not share the parent's memory, however the child was
 * made, and a zero means "ask the kernel". Without that page (a kernel
 * before 4.14, no memory) nothing is cached. A vfork()-style child shares
 * the page, but such a child may only exec or _exit. Only p11agentd has
 * this: not the static library (unit tests, fuzzers), not the provider or
 * the PKCS#11 module, which live in other people's processes.
 */
#include <stdatomic.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif

/* NULL: no cache, every call asks the kernel */
static atomic_int *cached_pid;

__attribute__((constructor)) static void pidcache_init(void)
{
    long page = sysconf(_SC_PAGESIZE);
    void *p = mmap(NULL, page > 0 ? (size_t)page : 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED)
        return;
    if (madvise(p, page > 0 ? (size_t)page : 4096, MADV_WIPEONFORK) != 0) {
        munmap(p, page > 0 ? (size_t)page : 4096);
        return;
    }
    cached_pid = p;
}

__attribute__((visibility("default"))) pid_t getpid(void)
{
    int pid;

    if (cached_pid == NULL)
        return (pid_t)syscall(SYS_getpid);
    pid = atomic_load_explicit(cached_pid, memory_order_relaxed);
    if (pid == 0) {
        pid = (int)syscall(SYS_getpid);
        atomic_store_explicit(cached_pid, pid, memory_order_relaxed);
    }
    return (pid_t)pid;
}
