/* Memory figures as kubelet computes them, for `blobctl stat` and /metrics.
 *
 * Why this exists: the kernel charges the page cache of every file a process touches to that
 * process's cgroup, so raw usage of a daemon that streams gigabytes through its store looks
 * alarming while almost all of it is reclaimable. kubelet evicts on the "working set", usage
 * minus inactive file pages, and operators compare against that. Getting it wrong is easy:
 *
 *   - v2: memory.current - memory.stat:inactive_file
 *   - v1: memory.usage_in_bytes - memory.stat:total_inactive_file (the hierarchical figure;
 *     the bare "inactive_file" of v1 leaves out child cgroups)
 *   - hybrid hosts (systemd's "hybrid" layout) mount both hierarchies; the memory controller
 *     is attached to exactly one of them, the v1 one when it is mounted, and the unified
 *     hierarchy then has no memory.current at all.
 *
 * Invariants: the parsing functions are pure (text in, numbers out) so the tests feed fixture
 * files of every layout; keys match exactly (never a suffix or prefix of another key); the
 * working set never goes below 0; a cgroup path with a ".." component is refused rather than
 * joined, so a path from outside our cgroup namespace can never point above the mount.
 *
 * Cost: memstat_self() reads four small files (mountinfo is the largest: one line per mount,
 * capped at MEMSTAT_FILE_MAX) and allocates only while it runs. Thread-safe; no state.
 */
#include "util/memstat.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Largest file memstat_self() reads. mountinfo on a busy Kubernetes node (overlay and
 * projected-volume mounts of every pod) is the one that grows; a megabyte is thousands of
 * mounts, four is a generous bound that still cannot be used to balloon the daemon. */
#define MEMSTAT_FILE_MAX (4u << 20)

static bool is_blank(char c) {
        return c == ' ' || c == '\t';
}

/* Parses an unsigned decimal at [P, END) that may be surrounded by blanks (and, for the
 * usage files, followed by a newline). The whole range must be used. */
static int parse_u64_span(const char *p, const char *end, uint64_t *ret) {
        uint64_t n = 0;
        bool any = false;

        while (p < end && is_blank(*p))
                p++;
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
                unsigned d = (unsigned)(*p - '0');
                if (n > (UINT64_MAX - d) / 10)
                        return -EINVAL; /* no counter of ours legitimately overflows */
                n = n * 10 + d;
                any = true;
        }
        while (p < end && (is_blank(*p) || *p == '\n'))
                p++;
        if (!any || p != end)
                return -EINVAL;
        *ret = n;
        return 0;
}

/* The shared line scanner of memory.stat ("key value") and /proc/self/status ("Key:\tvalue
 * kB"): finds the first line whose key is exactly KEY followed by SEP, and returns the span
 * of the rest of that line. */
static int find_key_line(const char *text, const char *key, char sep, const char **ret_val,
                         const char **ret_end) {
        size_t klen = strlen(key);
        const char *line = text;

        while (*line) {
                const char *nl = strchr(line, '\n');
                const char *end = nl ? nl : line + strlen(line);

                if ((size_t)(end - line) > klen && memcmp(line, key, klen) == 0 &&
                    line[klen] == sep) {
                        *ret_val = line + klen + 1;
                        *ret_end = end;
                        return 0;
                }
                if (!nl)
                        break;
                line = nl + 1;
        }
        return -ENOENT;
}

int memstat_stat_value(const char *stat_text, const char *key, uint64_t *ret) {
        const char *val, *end;
        int r;

        if (!stat_text || !key || !*key)
                return -EINVAL;
        for (const char *k = key; *k; k++)
                if (is_blank(*k) || *k == '\n')
                        return -EINVAL;
        r = find_key_line(stat_text, key, ' ', &val, &end);
        if (r < 0)
                return r;
        return parse_u64_span(val, end, ret);
}

