"""Eviction through the real mount: the policy keeps a re-read hot set through a scan."""

import harness

MiB = harness.MiB
REPO = "p2pblobs/eviction"


def test_hot_set_survives_a_scan(registry, daemon_factory):
    hot = harness.gen_bytes(51, 4 * MiB)
    scan = harness.gen_bytes(52, 64 * MiB)
    hot_d = registry.push_blob(REPO, hot)
    scan_d = registry.push_blob(REPO, scan)
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "16M"])
    d.add(registry.ref(REPO, hot_d))
    d.add(registry.ref(REPO, scan_d))
    hot_path = d.blob_path(hot_d)

    # Read the hot blob twice (dropping the kernel's cache in between, so the second read
    # reaches the daemon and counts as a re-reference).
    assert harness.read_file(hot_path) == hot
    harness.drop_caches([hot_path])
    assert harness.read_file(hot_path) == hot

    # One full scan of a blob four times the budget.
    assert harness.sha256_file(d.blob_path(scan_d))[0] == scan_d

    # The hot blob is still on disk: re-reading it costs the origin nothing.
    harness.drop_caches([hot_path, d.blob_path(scan_d)])
    registry.settle()
    mark = registry.mark()
    before = d.stat()["fetched"]["origin_bytes"]
    assert harness.read_file(hot_path) == hot
    registry.settle()
    assert d.stat()["fetched"]["origin_bytes"] == before
    assert registry.blob_get_count(hot_d, since=mark) == 0
    s = d.stat()["cache"]
    assert s["used_bytes"] <= 16 * MiB + 8 * MiB, s


def test_scan_alone_is_not_promoted(registry, daemon_factory):
    """A blob read once, start to end, through a budget a quarter of its size: its chunks are
    evicted as the reader moves on (not pinned, not promoted), the store stays within the
    budget plus pinned chunks, and the hash frontier that follows the reader verifies it."""
    scan = harness.gen_bytes(53, 64 * MiB)
    digest = registry.push_blob(REPO, scan)
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "16M"])
    d.add(registry.ref(REPO, digest))
    assert harness.sha256_file(d.blob_path(digest))[0] == digest
    s = d.stat()
    assert s["cache"]["evicted_chunks"] >= 64 - 16 - 16 - 4, s  # budget, hash pins, readahead
    assert harness.allocated_bytes(d.chunks_dir) <= (16 + 16 + 4 + 2) * MiB
    assert s["cache"]["pinned_bytes"] <= (16 + 4) * MiB, s
    assert s["blobs_verified"] == 1, s
    assert s["fetched"]["origin_bytes"] <= 64 * MiB + 4 * MiB, s  # no readahead chunk refetched


def test_random_read_leaves_nothing_pinned(registry, daemon_factory):
    """Pins are for reads in progress, readahead not yet consumed and chunks just ahead of the
    verification frontier. A lone read in the middle of a blob is none of these once it is
    answered: nothing may stay pinned (pinned chunks are budget eviction cannot reclaim)."""
    data = harness.gen_bytes(54, 64 * MiB)
    digest = registry.push_blob(REPO, data)
    d = daemon_factory(registries=[registry])
    d.add(registry.ref(REPO, digest))
    off = 40 * MiB + 12345
    assert harness.pread_exact(d.blob_path(digest), off, MiB) == data[off:off + MiB]
    s = harness.wait_until(lambda: (lambda x: x if x["fetched"]["inflight_chunks"] == 0 else None)(
        d.stat()), 10, what="fetches to settle")
    assert s["cache"]["chunks_present"] >= 2, s["cache"]
    assert s["cache"]["pinned_bytes"] == 0, s["cache"]
