/* Power-cut shim for tests/reliability_powercut.rs (issue 10, item 4). Owns the model of what a
 * power cut leaves on disk: loaded with LD_PRELOAD into the server, it watches every file and
 * directory under POWERCUT_ROOT and keeps, under POWERCUT_SHADOW, only what has been made
 * durable. kill -9 keeps the page cache, so it cannot show a missing fsync; this model can.
 *
 * The model (strict POSIX, no help from a journalling file system):
 *   - a file's bytes and size count once fsync/fdatasync of that file returns (or after a write
 *     through an O_SYNC/O_DSYNC descriptor or with RWF_SYNC/RWF_DSYNC);
 *   - a name counts once fsync of the directory holding it returns: the directory's whole
 *     listing at that moment becomes its durable listing (so creations, renames and removals
 *     all count only after the directory is synced);
 *   - a file whose name is durable but whose bytes never were is empty; a directory whose
 *     listing never was synced is empty;
 *   - sync_file_range, sync and syncfs make nothing durable (none of them promises that a file
 *     is complete); shared writable mappings of a watched file abort the process, since writes
 *     through them cannot be followed.
 * What exists under the root when the process starts counts as durable.
 *
 * Layout of the shadow directory (read by the test to build the image of a power cut):
 *   root            the key of the root directory
 *   dirs/KEY        the durable listing of a directory: lines "f KEY NAME" / "d KEY NAME"
 *   files/KEY       the durable bytes of a file
 * A KEY is "dev_ino_generation": the generation grows when an inode number is reused by a new
 * file, so a listing never points at bytes of another file.
 *
 * Hooks: open/open64/openat/openat64/creat/creat64 (to watch files, and to see new inodes and
 * O_TRUNC), mkdir/mkdirat, write/writev/pwrite/pwrite64/pwritev/pwritev64/pwritev2/pwritev64v2,
 * ftruncate/ftruncate64/truncate/truncate64, fallocate/fallocate64/posix_fallocate/
 * posix_fallocate64, copy_file_range, sendfile/sendfile64 (dirty ranges), fsync/fdatasync
 * (durability), mmap/mmap64 (refusal). rename/unlink need no hook: names are taken from the
 * directory itself when it is synced. POWERCUT_TRACE=1 prints each hook that fires on a watched
 * file to stderr. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define BLOCK 4096
#define BUCKETS 4096

struct node {
    dev_t dev;
    ino_t ino;
    unsigned gen;
    int is_dir;
    unsigned char *dirty; /* one bit per BLOCK */
    size_t dirty_len;     /* bytes of the bitmap */
    struct node *next;
};

static char root[PATH_MAX];
static size_t root_len;
static char shadow[PATH_MAX];
static int enabled;
static int trace;
static struct node *table[BUCKETS];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static __thread int busy; /* set while the shim itself does I/O: hooks pass straight through */

/* ---- the real functions --------------------------------------------------------------- */

#define REAL(ret, name, ...)                                                                  \
    static ret (*real_##name)(__VA_ARGS__);                                                   \
    static ret (*get_##name(void))(__VA_ARGS__) {                                             \
        if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name);                              \
        return real_##name;                                                                   \
    }

