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
