"""Issue 16: layer indexes shared through the peer directory. Two nodes in network namespaces
(netns.py): node A registers a gzip layer and builds its index (the pass); the homes of the
layer then know "the index of layer L is blob I" (GET /p2p/v1/index/<L>, peer/wire.h); node B
registers the same layer and takes the index from the cluster (state "peer") instead of running
the pass, and its files read right.

(The 256 MiB, two-span test is test_layers.py's.)"""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest

import harness
import netns
from harness import MiB

REPO = "p2pblobs/layerpeers"
PEER_PORT = 5001
MTIME = 1_700_000_000
TOKEN = "peeridx-cluster-token"


def _file(tf, name, data, mode=0o644):
    ti = tarfile.TarInfo(name)
    ti.mode, ti.mtime, ti.size = mode, MTIME, len(data)
    tf.addfile(ti, io.BytesIO(data))


def _dir(tf, name):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
    tf.addfile(ti)


def layer_tar():
    """A small tar: a few files, one of 3 MiB (several chunks of the gzip blob at 1 MiB)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _dir(tf, "etc")
        _file(tf, "etc/hostname", b"layerpeers\n")
        _dir(tf, "usr")
        _dir(tf, "usr/lib")
        _file(tf, "usr/lib/big.so", harness.gen_bytes(1616, 3 * MiB + 4321))
        _file(tf, "usr/lib/small.txt", b"small\n" * 1000)
    return buf.getvalue()


def files_of(tar_bytes):
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isreg()}


def node_flags(host, hosts, token_file=None):
    a = ["--advertise-address", host.ip, "--peer-refresh", "1s",
         "--peer-connect-timeout", "250ms", "--peer-stall-timeout", "1s",
         "--peers", ",".join("%s:%d" % (h.ip, PEER_PORT) for h in hosts)]
    if token_file:
        a += ["--cluster-token-file", str(token_file)]
    return a


def layer_add(d, ref):
    r = d.blobctl("layer", "add", ref, "--wait", "60", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def layers(d):
    r = d.blobctl("layers", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    return out["layers"] if isinstance(out, dict) else out


def index_answer(net, d, layer, headers):
    """What D's directory answers for LAYER's index: (index digest, size), or None (404)."""
    st, _h, body = net.http(d.host.ip, PEER_PORT, "GET", "/p2p/v1/index/" + layer,
                            headers=headers, timeout=2)
    if st != 200:
        return None
    j = json.loads(body)
    assert j["layer"] == layer, j
    return j["index"], j["size"]


def wait_peers_up(nodes, timeout=15):
    for d in nodes:
        want = [o for o in nodes if o is not d]

        def ok(d=d, want=want):
            ps = {p.get("id"): p for p in d.peers()}
            return all(ps.get(o.peer_id, {}).get("state") == "up" for o in want)
        harness.wait_until(ok, timeout, interval=0.2, what="%s to see its peers" % d.host.name)


@pytest.mark.parametrize("token", [False, True], ids=["open", "cluster-token"])
def test_second_node_takes_the_index_from_the_first(build_dir, net, tmp_path, token):
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    tar = layer_tar()
    gz = gzip.compress(tar, mtime=0)
    digest = reg.push_blob(REPO, gz)
    ref = reg.ref(REPO, digest)
    token_file = None
    headers = {}
    if token:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        headers = {"X-P2PBlobs-Token": TOKEN}
    hosts = [net.add_host(n, s) for n in ("a", "b")]
    a, b = [net.daemon(build_dir, h, registries=[reg], extra_args=node_flags(h, hosts, token_file))
            for h in hosts]
    wait_peers_up([a, b])

    # Nobody has published an index: the homes say so (404), not an error.
    assert index_answer(net, a, digest, headers) is None
    assert index_answer(net, b, digest, headers) is None

    out_a = layer_add(a, ref)
    assert out_a["state"] == "built", out_a
    index = out_a["index_digest"]
    assert index and index != digest

    # A tells the layer's homes (with two nodes, both are homes), and announces the index
    # blob itself like any blob.
    harness.wait_until(lambda: all(index_answer(net, d, digest, headers) is not None
                                   for d in (a, b)),
                       20, interval=0.1, what="the homes of the layer to learn its index")
    for d in (a, b):
        got, size = index_answer(net, d, digest, headers)
        assert got == index, (d.host.name, got, index)
        assert size > 0
    net.wait_announced([a, b], [a], index, headers=headers or None)
    if token:  # without the token, the index route is refused like the rest of /p2p/
        st, _h, _b = net.http(a.host.ip, PEER_PORT, "GET", "/p2p/v1/index/" + digest)
        assert st == 401

    mark = reg.mark()
    out_b = layer_add(b, ref)
    assert out_b["state"] == "peer", out_b  # B did not run the pass
    assert out_b["index_digest"] == index
    listed = {l["digest"]: l for l in layers(b)}
    assert listed[digest]["state"] == "peer", listed

    root = os.path.join(b.view_mountpoint, "layers", "sha256", harness.hex_of(digest))
    for name, data in files_of(tar).items():
        got = harness.read_file(os.path.join(root, name))
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), name
    # The index came from A, not the registry (which never had it); the layer's own bytes
    # B read from A or the registry, as any blob.
    assert reg.bytes_served(index, since=mark) == 0
    # Both are homes of the layer and keep its record; both now announce the index.
    for d in (a, b):
        m = metrics(net, d)
        assert m.get("directory_layer_indexes") == 1, (d.host.name, m)
    # The homes counted the index queries they answered (this test's and B's).
    assert sum(metrics(net, d).get("directory_index_locates_total", 0) for d in (a, b)) >= 3
    harness.wait_until(lambda: metrics(net, b).get("peer_layer_indexes_announced") == 1, 10,
                       interval=0.1, what="B to announce the index it took")
    assert metrics(net, a).get("peer_layer_indexes_announced") == 1


def metrics(net, d):
    """The unlabelled samples of D's peer-port /metrics (netns.Net.metrics)."""
    return net.metrics(d.host.ip, PEER_PORT)


