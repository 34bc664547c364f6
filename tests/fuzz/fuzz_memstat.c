/* libFuzzer target for util/memstat.c's parsers. The input is split at NUL bytes into up to
 * three texts (A, B, C): A and B serve as /proc/self/cgroup and mountinfo, as memory.current
 * and memory.stat, and C as a memory.stat key. The oracle: outputs fit their buffers, paths
 * are absolute, the working set never exceeds usage and is usage - inactive when it can be. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/memstat.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *s, out[256], tiny[8];
        const char *a, *b, *c;
        enum cgroup_version v;
        struct cgroup_memory m;
        uint64_t val;
        int r;

        /* Two extra NULs so B and C always point at a string, if an empty one. */
        s = malloc(size + 3);
        if (!s)
                return 0;
        memcpy(s, data, size);
        s[size] = s[size + 1] = s[size + 2] = '\0';
        a = s;
        b = a + strlen(a) + 1;
        c = b + strlen(b) + 1;
        if (b > s + size + 1)
                b = s + size + 1;
        if (c > s + size + 2)
                c = s + size + 2;

        r = memstat_stat_value(a, "inactive_file", &val);
        CHECK(r == 0 || r == -ENOENT || r == -EINVAL);
        r = memstat_stat_value(a, c, &val);
        CHECK(r == 0 || r == -ENOENT || r == -EINVAL);

        for (int ver = CGROUP_V1; ver <= CGROUP_V2; ver++) {
                if (memstat_compute((enum cgroup_version)ver, a, b, &m) == 0) {
                        CHECK(m.version == (enum cgroup_version)ver);
                        CHECK(m.working_set_bytes <= m.usage_bytes);
                        if (m.inactive_file_bytes <= m.usage_bytes)
                                CHECK(m.working_set_bytes == m.usage_bytes - m.inactive_file_bytes);
                        else
                                CHECK(m.working_set_bytes == 0);
                }
        }

        r = memstat_cgroup_dir(a, b, out, sizeof(out), &v);
        CHECK(r == 0 || r == -ENOENT || r == -ENAMETOOLONG);
        if (r == 0) {
                CHECK(strlen(out) < sizeof(out));
                CHECK(out[0] == '/');
                CHECK(v == CGROUP_V1 || v == CGROUP_V2);
        }
        memset(tiny, 'x', sizeof(tiny));
        r = memstat_cgroup_dir(a, b, tiny, sizeof(tiny), &v);
        CHECK(r == 0 || r == -ENOENT || r == -ENAMETOOLONG);
        if (r == 0)
                CHECK(strlen(tiny) < sizeof(tiny));
        free(s);
        return 0;
}
