/* libFuzzer target for peer/wire.c: every input is offered to the three parsers (announce,
 * with its optional layer index records; locate answer; index answer). What they refuse
 * must come with -EINVAL and a lowercase reason (or -ENOMEM); what they accept must build
 * again, parse back to the same thing, and build to the same text a second time (the
 * builders' output is canonical). */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "peer/wire.h"
#include "tests/fuzz/fuzz.h"

static void check_refusal(int r, const char *reason) {
        CHECK(r == -EINVAL || r == -ENOMEM);
        if (r == -EINVAL)
                CHECK(reason[0] >= 'a' && reason[0] <= 'z');
}

static void announce_round_trip(const char *body, size_t size) {
        struct wire_announce a, back;
        char reason[256] = "", *text, *again;
        size_t len, len2;
        int r;

        r = wire_announce_parse(body, size, &a, reason, sizeof(reason));
        if (r < 0) {
                check_refusal(r, reason);
                return;
        }
        CHECK(a.nblobs <= WIRE_MAX_BLOBS && wire_node_id_valid(a.node));
        CHECK(a.nindexes <= WIRE_MAX_INDEXES && (a.nindexes == 0 || a.indexes));
        for (uint32_t i = 0; i < a.nindexes; i++)
                CHECK(a.indexes[i].size >= 1 && a.indexes[i].size <= INT64_MAX);
        for (uint32_t i = 0; i < a.nblobs; i++) /* never the last chunk's chain value */
                for (uint32_t j = 0; j < a.blobs[i].nchain; j++)
                        CHECK(a.blobs[i].chain_idx[j] + 1 < a.blobs[i].nchunks);
        CHECK(wire_announce_build(&a, &text, &len) == 0);
        CHECK(len == strlen(text) && len <= WIRE_MAX_BODY);
        CHECK(wire_announce_parse(text, len, &back, reason, sizeof(reason)) == 0);
        CHECK(wire_announce_equal(&a, &back));
        CHECK(wire_announce_build(&back, &again, &len2) == 0);
        CHECK(len2 == len && memcmp(text, again, len) == 0);
        free(again);
        free(text);
        wire_announce_free(&back);
        wire_announce_free(&a);
}

static void locate_round_trip(const char *body, size_t size) {
        struct wire_locate l, back;
        char reason[256] = "", *text, *again;
        size_t len, len2;
        int r;

        r = wire_locate_parse(body, size, &l, reason, sizeof(reason));
        if (r < 0) {
                check_refusal(r, reason);
                return;
        }
        CHECK(l.nholders <= 2 * WIRE_MAX_HOLDERS && l.nchunks <= WIRE_MAX_CHUNKS);
        CHECK(!l.has_claim || l.claim_chunk < l.nchunks);
        for (uint32_t i = 1; i < l.nholders; i++)
                CHECK(l.holders[i - 1].fetching <= l.holders[i].fetching); /* present first */
        CHECK(!l.chain_known || !l.nchunks || !wire_bit(l.chain_known, l.nchunks - 1));
        for (uint32_t i = 0; l.chain_verified && i < l.nchunks; i++)
                CHECK(!wire_bit(l.chain_verified, i) || wire_bit(l.chain_known, i));
        CHECK(wire_locate_build(&l, &text, &len) == 0);
        CHECK(len == strlen(text) && len <= WIRE_MAX_BODY);
        CHECK(wire_locate_parse(text, len, &back, reason, sizeof(reason)) == 0);
        CHECK(wire_locate_equal(&l, &back));
        CHECK(wire_locate_build(&back, &again, &len2) == 0);
        CHECK(len2 == len && memcmp(text, again, len) == 0);
        free(again);
        free(text);
        wire_locate_free(&back);
        wire_locate_free(&l);
}

static void index_round_trip(const char *body, size_t size) {
        struct wire_index x, back;
        char reason[256] = "", *text, *again;
        size_t len, len2;
        int r;

        r = wire_index_parse(body, size, &x, reason, sizeof(reason));
        if (r < 0) {
                check_refusal(r, reason);
                return;
        }
        CHECK(x.size >= 1 && x.size <= INT64_MAX);
        CHECK(wire_index_build(&x, &text, &len) == 0);
        CHECK(len == strlen(text));
        CHECK(wire_index_parse(text, len, &back, reason, sizeof(reason)) == 0);
        CHECK(wire_index_equal(&x, &back));
        CHECK(wire_index_build(&back, &again, &len2) == 0);
        CHECK(len2 == len && memcmp(text, again, len) == 0);
        free(again);
        free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        /* The parsers take a length, not a C string: no copy, no terminator, so ASan sees
         * any read past the end. */
        announce_round_trip((const char *)data, size);
        locate_round_trip((const char *)data, size);
        index_round_trip((const char *)data, size);
        return 0;
}
