/* A chunk job's LOCATE and PEERS phases (source.c's essay): which homes are asked and in what
 * order (the spread home first, then the first home with a claim, then the others), how an
 * answer becomes candidates (holders before claimants, ranked by the membership), and the
 * fail-over from one candidate to the next and, last, to the origin. Everything here runs on
 * the HTTP client's thread and owns the job while it does; it never blocks (locates of other
 * nodes are requests on the client, our own directory is asked in memory). */
#include "peer/source_int.h"

/* ---- the job's phases ----------------------------------------------------------------------- */

/* Writes the holders in L to the index (for blobctl and post-mortems), at most once per
 * RECORD_INTERVAL_MS per blob: a reader locates every chunk, the index needs far less. */
static void record_locations(struct source *s, const struct wire_locate *l) {
        if (!s->cfg.ix)
                return;
        uint64_t now = now_ms();
        for (unsigned i = 0; i < RECORD_SLOTS; i++)
                if (digest_equal(&s->recorded[i].blob, &l->digest) &&
                    now - s->recorded[i].at_ms < RECORD_INTERVAL_MS)
                        return;
        unsigned slot = s->recorded_next++ % RECORD_SLOTS;
        s->recorded[slot].blob = l->digest;
        s->recorded[slot].at_ms = now;
        int64_t expires = (int64_t)time(NULL) + (int64_t)(s->cfg.location_ttl_ms / 1000);
        for (uint32_t i = 0; i < l->nholders; i++)
                if (!l->holders[i].fetching)
                        idx_put_location(s->cfg.ix, &l->digest, l->holders[i].node,
                                         l->holders[i].present, ((size_t)l->nchunks + 7) / 8,
                                         expires);
}

/* Whether answer L is about J's blob, as J knows it, and covers J's chunk. */
bool src_answer_fits(const struct source *s, const struct job *j, const struct wire_locate *l) {
        return digest_equal(&l->digest, &j->digest) && l->chunk_size == s->cfg.chunk_size &&
               l->nchunks > j->idx && l->size == j->size;
}

/* Whether chunk IDX's chain value is in answer L (NULL-safe: an older home sends none). */
static bool chain_in(const struct wire_locate *l, uint32_t idx) {
        return l->chain_known && idx < l->nchunks && wire_bit(l->chain_known, idx);
}

static bool last_chunk(const struct job *j) {
        return j->off + j->len >= j->size;
}

/* Whether answer L has what a chain step over J's chunk starts and ends at: chunk idx - 1's
 * value (chunk 0 starts from SHA-256's initial state) and idx's (the last chunk ends at the
 * blob digest). */
static bool chain_step_in(const struct job *j, const struct wire_locate *l) {
        bool first = j->idx == 0, last = last_chunk(j);
        if (j->off % 64 || (!last && j->len % 64))
                return false; /* not at SHA-256 block boundaries (a chunk size fs/main.c refuses) */
        return (first || chain_in(l, j->idx - 1)) && (last || chain_in(l, j->idx));
}

/* Issue 15: a chain step checks a chunk with the one hash that also advances the engine's
 * whole-blob verification, so it is taken whenever the answer has both values it needs.
 * Chunk 0 starts from SHA-256's initial state and the last chunk ends at the blob digest:
 * those ends are no home's word, so a one-chunk blob needs no value at all. */
void src_take_checks(struct job *j, const struct wire_locate *l, const char *home) {
        if (l->sha_known && wire_bit(l->sha_known, j->idx)) {
                j->sha = l->sha[j->idx];
                j->sha_known = true;
                snprintf(j->sha_home, sizeof(j->sha_home), "%s", home);
        }
        if (!chain_step_in(j, l))
                return;
        bool first = j->idx == 0, last = last_chunk(j);
        j->chain_prev = first ? (struct digest){0} : l->chain[j->idx - 1];
        j->chain = last ? j->digest : l->chain[j->idx];
        j->chain_known = true;
        snprintf(j->chain_home, sizeof(j->chain_home), "%s", first && last ? "" : home);
}