def test_second_node_reads_a_zstd_layer_from_the_first_nodes_seekable_copy(build_dir, net):
    """A zstd layer: A's pass builds the index and the seekable copy (a derived blob the origin
    never had). B takes both from A: the index from the layer's homes, the copy's bytes from A,
    so B reads every file right without the registry serving B a byte of the layer."""
    if shutil.which("zstd") is None:
        pytest.fail("zstd is not installed (make deps installs it)")
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    tar = layer_tar()
    zst = subprocess.run(["zstd", "-q", "-c", "-3"], input=tar, stdout=subprocess.PIPE,
                         check=True).stdout
    digest = reg.push_blob(REPO, zst)
    ref = reg.ref(REPO, digest)
    hosts = [net.add_host(n, s) for n in ("a", "b")]
    a, b = [net.daemon(build_dir, h, registries=[reg], extra_args=node_flags(h, hosts))
            for h in hosts]
    wait_peers_up([a, b])

    out_a = layer_add(a, ref)
    assert out_a["state"] == "built" and out_a["format"] == "zstd", out_a
    index = out_a["index_digest"]
    harness.wait_until(lambda: all(index_answer(net, d, digest, {}) is not None for d in (a, b)),
                       20, interval=0.1, what="the homes of the layer to learn its index")
    net.wait_announced([a, b], [a], index)

    mark = reg.mark()
    out_b = layer_add(b, ref)
    assert out_b["state"] == "peer", out_b
    root = os.path.join(b.view_mountpoint, "layers", "sha256", harness.hex_of(digest))
    for name, data in files_of(tar).items():
        got = harness.read_file(os.path.join(root, name))
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), name
    assert reg.bytes_served(index, since=mark) == 0
    assert reg.bytes_served(digest, since=mark) == 0, "B read the original zstd layer"


def blob_entry(d, digest):
    """D's `blobctl ls --json` entry of DIGEST, or None."""
    out = d.ls()
    rows = out["blobs"] if isinstance(out, dict) and "blobs" in out else out
    if isinstance(rows, dict):
        return rows.get(digest)
    return next((r for r in rows if r.get("digest") == digest), None)