REAL(int, open, const char *, int, ...)
REAL(int, open64, const char *, int, ...)
REAL(int, openat, int, const char *, int, ...)
REAL(int, openat64, int, const char *, int, ...)
REAL(int, mkdir, const char *, mode_t)
REAL(int, mkdirat, int, const char *, mode_t)
REAL(ssize_t, write, int, const void *, size_t)
REAL(ssize_t, writev, int, const struct iovec *, int)
REAL(ssize_t, pwrite, int, const void *, size_t, off_t)
REAL(ssize_t, pwrite64, int, const void *, size_t, off64_t)
REAL(ssize_t, pwritev, int, const struct iovec *, int, off_t)
REAL(ssize_t, pwritev64, int, const struct iovec *, int, off64_t)
REAL(ssize_t, pwritev2, int, const struct iovec *, int, off_t, int)
REAL(ssize_t, pwritev64v2, int, const struct iovec *, int, off64_t, int)
REAL(int, ftruncate, int, off_t)
REAL(int, ftruncate64, int, off64_t)
REAL(int, truncate, const char *, off_t)
REAL(int, truncate64, const char *, off64_t)
REAL(int, fallocate, int, int, off_t, off_t)
REAL(int, fallocate64, int, int, off64_t, off64_t)
REAL(int, posix_fallocate, int, off_t, off_t)
REAL(int, posix_fallocate64, int, off64_t, off64_t)
REAL(ssize_t, copy_file_range, int, off64_t *, int, off64_t *, size_t, unsigned int)
REAL(ssize_t, sendfile, int, int, off_t *, size_t)
REAL(ssize_t, sendfile64, int, int, off64_t *, size_t)
REAL(int, fsync, int)
REAL(int, fdatasync, int)
REAL(void *, mmap, void *, size_t, int, int, int, off_t)
REAL(void *, mmap64, void *, size_t, int, int, int, off64_t)

/* ---- small helpers (called with `busy` set, so the shim's own I/O is not watched) ------- */

static void die(const char *what) {
    char msg[512];
    int n = snprintf(msg, sizeof msg, "powercut shim: %s (errno %d)\n", what, errno);
    if (n > 0) (void)!syscall(1, 2, msg, (size_t)n); /* SYS_write */
    abort();
}

static void note(const char *hook, int fd, long long a, long long b) {
    if (!trace) return;
    char msg[160];
    int n = snprintf(msg, sizeof msg, "powercut: %s fd=%d %lld %lld\n", hook, fd, a, b);
    if (n > 0) (void)!syscall(1, 2, msg, (size_t)n);
}

static int raw_open(const char *path, int flags, mode_t mode) {
    return get_open64()(path, flags | O_CLOEXEC, mode);
}

static struct node *lookup(dev_t dev, ino_t ino, int create) {
    size_t h = ((size_t)ino * 2654435761u ^ (size_t)dev) % BUCKETS;
    for (struct node *n = table[h]; n; n = n->next)
        if (n->dev == dev && n->ino == ino) return n;
    if (!create) return NULL;
    struct node *n = calloc(1, sizeof *n);
    if (!n) die("out of memory");
    n->dev = dev;
    n->ino = ino;
    n->next = table[h];
    table[h] = n;
    return n;
}

static void key_of(const struct node *n, char *out, size_t len) {
    snprintf(out, len, "%llu_%llu_%u", (unsigned long long)n->dev, (unsigned long long)n->ino,
             n->gen);
}

static void mark(struct node *n, long long off, long long len) {
    if (len <= 0 || off < 0) return;
    size_t first = (size_t)(off / BLOCK), last = (size_t)((off + len - 1) / BLOCK);
    size_t need = last / 8 + 1;
    if (need > n->dirty_len) {
        size_t grow = need * 2;
        unsigned char *d = realloc(n->dirty, grow);
        if (!d) die("out of memory");
        memset(d + n->dirty_len, 0, grow - n->dirty_len);
        n->dirty = d;
        n->dirty_len = grow;
    }
    for (size_t b = first; b <= last; b++) n->dirty[b / 8] |= (unsigned char)(1u << (b % 8));
}

/* Whether `fd` names something under the root (by the path the kernel gives for it). */
static int under_root(int fd) {
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    return strncmp(path, root, root_len) == 0 && (path[root_len] == '/' || path[root_len] == 0);
}

/* Copies the dirty blocks of the file open as `fd` into its shadow and gives the shadow the
 * file's size: the file's bytes are now durable. */
