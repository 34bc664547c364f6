/* The announcer (issue 18 and 16): a blob registered is announced at once, not at the next interval
 * (homes grant no claims on a blob they have not heard of, so until then every node that
 * starts reading it goes to the origin); the manual seam bench/sim uses runs the same rounds.
 * Layer index records (issue 16) go to the layer's homes when published and with every full
 * refresh while the index blob is held whole, and are withdrawn when it is not.
 * Uses the announcer's send hook instead of HTTP, and a manual membership. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "peer/announce.h"
#include "peer/announce_hush.h"
#include "peer/members.h"

#define SELF "10.0.0.1:5001"
#define OTHER "10.0.0.2:5001"
#define THIRD "10.0.0.3:5001"

static struct digest blob_digest;
static bool registered;
static bool whole;           /* the blob's 4 chunks are present */
static uint8_t present_bits; /* else these of them */

static pthread_mutex_t sent_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned sent_blobs;
static unsigned sent_third;   /* of them, to THIRD */
static unsigned sent_indexes; /* index records sent to OTHER */

static uint32_t op_count(void *ud) {
        (void)ud;
        return registered ? 1 : 0;
}

static int op_snapshot(void *ud, uint32_t id, uint32_t from, uint32_t to, struct wire_blob *ret) {
        (void)ud;
        (void)from;
        (void)to;
        if (id != 0)
                return -1;
        memset(ret, 0, sizeof(*ret));
        ret->digest = blob_digest;
        ret->size = 4u << 20;
        ret->nchunks = 4;
        snprintf(ret->source, sizeof(ret->source), "registry.example.com/app");
        ret->present = calloc(2, 1);
        if (ret->present)
                ret->present[0] = whole ? 0x0f : present_bits;
        ret->sha_idx = calloc(1, sizeof(*ret->sha_idx));
        ret->sha = calloc(1, sizeof(*ret->sha));
        return ret->present && ret->sha_idx && ret->sha ? 0 : -1;
}

static int op_find(void *ud, const struct digest *d, uint32_t *ret_id) {
        (void)ud;
        if (!registered || !digest_equal(d, &blob_digest))
                return -1;
        *ret_id = 0;
        return 0;
}

/* When not 0, OTHER answers "full" for blob_digest with this retry time; "covered", with
 * these chunks of the 4, when covered_bits is not 0. */
static uint64_t full_retry_ms;
static uint8_t covered_bits;
static const char *full_home; /* when not NULL, only this home answers so */

static int send_hook(void *ud, const char *home, const struct wire_announce *w,
                     struct wire_reply *reply) {
        (void)ud;
        if (full_home && strcmp(home, full_home) != 0)
                ; /* records us */
        else if (full_retry_ms && covered_bits)
                assert_int_equal(wire_reply_add_covered(reply, &blob_digest, full_retry_ms,
                                                        &covered_bits, 4),
                                 0);
        else if (full_retry_ms)
                assert_int_equal(wire_reply_add(reply, &blob_digest, full_retry_ms), 0);
        pthread_mutex_lock(&sent_lock);
        for (uint32_t i = 0; i < w->nblobs; i++)
                if (digest_equal(&w->blobs[i].digest, &blob_digest)) {
                        sent_blobs++;
                        sent_third += strcmp(home, THIRD) == 0;
                }
        sent_indexes += w->nindexes;
        for (uint32_t i = 0; i < w->nindexes; i++)
                assert_true(w->indexes[i].size > 0);
        pthread_mutex_unlock(&sent_lock);
        return 0;
}

static unsigned sent(void) {
        pthread_mutex_lock(&sent_lock);
        unsigned n = sent_blobs;
        pthread_mutex_unlock(&sent_lock);
        return n;
}

