/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* PIN sources and the locked, wiped memory that holds a PIN while it is used. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "agent.h"
#include "pinmax.h"

/* One page holds any PIN (and its NUL). */
#define SECRET_CAP 4096
_Static_assert(PIN_MAX + 1 < SECRET_CAP, "a PIN fits in one secret page");

static int secret_alloc(agent_secret_t *s, size_t cap)
{
    void *p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED)
        return -errno;
    /* Best effort: mlock may fail under RLIMIT_MEMLOCK; the buffer is wiped
     * anyway and core dumps are off. */
    (void)mlock(p, cap);
    (void)madvise(p, cap, MADV_DONTDUMP);
    (void)madvise(p, cap, MADV_DONTFORK);
    s->buf = p;
    s->cap = cap;
    s->len = 0;
    return 0;
}

int agent_secret_new(agent_secret_t *ret, const char *pin, size_t len)
{
    agent_secret_t s = {0};
    int r;

    if (len > PIN_MAX)
        return -E2BIG;
    r = secret_alloc(&s, SECRET_CAP);
    if (r < 0)
        return r;
    memcpy(s.buf, pin, len);
    s.buf[len] = '\0';
    s.len = len;
    *ret = s;
    return 0;
}

void agent_secret_free(agent_secret_t *s)
{
    if (!s || !s->buf)
        return;
    explicit_bzero(s->buf, s->cap);
    munlock(s->buf, s->cap);
    munmap(s->buf, s->cap);
    s->buf = NULL;
    s->len = s->cap = 0;
}

int agent_pin_source_parse(const char *spec, agent_pin_source_t *ret, char **errmsg)
{
    agent_pin_source_t src = {0};

    if (strncmp(spec, "file:", 5) == 0 && spec[5] == '/') {
        src.kind = AGENT_PIN_FILE;
        src.path = strdup(spec + 5);
        if (!src.path)
            return -ENOMEM;
        *ret = src;
        return 0;
    }
    if (strncmp(spec, "credential:", 11) == 0 && spec[11] && !strchr(spec + 11, '/')) {
        const char *dir = getenv("CREDENTIALS_DIRECTORY");

        if (!dir || dir[0] != '/') {
            if (errmsg && asprintf(errmsg,
                                   "PIN source '%s' needs $CREDENTIALS_DIRECTORY (run "
                                   "under systemd with LoadCredential=%s:...)",
                                   spec, spec + 11) < 0)
                *errmsg = NULL;
            return -EINVAL;
        }
        src.kind = AGENT_PIN_FILE;
        if (asprintf(&src.path, "%s/%s", dir, spec + 11) < 0)
            return -ENOMEM;
        *ret = src;
        return 0;
    }
    if (errmsg && asprintf(errmsg,
                           "unknown PIN source '%s' (expected file:/ABSOLUTE/PATH or "
                           "credential:NAME)",
                           spec) < 0)
        *errmsg = NULL;
    return -EINVAL;
}

void agent_pin_source_clear(agent_pin_source_t *src)
{
    if (!src)
        return;
    free(src->path);
    memset(src, 0, sizeof(*src));
}

int agent_pin_source_read(const agent_pin_source_t *src, agent_secret_t *ret,
                          agent_pin_id_t *ret_id, char **errmsg)
{
    agent_secret_t s = {0};
    struct stat st;
    ssize_t n;
    size_t len = 0;
    int fd = -1, r;

    if (src->kind != AGENT_PIN_FILE) {
        agent_set_errmsg(errmsg, "no PIN source configured");
        return -ENOENT;
    }
    fd = open(src->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 || fstat(fd, &st) < 0) {
        r = -errno;
        agent_set_errmsg(errmsg, "cannot read PIN file %s: %s", src->path, strerror(-r));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        r = -EINVAL;
        agent_set_errmsg(errmsg, "PIN file %s is not a regular file", src->path);
        goto out;
    }
    /* System mode: a PIN file others (its group included) can read or
     * change is refused; per-user, that is the user's business: a warning. */
    if ((st.st_mode & 077) && src->strict) {
        r = -EPERM;
        agent_set_errmsg(errmsg,
                         "PIN file %s (mode %04o) is accessible to %s; refusing it (chmod 0600 %s)",
                         src->path, (unsigned)(st.st_mode & 07777),
                         (st.st_mode & 007) ? "every user" : "its group", src->path);
        goto out;
    }
    if (st.st_mode & 077)
        agent_warn("PIN file %s (mode %04o) is accessible to other users; make it mode 0600",
                   src->path, (unsigned)(st.st_mode & 07777));
    r = secret_alloc(&s, SECRET_CAP);
    if (r < 0) {
        agent_set_errmsg(errmsg, "cannot allocate memory for the PIN from %s", src->path);
        goto out;
    }
    while (len < PIN_MAX + 1 && (n = read(fd, s.buf + len, PIN_MAX + 1 - len)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            r = -errno;
            agent_set_errmsg(errmsg, "cannot read PIN file %s: %s", src->path, strerror(-r));
            goto out;
        }
        len += (size_t)n;
    }
    /* One line: the PIN ends at the first newline. */
    for (size_t i = 0; i < len; i++)
        if (s.buf[i] == '\n' || s.buf[i] == '\r') {
            len = i;
            break;
        }
    if (len > PIN_MAX) {
        r = -E2BIG;
        agent_set_errmsg(errmsg,
                         "PIN file %s holds more than a PIN (over %d bytes on its first line)",
                         src->path, PIN_MAX);
        goto out;
    }
    if (len == 0) {
        r = -ENODATA;
        agent_set_errmsg(errmsg, "PIN file %s is empty", src->path);
        goto out;
    }
    explicit_bzero(s.buf + len, s.cap - len);
    s.len = len;
    if (ret_id) {
        ret_id->dev = st.st_dev;
        ret_id->ino = st.st_ino;
        ret_id->size = st.st_size;
        ret_id->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    }
    *ret = s;
    s.buf = NULL;
    r = 0;
out:
    agent_secret_free(&s);
    if (fd >= 0)
        close(fd);
    return r;
}

