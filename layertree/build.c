/* Finding a layer's index: the store, the peers, the eStargz TOC, or the pass (see the essay
 * in layertree.c for the order and what is checked where; a zstd layer's pass also writes its
 * seekable copy). Runs on the tree's workers, which may block on the engine's reads.
 *
 * Cost: the pass reads the whole blob once, in order, 1 MiB at a time through the engine (with
 * its readahead), and feeds the builder; an index from the store is read whole (at most
 * INDEX_BLOB_MAX), hashed, then decoded; one from a peer, when it has a separate head (version
 * 3), only its head (the first chunk, for most layers): its windows are read as spans are
 * first inflated. */
#include "layertree/layertree_int.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "index/index.h"
#include "index/layers.h"
#include "layertree/spancache.h"
#include "util/log.h"

/* ---- finding an index ----------------------------------------------------------------- */

/* A decoded index must name the layer it was fetched for (a home could hand us another
 * layer's index under this one's name): -EBADMSG, IX freed, and MSG set, when it does not. */
static int index_names_layer(struct layer_index *ix, const struct layer *l, char *msg,
                             size_t msg_len) {
        struct layer_index_info info;
        layer_index_info(ix, &info);
        if (digest_equal(&info.blob_digest, &l->digest) && info.blob_size == l->blob_size)
                return 0;
        layer_index_free(ix);
        snprintf(msg, msg_len, "index blob indexes another layer");
        return -EBADMSG;
}

/* Reads the whole derived blob BLOB_ID (SIZE bytes), checks it hashes to WANT, decodes it and
 * checks it indexes L. 0 and *RET, or -errno with MSG. */
static int load_index_blob(struct ltree *lt, struct layer *l, uint32_t blob_id, uint64_t size,
                           const struct digest *want, struct layer_index **ret, char *msg,
                           size_t msg_len) {
        if (size == 0 || size > INDEX_BLOB_MAX) {
                snprintf(msg, msg_len, "index blob of %" PRIu64 " bytes refused", size);
                return -EFBIG;
        }
        uint8_t *buf = malloc(size);
        if (!buf)
                return -ENOMEM;
        struct engine_stream stream = {0};
        ssize_t n = lt_pread(lt, blob_id, 0, buf, size, &stream);
        int r = 0;
        if (n < 0 || (uint64_t)n != size) {
                snprintf(msg, msg_len, "cannot read the index blob: %s",
                         n < 0 ? strerror((int)-n) : "short");
                r = n < 0 ? (int)n : -EIO;
                goto out_free;
        }
        struct digest got;
        digest_sha256(buf, size, &got);
        if (!digest_equal(&got, want)) { /* before decoding: never parse unchecked bytes */
                snprintf(msg, msg_len, "index blob does not match its digest");
                r = -EBADMSG;
                goto out_free;
        }
        struct layer_index *ix;
        r = layer_index_decode(buf, size, 0, &ix);
        if (r < 0) {
                snprintf(msg, msg_len, "index blob does not decode: %s", strerror(-r));
                goto out_free;
        }
        r = index_names_layer(ix, l, msg, msg_len);
        if (r < 0)
                goto out_free;
        *ret = ix;
out_free:
        free(buf);
        return r;
}

/* Loads only the head of index blob BLOB_ID (SIZE bytes) when it is a version 3 encoding: its
 * first bytes (one chunk, usually) through the engine, decoded and checked to index L; the
 * windows stay in the blob, read as spans are first inflated. -EPROTONOSUPPORT for an older
 * encoding (the caller reads it whole); other -errno with MSG.
 *
 * Trust: the whole-blob digest cannot be checked without the whole blob. The head's chunks
 * are verified as any peer chunk is, against digests from the homes (recorded from the node
 * that built and verified the index), which are the same homes that named the index's digest;
 * the windows' chunks likewise when read, and the engine still verifies the blob whole if
 * every chunk of it lands. */