bool src_answer_checks(const struct job *j, const struct wire_locate *l) {
        return (l->sha_known && wire_bit(l->sha_known, j->idx)) || chain_step_in(j, l);
}

/* J's candidates from answer L (which fits J), in order, and what to check the chunk by, as
 * HOME said it. Leaves J in PEERS, about to try its first candidate. */
void src_plan_job(struct source *s, struct job *j, const struct wire_locate *l, const char *home,
                  const char *self) {
        src_take_checks(j, l, home);
        struct {
                uint64_t key;
                struct candidate c;
        } v[WIRE_MAX_HOLDERS];
        unsigned n = 0;
        for (uint32_t i = 0; i < l->nholders && n < WIRE_MAX_HOLDERS; i++) {
                const struct wire_holder *h = &l->holders[i];
                if (!wire_bit(h->present, j->idx) || strcmp(h->node, self) == 0 ||
                    src_distrusted(s, h->node, &j->digest))
                        continue;
                uint64_t key = members_rank_key(s->cfg.members, h->node);
                if (key == UINT64_MAX)
                        continue; /* down, unknown or self */
                /* Holders before claimants: bytes on disk beat bytes still on the way. */
                v[n].key = h->fetching ? key / 2 + UINT64_MAX / 2 : key / 2;
                snprintf(v[n].c.id, sizeof(v[n].c.id), "%s", h->node);
                v[n].c.claimed = h->fetching;
                n++;
        }
        for (unsigned a = 1; a < n; a++) /* insertion sort: n is small */
                for (unsigned b = a; b > 0 && v[b].key < v[b - 1].key; b--) {
                        __typeof__(v[0]) t = v[b];
                        v[b] = v[b - 1];
                        v[b - 1] = t;
                }
        j->ncand = 0;
        for (unsigned i = 0; i < n && j->ncand < MAX_CANDIDATES; i++)
                j->cand[j->ncand++] = v[i].c;
        j->phase = PH_PEERS;
        j->cand_next = 0;
}

/* Starts the jobs chained on J->run_next one by one (each locates, or uses the cache). */
void src_release_run(struct source *s, struct job *j) {
        struct job *f = j->run_next;
        j->run_next = NULL;
        while (f) {
                struct job *next = f->run_next;
                f->run_next = NULL;
                src_start_job(s, f);
                f = next;
        }
}

/* What HOME told us about J's chunk (answer *L, whose contents may be taken into the cache):
 * candidates, in order, and the expected digest; a run waiting on J is planned from it. */
void src_use_answer(struct source *s, struct job *j, struct wire_locate *l, const char *home,
                    const char *self) {
        if (!src_answer_fits(s, j, l)) {
                log_debug("locate answer does not fit blob chunk=%" PRIu32, j->idx);
                src_to_origin(s, j);
                return;
        }
        record_locations(s, l);
        if (l->has_claim && l->claim_granted && l->claim_chunk == j->idx) {
                src_stat_add(s, &s->stats.claims, 1);
                if (s->cfg.claimed)
                        s->cfg.claimed(s->cfg.claimed_ud, &j->digest, j->idx);
        }
        struct lcache_entry *e = src_lcache_put(s, l, home);
        const struct wire_locate *a = e ? &e->l : l;
        if (j->run_next) {
                src_run_plan(s, j, a, home, self);
                return;
        }
        src_plan_job(s, j, a, home, self);
        src_next_candidate(s, j);
}

void src_next_home(struct source *s, struct job *j) {
        char self[PEER_ID_MAX];
        if (members_self(s->cfg.members, self, sizeof(self)) < 0)
                self[0] = '\0';
        while (j->home_next < j->nhomes) {
                const char *home = j->homes[j->home_next++];
                if (now_ms() >= j->deadline_ms)
                        break;
                if (self[0] && strcmp(home, self) == 0) {
                        struct wire_locate l;
                        src_stat_add(s, &s->stats.locates, 1);
                        int r = dir_locate(s->cfg.dir, &j->digest, self, j->idx, now_ms(), &l);
                        if (r == 0 && (l.nholders > 0 || j->home_next >= j->nhomes)) {
                                src_use_answer(s, j, &l, self, self);
                                wire_locate_free(&l);
                                return;
                        }
                        if (r == 0) {
                                j->probing = true; /* nobody here: maybe elsewhere */
                                wire_locate_free(&l);
                        }
                        continue; /* we know nothing of it: the next home may */
                }
                if (!members_usable(s->cfg.members, home))
                        continue;
                if (!self[0])
                        break; /* we cannot claim without a name: origin */
                int r = src_xfer_start(s, j, X_LOCATE, home, false, self);
                if (r == 0) {
                        src_stat_add(s, &s->stats.locates, 1);
                        return;
                }
        }
        src_to_origin(s, j);
}

