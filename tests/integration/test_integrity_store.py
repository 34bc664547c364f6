"""Bit rot in the store (issue 13, item 1): bytes changed on disk under the daemon are never
served. Each case reads a blob whole through the mount (it verifies), damages the store file
under <state-dir>/chunks/, drops the page cache (machine-wide, and the FUSE file's) and reads
again through a fresh open: the reader gets the blob's bytes (the damaged chunks refetched from
the origin) or, with the origin down, EIO — never a wrong byte. The store's checksums
(cache/store.c) are what notices; before them every one of these served the damaged bytes.
"""

import errno
import os
import re
import urllib.request

import pytest

import harness
from harness import MiB, KiB

pytestmark = pytest.mark.root

CHECKSUM_LOG = r"store chunk failed its checksum"


def store_file(d, digest):
    return os.path.join(d.state_dir, "chunks", "sha256", harness.hex_of(digest))


def sums_file(d, digest):
    return os.path.join(d.state_dir, "chunks", "crc32c", harness.hex_of(digest))


def ls_entry(d, digest):
    return {b["digest"]: b for b in d.ls()}[digest]


def errors_of(d):
    return d.stat()["errors"]


def origin_bytes(d):
    return d.stat()["fetched"]["origin_bytes"]


def wait_verified(d, digest, timeout=30):
    harness.wait_until(lambda: ls_entry(d, digest)["verified"], timeout, interval=0.1,
                       what="%s verified" % digest[:19])


def warm(d, blob):
    """Read BLOB whole through the mount and wait until it is verified."""
    d.add(blob.ref)
    assert harness.read_file(d.blob_path(blob.digest)) == blob.data
    wait_verified(d, blob.digest)
    harness.wait_until(lambda: d.stat()["fetched"]["inflight_chunks"] == 0, 30,
                       what="nothing in flight")


def poke(path, off, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, off) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)


def flip(path, off):
    fd = os.open(path, os.O_RDWR)
    try:
        c = os.pread(fd, 1, off)
        os.pwrite(fd, bytes([c[0] ^ 0x01]), off)
        os.fsync(fd)
    finally:
        os.close(fd)


def reread(d, blob):
    """Drop every cache, read BLOB whole through a fresh open: its bytes or EIO, never others.
    Returns the bytes (None on EIO)."""
    path = d.blob_path(blob.digest)
    harness.drop_caches([path, store_file(d, blob.digest)])
    try:
        got = harness.read_file(path)
    except OSError as e:
        assert e.errno == errno.EIO, "expected the right bytes or EIO, got %r" % e
        return None
    assert len(got) == blob.size, "short read: %d of %d" % (len(got), blob.size)
    if got != blob.data:
        bad = next(i for i in range(blob.size) if got[i] != blob.data[i])
        pytest.fail("a wrong byte reached the reader at offset %d (chunk %d)" % (bad, bad // MiB))
    return got


def check_refetched(d, blob, before_origin, chunks):
    """The reader got the right bytes, CHUNKS chunks came again from the origin, the damage was
    counted and logged once, and the blob is verified again."""
    assert reread(d, blob) is not None, "EIO although the origin is up"
    assert origin_bytes(d) >= before_origin + chunks * MiB - MiB  # the last one may be short
    e = errors_of(d)
    assert e["store_corrupt_chunks"] >= chunks, e
    assert len(d.log_lines(CHECKSUM_LOG)) == 1, d.log_lines(CHECKSUM_LOG)  # once per blob
    wait_verified(d, blob.digest)
    # And the repaired store serves a third read without the origin.
    o = origin_bytes(d)
    assert reread(d, blob) is not None
    assert origin_bytes(d) == o


def test_flipped_byte_is_refetched(registry, blobs, daemon_factory):
    b8 = blobs["b8"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])
    warm(d, b8)
    o = origin_bytes(d)
    flip(store_file(d, b8.digest), 2 * MiB + 777)
    # A small read inside the damaged 4 KiB block first: the check covers every byte read,
    # not only whole chunks.
    harness.drop_caches([d.blob_path(b8.digest)])
    assert harness.pread_exact(d.blob_path(b8.digest), 2 * MiB + 700, 100) == \
        b8.data[2 * MiB + 700:2 * MiB + 800]
    check_refetched(d, b8, o, 1)
    assert errors_of(d)["store_corrupt_chunks"] == 1
    assert errors_of(d)["read_errors"] == 0  # refetched transparently, not EIO
    # Human stat and /metrics show the counter too.
    r = d.blobctl("stat")
    assert r.returncode == 0 and "1 corrupt in store" in r.stdout, r.stdout
    metrics = urllib.request.urlopen("http://%s/metrics" % d.listen, timeout=10).read().decode()
    assert "\np2pblobs_store_corrupt_chunks_total 1\n" in metrics


def test_damage_in_second_chunk_of_a_straddling_read(registry, blobs, daemon_factory):
    """A read across a chunk edge is one store read of both chunks (engine/read.c): damage in
    the second must be pinned on that chunk alone, refetched once, the first left alone."""
    b8 = blobs["b8"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])
    warm(d, b8)
    o = origin_bytes(d)
    flip(store_file(d, b8.digest), 3 * MiB + 100)
    path = d.blob_path(b8.digest)
    harness.drop_caches([path, store_file(d, b8.digest)])
    off = 3 * MiB - 4 * KiB  # the kernel's request starts in chunk 2 and runs into chunk 3
    assert harness.pread_exact(path, off, 8 * KiB) == b8.data[off:off + 8 * KiB]
    e = errors_of(d)
    assert e["store_corrupt_chunks"] == 1, e  # chunk 2 was not blamed first
    assert e["read_errors"] == 0, e
    assert origin_bytes(d) == o + MiB  # chunk 3 alone came again
    wait_verified(d, b8.digest)
    assert reread(d, b8) is not None


