"""`make bench` items of issues 16 and 17: reading files inside layers lazily, and starting
containers lazily. Called by bench/bench.py (`--only layer`, `--only start`); numbers, never
assertions, like the rest of the bench, with the helpers of bench.py (bound by `bind()`).

  8 layer  one small file out of a cold 512 MiB gzip layer on node B, whose peer A holds the
           layer's index but not the layer (A's budget is smaller than the layer: its chunks
           were evicted after the pass): `blobctl layer add` (index from A) + one read through
           `<mnt>/layers/sha256/<digest>/…`, against `curl | gzip -dc | tar -x FILE` of the
           whole layer in B's namespace. Registry bytes (its own log) and seconds. Also, on the
           layer file itself: the index pass (bench/layer_pass) against `gzip -dc | tar -t`,
           and the index's size per GiB of layer.
  9 start  container start (pull + create + start + the command's exit) of an image with one
           512 MiB gzip layer (busybox + 512 MiB incompressible) whose command reads 4 MiB:
           (a) containerd's overlayfs after a full `ctr image pull`, (b) the p2pblobs
           snapshotter (`ctr-remote image rpull --snapshotter p2pblobs`) on node B whose peer A
           built the layer's index (and holds the layer), (c) stargz-snapshotter
           (bench/stargz/main.go, a proxy snapshotter built offline from Debian's Go library)
           on the eStargz form of the same image (`ctr-remote image convert --estargz`). The
           three sides run in rotating order; each run starts from a fresh containerd, a fresh
           B daemon and a fresh stargz root.

Both run on tests/integration/netns.py (a bridge, a registry host, nodes A and B). The daemons of
item 9 run in their node's network namespace but in the root mount namespace (`nsenter --net`,
not `ip netns exec`): containerd, started the same way, mounts overlays whose lower dirs are
B's layer trees, so it must see B's FUSE mount (and stargz's).
"""

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time

B = None  # bench.py, bound by bind(): its helpers (log, fig, mm, make_blob, new_net, ...)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
GOCODE = "/usr/share/gocode"
STARGZ_PKG = os.path.join(GOCODE, "src/github.com/containerd/stargz-snapshotter/fs")
CTR_REMOTE = "/usr/bin/ctr-remote"
PEER_PORT = 5001
MiB = 1024 * 1024
GiB = 1024 * MiB

LAYER_HALF = 256 * MiB        # item 8: two incompressible files around the small ones
LAYER_SMALL = "etc/app/config.json"
LAYER_NSMALL = 1000           # small files, so the index has a file table worth its name
START_SIZE = 512 * MiB        # item 9: the big file of the image's one layer
START_SKIP_MIB, START_READ_MIB = 200, 4


def bind(mod):
    global B
    B = mod


# ----------------------------------------------------------------------------- nodes

def lazy_node(net, build, host, reg, peers, name, budget="1G", extra=(), root_mounts=False):
    """A release p2pblobsd on HOST knowing PEERS (as bench.py's net_node), with BUDGET. With
    ROOT_MOUNTS it runs with `nsenter --net` (root mount namespace: its mount is visible to a
    containerd on the same host) instead of `ip netns exec`."""
    netns = B.netns_mod()
    args = ["--advertise-address", host.ip, "--cache-budget", budget,
            "--peers", ",".join("%s:%d" % (h.ip, PEER_PORT) for h in peers)]
    d = netns.NetDaemon(build, os.path.join(net.workdir, name), host, registries=[reg],
                        log_level=os.environ.get("BENCH_NODE_LOG", "notice"),
                        extra_args=args + list(extra))
    if root_mounts:
        d.prefix = ["nsenter", "--net=" + host.nspath]
    net.daemons.append(d)
    d.start()
    return d