/* A manual membership of the first N of SELF, OTHER, THIRD. */
static struct members *members_of(size_t n) {
        struct members_config mc = {.listen_port = 5001,
                                    .refresh_ms = 1000,
                                    .probe_timeout_ms = 100,
                                    .max_peers = 8,
                                    .manual = true};
        struct members *m = NULL;
        assert_int_equal(members_new(&mc, &m), 0);
        const char *ids[] = {SELF, OTHER, THIRD};
        assert_true(n <= sizeof(ids) / sizeof(ids[0]));
        assert_int_equal(members_update(m, ids, n, true), 0);
        return m;
}

static struct members *two_members(void) {
        return members_of(2);
}

static struct directory *own_dir;

static struct announce_config config(struct members *m, bool manual) {
        if (!own_dir) { /* announces to ourselves (we are one of the two homes) go here */
                struct dir_config dc = {.chunk_size = 1u << 20,
                                        .max_blobs = 16,
                                        .max_holders = 8,
                                        .ttl_ms = 60000,
                                        .claim_ttl_ms = 10000};
                assert_int_equal(dir_new(&dc, &own_dir), 0);
        }
        return (struct announce_config){
                .dir = own_dir,
                .ops = {.count = op_count, .snapshot = op_snapshot, .find = op_find},
                .members = m,
                .chunk_size = 1u << 20,
                .homes = 2, /* both members: the other one is always a home */
                .interval_ms = 60000,
                .refresh_ms = 600000,
                .manual = manual,
                .send = send_hook,
                .self = SELF,
        };
}

/* With a 60 s interval, a registered blob reaches its homes within seconds. */
static void test_registered_blob_is_announced_at_once(void **state) {
        (void)state;
        memset(&blob_digest, 0x17, sizeof(blob_digest));
        registered = false;
        sent_blobs = 0;
        struct members *m = two_members();
        struct announce_config ac = config(m, false);
        struct announcer *a = NULL;
        assert_int_equal(announce_new(&ac, &a), 0);
        registered = true;
        announce_changed(a, &blob_digest, UINT32_MAX);
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        do {
                struct timespec step = {0, 10 * 1000 * 1000};
                nanosleep(&step, NULL);
                clock_gettime(CLOCK_MONOTONIC, &t);
        } while (sent() == 0 && t.tv_sec - t0.tv_sec < 10);
        assert_true(sent() > 0); /* without the wake-up: not before 60 s */
        announce_free(a);
        members_free(m);
}

static uint64_t early_rounds(struct announcer *a) {
        struct announce_stats st;
        announce_get_stats(a, &st);
        return st.early_rounds;
}

/* Until SENT() passes N or 10 s go by. */
static void await_sent_over(unsigned n) {
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        do {
                struct timespec step = {0, 5 * 1000 * 1000};
                nanosleep(&step, NULL);
                clock_gettime(CLOCK_MONOTONIC, &t);
        } while (sent() <= n && t.tv_sec - t0.tv_sec < 10);
}

/* Issue 18: a chunk this node claimed is announced as soon as it lands (readers wait for its
 * digest), not at the next interval (60 s here); a chunk not claimed waits for the interval;
 * a burst of landed claims makes one early round, not one per chunk. */