static void flush_file(struct node *n, int fd) {
    char key[96], path[PATH_MAX + 128], link[64];
    key_of(n, key, sizeof key);
    snprintf(path, sizeof path, "%s/files/%s", shadow, key);
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int src = raw_open(link, O_RDONLY, 0); /* `fd` itself may be write-only */
    if (src < 0) die("cannot reopen a synced file for reading");
    int dst = raw_open(path, O_WRONLY | O_CREAT, 0600);
    if (dst < 0) die("cannot open a shadow file");
    struct stat st, sh;
    if (fstat(src, &st) != 0 || fstat(dst, &sh) != 0) die("fstat");
    static __thread char buf[BLOCK];
    static const char zero[BLOCK];
    for (size_t i = 0; i < n->dirty_len; i++) {
        if (!n->dirty[i]) continue;
        for (int bit = 0; bit < 8; bit++) {
            if (!(n->dirty[i] & (1u << bit))) continue;
            off_t off = (off_t)(i * 8 + (size_t)bit) * BLOCK;
            if (off >= st.st_size) continue;
            ssize_t got = pread(src, buf, BLOCK, off);
            if (got < 0) die("pread of a synced file");
            /* Zeros past the shadow's end stay a hole (a preallocated log is mostly zeros). */
            if (off >= sh.st_size && memcmp(buf, zero, (size_t)got) == 0) continue;
            if (pwrite(dst, buf, (size_t)got, off) != got) die("pwrite of a shadow file");
        }
        n->dirty[i] = 0;
    }
    if (ftruncate(dst, st.st_size) != 0) die("ftruncate of a shadow file");
    close(src);
    close(dst);
}

/* Records the listing of the directory open as `dirfd` as its durable listing. */
static void snapshot_dir(struct node *n, int fd) {
    char key[96], path[PATH_MAX + 128], tmp[PATH_MAX + 160], link[64];
    key_of(n, key, sizeof key);
    snprintf(path, sizeof path, "%s/dirs/%s", shadow, key);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int dfd = raw_open(link, O_RDONLY | O_DIRECTORY, 0);
    if (dfd < 0) die("cannot reopen a synced directory");
    DIR *d = fdopendir(dfd);
    if (!d) die("fdopendir");
    FILE *out = fopen(tmp, "we");
    if (!out) die("cannot write a shadow listing");
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
        char type = S_ISDIR(st.st_mode) ? 'd' : S_ISREG(st.st_mode) ? 'f' : 0;
        if (!type) continue;
        struct node *c = lookup(st.st_dev, st.st_ino, 1);
        c->is_dir = type == 'd';
        char ck[96];
        key_of(c, ck, sizeof ck);
        fprintf(out, "%c %s %s\n", type, ck, e->d_name);
    }
    closedir(d);
    if (fclose(out) != 0) die("cannot write a shadow listing");
    if (rename(tmp, path) != 0) die("cannot rename a shadow listing");
}

/* The watched node behind `fd`, or NULL. */
static struct node *watched(int fd, struct stat *st) {
    if (fd < 0 || fstat(fd, st) != 0) return NULL;
    if (!S_ISREG(st->st_mode) && !S_ISDIR(st->st_mode)) return NULL;
    return lookup(st->st_dev, st->st_ino, 0);
}

/* ---- bookkeeping entry points (take the lock, set `busy`) ------------------------------- */

#define ENTER                                                                                 \
    if (!enabled || busy) return;                                                             \
    int saved_errno = errno;                                                                  \
    busy = 1;                                                                                 \
    pthread_mutex_lock(&mu)
#define LEAVE                                                                                 \
    pthread_mutex_unlock(&mu);                                                                \
    busy = 0;                                                                                 \
    errno = saved_errno

/* After a successful open: watch the file if it is under the root; `created` when the open
 * made a new inode, `trunc_from` the size before O_TRUNC (or -1). */
static void after_open(int fd, int created, long long trunc_from) {
    ENTER;
    struct stat st;
    if (fstat(fd, &st) == 0 && (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) && under_root(fd)) {
        struct node *n = lookup(st.st_dev, st.st_ino, 0);
        if (created && n) {
            n->gen++;
            memset(n->dirty, 0, n->dirty_len);
        }
        if (!n) n = lookup(st.st_dev, st.st_ino, 1);
        n->is_dir = S_ISDIR(st.st_mode);
        if (trunc_from > 0) mark(n, 0, trunc_from);
        note(created ? "open(create)" : "open", fd, trunc_from, 0);
    }
    LEAVE;
}

