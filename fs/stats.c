/* The figures table behind `blobctl stat --json` and /metrics.
 *
 * Every figure is one row: where it sits in the JSON (a group path and a key), what it is
 * called on /metrics (name, optional label, type, help), and where its value sits in one
 * snapshot (struct figures). A figure added to a module is added here once and appears in
 * both views; a row with no metric name is JSON only, one with no group is /metrics only.
 *
 * Cost: one snapshot per request (each module's stats call takes its own lock briefly; the
 * peer totals copy the membership), then a walk of about 60 rows. */
#include "fs/stats.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/store.h"
#include "engine/engine.h"
#include "fs/api.h"
#include "fs/snap_lazy.h"
#include "peer/announce.h"
#include "index/index.h"
#include "layertree/layertree.h"
#include "peer/directory.h"
#include "peer/members.h"
#include "registry/origin.h"
#include "peer/source.h"
#include "snapshot/snapshotter.h"
#include "util/memstat.h"

/* One snapshot of everything the table can show. Every field is a uint64_t so a row can name
 * it by offset. */
struct figures {
        struct engine_stats es;
        struct origin_stats os;
        struct source_stats ss;       /* zeros without peers */
        struct dir_stats ds;          /* zeros without peers */
        struct announce_stats as;     /* zeros without peers */
        struct ltree_stats ls;        /* layer trees */
        struct snapshotter_stats sns; /* zeros without the snapshotter */
        uint64_t lazy_fetched_bytes;  /* fs/snap_lazy.c: layer trees' blobs, from the network */
        uint64_t peers_known, peers_up, peer_bytes_from, peer_bytes_to;
        uint64_t uptime_seconds, chunk_size, ready;
        uint64_t store_allocated_bytes, store_page_cache_bytes, index_write_errors;
        uint64_t rss_bytes;
        uint64_t cgroup_version, cgroup_usage_bytes, cgroup_inactive_file_bytes,
                cgroup_working_set_bytes;
        bool have_cgroup;
};

enum stat_kind { GAUGE, COUNTER };

struct stat_def {
        const char *group;  /* JSON: "" for the top level, "a.b" nests; NULL: /metrics only */
        const char *key;    /* JSON key within the group */
        const char *metric; /* p2pblobs_<metric> on /metrics; NULL: JSON only */
        const char *label;  /* `name="value"` distinguishing rows that share a metric */
        enum stat_kind kind;
        const char *help;
        size_t off;  /* of the uint64_t value in struct figures */
        bool cgroup; /* unknown (JSON null, no metric) when the cgroup was not read */
};

#define F(field) offsetof(struct figures, field)

