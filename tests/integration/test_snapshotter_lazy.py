"""Lazy layers through the p2pblobs snapshotter, with a real containerd 1.6.

A private containerd with [proxy_plugins.p2pblobs] pulls with `ctr-remote image rpull` (Debian's
stargz-snapshotter: it puts each layer's identity in the snapshot labels, as CRI does with
disable_snapshot_annotations = false; plain `ctr pull` fetches every layer first), then
`ctr run --snapshotter p2pblobs` runs commands in the image. The image is built here: gzip
layers from tarfile, one with a whiteout and an opaque dir over the other.

- Fallback (runs on any daemon): with lazy layers off every layer Prepare gets a normal
  snapshot, containerd downloads and unpacks each layer, and the container runs. The labels
  reached the snapshotter (blobctl snapshots shows each layer's digest).
- Lazy (needs the layer trees of the mount, `<mountpoint>/layers/`; skipped without): the
  layers are remote snapshots, containerd's content store holds no layer, the container sees
  the right files (whiteout and opaque dir applied by overlayfs over the layer trees), a
  process of uid 1000 reads them, and after a daemon restart the container starts again. An
  image of 120 layers mounts (containerd's one-page mount options).
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest

import ctrd
import harness

CTR_REMOTE = "/usr/bin/ctr-remote"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd and overlay mounts need root"),
    pytest.mark.skipif(not os.access(CTR_REMOTE, os.X_OK),
                       reason="ctr-remote is not installed (stargz-snapshotter; scripts/deps.sh)"),
]

HELLO = b"hello from a lazy layer\n"


def _tar_layer(entries):
    """A gzip'ed tar of ENTRIES: (path, bytes or None for a dir, mode, uid). Deterministic.
    Returns (compressed, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, data, mode, uid in entries:
            ti = tarfile.TarInfo(path)
            ti.mode, ti.mtime, ti.uid, ti.gid = mode, 0, uid, uid
            if data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    tar = raw.getvalue()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as g:
        g.write(tar)
    return buf.getvalue(), "sha256:" + hashlib.sha256(tar).hexdigest()


def image_layers():
    with open(ctrd.BUSYBOX, "rb") as f:
        bb = f.read()
    base = _tar_layer([
        ("bin", None, 0o755, 0), ("bin/busybox", bb, 0o755, 0),
        ("data", None, 0o755, 0), ("data/hello.txt", HELLO, 0o644, 0),
        ("data/gone.txt", b"whited out\n", 0o644, 0),
        ("data/mine.txt", b"uid 1000 only\n", 0o600, 1000),
        ("opq", None, 0o755, 0), ("opq/a", b"a\n", 0o644, 0),
    ])
    top = _tar_layer([
        ("data", None, 0o755, 0), ("data/.wh.gone.txt", b"", 0o644, 0),
        ("opq", None, 0o755, 0), ("opq/.wh..wh..opq", b"", 0o644, 0), ("opq/b", b"b\n", 0o644, 0),
    ])
    return [base, top]


class Node:
    """A daemon serving the snapshotter and a private containerd that uses it."""

    def __init__(self, daemon_factory, registry, tmp_path, extra_args=()):
        sock_dir = tmp_path / "s"
        sock_dir.mkdir(parents=True, exist_ok=True)
        self.sock = str(sock_dir / "snap.sock")
        self.d = daemon_factory(registries=[registry],
                                extra_args=["--snapshotter-socket", self.sock] + list(extra_args))
        harness.wait_until(lambda: os.path.exists(self.sock), 20, what="snapshotter socket")
        self.c = ctrd.Containerd(tmp_path / "containerd", snapshotter="p2pblobs")
        with open(self.c.config_path, "a") as f:
            f.write('[proxy_plugins.p2pblobs]\n  type = "snapshot"\n  address = "%s"\n'
                    % self.sock)
        self.c.start()

    def has_layer_trees(self):
        return os.path.isdir(os.path.join(self.d.mountpoint, "layers"))

    def rpull(self, ref):
        r = subprocess.run([CTR_REMOTE, "--address", self.c.address, "image", "rpull",
                            "--plain-http", "--snapshotter", "p2pblobs", ref],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stdout + self.c.log_text()[-3000:] + self.d.log_text()[-3000:]

    def run(self, ref, cid, script, *ctr_args):
        r = self.c.ctr("run", "--rm", "--snapshotter", "p2pblobs", *ctr_args, ref, cid,
                       "/bin/busybox", "sh", "-c", script, timeout=120)
        assert r.returncode == 0, (r.stdout + r.stderr + self.c.log_text()[-3000:]
                                   + self.d.log_text()[-3000:])
        return r.stdout

    def snapshots(self):
        r = self.d.blobctl("snapshots", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout)

    def content_digests(self):
        r = self.c.ctr("content", "ls", "-q")
        assert r.returncode == 0, r.stderr
        return set(r.stdout.split())

    def stop(self):
        self.c.stop()


@pytest.fixture
def node_factory(daemon_factory, private_registry, tmp_path):
    why = ctrd.available()
    if why:
        pytest.skip(why)
    made = []

    def make(extra_args=()):
        n = Node(daemon_factory, private_registry, tmp_path / ("n%d" % len(made)), extra_args)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop()


SCRIPT = ("/bin/busybox cat /data/hello.txt; /bin/busybox ls /data; echo --; /bin/busybox ls /opq; "
          "echo --; /bin/busybox test -e /data/gone.txt && echo gone-still-there; echo end")
WANT = HELLO.decode() + "hello.txt\nmine.txt\n--\nb\n--\nend\n"


def push(registry, repo, layers):
    img = ctrd.push_image(registry, repo, "v1", layers)
    return img, "%s/%s:v1" % (registry.hostport, repo)


def test_every_layer_falls_back_when_lazy_layers_are_off(node_factory, private_registry):
    """--snapshotter-lazy-wait 0: the layer labels arrive, but each layer gets the normal
    snapshot containerd unpacks into; the pull and the container work as with overlayfs."""
    n = node_factory(["--snapshotter-lazy-wait", "0"])
    img, ref = push(private_registry, "snaplazy/off", image_layers())
    n.rpull(ref)
    assert n.run(ref, "off1", SCRIPT) == WANT
    snaps = {s["key"]: s for s in n.snapshots()}
    committed = [s for s in snaps.values() if s["kind"] == "committed"]
    assert len(committed) == 2, snaps
    assert not any(s["remote"] for s in snaps.values()), snaps
    # The labels reached us: each committed layer names its digest (stargz.digest label).
    assert sorted(s["layer"] for s in committed) == sorted(img["layers"]), committed
    st = n.d.stat()["snapshotter"]
    assert st["lazy_layers"] == 0 and st["lazy_fallbacks"] == 2, st
    # containerd downloaded both layers to unpack them.
    assert set(img["layers"]) <= n.content_digests()


def test_labels_of_a_plain_ctr_pull_are_not_a_lazy_prepare(node_factory, private_registry):
    """ctr pull passes no layer labels: no lazy attempt, no fallback counted, it just works."""
    n = node_factory()
    _img, ref = push(private_registry, "snaplazy/plain", image_layers())
    hosts = os.path.join(n.c.workdir, "hosts")
    os.makedirs(hosts, exist_ok=True)
    r, _ = n.c.pull(ref, hosts, "--plain-http")
    assert r.returncode == 0, r.stdout + r.stderr
    assert n.run(ref, "plain1", SCRIPT) == WANT
    st = n.d.stat()["snapshotter"]
    assert st["lazy_layers"] == 0 and st["lazy_fallbacks"] == 0, st


def test_lazy_layers_run_and_survive_a_restart(node_factory, private_registry):
    n = node_factory()
    if not n.has_layer_trees():
        pytest.skip("this daemon has no layer trees (<mountpoint>/layers): nothing to serve")
    img, ref = push(private_registry, "snaplazy/lazy", image_layers())
    n.rpull(ref)
    snaps = n.snapshots()
    remote = [s for s in snaps if s["remote"]]
    assert sorted(s["layer"] for s in remote) == sorted(img["layers"]), snaps
    assert all(s["kind"] == "committed" and s["ref"] for s in remote), remote
    # containerd fetched the manifest and config only: no layer in its content store.
    content = n.content_digests()
    assert img["config"] in content
    assert not set(img["layers"]) & content, content
    st = n.d.stat()["snapshotter"]
    assert st["lazy_layers"] == 2 and st["lazy_fallbacks"] == 0, st

    assert n.run(ref, "lazy1", SCRIPT) == WANT
    assert n.d.stat()["snapshotter"]["remote_mounts"] >= 1
    # A process that is not root reads through the overlay over the layer trees; a file
    # only its owner may read is refused to another uid.
    out = n.run(ref, "lazy2", "/bin/busybox cat /data/hello.txt /data/mine.txt", "--user", "1000:1000")
    assert out == HELLO.decode() + "uid 1000 only\n"
    r = n.c.ctr("run", "--rm", "--snapshotter", "p2pblobs", "--user", "1001:1001", ref, "lazy3",
                "/bin/busybox", "cat", "/data/mine.txt", timeout=120)
    assert r.returncode != 0

    # The daemon restarts (the FUSE mount and every layer tree go away and come back): the
    # remote snapshots are still there and mount again.
    n.d.restart()
    harness.wait_until(lambda: os.path.exists(n.sock), 20, what="snapshotter socket")
    assert sorted(s["layer"] for s in n.snapshots() if s["remote"]) == sorted(img["layers"])
    assert n.run(ref, "lazy4", SCRIPT) == WANT


def test_an_image_of_120_layers_mounts(node_factory, private_registry):
    """120 lower dirs would not fit one page as absolute layer-tree paths; the per-snapshot
    symlinks and containerd's mount helper make them fit."""
    n = node_factory()
    if not n.has_layer_trees():
        pytest.skip("this daemon has no layer trees (<mountpoint>/layers): nothing to serve")
    layers = [image_layers()[0]]
    for i in range(119):
        layers.append(_tar_layer([("l", None, 0o755, 0), ("l/f%03d" % i, b"%d\n" % i, 0o644, 0)]))
    img, ref = push(private_registry, "snaplazy/many", layers)
    n.rpull(ref)
    assert sum(1 for s in n.snapshots() if s["remote"]) == 120
    out = n.run(ref, "many1", "/bin/busybox ls /l | /bin/busybox wc -l; /bin/busybox cat /l/f118")
    assert out.split() == ["119", "118"]