def blobctl_json(d, *args, timeout=60):
    r = d.blobctl(*args, "--json", timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError("blobctl %s: exit %d: %s%s" % (" ".join(args), r.returncode,
                                                          r.stderr, r.stdout))
    return json.loads(r.stdout)


def layer_add(d, ref, diff_id=None, wait=300):
    args = ["layer", "add", ref, "--wait", str(wait)]
    if diff_id:
        args += ["--diff-id", diff_id]
    return blobctl_json(d, *args, timeout=wait + 30)


def index_answer(net, d, layer):
    """What D's directory answers for LAYER's index (GET /p2p/v1/index/<layer>): (digest,
    size) or None."""
    try:
        st, _h, body = net.http(d.host.ip, PEER_PORT, "GET", "/p2p/v1/index/" + layer,
                                timeout=2)
        if st != 200:
            return None
        j = json.loads(body)
        return j["index"], j["size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def wait_index_known(net, nodes, layer, timeout=40):
    """Until every node of NODES answers who holds LAYER's index; the seconds waited, or None
    after TIMEOUT (a fresh home learns it from the holder's next announce)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if all(index_answer(net, d, layer) for d in nodes):
            return time.monotonic() - t0
        time.sleep(0.2)
    B.log("warning: the index of %s not known to every node after %d s" % (layer[:19], timeout))
    return None


def node_fetched(d):
    f = d.stat()["fetched"]
    return f["origin_bytes"], f["peer_bytes"]


# ----------------------------------------------------------------------------- layers

class _Hashing:
    def __init__(self, out):
        self.out, self.h = out, hashlib.sha256()

    def write(self, b):
        self.h.update(b)
        self.out.write(b)
        return len(b)


def write_layer(path, entries):
    """A gzip'ed tar (gzip -1 -n) of ENTRIES: (name, bytes) or (name, (size, seed)) for SIZE
    bytes of AES-CTR keystream (incompressible); directories made as needed, mtime 0,
    deterministic. Returns (digest, diff_id)."""
    with open(path, "wb") as out:
        gz = subprocess.Popen(["gzip", "-1", "-n", "-c"], stdin=subprocess.PIPE, stdout=out)
        hw = _Hashing(gz.stdin)
        with tarfile.open(fileobj=hw, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            dirs = set()
            for name, _data in entries:
                parts = name.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    d = "/".join(parts[:i])
                    if d not in dirs:
                        dirs.add(d)
                        ti = tarfile.TarInfo(d)
                        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                        tf.addfile(ti)
                ti = tarfile.TarInfo(name)
                ti.mode, ti.mtime = 0o644, 0
                data = _data
                if isinstance(data, tuple):
                    ks = B.keystream(data[1])
                    ti.size = data[0]
                    tf.addfile(ti, ks.stdout)
                    ks.kill()
                    ks.wait()
                else:
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
        gz.stdin.close()
        assert gz.wait() == 0
    return "sha256:" + B.sh(["sha256sum", path]).split()[0], "sha256:" + hw.h.hexdigest()


def keystream_slice(seed, off, size):
    """Bytes OFF..OFF+SIZE of the keystream of SEED (what a file written with it holds)."""
    ks = B.keystream(seed)
    try:
        left = off
        while left:
            left -= len(ks.stdout.read(min(left, MiB)))
        out = b""
        while len(out) < size:
            out += ks.stdout.read(size - len(out))
        return out
    finally:
        ks.kill()
        ks.wait()


def small_files():
    """LAYER_NSMALL small text files of 200 B - 8 KiB (deterministic)."""
    out = []
    for i in range(LAYER_NSMALL):
        n = 200 + (i * 7919) % 8000
        line = ("file %04d: the quick brown fox jumps over the lazy dog\n" % i).encode()
        body = (line * (n // len(line) + 1))[:n]
        out.append(("usr/share/doc/pkg%02d/f%04d.txt" % (i % 50, i), body))
    return out


# ----------------------------------------------------------------------------- 8 layer

def bench_layer(ctx):
    work, build, tools, reps = ctx["work"], ctx["build"], ctx["tools"], ctx["lazy_reps"]
    repo = "bench/layer"
    small = json.dumps({"name": "app", "threads": 8, "pad": "x" * 3000}, sort_keys=True).encode()
    small_sha = hashlib.sha256(small).hexdigest()
    entries = [("data/a.bin", (LAYER_HALF, 21))] + small_files() + [(LAYER_SMALL, small),
                                                                   ("data/b.bin", (LAYER_HALF, 22))]
    path = os.path.join(work, "layer8.tar.gz")
    B.log("layer: building a gzip layer of %d MiB (2 x %d MiB incompressible, %d small files)"
          % (2 * LAYER_HALF // MiB, LAYER_HALF // MiB, LAYER_NSMALL + 1))
    digest, diff_id = write_layer(path, entries)
    blob_size = os.path.getsize(path)

    # The pass, on the layer file itself (page cache warm): layer_pass vs gzip -dc | tar -t.
    res = {"pass_s": [], "tart_s": [], "encoded": [], "encoded_per_gib": [], "checkpoints": []}
    lp = os.path.join(tools, "layer_pass")
    subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)
    for i in range(reps):
        for side in (("pass", "tart") if i % 2 == 0 else ("tart", "pass")):
            if side == "pass":
                r = B.kv(B.sh([lp, path]).splitlines()[0])
                res["pass_s"].append(r["pass_s"])
                res["encoded"].append(r["encoded"])
                res["encoded_per_gib"].append(r["encoded_per_gib_blob"])
                res["checkpoints"].append(r["checkpoints"])
            else:
                t0 = time.monotonic()
                subprocess.run(["sh", "-c", "gzip -dc '%s' | tar -t > /dev/null" % path],
                               check=True)
                res["tart_s"].append(time.monotonic() - t0)
        B.log("layer pass run %d: pass %.2f s, gzip -dc | tar -t %.2f s, index %d bytes"
              % (i + 1, res["pass_s"][-1], res["tart_s"][-1], res["encoded"][-1]))

    net = B.new_net(work, "layer-net")
    out = {"blob_size": blob_size, "lazy_s": [], "lazy_add_s": [], "lazy_read_s": [],
           "lazy_origin": [], "lazy_peer": [], "full_s": [], "full_origin": [],
           "index_wait": [], "states": []}
    try:
        s = net.add_subnet()
        reg = net.registry(net.add_host("reg", s))
        ha, hb = net.add_host("a", s), net.add_host("b", s)
        B.push_file(reg, repo, path, digest)
        os.unlink(path)
        B.warm_registry_file(reg, digest)
        ref = reg.ref(repo, digest)
        url = "http://%s/v2/%s/blobs/%s" % (reg.hostport, repo, digest)
        # A: builds the index (the pass over the whole layer) with a budget below the layer's
        # size, so it keeps the (pinned) index and not the layer: B's reads are cold.
        a = lazy_node(net, build, ha, reg, [ha, hb], "layer-a", budget="128M")
        t0 = time.monotonic()
        info = layer_add(a, ref, diff_id)
        out["a_pass_s"] = time.monotonic() - t0
        out["a_state"] = info.get("state")
        out["index_digest"] = info.get("index_digest")
        B.log("layer: A registered the layer: %s in %.1f s" % (info.get("state"), out["a_pass_s"]))
        for i in range(reps):
            for side in (("lazy", "full") if i % 2 == 0 else ("full", "lazy")):
                if side == "full":
                    dest = "/tmp/benchlazy-x-%d" % os.getpid()
                    hb.run(["rm", "-rf", dest])
                    hb.run(["mkdir", "-p", dest], check=True)
                    mark = reg.mark()
                    t0 = time.monotonic()
                    hb.run(["sh", "-c", "curl -sS '%s' | gzip -dc | tar -x -C %s %s"
                            % (url, dest, LAYER_SMALL)], check=True, timeout=600)
                    out["full_s"].append(time.monotonic() - t0)
                    got = hb.run(["sha256sum", os.path.join(dest, LAYER_SMALL)], check=True)
                    assert got.stdout.split()[0] == small_sha, got.stdout
                    hb.run(["rm", "-rf", dest])
                    out["full_origin"].append(reg.bytes_served(digest, since=mark))
                    continue
                b = lazy_node(net, build, hb, reg, [ha, hb], "layer-b-%d" % i)
                try:
                    B.wait_peers_up([a, b])
                    out["index_wait"].append(wait_index_known(net, [a, b], digest))
                    mark = reg.mark()
                    t0 = time.monotonic()
                    info = layer_add(b, ref, diff_id, wait=120)
                    t1 = time.monotonic()
                    fpath = os.path.join(b.view_mountpoint, "layers", "sha256",
                                         digest.split(":", 1)[1], LAYER_SMALL)
                    with open(fpath, "rb") as f:
                        data = f.read()
                    t2 = time.monotonic()
                    assert hashlib.sha256(data).hexdigest() == small_sha, "wrong bytes"
                    out["states"].append(info.get("state"))
                    out["lazy_add_s"].append(t1 - t0)
                    out["lazy_read_s"].append(t2 - t1)
                    out["lazy_s"].append(t2 - t0)
                    out["lazy_origin"].append(reg.bytes_served(digest, since=mark))
                    out["lazy_peer"].append(node_fetched(b)[1])
                finally:
                    B.net_dispose(net, b)
            B.log("layer run %d: lazy %.2f s (add %.2f + read %.3f; index %s), origin %d KiB; "
                  "full %.1f s, origin %d MiB" % (
                      i + 1, out["lazy_s"][-1], out["lazy_add_s"][-1], out["lazy_read_s"][-1],
                      out["states"][-1], out["lazy_origin"][-1] // 1024, out["full_s"][-1],
                      out["full_origin"][-1] // MiB))
    finally:
        net.teardown()
    r = {k: B.fig(v) for k, v in out.items() if isinstance(v, list) and v
         and all(isinstance(x, (int, float)) for x in v)}
    r.update({k: v for k, v in out.items() if not isinstance(v, list)})
    r["states"] = out["states"]
    r["index_wait"] = out["index_wait"]
    r["ratio"] = B.fig([l / f for l, f in zip(out["lazy_s"], out["full_s"])])
    r["origin_ratio"] = B.fig([l / f for l, f in zip(out["lazy_origin"], out["full_origin"])])
    for k in ("pass_s", "tart_s", "encoded", "encoded_per_gib", "checkpoints"):
        r[k] = B.fig(res[k])
    r["pass_ratio"] = B.fig([p / t for p, t in zip(res["pass_s"], res["tart_s"])])
    r["small_size"] = len(small)
    return r


# ----------------------------------------------------------------------------- 9 start

def stargz_binary(build):
    """BUILD/bench/stargz-grpc, built from bench/stargz/main.go when missing or older (offline:
    GO111MODULE=off over Debian's /usr/share/gocode)."""
    src = os.path.join(HERE, "stargz", "main.go")
    out = os.path.join(build, "bench", "stargz-grpc")
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return out
    if shutil.which("go") is None or not os.path.isdir(STARGZ_PKG):
        raise RuntimeError("stargz baseline needs golang-go and "
                           "golang-github-containerd-stargz-snapshotter-dev (make deps)")
    gopath = os.path.join(build, "bench", "gopath")
    os.makedirs(gopath, exist_ok=True)
    env = dict(os.environ, GOPATH="%s:%s" % (gopath, GOCODE), GO111MODULE="off", GOFLAGS="")
    env.setdefault("GOCACHE", os.path.join(os.environ.get("HOME") or "/root", ".cache",
                                           "go-build"))
    B.log("start: building bench/stargz (go build, offline)")
    r = subprocess.run(["go", "build", "-o", out, "./bench/stargz"], cwd=REPO_ROOT, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError("go build bench/stargz: %s" % r.stdout[-2000:])
    return out


class Stargz:
    """bench/stargz's proxy snapshotter on HOST (nsenter --net: root mount namespace)."""

    def __init__(self, binary, host, workdir, insecure):
        self.workdir = workdir
        self.root = os.path.join(workdir, "root")
        self.sock = os.path.join(workdir, "stargz.sock")
        self.log_path = os.path.join(workdir, "stargz.log")
        os.makedirs(workdir, exist_ok=True)
        self._logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["nsenter", "--net=" + host.nspath, binary, "-address", self.sock, "-root", self.root,
             "-insecure", insecure, "-log-level", "warn"],
            stdout=self._logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("stargz-grpc did not start: %s" % self.log_tail())
            time.sleep(0.1)

    def log_tail(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        # stargz's FUSE layers and overlays under its root: leave nothing mounted behind.
        subprocess.run(["sh", "-c", "grep -o ' %s[^ ]*' /proc/self/mountinfo | sort -r | "
                        "xargs -r -n1 umount -l" % self.root],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ctr_remote(c, *args, timeout=600):
    t0 = time.monotonic()
    r = subprocess.run(c.prefix + [CTR_REMOTE, "--address", c.address] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout)
    return r, time.monotonic() - t0


def bench_start(ctx):
    import ctrd
    work, build, reps = ctx["work"], ctx["build"], ctx["lazy_reps"]
    why = ctrd.available()
    if why:
        raise RuntimeError("containerd unavailable: %s" % why)
    if not os.access(CTR_REMOTE, os.X_OK):
        raise RuntimeError("ctr-remote is not installed (stargz-snapshotter; make deps)")
    sgbin = stargz_binary(build)
    repo = "bench/start"
    seed = 23
    expect = hashlib.md5(keystream_slice(seed, START_SKIP_MIB * MiB,
                                         START_READ_MIB * MiB)).hexdigest()
    cmd = ["/bin/busybox", "sh", "-c",
           "/bin/busybox dd if=/data/random.bin bs=1048576 skip=%d count=%d 2>/dev/null | "
           "/bin/busybox md5sum" % (START_SKIP_MIB, START_READ_MIB)]
    net = B.new_net(work, "start-net")
    ctrds, stargzs = [], []

    def containerd(host, name, plugin=None, sock=None):
        c = ctrd.Containerd(os.path.join(work, name), prefix=["nsenter", "--net=" + host.nspath],
                            snapshotter=plugin or "overlayfs")
        if plugin:
            with open(c.config_path, "a") as f:
                f.write('[proxy_plugins.%s]\n  type = "snapshot"\n  address = "%s"\n'
                        % (plugin, sock))
        ctrds.append(c)
        return c.start()

    def drop(c):
        c.stop()
        ctrds.remove(c)
        shutil.rmtree(c.workdir, ignore_errors=True)

    def check_out(r, what):
        if r.returncode != 0 or expect not in r.stdout:
            raise RuntimeError("%s: exit %d, output %r (want md5 %s) %s" % (
                what, r.returncode, (r.stdout or "")[-500:], expect, (r.stderr or "")[-500:]))

    def layer_bytes(mark, layer):
        reqs = reg.requests()[mark:]
        return (sum(q.written for q in reqs if q.method == "GET" and q.path.endswith(
            "/blobs/" + layer)), sum(q.written for q in reqs if q.method == "GET"))

    res = {"overlay": [], "p2pblobs": [], "stargz": [], "index_wait": [], "announce": []}
    try:
        s = net.add_subnet()
        reg = net.registry(net.add_host("reg", s))
        ha, hb = net.add_host("a", s), net.add_host("b", s)
        B.log("start: building a 512 MiB layer (busybox + 512 MiB of random data, gzip -1)")
        layer, diff = B.big_layer(os.path.join(work, "layer9.tar.gz"), START_SIZE, seed)
        img = ctrd.push_image(B.StreamingPusher(reg), repo, "v1", [(layer, diff)])
        os.unlink(layer.path)
        ldigest = img["layers"][0]
        ref = "%s/%s:v1" % (reg.hostport, repo)
        esgz = "%s/%s:esgz" % (reg.hostport, repo)
        hosts_direct = os.path.join(work, "hosts-direct-start")
        os.makedirs(os.path.join(hosts_direct, reg.hostport))
        with open(os.path.join(hosts_direct, reg.hostport, "hosts.toml"), "w") as f:
            f.write('server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", '
                    '"resolve"]\n' % (reg.hostport, reg.hostport))

        # The eStargz form, made once by ctr-remote in a scratch containerd on A's host.
        B.log("start: converting the image to eStargz (ctr-remote image convert --estargz)")
        cv = containerd(ha, "start-convert")
        t0 = time.monotonic()
        for args in (("image", "pull", "--plain-http", ref),
                     ("image", "convert", "--estargz", "--oci", "--estargz-compression-level",
                      "1", ref, esgz),
                     ("image", "push", "--plain-http", esgz)):
            r, _t = ctr_remote(cv, *args, timeout=1200)
            if r.returncode != 0:
                raise RuntimeError("ctr-remote %s: %s" % (" ".join(args[:2]), r.stdout[-1500:]))
        res["convert_s"] = time.monotonic() - t0
        drop(cv)
        st, _h, body = reg.request("GET", "/v2/%s/manifests/esgz" % repo, headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json"})
        man = json.loads(body)
        edigest = man["layers"][0]["digest"]
        res["esgz_layer_size"] = man["layers"][0]["size"]
        B.log("start: eStargz layer %s, %d MiB, converted in %.0f s"
              % (edigest[:19], res["esgz_layer_size"] // MiB, res["convert_s"]))

        # A: holds the layer and its index (the pass), as a node that started the image before.
        a = lazy_node(net, build, ha, reg, [ha, hb], "start-a")
        t0 = time.monotonic()
        info = layer_add(a, reg.ref(repo, ldigest), diff)
        res["a_pass_s"] = time.monotonic() - t0
        res["a_state"] = info.get("state")
        B.wait_verified(a)
        B.log("start: A built the index: %s in %.1f s" % (info.get("state"), res["a_pass_s"]))

        sides = ("overlay", "p2pblobs", "stargz")
        for i in range(reps):
            order = sides[i % 3:] + sides[:i % 3]
            for side in order:
                b = sg = None
                try:
                    if side == "p2pblobs":
                        sock = os.path.join(net.workdir, "b%d.sock" % i)
                        b = lazy_node(net, build, hb, reg, [ha, hb], "start-b-%d" % i,
                                      extra=["--snapshotter-socket", sock], root_mounts=True)
                        B.harness.wait_until(lambda: os.path.exists(sock), 20,
                                             what="snapshotter socket")
                        B.wait_peers_up([a, b])
                        res["index_wait"].append(wait_index_known(net, [a, b], ldigest))
                        res["announce"].append(B.wait_announced(net, [a, b], a, ldigest,
                                                                img["layer_bytes"]))
                        c = containerd(hb, "start-ctrd-%s-%d" % (side, i), "p2pblobs", sock)
                    elif side == "stargz":
                        sg = Stargz(sgbin, hb, os.path.join(work, "stargz-%d" % i), reg.hostport)
                        stargzs.append(sg)
                        c = containerd(hb, "start-ctrd-%s-%d" % (side, i), "stargz", sg.sock)
                    else:
                        c = containerd(hb, "start-ctrd-%s-%d" % (side, i))
                    try:
                        mark = reg.mark()
                        cid = "start-%s-%d" % (side, i)
                        if side == "overlay":
                            r, t_pull = c.pull(ref, hosts_direct, timeout=900)
                            check = (r.returncode == 0, r.stdout + r.stderr)
                            image = ref
                        else:
                            image = ref if side == "p2pblobs" else esgz
                            r, t_pull = ctr_remote(c, "image", "rpull", "--plain-http",
                                                   "--snapshotter", side, image, timeout=900)
                            check = (r.returncode == 0, r.stdout)
                        if not check[0]:
                            raise RuntimeError("%s pull: %s %s" % (side, check[1][-1500:],
                                                                   c.log_text()[-1500:]))
                        t0 = time.monotonic()
                        rr = c.run(image, cid, *cmd, timeout=600)
                        t_run = time.monotonic() - t0
                        check_out(rr, side + " run")
                        lb, tb = layer_bytes(mark, ldigest if side != "stargz" else edigest)
                        row = {"pull": t_pull, "run": t_run, "total": t_pull + t_run,
                               "layer_bytes": lb, "registry_bytes": tb}
                        content = c.ctr("content", "ls", "-q", timeout=30).stdout.split()
                        row["layer_in_content_store"] = (ldigest in content
                                                         or edigest in content)
                        if b is not None:
                            row["b_origin"], row["b_peer"] = node_fetched(b)
                    finally:
                        drop(c)
                finally:
                    if b is not None:
                        B.net_dispose(net, b)
                    if sg is not None:
                        sg.stop()
                        stargzs.remove(sg)
                        shutil.rmtree(sg.workdir, ignore_errors=True)
                res[side].append(row)
            o, p, g = res["overlay"][-1], res["p2pblobs"][-1], res["stargz"][-1]
            B.log("start run %d: overlay %.1f s (pull %.1f), p2pblobs %.2f s (pull %.2f; B from "
                  "origin %d KiB, peers %d KiB%s), stargz %.2f s (pull %.2f; layer bytes %d KiB)"
                  % (i + 1, o["total"], o["pull"], p["total"], p["pull"],
                     p["b_origin"] // 1024, p["b_peer"] // 1024,
                     "; LAYER IN CONTENT STORE: fell back" if p["layer_in_content_store"]
                     else "", g["total"], g["pull"], g["layer_bytes"] // 1024))
    finally:
        for sg in list(stargzs):
            try:
                sg.stop()
            except Exception as e:  # noqa: BLE001  (teardown goes on)
                B.log("warning: stargz stop:", e)
        for c in list(ctrds):
            try:
                drop(c)
            except Exception as e:  # noqa: BLE001
                B.log("warning: containerd stop:", e)
        net.teardown()
    out = {"layer_size": img["layer_bytes"], "index_wait": res["index_wait"],
           "announce": res["announce"], "convert_s": res["convert_s"],
           "esgz_layer_size": res["esgz_layer_size"], "a_pass_s": res["a_pass_s"],
           "a_state": res["a_state"], "read_mib": START_READ_MIB}
    for side in sides:
        for k in ("pull", "run", "total", "layer_bytes", "registry_bytes"):
            out[side + "_" + k] = B.fig([r[k] for r in res[side]])
        out[side + "_fallbacks"] = sum(r["layer_in_content_store"] for r in res[side])
    out["p2pblobs_b_origin"] = B.fig([r["b_origin"] for r in res["p2pblobs"]])
    out["p2pblobs_b_peer"] = B.fig([r["b_peer"] for r in res["p2pblobs"]])
    for base in ("overlay", "stargz"):
        out["ratio_" + base] = B.fig([p["total"] / o["total"]
                                      for p, o in zip(res["p2pblobs"], res[base])])
    return out


# ----------------------------------------------------------------------------- report

def rows_for(res, cmd):
    """bench.py's rows: (item, measurement, p2pblobs, baseline, ratio, runs, command) and,
    where the issue sets one, (target, CPU); bench.py pads the others."""
    mm, rows = B.mm, []
    c = res.get("layer")
    if c and "error" in c:
        rows.append(("8 layer", "one small file of a cold 512 MiB gzip layer vs the whole layer",
                     "not measured in this run: " + c["error"], "", "", 0, cmd("layer")))
    elif c:
        n = c["ratio"]["n"]
        rows.append(("8 layer", "one %d-byte file of a cold %d MiB gzip layer on node B (index "
                     "from peer A): `blobctl layer add` + read, vs `curl | gzip -dc | tar -x` of "
                     "that file (s; lower is better)" % (c["small_size"], c["blob_size"] // MiB),
                     mm(c["lazy_s"], "%.2f"), mm(c["full_s"], "%.1f") + " curl | gzip | tar",
                     mm(c["ratio"], "%.3f"), n, cmd("layer")))
        rows.append(("8 layer", "  registry bytes of the layer (KiB; lower is better)",
                     mm(c["lazy_origin"], "%.0f", 1 / 1024),
                     mm(c["full_origin"], "%.0f", 1 / 1024), mm(c["origin_ratio"], "%.4f"), n,
                     cmd("layer")))
        rows.append(("8 layer", "  the index pass over the layer (bench/layer_pass) vs "
                     "`gzip -dc | tar -t` (s)", mm(c["pass_s"], "%.2f"),
                     mm(c["tart_s"], "%.2f") + " gzip -dc | tar -t", mm(c["pass_ratio"], "%.2f"),
                     c["pass_ratio"]["n"], cmd("layer")))
        rows.append(("8 layer", "  index size per GiB of layer (MiB; %d checkpoints)"
                     % c["checkpoints"]["median"], mm(c["encoded_per_gib"], "%.1f", 1 / MiB),
                     "", "", c["encoded_per_gib"]["n"], cmd("layer")))
    c = res.get("start")
    if c and "error" in c:
        rows.append(("9 start", "container start, 512 MiB layer: lazy vs full pull vs stargz",
                     "not measured in this run: " + c["error"], "", "", 0, cmd("start")))
    elif c:
        n = c["ratio_overlay"]["n"]
        what = ("container start (pull + `ctr run` of a command reading %d MiB), image with a "
                "%d MiB gzip layer, node B (s; lower is better)"
                % (c["read_mib"], c["layer_size"] // MiB))
        rows.append(("9 start", what, mm(c["p2pblobs_total"], "%.2f") + " p2pblobs snapshotter, "
                     "peer A holds the index", mm(c["overlay_total"], "%.1f") + " containerd "
                     "overlayfs, full pull", mm(c["ratio_overlay"], "%.3f"), n, cmd("start"),
                     "≤ 0.2 (issue 17: ≥ 5× faster)", ""))
        rows.append(("9 start", "  the same against stargz-snapshotter on the eStargz image",
                     mm(c["p2pblobs_total"], "%.2f"), mm(c["stargz_total"], "%.2f")
                     + " stargz-snapshotter", mm(c["ratio_stargz"], "%.2f"), n, cmd("start"),
                     "< 1 (issue 17)", ""))
        rows.append(("9 start", "  pull alone (s): p2pblobs / overlayfs / stargz",
                     mm(c["p2pblobs_pull"], "%.2f"), mm(c["overlay_pull"], "%.1f") + " / "
                     + mm(c["stargz_pull"], "%.2f"), "", n, cmd("start")))
        rows.append(("9 start", "  registry bytes of the layer during pull + run (MiB): "
                     "p2pblobs / overlayfs / stargz", mm(c["p2pblobs_layer_bytes"], "%.2f",
                                                         1 / MiB),
                     mm(c["overlay_layer_bytes"], "%.0f", 1 / MiB) + " / "
                     + mm(c["stargz_layer_bytes"], "%.1f", 1 / MiB), "", n, cmd("start")))
    return rows


def sections(res):
    mm, L = B.mm, []
    c = res.get("layer")
    if c and "error" not in c:
        L += ["## 8. A file inside a cold layer", "",
              "The layer: a tar (gzip -1 -n) of two %d MiB files of AES-CTR keystream "
              "(incompressible) with %d small files between them, among them `%s` (%d bytes), "
              "%d MiB compressed. Node A (budget 128 MiB, below the layer's size) registers it "
              "(`blobctl layer add --diff-id`: state `%s` in %.1f s, the pass over the whole "
              "layer) and keeps the index (a pinned derived blob) but not the layer's chunks. "
              "Each run, in alternating order: a fresh node B (own namespace, new state dir) "
              "waits (untimed) until both nodes' directories answer `GET /p2p/v1/index/<layer>` "
              "(waited %s s), then `blobctl layer add … --wait` (index from A: states %s) and "
              "one `read()` of the file through `<mnt>/layers/sha256/<digest>/%s`, timed "
              "together (add %s s, read %s s); against `curl URL | gzip -dc | tar -x FILE` in "
              "B's namespace. Registry bytes come from the registry's own log; B fetched %s "
              "KiB from peers."
              % (LAYER_HALF // MiB, LAYER_NSMALL + 1, LAYER_SMALL, c["small_size"],
                 c["blob_size"] // MiB, c.get("a_state"), c.get("a_pass_s", 0),
                 ", ".join("%.1f" % w if w is not None else "timeout" for w in c["index_wait"]),
                 ", ".join(str(s) for s in c["states"]), LAYER_SMALL,
                 mm(c["lazy_add_s"], "%.2f"), mm(c["lazy_read_s"], "%.3f"),
                 mm(c["lazy_peer"], "%.0f", 1 / 1024)), "",
              "The pass: `bench/layer_pass LAYER` (layer/'s builder fed 1 MiB pieces from the "
              "page cache, default span, then encoded: %s bytes of index, %s per GiB of layer) "
              "against `gzip -dc LAYER | tar -t > /dev/null`, alternating, page cache warm."
              % (mm(c["encoded"], "%.0f"), mm(c["encoded_per_gib"], "%.0f")), ""]
    c = res.get("start")
    if c and "error" not in c:
        L += ["## 9. Container start: lazy, full pull, stargz", "",
              "The image: one layer (gzip -1 -n) of /bin/busybox and `data/random.bin`, 512 MiB "
              "of AES-CTR keystream (%d MiB compressed); the command `dd` reads %d MiB from the "
              "middle of it and prints their md5 (checked). Node B, each run from a fresh "
              "containerd 1.6 (and fresh daemon/snapshotter), in rotating order:" %
              (c["layer_size"] // MiB, c["read_mib"]), "",
              "- overlayfs: `ctr image pull` (everything downloaded, unpacked) + `ctr run --rm`.",
              "- p2pblobs: `p2pblobsd --snapshotter-socket` as containerd's "
              "`[proxy_plugins.p2pblobs]`, `ctr-remote image rpull --snapshotter p2pblobs` "
              "(its labels name each layer) + `ctr run --rm --snapshotter p2pblobs`. Peer A "
              "built the layer's index beforehand (%s, %.1f s) and holds the layer; before "
              "each run the bench waits (untimed) until B's directory answers for the index "
              "and lists A's chunks. B's daemon fetched %s KiB from the origin and %s KiB "
              "from peers. Runs where the layer landed in containerd's content store (a "
              "fallback, not lazy): %d."
              % (c["a_state"], c["a_pass_s"], mm(c["p2pblobs_b_origin"], "%.0f", 1 / 1024),
                 mm(c["p2pblobs_b_peer"], "%.0f", 1 / 1024), c["p2pblobs_fallbacks"]),
              "- stargz: bench/stargz (stargz-snapshotter 0.12's fs + snapshot packages from "
              "Debian, default configuration: background fetch of the whole layer on) as "
              "`[proxy_plugins.stargz]`, on the image converted once by `ctr-remote image "
              "convert --estargz --oci --estargz-compression-level 1` (%d MiB layer, %.0f s), "
              "`ctr-remote image rpull --snapshotter stargz` + `ctr run`. Its background fetch "
              "of the rest of the layer goes on after the command exits (the registry bytes "
              "below stop at the exit; the snapshotter is stopped with the run). Runs where "
              "the layer landed in containerd's content store: %d." %
              (c["esgz_layer_size"] // MiB, c["convert_s"], c["stargz_fallbacks"]), "",
              "| | overlayfs (full pull) | p2pblobs (peer holds the index) | stargz (eStargz) |",
              "|---|---|---|---|",
              "| pull (s) | %s | %s | %s |" % (mm(c["overlay_pull"], "%.1f"),
                                              mm(c["p2pblobs_pull"], "%.2f"),
                                              mm(c["stargz_pull"], "%.2f")),
              "| run (s) | %s | %s | %s |" % (mm(c["overlay_run"], "%.2f"),
                                             mm(c["p2pblobs_run"], "%.2f"),
                                             mm(c["stargz_run"], "%.2f")),
              "| start: pull + run (s) | %s | %s | %s |" % (mm(c["overlay_total"], "%.1f"),
                                                           mm(c["p2pblobs_total"], "%.2f"),
                                                           mm(c["stargz_total"], "%.2f")),
              "| registry bytes of the layer (MiB) | %s | %s | %s |"
              % (mm(c["overlay_layer_bytes"], "%.0f", 1 / MiB),
                 mm(c["p2pblobs_layer_bytes"], "%.2f", 1 / MiB),
                 mm(c["stargz_layer_bytes"], "%.1f", 1 / MiB)), "",
              "Targets: p2pblobs ≥ 5× faster than the full pull (ratio ≤ 0.2: %s, median "
              "%.3f) and faster than stargz (ratio < 1: %s, median %.2f)."
              % ("met" if c["ratio_overlay"]["median"] <= 0.2 else "NOT met",
                 c["ratio_overlay"]["median"],
                 "met" if c["ratio_stargz"]["median"] < 1 else "NOT met",
                 c["ratio_stargz"]["median"]), ""]
    return L
