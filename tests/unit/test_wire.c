/* Unit tests for peer/wire*.c: node ids, the exact text the builders emit, round trips
 * (build, parse, compare) over awkward bitmaps, and every way an untrusted body is refused,
 * with the reason it gives and nothing left to free. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "peer/wire.h"
#include "peer/wire_reply.h"

#define HEX1 "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define HEX2 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define HEXU "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
#define SRC "registry.example.com/library/busybox"

/* A small announce body; FIELDS replaces the blob's fields after digest and size. */
#define ANN(node, cs, blobs) "{\"node\":\"" node "\",\"chunk_size\":" #cs ",\"blobs\":[" blobs "]}"
#define BLOB(size, rest)                                                                           \
        "{\"digest\":\"sha256:" HEX1 "\",\"size\":" #size ",\"source\":\"" SRC "\"" rest "}"

static void set_digest(struct digest *d, uint8_t seed) {
        for (int i = 0; i < DIGEST_LEN; i++)
                d->bytes[i] = (uint8_t)(seed * 31 + i);
}

static void check_reason(const char *reason) {
        assert_true(reason[0] != '\0');
        assert_true(reason[0] >= 'a' && reason[0] <= 'z'); /* lowercase, error first */
}

static void expect_announce_err(const char *body, const char *want_in_reason) {
        struct wire_announce a, orig;
        char reason[256] = "";
        int r;

        memset(&orig, 0x5a, sizeof(orig));
        a = orig;
        r = wire_announce_parse(body, strlen(body), &a, reason, sizeof(reason));
        if (r != -EINVAL)
                fail_msg("wire_announce_parse(%s) = %d; want -EINVAL", body, r);
        check_reason(reason);
        if (want_in_reason && !strstr(reason, want_in_reason))
                fail_msg("reason \"%s\" lacks \"%s\" for %s", reason, want_in_reason, body);
        assert_memory_equal(&a, &orig, sizeof(a)); /* nothing written, nothing to free */
}

static void expect_locate_err(const char *body, const char *want_in_reason) {
        struct wire_locate l, orig;
        char reason[256] = "";
        int r;

        memset(&orig, 0x5a, sizeof(orig));
        l = orig;
        r = wire_locate_parse(body, strlen(body), &l, reason, sizeof(reason));
        if (r != -EINVAL)
                fail_msg("wire_locate_parse(%s) = %d; want -EINVAL", body, r);
        check_reason(reason);
        if (want_in_reason && !strstr(reason, want_in_reason))
                fail_msg("reason \"%s\" lacks \"%s\" for %s", reason, want_in_reason, body);
        assert_memory_equal(&l, &orig, sizeof(l));
}

static void parse_announce_ok(const char *body, struct wire_announce *a) {
        char reason[256] = "";
        int r = wire_announce_parse(body, strlen(body), a, reason, sizeof(reason));

        if (r != 0)
                fail_msg("wire_announce_parse(%s) = %d (%s)", body, r, reason);
}

static void parse_locate_ok(const char *body, struct wire_locate *l) {
        char reason[256] = "";
        int r = wire_locate_parse(body, strlen(body), l, reason, sizeof(reason));

        if (r != 0)
                fail_msg("wire_locate_parse(%s) = %d (%s)", body, r, reason);
}

static void test_node_ids(void **state) {
        static const char *const good[] = {
                "10.0.0.2:5001",         "0.0.0.0:1",
                "255.255.255.255:65535", "[::1]:5001",
                "[fd00::1:2]:80",        "[2001:db8::ff00:42:8329]:443",
                "[fe80::1]:5001",        "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"};
        static const char *const bad[] = {
                "",
                ":5001",
                "10.0.0.2",
                "10.0.0.2:",
                "10.0.0.2:0",
                "10.0.0.2:65536",
                "10.0.0.2:05001",
                "10.0.0.2:+5001",
                "10.0.0.2:-1",
                "10.0.0.2:5001x",
                "10.0.0.2:99999999999",
                "10.0.0.2:5001:1",
                "010.0.0.2:5001",
                "10.0.0:5001",
                "10.0.0.256:5001",
                " 10.0.0.2:5001",
                "node-a:5001",
                "localhost:5001",
                "::1:5001",
                "[::1]",
                "[::1]5001",
                "[::1:5001",
                "[]:5001",
                "[::1]:0",
                "[0:0:0:0:0:0:0:1]:5001", /* not inet_ntop's spelling */
                "[FD00::1]:5001",         /* uppercase */
                "[::ffff:10.0.0.2]:5001", /* IPv4-mapped: the v4 id is the node's id */
                "[fe80::1%eth0]:5001",
                "[10.0.0.2]:5001",
                "10.0.0.2:5001\n"};
        char longid[PEER_ID_MAX + 8];

        (void)state;
        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
                if (!wire_node_id_valid(good[i]))
                        fail_msg("refused good id \"%s\"", good[i]);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                if (wire_node_id_valid(bad[i]))
                        fail_msg("accepted bad id \"%s\"", bad[i]);
        assert_false(wire_node_id_valid(NULL));
        memset(longid, '1', sizeof(longid) - 1);
        longid[sizeof(longid) - 1] = '\0';
        assert_false(wire_node_id_valid(longid));
}

/* The wire format is a contract between versions: pin the exact text for a small case. */
static void test_announce_build_exact(void **state) {
        struct wire_blob b = {.size = 10 * 1024 + 1, .nchunks = 11, .ndigests = 2};
        struct wire_announce a = {
                .node = "10.0.0.2:5001", .chunk_size = 1024, .nblobs = 1, .blobs = &b};
        uint8_t present[2] = {0x0f | 0x40, 0x04}; /* chunks 0-3, 6, 10 */
        uint32_t idx[2] = {0, 10};
        struct digest sha[2];
        char *text;
        size_t len;

        (void)state;
        assert_int_equal(digest_from_hex(HEX1, DIGEST_HEX_LEN, &b.digest), 0);
        assert_int_equal(digest_from_hex(HEX2, DIGEST_HEX_LEN, &sha[0]), 0);
        assert_int_equal(digest_from_hex(HEX1, DIGEST_HEX_LEN, &sha[1]), 0);
        snprintf(b.source, sizeof(b.source), "%s", SRC);
        b.present = present;
        b.sha_idx = idx;
        b.sha = sha;
        assert_int_equal(wire_announce_build(&a, &text, &len), 0);
        assert_string_equal(text, "{\"node\":\"10.0.0.2:5001\",\"chunk_size\":1024,\"blobs\":[{"
                                  "\"digest\":\"sha256:" HEX1 "\",\"size\":10241,\"source\":\"" SRC
                                  "\",\"present\":[[0,4],[6,7],[10,11]],\"digests\":[[0,\"" HEX2
                                  "\"],[10,\"" HEX1 "\"]]}]}");
        assert_int_equal(len, strlen(text));
        free(text);
}

/* Parses what the header documents, including adjacent ranges and unknown keys. */
static void test_announce_parse_example(void **state) {
        struct wire_announce a;

        (void)state;
        parse_announce_ok(" {\"node\":\"[fd00::2]:5001\", \"chunk_size\":1048576, \"future\":[1],"
                          "\"blobs\":[{\"digest\":\"sha256:" HEX1 "\", \"size\":45088768,"
                          "\"source\":\"" SRC "\", \"present\":[[0,40],[40,41],[42,43]],"
                          "\"digests\":[[0,\"" HEX2 "\"],[1,\"" HEX1 "\"]]},"
                          "{\"digest\":\"sha256:" HEX2 "\",\"size\":0,\"source\":\"" SRC "\","
                          "\"present\":[]}]}\n",
                          &a);
        assert_string_equal(a.node, "[fd00::2]:5001");
        assert_int_equal(a.chunk_size, 1048576);
        assert_int_equal(a.nblobs, 2);
        assert_int_equal(a.blobs[0].nchunks, 43);
        for (uint32_t i = 0; i < 43; i++)
                assert_int_equal(wire_bit(a.blobs[0].present, i), i != 41);
        assert_int_equal(a.blobs[0].ndigests, 2);
        assert_int_equal(a.blobs[0].sha_idx[1], 1);
        assert_string_equal(a.blobs[0].source, SRC);
        assert_int_equal(a.blobs[1].size, 0);
        assert_int_equal(a.blobs[1].nchunks, 0);
        assert_int_equal(a.blobs[1].ndigests, 0); /* "digests" absent */
        wire_announce_free(&a);
        wire_announce_free(&a); /* contents cleared: a second free is harmless */
        wire_announce_free(NULL);
}