static void test_claimed_chunk_is_announced_at_once(void **state) {
        (void)state;
        memset(&blob_digest, 0x19, sizeof(blob_digest));
        registered = false;
        whole = true;
        sent_blobs = 0;
        struct members *m = two_members();
        struct announce_config ac = config(m, false);
        struct announcer *a = NULL;
        assert_int_equal(announce_new(&ac, &a), 0);
        registered = true;
        announce_changed(a, &blob_digest, UINT32_MAX);
        await_sent_over(0);
        assert_true(sent() > 0);
        unsigned n = sent();
        /* Not claimed: no round before the interval. */
        announce_changed(a, &blob_digest, 1);
        struct timespec pause = {0, 300 * 1000 * 1000};
        nanosleep(&pause, NULL);
        assert_int_equal(sent(), n);
        assert_int_equal(early_rounds(a), 0);
        /* Claimed, then landed: a round at once. */
        announce_claimed(a, &blob_digest, 2);
        announce_changed(a, &blob_digest, 2);
        await_sent_over(n);
        assert_true(sent() > n);
        assert_int_equal(early_rounds(a), 1);
        /* 40 claims landing back to back: coalesced (one round per ANNOUNCE_EARLY_GAP_MS). */
        n = sent();
        for (int i = 0; i < 40; i++) {
                announce_claimed(a, &blob_digest, (uint32_t)(i % 4));
                announce_changed(a, &blob_digest, (uint32_t)(i % 4));
        }
        await_sent_over(n);
        nanosleep(&pause, NULL);
        uint64_t e = early_rounds(a);
        assert_true(e >= 2);
        /* One round, another if some landed while it ran, a third on a stalled machine:
         * never one per chunk (40). */
        assert_true(e - 1 <= 3);
        assert_true(sent() <= n + 3); /* one send to OTHER a round */
        announce_free(a);
        members_free(m);
}

/* The manual seam: rounds run when the caller says, with the caller's clock; a chunk change
 * goes out in the next round, and nothing is sent by a round with nothing to say. */
static void test_manual_rounds(void **state) {
        (void)state;
        memset(&blob_digest, 0x29, sizeof(blob_digest));
        registered = true;
        sent_blobs = 0;
        struct members *m = two_members();
        struct announce_config ac = config(m, true);
        struct announcer *a = NULL;
        assert_int_equal(announce_new(&ac, &a), 0);
        announce_round(a, 1000000); /* the first round is a full one */
        assert_int_equal(sent(), 1);
        announce_round(a, 1000250);
        assert_int_equal(sent(), 1); /* nothing dirty, no refresh due */
        announce_changed(a, &blob_digest, 2);
        announce_round(a, 1000500);
        assert_int_equal(sent(), 2);
        struct announce_stats st;
        announce_get_stats(a, &st);
        assert_int_equal(st.rounds, 3);
        assert_int_equal(st.full_rounds, 1);
        announce_free(a);
        members_free(m);
}

static unsigned indexes_sent(void) {
        pthread_mutex_lock(&sent_lock);
        unsigned n = sent_indexes;
        pthread_mutex_unlock(&sent_lock);
        return n;
}

static void index_at_home(const struct digest *layer, uint64_t now, bool want) {
        struct wire_index x;
        int r = dir_locate_index(own_dir, layer, now, &x);
        if (!want) {
                assert_int_equal(r, -ENOENT);
                return;
        }
        assert_int_equal(r, 0);
        assert_true(digest_equal(&x.index, &blob_digest));
        assert_true(x.size == 4u << 20);
}

