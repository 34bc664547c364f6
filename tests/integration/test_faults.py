"""Faults at the edges: a corrupting origin, an origin that is down or hangs, kill -9."""

import errno
import hashlib
import os
import threading
import time

import pytest

import harness
from harness import MiB, KiB

# What a log line must name for each way the origin fails.
FAILURE_REASON = {
    "stopped": r"refused|connect",
    "hung": r"timed? ?out|timeout|deadline",
}


def _corrupt(path, offsets):
    """Flip the bytes at OFFSETS of PATH in place (same size)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            c = f.read(1)
            f.seek(off)
            f.write(bytes([c[0] ^ 0xFF]))
    assert os.path.getsize(path) == size


def _full_read_must_fail(path, want_size, label):
    """Read PATH to the end; it must fail with EIO at some point. Returns bytes read before."""
    h = hashlib.sha256()
    n = 0
    try:
        with open(path, "rb", buffering=0) as f:
            while True:
                b = f.read(MiB)
                if not b:
                    break
                h.update(b)
                n += len(b)
    except OSError as e:
        assert e.errno == errno.EIO, "%s: expected EIO, got %r" % (label, e)
        return n
    pytest.fail("%s: a full read of a corrupted blob completed (%d of %d bytes, sha256:%s) "
                "instead of failing with EIO" % (label, n, want_size, h.hexdigest()))


def test_corrupt_origin_gives_eio(private_registry, daemon_factory):
    reg = private_registry
    big = harness.make_blob(reg, "corrupt4m", harness.gen_bytes(101, 4 * MiB))
    one = harness.make_blob(reg, "corrupt200k", harness.gen_bytes(102, 200 * KiB))
    # Flip bytes in the first chunk (served first, before the whole blob can be verified) and
    # in the middle; sizes stay the same so the registry's HEAD still agrees.
    _corrupt(reg.blob_path_on_disk(big.digest), [100, 2 * MiB + 4321])
    _corrupt(reg.blob_path_on_disk(one.digest), [150 * KiB])

    d = daemon_factory(registries=[reg])
    assert d.add(big.ref) == (big.digest, big.size)
    assert d.add(one.ref) == (one.digest, one.size)

    path = d.blob_path(big.digest)
    _full_read_must_fail(path, big.size, "first full read")
    _full_read_must_fail(path, big.size, "second full read")
    harness.drop_caches([path])
    _full_read_must_fail(path, big.size, "third full read, after dropping caches")

    # A blob smaller than a chunk is verified before any byte of it is served.
    with pytest.raises(OSError) as ei:
        harness.pread_exact(d.blob_path(one.digest), 0, 4096)
    assert ei.value.errno == errno.EIO

    assert d.alive()
    entry = {e["digest"]: e for e in d.ls()}[big.digest]
    assert entry["verified"] is False
    assert d.log_lines(r"mismatch|verif|corrupt|digest", levels=("warning", "error")), \
        "no warning/error log line says why the reads failed"


def _read_with_timing(path, off, length):
    t0 = time.monotonic()
    try:
        data = harness.pread_exact(path, off, length)
        return data, None, time.monotonic() - t0
    except OSError as e:
        return None, e, time.monotonic() - t0


@pytest.mark.parametrize("how", ["stopped", "hung"])
def test_origin_down(private_registry, daemon_factory, how):
    """Origin stopped (connection refused) or hung (SIGSTOP: accepts, never answers): a read of
    an uncached chunk fails with EIO within fetch-timeout + slack, the reason is logged, the
    daemon stays up, and reads work again once the origin is back."""
    reg = private_registry
    b = harness.make_blob(reg, "down3m", harness.gen_bytes(103, 3 * MiB))
    d = daemon_factory(registries=[reg], extra_args=["--fetch-timeout", "3s"])
    d.add(b.ref)
    path = d.blob_path(b.digest)

    if how == "stopped":
        reg.stop()
    else:
        reg.pause()
    off = MiB + 5000
    data, err, took = _read_with_timing(path, off, 4096)
    assert data is None, "read succeeded with the origin %s" % how
    assert err.errno == errno.EIO, "expected EIO, got %r" % err
    assert took <= 3 + 10, "EIO took %.1fs with --fetch-timeout 3s" % took

    lines = d.log_lines(FAILURE_REASON[how], levels=("warning", "error"))
    assert lines, "no warning/error log line names the fetch failure (/%s/)" % FAILURE_REASON[how]
    assert d.alive()
    assert "cache" in d.stat()

    if how == "stopped":
        reg.start()
    else:
        reg.resume()
    data = harness.wait_until(lambda: _read_with_timing(path, off, 4096)[0], 20, interval=0.5,
                              what="reads to work again after the origin came back")
    assert data == b.data[off:off + 4096]
    digest, n = harness.sha256_file(path)
    assert (digest, n) == (b.digest, b.size)


def test_kill9_mid_read_and_restart(registry, blobs, daemon_factory):
    b = blobs["big64"]
    d = daemon_factory(registries=[registry])
    d.add(b.ref)
    path = d.blob_path(b.digest)

    progress = [0]
    outcome = {}

    def reader():
        try:
            with open(path, "rb", buffering=0) as f:
                while True:
                    chunk = f.read(MiB)
                    if not chunk:
                        break
                    progress[0] += len(chunk)
                    time.sleep(0.02)  # stay mid-read long enough to be killed
            outcome["done"] = True
        except OSError as e:
            outcome["error"] = e

    t = threading.Thread(target=reader)
    t.start()
    harness.wait_until(lambda: progress[0] >= 8 * MiB or not t.is_alive(), 60,
                       what="reader progress")
    d.kill9()
    t.join(30)
    assert not t.is_alive(), "reader hung after the daemon was killed"
    if "done" in outcome:
        pytest.fail("read finished before the kill; test could not kill mid-read")
    assert isinstance(outcome.get("error"), OSError)

    # The old mount is stale now; the new daemon must recover it by itself (unmount it, not
    # stack a new mount on top of it).
    assert harness.mount_count(d.mountpoint) == 1
    d.start()
    harness.drop_caches([path])
    try:
        digest, n = harness.sha256_file(path)
    except OSError as e:
        pytest.fail("read after restart failed: %r; %d mount(s) on the mountpoint, the daemon "
                    "is %s" % (e, harness.mount_count(d.mountpoint),
                               "alive" if d.alive() else "dead"))
    assert (digest, n) == (b.digest, b.size)
    assert harness.mount_count(d.mountpoint) == 1, (
        "%d mounts stacked on %s: the stale mount was not cleaned up"
        % (harness.mount_count(d.mountpoint), d.mountpoint))
