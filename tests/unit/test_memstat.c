/* Unit tests for util/memstat.c: kubelet's working set on cgroup v1, v2 and hybrid hosts, from
 * fixture texts copied from real kernels (trimmed), and the live figures of this process.
 *
 * The bounded file reader is static and /proc files are too small here to make it grow, so
 * this file includes memstat.c to test it on files of chosen sizes. Every global symbol of
 * memstat.c is then defined here, and the linker never pulls memstat.o from the core library
 * into this program. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/memstat.c"

/* cgroup v2 memory.stat (Linux 6.1), a daemon that streamed a large file: most of its usage
 * is inactive page cache. */
static const char V2_STAT[] = "anon 10485760\n"
                              "file 943718400\n"
                              "kernel 2097152\n"
                              "kernel_stack 98304\n"
                              "pagetables 196608\n"
                              "sec_pagetables 0\n"
                              "percpu 0\n"
                              "sock 0\n"
                              "vmalloc 0\n"
                              "shmem 0\n"
                              "zswap 0\n"
                              "zswapped 0\n"
                              "file_mapped 1048576\n"
                              "file_dirty 0\n"
                              "file_writeback 0\n"
                              "swapcached 0\n"
                              "anon_thp 0\n"
                              "file_thp 0\n"
                              "shmem_thp 0\n"
                              "inactive_anon 10485760\n"
                              "active_anon 4096\n"
                              "inactive_file 900000000\n"
                              "active_file 43718400\n"
                              "unevictable 0\n"
                              "slab_reclaimable 1048576\n"
                              "slab_unreclaimable 524288\n"
                              "slab 1572864\n"
                              "workingset_refault_anon 0\n"
                              "workingset_refault_file 12\n"
                              "pgfault 40960\n"
                              "pgmajfault 3\n";
static const char V2_CURRENT[] = "956301312\n";

/* cgroup v1 memory.stat (Linux 5.10): the local counters come first, the hierarchical
 * "total_" ones after; they differ when child cgroups hold pages. */
static const char V1_STAT[] = "cache 209883136\n"
                              "rss 1671168\n"
                              "rss_huge 0\n"
                              "shmem 0\n"
                              "mapped_file 114688\n"
                              "dirty 73728\n"
                              "writeback 0\n"
                              "swap 0\n"
                              "pgpgin 65704\n"
                              "pgpgout 15950\n"
                              "pgfault 36392\n"
                              "pgmajfault 81\n"
                              "inactive_anon 1540096\n"
                              "active_anon 8192\n"
                              "inactive_file 1000\n"
                              "active_file 3362816\n"
                              "unevictable 0\n"
                              "hierarchical_memory_limit 9223372036854771712\n"
                              "hierarchical_memsw_limit 9223372036854771712\n"
                              "total_cache 209883136\n"
                              "total_rss 1671168\n"
                              "total_rss_huge 0\n"
                              "total_shmem 0\n"
                              "total_mapped_file 114688\n"
                              "total_dirty 73728\n"
                              "total_writeback 0\n"
                              "total_swap 0\n"
                              "total_pgpgin 65704\n"
                              "total_pgpgout 15950\n"
                              "total_pgfault 36392\n"
                              "total_pgmajfault 81\n"
                              "total_inactive_anon 1540096\n"
                              "total_active_anon 8192\n"
                              "total_inactive_file 206520320\n"
                              "total_active_file 3362816\n"
                              "total_unevictable 0\n";
static const char V1_USAGE[] = "213532672\n";

/* A hybrid host (systemd "hybrid" layout, as on this build machine): v1 controllers including
 * memory, plus the unified hierarchy at /sys/fs/cgroup/unified. */
static const char HYBRID_CGROUP[] = "12:rdma:/\n"
                                    "11:cpu,cpuacct:/system.slice/p2pblobsd.service\n"
                                    "10:name=systemd:/system.slice/p2pblobsd.service\n"
                                    "9:pids:/system.slice/p2pblobsd.service\n"
                                    "4:memory:/system.slice/p2pblobsd.service\n"
                                    "3:cpuset:/\n"
                                    "0::/system.slice/p2pblobsd.service\n";