static void test_index_records(void **state) {
        (void)state;
        memset(&blob_digest, 0x31, sizeof(blob_digest));
        registered = true;
        whole = true;
        sent_indexes = 0;
        struct members *m = two_members();
        struct announce_config ac = config(m, true);
        struct announcer *a = NULL;
        struct digest l1, l2;
        memset(&l1, 0x41, sizeof(l1));
        memset(&l2, 0x42, sizeof(l2));
        assert_int_equal(announce_new(&ac, &a), 0);
        assert_int_equal(announce_index(a, &l1, &blob_digest, 0), -EINVAL);
        assert_int_equal(announce_index(a, &l1, &blob_digest, 4u << 20), 0);
        announce_round(a, 1000000);          /* full */
        assert_int_equal(indexes_sent(), 1); /* to OTHER, and to ourselves directly: */
        index_at_home(&l1, 1000000, true);
        announce_round(a, 1000250);
        assert_int_equal(indexes_sent(), 1); /* nothing new, no refresh due */
        assert_int_equal(announce_index(a, &l2, &blob_digest, 4u << 20), 0);
        announce_round(a, 1000500);
        assert_int_equal(indexes_sent(), 2); /* only the new one */
        index_at_home(&l2, 1000500, true);
        /* A full refresh re-sends both while the index blob is held whole... */
        announce_round(a, 1000500 + 600000);
        assert_int_equal(indexes_sent(), 4);
        /* ...and withdraws them once it is not (a chunk evicted). */
        whole = false;
        announce_round(a, 1000500 + 1200000);
        assert_int_equal(indexes_sent(), 4);
        struct announce_stats st;
        announce_get_stats(a, &st);
        assert_int_equal(st.indexes, 0);
        assert_int_equal(st.indexes_withdrawn, 2);
        index_at_home(&l1, 1000500 + 1200000, false); /* not refreshed: aged out at the home */
        /* Forgotten (find fails) is withdrawn too; published again, it is back. */
        whole = true;
        assert_int_equal(announce_index(a, &l1, &blob_digest, 4u << 20), 0);
        registered = false;
        announce_round(a, 1000500 + 1800000);
        announce_get_stats(a, &st);
        assert_int_equal(st.indexes_withdrawn, 3);
        registered = true;
        /* The table is bounded. */
        struct digest l;
        memset(&l, 0, sizeof(l));
        for (unsigned i = 0; i < ANNOUNCE_INDEX_MAX; i++) {
                memcpy(l.bytes, &i, sizeof(i));
                assert_int_equal(announce_index(a, &l, &blob_digest, 1), 0);
        }
        memset(&l, 0x77, sizeof(l));
        assert_int_equal(announce_index(a, &l, &blob_digest, 1), -ENOSPC);
        memset(&l, 0, sizeof(l)); /* replacing one already there is fine */
        assert_int_equal(announce_index(a, &l, &blob_digest, 2), 0);
        announce_free(a);
        members_free(m);
}

/* Issue 18: a home that answers "full" for a blob hears of it no more — deltas and full
 * refreshes alike — until the retry time, and then once, from a round with nothing dirty;
 * a home that restarted is no longer hushed. */
static void test_full_home_is_hushed(void **state) {
        (void)state;
        memset(&blob_digest, 0x43, sizeof(blob_digest));
        registered = true;
        whole = true;
        sent_blobs = 0;
        struct members *m = two_members();
        struct announce_config ac = config(m, true);
        ac.refresh_ms = 3000; /* a full refresh falls inside the hush */
        struct announcer *a = NULL;
        assert_int_equal(announce_new(&ac, &a), 0);
        const uint64_t t0 = 1000000;
        struct announce_stats st;

        full_retry_ms = 5000;
        announce_round(a, t0); /* full: OTHER says "full" */
        assert_int_equal(sent(), 1);
        announce_get_stats(a, &st);
        assert_int_equal(st.told_full, 1);
        assert_int_equal(st.hushed, 1);
        assert_true(announce_next_retry(a) == t0 + 5000);
        full_retry_ms = 0; /* from now on OTHER would take it */

        announce_changed(a, &blob_digest, 2);
        announce_round(a, t0 + 250); /* a delta: not to OTHER */
        assert_int_equal(sent(), 1);
        announce_round(a, t0 + 3000); /* a full refresh: not to OTHER either */
        assert_int_equal(sent(), 1);
        announce_round(a, t0 + 4999);
        assert_int_equal(sent(), 1);
        announce_get_stats(a, &st);
        assert_int_equal(st.hushed_sends, 2);
        announce_round(a, t0 + 5000); /* the retry, with nothing dirty */
        assert_int_equal(sent(), 2);
        announce_get_stats(a, &st);
        assert_int_equal(st.hush_retries, 1);
        assert_int_equal(st.hushed, 0);
        assert_true(announce_next_retry(a) == UINT64_MAX);
        announce_round(a, t0 + 5250); /* once */
        assert_int_equal(sent(), 2);

        full_retry_ms = 60000;
        announce_changed(a, &blob_digest, 3);
        announce_round(a, t0 + 5500);
        assert_int_equal(sent(), 3);
        full_retry_ms = 0;
        announce_get_stats(a, &st);
        assert_int_equal(st.hushed, 1);
        announce_home_restarted(a, OTHER); /* it forgot what it said */
        announce_get_stats(a, &st);
        assert_int_equal(st.hushed, 0);
        announce_changed(a, &blob_digest, 1);
        announce_round(a, t0 + 6750);
        assert_int_equal(sent(), 4);
        announce_free(a);
        members_free(m);
}

