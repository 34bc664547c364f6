"""End to end through containerd 1.6's CRI plugin, the way kubelet drives a node (issue 17).

A node is a p2pblobsd serving the snapshotter (--snapshotter-socket) and a private containerd
whose CRI plugin uses it (ctrd.Containerd(cri=...): snapshotter p2pblobs,
disable_snapshot_annotations = false so CRI passes each layer's identity to the Prepare,
registries through hosts.toml, host-network pods only, a private runc root), both in the
network namespace of one netns.py host (entered with `nsenter --net` alone, so the daemon's
FUSE mount stays where containerd's overlay mounts see it). The registry is a third host;
nodes A and B are peers (static list). cri.py is the client (RuntimeService / ImageService of
runtime.v1 over containerd's socket; crictl is not in Debian 12). The pod sandbox image is
built here too (busybox-static's `sleep`).

The image, built here: a base layer (busybox, /etc/passwd with uid 1000 and 1001, files of
several owners and modes, dirs that the top layer whites out or makes opaque), a 256 MiB gzip
layer of incompressible bytes holding two small files (one in the middle, one at the end), and
a top layer with whiteouts and an opaque dir. Every container is created and started with the
CRI calls, and its output is read from the CRI log file (log_directory + log_path), as
kubelet does.

The tests run in file order on node A (the pull is the first one's, the restart is last);
each removes its pods. What is asserted:

- the pull leaves no layer in containerd's content store (manifest and config only), every
  layer is a remote snapshot, and the origin served each layer once at most (the pass that
  built its index on A, the first node to need it);
- a container's output (through the CRI log path) is right, the file it reads sitting after
  256 MiB of the big layer;
- whiteouts and opaque dirs of the top layer hold inside the container, and its writes stay in
  its own upper dir;
- a container running as uid 1000 (runAsUser) reads its files, uid 1001 is refused a 0600 file
  and a 0700 dir;
- after the big layer's chunks are evicted, a container reading a file no one read before
  costs the origin no more than that read plus the index's checkpoint spans;
- node B (own namespace, daemon and containerd) pulls and runs the same image with the layer
  indexes from A and zero origin bytes for layers;
- after a daemon restart a new pod's container starts again on the same remote snapshots.
"""

import json
import os
import zlib

import pytest

import cri
import ctrd
import harness
import layerimg as L
import netns
from test_peers import node_flags, wait_peers_up
from harness import MiB

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd and overlay mounts need root"),
]

BIG = 256 * MiB
SPAN = 2 * MiB  # layer.h LAYER_SPAN_DEFAULT: compressed bytes between checkpoints
HELLO = b"hello through CRI\n"
SMALL = L.big_bytes(4096, "cri-small")   # big/small.bin, after the whole 256 MiB
MID = L.big_bytes(8192, "cri-mid")       # big/mid.bin, between the two halves
PASSWD = b"root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\nother:x:1001:1001::/:/bin/sh\n"


def gzip_fast(data):
    """gzip at level 1 (the 256 MiB layer is incompressible: level 9 only costs time);
    zlib's gzip wrapper writes mtime 0, so the bytes are deterministic."""
    c = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


class Layer:
    def __init__(self, entries):
        self.tar = L.build_tar(entries)
        self.blob = gzip_fast(self.tar)
        self.diff_id = harness.sha256_digest(self.tar)
        self.digest = harness.sha256_digest(self.blob)