static const struct stat_def stats[] = {
        {"snapshotter", "lazy_layers", "snapshotter_lazy_layers_total", NULL, COUNTER,
         "Layer Prepares answered with a remote snapshot (no download, no unpack).",
         F(sns.lazy_layers), false},
        {"snapshotter", "lazy_fallbacks", "snapshotter_lazy_fallbacks_total", NULL, COUNTER,
         "Layer Prepares that got a normal snapshot for containerd to unpack instead.",
         F(sns.lazy_fallbacks), false},
        {"snapshotter", "remote_mounts", "snapshotter_remote_mounts_total", NULL, COUNTER,
         "Mounts handed to containerd with at least one layer tree as a lower dir.",
         F(sns.remote_mounts), false},
        {"snapshotter", "starts", "snapshotter_starts_total", NULL, COUNTER,
         "Snapshots prepared for containers (not layers) over at least one lazy layer.",
         F(sns.starts), false},
        {"snapshotter", "lazy_fetched_bytes", "snapshotter_lazy_fetched_bytes_total", NULL, COUNTER,
         "Bytes of lazy layers (layer trees) fetched from peers and the origin since start: index "
         "passes, container reads, prefetch. Per container start: blobctl snapshots.",
         F(lazy_fetched_bytes), false},
        {"snapshotter.prefetch", "queued", "snapshotter_prefetch_layers_total",
         "outcome=\"queued\"", COUNTER,
         "Remote layers of started containers queued for prefetch, and what became of them.",
         F(sns.prefetch.queued), false},
        {"snapshotter.prefetch", "started", "snapshotter_prefetch_layers_total",
         "outcome=\"started\"", COUNTER,
         "Remote layers of started containers queued for prefetch, and what became of them.",
         F(sns.prefetch.started), false},
        {"snapshotter.prefetch", "prefetched", "snapshotter_prefetch_layers_total",
         "outcome=\"prefetched\"", COUNTER,
         "Remote layers of started containers queued for prefetch, and what became of them.",
         F(sns.prefetch.prefetched), false},
        {"snapshotter.prefetch", "skipped", "snapshotter_prefetch_layers_total",
         "outcome=\"skipped\"", COUNTER,
         "Remote layers of started containers queued for prefetch, and what became of them.",
         F(sns.prefetch.skipped), false},
        {"snapshotter.prefetch", "failed", "snapshotter_prefetch_layers_total",
         "outcome=\"failed\"", COUNTER,
         "Remote layers of started containers queued for prefetch, and what became of them.",
         F(sns.prefetch.failed), false},
        {"snapshotter.prefetch", "active", "snapshotter_prefetch_active", NULL, GAUGE,
         "Remote layers being prefetched now.", F(sns.prefetch.active), false},
        {"", "uptime_seconds", NULL, NULL, GAUGE, NULL, F(uptime_seconds), false},
        {"", "chunk_size", NULL, NULL, GAUGE, NULL, F(chunk_size), false},
        {"", "blobs", "blobs", NULL, GAUGE, "Blobs known.", F(es.blobs), false},
        {"", "blobs_verified", "blobs_verified", NULL, GAUGE,
         "Blobs verified against their digest.", F(es.blobs_verified), false},
        {"", "blobs_complete", NULL, NULL, GAUGE, NULL, F(es.blobs_complete), false},
        {"verify", "frontier_hashed_chunks", "verify_frontier_chunks_total", "how=\"hashed\"",
         COUNTER,
         "Chunks the whole-blob verification passed: hashed, or linked (checked by a "
         "chain step on arrival, not hashed again).",
         F(es.frontier_hashed_chunks), false},
        {"verify", "frontier_linked_chunks", "verify_frontier_chunks_total", "how=\"linked\"",
         COUNTER,
         "Chunks the whole-blob verification passed: hashed, or linked (checked by a "
         "chain step on arrival, not hashed again).",
         F(es.frontier_linked_chunks), false},
        {"verify", "landing_hashed_chunks", "verify_landing_hashed_chunks_total", NULL, COUNTER,
         "Chunks hashed as they landed, apart from the whole-blob verification (a plain digest "
         "for a chunk out of order, a verified blob's refetch).",
         F(es.landing_hashed_chunks), false},
        {"", "blobs_partial", NULL, NULL, GAUGE, NULL, F(es.blobs_partial), false},
        {"", "blobs_pinned", NULL, NULL, GAUGE, NULL, F(es.blobs_pinned), false},

        {"cache", "budget_bytes", "cache_budget_bytes", NULL, GAUGE, "Configured cache budget.",
         F(es.budget_bytes), false},
        {"cache", "effective_budget_bytes", "cache_effective_budget_bytes", NULL, GAUGE,
         "Budget in force (lower after the disk filled).", F(es.effective_budget_bytes), false},
        {"cache", "used_bytes", "cache_used_bytes", NULL, GAUGE, "Bytes of chunks in the store.",
         F(es.used_bytes), false},
        {"cache", "pinned_bytes", "cache_pinned_bytes", NULL, GAUGE,
         "Bytes of chunks being read, read ahead or awaiting the hash.", F(es.pinned_bytes), false},
        {"cache", "chunks_present", "cache_chunks", NULL, GAUGE, "Chunks in the store.",
         F(es.chunks_present), false},
        {"cache", "landed_hits", "landed_ring_hits_total", NULL, COUNTER,
         "Chunk parts served from the landed ring instead of the store.", F(es.landed_hits), false},
        {"cache", "hits", "cache_hits_total", NULL, COUNTER, "Chunk reads served from the store.",
         F(es.hits), false},
        {"cache", "misses", "cache_misses_total", NULL, COUNTER, "Chunk reads that needed a fetch.",
         F(es.misses), false},
        {"cache", "evicted_chunks", "cache_evicted_chunks_total", NULL, COUNTER, "Chunks evicted.",
         F(es.evicted_chunks), false},
        {"cache", "store_allocated_bytes", NULL, NULL, GAUGE, NULL, F(store_allocated_bytes),
         false},

        {"fetched", "origin_bytes", "origin_bytes_total", NULL, COUNTER,
         "Blob bytes fetched from origins.", F(os.bytes), false},
        {"fetched", "origin_requests", "origin_requests_total", NULL, COUNTER,
         "Blob GET attempts to origins.", F(os.requests), false},
        {"fetched", "origin_errors", NULL, NULL, COUNTER, NULL, F(os.errors), false},
        {"fetched", "peer_bytes", "peer_fetched_bytes_total", NULL, COUNTER,
         "Chunk bytes fetched from peers.", F(peer_bytes_from), false},
        {"fetched", "inflight_chunks", "inflight_chunks", NULL, GAUGE, "Chunk fetches in flight.",
         F(es.inflight_chunks), false},
        {"fetched", "readahead_chunks", NULL, NULL, GAUGE, NULL, F(es.readahead_chunks), false},

        {"errors.origin_by_cause", "connect", "origin_errors_total", "cause=\"connect\"", COUNTER,
         "Failed origin attempts by cause.", F(os.err_connect), false},
        {"errors.origin_by_cause", "timeout", "origin_errors_total", "cause=\"timeout\"", COUNTER,
         "Failed origin attempts by cause.", F(os.err_timeout), false},
        {"errors.origin_by_cause", "http", "origin_errors_total", "cause=\"http\"", COUNTER,
         "Failed origin attempts by cause.", F(os.err_http), false},
        {"errors.origin_by_cause", "not_found", "origin_errors_total", "cause=\"not_found\"",
         COUNTER, "Failed origin attempts by cause.", F(os.err_not_found), false},
        {"errors.origin_by_cause", "denied", "origin_errors_total", "cause=\"denied\"", COUNTER,
         "Failed origin attempts by cause.", F(os.err_denied), false},
        {"errors.origin_by_cause", "protocol", "origin_errors_total", "cause=\"protocol\"", COUNTER,
         "Failed origin attempts by cause.", F(os.err_protocol), false},
        {"errors", "read_errors", "read_errors_total", NULL, COUNTER,
         "Reads answered with an error.", F(es.read_errors), false},
        {"errors", "verify_failures", "verify_failures_total", NULL, COUNTER,
         "Blobs that failed verification.", F(es.verify_failures), false},
        {"errors", "lost_chunks", "lost_chunks_total", NULL, COUNTER,
         "Chunks found missing from the store.", F(es.lost_chunks), false},
        {"errors", "store_corrupt_chunks", "store_corrupt_chunks_total", NULL, COUNTER,
         "Chunks whose bytes in the store failed their checksum (refetched).", F(es.corrupt_chunks),
         false},
        {"errors", "store_full_events", "store_full_total", NULL, COUNTER,
         "Times a full disk shrank the budget.", F(es.store_full_events), false},
        {"errors", "index_write_errors", NULL, NULL, COUNTER, NULL, F(index_write_errors), false},
        {"errors", "peer_failures", "peer_transfer_failures_total", NULL, COUNTER,
         "Peer chunk transfers that failed (refused, timed out, stalled, short).",
         F(ss.peer_failures), false},
        {"errors", "peer_corrupt_chunks", "peer_corrupt_chunks_total", NULL, COUNTER,
         "Chunks from peers that did not match their digest.", F(ss.peer_corrupt), false},
        {NULL, NULL, "peer_unchecked_chunks_total", NULL, COUNTER,
         "Chunks from peers dropped: no digest but their sender's own to check them against.",
         F(ss.peer_unchecked), false},

        {"served", "peer_bytes", "peer_served_bytes_total", NULL, COUNTER,
         "Chunk bytes served to peers.", F(peer_bytes_to), false},
        {"peers", "known", "peers_known", NULL, GAUGE, "Peers known (self excluded).",
         F(peers_known), false},
        {"peers", "up", "peers_up", NULL, GAUGE, "Peers answering.", F(peers_up), false},
        {NULL, NULL, "peer_locates_total", NULL, COUNTER, "Directory queries to homes.",
         F(ss.locates), false},
        {NULL, NULL, "peer_locate_failures_total", NULL, COUNTER, "Directory queries that failed.",
         F(ss.locate_failures), false},
        {NULL, NULL, "origin_claims_total", NULL, COUNTER,
         "Chunks this node was told to fetch from the origin for the cluster.", F(ss.claims),
         false},
        {NULL, NULL, "directory_blobs", NULL, GAUGE, "Blobs this node is a home for.", F(ds.blobs),
         false},
        {NULL, NULL, "directory_holders", NULL, GAUGE, "Holder records this node keeps as a home.",
         F(ds.holders), false},
        {NULL, NULL, "directory_bytes", NULL, GAUGE,
         "Holder bitmaps and chunk digests this node keeps as a home.", F(ds.bytes), false},
        {NULL, NULL, "directory_announces_total", NULL, COUNTER, "Announces received as a home.",
         F(ds.announces), false},
        {NULL, NULL, "directory_locates_total", NULL, COUNTER, "Locates answered as a home.",
         F(ds.locates), false},
        {NULL, NULL, "directory_digest_waits_total", NULL, COUNTER,
         "Readers' digest questions held as a home until an announce brought the digest.",
         F(ds.digest_waits), false},
        {NULL, NULL, "directory_digest_waits_found_total", NULL, COUNTER,
         "Held or immediate digest questions that ended with the chunk's digest known.",
         F(ds.digest_waits_found), false},
        {NULL, NULL, "directory_digest_waits_refused_total", NULL, COUNTER,
         "Digest questions answered at once: the home's cap of waiters was reached.",
         F(ds.digest_waits_refused), false},
        {NULL, NULL, "directory_digest_waiters_peak", NULL, GAUGE,
         "The most digest questions this home held at once.", F(ds.digest_waiters_peak), false},
        {NULL, NULL, "peer_announces_total", NULL, COUNTER,
         "Announce requests sent to other homes.", F(as.requests), false},
        {NULL, NULL, "directory_told_full_total", NULL, COUNTER,
         "Announced blobs not recorded as a home: max-holders holders hold all of it already.",
         F(ds.told_full), false},
        {NULL, NULL, "directory_told_covered_total", NULL, COUNTER,
         "Of those, blobs whose holders hold all the announcer has but not the whole blob "
         "(\"covered\").",
         F(ds.told_covered), false},
        {NULL, NULL, "peer_announce_unhushed_total", NULL, COUNTER,
         "Homes a blob was announced to again, hushed or not: a chunk of it this node had "
         "claimed landed.",
         F(as.unhushed), false},
        {NULL, NULL, "peer_announce_full_total", NULL, COUNTER,
         "Blobs a home answered \"full\" for: not announced to that home until its retry time.",
         F(as.told_full), false},
        {NULL, NULL, "peer_announce_early_rounds_total", NULL, COUNTER,
         "Announce rounds run early: a chunk this node had claimed landed.", F(as.early_rounds),
         false},
        {NULL, NULL, "peer_announce_hushed_total", NULL, COUNTER,
         "Blob announces left out for a home that said \"full\".", F(as.hushed_sends), false},
        {NULL, NULL, "peer_announce_full_retries_total", NULL, COUNTER,
         "Blobs announced again to a home that said \"full\", at its retry time.",
         F(as.hush_retries), false},
        {NULL, NULL, "peer_confirm_queries_total", NULL, COUNTER,
         "Digest questions to homes about chunks held from a peer whose digest nobody knew.",
         F(ss.confirm_queries), false},
        {NULL, NULL, "peer_confirmed_chunks_total", NULL, COUNTER,
         "Chunks held from a peer that another home then gave the digest of.", F(ss.confirmed),
         false},
        {NULL, NULL, "peer_spread_locates_total", NULL, COUNTER,
         "Directory queries asked of the home rdv_spread picked (not the first).",
         F(ss.spread_locates), false},
        {NULL, NULL, "peer_spread_misses_total", NULL, COUNTER,
         "Spread queries that named no source, so the first home was asked too.",
         F(ss.spread_misses), false},
        {NULL, NULL, "peer_locate_cache_hits_total", NULL, COUNTER,
         "Chunk misses answered from a blob's recent locate answer, without asking a home.",
         F(ss.locate_cache_hits), false},
        {NULL, NULL, "peer_run_transfers_total", NULL, COUNTER,
         "Ranged GETs to a peer for consecutive chunks it holds.", F(ss.run_transfers), false},
        {NULL, NULL, "peer_run_chunks_total", NULL, COUNTER,
         "Chunks asked in ranged GETs for runs.", F(ss.run_chunks), false},
        {NULL, NULL, "directory_layer_indexes", NULL, GAUGE,
         "Layers this node keeps index records for as a home.", F(ds.indexes), false},
        {NULL, NULL, "directory_index_locates_total", NULL, COUNTER,
         "Layer index queries answered as a home.", F(ds.index_locates), false},
        {NULL, NULL, "peer_layer_indexes_announced", NULL, GAUGE,
         "Layer indexes this node announces to the layers' homes.", F(as.indexes), false},

        {"layers", "known", "layers", NULL, GAUGE, "Image layers registered.", F(ls.layers), false},
        {"layers", "ready", "layers_ready", NULL, GAUGE, "Layers whose file tree is ready.",
         F(ls.ready), false},
        {"layers", "pending", NULL, NULL, GAUGE, NULL, F(ls.pending), false},
        {"layers", "failed", "layers_failed", NULL, GAUGE, "Layers whose index could not be had.",
         F(ls.failed), false},
        {"layers", "indexes_built", "layer_indexes_total", "origin=\"built\"", COUNTER,
         "Layer indexes loaded, by where they came from.", F(ls.indexes_built), false},
        {"layers", "indexes_from_peers", "layer_indexes_total", "origin=\"peer\"", COUNTER,
         "Layer indexes loaded, by where they came from.", F(ls.indexes_from_peers), false},
        {"layers", "indexes_local", "layer_indexes_total", "origin=\"local\"", COUNTER,
         "Layer indexes loaded, by where they came from.", F(ls.indexes_local), false},
        {"layers", "index_failures", "layer_index_failures_total", NULL, COUNTER,
         "Layer indexes that failed (bad layer, unreadable, unsupported).", F(ls.index_failures),
         false},
        {"layers", "reads", "layer_reads_total", NULL, COUNTER, "Reads of layer files.",
         F(ls.reads), false},
        {"layers", "read_errors", "layer_read_errors_total", NULL, COUNTER,
         "Reads of layer files answered with an error.", F(ls.read_errors), false},
        {"layers", "bytes_read", "layer_read_bytes_total", NULL, COUNTER,
         "Bytes of layer files read.", F(ls.bytes_read), false},
        {"layers", "bytes_fetched", "layer_fetched_bytes_total", NULL, COUNTER,
         "Compressed layer bytes read through the engine for indexes and files.",
         F(ls.bytes_fetched), false},
        {"layers", "span_cache_hits", "layer_span_cache_hits_total", NULL, COUNTER,
         "Layer reads answered from inflated spans in memory.", F(ls.span_cache_hits), false},
        {"layers", "span_cache_misses", "layer_span_cache_misses_total", NULL, COUNTER,
         "Layer reads that had to inflate a span.", F(ls.span_cache_misses), false},

        {"memory", "rss_bytes", "resident_memory_bytes", NULL, GAUGE, "Daemon RSS.", F(rss_bytes),
         false},
        {"memory", "cgroup_version", NULL, NULL, GAUGE, NULL, F(cgroup_version), false},
        {"memory", "cgroup_usage_bytes", "cgroup_memory_usage_bytes", NULL, GAUGE,
         "The daemon's cgroup memory usage (memory.current, or usage_in_bytes on v1).",
         F(cgroup_usage_bytes), true},
        {"memory", "cgroup_inactive_file_bytes", NULL, NULL, GAUGE, NULL,
         F(cgroup_inactive_file_bytes), true},
        {"memory", "cgroup_working_set_bytes", "cgroup_memory_working_set_bytes", NULL, GAUGE,
         "The cgroup's working set as kubelet computes it (usage - inactive_file).",
         F(cgroup_working_set_bytes), true},
        {"memory", "store_page_cache_bytes", NULL, NULL, GAUGE, NULL, F(store_page_cache_bytes),
         false},
        {"memory", "layer_span_cache_bytes", "layer_span_cache_bytes", NULL, GAUGE,
         "Inflated layer bytes kept in memory.", F(ls.span_cache_bytes), false},
        {"memory", "layer_index_bytes", "layer_index_bytes", NULL, GAUGE,
         "Memory of the loaded layer indexes.", F(ls.index_memory), false},
        {"memory", "landed_bytes", "landed_ring_bytes", NULL, GAUGE,
         "Chunks just landed, kept in memory for reads across a chunk edge (--landed-chunks).",
         F(es.landed_bytes), false},
        {"memory", "landed_peak_bytes", NULL, NULL, GAUGE, NULL, F(es.landed_peak_bytes), false},
        {NULL, NULL, "ready", NULL, GAUGE, "1 while the mount serves.", F(ready), false},
};

