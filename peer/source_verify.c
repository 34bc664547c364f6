/* Checking what peers sent. A chunk whose digest (from a home that is not the sender) is known
 * when its transfer starts is hashed as its bytes arrive, on the client's thread, and checked
 * when its last byte is in (src_hash_*): the hash no longer waits for the whole chunk and then
 * for a verifier thread to take it (issue 15: about 1 ms of a 4 ms first byte), and costs the
 * same one hash per chunk. The hash state belongs to the transfer and covers exactly the bytes
 * in its buffer: a transfer that fails, and one that starts over, start with a new one.
 * CONFIRM: bytes whose only digest is their sender's word are held while the other homes are
 * asked for the chunk's digest, round after round up to digest_wait_ms, then checked or
 * dropped. The verifiers: VERIFIERS threads hash what was not hashed on the way (CONFIRM's
 * held bytes, a chunk whose hashing failed); a good chunk's job ends on the verifier, a bad one
 * goes back to the client's thread, which distrusts the sender for the blob and tries the next
 * source. Costs one chunk buffer per held or queued chunk and one hash context per chunk
 * transfer; the queue is bounded by the transfers that can run at once.
 * Issue 15: "a digest" above is either of two checks. A chain step (util/chain.h) hashes the
 * chunk from chunk idx - 1's chain value and must end at idx's (at the blob digest for the last
 * chunk); it is preferred, since the engine then takes the same hash as a step of the blob's
 * verification instead of hashing the chunk again. Or the chunk's plain sha256. Either is only
 * a check when the home that gave it is not the sender (src_check_of); a mismatch of either is
 * the same corrupt chunk. */
#include "peer/source_int.h"

int src_verify_submit(struct source *s, struct job *j, uint8_t *buf, const char *peer,
                      uint64_t ttfb_us) {
        struct verify_item *v = calloc(1, sizeof(*v));
        if (!v) {
                free(buf);
                return -ENOMEM;
        }
        v->job = j;
        v->buf = buf;
        v->kind = src_check_of(j, peer);
        v->want = v->kind == CHECK_CHAIN ? j->chain : j->sha;
        v->want_prev = j->chain_prev;
        v->ttfb_us = ttfb_us;
        if (v->kind == CHECK_NONE) { /* the callers check first: nothing to check it by */
                free(buf);
                free(v);
                return -EINVAL;
        }
        snprintf(v->peer, sizeof(v->peer), "%s", peer);
        pthread_mutex_lock(&s->vq_lock);
        *s->vq_tail = v;
        s->vq_tail = &v->next;
        pthread_cond_signal(&s->vq_cond);
        pthread_mutex_unlock(&s->vq_lock);
        return 0;
}

void src_confirm_start(struct source *s, struct job *j) {
        j->phase = PH_CONFIRM;
        j->confirm_next = 0;
        j->confirm_round = 0;
        j->confirm_sent_ms = 0;
        j->confirm_until_ms = now_ms() + s->cfg.digest_wait_ms;
        if (j->confirm_until_ms > j->deadline_ms)
                j->confirm_until_ms = j->deadline_ms;
        src_next_confirm(s, j);
}

/* CONFIRM: whether answer L (from HOME, which is not the sender of the held bytes) fits J and
 * checks its held chunk (a digest, or chain values); then the bytes are checked by it. */
static bool confirm_found(struct source *s, struct job *j, const struct wire_locate *l,
                          const char *home) {
        if (!src_answer_fits(s, j, l) || !src_answer_checks(j, l))
                return false;
        src_take_checks(j, l, home);
        if (!src_checkable(j, j->held_peer))
                return false; /* cannot happen (HOME is not the sender), but never unchecked */
        src_stat_add(s, &s->stats.confirmed, 1);
        uint8_t *buf = j->held;
        j->held = NULL;
        j->phase = PH_PEERS;
        if (src_verify_submit(s, j, buf, j->held_peer, j->held_ttfb_us) < 0) {
                src_stat_add(s, &s->stats.peer_failures, 1);
                src_next_candidate(s, j);
        }
        return true;
}