def app_layers():
    base = Layer([
        L.Entry("bin", L.DIR), L.Entry("bin/busybox", L.REG, open(ctrd.BUSYBOX, "rb").read(),
                                       mode=0o755),
        L.Entry("bin/sh", L.SYM, link="busybox"),
        L.Entry("etc", L.DIR), L.Entry("etc/passwd", L.REG, PASSWD),
        L.Entry("etc/group", L.REG, b"root:x:0:\napp:x:1000:\nother:x:1001:\n"),
        L.Entry("data", L.DIR), L.Entry("data/hello.txt", L.REG, HELLO),
        L.Entry("data/gone.txt", L.REG, b"whited out above\n"),
        L.Entry("data/gone_dir", L.DIR), L.Entry("data/gone_dir/inner", L.REG, b"inner\n"),
        L.Entry("data/mine.txt", L.REG, b"uid 1000 only\n", mode=0o600, uid=1000, gid=1000),
        L.Entry("home/app", L.DIR, mode=0o700, uid=1000, gid=1000),
        L.Entry("home/app/notes", L.REG, b"notes of app\n", mode=0o640, uid=1000, gid=1000),
        L.Entry("opq", L.DIR), L.Entry("opq/a", L.REG, b"a\n"),
        L.Entry("opq/sub", L.DIR), L.Entry("opq/sub/x", L.REG, b"x\n"),
        L.Entry("tmp", L.DIR, mode=0o1777),
    ])
    big = Layer([
        L.Entry("big", L.DIR),
        L.Entry("big/first.bin", L.REG, L.big_bytes(BIG // 2, "cri-first")),
        L.Entry("big/mid.bin", L.REG, MID),
        L.Entry("big/second.bin", L.REG, L.big_bytes(BIG // 2, "cri-second")),
        L.Entry("big/small.bin", L.REG, SMALL),
    ])
    top = Layer([
        L.Entry("data", L.DIR), L.Entry("data/.wh.gone.txt", L.REG),
        L.Entry("data/.wh.gone_dir", L.REG), L.Entry("data/new.txt", L.REG, b"new on top\n"),
        L.Entry("opq", L.DIR), L.Entry("opq/.wh..wh..opq", L.REG), L.Entry("opq/b", L.REG, b"b\n"),
    ])
    return [base, big, top]


def push(reg, repo, layers, config):
    descs = [{"mediaType": ctrd.OCI_LAYER_GZIP, "digest": reg.push_blob(repo, l.blob),
              "size": len(l.blob)} for l in layers]
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                      "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]}},
                     sort_keys=True).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": ctrd.OCI_MANIFEST,
                           "config": {"mediaType": ctrd.OCI_CONFIG,
                                      "digest": reg.push_blob(repo, cfg), "size": len(cfg)},
                           "layers": descs}, sort_keys=True).encode()
    man = reg.push_manifest(repo, "v1", manifest, ctrd.OCI_MANIFEST)
    return {"ref": "%s/%s:v1" % (reg.hostport, repo), "manifest": man,
            "config": harness.sha256_digest(cfg), "layers": [d["digest"] for d in descs]}


def write_hosts(hosts_dir, reg):
    """hosts.toml sending pulls of REG straight to it, over plain HTTP."""
    d = os.path.join(hosts_dir, reg.hostport)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "hosts.toml"), "w") as f:
        f.write('server = "http://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n'
                % (reg.hostport, reg.hostport))