static int load_index_head(struct ltree *lt, struct layer *l, uint32_t blob_id, uint64_t size,
                           uint32_t chunks, struct layer_index **ret, char *msg, size_t msg_len) {
        /* One engine read inside the blob's first chunk (SIZE / CHUNKS, rounded up, is at most
         * the chunk size; IO_MAX is the engine's largest read), which holds the head of most
         * layers' indexes at the default chunk size; a larger head reads the rest after. */
        uint64_t per_chunk = chunks ? (size + chunks - 1) / chunks : size;
        size_t first = per_chunk < IO_MAX ? (size_t)per_chunk : IO_MAX;
        if (first < LAYER_INDEX_PREFIX)
                first = size < LAYER_INDEX_PREFIX ? (size_t)size : LAYER_INDEX_PREFIX;
        uint64_t head;
        uint8_t *buf = malloc(first ? first : 1);
        if (!buf)
                return -ENOMEM;
        ssize_t n = lt_pread(lt, blob_id, 0, buf, first, NULL);
        int r;
        if (n < 0 || (size_t)n != first) {
                snprintf(msg, msg_len, "cannot read the index blob: %s",
                         n < 0 ? strerror((int)-n) : "short");
                r = n < 0 ? (int)n : -EIO;
                goto out_free;
        }
        r = layer_index_head_len(buf, first, size, &head);
        if (r == -EPROTONOSUPPORT)
                goto out_free;
        if (r < 0) {
                snprintf(msg, msg_len, "index blob header refused: %s", strerror(-r));
                goto out_free;
        }
        if (head > INDEX_BLOB_MAX) {
                snprintf(msg, msg_len, "index head of %" PRIu64 " bytes refused", head);
                r = -EFBIG;
                goto out_free;
        }
        if (head > first) {
                uint8_t *more = realloc(buf, head);
                if (!more) {
                        r = -ENOMEM;
                        goto out_free;
                }
                buf = more;
                n = lt_pread(lt, blob_id, first, buf + first, head - first, NULL);
                if (n < 0 || (uint64_t)n != head - first) {
                        snprintf(msg, msg_len, "cannot read the index head: %s",
                                 n < 0 ? strerror((int)-n) : "short");
                        r = n < 0 ? (int)n : -EIO;
                        goto out_free;
                }
        }
        struct layer_index *ix;
        r = layer_index_decode_head(buf, head, size, 0, &ix);
        if (r < 0) {
                snprintf(msg, msg_len, "index head does not decode: %s", strerror(-r));
                goto out_free;
        }
        r = index_names_layer(ix, l, msg, msg_len);
        if (r < 0)
                goto out_free;
        *ret = ix;
out_free:
        free(buf);
        return r;
}

/* The index recorded in this node's store, when every chunk of its blob is present. */
static int index_from_store(struct ltree *lt, struct layer *l, const struct digest *d,
                            struct layer_index **ret) {
        struct engine_blob_info b;
        if (engine_find(lt->e, d, &b) < 0 || b.chunks_present != b.chunks)
                return -ENOENT;
        char msg[160];
        int r = load_index_blob(lt, l, b.id, b.size, d, ret, msg, sizeof(msg));
        if (r < 0)
                log_debug("stored layer index not used id=%u reason=\"%s\"", l->id, msg);
        return r;
}

static int index_from_peers(struct ltree *lt, struct layer *l, struct layer_index **ret,
                            struct digest *ret_digest, uint64_t *ret_size) {
        if (!lt->have_peers || !lt->peers.locate_index)
                return -ENOENT;
        struct digest d;
        uint64_t size;
        uint64_t t0 = now_ms(), deadline = t0 + lt->cfg.index_timeout_ms;
        int r = lt->peers.locate_index(lt->peers.ud, &l->digest, deadline, &d, &size);
        uint64_t t_located = now_ms();
        if (r < 0)
                return r;
        struct engine_blob_info b;
        r = engine_lookup(lt->e, &d, &b);
        if (r < 0)
                return r;
        if (b.size != size)
                return -EBADMSG;
        char msg[160] = "";
        r = load_index_head(lt, l, b.id, b.size, b.chunks, ret, msg, sizeof(msg));
        if (r == -EPROTONOSUPPORT) { /* an older node's index: whole, digest checked */
                msg[0] = '\0';
                r = load_index_blob(lt, l, b.id, b.size, &d, ret, msg, sizeof(msg));
        }
        if (r < 0) {
                log_debug("layer index from peers not used id=%u reason=\"%s\"", l->id, msg);
                return r;
        }
        engine_pin(lt->e, &d, true);
        l->index_blob_id = b.id; /* read by the reader for a lazily loaded index's windows */
        log_debug("layer index from peers id=%u size=%" PRIu64 " locate_ms=%" PRIu64
                  " load_ms=%" PRIu64,
                  l->id, size, t_located - t0, now_ms() - t_located);
        *ret_digest = d;
        *ret_size = size;
        return 0;
}