/* Issue 18, the deltas of a wave's front: a home that answers "covered" hears of the blob no
 * more while this node holds nothing outside the chunks it named, and at once when it does;
 * one told "full" while this node was still reading hears of it again once it is whole; and
 * a chunk this node was granted a claim on un-hushes the blob when it lands, whatever the
 * home said. */
static void test_covered_home_is_hushed_while_within(void **state) {
        (void)state;
        memset(&blob_digest, 0x47, sizeof(blob_digest));
        registered = true;
        whole = false;
        present_bits = 0x01;
        sent_blobs = 0;
        struct members *m = two_members();
        struct announce_config ac = config(m, true);
        struct announcer *a = NULL;
        assert_int_equal(announce_new(&ac, &a), 0);
        const uint64_t t0 = 2000000;
        struct announce_stats st;

        full_retry_ms = 60000;
        covered_bits = 0x03;
        announce_round(a, t0); /* full: OTHER says "covered" {0, 1} */
        assert_int_equal(sent(), 1);
        full_retry_ms = 0; /* from now on OTHER records us */
        covered_bits = 0;
        present_bits = 0x03;
        announce_changed(a, &blob_digest, 1);
        announce_round(a, t0 + 250); /* within: not to OTHER */
        assert_int_equal(sent(), 1);
        present_bits = 0x07;
        announce_changed(a, &blob_digest, 2);
        announce_round(a, t0 + 500); /* chunk 2 is outside: to OTHER, which records us */
        assert_int_equal(sent(), 2);
        announce_get_stats(a, &st);
        assert_int_equal(st.hushed, 0); /* recorded: no longer hushed there */
        assert_int_equal(st.hushed_sends, 1);

        /* "full" while we read: hushed until we hold it whole, then once */
        full_retry_ms = 60000;
        announce_changed(a, &blob_digest, 2);
        announce_round(a, t0 + 750);
        assert_int_equal(sent(), 3);
        announce_changed(a, &blob_digest, 2);
        announce_round(a, t0 + 1000);
        assert_int_equal(sent(), 3);
        whole = true;
        announce_changed(a, &blob_digest, 3);
        announce_round(a, t0 + 1250); /* whole now: heard, and told "full" again */
        assert_int_equal(sent(), 4);
        announce_changed(a, &blob_digest, 3);
        announce_round(a, t0 + 1500);
        assert_int_equal(sent(), 4);

        /* a landed claim un-hushes the blob at every home (it evicted chunk 3, then was
         * granted the claim on it: told "full" when whole, it would be hushed still) */
        whole = false;
        present_bits = 0x07;
        announce_changed(a, &blob_digest, 3);
        announce_round(a, t0 + 1750);
        assert_int_equal(sent(), 4);
        full_retry_ms = 0;
        whole = true;
        announce_claimed(a, &blob_digest, 3);
        announce_changed(a, &blob_digest, 3);
        announce_round(a, t0 + 2000);
        assert_int_equal(sent(), 5);
        announce_get_stats(a, &st);
        assert_int_equal(st.unhushed, 1);
        assert_int_equal(st.hushed, 0);
        announce_free(a);
        members_free(m);
        whole = false;
        present_bits = 0;
}

/* The hush table's sets: a covered pair is hushed only while PRESENT is within its set (and
 * the sizes agree), an until-whole pair only while PRESENT is not whole; the sets' bytes are
 * bounded (HUSH_MAX_MAP_BYTES: past it a pair is refused, not hushed) and given back when a
 * pair is done. */