/* A bitmap pattern per case: the edges the run encoder and the byte-skipping can get wrong. */
static void fill_pattern(uint8_t *map, uint32_t n, int pattern) {
        memset(map, 0, (n + 7) / 8 + 1);
        for (uint32_t i = 0; i < n; i++) {
                bool on;

                switch (pattern) {
                case 0:
                        on = false;
                        break;
                case 1:
                        on = true;
                        break;
                case 2:
                        on = i % 2 == 0;
                        break;
                case 3:
                        on = i == n - 1;
                        break;
                case 4:
                        on = i == 0 || (i >= 7 && i < 25) || i == n - 1;
                        break;
                default:
                        on = (i * 2654435761u) % 7 < 3;
                        break;
                }
                if (on)
                        wire_set_bit(map, i);
        }
}

static void test_announce_round_trip(void **state) {
        static const uint32_t sizes[] = {1, 7, 8, 9, 16, 17, 63, 64, 65, 1000};
        struct wire_blob blobs[6 * 10];
        struct wire_announce a = {.node = "[2001:db8::1]:65535", .chunk_size = 3, .blobs = blobs};
        struct wire_announce back;
        char *text, reason[256] = "";
        size_t len;

        (void)state;
        memset(blobs, 0, sizeof(blobs));
        for (int p = 0; p < 6; p++) {
                for (size_t s = 0; s < 10; s++) {
                        struct wire_blob *b = &blobs[a.nblobs++];

                        set_digest(&b->digest, (uint8_t)a.nblobs);
                        b->nchunks = sizes[s];
                        b->size = (uint64_t)sizes[s] * 3 - (uint64_t)(p % 3); /* partial tail */
                        snprintf(b->source, sizeof(b->source), "r.io/repo%d", p);
                        b->present = calloc(1, sizes[s] / 8 + 2);
                        assert_non_null(b->present);
                        fill_pattern(b->present, b->nchunks, p);
                        b->ndigests = b->nchunks / 2;
                        b->sha_idx = calloc(b->ndigests + 1, sizeof(*b->sha_idx));
                        b->sha = calloc(b->ndigests + 1, sizeof(*b->sha));
                        for (uint32_t i = 0; i < b->ndigests; i++) {
                                b->sha_idx[i] = 2 * i + 1;
                                set_digest(&b->sha[i], (uint8_t)i);
                        }
                        /* Chain values: every third chunk but never the last. */
                        b->nchain = (b->nchunks + 1) / 3;
                        b->chain_idx = calloc(b->nchain + 1, sizeof(*b->chain_idx));
                        b->chain = calloc(b->nchain + 1, sizeof(*b->chain));
                        for (uint32_t i = 0; i < b->nchain; i++) {
                                b->chain_idx[i] = 3 * i;
                                set_digest(&b->chain[i], (uint8_t)(i + 100));
                        }
                }
        }
        assert_int_equal(wire_announce_build(&a, &text, &len), 0);
        assert_int_equal(wire_announce_parse(text, len, &back, reason, sizeof(reason)), 0);
        assert_true(wire_announce_equal(&a, &back));
        /* And the comparison is not vacuous. */
        back.blobs[29].sha[3].bytes[0] ^= 1;
        assert_false(wire_announce_equal(&a, &back));
        back.blobs[29].sha[3].bytes[0] ^= 1;
        assert_int_equal(back.blobs[59].nchain, 333);
        back.blobs[59].chain[7].bytes[31] ^= 1;
        assert_false(wire_announce_equal(&a, &back));
        back.blobs[59].chain[7].bytes[31] ^= 1;
        back.blobs[59].chain_idx[332]++; /* 997 (not the last chunk, 999) */
        assert_false(wire_announce_equal(&a, &back));
        back.blobs[59].chain_idx[332]--;
        back.blobs[59].nchain--;
        assert_false(wire_announce_equal(&a, &back));
        back.blobs[59].nchain++;
        assert_true(wire_announce_equal(&a, &back));
        back.chunk_size++;
        assert_false(wire_announce_equal(&a, &back));
        back.chunk_size--;
        wire_set_bit(back.blobs[17].present, 0);
        blobs[17].present[0] &= (uint8_t)~1u;
        assert_false(wire_announce_equal(&a, &back));
        wire_announce_free(&back);
        free(text);
        for (uint32_t i = 0; i < a.nblobs; i++) {
                free(blobs[i].present);
                free(blobs[i].sha_idx);
                free(blobs[i].sha);
                free(blobs[i].chain_idx);
                free(blobs[i].chain);
        }

        /* No blobs at all is a valid (if pointless) announce. */
        a.nblobs = 0;
        a.blobs = NULL;
        assert_int_equal(wire_announce_build(&a, &text, NULL), 0);
        assert_int_equal(wire_announce_parse(text, strlen(text), &back, reason, sizeof(reason)), 0);
        assert_true(wire_announce_equal(&a, &back));
        wire_announce_free(&back);
        free(text);
}

static void test_announce_build_refuses(void **state) {
        uint8_t present[1] = {0x1};
        uint32_t idx[2] = {1, 1};
        struct digest sha[2];
        struct wire_blob b = {.size = 8, .nchunks = 2, .present = present};
        struct wire_announce a = {
                .node = "10.0.0.2:5001", .chunk_size = 4, .nblobs = 1, .blobs = &b};
        char *text = NULL;

        (void)state;
        snprintf(b.source, sizeof(b.source), "%s", SRC);
        memset(sha, 0, sizeof(sha));
        assert_int_equal(wire_announce_build(&a, &text, NULL), 0);
        free(text);
        text = NULL;

        b.nchunks = 3; /* ceil(8 / 4) is 2 */
        assert_int_equal(wire_announce_build(&a, &text, NULL), -EINVAL);
        b.nchunks = 2;
        a.chunk_size = 0;
        assert_int_equal(wire_announce_build(&a, &text, NULL), -EINVAL);
        a.chunk_size = 4;
        snprintf(a.node, sizeof(a.node), "node-a:5001");
        assert_int_equal(wire_announce_build(&a, &text, NULL), -EINVAL);
        snprintf(a.node, sizeof(a.node), "10.0.0.2:5001");
        snprintf(b.source, sizeof(b.source), "no-registry");
        assert_int_equal(wire_announce_build(&a, &text, NULL), -EINVAL);
        snprintf(b.source, sizeof(b.source), "%s", SRC);
        b.ndigests = 2; /* indexes not increasing */
        b.sha_idx = idx;
        b.sha = sha;
        assert_int_equal(wire_announce_build(&a, &text, NULL), -EINVAL);
        idx[1] = 2; /* out of range */
        assert_int_equal(wire_announce_build(&a, &text, NULL), -EINVAL);
        idx[0] = 0;
        idx[1] = 1;
        assert_int_equal(wire_announce_build(&a, &text, NULL), 0);
        free(text);
        text = NULL;
        b.ndigests = 0;

        /* Too many chunks in one announce: the sender must split. */
        {
                struct wire_blob many[9];

                for (int i = 0; i < 9; i++) {
                        many[i] = b;
                        many[i].size = (uint64_t)WIRE_MAX_CHUNKS * 4;
                        many[i].nchunks = WIRE_MAX_CHUNKS;
                        many[i].present = present; /* not read: refused before */
                }
                a.blobs = many;
                a.nblobs = 9;
                assert_int_equal(wire_announce_build(&a, &text, NULL), -EMSGSIZE);
                many[0].size++;
                assert_int_equal(wire_announce_build(&a, &text, NULL), -EINVAL);
        }
        assert_null(text);
}