#define N_STATS (sizeof(stats) / sizeof(stats[0]))

static uint64_t value_of(const struct figures *f, const struct stat_def *s) {
        uint64_t v;
        memcpy(&v, (const char *)f + s->off, sizeof(v));
        return v;
}

static void collect(struct daemon *d, struct figures *f) {
        memset(f, 0, sizeof(*f));
        engine_get_stats(d->engine, &f->es);
        origin_get_stats(d->origin, &f->os);
        if (d->source)
                source_get_stats(d->source, &f->ss);
        if (d->layers)
                ltree_get_stats(d->layers, &f->ls);
        if (d->dir)
                dir_get_stats(d->dir, &f->ds);
        struct snapshotter *sn = __atomic_load_n(&d->snapshotter, __ATOMIC_ACQUIRE);
        if (sn) {
                snapshotter_get_stats(sn, &f->sns);
                f->lazy_fetched_bytes = snap_lazy_fetched_total(d);
        }
        struct announcer *an = __atomic_load_n(&d->announcer, __ATOMIC_ACQUIRE);
        if (an)
                announce_get_stats(an, &f->as);
        if (d->members) {
                members_counts(d->members, &f->peers_up, &f->peers_known);
                struct peer_info *v;
                size_t n;
                if (members_snapshot(d->members, &v, &n) == 0) {
                        for (size_t i = 0; i < n; i++) {
                                f->peer_bytes_from += v[i].bytes_from;
                                f->peer_bytes_to += v[i].bytes_to;
                        }
                        free(v);
                }
        }
        f->uptime_seconds = (uint64_t)(time(NULL) - d->started);
        f->chunk_size = d->cfg.chunk_size;
        f->ready = atomic_load(&d->serving);
        f->store_allocated_bytes = store_allocated_bytes(d->store);
        f->store_page_cache_bytes = store_page_cache_bytes(d->store);
        f->index_write_errors = idx_write_errors(d->ix);
        memstat_rss(&f->rss_bytes);
        struct cgroup_memory cm;
        if (memstat_self(&cm) == 0) {
                f->have_cgroup = true;
                f->cgroup_version = (uint64_t)cm.version;
                f->cgroup_usage_bytes = cm.usage_bytes;
                f->cgroup_inactive_file_bytes = cm.inactive_file_bytes;
                f->cgroup_working_set_bytes = cm.working_set_bytes;
        }
}