class CriNode:
    """A daemon serving the snapshotter and a containerd whose CRI plugin uses it, both in
    the network namespace of HOST (nsenter --net only: the daemon's FUSE mount stays in the
    test's mount namespace, where containerd's overlay mounts must see it)."""

    def __init__(self, net, build_dir, host, peers, reg, sandbox_ref):
        self.host = host
        self.workdir = os.path.join(net.workdir, "cri-" + host.name)
        self.sock = os.path.join(self.workdir, "snap.sock")
        self.logs = os.path.join(self.workdir, "podlogs")
        os.makedirs(self.logs)
        prefix = ["nsenter", "--net=" + host.nspath]
        # The first node to need a layer builds its index in one pass over it: give the
        # Prepare time for 256 MiB under ASan on a loaded machine rather than fall back.
        self.d = net.daemon(build_dir, host, registries=[reg], start=False,
                            extra_args=node_flags(host, peers=peers)
                            + ["--snapshotter-socket", self.sock,
                               "--snapshotter-lazy-wait", "300s"])
        self.d.prefix = prefix
        self.d.start()
        harness.wait_until(lambda: os.path.exists(self.sock), 20, what="snapshotter socket")
        hosts = os.path.join(self.workdir, "hosts")
        write_hosts(hosts, reg)
        self.c = ctrd.Containerd(os.path.join(self.workdir, "containerd"), prefix=prefix,
                                 snapshotter="p2pblobs",
                                 cri=dict(sandbox_image=sandbox_ref, hosts_dir=hosts))
        with open(self.c.config_path, "a") as f:
            f.write('[proxy_plugins.p2pblobs]\n  type = "snapshot"\n  address = "%s"\n'
                    % self.sock)
        self.c.start()
        self.cri = cri.Cri(self.c.address, timeout=300)
        self.pods = 0

    def tails(self):
        return ("\n--- containerd ---\n" + self.c.log_text()[-3000:]
                + "\n--- p2pblobsd ---\n" + self.d.log_text()[-3000:])

    def run(self, image, argv, run_as_user=None):
        """A pod in the host network namespace with one container running ARGV in IMAGE;
        waits for it to exit and removes the pod. Returns (exit code, stdout, stderr) from
        the container's CRI log file."""
        self.pods += 1
        name = "cri%d" % self.pods
        pod = cri.host_network_pod(name, os.path.join(self.logs, name))
        pod_id = self.cri.run_pod(pod)
        try:
            cid = self.cri.create(pod_id, cri.container_config("c", image, argv, "c.log",
                                                               run_as_user), pod)
            self.cri.start(cid)
            st = self.cri.wait_exited(cid, timeout=120)
            assert st.log_path == os.path.join(self.logs, name, "c.log"), st
            out = cri.read_log(st.log_path)
            return st.exit_code, out["stdout"], out["stderr"]
        finally:
            self.cri.remove_pod(pod_id)

    def snapshots(self):
        r = self.d.blobctl("snapshots", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout)

    def content(self):
        r = self.c.ctr("-n", "k8s.io", "content", "ls", "-q")
        assert r.returncode == 0, r.stderr
        return set(r.stdout.split())

    def wait_reconnected(self):
        """containerd fails the first call after the snapshotter restarted, then reconnects
        with backoff: wait until it lists the snapshots again."""
        harness.wait_until(lambda: self.c.ctr("-n", "k8s.io", "snapshots", "--snapshotter",
                                              "p2pblobs", "ls", timeout=10).returncode == 0,
                           30, what="containerd reconnected to the snapshotter")

    def close(self):
        """Pods, containerd; the daemon is the Net's to stop (and check)."""
        try:
            for p in self.cri.pods():
                self.cri.remove_pod(p.id)
        finally:
            self.cri.close()
            self.c.stop()


@pytest.fixture(scope="module")
def world(build_dir, tmp_path_factory):
    """The registry and node A (hosts in network namespaces; node B's host is made too, so
    that A's static peer list names it), the images pushed. Node B starts in its test."""
    why = ctrd.available() or cri.available() or netns.available()
    if why:
        pytest.skip(why)
    net = netns.Net(str(tmp_path_factory.mktemp("cri")))
    nodes = []
    try:
        s = net.add_subnet()
        reg = net.registry(net.add_host("crireg", s))
        hosts = [net.add_host("cria", s), net.add_host("crib", s)]
        bb = Layer([L.Entry("bin", L.DIR),
                    L.Entry("bin/busybox", L.REG, open(ctrd.BUSYBOX, "rb").read(), mode=0o755)])
        pause = push(reg, "cri/pause", [bb], {"Entrypoint": ["/bin/busybox", "sleep", "86400"]})
        layers = app_layers()
        app = push(reg, "cri/app", layers, {"Env": ["PATH=/bin"], "WorkingDir": "/"})
        app["blobs"] = {l.digest: l.blob for l in layers}

        def add_node(host):
            n = CriNode(net, build_dir, host, hosts, reg, pause["ref"])
            nodes.append(n)
            return n

        yield {"net": net, "reg": reg, "node": add_node(hosts[0]), "add_node": add_node,
               "hosts": hosts, "pause": pause, "app": app, "layers": layers}
    finally:
        for n in nodes:
            n.close()
        errors = net.stop_daemons()
        errors += net.health_errors()
        net.teardown()
    # The daemons' own checks: no sanitizer report, no error line, a clean exit on SIGTERM.
    assert not errors, "\n\n".join(errors)


@pytest.fixture(scope="module")
def pulled(world):
    """The image pulled through CRI (the first test's step; the others need it)."""
    n, app = world["node"], world["app"]
    mark = world["reg"].mark()
    # kubelet pulls the pod's image with the sandbox config; the sandbox image is pulled by
    # RunPodSandbox itself when it is missing.
    world["image_id"] = n.cri.pull(app["ref"])
    world["pull_mark"] = mark
    return world


