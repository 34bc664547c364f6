"""The read path: lazy partial reads, whole-blob integrity, single flight."""

import os
import threading

import harness
from harness import MiB


def test_partial_read_fetches_little(registry, blobs, daemon_factory):
    """A 1 MiB read at an unaligned offset of a 64 MiB blob fetches at most 4 MiB from the
    origin (by the daemon's own count AND the registry's log) and returns the right bytes."""
    b = blobs["big64"]
    d = daemon_factory(registries=[registry])
    digest, size = d.add(b.ref)
    assert (digest, size) == (b.digest, b.size)

    before = d.stat()["fetched"]["origin_bytes"]
    mark = registry.mark()
    off = 23 * MiB + 777_777
    got = harness.pread_exact(d.blob_path(b.digest), off, MiB)
    assert got == b.data[off:off + MiB], "bytes differ from the source slice"

    registry.settle()
    fetched = d.stat()["fetched"]["origin_bytes"] - before
    served = registry.bytes_served(b.digest, since=mark)
    gets = registry.blob_get_count(b.digest, since=mark)
    assert 0 < served <= 4 * MiB, "registry served %d bytes in %d GETs for a 1 MiB read" % (
        served, gets)
    assert 0 < fetched <= 4 * MiB, "daemon reports %d origin bytes for a 1 MiB read" % fetched


def test_full_read_matches_digest(registry, blobs, daemon_factory):
    b = blobs["big64"]
    d = daemon_factory(registries=[registry])
    d.add(b.ref)
    path = d.blob_path(b.digest)
    assert os.stat(path).st_size == b.size
    digest, n = harness.sha256_file(path)
    assert n == b.size
    assert digest == b.digest

    # The blob is now complete and verified; the index says so (verification may finish a
    # moment after the last byte was served: allow a generous bound).
    entry = harness.wait_until(lambda: _verified_entry(d, b.digest), 30, interval=0.2,
                               what="blobctl ls to show the blob verified")
    assert entry["size"] == b.size
    assert entry["chunks_present"] == entry["chunks"] == (b.size + MiB - 1) // MiB


def test_sequential_cold_read_coalesces_gets(registry, blobs, daemon_factory):
    """A sequential cold read of N chunks asks the origin with fewer than N GETs (readahead
    fetches runs of consecutive chunks with one ranged GET each, by the registry's own log),
    fetches each byte once, and returns the right bytes."""
    b = blobs["big64"]
    d = daemon_factory(registries=[registry])
    d.add(b.ref)
    mark = registry.mark()
    digest, n = harness.sha256_file(d.blob_path(b.digest))
    assert (digest, n) == (b.digest, b.size)
    registry.settle()
    nchunks = (b.size + MiB - 1) // MiB
    gets = registry.blob_get_count(b.digest, since=mark)
    served = registry.bytes_served(b.digest, since=mark)
    assert 0 < gets < nchunks, "%d GETs for a sequential read of %d chunks" % (gets, nchunks)
    assert served == b.size, "registry served %d bytes for a %d-byte blob" % (served, b.size)


def _verified_entry(d, digest):
    e = {e["digest"]: e for e in d.ls()}.get(digest)
    return e if e and e["verified"] is True else None


def test_single_flight(registry, blobs, daemon_factory):
    """32 readers of the same missing chunk at the same moment: one origin GET."""
    b = blobs["one_mib"]
    assert b.size == MiB
    d = daemon_factory(registries=[registry])
    d.add(b.ref)
    before = d.stat()["fetched"]["origin_requests"]
    mark = registry.mark()
    path = d.blob_path(b.digest)

    n = 32
    off, length = 12288, 4096
    barrier = threading.Barrier(n)
    results = [None] * n

    def reader(i):
        fd = os.open(path, os.O_RDONLY)
        try:
            barrier.wait(timeout=30)
            results[i] = os.pread(fd, length, off)
        except Exception as e:  # reported below
            results[i] = e
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "readers hung"
    want = b.data[off:off + length]
    bad = [(i, r) for i, r in enumerate(results) if r != want]
    assert not bad, "readers got wrong bytes or errors: %r" % [
        (i, r if isinstance(r, Exception) else len(r)) for i, r in bad[:5]]

    gets = registry.blob_requests(b.digest, "GET", since=mark)
    assert len(gets) == 1, "registry served %d GETs for one chunk: %r" % (len(gets), gets)
    reqs = d.stat()["fetched"]["origin_requests"] - before
    assert reqs == 1, "daemon reports %d origin requests for one chunk" % reqs


def test_reads_at_the_end(registry, blobs, daemon_factory):
    """A blob whose size is not a multiple of the chunk size: reads across the last chunk
    boundary, ending exactly at EOF, and past EOF."""
    b = blobs["b3"]
    assert b.size % MiB != 0
    d = daemon_factory(registries=[registry])
    d.add(b.ref)
    path = d.blob_path(b.digest)
    fd = os.open(path, os.O_RDONLY)
    try:
        last = (b.size // MiB) * MiB
        assert os.pread(fd, 8192, last - 4096) == b.data[last - 4096:last + 4096]
        assert os.pread(fd, 4096, b.size - 10) == b.data[-10:]
        assert os.pread(fd, 4096, b.size) == b""
        assert os.pread(fd, 4096, b.size + 5 * MiB) == b""
        assert os.pread(fd, 1, 0) == b.data[:1]
    finally:
        os.close(fd)
    assert harness.sha256_file(path) == (b.digest, b.size)