int memstat_compute(enum cgroup_version v, const char *usage_text, const char *stat_text,
                    struct cgroup_memory *ret) {
        const char *key;
        uint64_t usage, inactive;

        if (v == CGROUP_V1)
                key = "total_inactive_file";
        else if (v == CGROUP_V2)
                key = "inactive_file";
        else
                return -EINVAL;
        if (!usage_text || !stat_text)
                return -EINVAL;
        if (parse_u64_span(usage_text, usage_text + strlen(usage_text), &usage) < 0)
                return -EINVAL;
        if (memstat_stat_value(stat_text, key, &inactive) < 0)
                return -EINVAL;

        ret->version = v;
        ret->usage_bytes = usage;
        ret->inactive_file_bytes = inactive;
        /* Both figures are sampled at different instants by the kernel; inactive can exceed
         * usage for a moment. kubelet clamps at 0, so do we. */
        ret->working_set_bytes = inactive < usage ? usage - inactive : 0;
        return 0;
}

/* One line of text, as a [start, end) span, walked without modifying the input. */
struct span {
        const char *p;
        const char *end;
};

static bool span_next_line(const char **cursor, struct span *ret) {
        const char *s = *cursor, *nl;

        if (!*s)
                return false;
        nl = strchr(s, '\n');
        ret->p = s;
        ret->end = nl ? nl : s + strlen(s);
        *cursor = nl ? nl + 1 : ret->end;
        return true;
}

/* Splits off the next field of LINE ending at SEP (or the end of the line). */
static bool span_field(struct span *line, char sep, struct span *ret) {
        const char *p = line->p;

        if (p > line->end)
                return false;
        while (p < line->end && *p != sep)
                p++;
        ret->p = line->p;
        ret->end = p;
        line->p = p + 1; /* may pass end by one: the next call then fails */
        return true;
}

static bool span_eq(const struct span *s, const char *lit) {
        size_t n = strlen(lit);
        return (size_t)(s->end - s->p) == n && memcmp(s->p, lit, n) == 0;
}

/* Whether comma-separated LIST holds ITEM as a whole item ("cpu,memory" yes, "memoryx" no). */
static bool span_list_has(const struct span *list, const char *item) {
        struct span l = *list, it;

        while (l.p <= l.end && span_field(&l, ',', &it))
                if (span_eq(&it, item))
                        return true;
        return false;
}

/* The cgroup path of the process in one hierarchy, from /proc/<pid>/cgroup. V1: the line
 * whose controller list has "memory"; V2: the "0::" line. */
static bool find_cgroup_path(const char *proc_cgroup, bool v1, struct span *ret) {
        const char *cur = proc_cgroup;
        struct span line, id, ctl;

        while (span_next_line(&cur, &line)) {
                if (!span_field(&line, ':', &id) || !span_field(&line, ':', &ctl) ||
                    line.p > line.end)
                        continue;
                /* The path is the rest of the line, colons included. */
                if (v1 ? span_list_has(&ctl, "memory") : (span_eq(&id, "0") && ctl.p == ctl.end)) {
                        if (line.p == line.end || *line.p != '/')
                                continue;
                        *ret = line;
                        return true;
                }
        }
        return false;
}

/* Copies a mountinfo field into OUT, decoding the kernel's octal escapes ("\040" for a
 * space). False if it does not fit or an escape is malformed. */
static bool unescape_field(const struct span *f, char *out, size_t out_len) {
        size_t n = 0;

        for (const char *p = f->p; p < f->end; p++) {
                char c = *p;
                if (c == '\\') {
                        if (f->end - p < 4)
                                return false;
                        unsigned v = 0;
                        for (int i = 1; i <= 3; i++) {
                                if (p[i] < '0' || p[i] > '7')
                                        return false;
                                v = v * 8 + (unsigned)(p[i] - '0');
                        }
                        if (v == 0 || v > 255)
                                return false;
                        c = (char)v;
                        p += 3;
                }
                if (n + 1 >= out_len)
                        return false;
                out[n++] = c;
        }
        out[n] = '\0';
        return true;
}

/* Whether PATH (a span starting with '/') has a "." or ".." component. */
static bool path_has_dots(const char *p, const char *end) {
        while (p < end) {
                const char *c = p + 1, *e = c;
                while (e < end && *e != '/')
                        e++;
                if ((e - c == 1 && c[0] == '.') || (e - c == 2 && c[0] == '.' && c[1] == '.'))
                        return true;
                p = e;
        }
        return false;
}