static const char HYBRID_MOUNTINFO[] =
        "22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
        "31 22 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - "
        "cgroup2 cgroup2 rw,nsdelegate\n"
        "33 31 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - "
        "cgroup cgroup rw,xattr,name=systemd\n"
        "36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - "
        "cgroup cgroup rw,cpu,cpuacct\n"
        "39 31 0:36 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:19 - "
        "cgroup cgroup rw,memory\n"
        "40 31 0:37 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:20 - "
        "cgroup cgroup rw,pids\n";

/* A pure v2 host (Debian 12 default). */
static const char V2_CGROUP[] = "0::/system.slice/p2pblobsd.service\n";
static const char V2_MOUNTINFO[] =
        "24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
        "26 24 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
        "rw,nsdelegate,memory_recursiveprot\n"
        "30 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro\n";

/* --- memstat_stat_value -------------------------------------------------------------------- */

static void test_stat_value(void **state) {
        uint64_t v = 0;
        (void)state;

        assert_int_equal(memstat_stat_value(V2_STAT, "inactive_file", &v), 0);
        assert_true(v == 900000000);
        assert_int_equal(memstat_stat_value(V2_STAT, "anon", &v), 0); /* the first line */
        assert_true(v == 10485760);
        assert_int_equal(memstat_stat_value(V2_STAT, "pgmajfault", &v), 0); /* the last one */
        assert_true(v == 3);
        assert_int_equal(memstat_stat_value(V1_STAT, "inactive_file", &v), 0);
        assert_true(v == 1000);
        assert_int_equal(memstat_stat_value(V1_STAT, "total_inactive_file", &v), 0);
        assert_true(v == 206520320);
        assert_int_equal(memstat_stat_value(V1_STAT, "hierarchical_memory_limit", &v), 0);
        assert_true(v == UINT64_C(9223372036854771712));
        assert_int_equal(memstat_stat_value("a 1", "a", &v), 0); /* no final newline */
        assert_true(v == 1);
        assert_int_equal(memstat_stat_value("a 18446744073709551615\n", "a", &v), 0);
        assert_true(v == UINT64_MAX);
}

static void test_stat_value_exact_key(void **state) {
        uint64_t v = 12345;
        (void)state;

        /* Only the hierarchical line exists: the bare key must not match inside it. */
        assert_int_equal(memstat_stat_value("total_inactive_file 7\n", "inactive_file", &v),
                         -ENOENT);
        assert_int_equal(memstat_stat_value("inactive_file 7\n", "inactive", &v), -ENOENT);
        assert_int_equal(memstat_stat_value("inactive_file 7\n", "file", &v), -ENOENT);
        assert_int_equal(memstat_stat_value("inactive_file 7\n", "inactive_file_x", &v), -ENOENT);
        assert_int_equal(memstat_stat_value("", "anon", &v), -ENOENT);
        assert_int_equal(memstat_stat_value("anon\n", "anon", &v), -ENOENT);
        assert_true(v == 12345);
}

static void test_stat_value_malformed(void **state) {
        uint64_t v = 12345;
        (void)state;

        assert_int_equal(memstat_stat_value("anon -1\n", "anon", &v), -EINVAL);
        assert_int_equal(memstat_stat_value("anon 12x\n", "anon", &v), -EINVAL);
        assert_int_equal(memstat_stat_value("anon \n", "anon", &v), -EINVAL);
        assert_int_equal(memstat_stat_value("anon 1 2\n", "anon", &v), -EINVAL);
        assert_int_equal(memstat_stat_value("anon 18446744073709551616\n", "anon", &v), -EINVAL);
        assert_int_equal(memstat_stat_value("anon 1\n", "", &v), -EINVAL);
        assert_int_equal(memstat_stat_value("anon 1\n", "an on", &v), -EINVAL);
        assert_int_equal(memstat_stat_value(NULL, "anon", &v), -EINVAL);
        assert_int_equal(memstat_stat_value("anon 1\n", NULL, &v), -EINVAL);
        assert_true(v == 12345);
}

/* --- memstat_compute ----------------------------------------------------------------------- */

static void test_compute_v2_mostly_inactive(void **state) {
        struct cgroup_memory m;
        (void)state;

        assert_int_equal(memstat_compute(CGROUP_V2, V2_CURRENT, V2_STAT, &m), 0);
        assert_int_equal(m.version, CGROUP_V2);
        assert_true(m.usage_bytes == 956301312);
        assert_true(m.inactive_file_bytes == 900000000);
        /* 956 MB of usage is 56 MB of working set: the rest is reclaimable page cache. */
        assert_true(m.working_set_bytes == 956301312 - 900000000);
}

