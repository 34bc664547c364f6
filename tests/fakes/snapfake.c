/* snapfake: the p2pblobs snapshotter with layer trees that are plain directories, for
 * tests/integration/test_snapshotter_lazy.py.
 *
 *   snapfake STATE_DIR SOCKET LAYERS_ROOT [WAIT_MS]
 *
 * It runs the daemon's own snapshotter (snapshot/snapshotter.c, the metadata in
 * STATE_DIR/index.db) with a layer server that says a layer is ready when the test has laid its
 * tree out as overlayfs wants a lower dir at LAYERS_ROOT/sha256/<hex>/ (what the daemon's FUSE
 * view gives), and that refuses one when LAYERS_ROOT/sha256/<hex>.fail exists. So the lazy
 * protocol with a real containerd (ALREADY_EXISTS, containerd's Walk, overlays over layer trees,
 * hundreds of lower dirs, the fallback, a restart) is tested on its own, apart from how trees are
 * made (layertree/). Logs to stderr; stops on SIGTERM or SIGINT. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "index/index.h"
#include "snapshot/lazy.h"
#include "snapshot/snapshotter.h"
#include "util/log.h"

static const char *layers_root;

static int layer_path(const char *layer, const char *suffix, char *out, size_t cap) {
        if (strncmp(layer, "sha256:", 7) != 0)
                return -EINVAL;
        if ((size_t)snprintf(out, cap, "%s/sha256/%s%s", layers_root, layer + 7, suffix) >= cap)
                return -ENAMETOOLONG;
        return 0;
}

static int serve(void *ud, const struct lazy_layer *l, uint64_t wait_ms, char *reason,
                 size_t reason_len) {
        (void)ud;
        (void)wait_ms;
        char p[PATH_MAX];
        struct stat st;
        int r = layer_path(l->layer, ".fail", p, sizeof(p));
        if (r == 0 && stat(p, &st) == 0) {
                snprintf(reason, reason_len, "the test marked it unservable");
                return -EIO;
        }
        if (r == 0)
                r = layer_path(l->layer, "", p, sizeof(p));
        if (r == 0 && (stat(p, &st) < 0 || !S_ISDIR(st.st_mode)))
                r = -ENOENT;
        if (r < 0)
                snprintf(reason, reason_len, "no tree at %s", p);
        else
                fprintf(stderr, "snapfake serve ref=%s\n", l->ref);
        return r;
}

static int restore(void *ud, const char *ref, const char *layer) {
        (void)ud;
        fprintf(stderr, "snapfake restore ref=%s layer=%s\n", ref, layer);
        return 0;
}

int main(int argc, char **argv) {
        if (argc < 4) {
                fprintf(stderr, "usage: snapfake STATE_DIR SOCKET LAYERS_ROOT [WAIT_MS]\n");
                return 2;
        }
        layers_root = argv[3];
        uint64_t wait_ms = argc > 4 ? strtoull(argv[4], NULL, 10) : 1000;
        log_max_level = LOG_LVL_DEBUG;
        char ipath[PATH_MAX];
        snprintf(ipath, sizeof(ipath), "%s/index.db", argv[1]);
        struct index *ix;
        int r = idx_open(ipath, &ix); /* migrates */
        if (r < 0) {
                fprintf(stderr, "snapfake: index %s: %s\n", ipath, strerror(-r));
                return 1;
        }
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        pthread_sigmask(SIG_BLOCK, &set, NULL); /* before any thread: they inherit it */
        struct snapshotter *sn;
        r = snapshotter_start(argv[1], ipath, argv[2], &sn);
        if (r < 0) {
                fprintf(stderr, "snapfake: snapshotter: %s\n", strerror(-r));
                idx_close(ix);
                return 1;
        }
        struct snapshotter_lazy ops = {.serve = serve, .restore = restore, .layers_root = argv[3]};
        snapshotter_set_lazy(sn, &ops, wait_ms);
        fprintf(stderr, "snapfake ready socket=%s\n", argv[2]);
        int sig;
        sigwait(&set, &sig);
        snapshotter_stop(sn);
        idx_close(ix);
        return 0;
}