static void test_hush_sets(void **state) {
        (void)state;
        struct announce_hush *h = NULL;
        struct digest d;
        uint8_t set = 0x0b, in = 0x03, out = 0x07, all = 0x0f; /* 4 chunks */
        assert_int_equal(hush_new(64, &h), 0);
        memset(&d, 0x51, sizeof(d));
        assert_int_equal(hush_add(h, &d, OTHER, 100, &set, 4, false), 0);
        assert_true(hush_is(h, &d, OTHER, 50, &in, 4));
        assert_false(hush_is(h, &d, OTHER, 50, &out, 4)); /* chunk 2 is outside */
        assert_false(hush_is(h, &d, OTHER, 50, &in, 5));  /* another size */
        assert_false(hush_is(h, &d, OTHER, 100, &in, 4)); /* its time is up */
        assert_true(hush_forget(h, &d, OTHER));
        assert_false(hush_forget(h, &d, OTHER));
        assert_false(hush_is(h, &d, OTHER, 50, &in, 4));
        assert_int_equal(hush_add(h, &d, OTHER, 100, NULL, 4, true), 0);
        assert_true(hush_is(h, &d, OTHER, 50, &out, 4));
        assert_false(hush_is(h, &d, OTHER, 50, &all, 4)); /* whole: heard */
        assert_int_equal(hush_add(h, &d, OTHER, 100, &set, 0, false), -EINVAL);
        /* sets of a 4 Mi-chunk blob (512 KiB each): the ninth does not fit in 4 MiB */
        uint32_t big = 1u << 22;
        uint8_t *map = calloc(big / 8, 1);
        assert_non_null(map);
        for (int i = 0; i < 8; i++) {
                d.bytes[0] = (uint8_t)i;
                assert_int_equal(hush_add(h, &d, OTHER, 100, map, big, false), 0);
        }
        d.bytes[0] = 8;
        assert_int_equal(hush_add(h, &d, OTHER, 100, map, big, false), -ENOSPC);
        assert_false(hush_is(h, &d, OTHER, 50, map, big));
        struct hush_due *due = NULL;
        size_t n = 0;
        assert_int_equal(hush_take_due(h, 100, &due, &n), 0); /* all done: bytes given back */
        free(due);
        assert_int_equal(hush_add(h, &d, OTHER, 200, map, big, false), 0);
        free(map);
        hush_free(h);
}

/* Issue 18: a blob just registered (we hold none of it) goes to its first usable home only,
 * the one readers ask for claims (and to ourselves, a home here, without a send); its first
 * chunk goes to every home, and so does an eviction, which reports chunks. */
static void test_registration_to_first_home(void **state) {
        (void)state;
        memset(&blob_digest, 0x53, sizeof(blob_digest));
        registered = true;
        whole = false;
        present_bits = 0;
        sent_blobs = sent_third = 0;
        struct members *m = members_of(3);
        struct announce_config ac = config(m, true);
        ac.homes = 3;
        struct announcer *a = NULL;
        assert_int_equal(announce_new(&ac, &a), 0);
        const uint64_t t0 = 3000000;
        announce_round(a, t0); /* the first round is a full one: everyone */
        unsigned n = sent();
        assert_int_equal(n, 2);
        announce_changed(a, &blob_digest, UINT32_MAX); /* registered again, nothing held */
        announce_round(a, t0 + 250);
        assert_int_equal(sent(), n + 1);
        present_bits = 0x01;
        announce_changed(a, &blob_digest, 0);
        announce_round(a, t0 + 500);
        assert_int_equal(sent(), n + 3);
        present_bits = 0;
        announce_changed(a, &blob_digest, 0); /* evicted */
        announce_round(a, t0 + 750);
        assert_int_equal(sent(), n + 5);
        unsigned third = sent_third;
        assert_true(third >= 3 && third <= 4); /* the full round, both chunk rounds, maybe */
        announce_free(a);
        members_free(m);
}