static void test_announce_parse_rejects(void **state) {
        (void)state;
        /* Not JSON, not an object. */
        expect_announce_err("", "invalid json");
        expect_announce_err("{", "invalid json");
        expect_announce_err("[]", "not a json object");
        expect_announce_err("\"x\"", NULL);
        expect_announce_err("{\"node\":\"10.0.0.2:5001\",\"node\":\"10.0.0.3:5001\","
                            "\"chunk_size\":4,\"blobs\":[]}",
                            "invalid json"); /* duplicate key */
        /* Node. */
        expect_announce_err(ANN("10.0.0.2", 4, ""), "node");
        expect_announce_err(ANN("host.example:5001", 4, ""), "node");
        expect_announce_err(ANN("[::1]:0", 4, ""), "node");
        expect_announce_err("{\"chunk_size\":4,\"blobs\":[]}", "node");
        expect_announce_err("{\"node\":5001,\"chunk_size\":4,\"blobs\":[]}", "node");
        expect_announce_err(ANN("10.0.0.2:5001\\u0000x", 4, ""), "invalid json"); /* NUL */
        expect_announce_err(ANN("10.0.0.2:50011111111111111111111111111111111111111111111111111111"
                                "11111111111111",
                                4, ""),
                            "node");
        /* Chunk size. */
        expect_announce_err(ANN("10.0.0.2:5001", 0, ""), "chunk_size");
        expect_announce_err(ANN("10.0.0.2:5001", -1, ""), "chunk_size");
        expect_announce_err(ANN("10.0.0.2:5001", 4294967296, ""), "chunk_size");
        expect_announce_err(ANN("10.0.0.2:5001", 1.5, ""), "chunk_size");
        expect_announce_err(ANN("10.0.0.2:5001", "4", ""), "chunk_size");
        expect_announce_err("{\"node\":\"10.0.0.2:5001\",\"chunk_size\":4}", "blobs");
        expect_announce_err("{\"node\":\"10.0.0.2:5001\",\"chunk_size\":4,\"blobs\":{}}", "blobs");
        /* Blob digest. */
        expect_announce_err(ANN("10.0.0.2:5001", 4, "7"), "blob 0");
        expect_announce_err(ANN("10.0.0.2:5001", 4,
                                "{\"digest\":\"sha256:" HEXU "\",\"size\":1,"
                                "\"source\":\"" SRC "\",\"present\":[]}"),
                            "digest");
        expect_announce_err(ANN("10.0.0.2:5001", 4,
                                "{\"digest\":\"" HEX1 "\",\"size\":1,"
                                "\"source\":\"" SRC "\",\"present\":[]}"),
                            "digest");
        expect_announce_err(ANN("10.0.0.2:5001", 4,
                                "{\"digest\":\"sha512:" HEX1 "\",\"size\":1,"
                                "\"source\":\"" SRC "\",\"present\":[]}"),
                            "digest");
        /* Size and chunk counts. */
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(-1, ",\"present\":[]")), "size");
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(1e3, ",\"present\":[]")), "size");
        expect_announce_err(ANN("10.0.0.2:5001", 1, BLOB(4194305, ",\"present\":[]")),
                            "too many chunks");
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(99999999999999999999, ",\"present\":[]")),
                            "invalid json"); /* beyond a 64-bit integer */
        /* Source. */
        expect_announce_err(ANN("10.0.0.2:5001", 4,
                                "{\"digest\":\"sha256:" HEX1 "\",\"size\":1,\"present\":[]}"),
                            "source");
        expect_announce_err(ANN("10.0.0.2:5001", 4,
                                "{\"digest\":\"sha256:" HEX1 "\",\"size\":1,\"source\":\"busybox\","
                                "\"present\":[]}"),
                            "source");
        expect_announce_err(ANN("10.0.0.2:5001", 4,
                                "{\"digest\":\"sha256:" HEX1 "\",\"size\":1,\"source\":\"\","
                                "\"present\":[]}"),
                            "source");
        /* Present ranges: missing, malformed, empty, unsorted, overlapping, out of range. */
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(40, "")), "present");
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(40, ",\"present\":{}")), "present");
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(40, ",\"present\":[1]")), "present");
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(40, ",\"present\":[[1]]")), "present");
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(40, ",\"present\":[[1,2,3]]")), "present");
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(40, ",\"present\":[[1,\"2\"]]")),
                            "present");
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(40, ",\"present\":[[2,2]]")), "present");
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(40, ",\"present\":[[3,2]]")), "present");
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(40, ",\"present\":[[-1,2]]")), "present");
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(40, ",\"present\":[[0,11]]")), "present");
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(40, ",\"present\":[[5,6],[1,2]]")),
                            "present");
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(40, ",\"present\":[[1,4],[3,6]]")),
                            "present");
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(0, ",\"present\":[[0,1]]")), "present");
        /* More ranges than chunks is refused before any bitmap is sized. */
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(8, ",\"present\":[[0,1],[1,2],[2,3]]")),
                            "too many present ranges");
        /* Chunk digests. */
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(8, ",\"present\":[],\"digests\":{}")),
                            "digests");
        expect_announce_err(
                ANN("10.0.0.2:5001", 4, BLOB(8, ",\"present\":[],\"digests\":[[2,\"" HEX1 "\"]]")),
                "chunk digest 0");
        expect_announce_err(
                ANN("10.0.0.2:5001", 4,
                    BLOB(8, ",\"present\":[],\"digests\":[[1,\"" HEX1 "\"],[0,\"" HEX1 "\"]]")),
                "chunk digest 1");
        expect_announce_err(
                ANN("10.0.0.2:5001", 4,
                    BLOB(8, ",\"present\":[],\"digests\":[[0,\"" HEX1 "\"],[0,\"" HEX1 "\"]]")),
                "chunk digest 1");
        expect_announce_err(
                ANN("10.0.0.2:5001", 4, BLOB(8, ",\"present\":[],\"digests\":[[0,\"" HEXU "\"]]")),
                "chunk digest 0");
        expect_announce_err(ANN("10.0.0.2:5001", 4,
                                BLOB(8, ",\"present\":[],\"digests\":[[0,\"sha256:" HEX1 "\"]]")),
                            "chunk digest 0");
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(8, ",\"present\":[],\"digests\":[[0]]")),
                            "chunk digest 0");
        expect_announce_err(
                ANN("10.0.0.2:5001", 4,
                    BLOB(4, ",\"present\":[],\"digests\":[[0,\"" HEX1 "\"],[1,\"" HEX1 "\"]]")),
                "too many chunk digests");
        /* The second blob bad: the first one's allocations are released (ASan checks). */
        expect_announce_err(
                ANN("10.0.0.2:5001", 4,
                    BLOB(40, ",\"present\":[[0,10]],\"digests\":[[0,\"" HEX1
                             "\"]]") "," BLOB(40, ",\"present\":[[0,10]],\"digests\":[[0,\"x\"]]")),
                "blob 1");
}

/* Counts and sizes past the limits, built programmatically. */
static void test_announce_parse_limits(void **state) {
        char *body, *p, reason[256];
        struct wire_announce a;
        size_t cap = (size_t)WIRE_MAX_BLOBS * 200 + 4096;

        (void)state;
        body = malloc(WIRE_MAX_BODY + 2);
        assert_non_null(body);

        /* A body one byte too long is refused before it is parsed. */
        memset(body, ' ', WIRE_MAX_BODY + 1);
        assert_int_equal(wire_announce_parse(body, WIRE_MAX_BODY + 1, &a, reason, sizeof(reason)),
                         -EINVAL);
        assert_non_null(strstr(reason, "body too large"));

        /* WIRE_MAX_BLOBS + 1 blobs: refused by count, whatever they contain. */
        assert_true(cap < WIRE_MAX_BODY);
        p = body + snprintf(body, cap, "{\"node\":\"10.0.0.2:5001\",\"chunk_size\":4,\"blobs\":[");
        for (unsigned i = 0; i <= WIRE_MAX_BLOBS; i++)
                p += snprintf(p, 8, "%s{}", i ? "," : "");
        p += snprintf(p, 8, "]}");
        assert_int_equal(wire_announce_parse(body, (size_t)(p - body), &a, reason, sizeof(reason)),
                         -EINVAL);
        assert_non_null(strstr(reason, "too many blobs"));

        /* Many blobs, each at WIRE_MAX_CHUNKS: refused once the sum passes the limit. */
        p = body + snprintf(body, cap, "{\"node\":\"10.0.0.2:5001\",\"chunk_size\":1,\"blobs\":[");
        for (unsigned i = 0; i < 9; i++)
                p += snprintf(p, 200, "%s" BLOB(4194304, ",\"present\":[]"), i ? "," : "");
        p += snprintf(p, 8, "]}");
        assert_int_equal(wire_announce_parse(body, (size_t)(p - body), &a, reason, sizeof(reason)),
                         -EINVAL);
        assert_non_null(strstr(reason, "too many chunks in announce"));
        /* Eight of them are fine (and a full bitmap round-trips). */
        p = body + snprintf(body, cap, "{\"node\":\"10.0.0.2:5001\",\"chunk_size\":1,\"blobs\":[");
        for (unsigned i = 0; i < 8; i++)
                p += snprintf(p, 200, "%s" BLOB(4194304, ",\"present\":[[0,4194304]]"),
                              i ? "," : "");
        p += snprintf(p, 8, "]}");
        assert_int_equal(wire_announce_parse(body, (size_t)(p - body), &a, reason, sizeof(reason)),
                         0);
        assert_int_equal(a.nblobs, 8);
        assert_true(wire_bit(a.blobs[7].present, WIRE_MAX_CHUNKS - 1));
        wire_announce_free(&a);
        free(body);
}

#define LOC(rest)                                                                                  \
        "{\"digest\":\"sha256:" HEX2 "\",\"size\":40,\"source\":\"" SRC "\",\"chunk_size\":4" rest \
        "}"

