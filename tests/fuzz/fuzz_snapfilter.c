/* libFuzzer target for snapshot/filter.c: containerd's filter syntax as List receives it from
 * a client. The input is the filter text. The oracle: the parse returns 0 or -EINVAL (with a
 * description), and a parsed filter can be matched against snapshots of every kind, with and
 * without labels, without crashing. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "snapshot/filter.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *s = malloc(size + 1);
        if (!s)
                return 0;
        memcpy(s, data, size);
        s[size] = '\0';
        struct snap_filter *f = NULL;
        const char *err = NULL;
        int r = snapfilter_parse(s, &f, &err);
        CHECK(r == 0 || r == -EINVAL || r == -ENOMEM);
        if (r == -EINVAL)
                CHECK(err != NULL);
        if (r == 0) {
                struct snap_label l[] = {{"containerd.io/gc.root", "x"}, {"a.b", ""}, {"l", "2"}};
                struct snap_info infos[] = {
                        {.key = "k", .parent = "", .kind = SNAP_ACTIVE},
                        {.key = "", .parent = "p", .kind = SNAP_VIEW, .nlabels = 3, .labels = l},
                        {.key = "c",
                         .parent = "p",
                         .kind = SNAP_COMMITTED,
                         .nlabels = 1,
                         .labels = l},
                };
                for (size_t i = 0; i < sizeof(infos) / sizeof(infos[0]); i++)
                        (void)snapfilter_match(f, &infos[i]);
                snapfilter_free(f);
        }
        free(s);
        return 0;
}