/* Issue 18: the verdict of a blob's first home (the one readers ask for claims) holds at its
 * other homes: a reader it told "full" sends its next chunks to none of them, but an eviction,
 * even of some chunks, to those that may have recorded it. Once whole it tells every home
 * once (the first home may have lost the holders that covered it). */
static void test_first_home_verdict_holds_everywhere(void **state) {
        (void)state;
        struct members *m = members_of(3);
        char homes[MEMBERS_MAX_HOMES][PEER_ID_MAX];
        /* a blob whose first home is not this node, so the send hook gives the verdict */
        for (int v = 0x60;; v++) {
                memset(&blob_digest, v, sizeof(blob_digest));
                assert_int_equal(members_homes(m, &blob_digest, 3, homes, NULL), 3);
                if (strcmp(homes[0], SELF) != 0)
                        break;
        }
        registered = true;
        whole = false;
        present_bits = 0x01;
        sent_blobs = sent_third = 0;
        struct announce_config ac = config(m, true);
        ac.homes = 3;
        struct announcer *a = NULL;
        assert_int_equal(announce_new(&ac, &a), 0);
        const uint64_t t0 = 4000000;
        struct announce_stats st;

        full_home = homes[0];
        full_retry_ms = 60000;
        announce_round(a, t0);       /* full: both other homes hear; the first says "full" */
        assert_int_equal(sent(), 2); /* the other one recorded us */
        present_bits = 0x03;
        announce_changed(a, &blob_digest, 1);
        announce_round(a, t0 + 250); /* hushed at the first home, so at the other one too */
        assert_int_equal(sent(), 2);
        announce_get_stats(a, &st);
        assert_int_equal(st.hushed_sends, 3); /* all three: ourselves (a home) as well */
        present_bits = 0x01;
        announce_changed(a, &blob_digest, 1);
        announce_round(a, t0 + 375); /* chunk 1 evicted: the home that recorded us hears */
        assert_int_equal(sent(), 3); /* the first home, hushed by its own verdict, does not */
        whole = true;
        announce_changed(a, &blob_digest, 3);
        announce_round(a, t0 + 500); /* whole: both other homes hear, once */
        assert_int_equal(sent(), 5);
        whole = false;
        present_bits = 0;
        announce_changed(a, &blob_digest, 0);
        announce_round(a, t0 + 750); /* evicted: the other home hears (it recorded us at t0) */
        assert_int_equal(sent(), 6); /* the first home, which did not, does not */
        assert_int_equal(sent_third, strcmp(homes[0], THIRD) != 0 ? 4 : 2);
        announce_free(a);
        members_free(m);
        full_home = NULL;
        full_retry_ms = 0;
}

/* Issue 18: loans (hush_lend, the first home's verdict copied to the others) never hush an
 * announce of nothing held nor one hush_is_own() asks about (an eviction), are forgotten
 * alone by hush_forget_lent(), and take at most half the table. */