static void test_locate_build_exact(void **state) {
        uint8_t p1[2] = {0xff, 0x01}, p2[2] = {0x00, 0x02}, known[2] = {0x01, 0x02};
        struct wire_holder h[2] = {{.node = "10.0.0.3:5001", .present = p1},
                                   {.node = "10.0.0.4:5001", .present = p2, .fetching = true}};
        struct digest sha[10];
        struct wire_locate l = {.size = 40,
                                .chunk_size = 4,
                                .nchunks = 10,
                                .sha = sha,
                                .sha_known = known,
                                .nholders = 2,
                                .holders = h,
                                .has_claim = true,
                                .claim_chunk = 9};
        struct wire_locate back;
        char *text, reason[256];
        size_t len;

        (void)state;
        memset(sha, 0, sizeof(sha));
        assert_int_equal(digest_from_hex(HEX2, DIGEST_HEX_LEN, &l.digest), 0);
        assert_int_equal(digest_from_hex(HEX1, DIGEST_HEX_LEN, &sha[0]), 0);
        assert_int_equal(digest_from_hex(HEX2, DIGEST_HEX_LEN, &sha[9]), 0);
        snprintf(l.source, sizeof(l.source), "%s", SRC);
        assert_int_equal(wire_locate_build(&l, &text, &len), 0);
        assert_string_equal(text,
                            LOC(",\"digests\":[[0,\"" HEX1 "\"],[9,\"" HEX2 "\"]],"
                                "\"holders\":[{\"node\":\"10.0.0.3:5001\",\"present\":[[0,9]]}],"
                                "\"fetching\":[{\"node\":\"10.0.0.4:5001\",\"chunks\":[[9,10]]}],"
                                "\"claim\":{\"chunk\":9,\"granted\":false}"));
        assert_int_equal(wire_locate_parse(text, len, &back, reason, sizeof(reason)), 0);
        assert_true(wire_locate_equal(&l, &back));
        back.claim_granted = true;
        assert_false(wire_locate_equal(&l, &back));
        back.claim_granted = false;
        back.sha[9].bytes[5] ^= 1;
        assert_false(wire_locate_equal(&l, &back));
        back.sha[9].bytes[5] ^= 1;
        back.sha_known[0] = 0;
        assert_false(wire_locate_equal(&l, &back));
        back.sha_known[0] = 1;
        back.holders[1].present[1] = 0;
        assert_false(wire_locate_equal(&l, &back));
        back.holders[1].present[1] = 2;
        snprintf(back.holders[0].node, sizeof(back.holders[0].node), "10.0.0.9:5001");
        assert_false(wire_locate_equal(&l, &back));
        wire_locate_free(&back);
        wire_locate_free(&back);
        wire_locate_free(NULL);
        free(text);
}

static void test_locate_round_trip(void **state) {
        static const uint32_t sizes[] = {0, 1, 8, 9, 333};
        struct wire_holder h[2 * WIRE_MAX_HOLDERS];
        struct wire_locate l, back;
        char *text, reason[256] = "";
        size_t len;

        (void)state;
        for (size_t s = 0; s < 5; s++) {
                uint32_t n = sizes[s];

                memset(&l, 0, sizeof(l));
                set_digest(&l.digest, (uint8_t)s);
                l.chunk_size = 1u << 20;
                l.nchunks = n;
                l.size = (uint64_t)n << 20;
                snprintf(l.source, sizeof(l.source), "[::1]:5000/a/b");
                l.sha = calloc(n + 1, sizeof(*l.sha));
                l.sha_known = calloc(1, n / 8 + 2);
                for (uint32_t i = 0; i < n; i += 3) {
                        wire_set_bit(l.sha_known, i);
                        set_digest(&l.sha[i], (uint8_t)i);
                }
                /* Fetching entries first in L: the builder sorts them into their lists. */
                l.holders = h;
                l.nholders = 2 * WIRE_MAX_HOLDERS;
                for (uint32_t i = 0; i < l.nholders; i++) {
                        h[i].fetching = i < WIRE_MAX_HOLDERS;
                        snprintf(h[i].node, sizeof(h[i].node), "10.0.%u.%u:5001", i / 256, i % 256);
                        h[i].present = calloc(1, n / 8 + 2);
                        fill_pattern(h[i].present, n, (int)(i % 6));
                }
                l.has_claim = n > 0;
                l.claim_chunk = n ? n - 1 : 0;
                l.claim_granted = s % 2;
                l.ttl_ms = s == 0 ? 0 : s == 4 ? WIRE_MAX_LOCATE_TTL_MS : 1000 * (uint32_t)s;
                assert_int_equal(wire_locate_build(&l, &text, &len), 0);
                assert_true((strstr(text, "\"ttl_ms\"") != NULL) == (l.ttl_ms != 0));
                assert_int_equal(wire_locate_parse(text, len, &back, reason, sizeof(reason)), 0);
                /* Present holders come back first. */
                assert_int_equal(back.nholders, l.nholders);
                assert_false(back.holders[0].fetching);
                assert_true(back.holders[WIRE_MAX_HOLDERS].fetching);
                {
                        struct wire_holder sorted[2 * WIRE_MAX_HOLDERS];

                        memcpy(sorted, h + WIRE_MAX_HOLDERS, WIRE_MAX_HOLDERS * sizeof(*h));
                        memcpy(sorted + WIRE_MAX_HOLDERS, h, WIRE_MAX_HOLDERS * sizeof(*h));
                        l.holders = sorted;
                        assert_true(wire_locate_equal(&l, &back));
                        assert_int_equal(back.ttl_ms, l.ttl_ms);
                        back.ttl_ms++; /* a different reuse time is a different answer */
                        assert_false(wire_locate_equal(&l, &back));
                        back.ttl_ms--;
                        l.holders = h;
                }
                wire_locate_free(&back);
                free(text);

                /* One more of a kind is refused by the builder. */
                h[0].fetching = false;
                h[WIRE_MAX_HOLDERS].fetching = false;
                snprintf(h[0].node, sizeof(h[0].node), "10.9.9.9:5001");
                assert_int_equal(wire_locate_build(&l, &text, &len), -EINVAL);
                for (uint32_t i = 0; i < l.nholders; i++)
                        free(h[i].present);
                free(l.sha);
                free(l.sha_known);
        }
}

static void test_locate_build_refuses(void **state) {
        uint8_t p[2] = {0, 0};
        struct wire_holder h[2] = {{.node = "10.0.0.3:5001", .present = p},
                                   {.node = "10.0.0.3:5001", .present = p}};
        struct wire_locate l = {.size = 40, .chunk_size = 4, .nchunks = 10, .holders = h};
        char *text = NULL;

        (void)state;
        snprintf(l.source, sizeof(l.source), "%s", SRC);
        assert_int_equal(wire_locate_build(&l, &text, NULL), 0); /* no sha_known: none known */
        free(text);
        text = NULL;
        l.nholders = 2; /* the same node twice */
        assert_int_equal(wire_locate_build(&l, &text, NULL), -EINVAL);
        h[1].fetching = true; /* a holder may also be fetching other chunks */
        assert_int_equal(wire_locate_build(&l, &text, NULL), 0);
        free(text);
        text = NULL;
        l.has_claim = true;
        l.claim_chunk = 10;
        assert_int_equal(wire_locate_build(&l, &text, NULL), -EINVAL);
        l.claim_chunk = 9;
        l.nchunks = 11;
        assert_int_equal(wire_locate_build(&l, &text, NULL), -EINVAL);
        l.nchunks = 10;
        l.size = (uint64_t)INT64_MAX + 1;
        assert_int_equal(wire_locate_build(&l, &text, NULL), -EINVAL);
        l.size = 40;
        l.nchunks = 10;
        l.has_claim = false;
        l.ttl_ms = WIRE_MAX_LOCATE_TTL_MS + 1; /* longer than a reader may be told */
        assert_int_equal(wire_locate_build(&l, &text, NULL), -EINVAL);
        assert_null(text);
}

static void test_locate_parse(void **state) {
        struct wire_locate l;

        (void)state;
        /* The minimum: metadata only. */
        parse_locate_ok(LOC(""), &l);
        assert_int_equal(l.nchunks, 10);
        assert_int_equal(l.nholders, 0);
        assert_false(l.has_claim);
        assert_false(wire_bit(l.sha_known, 0));
        wire_locate_free(&l);

        parse_locate_ok(LOC(",\"holders\":[{\"node\":\"[::1]:5001\",\"present\":[]}],"
                            "\"fetching\":[{\"node\":\"[::1]:5001\",\"chunks\":[[0,1],[1,2]]}],"
                            "\"claim\":{\"chunk\":0,\"granted\":true}"),
                        &l);
        assert_int_equal(l.nholders, 2);
        assert_true(l.holders[1].fetching);
        assert_true(wire_bit(l.holders[1].present, 1));
        assert_false(wire_bit(l.holders[1].present, 2));
        assert_true(l.has_claim && l.claim_granted);
        assert_int_equal(l.ttl_ms, 0); /* not said */
        wire_locate_free(&l);

        parse_locate_ok(LOC(",\"ttl_ms\":5000"), &l);
        assert_int_equal(l.ttl_ms, 5000);
        wire_locate_free(&l);
}