/* CONFIRM: asks the next home (not the sender of the held bytes) for the chunk's digest;
 * after a round without one, pauses and asks again until confirm_until_ms, then gives the
 * bytes up as unchecked.
 *
 * Issue 18: the question asks the home to hold it until an announce brings the digest
 * (X-P2PBlobs-Wait; httpd.h, dir_wait_digest), for half of digest_wait_ms at most, so a
 * home that never hears the claimant's announce still leaves time to ask another. A round
 * ends at the first answer; the next starts CONFIRM_POLL_MS after this round's question
 * left: at once after a held answer, after the poll interval after one answered at once (a
 * home at its cap of waiters, or of an older version), so a reader asks a home at most once
 * per CONFIRM_POLL_MS whatever the homes do. Polling every 50 ms was 2.1-6.1 questions per
 * confirmed chunk in swarm16 (bench/RESULTS.md, Scale). */
void src_next_confirm(struct source *s, struct job *j) {
        char self[PEER_ID_MAX];
        if (members_self(s->cfg.members, self, sizeof(self)) < 0)
                self[0] = '\0';
        uint64_t now = now_ms();
        if (now < j->not_before_ms) {
                src_job_later(s, j);
                return;
        }
        bool any = false; /* a home other than the sender exists: waiting may pay */
        for (unsigned i = 0; i < j->nhomes && !any; i++)
                any = strcmp(j->homes[i], j->held_peer) != 0;
        while (any && j->confirm_next < j->nhomes && now < j->confirm_until_ms) {
                const char *home = j->homes[(j->confirm_round + j->confirm_next++) % j->nhomes];
                if (strcmp(home, j->held_peer) == 0)
                        continue; /* its word about its own bytes is what we lack */
                if (self[0] && strcmp(home, self) == 0) {
                        struct wire_locate l;
                        if (dir_locate(s->cfg.dir, &j->digest, NULL, j->idx, now, &l) == 0) {
                                bool found = confirm_found(s, j, &l, self);
                                wire_locate_free(&l);
                                if (found)
                                        return;
                        }
                        continue;
                }
                if (!self[0] || !members_usable(s->cfg.members, home))
                        continue;
                uint64_t wait = j->confirm_until_ms - now, half = s->cfg.digest_wait_ms / 2;
                if (half < CONFIRM_POLL_MS)
                        half = CONFIRM_POLL_MS;
                if (wait > half)
                        wait = half;
                if (wait > HTTPD_MAX_WAIT_MS)
                        wait = HTTPD_MAX_WAIT_MS;
                j->confirm_wait_ms = wait;
                if (src_xfer_start(s, j, X_DIGEST, home, false, self) == 0) {
                        j->confirm_sent_ms = now;
                        pthread_mutex_lock(&s->lock);
                        s->stats.locates++;
                        s->stats.confirm_queries++;
                        pthread_mutex_unlock(&s->lock);
                        return;
                }
        }
        /* The next round: CONFIRM_POLL_MS after this round's question left (at once after a
         * held answer), or from now when none left; not for the last CONFIRM_POLL_MS (a
         * question that could wait only a moment is not worth its message). */
        uint64_t next = (j->confirm_sent_ms ? j->confirm_sent_ms : now) + CONFIRM_POLL_MS;
        if (next <= now)
                next = now + 1;
        if (any && next + CONFIRM_POLL_MS < j->confirm_until_ms) {
                j->confirm_next = 0; /* another round, once the claimant had time to announce */
                j->confirm_round++;
                j->confirm_sent_ms = 0;
                j->not_before_ms = next;
                src_job_later(s, j);
                return;
        }
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(&j->digest, hex);
        log_debug("peer chunk refused unchecked peer=%s digest=sha256:%s chunk=%" PRIu32
                  " why=\"no home other than the sender knows its digest\"",
                  j->held_peer, hex, j->idx);
        free(j->held);
        j->held = NULL;
        j->confirm_failed = true;
        j->phase = PH_PEERS;
        pthread_mutex_lock(&s->lock);
        s->stats.peer_failures++;
        s->stats.peer_unchecked++;
        pthread_mutex_unlock(&s->lock);
        src_next_candidate(s, j);
}