static void test_hush_loans(void **state) {
        (void)state;
        struct announce_hush *h = NULL;
        struct digest d;
        uint8_t none = 0, some = 0x01;
        assert_int_equal(hush_new(4, &h), 0);
        memset(&d, 0x71, sizeof(d));
        assert_int_equal(hush_lend(h, &d, OTHER, 100, NULL, 4, false), 0);
        assert_true(hush_is(h, &d, OTHER, 50, &some, 4));
        assert_false(hush_is(h, &d, OTHER, 50, &none, 4));     /* evicted all: heard */
        assert_false(hush_is_own(h, &d, OTHER, 50, &some, 4)); /* evicted some: heard */
        assert_int_equal(hush_add(h, &d, THIRD, 100, NULL, 4, false), 0);
        assert_true(hush_is_own(h, &d, THIRD, 50, &some, 4));
        assert_false(hush_forget_lent(h, &d, THIRD)); /* its own verdict stays */
        assert_true(hush_is(h, &d, THIRD, 50, &some, 4));
        /* two live pairs of four: no new loan, but a home's own verdict still fits */
        d.bytes[0] = 0x72;
        assert_int_equal(hush_lend(h, &d, OTHER, 100, NULL, 4, false), -ENOSPC);
        assert_int_equal(hush_add(h, &d, OTHER, 100, NULL, 4, false), 0);
        d.bytes[0] = 0x71;
        assert_int_equal(hush_lend(h, &d, OTHER, 200, NULL, 4, false), 0); /* a renewal fits */
        assert_true(hush_forget_lent(h, &d, OTHER));
        assert_false(hush_is(h, &d, OTHER, 50, &some, 4));
        hush_free(h);
}

/* Issue 18: a blob's first home that records us (it restarted, or lost holders) recalls the
 * verdict it lent the other homes: they hear our next change. */
static void test_first_home_record_recalls_loans(void **state) {
        (void)state;
        struct members *m = members_of(3);
        char homes[MEMBERS_MAX_HOMES][PEER_ID_MAX];
        for (int v = 0x90;; v++) { /* a blob whose homes are, in order, OTHER or THIRD, ... */
                memset(&blob_digest, v, sizeof(blob_digest));
                assert_int_equal(members_homes(m, &blob_digest, 3, homes, NULL), 3);
                if (strcmp(homes[0], SELF) != 0 && strcmp(homes[1], SELF) != 0)
                        break; /* ... then the other of them: SELF last */
        }
        registered = true;
        whole = false;
        present_bits = 0;
        sent_blobs = sent_third = 0;
        struct announce_config ac = config(m, true);
        ac.homes = 3;
        struct announcer *a = NULL;
        assert_int_equal(announce_new(&ac, &a), 0);
        const uint64_t t0 = 5000000;
        announce_round(a, t0); /* full, nothing held: everyone records us */
        assert_int_equal(sent(), 2);
        full_home = homes[0];
        full_retry_ms = 60000;
        announce_changed(a, &blob_digest, UINT32_MAX); /* registered again: the first home only */
        announce_round(a, t0 + 250);                   /* it says "full", lent to the second home */
        assert_int_equal(sent(), 3);
        present_bits = 0x01;
        announce_changed(a, &blob_digest, 0);
        announce_round(a, t0 + 500); /* a chunk landed: hushed at all three */
        assert_int_equal(sent(), 3);
        announce_home_restarted(a, homes[0]);
        full_home = NULL;
        full_retry_ms = 0;
        present_bits = 0x03;
        announce_changed(a, &blob_digest, 1);
        announce_round(a, t0 + 750); /* the restarted first home records us: loans recalled */
        assert_int_equal(sent(), 4);
        present_bits = 0x07;
        announce_changed(a, &blob_digest, 2);
        announce_round(a, t0 + 1000); /* both homes hear the next chunk */
        assert_int_equal(sent(), 6);
        announce_free(a);
        members_free(m);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_registered_blob_is_announced_at_once),
                cmocka_unit_test(test_claimed_chunk_is_announced_at_once),
                cmocka_unit_test(test_manual_rounds),
                cmocka_unit_test(test_index_records),
                cmocka_unit_test(test_full_home_is_hushed),
                cmocka_unit_test(test_covered_home_is_hushed_while_within),
                cmocka_unit_test(test_hush_sets),
                cmocka_unit_test(test_registration_to_first_home),
                cmocka_unit_test(test_first_home_verdict_holds_everywhere),
                cmocka_unit_test(test_hush_loans),
                cmocka_unit_test(test_first_home_record_recalls_loans),
        };
        int r = cmocka_run_group_tests(tests, NULL, NULL);
        dir_free(own_dir);
        return r;
}