def test_second_node_loads_only_the_head_of_the_index(build_dir, net):
    """Issue 17: B takes a gzip layer's index from A but fetches only its head (the file table
    and the checkpoint table, at the start of the index blob) to make the layer ready, and to
    read one small file only the window of the checkpoint it inflates from: a few chunks of the
    index blob, never all of it, and about one span of the layer. Some seconds later B holds
    the whole index, fetched in the background and verified, and with A gone a restarted B
    loads it from its own store and reads every file right."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    config = json.dumps({"app": "lazyidx", "pad": "x" * 3000}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _dir(tf, "data")
        _file(tf, "data/a.bin", harness.gen_bytes(1701, 20 * MiB))  # incompressible
        _dir(tf, "etc")
        _dir(tf, "etc/app")
        _file(tf, "etc/app/config.json", config)
        _file(tf, "data/b.bin", harness.gen_bytes(1702, 6 * MiB))
    tar = buf.getvalue()
    gz = gzip.compress(tar, compresslevel=1, mtime=0)
    digest = reg.push_blob(REPO, gz)
    ref = reg.ref(REPO, digest)
    hosts = [net.add_host(n, s) for n in ("a", "b")]
    # 64 KiB chunks and 1 MiB spans: the index (a 32 KiB window per span) spans many chunks.
    a, b = [net.daemon(build_dir, h, registries=[reg],
                       extra_args=node_flags(h, hosts) + ["--chunk-size", "64K",
                                                          "--layer-span", "1M"])
            for h in hosts]
    wait_peers_up([a, b])

    out_a = layer_add(a, ref)
    assert out_a["state"] == "built", out_a
    index = out_a["index_digest"]
    harness.wait_until(lambda: all(index_answer(net, d, digest, {}) is not None for d in (a, b)),
                       20, interval=0.1, what="the homes of the layer to learn its index")
    net.wait_announced([a, b], [a], index)
    whole = blob_entry(a, index)
    assert whole and whole["chunks"] >= 10, whole  # the premise: an index of many chunks

    out_b = layer_add(b, ref)
    assert out_b["state"] == "peer", out_b
    assert out_b["index_digest"] == index
    # Ready with the head alone (written back by now or shortly).
    harness.wait_until(lambda: (blob_entry(b, index) or {}).get("chunks_present", 0) >= 1, 10,
                       interval=0.1, what="B to hold the head of the index")
    head_chunks = blob_entry(b, index)["chunks_present"]
    assert head_chunks <= 2, (head_chunks, whole["chunks"])

    root = os.path.join(b.view_mountpoint, "layers", "sha256", harness.hex_of(digest))
    assert harness.read_file(os.path.join(root, "etc/app/config.json")) == config
    # The file lies 20 MiB in: its checkpoint's window is far past the head's chunk(s), so
    # the read fetched at least one more chunk of the index; wait for its write-back (reads
    # are answered before it) before bounding what was fetched.
    harness.wait_until(lambda: blob_entry(b, index)["chunks_present"] > head_chunks, 10,
                       interval=0.1, what="B to hold the window the read needed")
    after = blob_entry(b, index)["chunks_present"]
    # The head and the one window the read started from (it may straddle two chunks).
    assert after <= head_chunks + 2, (head_chunks, after, whole["chunks"])
    assert after < whole["chunks"]
    li = {l["digest"]: l for l in layers(b)}[digest]
    assert li["bytes_fetched"] <= 3 * MiB, li  # about one span of the layer, not its 26 MiB

    # Later (INDEX_COMPLETE_DELAY_MS, 10 s, after ready) B fetches the rest of the index in
    # the background (nothing read since needs it): it then holds it whole, verified against
    # its digest, so the index outlives A and a restart of B loads it from its own store.
    harness.wait_until(lambda: (blob_entry(b, index) or {}).get("verified") is True, 60,
                       interval=0.5, what="B to hold the whole index, verified")
    e = blob_entry(b, index)
    assert e["chunks_present"] == e["chunks"] == whole["chunks"], e

    # With A gone, B restarts, loads the index from its own store, whole, and reads every
    # file right (the layer's bytes from the registry now).
    a.stop()
    b.restart()
    harness.wait_until(lambda: {l["digest"]: l for l in layers(b)}.get(digest, {}).get("state")
                       not in (None, "pending"), 30, interval=0.2,
                       what="B's layer ready after its restart")
    li = {l["digest"]: l for l in layers(b)}[digest]
    assert li["state"] == "local", li
    root = os.path.join(b.view_mountpoint, "layers", "sha256", harness.hex_of(digest))
    for name, data in files_of(tar).items():
        got = harness.read_file(os.path.join(root, name))
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), name