static void after_mkdir(int dirfd, const char *path) {
    ENTER;
    int fd = get_openat64()(dirfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        struct stat st;
        if (fstat(fd, &st) == 0 && under_root(fd)) {
            struct node *n = lookup(st.st_dev, st.st_ino, 0);
            if (n) n->gen++;
            else n = lookup(st.st_dev, st.st_ino, 1);
            n->is_dir = 1;
            note("mkdir", fd, 0, 0);
        }
        close(fd);
    }
    LEAVE;
}


/* After `len` bytes were written at `off` (off < 0: they ended at the current offset). */
static void after_write(const char *hook, int fd, long long off, long long len, int sync) {
    if (len <= 0) return;
    ENTER;
    struct stat st;
    struct node *n = watched(fd, &st);
    if (n && !n->is_dir) {
        if (off < 0) off = (long long)lseek(fd, 0, SEEK_CUR) - len;
        mark(n, off, len);
        note(hook, fd, off, len);
        int fl = fcntl(fd, F_GETFL);
        if (sync || (fl >= 0 && (fl & O_DSYNC))) flush_file(n, fd);
    }
    LEAVE;
}

/* Before a size change of `fd` to `len`: the blocks between the old and new size change. */
static void before_resize(const char *hook, int fd, long long len) {
    ENTER;
    struct stat st;
    struct node *n = watched(fd, &st);
    if (n && !n->is_dir) {
        long long old = (long long)st.st_size;
        long long lo = old < len ? old : len, hi = old < len ? len : old;
        mark(n, lo, hi - lo);
        note(hook, fd, old, len);
    }
    LEAVE;
}

static void after_sync(const char *hook, int fd) {
    ENTER;
    struct stat st;
    struct node *n = watched(fd, &st);
    if (n) {
        note(hook, fd, n->is_dir, 0);
        if (n->is_dir) snapshot_dir(n, fd);
        else flush_file(n, fd);
    }
    LEAVE;
}

static void check_mapping(int fd, int prot, int flags) {
    ENTER;
    struct stat st;
    if ((prot & PROT_WRITE) && (flags & MAP_SHARED) && watched(fd, &st))
        die("a watched file is mapped shared and writable; the model cannot follow it");
    LEAVE;
}

/* ---- start-up: what is under the root now is durable ------------------------------------ */

static void walk(const char *dir_path) {
    int fd = raw_open(dir_path, O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0) die("cannot open a directory under POWERCUT_ROOT");
    struct stat st;
    if (fstat(fd, &st) != 0) die("fstat");
    struct node *n = lookup(st.st_dev, st.st_ino, 1);
    n->is_dir = 1;
    snapshot_dir(n, fd);
    DIR *d = fdopendir(fd);
    if (!d) die("fdopendir");
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char child[PATH_MAX];
        snprintf(child, sizeof child, "%s/%s", dir_path, e->d_name);
        struct stat cs;
        if (lstat(child, &cs) != 0) continue;
        if (S_ISDIR(cs.st_mode)) {
            walk(child);
        } else if (S_ISREG(cs.st_mode)) {
            int f = raw_open(child, O_RDONLY, 0);
            if (f < 0) die("cannot open a file under POWERCUT_ROOT");
            struct node *c = lookup(cs.st_dev, cs.st_ino, 1);
            mark(c, 0, (long long)cs.st_size);
            flush_file(c, f);
            close(f);
        }
    }
    closedir(d);
}