static void test_compute_v1_uses_total(void **state) {
        struct cgroup_memory m;
        (void)state;

        assert_int_equal(memstat_compute(CGROUP_V1, V1_USAGE, V1_STAT, &m), 0);
        assert_int_equal(m.version, CGROUP_V1);
        assert_true(m.usage_bytes == 213532672);
        /* total_inactive_file, not the local inactive_file (1000). */
        assert_true(m.inactive_file_bytes == 206520320);
        assert_true(m.working_set_bytes == 213532672 - 206520320);

        /* A v1 stat without total_inactive_file is refused, never read from the local key. */
        assert_int_equal(memstat_compute(CGROUP_V1, V1_USAGE, "inactive_file 5\n", &m), -EINVAL);
        /* And the v2 reading of the same v1 file takes the local key, as v2 has no totals. */
        assert_int_equal(memstat_compute(CGROUP_V2, V1_USAGE, V1_STAT, &m), 0);
        assert_true(m.inactive_file_bytes == 1000);
}

static void test_compute_clamps(void **state) {
        struct cgroup_memory m;
        (void)state;

        /* The kernel samples the two files at different instants. */
        assert_int_equal(memstat_compute(CGROUP_V2, "1000\n", "inactive_file 5000\n", &m), 0);
        assert_true(m.usage_bytes == 1000);
        assert_true(m.inactive_file_bytes == 5000);
        assert_true(m.working_set_bytes == 0);
        assert_int_equal(memstat_compute(CGROUP_V1, "1000", "total_inactive_file 1000\n", &m), 0);
        assert_true(m.working_set_bytes == 0);
        assert_int_equal(memstat_compute(CGROUP_V2, "0\n", "inactive_file 0\n", &m), 0);
        assert_true(m.working_set_bytes == 0);
}

static void test_compute_errors(void **state) {
        struct cgroup_memory m, orig;
        (void)state;

        memset(&orig, 0x5a, sizeof(orig));
        m = orig;
        assert_int_equal(memstat_compute(CGROUP_NONE, V2_CURRENT, V2_STAT, &m), -EINVAL);
        assert_int_equal(memstat_compute((enum cgroup_version)7, V2_CURRENT, V2_STAT, &m), -EINVAL);
        assert_int_equal(memstat_compute(CGROUP_V2, "max\n", V2_STAT, &m), -EINVAL);
        assert_int_equal(memstat_compute(CGROUP_V2, "", V2_STAT, &m), -EINVAL);
        assert_int_equal(memstat_compute(CGROUP_V2, "12 34\n", V2_STAT, &m), -EINVAL);
        assert_int_equal(memstat_compute(CGROUP_V2, "-12\n", V2_STAT, &m), -EINVAL);
        assert_int_equal(memstat_compute(CGROUP_V2, V2_CURRENT, "anon 1\n", &m), -EINVAL);
        assert_int_equal(memstat_compute(CGROUP_V2, V2_CURRENT, "inactive_file x\n", &m), -EINVAL);
        assert_int_equal(memstat_compute(CGROUP_V2, NULL, V2_STAT, &m), -EINVAL);
        assert_int_equal(memstat_compute(CGROUP_V2, V2_CURRENT, NULL, &m), -EINVAL);
        assert_memory_equal(&m, &orig, sizeof(m));
}

/* --- memstat_cgroup_dir -------------------------------------------------------------------- */

static void expect_dir(const char *cg, const char *mi, const char *want,
                       enum cgroup_version want_v) {
        char out[512];
        enum cgroup_version v = CGROUP_NONE;
        int r = memstat_cgroup_dir(cg, mi, out, sizeof(out), &v);

        if (r != 0)
                fail_msg("memstat_cgroup_dir = %d, want %s", r, want);
        assert_string_equal(out, want);
        assert_int_equal(v, want_v);
}

static void expect_dir_err(const char *cg, const char *mi, int err) {
        char out[64];
        enum cgroup_version v = (enum cgroup_version)42;
        int r;

        memcpy(out, "untouched", sizeof("untouched"));
        r = memstat_cgroup_dir(cg, mi, out, sizeof(out), &v);
        if (r != err)
                fail_msg("memstat_cgroup_dir = %d, want %d", r, err);
        assert_string_equal(out, "untouched");
        assert_int_equal(v, 42);
}