/* The object at PATH ("" is ROOT itself, "a.b" nests), created on first use. NULL on ENOMEM. */
static json_t *group_of(json_t *root, const char *path) {
        json_t *obj = root;
        while (*path) {
                const char *dot = strchr(path, '.');
                size_t n = dot ? (size_t)(dot - path) : strlen(path);
                char name[64];
                if (n >= sizeof(name))
                        return NULL;
                memcpy(name, path, n);
                name[n] = '\0';
                json_t *next = json_object_get(obj, name);
                if (!next) {
                        next = json_object();
                        if (!next || json_object_set_new(obj, name, next) < 0)
                                return NULL;
                }
                obj = next;
                path += dot ? n + 1 : n;
        }
        return obj;
}

json_t *stats_json(struct daemon *d) {
        struct figures f;
        collect(d, &f);
        json_t *root = json_object();
        if (!root || json_object_set_new(root, "version", json_string(P2PBLOBS_VERSION)) < 0 ||
            json_object_set_new(root, "daemon_running", json_true()) < 0)
                goto out_free;
        for (size_t i = 0; i < N_STATS; i++) {
                const struct stat_def *s = &stats[i];
                if (!s->group)
                        continue;
                json_t *g = group_of(root, s->group);
                json_t *v = s->cgroup && !f.have_cgroup ? json_null()
                                                        : json_integer((json_int_t)value_of(&f, s));
                if (!g || !v || json_object_set_new(g, s->key, v) < 0)
                        goto out_free;
        }
        return root;
out_free:
        json_decref(root);
        return NULL;
}