__attribute__((constructor)) static void start(void) {
    const char *r = getenv("POWERCUT_ROOT"), *s = getenv("POWERCUT_SHADOW");
    if (!r || !s) return;
    busy = 1;
    if (!realpath(r, root)) die("POWERCUT_ROOT does not resolve");
    root_len = strlen(root);
    snprintf(shadow, sizeof shadow, "%s", s);
    trace = getenv("POWERCUT_TRACE") != NULL;
    char p[PATH_MAX + 16];
    snprintf(p, sizeof p, "%s/dirs", shadow);
    if (get_mkdir()(p, 0700) != 0 && errno != EEXIST) die("cannot create the shadow");
    snprintf(p, sizeof p, "%s/files", shadow);
    if (get_mkdir()(p, 0700) != 0 && errno != EEXIST) die("cannot create the shadow");
    walk(root);
    struct stat st;
    if (stat(root, &st) != 0) die("stat of the root");
    struct node *n = lookup(st.st_dev, st.st_ino, 0);
    char key[96];
    key_of(n, key, sizeof key);
    snprintf(p, sizeof p, "%s/root", shadow);
    FILE *f = fopen(p, "we");
    if (!f || fprintf(f, "%s\n", key) < 0 || fclose(f) != 0) die("cannot write the root key");
    enabled = 1;
    busy = 0;
}

/* ---- the hooks --------------------------------------------------------------------------- */

static int exists_at(int dirfd, const char *path) {
    struct stat st;
    return fstatat(dirfd, path, &st, 0) == 0;
}

static long long size_at(int dirfd, const char *path) {
    struct stat st;
    return fstatat(dirfd, path, &st, 0) == 0 ? (long long)st.st_size : -1;
}

#define OPEN_BODY(call, dirfd)                                                                \
    mode_t mode = 0;                                                                          \
    if (flags & (O_CREAT | __O_TMPFILE)) {                                                    \
        va_list ap;                                                                           \
        va_start(ap, flags);                                                                  \
        mode = (mode_t)va_arg(ap, int);                                                       \
        va_end(ap);                                                                           \
    }                                                                                         \
    int check = enabled && !busy;                                                             \
    int existed = check && (flags & O_CREAT) ? exists_at(dirfd, path) : 1;                    \
    long long trunc_from = check && (flags & O_TRUNC) ? size_at(dirfd, path) : -1;            \
    int fd = call;                                                                            \
    if (fd >= 0 && check) after_open(fd, !existed, trunc_from);                               \
    return fd;

int open(const char *path, int flags, ...) { OPEN_BODY(get_open()(path, flags, mode), AT_FDCWD) }
int open64(const char *path, int flags, ...) {
    OPEN_BODY(get_open64()(path, flags, mode), AT_FDCWD)
}
int openat(int dirfd, const char *path, int flags, ...) {
    OPEN_BODY(get_openat()(dirfd, path, flags, mode), dirfd)
}
int openat64(int dirfd, const char *path, int flags, ...) {
    OPEN_BODY(get_openat64()(dirfd, path, flags, mode), dirfd)
}
int creat(const char *path, mode_t mode) {
    return open(path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}
int creat64(const char *path, mode_t mode) {
    return open64(path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

int mkdir(const char *path, mode_t mode) {
    int rc = get_mkdir()(path, mode);
    if (rc == 0) after_mkdir(AT_FDCWD, path);
    return rc;
}
int mkdirat(int dirfd, const char *path, mode_t mode) {
    int rc = get_mkdirat()(dirfd, path, mode);
    if (rc == 0) after_mkdir(dirfd, path);
    return rc;
}

ssize_t write(int fd, const void *buf, size_t len) {
    ssize_t n = get_write()(fd, buf, len);
    if (n > 0) after_write("write", fd, -1, n, 0);
    return n;
}
ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    ssize_t n = get_writev()(fd, iov, cnt);
    if (n > 0) after_write("writev", fd, -1, n, 0);
    return n;
}
ssize_t pwrite(int fd, const void *buf, size_t len, off_t off) {
    ssize_t n = get_pwrite()(fd, buf, len, off);
    if (n > 0) after_write("pwrite", fd, off, n, 0);
    return n;
}
ssize_t pwrite64(int fd, const void *buf, size_t len, off64_t off) {
    ssize_t n = get_pwrite64()(fd, buf, len, off);
    if (n > 0) after_write("pwrite64", fd, off, n, 0);
    return n;
}
ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    ssize_t n = get_pwritev()(fd, iov, cnt, off);
    if (n > 0) after_write("pwritev", fd, off, n, 0);
    return n;
}
ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off) {
    ssize_t n = get_pwritev64()(fd, iov, cnt, off);
    if (n > 0) after_write("pwritev64", fd, off, n, 0);
    return n;
}
ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
    ssize_t n = get_pwritev2()(fd, iov, cnt, off, flags);
    if (n > 0) after_write("pwritev2", fd, off, n, flags & (RWF_DSYNC | RWF_SYNC));
    return n;
}
ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off64_t off, int flags) {
    ssize_t n = get_pwritev64v2()(fd, iov, cnt, off, flags);
    if (n > 0) after_write("pwritev64v2", fd, off, n, flags & (RWF_DSYNC | RWF_SYNC));
    return n;
}

