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
- The same protocol against `snapfake` (tests/fakes/snapfake.c: the daemon's snapshotter
  whose layer trees are directories this test lays out as overlayfs lower dirs, whiteouts as
  0/0 char devices and trusted.overlay.opaque): remote snapshots, the container's files, uid
  1000, a restart, 120 layers, and a mixed image whose one layer falls back and is unpacked
  over a layer tree. It proves the containerd side apart from how trees are made.
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

import signal
import time

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
    """A gzip'ed tar of ENTRIES: (path, bytes or None for a dir or ("->", target) for a
    symlink, mode, uid). Deterministic. Returns (compressed, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, data, mode, uid in entries:
            ti = tarfile.TarInfo(path)
            ti.mode, ti.mtime, ti.uid, ti.gid = mode, 0, uid, uid
            if data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif isinstance(data, tuple):
                ti.type, ti.linkname = tarfile.SYMTYPE, data[1]
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
        ("bin", None, 0o755, 0), ("bin/busybox", bb, 0o755, 0), ("bin/sh", ("->", "busybox"), 0o777, 0),
        ("etc", None, 0o755, 0),
        ("etc/passwd", b"root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n"
                       b"other:x:1001:1001::/:/bin/sh\n", 0o644, 0),
        ("etc/group", b"root:x:0:\napp:x:1000:\nother:x:1001:\n", 0o644, 0),
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

    def log_tail(self):
        return self.d.log_text()[-3000:]

    def has_layer_trees(self):
        return os.path.isdir(os.path.join(self.d.mountpoint, "layers"))

    def rpull(self, ref):
        r = subprocess.run([CTR_REMOTE, "--address", self.c.address, "image", "rpull",
                            "--plain-http", "--snapshotter", "p2pblobs", ref],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stdout + self.c.log_text()[-3000:] + self.log_tail()

    def run(self, ref, cid, script, *ctr_args):
        r = self.c.ctr("run", "--rm", "--snapshotter", "p2pblobs", *ctr_args, ref, cid,
                       "/bin/busybox", "sh", "-c", script, timeout=120)
        assert r.returncode == 0, (r.stdout + r.stderr + self.c.log_text()[-3000:]
                                   + self.log_tail())
        return r.stdout

    def wait_reconnected(self):
        """containerd's client fails the first call after the snapshotter restarted
        ("connection closed: unavailable") and then reconnects with backoff: wait for it."""
        harness.wait_until(lambda: self.c.ctr("snapshots", "--snapshotter", "p2pblobs", "ls",
                                              timeout=10).returncode == 0,
                           30, what="containerd reconnected to the snapshotter")

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
# uid 1000 reads the world-readable file and its own 0600 one; uid 1001 is refused the latter.
AS_1000 = ("/bin/busybox su -s /bin/sh app -c '/bin/busybox id -u; /bin/busybox cat /data/hello.txt "
           "/data/mine.txt'; /bin/busybox su -s /bin/sh other -c '/bin/busybox cat /data/mine.txt' "
           "2>/dev/null || echo refused")
WANT_1000 = "1000\n" + HELLO.decode() + "uid 1000 only\nrefused\n"


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
    assert all(s["kind"] == "committed" and s["ref"] and s["tree"] == "ready"
               and s["layer_bytes"] > 0 and "fetched_bytes" in s for s in remote), remote
    # containerd fetched the manifest and config only: no layer in its content store. The
    # origin served each layer once at most: the one pass that built its index, here (a node
    # whose peer holds the index would not fetch it at all).
    content = n.content_digests()
    assert img["config"] in content
    assert not set(img["layers"]) & content, content
    for digest, (blob, _diff) in zip(img["layers"], image_layers()):
        assert private_registry.bytes_served(digest) <= len(blob), digest
    st = n.d.stat()["snapshotter"]
    assert st["lazy_layers"] == 2 and st["lazy_fallbacks"] == 0, st

    assert n.run(ref, "lazy1", SCRIPT) == WANT
    assert n.d.stat()["snapshotter"]["remote_mounts"] >= 1
    # A process that is not root reads through the overlay over the layer trees; a file
    # only its owner may read is refused to another uid.
    assert n.run(ref, "lazy2", AS_1000) == WANT_1000

    # The daemon restarts (the FUSE mount and every layer tree go away and come back): the
    # remote snapshots are still there and mount again.
    n.d.restart()
    harness.wait_until(lambda: os.path.exists(n.sock), 20, what="snapshotter socket")
    n.wait_reconnected()
    assert sorted(s["layer"] for s in n.snapshots() if s["remote"]) == sorted(img["layers"])
    assert n.run(ref, "lazy4", SCRIPT) == WANT


def push_typed(registry, repo, layers):
    """Pushes an image of LAYERS: [(blob, diff_id, media type)]; returns (layer digests, ref)."""
    descs = [{"mediaType": mt, "digest": registry.push_blob(repo, blob), "size": len(blob)}
             for blob, _d, mt in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": [d for _b, d, _m in layers]}},
                        sort_keys=True).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": ctrd.OCI_MANIFEST,
                           "config": {"mediaType": ctrd.OCI_CONFIG,
                                      "digest": registry.push_blob(repo, config),
                                      "size": len(config)},
                           "layers": descs}, sort_keys=True).encode()
    registry.push_manifest(repo, "v1", manifest, ctrd.OCI_MANIFEST)
    return [d["digest"] for d in descs], "%s/%s:v1" % (registry.hostport, repo)


def _sparse_layer(entries, sparse_path, stored, real_size):
    """A gzip'ed tar of ENTRIES (as _tar_layer) plus SPARSE_PATH, a GNU sparse file in PAX
    format 0.1: STORED bytes at offset 0 of a REAL_SIZE file whose rest is a hole. Go's
    archive/tar (containerd's unpacker) expands it; the layer trees refuse sparse entries.
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
        ti = tarfile.TarInfo(sparse_path)
        ti.mode, ti.mtime, ti.size = 0o644, 0, len(stored)
        ti.pax_headers = {"GNU.sparse.size": str(real_size), "GNU.sparse.numblocks": "1",
                          "GNU.sparse.map": "0,%d" % len(stored)}
        tf.addfile(ti, io.BytesIO(stored))
    tar = raw.getvalue()
    return gzip.compress(tar, mtime=0), "sha256:" + hashlib.sha256(tar).hexdigest()


def test_a_layer_the_trees_cannot_serve_is_unpacked(node_factory, private_registry):
    """A layer the trees refuse (it holds a GNU sparse file, which containerd's unpacker
    expands) over a gzip one: the gzip layer is remote, the refused one falls back and
    containerd unpacks it over the layer tree; the container sees both, the top layer's
    whiteout and opaque dir and the expanded sparse file included."""
    n = node_factory()
    if not n.has_layer_trees():
        pytest.skip("this daemon has no layer trees (<mountpoint>/layers): nothing to serve")
    base, _top = image_layers()
    top_entries = [
        ("data", None, 0o755, 0), ("data/.wh.gone.txt", b"", 0o644, 0),
        ("opq", None, 0o755, 0), ("opq/.wh..wh..opq", b"", 0o644, 0), ("opq/b", b"b\n", 0o644, 0),
    ]
    sblob, sdiff = _sparse_layer(top_entries, "sparse.bin", b"hello", 8192)
    digests, ref = push_typed(private_registry, "snaplazy/sparse", [
        (base[0], base[1], ctrd.OCI_LAYER_GZIP),
        (sblob, sdiff, ctrd.OCI_LAYER_GZIP)])
    n.rpull(ref)
    snaps = n.snapshots()
    assert [s["layer"] for s in snaps if s["remote"]] == [digests[0]], snaps
    content = n.content_digests()
    assert digests[1] in content and digests[0] not in content, content
    st = n.d.stat()["snapshotter"]
    assert st["lazy_layers"] == 1 and st["lazy_fallbacks"] == 1, st
    assert n.run(ref, "sparse1", SCRIPT) == WANT
    out = n.run(ref, "sparse2", "/bin/busybox wc -c < /sparse.bin; /bin/busybox head -c 5 /sparse.bin")
    assert out.split() == ["8192", "hello"], out


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


# --------------------------------------------------------------------------- snapfake

def lay_out_tree(root, blob):
    """Extracts the gzip'ed tar BLOB at ROOT as overlayfs wants a lower dir (what the daemon's
    layers/ view shows): whiteouts as 0/0 char devices, opaque dirs with trusted.overlay.opaque."""
    os.makedirs(root)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tf:
        for m in tf.getmembers():
            path = os.path.join(root, m.name)
            parent, base = os.path.split(path)
            os.makedirs(parent, exist_ok=True)
            if base == ".wh..wh..opq":
                os.setxattr(parent, "trusted.overlay.opaque", b"y")
            elif base.startswith(".wh."):
                os.mknod(os.path.join(parent, base[4:]), 0o600 | 0o020000, os.makedev(0, 0))
            elif m.isdir():
                os.makedirs(path, exist_ok=True)
                os.chown(path, m.uid, m.gid)
                os.chmod(path, m.mode)
            else:
                with open(path, "wb") as f:
                    f.write(tf.extractfile(m).read())
                os.chown(path, m.uid, m.gid)
                os.chmod(path, m.mode)


class FakeNode:
    """snapfake (the snapshotter, directory trees) and a private containerd that uses it."""

    def __init__(self, build_dir, workdir):
        self.bin = os.path.join(build_dir, "tests", "snapfake")
        self.workdir = str(workdir)
        self.state = os.path.join(self.workdir, "state")
        self.layers = os.path.join(self.workdir, "layers")
        os.makedirs(self.state)
        os.makedirs(os.path.join(self.layers, "sha256"))
        self.sock = os.path.join(self.workdir, "snap.sock")
        self.log_path = os.path.join(self.workdir, "snapfake.log")
        self.proc = None
        self.start()
        self.c = ctrd.Containerd(os.path.join(self.workdir, "containerd"), snapshotter="p2pblobs")
        with open(self.c.config_path, "a") as f:
            f.write('[proxy_plugins.p2pblobs]\n  type = "snapshot"\n  address = "%s"\n'
                    % self.sock)
        self.c.start()

    def start(self):
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.bin, self.state, self.sock, self.layers, "5000"],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        harness.wait_until(lambda: os.path.exists(self.sock) or self.proc.poll() is not None, 20,
                           what="snapfake socket")
        assert self.proc.poll() is None, self.log_text()

    def stop_fake(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0, self.log_text()
        self._log.close()

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def add_trees(self, img, layers):
        for digest, (blob, _diff) in zip(img["layers"], layers):
            lay_out_tree(os.path.join(self.layers, "sha256", digest[7:]), blob)

    rpull = Node.rpull
    run = Node.run
    wait_reconnected = Node.wait_reconnected

    def log_tail(self):
        return self.log_text()[-3000:]
    content_digests = Node.content_digests

    def remote_keys(self):
        """Names of the remote snapshots (stargz's label on them) in containerd's view."""
        r = self.c.ctr("snapshots", "--snapshotter", "p2pblobs", "ls")
        assert r.returncode == 0, r.stderr
        out = []
        for line in r.stdout.splitlines()[1:]:
            key = line.split()[0]
            info = self.c.ctr("snapshots", "--snapshotter", "p2pblobs", "info", key)
            if '"containerd.io/snapshot/remote": "remote snapshot"' in info.stdout:
                out.append(key)
        return out

    def stop(self):
        self.c.stop()
        if self.proc and self.proc.poll() is None:
            self.stop_fake()
        text = self.log_text()
        assert "ERROR: AddressSanitizer" not in text and "runtime error" not in text, text


@pytest.fixture
def fake_node(build_dir, tmp_path):
    why = ctrd.available()
    if why:
        pytest.skip(why)
    if not os.access(os.path.join(build_dir, "tests", "snapfake"), os.X_OK):
        pytest.skip("tests/snapfake is not built (make integration builds it)")
    n = FakeNode(build_dir, tmp_path / "fake")
    yield n
    n.stop()


def test_remote_snapshots_with_containerd(fake_node, private_registry):
    n = fake_node
    layers = image_layers()
    img, ref = push(private_registry, "snaplazy/fake", layers)
    n.add_trees(img, layers)
    n.rpull(ref)
    assert len(n.remote_keys()) == 2
    content = n.content_digests()
    assert img["config"] in content and not set(img["layers"]) & content, content
    assert n.run(ref, "fake1", SCRIPT) == WANT
    assert n.run(ref, "fake2", AS_1000) == WANT_1000
    # A write in the container lands in its upper dir, never in a layer tree.
    n.run(ref, "fake4", "echo changed > /data/hello.txt; /bin/busybox rm /opq/b")
    assert open(os.path.join(n.layers, "sha256", img["layers"][0][7:], "data", "hello.txt"),
                "rb").read() == HELLO
    # The snapshotter restarts: the remote snapshots are in its metadata, re-registered.
    n.stop_fake()
    n.start()
    n.wait_reconnected()
    assert "snapfake restore" in n.log_text()
    assert n.run(ref, "fake5", SCRIPT) == WANT


def test_a_layer_that_cannot_be_served_is_unpacked_over_a_layer_tree(fake_node, private_registry):
    n = fake_node
    layers = image_layers()
    img, ref = push(private_registry, "snaplazy/mixed", layers)
    n.add_trees(img, layers[:1])
    open(os.path.join(n.layers, "sha256", img["layers"][1][7:] + ".fail"), "w").close()
    n.rpull(ref)
    assert len(n.remote_keys()) == 1
    content = n.content_digests()
    assert img["layers"][1] in content and img["layers"][0] not in content, content
    assert "lazy layer fallback layer=" + img["layers"][1] in n.log_text()
    # The whiteout and the opaque dir of the unpacked layer hide files of the layer tree.
    assert n.run(ref, "mixed1", SCRIPT) == WANT


def test_120_layer_trees_mount(fake_node, private_registry):
    n = fake_node
    layers = [image_layers()[0]]
    for i in range(119):
        layers.append(_tar_layer([("l", None, 0o755, 0), ("l/f%03d" % i, b"%d\n" % i, 0o644, 0)]))
    img, ref = push(private_registry, "snaplazy/many", layers)
    n.add_trees(img, layers)
    n.rpull(ref)
    assert len(n.remote_keys()) == 120
    out = n.run(ref, "many1", "/bin/busybox ls /l | /bin/busybox wc -l; /bin/busybox cat /l/f118")
    assert out.split() == ["119", "118"]