static void test_dir_hybrid_v1_wins(void **state) {
        (void)state;
        expect_dir(HYBRID_CGROUP, HYBRID_MOUNTINFO,
                   "/sys/fs/cgroup/memory/system.slice/p2pblobsd.service", CGROUP_V1);
        /* The same with the lines in other orders: mountinfo order must not matter. */
        expect_dir("0::/a\n4:memory:/b\n",
                   "32 31 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
                   "39 31 0:36 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
                   "/sys/fs/cgroup/memory/b", CGROUP_V1);
}

static void test_dir_this_machine_layout(void **state) {
        /* This build machine, verbatim: a container on a hybrid host. */
        static const char cg[] = "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n"
                                 "5:devices:/\n4:memory:/process_api/684b93b4cfbfbd8d\n"
                                 "3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n";
        static const char mi[] =
                "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
                "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
                "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
                "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
                "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        (void)state;
        expect_dir(cg, mi, "/sys/fs/cgroup/memory/process_api/684b93b4cfbfbd8d", CGROUP_V1);
}

static void test_dir_pure_v2(void **state) {
        (void)state;
        expect_dir(V2_CGROUP, V2_MOUNTINFO, "/sys/fs/cgroup/system.slice/p2pblobsd.service",
                   CGROUP_V2);
        /* The root cgroup (a cgroup namespace shows "/"): the mount point itself. */
        expect_dir("0::/\n", V2_MOUNTINFO, "/sys/fs/cgroup", CGROUP_V2);
        /* v1 "memory" listed but not mounted as v1: the memory controller is on v2. */
        expect_dir("4:memory:/x\n0::/y\n", V2_MOUNTINFO, "/sys/fs/cgroup/y", CGROUP_V2);
        /* A hybrid mountinfo without the v1 memory mount. */
        expect_dir("0::/z\n",
                   "32 31 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
                   "33 31 0:30 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n",
                   "/sys/fs/cgroup/unified/z", CGROUP_V2);
}

static void test_dir_container_root(void **state) {
        /* A container without a cgroup namespace on v1: its own cgroup is mounted as the
         * hierarchy's root, and /proc/self/cgroup shows the full host path. */
        static const char cg[] = "5:memory:/kubepods/burstable/pod1/abc\n"
                                 "4:cpu,cpuacct:/kubepods/burstable/pod1/abc\n";
        static const char mi[] =
                "700 699 0:40 /kubepods/burstable/pod1/abc /sys/fs/cgroup/cpu,cpuacct ro - "
                "cgroup cgroup rw,cpu,cpuacct\n"
                "701 699 0:41 /kubepods/burstable/pod1/abc /sys/fs/cgroup/memory ro,nosuid "
                "master:20 - cgroup cgroup rw,memory\n";
        (void)state;
        expect_dir(cg, mi, "/sys/fs/cgroup/memory", CGROUP_V1);
        expect_dir("5:memory:/kubepods/burstable/pod1/abc/sub\n", mi, "/sys/fs/cgroup/memory/sub",
                   CGROUP_V1);
        /* "/kubepods/burstable/pod1/abcd" is not below ".../abc". */
        expect_dir_err("5:memory:/kubepods/burstable/pod1/abcd\n", mi, -ENOENT);
}