def test_pull_keeps_no_layer_in_the_content_store(pulled):
    n, app, reg = pulled["node"], pulled["app"], pulled["reg"]
    assert pulled["image_id"] == app["config"]
    content = n.content()
    assert app["manifest"] in content and app["config"] in content, content
    assert not set(app["layers"]) & content, "containerd downloaded layers: %s" % content
    remote = {s["layer"]: s for s in n.snapshots() if s["remote"]}
    assert set(app["layers"]) <= set(remote), remote
    assert all(remote[l]["kind"] == "committed" and remote[l]["tree"] == "ready"
               for l in app["layers"]), remote
    st = n.d.stat()["snapshotter"]
    assert st["lazy_fallbacks"] == 0, st
    # This node was the first to need the layers: the origin served each one once (the pass
    # that built its index), never twice.
    for digest in app["layers"]:
        served = reg.bytes_served(digest, since=pulled["pull_mark"])
        assert served <= len(pulled["app"]["blobs"][digest]), (digest, served)


SCRIPT = ("cat /data/hello.txt; ls /data; echo --; sha256sum /big/small.bin; "
          "echo --; id -u")


def test_the_container_output_is_right(pulled):
    n, app = pulled["node"], pulled["app"]
    rc, out, err = n.run(app["ref"], ["/bin/busybox", "sh", "-c", SCRIPT])
    want = (HELLO.decode() + "hello.txt\nmine.txt\nnew.txt\n--\n%s  /big/small.bin\n--\n0\n"
            % harness.sha256_digest(SMALL)[7:])
    assert (rc, out, err) == (0, want, ""), n.tails()
    # The pod's sandbox ran from the lazily pulled sandbox image too.
    assert pulled["pause"]["layers"][0] in {s["layer"] for s in n.snapshots() if s["remote"]}


WHITEOUTS = ("test -e /data/gone.txt && echo gone.txt-visible; "
             "test -e /data/gone_dir && echo gone_dir-visible; "
             "ls -a /opq; echo --; ls /opq/sub >/dev/null 2>&1 && echo sub-visible; "
             "cat /data/new.txt /opq/b; "
             # a write in the container lands in its own upper dir, over the layer trees
             "echo changed > /data/hello.txt && rm /opq/b && cat /data/hello.txt; "
             "ls /opq; echo end")


def test_whiteouts_and_opaque_dirs_hold_in_the_container(pulled):
    n, app = pulled["node"], pulled["app"]
    rc, out, _err = n.run(app["ref"], ["/bin/busybox", "sh", "-c", WHITEOUTS])
    assert rc == 0, out + n.tails()
    assert out == ".\n..\nb\n--\nnew on top\nb\nchanged\nend\n", out
    # and the next container sees the image again, not the last one's writes
    rc, out, _err = n.run(app["ref"], ["/bin/busybox", "sh", "-c", "cat /data/hello.txt /opq/b"])
    assert (rc, out) == (0, HELLO.decode() + "b\n"), out


def test_a_process_of_uid_1000_reads_its_files(pulled):
    n, app = pulled["node"], pulled["app"]
    rc, out, err = n.run(app["ref"], ["/bin/busybox", "sh", "-c",
                                      "id -u; cat /data/hello.txt /data/mine.txt "
                                      "/home/app/notes; sha256sum /big/mid.bin"],
                         run_as_user=1000)
    want = ("1000\n" + HELLO.decode() + "uid 1000 only\nnotes of app\n%s  /big/mid.bin\n"
            % harness.sha256_digest(MID)[7:])
    assert (rc, out, err) == (0, want, ""), n.tails()
    # another uid is refused the 0600 file and the 0700 home: the modes and owners of the
    # layer trees hold through the overlay
    rc, out, err = n.run(app["ref"], ["/bin/busybox", "sh", "-c",
                                      "id -u; cat /data/mine.txt || echo refused; "
                                      "ls /home/app || echo refused"], run_as_user=1001)
    assert (rc, out) == (0, "1001\nrefused\nrefused\n"), out + err
    assert "Permission denied" in err, err