/* eStargz: the TOC member named by the footer FOOT. 0 and *RET; -EPROTONOSUPPORT when the
 * footer is not eStargz's; -errno with MSG otherwise. */
static int index_from_toc(struct ltree *lt, struct layer *l, const uint8_t *foot, size_t flen,
                          struct layer_index **ret, char *msg, size_t msg_len) {
        uint64_t toc_off, toc_end;
        int r = layer_estargz_footer(foot, flen, l->blob_size, &toc_off, &toc_end);
        if (r == -EPROTONOSUPPORT)
                return r;
        if (r < 0) {
                snprintf(msg, msg_len, "estargz footer points outside the blob");
                return r;
        }
        if (toc_end <= toc_off || toc_end - toc_off > LAYER_ESTARGZ_TOC_MAX) {
                snprintf(msg, msg_len, "estargz toc of %" PRIu64 " bytes refused",
                         toc_end - toc_off);
                return -EFBIG;
        }
        size_t len = (size_t)(toc_end - toc_off);
        uint8_t *toc = malloc(len);
        if (!toc)
                return -ENOMEM;
        ssize_t n = lt_pread(lt, l->blob_id, toc_off, toc, len, NULL);
        if (n < 0 || (size_t)n != len) {
                free(toc);
                snprintf(msg, msg_len, "cannot read the estargz toc: %s",
                         n < 0 ? strerror((int)-n) : "short");
                return n < 0 ? (int)n : -EIO;
        }
        atomic_fetch_add(&l->fetched, (uint64_t)n);
        struct layer_estargz_opts o = {.blob_size = l->blob_size,
                                       .blob_digest = &l->digest,
                                       .toc_digest = l->has_toc ? &l->toc_digest : NULL};
        char err[160] = "";
        r = layer_estargz_index(toc, len, toc_off, &o, ret, err, sizeof(err));
        free(toc);
        if (r < 0)
                snprintf(msg, msg_len, "estargz toc refused: %s", err[0] ? err : strerror(-r));
        return r;
}

/* A zstd layer's seekable copy, written by the pass through SK: stored and pinned when the
 * pass built IX (R == 0), dropped otherwise. 0 or -errno with MSG. */
static int finish_copy(struct ltree *lt, struct engine_put_sink *sk, int r,
                       const struct layer_index *ix, char *msg, size_t msg_len) {
        struct layer_index_info info;
        struct digest d;
        uint64_t size;
        if (r < 0 || !sk->ps) {
                engine_put_abort(sk->ps);
                return r;
        }
        layer_index_info(ix, &info);
        r = engine_put_finish(sk->ps, &d, &size);
        if (r == 0 && (!digest_equal(&d, &info.data_digest) || size != info.data_size))
                r = -EIO; /* cannot happen: the sink got exactly what the pass hashed */
        if (r < 0) {
                snprintf(msg, msg_len, "cannot store the seekable copy of the zstd layer: %s",
                         strerror(-r));
                return r;
        }
        engine_pin(lt->e, &d, true); /* this node may be the copy's only holder */
        return 0;
}

