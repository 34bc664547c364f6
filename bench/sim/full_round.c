/* full_round: the CPU one full announce round costs a node holding B blobs in a cluster of N
 * members (peer/announce.c's real round through its manual seam, peer/members.c's real
 * membership and homes; the send hook drops the announces). The second of two rounds is
 * timed: the first fills the homes cache, as the daemon's first round does.
 *     full_round N BLOBS   ->   "n N blobs B full_round_ms X" */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "peer/announce.h"
#include "peer/members.h"
#include "util/log.h"

static unsigned nblobs;

static uint32_t op_count(void *ud) {
        (void)ud;
        return nblobs;
}

static int op_snapshot(void *ud, uint32_t id, uint32_t from, uint32_t to, struct wire_blob *r) {
        (void)ud;
        (void)from;
        (void)to;
        memset(r, 0, sizeof(*r));
        memcpy(r->digest.bytes, &id, sizeof(id));
        r->digest.bytes[9] = (uint8_t)(id * 31);
        r->size = 1u << 20;
        r->nchunks = 1;
        r->present = calloc(2, 1);
        r->sha_idx = calloc(1, sizeof(*r->sha_idx));
        r->sha = calloc(1, sizeof(*r->sha));
        if (!r->present || !r->sha_idx || !r->sha)
                return -1;
        r->present[0] = 1;
        return 0;
}

static int op_find(void *ud, const struct digest *d, uint32_t *ret_id) {
        (void)ud;
        (void)d;
        (void)ret_id;
        return -1;
}

static int drop(void *ud, const char *home, const struct wire_announce *w,
                struct wire_reply *reply) {
        (void)ud;
        (void)home;
        (void)w;
        (void)reply;
        return 0;
}

static double cpu_ms(void) {
        struct timespec t;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
        return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
        if (argc != 3) {
                fprintf(stderr, "usage: full_round N BLOBS\n");
                return 2;
        }
        unsigned n = (unsigned)strtoul(argv[1], NULL, 10);
        nblobs = (unsigned)strtoul(argv[2], NULL, 10);
        if (n < 2 || n > 65000 || nblobs < 1)
                return 2;
        log_max_level = LOG_LVL_WARNING;
        struct members_config mc = {.listen_port = 5001,
                                    .refresh_ms = 30000,
                                    .probe_timeout_ms = 1000,
                                    .max_peers = n + 1,
                                    .manual = true};
        struct members *m;
        if (members_new(&mc, &m) < 0)
                return 1;
        char(*store)[PEER_ID_MAX] = calloc(n, PEER_ID_MAX);
        const char **ids = calloc(n, sizeof(*ids));
        if (!store || !ids)
                return 1;
        for (unsigned i = 0; i < n; i++) {
                unsigned v = i + 1;
                snprintf(store[i], PEER_ID_MAX, "10.%u.%u.%u:5001", (v >> 16) & 255, (v >> 8) & 255,
                         v & 255);
                ids[i] = store[i];
        }
        if (members_update(m, ids, n, true) < 0)
                return 1;
        struct announce_config ac = {
                .ops = {.count = op_count, .snapshot = op_snapshot, .find = op_find},
                .members = m,
                .chunk_size = 1u << 20,
                .homes = 3,
                .manual = true,
                .send = drop,
                .self = "10.255.255.254:5001",
        };
        struct announcer *a;
        if (announce_new(&ac, &a) < 0)
                return 1;
        announce_round(a, 1000000);
        double t0 = cpu_ms();
        announce_round(a, 1030000); /* a refresh later: full again */
        double t1 = cpu_ms();
        printf("n %u blobs %u full_round_ms %.2f\n", n, nblobs, t1 - t0);
        announce_free(a);
        members_free(m);
        free(ids);
        free(store);
        return 0;
}