/* --- rejected PIN files, remembered across restarts --------------------- */
/* A TPM counts every wrong PIN towards its dictionary-attack lock-out (3
 * tries on swtpm), for all its keys: an agent restarted in a loop must not
 * offer a PIN file the token rejected once more on every start. The
 * identity of a rejected file is kept next to the socket (the agent's own
 * 0700 directory, a tmpfs under /run), one fixed-size record per token,
 * named by a hash of the token URI. */

#define REJECTED_MAGIC "p11agt-r"

typedef struct rejected_rec {
    char magic[8];
    uint64_t dev, ino;
    int64_t size, mtime_ns;
} rejected_rec_t;

/* malloc'd path of the record of token_uri; NULL without memory or socket. */
static char *rejected_path(const agent_t *a, const char *token_uri)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    char hex[33], *dir, *slash, *path = NULL;

    if (a == NULL || a->socket_path == NULL || token_uri == NULL)
        return NULL;
    dir = strdup(a->socket_path);
    if (dir == NULL)
        return NULL;
    slash = strrchr(dir, '/');
    if (slash == NULL) {
        free(dir);
        return NULL;
    }
    *slash = '\0';
    SHA256((const unsigned char *)token_uri, strlen(token_uri), md);
    for (size_t i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    if (asprintf(&path, "%s/pin-rejected-%s", dir[0] ? dir : "", hex) < 0)
        path = NULL;
    free(dir);
    return path;
}

bool agent_pin_rejected_load(const agent_t *a, const char *token_uri, agent_pin_id_t *ret)
{
    rejected_rec_t rec;
    struct stat st;
    char *path = rejected_path(a, token_uri);
    bool ok = false;
    int fd;

    if (path == NULL)
        return false;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    /* ours, not writable by others, exactly one record */
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
        !(st.st_mode & 022) && st.st_size == (off_t)sizeof(rec) &&
        read(fd, &rec, sizeof(rec)) == (ssize_t)sizeof(rec) &&
        memcmp(rec.magic, REJECTED_MAGIC, sizeof(rec.magic)) == 0) {
        ret->dev = (dev_t)rec.dev;
        ret->ino = (ino_t)rec.ino;
        ret->size = (off_t)rec.size;
        ret->mtime_ns = rec.mtime_ns;
        ok = true;
    }
    if (fd >= 0)
        close(fd);
    free(path);
    return ok;
}

void agent_pin_rejected_save(const agent_t *a, const char *token_uri, const agent_pin_id_t *id)
{
    rejected_rec_t rec;
    char *path = rejected_path(a, token_uri), *tmp = NULL;
    bool written;
    int fd;

    if (path == NULL || asprintf(&tmp, "%s.tmp", path) < 0) {
        tmp = NULL;
        goto out;
    }
    memset(&rec, 0, sizeof(rec));
    memcpy(rec.magic, REJECTED_MAGIC, sizeof(rec.magic));
    rec.dev = (uint64_t)id->dev;
    rec.ino = (uint64_t)id->ino;
    rec.size = (int64_t)id->size;
    rec.mtime_ns = id->mtime_ns;
    unlink(tmp);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        agent_warn("cannot remember the rejected PIN file in %s: %s", tmp, strerror(errno));
        goto out;
    }
    written = write(fd, &rec, sizeof(rec)) == (ssize_t)sizeof(rec);
    if (close(fd) != 0)
        written = false;
    if (!written || rename(tmp, path) != 0) {
        agent_warn("cannot remember the rejected PIN file in %s", path);
        unlink(tmp);
    }
out:
    free(tmp);
    free(path);
}

void agent_pin_rejected_forget(const agent_t *a, const char *token_uri)
{
    char *path = rejected_path(a, token_uri);

    if (path != NULL)
        unlink(path);
    free(path);
}