/* The pass: the whole blob, in order, through the builder. */
static int index_by_pass(struct ltree *lt, struct layer *l, uint8_t *buf, struct layer_index **ret,
                         char *msg, size_t msg_len) {
        struct engine_put_sink sk = {.e = lt->e, .source = COPY_SOURCE};
        struct layer_build_opts o = {.span = lt->cfg.span,
                                     .diff_id = l->has_diff_id ? &l->diff_id : NULL,
                                     .blob_digest = &l->digest,
                                     .sink = engine_put_sink_write,
                                     .sink_ctx = &sk};
        struct layer_builder *b = layer_builder_new(&o);
        if (!b)
                return -ENOMEM;
        struct engine_stream stream = {0};
        int r = 0;
        for (uint64_t off = 0; off < l->blob_size && r == 0;) {
                pthread_mutex_lock(&lt->lock);
                bool stopping = lt->stopping; /* a cached layer would not fail by itself */
                pthread_mutex_unlock(&lt->lock);
                if (stopping) {
                        r = -ECANCELED;
                        snprintf(msg, msg_len, "stopping");
                        break;
                }
                size_t want = l->blob_size - off < IO_MAX ? (size_t)(l->blob_size - off) : IO_MAX;
                ssize_t n = lt_pread(lt, l->blob_id, off, buf, want, &stream);
                if (n <= 0) {
                        r = n < 0 ? (int)n : -EIO;
                        snprintf(msg, msg_len, "cannot read the layer at %" PRIu64 ": %s", off,
                                 n < 0 ? strerror((int)-n) : "short");
                        break;
                }
                atomic_fetch_add(&l->fetched, (uint64_t)n);
                off += (uint64_t)n;
                r = layer_builder_feed(b, buf, (size_t)n);
        }
        if (r == 0)
                r = layer_builder_finish(b, ret);
        if (r < 0 && !msg[0]) {
                const char *why = layer_builder_error(b);
                snprintf(msg, msg_len, "%s", why && why[0] ? why : strerror(-r));
        }
        layer_builder_free(b);
        int cr = finish_copy(lt, &sk, r, r == 0 ? *ret : NULL, msg, msg_len);
        if (r == 0 && cr < 0) {
                layer_index_free(*ret);
                *ret = NULL;
                r = cr;
        }
        return r;
}

/* Stores a built index as a derived blob (pinned), *RET_DIGEST and *RET_SIZE its name. */
static int store_index(struct ltree *lt, const struct layer_index *ix, struct digest *ret_digest,
                       uint64_t *ret_size) {
        uint8_t *enc;
        size_t len;
        struct digest d;
        int r = layer_index_encode(ix, &enc, &len, &d);
        if (r < 0)
                return r;
        r = engine_put(lt->e, &d, DERIVED_SOURCE, enc, len);
        free(enc);
        if (r < 0)
                return r;
        engine_pin(lt->e, &d, true);
        *ret_digest = d;
        *ret_size = len;
        return 0;
}

/* The index from the peers, when one is published and usable: L is then READY (true). */
static bool try_peers(struct ltree *lt, struct layer *l) {
        struct layer_index *ix;
        struct digest d;
        uint64_t size;
        uint32_t data_id;
        if (index_from_peers(lt, l, &ix, &d, &size) < 0)
                return false;
        if (lt_data_blob(lt, l, ix, &data_id) < 0) {
                layer_index_free(ix); /* zstd, and nobody holds its copy: run the pass */
                return false;
        }
        lt_ready(lt, l, ix, LTREE_INDEX_PEER, &d, size);
        return true;
}