enum check_kind src_check_of(const struct job *j, const char *peer) {
        if (j->chain_known && strcmp(j->chain_home, peer) != 0)
                return CHECK_CHAIN;
        if (j->sha_known && strcmp(j->sha_home, peer) != 0)
                return CHECK_SHA;
        return CHECK_NONE;
}

/* Whether J has a digest to check PEER's bytes against that is not PEER's own word. */
bool src_checkable(const struct job *j, const char *peer) {
        return src_check_of(j, peer) != CHECK_NONE;
}

void src_next_candidate(struct source *s, struct job *j) {
        char self[PEER_ID_MAX];
        if (members_self(s->cfg.members, self, sizeof(self)) < 0)
                self[0] = '\0';
        if (now_ms() < j->not_before_ms) {
                src_job_later(s, j);
                return;
        }
        while (j->cand_next < j->ncand) {
                struct candidate *c = &j->cand[j->cand_next];
                if (now_ms() >= j->deadline_ms)
                        break;
                if (!members_usable(s->cfg.members, c->id) ||
                    src_distrusted(s, c->id, &j->digest) ||
                    (j->confirm_failed && !src_checkable(j, c->id))) {
                        j->cand_next++;
                        continue;
                }
                /* Over max_total or max_per_peer, the transfer waits in the client's queue. */
                j->cand_next++;
                if (src_xfer_start(s, j, X_CHUNK, c->id, c->claimed, self) == 0)
                        return;
        }
        src_to_origin(s, j);
}

/* Whether answer L names a source for J's chunk that src_use_answer() would try: a holder or
 * claimant of it, not ourselves, not src_distrusted, not down. */
bool src_answer_has_source(struct source *s, const struct job *j, const struct wire_locate *l,
                           const char *self) {
        if (!src_answer_fits(s, j, l))
                return false;
        for (uint32_t i = 0; i < l->nholders; i++) {
                const struct wire_holder *h = &l->holders[i];
                if (wire_bit(h->present, j->idx) && strcmp(h->node, self) != 0 &&
                    !src_distrusted(s, h->node, &j->digest) &&
                    members_rank_key(s->cfg.members, h->node) != UINT64_MAX)
                        return true;
        }
        return false;
}

/* Whether answer L names a peer (not a claimant, not ourselves, not down) holding chunk IDX. */
static bool held_by_a_peer(struct source *s, const struct wire_locate *l, uint32_t idx,
                           const char *self) {
        if (idx >= l->nchunks)
                return false;
        for (uint32_t i = 0; i < l->nholders; i++) {
                const struct wire_holder *h = &l->holders[i];
                if (!h->fetching && wire_bit(h->present, idx) && strcmp(h->node, self) != 0 &&
                    members_rank_key(s->cfg.members, h->node) != UINT64_MAX)
                        return true;
        }
        return false;
}

/* Issue 18: the readers of a blob spread their "who holds chunk I?" over its homes
 * (rdv_spread), so no home's load grows with the number of readers. Only the first home
 * grants claims, so that "who fetches this chunk from the origin" is decided in one place:
 * a spread home that names nobody sends the job on to the usual path (first home, with a
 * claim), at the cost of a second round trip for chunks nobody holds yet. Every home hears
 * every announce of the blob, so any of them knows the holders. Returns whether the job was
 * taken care of (answered from our own directory, or a locate started). */