static void test_locate_parse_rejects(void **state) {
        char *body, *p;

        (void)state;
        expect_locate_err("[1]", "not a json object");
        expect_locate_err("{\"digest\":\"sha256:" HEX2 "\"}", "size");
        expect_locate_err("{\"size\":1,\"chunk_size\":1,\"source\":\"" SRC "\"}", "digest");
        expect_locate_err("{\"digest\":\"sha256:" HEX2 "\",\"size\":40,\"source\":\"" SRC "\"}",
                          "chunk_size");
        expect_locate_err("{\"digest\":\"sha256:" HEX2 "\",\"size\":40,\"source\":\"" SRC
                          "\",\"chunk_size\":0}",
                          "chunk_size");
        expect_locate_err("{\"digest\":\"sha256:" HEX2 "\",\"size\":4194305,\"source\":\"" SRC
                          "\",\"chunk_size\":1}",
                          "too many chunks");
        expect_locate_err("{\"digest\":\"sha256:" HEX2 "\",\"size\":40,\"chunk_size\":4}",
                          "source");
        expect_locate_err(LOC(",\"digests\":[[10,\"" HEX1 "\"]]"), "chunk digest 0");
        expect_locate_err(LOC(",\"digests\":[[3,\"" HEX1 "\"],[3,\"" HEX1 "\"]]"),
                          "chunk digest 1");
        expect_locate_err(LOC(",\"digests\":{}"), "digests");
        expect_locate_err(LOC(",\"ttl_ms\":0"), "ttl_ms");
        expect_locate_err(LOC(",\"ttl_ms\":600001"), "ttl_ms");
        expect_locate_err(LOC(",\"ttl_ms\":\"5s\""), "ttl_ms");
        expect_locate_err(LOC(",\"ttl_ms\":-1"), "ttl_ms");
        expect_locate_err("{\"digest\":\"sha256:" HEX2 "\",\"size\":4,\"source\":\"" SRC
                          "\",\"chunk_size\":4,\"digests\":[[0,\"" HEX1 "\"],[1,\"" HEX1 "\"]]}",
                          "too many chunk digests");
        expect_locate_err(LOC(",\"holders\":{}"), "holders");
        expect_locate_err(LOC(",\"holders\":[1]"), "holders 0");
        expect_locate_err(LOC(",\"holders\":[{\"present\":[]}]"), "node");
        expect_locate_err(LOC(",\"holders\":[{\"node\":\"x:1\",\"present\":[]}]"), "node");
        expect_locate_err(LOC(",\"holders\":[{\"node\":\"10.0.0.3:5001\"}]"), "present");
        expect_locate_err(LOC(",\"holders\":[{\"node\":\"10.0.0.3:5001\",\"present\":[[0,11]]}]"),
                          "present");
        expect_locate_err(LOC(",\"fetching\":[{\"node\":\"10.0.0.3:5001\",\"present\":[[0,1]]}]"),
                          "chunks");
        expect_locate_err(LOC(",\"holders\":[{\"node\":\"10.0.0.3:5001\",\"present\":[]},"
                              "{\"node\":\"10.0.0.3:5001\",\"present\":[[1,2]]}]"),
                          "duplicate node");
        expect_locate_err(LOC(",\"claim\":{\"chunk\":10,\"granted\":true}"), "claim");
        expect_locate_err(LOC(",\"claim\":{\"chunk\":1,\"granted\":1}"), "claim");
        expect_locate_err(LOC(",\"claim\":{\"granted\":true}"), "claim");
        expect_locate_err(LOC(",\"claim\":[]"), "claim");

        /* WIRE_MAX_HOLDERS + 1 holders. */
        body = malloc(16384);
        assert_non_null(body);
        p = body + snprintf(body, 16384, "%s", LOC(",\"holders\":["));
        p--; /* drop the closing brace */
        for (unsigned i = 0; i <= WIRE_MAX_HOLDERS; i++)
                p += snprintf(p, 64, "%s{\"node\":\"10.0.0.%u:5001\",\"present\":[]}", i ? "," : "",
                              i);
        snprintf(p, 8, "]}");
        expect_locate_err(body, "too many holders");
        free(body);
}

/* Digest provenance on the wire: an announce's "verified" and a locate answer's "verified"
 * ranges, parsed, built back the same, and refused when they make no sense. */
static void test_verified(void **state) {
        struct wire_announce a;
        struct wire_locate l, back;
        char *text = NULL, reason[256];
        size_t len = 0;

        (void)state;
        parse_announce_ok(ANN("10.0.0.2:5001", 4,
                              BLOB(8, ",\"present\":[[0,2]],\"digests\":[[0,\"" HEX2
                                      "\"]],\"verified\":true")),
                          &a);
        assert_true(a.blobs[0].verified);
        assert_int_equal(wire_announce_build(&a, &text, &len), 0);
        assert_non_null(strstr(text, "\"verified\":true"));
        free(text);
        a.blobs[0].verified = false; /* not said: not sent */
        assert_int_equal(wire_announce_build(&a, &text, &len), 0);
        assert_null(strstr(text, "verified"));
        free(text);
        wire_announce_free(&a);
        parse_announce_ok(
                ANN("10.0.0.2:5001", 4, BLOB(8, ",\"present\":[[0,2]],\"verified\":false")), &a);
        assert_false(a.blobs[0].verified);
        wire_announce_free(&a);
        expect_announce_err(ANN("10.0.0.2:5001", 4, BLOB(8, ",\"present\":[],\"verified\":1")),
                            "verified");

        /* Absent: nothing verified, and the bitmap is there to test. */
        parse_locate_ok(LOC(",\"digests\":[[1,\"" HEX1 "\"]]"), &l);
        assert_non_null(l.sha_verified);
        assert_false(wire_bit(l.sha_verified, 1));
        wire_locate_free(&l);

        parse_locate_ok(LOC(",\"digests\":[[1,\"" HEX1 "\"],[2,\"" HEX2 "\"],[5,\"" HEX2
                            "\"]],\"verified\":[[1,3]]"),
                        &l);
        assert_true(wire_bit(l.sha_verified, 1));
        assert_true(wire_bit(l.sha_verified, 2));
        assert_false(wire_bit(l.sha_verified, 5));
        assert_int_equal(wire_locate_build(&l, &text, &len), 0);
        assert_non_null(strstr(text, "\"verified\":[[1,3]]"));
        assert_int_equal(wire_locate_parse(text, len, &back, reason, sizeof(reason)), 0);
        free(text);
        assert_true(wire_locate_equal(&l, &back));
        wire_set_bit(back.sha_verified, 5);
        assert_false(wire_locate_equal(&l, &back)); /* the verified bits are compared */
        /* A verified bit without a digest is not built (nothing to vouch for). */
        wire_set_bit(l.sha_verified, 7);
        assert_int_equal(wire_locate_build(&l, &text, &len), 0);
        assert_non_null(strstr(text, "\"verified\":[[1,3]]"));
        free(text);
        wire_locate_free(&back);
        wire_locate_free(&l);

        expect_locate_err(LOC(",\"digests\":[[1,\"" HEX1 "\"]],\"verified\":[[0,2]]"),
                          "without a digest");
        expect_locate_err(LOC(",\"verified\":{}"), "verified");
        expect_locate_err(LOC(",\"digests\":[[1,\"" HEX1 "\"]],\"verified\":[[1,11]]"), "verified");
}

/* A chunk's [idx,"<hex>"] pair, and an announce of one blob whose "chain" is LIST. */
#define CHAIN(size, list) ANN("10.0.0.2:5001", 4, BLOB(size, ",\"present\":[],\"chain\":" list))
#define PAIR(i, hex) "[" #i ",\"" hex "\"]"

/* Chain values (util/chain.h) on the wire: an announce's "chain" and a locate answer's "chain"
 * and "chain_verified", with the digests' rules (one parser for both), and the last chunk's
 * value, which is the blob digest itself, refused both ways. */