/* The index job of layer L, on a worker (BUF: READ_MAX bytes of scratch). */
void lt_index_job(struct ltree *lt, struct layer *l, uint8_t *buf) {
        char msg[200] = "";
        struct layer_index *ix = NULL;
        uint64_t t0 = now_ms();
        int r;

        if (!l->blob_known) { /* reloaded, and the engine forgot the blob: register it again */
                char ref[IDX_SOURCE_MAX + DIGEST_HEX_LEN + 16], hex[DIGEST_HEX_LEN + 1];
                struct engine_blob_info b;
                digest_to_hex(&l->digest, hex);
                snprintf(ref, sizeof(ref), "%s@sha256:%s", l->source, hex);
                r = engine_add(lt->e, ref, &b, msg, sizeof(msg));
                if (r < 0) {
                        lt_fail(lt, l, r, "cannot register the layer blob: %s",
                                msg[0] ? msg : strerror(-r));
                        return;
                }
                pthread_mutex_lock(&lt->lock);
                l->blob_id = b.id;
                l->blob_size = b.size;
                l->blob_known = true;
                pthread_mutex_unlock(&lt->lock);
        }
        pthread_mutex_lock(&lt->lock);
        bool recorded = l->has_index && l->origin != LTREE_INDEX_TOC;
        struct digest recorded_digest = l->index_digest;
        uint64_t recorded_size = l->index_size;
        pthread_mutex_unlock(&lt->lock);

        uint32_t data_id;
        if (recorded && index_from_store(lt, l, &recorded_digest, &ix) == 0) {
                if (lt_data_blob(lt, l, ix, &data_id) == 0) {
                        lt_ready(lt, l, ix, LTREE_INDEX_LOCAL, &recorded_digest, recorded_size);
                        return;
                }
                layer_index_free(ix); /* zstd, and its copy is gone: run the pass again */
                ix = NULL;
        }
        /* The peers before the layer's own bytes: an index a peer published names its format,
         * so a layer that has one is ready without reading the layer's first and last chunks
         * (two serial fetches, the last one never read by a container). A layer labelled
         * eStargz (a TOC digest) reads its TOC first: nobody publishes a TOC's index, and a
         * locate would be a wasted round trip. */
        bool peers_first = !l->has_toc;
        if (peers_first && try_peers(lt, l))
                return;
        /* The format, from the bytes: the first block tells tar, gzip or zstd apart. */
        size_t head = l->blob_size < 512 ? (size_t)l->blob_size : 512;
        ssize_t n = lt_pread(lt, l->blob_id, 0, buf, head, NULL);
        if (n < 0) {
                lt_fail(lt, l, (int)n, "cannot read the layer: %s", strerror((int)-n));
                return;
        }
        log_debug("layer index job id=%u head_read_ms=%" PRIu64, l->id, now_ms() - t0);
        int fmt = layer_detect_format(buf, (size_t)n);
        if (fmt < 0) {
                lt_fail(lt, l, fmt, "not a layer: neither tar, gzip nor zstd");
                return;
        }
        pthread_mutex_lock(&lt->lock);
        l->format = (enum layer_format)fmt;
        pthread_mutex_unlock(&lt->lock);
        if (fmt == LAYER_FMT_GZIP && l->blob_size >= LAYER_ESTARGZ_FOOTER) {
                uint8_t foot[LAYER_ESTARGZ_FOOTER];
                n = lt_pread(lt, l->blob_id, l->blob_size - LAYER_ESTARGZ_FOOTER, foot,
                             sizeof(foot), NULL);
                if (n != (ssize_t)sizeof(foot)) {
                        lt_fail(lt, l, n < 0 ? (int)n : -EIO,
                                "cannot read the layer's last bytes: %s",
                                n < 0 ? strerror((int)-n) : "short");
                        return;
                }
                r = index_from_toc(lt, l, foot, sizeof(foot), &ix, msg, sizeof(msg));
                if (r == 0) {
                        struct digest d = l->toc_digest;
                        uint64_t size = 0;
                        if (!l->has_toc) { /* name it by its encoded form, for listings */
                                uint8_t *enc;
                                size_t len;
                                if (layer_index_encode(ix, &enc, &len, &d) == 0) {
                                        free(enc);
                                        size = len;
                                }
                        }
                        lt_ready(lt, l, ix, LTREE_INDEX_TOC, &d, size);
                        return;
                }
                if (r != -EPROTONOSUPPORT) {
                        lt_fail(lt, l, r, "%s", msg);
                        return;
                }
                msg[0] = '\0';
        }
        log_debug("layer index job id=%u format_known_ms=%" PRIu64, l->id, now_ms() - t0);
        if (!peers_first && try_peers(lt, l))
                return;
        r = index_by_pass(lt, l, buf, &ix, msg, sizeof(msg));
        if (r < 0) {
                lt_fail(lt, l, r, "%s", msg);
                return;
        }
        struct digest d;
        uint64_t size;
        r = store_index(lt, ix, &d, &size);
        if (r < 0) {
                /* Still usable here; the next start runs the pass again. */
                char hex[DIGEST_HEX_LEN + 1];
                digest_to_hex(&l->digest, hex);
                log_debug("layer index not stored digest=sha256:%s err=%s", hex, strerror(-r));
                uint8_t *enc;
                size_t len;
                if (layer_index_encode(ix, &enc, &len, &d) == 0) {
                        free(enc);
                        size = len;
                } else {
                        memset(&d, 0, sizeof(d));
                        size = 0;
                }
        }
        lt_ready(lt, l, ix, LTREE_INDEX_BUILT, &d, size);
}