int stats_prometheus(struct daemon *d, char **ret, size_t *ret_len) {
        struct figures f;
        collect(d, &f);
        char *buf = NULL;
        size_t len = 0;
        FILE *out = open_memstream(&buf, &len);
        if (!out)
                return -ENOMEM;
        for (size_t i = 0; i < N_STATS; i++) {
                const struct stat_def *s = &stats[i];
                if (!s->metric || (s->cgroup && !f.have_cgroup))
                        continue;
                /* HELP and TYPE once per name: labelled rows of one metric are adjacent. */
                if (i == 0 || !stats[i - 1].metric || strcmp(stats[i - 1].metric, s->metric) != 0)
                        fprintf(out, "# HELP p2pblobs_%s %s\n# TYPE p2pblobs_%s %s\n", s->metric,
                                s->help, s->metric, s->kind == COUNTER ? "counter" : "gauge");
                if (s->label)
                        fprintf(out, "p2pblobs_%s{%s} %" PRIu64 "\n", s->metric, s->label,
                                value_of(&f, s));
                else
                        fprintf(out, "p2pblobs_%s %" PRIu64 "\n", s->metric, value_of(&f, s));
        }
        if (fclose(out) != 0) {
                free(buf);
                return -ENOMEM;
        }
        *ret = buf;
        *ret_len = len;
        return 0;
}