static void test_chain_announce(void **state) {
        struct wire_announce a, back;
        char *text = NULL, reason[256] = "";
        size_t len = 0;

        (void)state;
        parse_announce_ok(ANN("10.0.0.2:5001", 4,
                              BLOB(12, ",\"present\":[[0,3]],\"digests\":[[2,\"" HEX1
                                       "\"]],\"chain\":[[0,\"" HEX2 "\"],[1,\"" HEX1 "\"]]")),
                          &a);
        assert_int_equal(a.blobs[0].nchain, 2);
        assert_int_equal(a.blobs[0].chain_idx[0], 0);
        assert_int_equal(a.blobs[0].chain_idx[1], 1);
        assert_int_equal(a.blobs[0].chain[0].bytes[0], 0xe3);
        assert_int_equal(a.blobs[0].chain[1].bytes[0], 0xba);
        assert_int_equal(a.blobs[0].ndigests, 1);
        assert_int_equal(wire_announce_build(&a, &text, &len), 0);
        assert_non_null(strstr(text, "\"digests\":[[2,\"" HEX1 "\"]],\"chain\":[[0,\"" HEX2
                                     "\"],[1,\"" HEX1 "\"]]"));
        assert_int_equal(wire_announce_parse(text, len, &back, reason, sizeof(reason)), 0);
        free(text);
        assert_true(wire_announce_equal(&a, &back));
        back.blobs[0].chain[1].bytes[0] ^= 1;
        assert_false(wire_announce_equal(&a, &back));
        wire_announce_free(&back);

        /* The builder refuses what the parser would: the last chunk's value, disorder. */
        a.blobs[0].chain_idx[1] = 2;
        assert_int_equal(wire_announce_build(&a, &text, &len), -EINVAL);
        a.blobs[0].chain_idx[1] = 0;
        assert_int_equal(wire_announce_build(&a, &text, &len), -EINVAL);
        a.blobs[0].chain_idx[1] = 1;
        a.blobs[0].nchain = 0; /* none: the key is left out (older nodes never see it) */
        assert_int_equal(wire_announce_build(&a, &text, &len), 0);
        assert_null(strstr(text, "chain"));
        free(text);
        a.blobs[0].nchain = 2;
        wire_announce_free(&a);

        /* Absent: none. */
        parse_announce_ok(ANN("10.0.0.2:5001", 4, BLOB(12, ",\"present\":[]")), &a);
        assert_int_equal(a.blobs[0].nchain, 0);
        assert_null(a.blobs[0].chain);
        wire_announce_free(&a);

        static const struct {
                const char *body, *want;
        } bad[] = {
                {CHAIN(12, "{}"), "chain"},
                /* Chunk 2 is the last of 3: its value is the blob digest. */
                {CHAIN(12, "[" PAIR(2, HEX1) "]"), "chain value 0"},
                {CHAIN(12, "[" PAIR(1, HEX1) "," PAIR(0, HEX1) "]"), "chain value 1"},
                {CHAIN(12, "[" PAIR(0, HEX1) "," PAIR(0, HEX1) "]"), "chain value 1"},
                {CHAIN(12, "[" PAIR(0, HEXU) "]"), "chain value 0"},
                {CHAIN(12, "[" PAIR(0, HEX1 "0") "]"), "chain value 0"},
                {CHAIN(12, "[" PAIR(-1, HEX1) "]"), "chain value 0"},
                {CHAIN(12, "[[0]]"), "chain value 0"},
                /* One chunk: no chain value can be sent at all. */
                {CHAIN(4, "[" PAIR(0, HEX1) "]"), "too many chain values"},
                {CHAIN(12, "[" PAIR(0, HEX1) "," PAIR(1, HEX1) "," PAIR(2, HEX1) "]"),
                 "too many chain values"},
                /* The second blob bad: the first one's chain values are released (ASan). */
                {ANN("10.0.0.2:5001", 4,
                     BLOB(12,
                          ",\"present\":[],\"digests\":[" PAIR(0, HEX1) "],\"chain\":[" PAIR(
                                  0, HEX1) "]") "," BLOB(12,
                                                         ",\"present\":[],\"chain\":[[0,\"x\"]]")),
                 "blob 1"},
                /* Bad chain after good digests in one blob: those are released too. */
                {ANN("10.0.0.2:5001", 4,
                     BLOB(12, ",\"present\":[],\"digests\":[" PAIR(0, HEX1) "],\"chain\":[" PAIR(
                                      5, HEX1) "]")),
                 "chain value 0"},
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                expect_announce_err(bad[i].body, bad[i].want);
}

static void test_chain_locate(void **state) {
        struct wire_locate l, back;
        char *text = NULL, reason[256];
        size_t len = 0;

        (void)state;
        /* Absent (an older home): nothing known, nothing allocated. */
        parse_locate_ok(LOC(",\"digests\":[[1,\"" HEX1 "\"]]"), &l);
        assert_null(l.chain);
        assert_null(l.chain_known);
        assert_null(l.chain_verified);
        assert_int_equal(wire_locate_build(&l, &text, &len), 0);
        assert_null(strstr(text, "chain"));
        free(text);
        wire_locate_free(&l);

        parse_locate_ok(LOC(",\"chain\":[[0,\"" HEX1 "\"],[3,\"" HEX2 "\"],[8,\"" HEX2
                            "\"]],\"chain_verified\":[[3,4]]"),
                        &l);
        assert_non_null(l.chain_known);
        assert_true(wire_bit(l.chain_known, 0));
        assert_true(wire_bit(l.chain_known, 3));
        assert_true(wire_bit(l.chain_known, 8));
        assert_false(wire_bit(l.chain_known, 1));
        assert_false(wire_bit(l.sha_known, 0)); /* a chain value is not a digest */
        assert_int_equal(l.chain[3].bytes[0], 0xe3);
        assert_true(wire_bit(l.chain_verified, 3));
        assert_false(wire_bit(l.chain_verified, 0));
        assert_int_equal(wire_locate_build(&l, &text, &len), 0);
        assert_non_null(
                strstr(text, "\"chain\":[[0,\"" HEX1 "\"],[3,\"" HEX2 "\"],[8,\"" HEX2 "\"]]"));
        assert_non_null(strstr(text, "\"chain_verified\":[[3,4]]"));
        assert_null(strstr(text, "\"verified\""));
        assert_int_equal(wire_locate_parse(text, len, &back, reason, sizeof(reason)), 0);
        free(text);
        assert_true(wire_locate_equal(&l, &back));
        back.chain[8].bytes[9] ^= 1;
        assert_false(wire_locate_equal(&l, &back)); /* values compared */
        back.chain[8].bytes[9] ^= 1;
        wire_set_bit(back.chain_verified, 8);
        assert_false(wire_locate_equal(&l, &back)); /* verified bits compared */
        back.chain_verified[1] = 0;
        back.chain_known[0] &= (uint8_t)~1u;
        assert_false(wire_locate_equal(&l, &back)); /* known bits compared */
        wire_locate_free(&back);
        /* A verified bit without a value is not built; a value for the last chunk is refused. */
        wire_set_bit(l.chain_verified, 5);
        assert_int_equal(wire_locate_build(&l, &text, &len), 0);
        assert_non_null(strstr(text, "\"chain_verified\":[[3,4]]"));
        free(text);
        wire_set_bit(l.chain_known, 9);
        text = NULL;
        assert_int_equal(wire_locate_build(&l, &text, &len), -EINVAL);
        assert_null(text);
        free(l.chain);
        l.chain = NULL; /* known bits without values */
        l.chain_known[1] = 0;
        assert_int_equal(wire_locate_build(&l, &text, &len), -EINVAL);
        wire_locate_free(&l);

        static const struct {
                const char *body, *want;
        } bad[] = {
                {LOC(",\"chain\":{}"), "chain"},
                {LOC(",\"chain\":[" PAIR(9, HEX1) "]"), "chain value 0"}, /* the last chunk */
                {LOC(",\"chain\":[" PAIR(10, HEX1) "]"), "chain value 0"},
                {LOC(",\"chain\":[" PAIR(3, HEX1) "," PAIR(3, HEX1) "]"), "chain value 1"},
                {LOC(",\"chain\":[" PAIR(4, HEX1) "," PAIR(3, HEX1) "]"), "chain value 1"},
                {LOC(",\"chain\":[" PAIR(3, HEXU) "]"), "chain value 0"},
                {LOC(",\"chain\":[" PAIR(3, "sha256:" HEX1) "]"), "chain value 0"},
                {LOC(",\"chain\":[" PAIR(3, HEX1) "],\"chain_verified\":[[3,5]]"),
                 "without a chain value"},
                {LOC(",\"chain_verified\":[[0,1]]"), "without a chain value"},
                /* A digest does not make a chain value verified, nor the other way round. */
                {LOC(",\"digests\":[" PAIR(2, HEX1) "],\"chain_verified\":[[2,3]]"),
                 "without a chain value"},
                {LOC(",\"chain\":[" PAIR(2, HEX1) "],\"verified\":[[2,3]]"), "without a digest"},
                {LOC(",\"chain\":[" PAIR(2, HEX1) "],\"chain_verified\":{}"), "chain_verified"},
                {"{\"digest\":\"sha256:" HEX2 "\",\"size\":4,\"source\":\"" SRC
                 "\",\"chunk_size\":4,\"chain\":[" PAIR(0, HEX1) "]}",
                 "too many chain values"},
                {"{\"digest\":\"sha256:" HEX2 "\",\"size\":0,\"source\":\"" SRC
                 "\",\"chunk_size\":4,\"chain\":[" PAIR(0, HEX1) "]}",
                 "too many chain values"},
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                expect_locate_err(bad[i].body, bad[i].want);
}

/* The boot id of an announce: optional, 1 .. 2^63-1, built back when set. */
static void test_announce_boot(void **state) {
        struct wire_announce a;
        char *text = NULL;
        size_t len = 0;

        (void)state;
        parse_announce_ok("{\"node\":\"10.0.0.2:5001\",\"chunk_size\":4,\"boot\":9007199254740993,"
                          "\"blobs\":[]}",
                          &a);
        assert_true(a.boot == 9007199254740993ull);
        assert_int_equal(wire_announce_build(&a, &text, &len), 0);
        assert_non_null(strstr(text, "\"boot\":9007199254740993"));
        free(text);
        a.boot = 0; /* not sent */
        assert_int_equal(wire_announce_build(&a, &text, &len), 0);
        assert_null(strstr(text, "boot"));
        free(text);
        a.boot = (uint64_t)INT64_MAX + 1;
        assert_int_equal(wire_announce_build(&a, &text, &len), -EINVAL);
        wire_announce_free(&a);
        parse_announce_ok("{\"node\":\"10.0.0.2:5001\",\"chunk_size\":4,\"blobs\":[]}", &a);
        assert_true(a.boot == 0);
        wire_announce_free(&a);
        expect_announce_err("{\"node\":\"10.0.0.2:5001\",\"chunk_size\":4,\"boot\":0,\"blobs\":[]}",
                            "boot");
        expect_announce_err(
                "{\"node\":\"10.0.0.2:5001\",\"chunk_size\":4,\"boot\":\"1\",\"blobs\":[]}",
                "boot");
        expect_announce_err(
                "{\"node\":\"10.0.0.2:5001\",\"chunk_size\":4,\"boot\":-1,\"blobs\":[]}", "boot");
}

#define IDXREC(layer, index, size)                                                                 \
        "{\"layer\":\"sha256:" layer "\",\"index\":\"sha256:" index "\",\"size\":" #size "}"
#define ANNIDX(recs)                                                                               \
        "{\"node\":\"10.0.0.2:5001\",\"chunk_size\":4,\"blobs\":[],\"indexes\":[" recs "]}"

/* Layer index records in an announce: optional (an old announce has none, and an old parser
 * ignores them), exact text, round trip, every field checked. */
static void test_announce_indexes(void **state) {
        struct wire_announce a, back;
        struct wire_index x[2];
        char reason[256], *text = NULL;
        size_t len = 0;

        (void)state;
        assert_int_equal(digest_from_hex(HEX1, DIGEST_HEX_LEN, &x[0].layer), 0);
        assert_int_equal(digest_from_hex(HEX2, DIGEST_HEX_LEN, &x[0].index), 0);
        x[0].size = 4096;
        x[1] = (struct wire_index){.layer = x[0].index, .index = x[0].layer, .size = INT64_MAX};
        a = (struct wire_announce){
                .node = "10.0.0.2:5001", .chunk_size = 4, .nindexes = 2, .indexes = x};
        assert_int_equal(wire_announce_build(&a, &text, &len), 0);
        assert_string_equal(
                text, ANNIDX(IDXREC(HEX1, HEX2, 4096) "," IDXREC(HEX2, HEX1, 9223372036854775807)));
        assert_int_equal(wire_announce_parse(text, len, &back, reason, sizeof(reason)), 0);
        assert_true(wire_announce_equal(&a, &back));
        assert_int_equal(back.nindexes, 2);
        assert_true(wire_index_equal(&back.indexes[1], &x[1]));
        back.indexes[1].size--;
        assert_false(wire_announce_equal(&a, &back));
        wire_announce_free(&back);
        assert_null(back.indexes);
        free(text);

        /* Not sent when there are none: what an old home gets is what it always got. */
        a.nindexes = 0;
        assert_int_equal(wire_announce_build(&a, &text, &len), 0);
        assert_null(strstr(text, "indexes"));
        free(text);
        parse_announce_ok("{\"node\":\"10.0.0.2:5001\",\"chunk_size\":4,\"blobs\":[]}", &a);
        assert_int_equal(a.nindexes, 0);
        assert_null(a.indexes);
        wire_announce_free(&a);
        parse_announce_ok(ANNIDX(""), &a); /* an empty list is no list */
        assert_int_equal(a.nindexes, 0);
        wire_announce_free(&a);
        /* Unknown keys inside a record are ignored, as everywhere. */
        parse_announce_ok(ANNIDX("{\"layer\":\"sha256:" HEX1 "\",\"index\":\"sha256:" HEX2
                                 "\",\"size\":1,\"spans\":7}"),
                          &a);
        assert_int_equal(a.nindexes, 1);
        assert_true(a.indexes[0].size == 1);
        wire_announce_free(&a);

        /* The builder refuses what the parser would. */
        x[0].size = 0;
        a = (struct wire_announce){
                .node = "10.0.0.2:5001", .chunk_size = 4, .nindexes = 1, .indexes = x};
        assert_int_equal(wire_announce_build(&a, &text, &len), -EINVAL);
        x[0].size = (uint64_t)INT64_MAX + 1;
        assert_int_equal(wire_announce_build(&a, &text, &len), -EINVAL);
        a.indexes = NULL;
        assert_int_equal(wire_announce_build(&a, &text, &len), -EINVAL);
        a.nindexes = WIRE_MAX_INDEXES + 1;
        a.indexes = x;
        assert_int_equal(wire_announce_build(&a, &text, &len), -EINVAL);

        expect_announce_err("{\"node\":\"10.0.0.2:5001\",\"chunk_size\":4,\"blobs\":[],"
                            "\"indexes\":{}}",
                            "indexes");
        expect_announce_err(ANNIDX(IDXREC(HEX1, HEX2, 0)), "index 0");
        expect_announce_err(ANNIDX(IDXREC(HEX1, HEX2, 1) "," IDXREC(HEX1, HEX2, -5)), "index 1");
        expect_announce_err(ANNIDX(IDXREC(HEX1, HEX2, 9223372036854775808)), "too big");
        expect_announce_err(ANNIDX(IDXREC(HEX1, HEX2, "7")), "index 0");
        expect_announce_err(ANNIDX(IDXREC(HEXU, HEX2, 1)), "index 0"); /* not canonical hex */
        expect_announce_err(ANNIDX("{\"layer\":\"sha256:" HEX1 "\",\"size\":1}"), "index 0");
        expect_announce_err(ANNIDX("[1,2]"), "index 0");
        /* A blob error still comes first and frees the records parsed so far. */
        expect_announce_err("{\"node\":\"10.0.0.2:5001\",\"chunk_size\":4,\"blobs\":[],"
                            "\"indexes\":[" IDXREC(HEX1, HEX2, 1) ",7]}",
                            "index 1");
}

/* More than WIRE_MAX_INDEXES records are refused before anything is allocated for them. */
static void test_announce_indexes_limit(void **state) {
        size_t rec = strlen(IDXREC(HEX1, HEX2, 1)) + 1, cap = rec * (WIRE_MAX_INDEXES + 2) + 256;
        char *body = malloc(cap);
        struct wire_announce a;
        char reason[256];
        size_t n;

        (void)state;
        assert_non_null(body);
        for (unsigned want = WIRE_MAX_INDEXES; want <= WIRE_MAX_INDEXES + 1; want++) {
                n = (size_t)snprintf(body, cap,
                                     "{\"node\":\"10.0.0.2:5001\",\"chunk_size\":4,\"blobs\":[],"
                                     "\"indexes\":[");
                for (unsigned i = 0; i < want; i++)
                        n += (size_t)snprintf(body + n, cap - n, "%s%s", i ? "," : "",
                                              IDXREC(HEX1, HEX2, 1));
                n += (size_t)snprintf(body + n, cap - n, "]}");
                int r = wire_announce_parse(body, n, &a, reason, sizeof(reason));
                if (want == WIRE_MAX_INDEXES) {
                        assert_int_equal(r, 0);
                        assert_int_equal(a.nindexes, WIRE_MAX_INDEXES);
                        wire_announce_free(&a);
                } else {
                        assert_int_equal(r, -EINVAL);
                        assert_non_null(strstr(reason, "too many indexes"));
                }
        }
        free(body);
}

/* The index answer: exact text, round trip, refusals. */
static void test_index_answer(void **state) {
        struct wire_index x, back, orig;
        char reason[256] = "", *text = NULL;
        size_t len = 0;

        (void)state;
        assert_int_equal(digest_from_hex(HEX1, DIGEST_HEX_LEN, &x.layer), 0);
        assert_int_equal(digest_from_hex(HEX2, DIGEST_HEX_LEN, &x.index), 0);
        x.size = 123456;
        assert_int_equal(wire_index_build(&x, &text, &len), 0);
        assert_string_equal(text, IDXREC(HEX1, HEX2, 123456));
        assert_int_equal(len, strlen(text));
        assert_int_equal(wire_index_parse(text, len, &back, reason, sizeof(reason)), 0);
        assert_true(wire_index_equal(&x, &back));
        free(text);
        x.size = 0;
        assert_int_equal(wire_index_build(&x, &text, &len), -EINVAL);

        static const char *bad[] = {
                IDXREC(HEX1, HEX2, 0),
                IDXREC(HEX1, HEX2, 9223372036854775808),
                "{\"layer\":\"sha256:" HEX1 "\",\"size\":1}",
                "{\"layer\":\"sha256:" HEX1 "\",\"index\":\"md5:" HEX2 "\",\"size\":1}",
                "[]",
                "{\"layer\":\"sha256:" HEX1 "\",\"index\":\"sha256:" HEX2 "\",\"size\":1",
                "{\"layer\":\"sha256:" HEX1 "\",\"layer\":\"sha256:" HEX1
                "\",\"index\":\"sha256:" HEX2 "\",\"size\":1}",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                memset(&orig, 0x5a, sizeof(orig));
                back = orig;
                reason[0] = '\0';
                if (wire_index_parse(bad[i], strlen(bad[i]), &back, reason, sizeof(reason)) !=
                    -EINVAL)
                        fail_msg("wire_index_parse(%s) accepted", bad[i]);
                check_reason(reason);
                assert_memory_equal(&back, &orig, sizeof(back));
        }
        /* Unknown keys are ignored. */
        const char *ok = "{\"layer\":\"sha256:" HEX1 "\",\"index\":\"sha256:" HEX2
                         "\",\"size\":9,\"holders\":3}";
        assert_int_equal(wire_index_parse(ok, strlen(ok), &back, reason, sizeof(reason)), 0);
        assert_true(back.size == 9);
}

/* The announce reply (issue 18): what a home builds parses back; an older home's "ok\n" and a
 * body without "full" are empty replies; malformed entries are refused whole. */
static void test_announce_reply(void **state) {
        struct wire_reply r = {0}, p;
        struct digest d1, d2;
        char *body = NULL;
        size_t len = 0;

        (void)state;
        memset(&d1, 0x11, sizeof(d1));
        memset(&d2, 0x22, sizeof(d2));
        assert_int_equal(wire_reply_add(&r, &d1, 625), 0);
        assert_int_equal(wire_reply_add(&r, &d2, 1), 0);
        assert_int_equal(wire_reply_build(&r, &body, &len), 0);
        assert_int_equal(wire_reply_parse(body, len, &p), 0);
        assert_int_equal(p.nfull, 2);
        assert_true(digest_equal(&p.full[0].digest, &d1) && p.full[0].retry_ms == 625);
        assert_true(digest_equal(&p.full[1].digest, &d2) && p.full[1].retry_ms == 1);
        wire_reply_free(&p);
        free(body);
        wire_reply_free(&r);

        assert_int_equal(wire_reply_parse("ok\n", 3, &p), 0);
        assert_int_equal(p.nfull, 0);
        assert_int_equal(wire_reply_parse("{}", 2, &p), 0);
        assert_int_equal(p.nfull, 0);
        const char *bad[] = {
                "{\"full\":3}",
                "{\"full\":[{\"digest\":\"sha256:00\",\"retry_ms\":5}]}",
                "{\"full\":[{\"digest\":\"sha256:"
                "1111111111111111111111111111111111111111111111111111111111111111\","
                "\"retry_ms\":0}]}",
                "{\"full\":[{\"digest\":\"sha256:"
                "1111111111111111111111111111111111111111111111111111111111111111\","
                "\"retry_ms\":-4}]}",
                "{\"full\":[[]]}",
                "{\"full\":[], \"full\":[]}",
                "{\"full\":[",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                assert_int_equal(wire_reply_parse(bad[i], strlen(bad[i]), &p), -EINVAL);
                assert_int_equal(p.nfull, 0);
                assert_null(p.full);
        }
        r = (struct wire_reply){0};
        assert_int_equal(wire_reply_add(&r, &d1, 0), 0);
        assert_int_equal(wire_reply_build(&r, &body, &len), -EINVAL);
        wire_reply_free(&r);

        /* "covered" (issue 18): the holders' chunks go with the entry, as ranges; an older
         * sender reads "full" alone, so a reply of covered entries only still has "full" */
        uint8_t map[2] = {0x0f, 0x02}; /* chunks 0-3 and 9 of 10 */
        r = (struct wire_reply){0};
        assert_int_equal(wire_reply_add_covered(&r, &d2, 40, map, 10), 0);
        assert_int_equal(wire_reply_build(&r, &body, &len), 0);
        assert_non_null(strstr(body, "\"full\":[]"));
        assert_non_null(strstr(body, "\"present\":[[0,4],[9,10]]"));
        assert_int_equal(wire_reply_parse(body, len, &p), 0);
        assert_int_equal(p.nfull, 1);
        assert_true(digest_equal(&p.full[0].digest, &d2) && p.full[0].retry_ms == 40);
        assert_int_equal(p.full[0].nchunks, 10);
        assert_memory_equal(p.full[0].covered, map, 2);
        wire_reply_free(&p);
        free(body);
        wire_reply_free(&r);
        /* at most WIRE_REPLY_MAX_RANGES ranges: every other chunk of 1024 is 512 */
        uint8_t comb[128];
        memset(comb, 0x55, sizeof(comb));
        r = (struct wire_reply){0};
        assert_int_equal(wire_reply_add_covered(&r, &d2, 40, comb, 1024), -EINVAL);
        assert_int_equal(wire_reply_ranges(comb, 1024, 1000), 512);
        assert_int_equal(wire_reply_ranges(map, 10, 64), 2);
        assert_int_equal(r.nfull, 0);
        const char *bad_cov[] = {
                "{\"covered\":[{\"digest\":\"sha256:"
                "1111111111111111111111111111111111111111111111111111111111111111\","
                "\"retry_ms\":5,\"present\":[[0,1]]}]}", /* no "chunks" */
                "{\"covered\":[{\"digest\":\"sha256:"
                "1111111111111111111111111111111111111111111111111111111111111111\","
                "\"retry_ms\":5,\"chunks\":4,\"present\":[[0,5]]}]}", /* past the end */
                "{\"covered\":[{\"digest\":\"sha256:"
                "1111111111111111111111111111111111111111111111111111111111111111\","
                "\"retry_ms\":5,\"chunks\":0,\"present\":[]}]}",
                "{\"full\":[],\"covered\":7}",
        };
        for (size_t i = 0; i < sizeof(bad_cov) / sizeof(bad_cov[0]); i++) {
                assert_int_equal(wire_reply_parse(bad_cov[i], strlen(bad_cov[i]), &p), -EINVAL);
                assert_int_equal(p.nfull, 0);
                assert_null(p.full);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_node_ids),
                cmocka_unit_test(test_announce_reply),
                cmocka_unit_test(test_announce_build_exact),
                cmocka_unit_test(test_announce_parse_example),
                cmocka_unit_test(test_announce_round_trip),
                cmocka_unit_test(test_announce_build_refuses),
                cmocka_unit_test(test_announce_parse_rejects),
                cmocka_unit_test(test_announce_parse_limits),
                cmocka_unit_test(test_locate_build_exact),
                cmocka_unit_test(test_locate_round_trip),
                cmocka_unit_test(test_locate_build_refuses),
                cmocka_unit_test(test_locate_parse),
                cmocka_unit_test(test_locate_parse_rejects),
                cmocka_unit_test(test_verified),
                cmocka_unit_test(test_chain_announce),
                cmocka_unit_test(test_chain_locate),
                cmocka_unit_test(test_announce_boot),
                cmocka_unit_test(test_announce_indexes),
                cmocka_unit_test(test_announce_indexes_limit),
                cmocka_unit_test(test_index_answer),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
