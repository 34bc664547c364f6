"""Restarts and stops through a real daemon: a --chunk-size change re-chunks the cache once, and
reads that a stop cuts short fail with EIO, as the README says."""

import errno
import os
import re
import signal
import threading

import pytest

import harness
from harness import MiB

pytestmark = pytest.mark.root


def _last_start_log(d):
    """The daemon log since the most recent start (the log is appended across restarts)."""
    text = d.log_text()
    i = text.rfind("==== start ")
    return text[i:] if i >= 0 else text


def _index_loaded(d):
    """The fields of the last start's `index loaded` line, as a dict of ints."""
    lines = [l for l in _last_start_log(d).splitlines() if "index loaded" in l]
    assert lines, "no 'index loaded' line since the last start:\n" + _last_start_log(d)[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}


def _store_allocated(d):
    return harness.allocated_bytes(d.chunks_dir)


def test_chunk_size_change_rechunks_once(registry, blobs, daemon_factory):
    """Restart with another --chunk-size: that start re-chunks the blob (its old chunks cannot
    be mapped); the next start with the same size must find the blob already re-chunked and
    keep the chunks read meanwhile, serving them without the origin."""
    b = blobs["b8"]
    d = daemon_factory(registries=[registry])
    d.add(b.ref)
    assert harness.sha256_file(d.blob_path(b.digest))[0] == b.digest

    d.restart(extra_args=["--chunk-size", "256K"])
    first = _index_loaded(d)
    assert first["blobs_rechunked"] == 1, first
    assert d.stat()["chunk_size"] == 256 * 1024
    assert harness.sha256_file(d.blob_path(b.digest))[0] == b.digest
    present = d.stat()["cache"]["chunks_present"]
    assert present == b.size // (256 * 1024), present
    assert _store_allocated(d) >= b.size

    d.restart(extra_args=["--chunk-size", "256K"])
    second = _index_loaded(d)
    assert second["blobs_rechunked"] == 0, \
        "the second start with the same --chunk-size re-chunked again: %r" % second
    assert second["chunks_present"] == present, second
    assert second["chunks_lost"] == 0, second
    assert _store_allocated(d) >= b.size, "the store file was deleted at the second start"
    mark = registry.mark()
    harness.drop_caches([d.blob_path(b.digest)])
    assert harness.sha256_file(d.blob_path(b.digest))[0] == b.digest
    assert registry.blob_get_count(b.digest, since=mark) == 0, \
        "the kept chunks were fetched from the origin again"


def _pread(fd, offset, length, out):
    try:
        out.append(("data", os.pread(fd, length, offset)))
    except OSError as e:
        out.append(("error", e))


@pytest.mark.parametrize("readers", [1, 3])
def test_read_failed_by_shutdown_gets_eio(private_registry, daemon_factory, readers):
    """A read blocked on a stalled origin when the daemon is stopped fails with EIO (README:
    "fails what is left with EIO"), not with the FUSE connection's ECONNABORTED/ENOTCONN."""
    reg = private_registry
    blob = harness.make_blob(reg, "stall%d" % readers, harness.gen_bytes(77 + readers, 4 * MiB))
    d = daemon_factory(registries=[reg],
                       extra_args=["--shutdown-timeout", "1s", "--fetch-timeout", "120s"])
    d.add(blob.ref)
    reg.pause()  # the origin accepts connections and never answers
    # Every file is opened before any read waits: an open of a blob not verified yet drops
    # the kernel's cache of it, which waits for pages a pending read holds locked.
    fds = [os.open(d.blob_path(blob.digest), os.O_RDONLY) for _ in range(readers)]
    try:
        outs, threads = [], []
        for i, fd in enumerate(fds):
            out = []
            t = threading.Thread(target=_pread, args=(fd, i * MiB, MiB, out), daemon=True)
            t.start()
            outs.append(out)
            threads.append(t)
        harness.wait_until(lambda: d.stat()["fetched"]["inflight_chunks"] >= readers, 20,
                           what="the reads to be waiting on the origin")
        assert not any(outs), "a read finished while the origin was paused: %r" % outs
        assert d.stop(signal.SIGTERM, timeout=30, unmount=False) == 0
        for t in threads:
            t.join(20)
            assert not t.is_alive(), "a read is still blocked after the daemon exited"
    finally:
        reg.resume()
        for fd in fds:
            os.close(fd)
    for out in outs:
        assert out and out[0][0] == "error", "the stalled read got %r" % (out,)
        e = out[0][1]
        assert e.errno == errno.EIO, "the read cut short by the stop got %s, not EIO" % (
            errno.errorcode.get(e.errno, e.errno))