static void test_dir_parsing_details(void **state) {
        (void)state;
        /* Optional fields before the separator, several of them. */
        expect_dir("4:memory:/a\n",
                   "39 31 0:36 / /sys/fs/cgroup/memory rw shared:19 master:3 propagate_from:2 - "
                   "cgroup cgroup rw,memory\n",
                   "/sys/fs/cgroup/memory/a", CGROUP_V1);
        /* Escaped mount point; a path with ':' in it (the rest of the line is the path). */
        expect_dir("4:memory:/a:b\n", "39 31 0:36 / /mnt/cg\\040mem rw - cgroup cgroup rw,memory\n",
                   "/mnt/cg mem/a:b", CGROUP_V1);
        /* The controller list item must match whole: "memoryx" is not "memory". */
        expect_dir("4:memoryx:/a\n0::/b\n",
                   "39 31 0:36 / /cg/m rw - cgroup cgroup rw,memoryx\n"
                   "40 31 0:37 / /cg/u rw - cgroup2 cgroup2 rw\n",
                   "/cg/u/b", CGROUP_V2);
        /* v1 memory mounted twice (a bind mount): the first usable one. */
        expect_dir("4:memory:/a\n",
                   "39 31 0:36 /other /cg/m1 rw - cgroup cgroup rw,memory\n"
                   "40 31 0:36 / /cg/m2 rw - cgroup cgroup rw,memory\n",
                   "/cg/m2/a", CGROUP_V1);
        /* A trailing slash on a mount point does not double. */
        expect_dir("0::/a\n", "1 0 0:1 / / rw - cgroup2 cgroup2 rw\n", "/a", CGROUP_V2);
        expect_dir("0::/\n", "1 0 0:1 / / rw - cgroup2 cgroup2 rw\n", "/", CGROUP_V2);
        expect_dir("0::/a\n", "1 0 0:1 / /cg/ rw - cgroup2 cgroup2 rw\n", "/cg/a", CGROUP_V2);
}

static void test_dir_errors(void **state) {
        (void)state;
        expect_dir_err("", "", -ENOENT);
        expect_dir_err(HYBRID_CGROUP, "", -ENOENT);
        expect_dir_err("", HYBRID_MOUNTINFO, -ENOENT);
        expect_dir_err("1:name=systemd:/\n", HYBRID_MOUNTINFO, -ENOENT);
        /* A path from outside our cgroup namespace must not climb above the mount. */
        expect_dir_err("0::/../../etc\n", V2_MOUNTINFO, -ENOENT);
        expect_dir_err("0::/a/./b\n", V2_MOUNTINFO, -ENOENT);
        /* Malformed lines are skipped. */
        expect_dir_err("0:/x\n", V2_MOUNTINFO, -ENOENT);
        expect_dir_err("0::relative\n", V2_MOUNTINFO, -ENOENT);
        expect_dir_err(V2_CGROUP, "26 24 0:24 / /sys/fs/cgroup rw - cgroup2\n", -ENOENT);
        expect_dir_err(V2_CGROUP, "26 24 0:24 / /sys/fs/cgroup cgroup2 cgroup2 rw\n", -ENOENT);
        expect_dir_err(V2_CGROUP, "26 24 0:24 / /sys/fs/cgroup\\09 rw - cgroup2 x rw\n", -ENOENT);
        /* Does not fit OUT (64 bytes here). */
        expect_dir_err("0::/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
                       V2_MOUNTINFO, -ENAMETOOLONG);
        expect_dir_err(NULL, V2_MOUNTINFO, -ENOENT);
        expect_dir_err(V2_CGROUP, NULL, -ENOENT);
}

/* --- the live process ---------------------------------------------------------------------- */

static char *slurp(const char *path) {
        FILE *f = fopen(path, "re");
        char *buf;
        size_t n;

        if (!f)
                return NULL;
        buf = calloc(1, 1 << 20);
        if (buf) {
                n = fread(buf, 1, (1 << 20) - 1, f);
                buf[n] = '\0';
        }
        fclose(f);
        return buf;
}

static void test_self(void **state) {
        struct cgroup_memory m;
        char *cg, *mi, dir[4096], path[4200];
        enum cgroup_version v;
        int r;
        (void)state;

        cg = slurp("/proc/self/cgroup");
        mi = slurp("/proc/self/mountinfo");
        assert_non_null(cg);
        assert_non_null(mi);
        r = memstat_cgroup_dir(cg, mi, dir, sizeof(dir), &v);
        free(cg);
        free(mi);
        if (r == -ENOENT)
                skip(); /* no cgroup filesystem visible (a bare chroot) */
        assert_int_equal(r, 0);
        snprintf(path, sizeof(path), "%s/%s", dir,
                 v == CGROUP_V1 ? "memory.usage_in_bytes" : "memory.current");
        if (access(path, R_OK) != 0)
                skip(); /* e.g. the root cgroup of v2 has no memory.current */

        /* This build machine is hybrid with memory on v1; anywhere a v1 memory hierarchy is
         * mounted, it is the one that must be chosen. */
        if (access("/sys/fs/cgroup/memory/memory.usage_in_bytes", R_OK) == 0)
                assert_int_equal(v, CGROUP_V1);

        memset(&m, 0, sizeof(m));
        assert_int_equal(memstat_self(&m), 0);
        assert_int_equal(m.version, v);
        assert_true(m.usage_bytes > 0);
        assert_true(m.usage_bytes < (UINT64_C(1) << 50));
        assert_true(m.working_set_bytes <= m.usage_bytes);
        if (m.inactive_file_bytes < m.usage_bytes)
                assert_true(m.working_set_bytes == m.usage_bytes - m.inactive_file_bytes);
        else
                assert_true(m.working_set_bytes == 0);
}

