/* Memory figures as kubelet sees them.
 *
 * kubelet's "working set" is usage minus inactive file pages: on cgroup v2
 * memory.current - memory.stat:inactive_file, on cgroup v1 memory.usage_in_bytes -
 * memory.stat:total_inactive_file (clamped at 0). Reporting raw usage instead misleads
 * operators: page cache of files a process touched is charged to it but reclaimable.
 *
 * The parsing is pure (strings in, numbers out) so tests can feed fixture files of both
 * cgroup versions; memstat_self() does the I/O for the calling process. */
#pragma once
#include <stdint.h>
#include <stddef.h>

enum cgroup_version { CGROUP_NONE = 0, CGROUP_V1 = 1, CGROUP_V2 = 2 };

struct cgroup_memory {
        enum cgroup_version version;
        uint64_t usage_bytes;         /* memory.current (v2) / memory.usage_in_bytes (v1) */
        uint64_t inactive_file_bytes; /* inactive_file (v2) / total_inactive_file (v1) */
        uint64_t working_set_bytes;   /* usage - inactive_file, never below 0 */
};

/* Finds KEY's value in a memory.stat text ("key value\n" lines). Exact key match only
 * ("inactive_file" never matches "total_inactive_file"). 0 or -ENOENT / -EINVAL. */
int memstat_stat_value(const char *stat_text, const char *key, uint64_t *ret);

/* Computes the figures from the raw files' contents: USAGE_TEXT is memory.current or
 * memory.usage_in_bytes, STAT_TEXT is memory.stat. 0 or -EINVAL. */
int memstat_compute(enum cgroup_version v, const char *usage_text, const char *stat_text,
                    struct cgroup_memory *ret);

/* From /proc/<pid>/cgroup and /proc/<pid>/mountinfo contents, finds the directory holding
 * the memory controller's files for that process: the v1 "memory" hierarchy when one is
 * mounted (hybrid hosts keep memory accounting there), else the v2 unified hierarchy.
 * Writes the path into OUT and the version into RET_VERSION. 0, -ENOENT, -ENAMETOOLONG. */
int memstat_cgroup_dir(const char *proc_cgroup, const char *mountinfo, char *out, size_t out_len,
                       enum cgroup_version *ret_version);

/* The calling process's cgroup memory figures (reads /proc/self/... and the cgroup files).
 * 0 or -errno. */
int memstat_self(struct cgroup_memory *ret);

/* The calling process's resident set size from /proc/self/status (VmRSS). 0 or -errno. */
int memstat_rss(uint64_t *ret_bytes);