/* Joins mount point MNT with the part of cgroup path CG below mount root ROOT. -ENOENT when
 * the cgroup is not visible through this mount, -ENAMETOOLONG when OUT is too small. */
static int join_cgroup_dir(const char *mnt, const char *root, const struct span *cg, char *out,
                           size_t out_len) {
        size_t rlen = strlen(root), mlen = strlen(mnt), tlen;
        const char *rel = cg->p;

        if (path_has_dots(cg->p, cg->end))
                return -ENOENT;
        if (strcmp(root, "/") != 0) {
                /* A container without a cgroup namespace sees its own cgroup mounted as the
                 * root of the hierarchy: strip that prefix, component-wise. */
                if ((size_t)(cg->end - cg->p) < rlen || memcmp(cg->p, root, rlen) != 0 ||
                    (cg->p + rlen < cg->end && cg->p[rlen] != '/'))
                        return -ENOENT;
                rel += rlen;
        }
        if (rel < cg->end && *rel == '/' && rel + 1 == cg->end)
                rel = cg->end; /* "/" adds nothing */
        /* REL is empty or starts with '/': drop the mount point's trailing slashes so "/"
         * mounts join as "/x", not "//x". */
        while (mlen > 0 && mnt[mlen - 1] == '/')
                mlen--;
        tlen = mlen + (size_t)(cg->end - rel);
        if (tlen == 0) {
                if (out_len < 2)
                        return -ENAMETOOLONG;
                memcpy(out, "/", 2);
                return 0;
        }
        if (tlen + 1 > out_len)
                return -ENAMETOOLONG;
        memcpy(out, mnt, mlen);
        memcpy(out + mlen, rel, (size_t)(cg->end - rel));
        out[tlen] = '\0';
        return 0;
}

/* Scans mountinfo for a mount of the wanted hierarchy (v1 with the memory controller, or
 * cgroup2) and joins the process's cgroup path onto the first one it is visible through. */
static int find_mount_dir(const char *mountinfo, bool v1, const struct span *cg, char *out,
                          size_t out_len) {
        const char *cur = mountinfo;
        struct span line, f;
        int result = -ENOENT;

        while (span_next_line(&cur, &line)) {
                struct span root = {0}, mnt = {0}, fstype, source, opts;
                char root_buf[4096], mnt_buf[4096];
                bool sep = false;
                int n = 0, r;

                /* ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER */
                while (line.p <= line.end && span_field(&line, ' ', &f)) {
                        if (n == 3)
                                root = f;
                        else if (n == 4)
                                mnt = f;
                        n++;
                        if (n > 6 && span_eq(&f, "-")) {
                                sep = true;
                                break;
                        }
                }
                if (!sep || !span_field(&line, ' ', &fstype) || !span_field(&line, ' ', &source) ||
                    !span_field(&line, ' ', &opts))
                        continue;
                if (v1 ? !(span_eq(&fstype, "cgroup") && span_list_has(&opts, "memory"))
                       : !span_eq(&fstype, "cgroup2"))
                        continue;
                if (!unescape_field(&root, root_buf, sizeof(root_buf)) ||
                    !unescape_field(&mnt, mnt_buf, sizeof(mnt_buf)) || mnt_buf[0] != '/' ||
                    root_buf[0] != '/')
                        continue;
                r = join_cgroup_dir(mnt_buf, root_buf, cg, out, out_len);
                if (r == 0)
                        return 0;
                if (r == -ENAMETOOLONG)
                        result = r; /* remember, but a later mount may still fit */
        }
        return result;
}

int memstat_cgroup_dir(const char *proc_cgroup, const char *mountinfo, char *out, size_t out_len,
                       enum cgroup_version *ret_version) {
        struct span cg;
        int r = -ENOENT, r2;

        if (!proc_cgroup || !mountinfo || !out)
                return -ENOENT;
        /* v1 first: on a hybrid host the memory controller lives there and the unified
         * hierarchy has no memory files at all. */
        if (find_cgroup_path(proc_cgroup, true, &cg)) {
                r = find_mount_dir(mountinfo, true, &cg, out, out_len);
                if (r == 0) {
                        *ret_version = CGROUP_V1;
                        return 0;
                }
        }
        if (find_cgroup_path(proc_cgroup, false, &cg)) {
                r2 = find_mount_dir(mountinfo, false, &cg, out, out_len);
                if (r2 == 0) {
                        *ret_version = CGROUP_V2;
                        return 0;
                }
                if (r2 == -ENAMETOOLONG)
                        r = r2;
        }
        return r;
}

