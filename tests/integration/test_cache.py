"""The on-disk chunk store: budget, restarts, lost cache files, a full disk."""

import os
import shutil
import subprocess
import threading
import time

import pytest

import harness
from harness import MiB


def _wait_stat(d, pred, timeout=10):
    """Poll blobctl stat until PRED(stat) holds; returns that stat, or after TIMEOUT the last
    one (for the caller's assertion to show)."""
    try:
        return harness.wait_until(lambda: (lambda s: s if pred(s) else None)(d.stat()),
                                  timeout, interval=0.2, what="blobctl stat")
    except harness.HarnessError:
        return d.stat()


def _store_files(d):
    return sum(len(files) for _dp, _ds, files in os.walk(d.chunks_dir))


def test_budget_bounds_store(registry, blobs, daemon_factory):
    """A full sequential read of 64 MiB with a 16 MiB budget: the store never holds more than
    budget + chunks in flight, on disk (st_blocks) and by its own account."""
    b = blobs["big64"]
    budget, inflight = 16 * MiB, 8
    d = daemon_factory(registries=[registry],
                       extra_args=["--cache-budget", "16M", "--max-inflight", str(inflight),
                                   "--readahead", "4"])
    d.add(b.ref)

    stop = threading.Event()
    disk_samples, used_samples, errors = [], [], []

    def sample_disk():
        while not stop.is_set():
            disk_samples.append(harness.allocated_bytes(d.chunks_dir))
            time.sleep(0.01)

    def sample_stat():
        while not stop.is_set():
            try:
                used_samples.append(d.stat()["cache"]["used_bytes"])
            except Exception as e:
                errors.append(e)
            time.sleep(0.05)

    threads = [threading.Thread(target=sample_disk), threading.Thread(target=sample_stat)]
    for t in threads:
        t.start()
    try:
        digest, n = harness.sha256_file(d.blob_path(b.digest))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert n == b.size and digest == b.digest
    assert not errors, "blobctl stat failed during the read: %r" % errors[:3]
    disk_samples.append(harness.allocated_bytes(d.chunks_dir))
    used_samples.append(d.stat()["cache"]["used_bytes"])

    # st_blocks also counts the filesystem's own metadata (ext4 extent-tree blocks of a sparse
    # file with many extents): allow 64 KiB of it per store file.
    slack = 64 * 1024 * max(1, _store_files(d))
    limit = budget + inflight * MiB + slack
    assert max(disk_samples) > 0, "the store never held anything (wrong state dir layout?)"
    assert max(disk_samples) <= limit, "store allocated %d bytes > %d (%d samples)" % (
        max(disk_samples), limit, len(disk_samples))
    assert max(used_samples) <= limit, "cache.used_bytes reached %d > %d" % (
        max(used_samples), limit)

    # At rest nothing is in flight: back within the budget itself.
    s = _wait_stat(d, lambda s: s["cache"]["used_bytes"] <= budget)
    assert s["cache"]["budget_bytes"] == budget
    assert s["cache"]["used_bytes"] <= budget
    assert s["cache"]["evicted_chunks"] > 0
    assert harness.allocated_bytes(d.chunks_dir) <= budget + slack


def test_restart_serves_warm(registry, blobs, daemon_factory):
    b = blobs["b8"]
    d = daemon_factory(registries=[registry])
    d.add(b.ref)
    path = d.blob_path(b.digest)
    assert harness.read_file(path) == b.data
    entry = harness.wait_until(
        lambda: [e for e in d.ls() if e["digest"] == b.digest and e["verified"] is True], 30,
        interval=0.2, what="the blob to be verified")[0]
    assert entry["chunks_present"] == entry["chunks"]

    d.restart()
    harness.drop_caches([path])
    mark = registry.mark()
    assert harness.read_file(path) == b.data
    assert registry.blob_requests(b.digest, since=mark) == [], "origin contacted after restart"
    assert registry.total_bytes_served(since=mark) == 0
    s = d.stat()
    assert s["fetched"]["origin_bytes"] == 0
    assert s["blobs"] >= 1


def test_cache_files_deleted_under_daemon(registry, blobs, daemon_factory):
    b = blobs["b8"]
    d = daemon_factory(registries=[registry])
    d.add(b.ref)
    path = d.blob_path(b.digest)
    assert harness.read_file(path) == b.data
    before = d.stat()["fetched"]["origin_bytes"]

    for name in os.listdir(d.chunks_dir):
        p = os.path.join(d.chunks_dir, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)
    harness.drop_caches([path])

    mark = registry.mark()
    got = harness.read_file(path)
    assert len(got) == b.size
    assert got == b.data, "wrong bytes after the cache files were deleted (zeros served?)"
    assert registry.bytes_served(b.digest, since=mark) > 0
    assert d.stat()["fetched"]["origin_bytes"] > before


def test_cache_files_truncated_while_stopped(registry, blobs, daemon_factory):
    """Chunks whose bits say present but whose bytes were lost are refetched, never served
    as zeros (design 4: restart)."""
    b = blobs["b8"]
    d = daemon_factory(registries=[registry])
    d.add(b.ref)
    path = d.blob_path(b.digest)
    assert harness.read_file(path) == b.data
    assert d.stop() == 0
    truncated = 0
    for dirpath, _dirs, files in os.walk(d.chunks_dir):
        for name in files:
            os.truncate(os.path.join(dirpath, name), 0)
            truncated += 1
    assert truncated >= 1, "no chunk files found under %s" % d.chunks_dir
    d.start()
    harness.drop_caches([path])
    mark = registry.mark()
    got = harness.read_file(path)
    assert got == b.data, "wrong bytes after the store files were truncated"
    assert registry.bytes_served(b.digest, since=mark) > 0


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "smallfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], check=True)
    yield str(mnt)
    r = subprocess.run(["umount", str(mnt)], stderr=subprocess.DEVNULL)
    if r.returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)])


def test_disk_full_shrinks_budget(small_tmpfs, registry, blobs, daemon_factory):
    b = blobs["b32"]
    state = os.path.join(small_tmpfs, "state")
    d = daemon_factory(registries=[registry], state_dir=state,
                       extra_args=["--cache-budget", "64M"])
    d.add(b.ref)
    digest, n = harness.sha256_file(d.blob_path(b.digest))
    assert n == b.size
    assert digest == b.digest
    s = d.stat()
    assert s["cache"]["budget_bytes"] == 64 * MiB
    assert s["cache"]["effective_budget_bytes"] < s["cache"]["budget_bytes"]
    lines = d.log_lines(r"budget.*(shr[iau]nk|reduc|lower|effective)|"
                        r"(shr[iau]nk|reduc|lower|ENOSPC|no space).*budget")
    assert lines, "no log line says the budget was shrunk"
