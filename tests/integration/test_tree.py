"""The mounted tree: names, listing, attributes, read-only."""

import errno
import hashlib
import os
import signal
import stat

import pytest


def test_bad_names_enoent_without_origin(registry, blobs, daemon_factory):
    b = blobs["one_mib"]
    d = daemon_factory(registries=[registry])
    d.add(b.ref)
    mark = registry.mark()

    unregistered = hashlib.sha256(b"never registered anywhere").hexdigest()
    bad = [
        os.path.join(d.blobs_dir, "xyz"),
        os.path.join(d.blobs_dir, b.hex[:63]),
        os.path.join(d.blobs_dir, b.hex + "0"),
        os.path.join(d.blobs_dir, b.hex.upper()),
        os.path.join(d.blobs_dir, unregistered),
        os.path.join(d.blobs_dir, "sha256:" + b.hex),
        os.path.join(d.mountpoint, "blobs", "sha512", hashlib.sha512(b.data).hexdigest()),
        os.path.join(d.mountpoint, "blobs", "sha512", b.hex),
    ]
    for p in bad:
        with pytest.raises(FileNotFoundError):
            os.stat(p)
        with pytest.raises(FileNotFoundError):
            open(p, "rb").close()

    reqs = registry.requests()[mark:]
    assert reqs == [], "the registry was contacted for bad names: %r" % reqs
    assert d.alive()


def test_listing_and_attributes(registry, blobs, daemon_factory):
    regd = [blobs["one_mib"], blobs["small200k"], blobs["b3"]]
    d = daemon_factory(registries=[registry])
    for b in regd:
        assert d.add(b.ref) == (b.digest, b.size)

    assert "sha256" in os.listdir(os.path.join(d.mountpoint, "blobs"))
    names = set(os.listdir(d.blobs_dir))
    assert names == {b.hex for b in regd}

    for b in regd:
        p = d.blob_path(b.digest)
        st = os.stat(p)
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o444
        assert st.st_size == b.size
        with pytest.raises(OSError) as ei:
            os.open(p, os.O_WRONLY)
        assert ei.value.errno in (errno.EROFS, errno.EACCES)
        with pytest.raises(OSError) as ei:
            os.open(p, os.O_RDWR)
        assert ei.value.errno in (errno.EROFS, errno.EACCES)

    with pytest.raises(OSError) as ei:
        os.open(os.path.join(d.blobs_dir, "newfile"), os.O_WRONLY | os.O_CREAT, 0o644)
    assert ei.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)

    listed = {e["digest"]: e for e in d.ls()}
    assert set(listed) == {b.digest for b in regd}
    for b in regd:
        e = listed[b.digest]
        assert e["size"] == b.size
        assert e["source"] == "%s/%s" % (registry.hostport, b.repo)
        assert e["chunks"] == (b.size + (1 << 20) - 1) >> 20
        assert e["chunks_present"] == 0
        assert e["verified"] is False
    s = d.stat()
    assert s["blobs"] == len(regd)
    assert s["chunk_size"] == 1 << 20


def test_sigint_unmounts_and_exits_0(registry, blobs, daemon_factory):
    b = blobs["small200k"]
    d = daemon_factory(registries=[registry])
    d.add(b.ref)
    assert d.stop(sig=signal.SIGINT, unmount=False) == 0
    assert not d.mounted()
    assert not d.bad_stops, d.bad_stops


def test_stat_schema(registry, blobs, daemon_factory):
    """blobctl stat --json has every documented field, with sane values."""
    b = blobs["small200k"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "16M"])
    d.add(b.ref)
    assert open(d.blob_path(b.digest), "rb").read() == b.data
    s = d.stat()
    for k in ("budget_bytes", "effective_budget_bytes", "used_bytes", "pinned_bytes",
              "chunks_present", "hits", "misses", "evicted_chunks"):
        assert isinstance(s["cache"][k], int) and s["cache"][k] >= 0, k
    for k in ("origin_bytes", "origin_requests", "origin_errors", "peer_bytes",
              "inflight_chunks"):
        assert isinstance(s["fetched"][k], int) and s["fetched"][k] >= 0, k
    for k in ("rss_bytes", "cgroup_usage_bytes", "cgroup_working_set_bytes",
              "store_page_cache_bytes"):
        assert isinstance(s["memory"][k], int) and s["memory"][k] >= 0, k
    assert s["cache"]["budget_bytes"] == 16 << 20
    assert s["cache"]["effective_budget_bytes"] <= s["cache"]["budget_bytes"]
    assert s["cache"]["used_bytes"] == s["cache"]["chunks_present"] * (1 << 20) or \
        s["cache"]["used_bytes"] == b.size
    assert s["cache"]["chunks_present"] == 1
    assert s["fetched"]["origin_bytes"] == b.size
    assert s["fetched"]["inflight_chunks"] == 0
    assert s["blobs"] == 1
    assert s["chunk_size"] == 1 << 20
    assert s["memory"]["rss_bytes"] > 0
    # kubelet's working set is usage - inactive_file: never above usage.
    assert s["memory"]["cgroup_working_set_bytes"] <= s["memory"]["cgroup_usage_bytes"]