def test_zeros_over_a_chunk(registry, blobs, daemon_factory):
    b8 = blobs["b8"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])
    warm(d, b8)
    o = origin_bytes(d)
    poke(store_file(d, b8.digest), 5 * MiB, bytes(MiB))  # data, not a hole
    check_refetched(d, b8, o, 1)


def test_store_file_replaced_by_random_bytes(registry, blobs, daemon_factory):
    b8 = blobs["b8"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])
    warm(d, b8)
    o = origin_bytes(d)
    path = store_file(d, b8.digest)
    tmp = path + ".new"
    with open(tmp, "wb") as f:
        f.write(os.urandom(b8.size))
    os.replace(tmp, path)
    check_refetched(d, b8, o, 8)


def test_truncated_store_file(registry, blobs, daemon_factory):
    b8 = blobs["b8"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])
    warm(d, b8)
    o = origin_bytes(d)
    os.truncate(store_file(d, b8.digest), 3 * MiB + 5000)
    assert reread(d, b8) is not None
    assert origin_bytes(d) >= o + 5 * MiB - 5000
    assert errors_of(d)["lost_chunks"] >= 5


def test_checksum_file_deleted(registry, blobs, daemon_factory):
    b8 = blobs["b8"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])
    warm(d, b8)
    o = origin_bytes(d)
    os.unlink(sums_file(d, b8.digest))
    assert reread(d, b8) is not None  # nothing unchecked is served: all refetched
    assert origin_bytes(d) >= o + 8 * MiB


def test_damage_while_stopped_after_restart(registry, blobs, daemon_factory):
    """Damage done while the daemon is down (bytes still there, checksums intact) is caught on
    the first read after the restart; damaged checksums are caught at start."""
    b8, b3 = blobs["b8"], blobs["b3"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])
    warm(d, b8)
    warm(d, b3)
    d.stop()
    flip(store_file(d, b8.digest), 6 * MiB + 4096 * 3 + 1)
    poke(store_file(d, b8.digest), 0, bytes(4096))
    poke(sums_file(d, b3.digest), 8 * 300, bytes(8))  # one entry of chunk 1 of b3
    d.start()
    o = origin_bytes(d)
    assert ls_entry(d, b3.digest)["chunks_present"] == b3.size // MiB  # chunk 1 not present
    assert reread(d, b8) is not None
    assert reread(d, b3) is not None
    assert origin_bytes(d) >= o + 3 * MiB
    assert errors_of(d)["store_corrupt_chunks"] == 2  # b8's chunks 0 and 6
    wait_verified(d, b8.digest)
    wait_verified(d, b3.digest)