/* Reads a whole (small, pseudo) file into a NUL-terminated heap buffer of at most
 * MEMSTAT_FILE_MAX bytes. The caller frees *RET. */
static int read_text_file(const char *path, char **ret) {
        size_t cap = 4096, len = 0;
        char *buf = NULL;
        int fd, r;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        buf = malloc(cap);
        if (!buf) {
                r = -ENOMEM;
                goto out_close_fd;
        }
        for (;;) {
                ssize_t n;

                if (len + 1 >= cap) {
                        char *nb;
                        if (cap >= MEMSTAT_FILE_MAX) {
                                /* Full: only a file that has more is too big. */
                                char extra;
                                ssize_t m = read(fd, &extra, 1);
                                if (m < 0 && errno == EINTR)
                                        continue;
                                if (m == 0)
                                        break;
                                r = m < 0 ? -errno : -EFBIG;
                                goto out_free_buf;
                        }
                        cap *= 2;
                        nb = realloc(buf, cap);
                        if (!nb) {
                                r = -ENOMEM;
                                goto out_free_buf;
                        }
                        buf = nb;
                }
                n = read(fd, buf + len, cap - len - 1);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        goto out_free_buf;
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        /* Embedded NULs would silently cut the text short; no file we read has them. */
        if (memchr(buf, '\0', len)) {
                r = -EINVAL;
                goto out_free_buf;
        }
        buf[len] = '\0';
        close(fd);
        *ret = buf;
        return 0;

out_free_buf:
        free(buf);
out_close_fd:
        close(fd);
        return r;
}

static int read_in_dir(const char *dir, const char *name, char **ret) {
        char path[4096 + 64];
        int n = snprintf(path, sizeof(path), "%s/%s", dir, name);

        if (n < 0 || (size_t)n >= sizeof(path))
                return -ENAMETOOLONG;
        return read_text_file(path, ret);
}

int memstat_self(struct cgroup_memory *ret) {
        char *cgroup = NULL, *mountinfo = NULL, *usage = NULL, *stat = NULL;
        char dir[4096];
        enum cgroup_version v;
        struct cgroup_memory m;
        int r;

        r = read_text_file("/proc/self/cgroup", &cgroup);
        if (r < 0)
                return r;
        r = read_text_file("/proc/self/mountinfo", &mountinfo);
        if (r < 0)
                goto out_free;
        r = memstat_cgroup_dir(cgroup, mountinfo, dir, sizeof(dir), &v);
        if (r < 0)
                goto out_free;
        /* The root cgroup of v2 has no memory.current: -ENOENT, honestly. */
        r = read_in_dir(dir, v == CGROUP_V1 ? "memory.usage_in_bytes" : "memory.current", &usage);
        if (r < 0)
                goto out_free;
        r = read_in_dir(dir, "memory.stat", &stat);
        if (r < 0)
                goto out_free;
        r = memstat_compute(v, usage, stat, &m);
        if (r < 0)
                goto out_free;
        *ret = m;
out_free:
        free(stat);
        free(usage);
        free(mountinfo);
        free(cgroup);
        return r;
}

int memstat_rss(uint64_t *ret_bytes) {
        char *status = NULL;
        const char *val, *end;
        uint64_t kib;
        int r;

        r = read_text_file("/proc/self/status", &status);
        if (r < 0)
                return r;
        /* "VmRSS:\t   12345 kB"; kernel threads have no VmRSS line. */
        r = find_key_line(status, "VmRSS", ':', &val, &end);
        if (r < 0)
                goto out_free;
        if (end - val < 3 || memcmp(end - 3, " kB", 3) != 0) {
                r = -EINVAL;
                goto out_free;
        }
        r = parse_u64_span(val, end - 3, &kib);
        if (r < 0)
                goto out_free;
        if (kib > UINT64_MAX / 1024) {
                r = -ERANGE;
                goto out_free;
        }
        *ret_bytes = kib * 1024;
out_free:
        free(status);
        return r;
}
