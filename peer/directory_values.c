/* A home directory's per-chunk values of a blob (directory.c has the tables and the essay):
 * plain chunk digests (sha256 of a chunk's bytes) and chain values (util/chain.h: the SHA-256
 * state where a chunk ends, so a reader checks chunk i from values i - 1 and i with one hash
 * that also advances its whole-blob verification, issue 15). Each kind is a struct dir_values
 * of its own, under the same rules; the two are never compared with each other (one chunk's
 * digest and its chain value are different numbers), and a chunk may have either or both.
 *
 * Provenance. Each recorded value carries one bit: whether it came from a node that had
 * verified the whole blob (its announce said "verified"). That is the strongest word a home
 * can have short of hashing the bytes itself: those values are of bytes that hashed, whole,
 * to the blob's digest. The rules, per chunk and kind:
 *   - unknown: the first value announced is recorded, with its bit;
 *   - the same value again: recorded, and verified once any announcer was verified;
 *   - a different value, verified, over an unverified one: the verified one replaces it
 *     (the unverified one described bytes that did not verify, or was a lie);
 *   - a different value, unverified, against a verified one: ignored;
 *   - a different value of the same standing (both unverified, or both verified — the
 *     latter means someone lies about verifying): the directory cannot tell which holder
 *     has bad data, so it forgets the value (logged at debug) and readers take the chunk
 *     from the origin, instead of distrusting honest peers on the word of whoever spoke
 *     first. The dispute is remembered while the blob's record lives: otherwise whoever
 *     re-announces first after it (a liar announcing twice a second) would be believed
 *     again. After an unverified dispute only a verified value is recorded; after a
 *     verified one, none.
 * Readers check every peer's bytes against these values (never against the serving peer's
 * own word), and a blob read whole is verified against its own digest in the end.
 *
 * Cost: nothing for a kind a blob never got; from its first value, one block of
 * dri_values_bytes (32.5 bytes a chunk), counted against max_bytes.
 */
#include "peer/directory_int.h"

static void bit_clear(uint8_t *map, uint32_t i) {
        map[i / 8] &= (uint8_t) ~(1u << (i % 8));
}

int dri_values_record(struct directory *dir, const struct dir_blob *b, struct dir_values *s,
                      const char *kind, uint32_t idx, const struct digest *val, bool verified,
                      const char *node) {
        uint32_t n = b->nchunks;

        if (!s->val) {
                s->val = calloc(1, dri_values_bytes(n));
                if (!s->val)
                        return -ENOMEM;
                dir->bytes += dri_values_bytes(n);
        }
        uint8_t *known_map = dri_values_map(s, n, DRI_KNOWN);
        uint8_t *verified_map = dri_values_map(s, n, DRI_VERIFIED);
        bool known = wire_bit(known_map, idx);
        bool was_verified = known && wire_bit(verified_map, idx);
        const char *kept;

        if (known && digest_equal(&s->val[idx], val)) {
                if (verified)
                        wire_set_bit(verified_map, idx);
                return 0;
        }
        if (!known && (wire_bit(dri_values_map(s, n, DRI_DISPUTED_V), idx) ||
                       (wire_bit(dri_values_map(s, n, DRI_DISPUTED), idx) && !verified)))
                return 0; /* disputed: this word is not enough any more */
        if (!known || (verified && !was_verified)) {
                s->val[idx] = *val;
                wire_set_bit(known_map, idx);
                dir->digest_new |= !known; /* a reader may be waiting for it */
                if (verified)
                        wire_set_bit(verified_map, idx);
                else
                        bit_clear(verified_map, idx);
                if (!known)
                        return 0;
                kept = "verified";
        } else if (!verified && was_verified) {
                kept = "recorded"; /* the verified value stands */
        } else {
                /* Same standing, different values: neither is believed. Readers then take
                 * the chunk from the origin instead of distrusting honest peers forever on
                 * the word of whoever spoke first; a later announce may set it again, and
                 * the whole-blob check decides in the end. */
                bit_clear(known_map, idx);
                bit_clear(verified_map, idx);
                wire_set_bit(dri_values_map(s, n, was_verified ? DRI_DISPUTED_V : DRI_DISPUTED),
                             idx);
                kept = "none";
        }
        char hex[DIGEST_HEX_LEN + 1];

        digest_to_hex(&b->digest, hex);
        log_debug("directory chunk value conflict kind=%s blob=%s chunk=%" PRIu32
                  " node=%s announced_verified=%d kept=%s",
                  kind, hex, idx, node, (int)verified, kept);
        return 0;
}

void dri_values_free(struct directory *dir, struct dir_values *s, uint32_t nchunks) {
        if (!s->val)
                return;
        dir->bytes -= dri_values_bytes(nchunks);
        free(s->val);
        s->val = NULL;
}

int dri_values_copy(const struct dir_values *s, uint32_t nchunks, uint32_t from, uint32_t end,
                    bool always, struct digest **ret_val, uint8_t **ret_known,
                    uint8_t **ret_verified) {
        size_t bytes = dri_bitmap_bytes(nchunks);

        if (!s->val && !always)
                return 0;
        struct digest *val = calloc(nchunks ? nchunks : 1, sizeof(*val));
        uint8_t *known = calloc(1, bytes), *verified = calloc(1, bytes);

        if (!val || !known || !verified) {
                free(val);
                free(known);
                free(verified);
                return -ENOMEM;
        }
        if (s->val && from == 0 && end == nchunks) { /* the whole picture: no bit by bit */
                memcpy(val, s->val, (size_t)nchunks * sizeof(*val));
                memcpy(known, dri_values_map(s, nchunks, DRI_KNOWN), bytes);
                memcpy(verified, dri_values_map(s, nchunks, DRI_VERIFIED), bytes);
        } else if (s->val) {
                const uint8_t *v_map = dri_values_map(s, nchunks, DRI_VERIFIED);

                for (uint32_t c = from; c < end; c++) {
                        if (!dri_values_known(s, nchunks, c))
                                continue;
                        val[c] = s->val[c];
                        wire_set_bit(known, c);
                        if (wire_bit(v_map, c))
                                wire_set_bit(verified, c);
                }
        }
        *ret_val = val;
        *ret_known = known;
        *ret_verified = verified;
        return 0;
}