static void test_rss(void **state) {
        uint64_t before = 0, after = 0;
        size_t len = 64u << 20;
        volatile char *p;
        (void)state;

        assert_int_equal(memstat_rss(&before), 0);
        assert_true(before >= 1u << 20); /* any process maps more than 1 MiB */
        assert_true(before < (UINT64_C(1) << 40));
        assert_true(before % 1024 == 0); /* the kernel reports kB */

        /* Touch 64 MiB: RSS must grow by most of it. */
        p = malloc(len);
        assert_non_null((void *)p);
        for (size_t i = 0; i < len; i += 4096)
                p[i] = 1;
        assert_int_equal(memstat_rss(&after), 0);
        free((void *)p);
        assert_true(after >= before + (48u << 20));
}

/* Writes LEN bytes of a pattern (and a NUL at NUL_AT, if below LEN) to a fresh temp file. */
static void make_file(char *path, size_t path_len, size_t len, size_t nul_at) {
        char block[4096];
        int fd;

        snprintf(path, path_len, "%s/p2pblobs-memstat-XXXXXX",
                 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        fd = mkstemp(path);
        assert_true(fd >= 0);
        for (size_t off = 0; off < len;) {
                size_t n = len - off < sizeof(block) ? len - off : sizeof(block);
                for (size_t i = 0; i < n; i++)
                        block[i] = off + i == nul_at ? '\0' : (char)('a' + (off + i) % 26);
                assert_int_equal(write(fd, block, n), (ssize_t)n);
                off += n;
        }
        assert_int_equal(close(fd), 0);
}

static void test_read_text_file(void **state) {
        static const size_t sizes[] = {0, 1, 4094, 4095, 4096, 100000, MEMSTAT_FILE_MAX - 1};
        char path[4096], *buf;
        (void)state;

        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
                make_file(path, sizeof(path), sizes[k], SIZE_MAX);
                buf = NULL;
                assert_int_equal(read_text_file(path, &buf), 0);
                assert_non_null(buf);
                assert_int_equal(strlen(buf), sizes[k]);
                for (size_t i = 0; i < sizes[k]; i += 997)
                        assert_int_equal(buf[i], 'a' + i % 26);
                free(buf);
                unlink(path);
        }

        /* One byte over the bound: refused, not truncated. */
        buf = NULL;
        make_file(path, sizeof(path), MEMSTAT_FILE_MAX, SIZE_MAX);
        assert_int_equal(read_text_file(path, &buf), -EFBIG);
        assert_null(buf);
        unlink(path);

        /* An embedded NUL would cut the text short: refused. */
        make_file(path, sizeof(path), 10000, 5000);
        assert_int_equal(read_text_file(path, &buf), -EINVAL);
        assert_null(buf);
        unlink(path);

        assert_int_equal(read_text_file("/nonexistent/p2pblobs", &buf), -ENOENT);
        assert_null(buf);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_stat_value),
                cmocka_unit_test(test_stat_value_exact_key),
                cmocka_unit_test(test_stat_value_malformed),
                cmocka_unit_test(test_compute_v2_mostly_inactive),
                cmocka_unit_test(test_compute_v1_uses_total),
                cmocka_unit_test(test_compute_clamps),
                cmocka_unit_test(test_compute_errors),
                cmocka_unit_test(test_dir_hybrid_v1_wins),
                cmocka_unit_test(test_dir_this_machine_layout),
                cmocka_unit_test(test_dir_pure_v2),
                cmocka_unit_test(test_dir_container_root),
                cmocka_unit_test(test_dir_parsing_details),
                cmocka_unit_test(test_dir_errors),
                cmocka_unit_test(test_self),
                cmocka_unit_test(test_rss),
                cmocka_unit_test(test_read_text_file),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