static bool spread_locate(struct source *s, struct job *j, const char *self) {
        size_t pick = rdv_spread(self, &j->digest, j->nhomes);
        if (pick == 0 || !self[0])
                return false; /* the first home: ask it with the claim straight away */
        const char *home = j->homes[pick];
        if (strcmp(home, self) == 0) {
                struct wire_locate l;
                src_stat_add(s, &s->stats.locates, 1);
                if (dir_locate(s->cfg.dir, &j->digest, NULL, j->idx, now_ms(), &l) < 0)
                        return false;
                bool found = src_answer_has_source(s, j, &l, self);
                if (found)
                        src_use_answer(s, j, &l, self, self);
                wire_locate_free(&l);
                return found;
        }
        if (!members_usable(s->cfg.members, home))
                return false;
        j->spread = true;
        if (src_xfer_start(s, j, X_LOCATE, home, false, self) < 0) {
                j->spread = false;
                return false;
        }
        src_stat_add(s, &s->stats.locates, 1);
        src_stat_add(s, &s->stats.spread_locates, 1);
        return true;
}

/* Issue 15: when we are one of J's homes, our own directory (asked in memory) hears every
 * announce of the blob as the other homes do, so it may already name a holder of J's chunk
 * and know the chunk's digest: then a question to another home would only add a round trip
 * before the first byte. Only such an answer is taken (our own digests are a check of any
 * peer's bytes); with no holder, or no digest, the homes are asked as usual (claims are
 * granted at the first home). Returns whether the job was planned from it. */
static bool own_answer(struct source *s, struct job *j, const char *self) {
        bool home = false;
        for (unsigned i = 0; i < j->nhomes && !home; i++)
                home = strcmp(j->homes[i], self) == 0;
        struct wire_locate l;
        if (!home || !self[0] || dir_locate(s->cfg.dir, &j->digest, NULL, j->idx, now_ms(), &l) < 0)
                return false;
        bool use = src_answer_has_source(s, j, &l, self) && src_answer_checks(j, &l);
        if (use) {
                src_stat_add(s, &s->stats.locates, 1);
                src_use_answer(s, j, &l, self, self);
        }
        wire_locate_free(&l);
        return use;
}

void src_start_job(struct source *s, struct job *j) {
        if (!s->cfg.members) {
                src_to_origin(s, j);
                return;
        }
        j->nhomes = src_homes_of(s, &j->digest, j->homes);
        j->phase = PH_LOCATE;
        char self[PEER_ID_MAX];
        if (members_self(s->cfg.members, self, sizeof(self)) < 0)
                self[0] = '\0';
        /* A home answered about this blob a moment ago: its answer names the holders of every
         * chunk, and the digests of the chunks after the one it was asked about, so a chunk
         * someone holds whose digest it gave needs no question. Others are asked: the first
         * home grants claims, new holders show up there, and bytes without a digest would
         * wait for one (CONFIRM) after they arrived, a round trip later than a locate. */
        struct lcache_entry *e = self[0] ? src_lcache_get(s, &j->digest) : NULL;
        if (e && src_answer_has_source(s, j, &e->l, self) && src_answer_checks(j, &e->l)) {
                src_stat_add(s, &s->stats.locate_cache_hits, 1);
                if (j->run_next) {
                        src_run_plan(s, j, &e->l, e->home, self);
                        return;
                }
                src_plan_job(s, j, &e->l, e->home, self);
                src_next_candidate(s, j);
                return;
        }
        if (own_answer(s, j, self)) /* plans the run chained on J too */
                return;
        /* A run waits for its first chunk's answer only when a peer held the chunk after it a
         * moment ago: otherwise (a blob new to the cluster, N readers at once) its chunks are
         * claimed one by one at the first home anyway, and waiting would only add a round
         * trip before the other locates start. */
        if (j->run_next) {
                struct lcache_entry *hint = src_lcache_find(s, &j->digest, LCACHE_HINT_MS);
                if (!hint || !held_by_a_peer(s, &hint->l, j->idx + 1, self))
                        src_release_run(s, j);
        }
        if (spread_locate(s, j, self))
                return;
        src_next_home(s, j);
}
