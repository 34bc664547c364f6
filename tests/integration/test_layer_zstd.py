"""tar+zstd layer trees: a zstd layer (two frames, as the zstd tool writes them) registered with
blobctl is read through <mnt>/layers/sha256/<digest>/ from its seekable copy, a derived blob
the pass stored in the cache (itself a zstd stream of the same tar, served under blobs/ like
any blob); after a restart the index and the copy come from the store; a wrong diff_id, a
truncated layer and a frame asking for a window over 128 MiB fail clearly."""

import hashlib
import io
import json
import os
import subprocess
import tarfile

import harness

REPO = "p2pblobs/zstdseek"
MTIME = 1_700_000_000


def _add(tf, name, data=None, kind=tarfile.REGTYPE, link=""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.linkname = kind, 0o644, MTIME, link
    if data is not None:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def _big(seed, size):
    out, h = bytearray(), hashlib.sha256(seed.encode()).digest()
    while len(out) < size:
        h = hashlib.sha256(h).digest()
        out += h * 64
    return bytes(out[:size])


def layer_tar():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "bin", kind=tarfile.DIRTYPE)
        _add(tf, "bin/sh", b"#!/bin/true\n" * 1000)
        _add(tf, "bin/hl", kind=tarfile.LNKTYPE, link="bin/sh")
        _add(tf, "usr/lib/big.so", _big("big", 5 * harness.MiB + 4321))
        _add(tf, "usr/lib/rnd", os.urandom(1 * harness.MiB + 99))  # incompressible
        for i in range(40):
            _add(tf, "etc/f%02d" % i, ("file %d\n" % i).encode() * (i * 97 + 1))
    return buf.getvalue()


def zstd(data, *args):
    return subprocess.run(["zstd", "-q", "-c"] + list(args), input=data, check=True,
                          stdout=subprocess.PIPE).stdout


def files_of(tar_bytes):
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isreg()}


def layer_add(d, ref, *extra):
    r = d.blobctl("layer", "add", ref, "--wait", "120", "--json", *extra)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else None), r.stderr


def test_zstd_layer_read_through_its_seekable_copy(registry, daemon_factory):
    tar = layer_tar()
    half = len(tar) // 2
    blob = zstd(tar[:half], "-3") + zstd(tar[half:], "-3")  # two frames
    dl = registry.push_blob(REPO, blob)
    d = daemon_factory(registries=[registry])
    rc, out, err = layer_add(d, registry.ref(REPO, dl), "--diff-id", harness.sha256_digest(tar))
    assert rc == 0, err
    assert out["state"] == "built", out
    root = os.path.join(d.mountpoint, "layers", "sha256", harness.hex_of(dl))
    want = files_of(tar)
    for name, data in want.items():
        got = harness.read_file(os.path.join(root, name))
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), name
    with open(os.path.join(root, "usr/lib/big.so"), "rb") as f:  # across a frame boundary
        f.seek(harness.MiB - 100)
        assert f.read(4096) == want["usr/lib/big.so"][harness.MiB - 100:][:4096]
    sh, hl = os.lstat(os.path.join(root, "bin/sh")), os.lstat(os.path.join(root, "bin/hl"))
    assert sh.st_ino == hl.st_ino and sh.st_nlink == 2

    r = d.blobctl("layers", "--json")
    assert r.returncode == 0, r.stderr
    (lo,) = [l for l in json.loads(r.stdout) if l["digest"] == dl]
    assert lo["format"] == "zstd" and lo["bytes_fetched"] > 0, lo

    # The seekable copy is a blob of the cache like any other, and a zstd stream of the tar.
    copies = []
    for hexd in os.listdir(d.blobs_dir):
        if "sha256:" + hexd == dl:
            continue
        data = harness.read_file(os.path.join(d.blobs_dir, hexd))
        if data[:4] == b"\x28\xb5\x2f\xfd":
            dec = subprocess.run(["zstd", "-q", "-dc"], input=data, stdout=subprocess.PIPE)
            if dec.returncode == 0 and dec.stdout == tar:
                copies.append(hexd)
    assert len(copies) == 1, "one seekable copy of the layer among the blobs"

    d.restart()
    harness.wait_until(lambda: os.path.isdir(root), 60, what="zstd layer ready after restart")
    r = d.blobctl("layers", "--json")
    (lo,) = [l for l in json.loads(r.stdout) if l["digest"] == dl]
    assert lo["state"] == "local", lo
    assert harness.read_file(os.path.join(root, "etc/f39")) == want["etc/f39"]
    assert harness.read_file(os.path.join(root, "usr/lib/rnd")) == want["usr/lib/rnd"]


def test_bad_zstd_layers_fail_clearly(registry, daemon_factory):
    tar = layer_tar()
    good = zstd(tar, "-3")
    wrong_diff = registry.push_blob(REPO, good)
    truncated = registry.push_blob(REPO, good[:len(good) - 3])
    # From a pipe the tool cannot size the window down to the input: 256 MiB stays.
    huge_window = registry.push_blob(REPO, zstd(tar, "-1", "--long=28"))
    d = daemon_factory(registries=[registry])

    rc, out, err = layer_add(d, registry.ref(REPO, wrong_diff), "--diff-id",
                             "sha256:" + "ab" * 32)
    assert rc == 1 and out["state"] == "failed" and "diff_id" in out["error"], (rc, out, err)
    rc, out, err = layer_add(d, registry.ref(REPO, truncated))
    assert rc == 1 and out["state"] == "failed" and "truncated" in out["error"], (rc, out, err)
    rc, out, err = layer_add(d, registry.ref(REPO, huge_window))
    assert rc == 1 and out["state"] == "failed" and "window" in out["error"], (rc, out, err)
    for dg in (wrong_diff, truncated, huge_window):
        assert not os.path.exists(os.path.join(d.mountpoint, "layers", "sha256",
                                               harness.hex_of(dg)))
    # Nothing of the failed passes' copies was kept: only the three layers are blobs here.
    assert len(os.listdir(d.blobs_dir)) == 3
    assert d.alive()
