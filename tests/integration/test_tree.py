"""The mounted tree: names, listing, attributes, read-only."""

import errno
import hashlib
import os
import signal
import stat

import pytest

pytestmark = pytest.mark.root


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
