/* Which chunks to keep: S3-FIFO at chunk granularity, with pinning. Pure logic, no I/O,
 * not thread-safe (the caller's lock protects it).
 *
 * S3-FIFO (Yang et al., SOSP'23): new chunks enter a small FIFO (10% of the budget); a chunk
 * evicted from there that was hit again moves to the main FIFO, otherwise it leaves and its key
 * is remembered in a ghost FIFO. A chunk inserted while its key is a ghost goes straight to
 * main. Main evicts with a 2-bit frequency and reinsertion (CLOCK-like). One sequential scan of a
 * huge layer therefore flows through the small queue and never flushes the hot set in main.
 *
 * Sizes are in bytes (a blob's last chunk is short). Pinned chunks (being read or served) are
 * never chosen as victims: they are skipped and stay resident, so usage can exceed the budget by
 * at most the pinned bytes. Every structure is bounded: at most MAX_ENTRIES resident chunks and
 * as many ghosts. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct chunk_key {
        uint32_t blob; /* the engine's blob id */
        uint32_t idx;  /* chunk index within the blob */
};

struct policy;

/* BUDGET_BYTES: the target of resident bytes. MAX_ENTRIES: hard bound on resident chunks
 * (the caller derives it from budget / chunk size with margin). NULL on allocation failure. */
struct policy *policy_new(uint64_t budget_bytes, size_t max_entries);
void policy_free(struct policy *p); /* NULL-safe */

/* Records a newly resident chunk of BYTES. 0, -EEXIST if already resident, -ENOSPC when
 * MAX_ENTRIES are resident (the caller must evict first). Does not evict by itself. */
int policy_insert(struct policy *p, struct chunk_key key, uint32_t bytes);

/* A hit on a resident chunk (bumps its frequency, saturating at 3). No-op if not resident. */
void policy_touch(struct policy *p, struct chunk_key key);

/* Forgets a resident chunk (lost from disk, blob discarded, evicted by hand). The key does not
 * become a ghost. Returns whether it was resident. Pinned chunks are removed too: the caller
 * decides. */
bool policy_remove(struct policy *p, struct chunk_key key);

bool policy_contains(const struct policy *p, struct chunk_key key);

/* Whether a resident chunk is pinned right now (false when not resident). */
bool policy_pinned(const struct policy *p, struct chunk_key key);

/* Pins/unpins a resident chunk (counted; a pin count of zero makes it evictable again).
 * pin: 0 or -ENOENT when not resident. unpin of an unpinned or absent chunk is a no-op. */
int policy_pin(struct policy *p, struct chunk_key key);
void policy_unpin(struct policy *p, struct chunk_key key);

/* While resident bytes exceed the budget, picks a victim, removes it (its key becomes a ghost
 * when it leaves the small FIFO) and returns true with *RET set. Returns false when usage is
 * within budget or every resident chunk is pinned. */
bool policy_next_victim(struct policy *p, struct chunk_key *ret);

/* Changes the budget (the caller then drains victims). */
void policy_set_budget(struct policy *p, uint64_t budget_bytes);

uint64_t policy_budget(const struct policy *p);
uint64_t policy_used_bytes(const struct policy *p);
size_t policy_count(const struct policy *p);
uint64_t policy_pinned_bytes(const struct policy *p);