def test_origin_down_gives_eio_and_unverified(private_registry, daemon_factory):
    """With nowhere to refetch from, the damaged chunk is EIO — never the damaged bytes — the
    blob stops being 'verified', and it comes back once the origin does."""
    reg = private_registry
    blob = harness.make_blob(reg, "rot4m", harness.gen_bytes(131, 4 * MiB))
    d = daemon_factory(registries=[reg], extra_args=["--cache-budget", "64M",
                                                     "--fetch-timeout", "2s"])
    warm(d, blob)
    flip(store_file(d, blob.digest), MiB + 12345)
    reg.stop()
    path = d.blob_path(blob.digest)
    harness.drop_caches([path])
    with pytest.raises(OSError) as ei:
        harness.pread_exact(path, MiB, MiB)
    assert ei.value.errno == errno.EIO
    # The other chunks are still served; the blob is no longer called verified.
    assert harness.pread_exact(path, 2 * MiB, MiB) == blob.data[2 * MiB:3 * MiB]
    entry = ls_entry(d, blob.digest)
    assert not entry["verified"] and entry["chunks_present"] == 3, entry
    r = d.blobctl("ls")
    row = [l for l in r.stdout.splitlines() if blob.digest in l]
    m = re.search(r"\d+%\s+(yes|no)\s", row[0]) if row else None
    assert m and m.group(1) == "no", r.stdout  # the VER column
    assert errors_of(d)["store_corrupt_chunks"] == 1
    reg.start()
    harness.wait_until(lambda: reread(d, blob) is not None, 30, interval=0.5,
                       what="the blob readable again once the origin is back")
    wait_verified(d, blob.digest)


def test_peer_is_never_served_a_rotten_chunk(build_dir, net):
    """A peer reading from this node's store gets the same check as a local reader: A holds a
    blob, one byte of A's store file flips; A's peer server does not send the damaged chunk
    (it says it does not have it), and B's reader gets the blob's bytes."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    blob = harness.make_blob(reg, "rot16", harness.gen_bytes(141, 16 * MiB),
                             repo="p2pblobs/integrity")
    ha, hb = net.add_host("a", s), net.add_host("b", s)
    peers = "%s:5001,%s:5001" % (ha.ip, hb.ip)

    def flags(h):
        return ["--advertise-address", h.ip, "--peers", peers, "--peer-refresh", "1s",
                "--peer-connect-timeout", "250ms", "--peer-stall-timeout", "1s"]
    a = net.daemon(build_dir, ha, registries=[reg], extra_args=flags(ha))
    b = net.daemon(build_dir, hb, registries=[reg], extra_args=flags(hb))
    for d, other in ((a, b), (b, a)):
        harness.wait_until(lambda d=d, o=other: any(
            p.get("id") == o.peer_id and p.get("state") == "up" for p in d.peers()), 15,
            interval=0.2, what="%s sees %s up" % (d.host.name, other.host.name))
    warm(a, blob)
    flip(a.chunk_file(blob.digest), 5 * MiB + 999)
    harness.drop_caches()
    st, _h, body = net.http(ha.ip, 5001, "GET", "/v2/x/blobs/" + blob.digest,
                            headers={"Range": "bytes=%d-%d" % (5 * MiB, 6 * MiB - 1)})
    assert not (st == 206 and body != blob.data[5 * MiB:6 * MiB]), \
        "A's peer server sent the damaged chunk"
    assert st != 206 or body == blob.data[5 * MiB:6 * MiB]
    assert a.stat()["errors"]["store_corrupt_chunks"] == 1
    b.add(blob.ref)
    got, n = harness.sha256_file(b.blob_path(blob.digest))
    assert (got, n) == (blob.digest, blob.size)