int ftruncate(int fd, off_t len) {
    before_resize("ftruncate", fd, len);
    return get_ftruncate()(fd, len);
}
int ftruncate64(int fd, off64_t len) {
    before_resize("ftruncate64", fd, len);
    return get_ftruncate64()(fd, len);
}
static void before_truncate_path(const char *path, long long len) {
    if (!enabled || busy) return;
    busy = 1;
    int fd = get_open64()(path, O_RDONLY | O_CLOEXEC);
    busy = 0;
    if (fd < 0) return;
    before_resize("truncate", fd, len);
    busy = 1;
    close(fd);
    busy = 0;
}
int truncate(const char *path, off_t len) {
    before_truncate_path(path, len);
    return get_truncate()(path, len);
}
int truncate64(const char *path, off64_t len) {
    before_truncate_path(path, len);
    return get_truncate64()(path, len);
}

int fallocate(int fd, int mode, off_t off, off_t len) {
    int rc = get_fallocate()(fd, mode, off, len);
    if (rc == 0) after_write("fallocate", fd, off, len, 0);
    return rc;
}
int fallocate64(int fd, int mode, off64_t off, off64_t len) {
    int rc = get_fallocate64()(fd, mode, off, len);
    if (rc == 0) after_write("fallocate64", fd, off, len, 0);
    return rc;
}
int posix_fallocate(int fd, off_t off, off_t len) {
    int rc = get_posix_fallocate()(fd, off, len);
    if (rc == 0) after_write("posix_fallocate", fd, off, len, 0);
    return rc;
}
int posix_fallocate64(int fd, off64_t off, off64_t len) {
    int rc = get_posix_fallocate64()(fd, off, len);
    if (rc == 0) after_write("posix_fallocate64", fd, off, len, 0);
    return rc;
}

ssize_t copy_file_range(int in, off64_t *in_off, int out, off64_t *out_off, size_t len,
                        unsigned int flags) {
    long long at = out_off ? (long long)*out_off : -1;
    ssize_t n = get_copy_file_range()(in, in_off, out, out_off, len, flags);
    if (n > 0) after_write("copy_file_range", out, at, n, 0);
    return n;
}
ssize_t sendfile(int out, int in, off_t *off, size_t len) {
    ssize_t n = get_sendfile()(out, in, off, len);
    if (n > 0) after_write("sendfile", out, -1, n, 0);
    return n;
}
ssize_t sendfile64(int out, int in, off64_t *off, size_t len) {
    ssize_t n = get_sendfile64()(out, in, off, len);
    if (n > 0) after_write("sendfile64", out, -1, n, 0);
    return n;
}

int fsync(int fd) {
    int rc = get_fsync()(fd);
    if (rc == 0) after_sync("fsync", fd);
    return rc;
}
int fdatasync(int fd) {
    int rc = get_fdatasync()(fd);
    if (rc == 0) after_sync("fdatasync", fd);
    return rc;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    if (fd >= 0) check_mapping(fd, prot, flags);
    return get_mmap()(addr, len, prot, flags, fd, off);
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off) {
    if (fd >= 0) check_mapping(fd, prot, flags);
    return get_mmap64()(addr, len, prot, flags, fd, off);
}