void src_digest_done(struct source *s, struct xfer *x, const struct http_response *r) {
        struct job *j = x->job;
        struct wire_locate l;
        int took = src_answer_take(s, x, r, &l);
        if (took < 0)
                return;
        if (took == 0) {
                bool found = confirm_found(s, j, &l, x->peer);
                wire_locate_free(&l);
                if (found)
                        return;
                /* A home answered without it: the others learn digests from the same
                 * announces (the claimant sends them to every home at once), so this round
                 * ends here rather than asking each in turn; the next one starts at the next
                 * home (one that is down or missed an announce is not the only one asked).
                 * Each round asked every home: 5.4 and 6.1 locates per confirmed chunk, 65%
                 * and 68% of all locates, in two simultaneous 16-node waves
                 * (bench/sim/swarm16.py); one home a round: 2.1 and 4.1. */
                j->confirm_next = j->nhomes;
        }
        src_next_confirm(s, j);
}

/* Any thread: J's chunk BUF (owned) from PEER passed check CHK: J ends with it. */
static void chunk_good(struct source *s, struct job *j, uint8_t *buf, const char *peer,
                       uint64_t ttfb_us, const struct chunk_check *chk) {
        members_report_success(s->cfg.members, peer, ttfb_us, j->len);
        pthread_mutex_lock(&s->lock);
        s->stats.peer_bytes += j->len;
        s->stats.peer_chunks++;
        pthread_mutex_unlock(&s->lock);
        src_job_done(j, 0, NULL, buf, j->len, chk);
}

/* Ends chain hash C over J's chunk, begun from PREV: whether it reached WANT (J's chain value,
 * or the blob digest for the last chunk), and in *RET what that checked. */
static bool chain_end(struct chain_hash *c, const struct job *j, const struct digest *prev,
                      const struct digest *want, struct chunk_check *ret) {
        bool last = j->off + j->len >= j->size;
        struct digest got;
        if (last)
                chain_finish(c, &got);
        else
                chain_value(c, &got);
        *ret = (struct chunk_check){.has_chain = true, .chain_prev = *prev, .chain = *want};
        /* From the initial state to the end of the blob, the step is a plain sha256 of the
         * bytes too: the engine may use it as one. */
        ret->has_sha = j->idx == 0 && last;
        ret->sha = got;
        return digest_equal(&got, want);
}

static void hash_drop(struct xfer *x) {
        EVP_MD_CTX_free(x->md);
        x->md = NULL;
        x->chaining = false;
}

void src_hash_begin(struct xfer *x, const struct job *j) {
        enum check_kind k = src_check_of(j, x->peer);
        x->chaining = false;
        if (k != CHECK_SHA) {
                hash_drop(x); /* NONE: CONFIRM may find a digest later, the verifiers hash then */
                if (k == CHECK_CHAIN) {
                        /* The state is on the transfer and starts again with each chunk:
                         * nothing of another chunk's bytes can reach this one's step. */
                        chain_begin(&x->ch, j->idx ? &j->chain_prev : NULL, j->off);
                        x->chaining = true;
                        x->want_prev = j->chain_prev;
                        x->want = j->chain;
                }
                return;
        }
        /* One context per transfer, reset for each chunk of a run: no state of an earlier
         * chunk (or transfer) can leak into this one's digest. */
        if (!x->md)
                x->md = EVP_MD_CTX_new();
        if (x->md && EVP_DigestInit_ex(x->md, EVP_sha256(), NULL) != 1)
                hash_drop(x); /* the verifiers hash it whole instead */
        x->want = j->sha;
}

void src_hash_add(struct xfer *x, const uint8_t *data, size_t n) {
        if (x->chaining)
                chain_add(&x->ch, data, n);
        else if (x->md && EVP_DigestUpdate(x->md, data, n) != 1)
                hash_drop(x);
}