def test_origin_bytes_are_the_file_read_plus_index_spans(pulled):
    """The big layer's chunks are evicted from this node (the index stays: it is a pinned
    derived blob) and the kernel's caches dropped; a container then reads a file of the big
    layer that nothing read since: the origin serves that file's span(s), not the layer."""
    n, app, reg = pulled["node"], pulled["app"], pulled["reg"]
    big = app["layers"][1]
    r = n.d.blobctl("evict", big)
    assert r.returncode == 0, r.stdout + r.stderr
    harness.drop_caches()
    mark = reg.mark()
    rc, out, err = n.run(app["ref"], ["/bin/busybox", "sh", "-c",
                                      "tail -c 100 /big/first.bin | sha256sum"])
    assert rc == 0, out + err + n.tails()
    assert out.split()[0] == harness.sha256_digest(
        L.big_bytes(BIG // 2, "cri-first")[-100:])[7:], out
    served = reg.bytes_served(big, since=mark)
    print("\norigin bytes of the 256 MiB layer for a 100-byte read: %d" % served)
    # one read within a file: at most two checkpoint spans of compressed bytes and a 1 MiB
    # chunk of rounding at each end
    assert 0 < served <= 100 + 2 * SPAN + 2 * MiB, served
    for other in (app["layers"][0], app["layers"][2]):
        assert reg.bytes_served(other, since=mark) == 0, other


def layer_states(d):
    r = d.blobctl("layers", "--json")
    assert r.returncode == 0, r.stderr
    return {l["digest"]: l["state"] for l in json.loads(r.stdout)}


def test_a_second_node_starts_the_image_with_no_origin_bytes_for_layers(pulled):
    """Node B (its own namespace, daemon and containerd) pulls the image and runs a pod: the
    layer indexes come from A (no pass on B) and every layer byte B reads from A; the origin
    serves B the manifests and configs, not one byte of a layer."""
    a, app, reg, net = pulled["node"], pulled["app"], pulled["reg"], pulled["net"]
    layers = app["layers"] + pulled["pause"]["layers"]
    # A holds every layer whole again (the eviction test dropped most of the big one).
    for digest in layers:
        r = a.d.blobctl("prefetch", digest, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    b = pulled["add_node"](pulled["hosts"][1])
    wait_peers_up([a.d, b.d])
    for digest in layers:
        net.wait_announced([a.d, b.d], [a.d], digest)
    mark = reg.mark()
    assert b.cri.pull(app["ref"]) == app["config"]
    rc, out, err = b.run(app["ref"], ["/bin/busybox", "sh", "-c",
                                      SCRIPT + "; sha256sum /big/mid.bin"])
    want = (HELLO.decode() + "hello.txt\nmine.txt\nnew.txt\n--\n%s  /big/small.bin\n--\n0\n"
            "%s  /big/mid.bin\n" % (harness.sha256_digest(SMALL)[7:],
                                    harness.sha256_digest(MID)[7:]))
    assert (rc, out, err) == (0, want, ""), b.tails()
    remote = {s["layer"] for s in b.snapshots() if s["remote"]}
    assert set(layers) <= remote, remote
    assert not set(layers) & b.content()
    states = layer_states(b.d)
    assert all(states.get(l) == "peer" for l in layers), states
    served = {l[:19]: reg.bytes_served(l, since=mark) for l in layers}
    assert not any(served.values()), "the origin served node B layer bytes: %s" % served


def test_a_container_starts_again_after_a_daemon_restart(pulled):
    n, app = pulled["node"], pulled["app"]
    assert not n.cri.pods()   # every earlier pod was removed: nothing holds the old mount
    n.d.restart()
    harness.wait_until(lambda: os.path.exists(n.sock), 20, what="snapshotter socket")
    n.wait_reconnected()
    remote = {s["layer"] for s in n.snapshots() if s["remote"]}
    assert set(app["layers"]) <= remote, remote
    rc, out, err = n.run(app["ref"], ["/bin/busybox", "sh", "-c", SCRIPT])
    assert rc == 0 and out.startswith(HELLO.decode() + "hello.txt\nmine.txt\nnew.txt\n"), (
        out + err + n.tails())
    assert harness.sha256_digest(SMALL)[7:] in out, out
    # still no layer downloaded by containerd
    assert not set(app["layers"]) & n.content()