int src_hash_accept(struct source *s, struct xfer *x, struct job *j, uint8_t *buf,
                    uint64_t ttfb_us) {
        struct digest got;
        unsigned dl = 0;
        struct chunk_check chk;
        bool good;
        /* The hash was begun for what J is checked by now (a home's answer that came while the
         * transfer ran may have changed it; then the verifiers check by the new one). */
        enum check_kind k = src_check_of(j, x->peer);
        if (x->chaining) {
                if (k != CHECK_CHAIN || !digest_equal(&x->want, &j->chain) ||
                    (j->idx > 0 && !digest_equal(&x->want_prev, &j->chain_prev))) {
                        hash_drop(x);
                        return 0;
                }
                good = chain_end(&x->ch, j, &x->want_prev, &x->want, &chk);
                hash_drop(x);
        } else {
                if (!x->md || k != CHECK_SHA || !digest_equal(&x->want, &j->sha)) {
                        hash_drop(x);
                        return 0;
                }
                bool ok = EVP_DigestFinal_ex(x->md, got.bytes, &dl) == 1 && dl == DIGEST_LEN;
                hash_drop(x);
                if (!ok)
                        return 0;
                good = digest_equal(&got, &x->want);
                chk = (struct chunk_check){.has_sha = true, .sha = got};
        }
        if (good) {
                chunk_good(s, j, buf, x->peer, ttfb_us, &chk);
                return 1;
        }
        free(buf);
        snprintf(j->bad_peer, sizeof(j->bad_peer), "%s", x->peer);
        src_corrupt_returned(s, j); /* we are on the client's thread, which that wants */
        return -EBADMSG;
}

/* A verifier: checks received chunks. A good one finishes its job here (the done callback may
 * run on any verifier); a bad one goes back to the client's thread, which owns the distrust
 * table and the next-source logic. */
void *src_verify_main(void *arg) {
        struct source *s = arg;
        pthread_mutex_lock(&s->vq_lock);
        for (;;) {
                struct verify_item *v = s->vq_head;
                if (!v) {
                        if (s->vstop)
                                break;
                        pthread_cond_wait(&s->vq_cond, &s->vq_lock);
                        continue;
                }
                s->vq_head = v->next;
                if (!s->vq_head)
                        s->vq_tail = &s->vq_head;
                pthread_mutex_unlock(&s->vq_lock);

                struct job *j = v->job;
                struct chunk_check chk = {.has_sha = true};
                bool good;
                if (v->kind == CHECK_CHAIN) {
                        struct chain_hash c;
                        chain_begin(&c, j->idx ? &v->want_prev : NULL, j->off);
                        chain_add(&c, v->buf, j->len);
                        good = chain_end(&c, j, &v->want_prev, &v->want, &chk);
                } else {
                        digest_sha256(v->buf, j->len, &chk.sha);
                        good = digest_equal(&chk.sha, &v->want);
                }
                if (good) {
                        chunk_good(s, j, v->buf, v->peer, v->ttfb_us, &chk);
                } else {
                        free(v->buf);
                        snprintf(j->bad_peer, sizeof(j->bad_peer), "%s", v->peer);
                        int r = src_return_corrupt(s, j);
                        if (r == -ECANCELED) /* stopping: nobody tries another source */
                                src_job_done(j, r, "shutting down", NULL, 0, NULL);
                        else if (r < 0) /* no room to hand it back: the origin has it */
                                src_hand_to_origin(s, j);
                }
                free(v);
                pthread_mutex_lock(&s->vq_lock);
        }
        pthread_mutex_unlock(&s->vq_lock);
        return NULL;
}

/* The client's thread: a chunk whose bytes did not match; distrust its sender for the blob and
 * try the next source. */
void src_corrupt_returned(struct source *s, struct job *j) {
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(&j->digest, hex);
        log_warning("peer sent a corrupt chunk peer=%s digest=sha256:%s chunk=%" PRIu32
                    " hint=\"not asking it for this blob again\"",
                    j->bad_peer, hex, j->idx);
        src_distrust_add(s, j->bad_peer, &j->digest);
        members_report_failure(s->cfg.members, j->bad_peer, "corrupt chunk");
        src_stat_add(s, &s->stats.peer_corrupt, 1);
        src_lcache_drop(s, &j->digest);
        src_abort_runs(s, j->bad_peer, &j->digest);
        src_next_candidate(s, j);
}
