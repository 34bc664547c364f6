"""`make bench`: p2pblobsd measured against what users run today, on this machine, in one run.

Numbers, never assertions. Every figure is the median of several runs with min-max, and a ratio
against a baseline measured in the same run, back to back with it (the order of the pair
alternates between runs, so neither side always goes first on a warm or busy machine).

  1 cached   sequential 1 MiB and random 4 KiB reads of a 1 GiB blob, cache warm: through the
             mount vs the store file itself (<state-dir>/chunks/sha256/<hex>)
  2 cold     a 512 MiB blob read through the mount from a cold cache vs curl downloading it from
             the same docker-registry, and vs `curl | tee file | sha256sum`; throughput and time
             to first byte; first byte of 200 random 4 KiB reads of uncached chunks vs Range GETs
  5 memory   a 2 GiB blob streamed through a 256 MiB budget, the daemon in a cgroup of its own:
             RSS, working set, store page cache, store on disk, sampled every 0.5 s, plotted to
             bench/memory.png; baseline: curl downloading the same blob to a file in a cgroup
  6 evict    hit ratio of cache/policy.c (S3-FIFO) vs plain LRU on a synthetic trace, 3 budgets
  3 peer     node B (its own network namespace) reads a 512 MiB blob that node A holds, through
             its mount, vs curl of the same blob from A's peer server run in B's namespace; first
             byte of 200 random 4 KiB reads of uncached chunks vs Range GETs to A
Every item also reports the daemon's CPU seconds per GiB (/proc/<pid>/stat), and the table the
targets of issue 15.
  4 swarm    2, 4, 8 nodes read one 512 MiB blob at the same moment: registry bytes / blob and
             the slowest node's time vs one node alone reading it from the registry
  7 containerd  ctr image pull + ctr run of an image with a 512 MiB layer on node B: direct
             from the registry vs through B's mirror while peer A holds the image

Items 3, 4 and 7 run on tests/integration/netns.py (namespaces, a bridge, a registry on a host
of its own; every namespace and process is removed at the end, also on failure) and 7 on
tests/integration/ctrd.py (a private containerd 1.6). A failing item is reported as not
measured (with the error) and the others go on. BENCH_NODE_LOG=info|debug raises the log level
of those nodes (their logs are deleted with the work dir; for debugging this script).

Run as root (drop_caches, cgroups, FUSE, namespaces). The reader is bench/readbench.c and the
simulator is bench/evict_sim.c + bench/evict_trace.c, compiled by bench/run.sh into BUILD/bench/.
"""

import argparse
import hashlib
import http.client
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness  # noqa: E402
import bench_lazy  # noqa: E402  (items 8 layer and 9 start: bench/bench_lazy.py)

MiB = harness.MiB
GiB = 1024 * MiB
ITEMS = ("cached", "cold", "peer", "swarm", "memory", "evict", "containerd", "layer", "start")


def log(*a):
    print("[bench %s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, **kw).stdout


def kv(line):
    return {k: float(v) for k, v in re.findall(r"(\w+)=([-0-9.e]+)", line)}


def med(xs):
    return statistics.median(xs)


# ----------------------------------------------------------------------------- machine

def machine():
    cpu = "unknown"
    for line in sh(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            cpu = line.split(":", 1)[1].strip()
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    fs = sh(["df", "--output=source,fstype", HERE]).splitlines()[-1].split()
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": mem / GiB,
            "kernel": platform.release(), "os": _os_name(), "disk": " ".join(fs),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _os_name():
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "unknown"


class Neighbours:
    """Watches, every 2 s, for processes we did not start that compete for the 2 cores
    (compilers, linkers, test runs of other engineers) and for the load average."""
    NAMES = ("cc1", "cc", "gcc", "clang", "ld", "collect2", "as", "make", "pytest", "cmocka")

    def __init__(self):
        self.samples = 0
        self.busy = 0
        self.seen = set()
        self.load = []
        self.stop = threading.Event()
        self.th = threading.Thread(target=self.run, daemon=True)
        self.ancestors = set()  # make bench, run.sh: ours too
        pid = os.getpid()
        while pid > 1:
            self.ancestors.add(pid)
            try:
                with open("/proc/%d/stat" % pid) as f:
                    pid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                break

    def ours(self, pid):
        if pid in self.ancestors:
            return True
        me = os.getpid()
        for _ in range(64):
            if pid == me:
                return True
            try:
                with open("/proc/%d/stat" % pid) as f:
                    pid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                return False
            if pid <= 1:
                return False
        return False

    def run(self):
        while not self.stop.is_set():
            busy = False
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    with open("/proc/%s/comm" % d) as f:
                        comm = f.read().strip()
                    with open("/proc/%s/cmdline" % d, "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
                except OSError:
                    continue
                hit = comm in self.NAMES or "pytest" in cmd
                if hit and not self.ours(int(d)):
                    busy = True
                    self.seen.add(comm if comm != "python3" else "pytest")
            with open("/proc/loadavg") as f:
                self.load.append(float(f.read().split()[0]))
            self.samples += 1
            self.busy += busy
            self.stop.wait(2)


# ----------------------------------------------------------------------------- blobs

def gen_file(path, size, seed):
    """SIZE deterministic bytes (AES-128-CTR keystream of zeros, key = SEED) into PATH."""
    with open(path, "wb") as out:
        p1 = keystream(seed)
        p2 = subprocess.Popen(["head", "-c", str(size)], stdin=p1.stdout, stdout=out)
        p1.stdout.close()
        p2.wait()
        p1.wait()
    assert os.path.getsize(path) == size


def keystream(seed):
    """openssl writing the endless AES-128-CTR keystream for SEED to its stdout pipe."""
    return subprocess.Popen(["openssl", "enc", "-aes-128-ctr", "-nosalt", "-K", "%032x" % seed,
                             "-iv", "0" * 32, "-in", "/dev/zero"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)


def push_file(reg, repo, path, digest=None):
    """Monolithic upload of the file PATH to REPO on REG (a harness.Registry, or a
    netns.NetRegistry: then from a thread inside the registry host's namespace)."""
    size = os.path.getsize(path)
    digest = digest or "sha256:" + sh(["sha256sum", path]).split()[0]

    def upload():
        c = http.client.HTTPConnection(reg.host, reg.port, timeout=600)
        c.request("POST", "/v2/%s/blobs/uploads/" % repo, headers={"Content-Length": "0"})
        r = c.getresponse()
        r.read()
        assert r.status == 202, r.status
        u = urllib.parse.urlsplit(r.headers["Location"])
        with open(path, "rb") as f:
            c.request("PUT", "%s?%s%sdigest=%s" % (u.path, u.query, "&" if u.query else "",
                                                   urllib.parse.quote(digest)),
                      body=f, headers={"Content-Length": str(size),
                                       "Content-Type": "application/octet-stream"})
            r = c.getresponse()
            r.read()
            assert r.status == 201, r.status
        c.close()
    host = getattr(reg, "host_obj", None)
    if host is not None:
        host.call(upload)
    else:
        upload()
    return digest


def make_blob(reg, work, repo, size, seed):
    """SIZE deterministic bytes (AES-128-CTR keystream of zeros, key = SEED), pushed to REG;
    returns the digest. The local copy is deleted once pushed."""
    path = os.path.join(work, "blob-%d.bin" % seed)
    gen_file(path, size, seed)
    digest = push_file(reg, repo, path)
    os.unlink(path)
    return digest


def warm_registry_file(reg, digest):
    """The origin's own file in the page cache, so origin figures measure the registry and the
    loopback, not this VM's disk."""
    subprocess.run(["cat", reg.blob_path_on_disk(digest)], stdout=subprocess.DEVNULL, check=True)


# ----------------------------------------------------------------------------- helpers

DROP_WHAT = ("`sync`, then `echo 3 > /proc/sys/vm/drop_caches` (page cache, dentries and "
             "inodes, machine-wide), then `posix_fadvise(POSIX_FADV_DONTNEED)` on the mounted "
             "blob file and on the store file")


def drop_caches(paths):
    harness.drop_caches(paths)


def readbench(tools, *args):
    out = sh([os.path.join(tools, "readbench")] + [str(a) for a in args])
    return kv(out)


def new_daemon(build, work, name, reg, budget, prefix=()):
    d = harness.Daemon(build, os.path.join(work, name), registries=[reg], log_level="notice",
                       extra_args=["--cache-budget", budget], prefix=prefix)
    d.start()
    d.prefix = []  # blobctl runs outside the daemon's cgroup
    return d


def dispose(d):
    d.cleanup()
    shutil.rmtree(d.workdir, ignore_errors=True)


def store_file(d, digest):
    return os.path.join(d.state_dir, "chunks", "sha256", harness.hex_of(digest))


def fig(vals):
    return {"median": med(vals), "min": min(vals), "max": max(vals), "n": len(vals),
            "runs": vals}


CLK_TCK = os.sysconf("SC_CLK_TCK")


def daemon_pid(d):
    """The p2pblobsd process of daemon D: its prefix (ip netns exec, nsenter) execs it, so
    normally d.proc.pid itself; else its child of that name."""
    pid = d.proc.pid
    try:
        with open("/proc/%d/comm" % pid) as f:
            if f.read().strip() == "p2pblobsd":
                return pid
        for t in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, t)) as f:
                for c in f.read().split():
                    with open("/proc/%s/comm" % c) as g:
                        if g.read().strip() == "p2pblobsd":
                            return int(c)
    except OSError:
        pass
    return pid


def cpu_seconds(d):
    """User + system CPU seconds daemon D has used so far, all its threads
    (/proc/<pid>/stat utime + stime)."""
    with open("/proc/%d/stat" % daemon_pid(d)) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()  # from field 3 (state) on
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu_seconds():
    """User + system CPU seconds of this process's waited-for children so far (readbench)."""
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def per_gib(cpu, nbytes):
    return cpu / (nbytes / GiB)


LAT_READS = 200


def lat_offsets(size, count, seed, block=4096, span=MiB):
    """COUNT offsets of BLOCK-aligned reads, each in its own SPAN (chunk) of a SIZE-byte blob,
    in random order: on a cold cache every one is a miss."""
    rnd = random.Random(seed)
    return [r * span + rnd.randrange(span // block) * block
            for r in rnd.sample(range(size // span), count)]


def quantiles(lat):
    lat = sorted(lat)
    n = len(lat)
    return {"p50": lat[(n - 1) // 2], "p99": lat[-(-n * 99 // 100) - 1], "max": lat[-1]}


def range_ttfb(host, port, path, offsets, block=4096):
    """The baseline of the first-byte figures: one keep-alive HTTP connection, a Range GET of
    BLOCK bytes at each offset; per request, the time from sending it to its first body byte
    (python's http.client: tens of microseconds of its own)."""
    c = http.client.HTTPConnection(host, port, timeout=60)
    lat = []
    try:
        for off in offsets:
            t = time.monotonic()
            c.request("GET", path, headers={"Range": "bytes=%d-%d" % (off, off + block - 1)})
            r = c.getresponse()
            r.read(1)
            lat.append(time.monotonic() - t)
            r.read()
            assert r.status == 206, r.status
    finally:
        c.close()
    return quantiles(lat)


def mount_ttfb(tools, path, seed):
    """First byte of LAT_READS random 4 KiB reads, each of an uncached chunk, through a cold
    mount (`readbench lat`)."""
    r = readbench(tools, "lat", path, 4096, LAT_READS, seed, MiB)
    return {"p50": r["p50"], "p99": r["p99"], "max": r["max"]}


# ----------------------------------------------------------------------------- 1 cached

def bench_cached(ctx):
    reg, work, build, tools, reps = ctx["reg"], ctx["work"], ctx["build"], ctx["tools"], ctx["reps"]
    size = 1 * GiB
    log("cached: pushing a 1 GiB blob")
    digest = make_blob(reg, work, "bench/cached", size, 11)
    warm_registry_file(reg, digest)
    d = new_daemon(build, work, "cached", reg, "2G")
    try:
        d.add(reg.ref("bench/cached", digest))
        mnt = d.blob_path(digest)
        log("cached: warming the cache (one read of the whole blob through the mount)")
        r = readbench(tools, "seq", mnt, MiB)
        assert int(r["bytes"]) == size
        harness.wait_until(lambda: d.stat()["blobs_verified"] == 1, 60, what="verification")
        store = store_file(d, digest)
        alloc = os.stat(store).st_blocks * 512
        s0 = d.stat()
        nrand = 20000
        res = {"seq_mount": [], "seq_store": [], "rand_mount": [], "rand_store": [],
               "seq_store_noreadahead": [], "seq_cpu": [], "rand_cpu": [],
               "rand_store_cpu": []}
        for i in range(reps):
            order = ("mount", "store") if i % 2 == 0 else ("store", "mount")
            for side in order:
                path = mnt if side == "mount" else store
                drop_caches([mnt, store])
                c0 = cpu_seconds(d)
                r = readbench(tools, "seq", path, MiB)
                assert int(r["bytes"]) == size, r
                res["seq_" + side].append(size / r["seconds"] / 1e6)
                if side == "mount":
                    res["seq_cpu"].append(per_gib(cpu_seconds(d) - c0, size))
            # diagnostic: the store file read the way cache/store.c reads it (no readahead)
            drop_caches([mnt, store])
            r = readbench(tools, "seq", store, MiB, "random")
            res["seq_store_noreadahead"].append(size / r["seconds"] / 1e6)
            for side in order:
                path = mnt if side == "mount" else store
                drop_caches([mnt, store])
                c0, u0 = cpu_seconds(d), children_cpu_seconds()
                r = readbench(tools, "rand", path, 4096, nrand, 1000 + i)
                res["rand_" + side].append(nrand / r["seconds"])
                if side == "mount":
                    res["rand_cpu"].append(per_gib(cpu_seconds(d) - c0, nrand * 4096))
                else:  # the floor: what the same reads cost the reader itself, done directly
                    res["rand_store_cpu"].append(per_gib(children_cpu_seconds() - u0,
                                                         nrand * 4096))
            log("cached run %d: seq %.0f/%.0f MB/s, rand %.0f/%.0f reads/s (mount/store)"
                % (i + 1, res["seq_mount"][-1], res["seq_store"][-1],
                   res["rand_mount"][-1], res["rand_store"][-1]))
        s1 = d.stat()
        fetched = s1["fetched"]["origin_bytes"] - s0["fetched"]["origin_bytes"]
    finally:
        dispose(d)
    ratio_seq = [m / s for m, s in zip(res["seq_mount"], res["seq_store"])]
    ratio_rand = [m / s for m, s in zip(res["rand_mount"], res["rand_store"])]
    return {"seq_mount": fig(res["seq_mount"]), "seq_store": fig(res["seq_store"]),
            "seq_ratio": fig(ratio_seq), "rand_mount": fig(res["rand_mount"]),
            "rand_store": fig(res["rand_store"]), "rand_ratio": fig(ratio_rand),
            "seq_store_nora": fig(res["seq_store_noreadahead"]),
            "seq_ratio_nora": fig([m / s for m, s in zip(res["seq_mount"],
                                                           res["seq_store_noreadahead"])]),
            "nrand": nrand, "store_alloc": alloc, "origin_bytes_during": fetched,
            "seq_cpu": fig(res["seq_cpu"]), "rand_cpu": fig(res["rand_cpu"]),
            "rand_store_cpu": fig(res["rand_store_cpu"]),
            "rand_cpu_ratio": fig([m / s for m, s in zip(res["rand_cpu"], res["rand_store_cpu"])])}


# ----------------------------------------------------------------------------- 2 cold

def bench_cold(ctx):
    reg, work, build, tools, reps = ctx["reg"], ctx["work"], ctx["build"], ctx["tools"], ctx["reps"]
    size = 512 * MiB
    log("cold: pushing a 512 MiB blob")
    repo = "bench/cold"
    digest = make_blob(reg, work, repo, size, 12)
    warm_registry_file(reg, digest)
    path = "/v2/%s/blobs/%s" % (repo, digest)
    url = reg.url + path
    res = {"mount_mbs": [], "curl_mbs": [], "pipe_mbs": [], "mount_ttfb": [], "curl_ttfb": [],
           "origin_x": [], "cpu": [], "hashes": []}
    sides = ("mount", "curl", "pipe")
    for i in range(reps):
        order = sides[i % 3:] + sides[:i % 3]  # each side goes first in turn
        for side in order:
            if side == "curl":
                out = sh(["curl", "-sS", "-o", "/dev/null", "-w",
                          "ttfb=%{time_starttransfer} seconds=%{time_total} "
                          "bytes=%{size_download}", url])
                r = kv(out)
                assert int(r["bytes"]) == size, out
                res["curl_mbs"].append(size / r["seconds"] / 1e6)
                res["curl_ttfb"].append(r["ttfb"])
            elif side == "pipe":
                # What standard tools do for a verified local copy: download, keep, hash.
                dest = os.path.join(work, "cold-pipe.bin")
                t0 = time.monotonic()
                out = sh(["sh", "-c", 'curl -sS "$1" | tee "$2" | sha256sum', "sh", url, dest])
                dt = time.monotonic() - t0
                assert out.split()[0] == digest.split(":", 1)[1], out
                assert os.path.getsize(dest) == size
                os.unlink(dest)
                res["pipe_mbs"].append(size / dt / 1e6)
            else:
                d = new_daemon(build, work, "cold-%d" % i, reg, "1G")
                try:
                    d.add(reg.ref(repo, digest))
                    c0 = cpu_seconds(d)
                    r = readbench(tools, "seq", d.blob_path(digest), MiB)
                    assert int(r["bytes"]) == size, r
                    res["cpu"].append(per_gib(cpu_seconds(d) - c0, size))
                    res["mount_mbs"].append(size / r["seconds"] / 1e6)
                    res["mount_ttfb"].append(r["ttfb"])
                    st = d.stat()
                    res["origin_x"].append(st["fetched"]["origin_bytes"] / size)
                    # SHA-256 passes over the blob's chunks, the daemon's own (issue 15: one
                    # per chunk); a build without these counters says nothing.
                    v = st.get("verify")
                    if v:
                        res["hashes"].append((v["frontier_hashed_chunks"] +
                                              v["landing_hashed_chunks"]) / (size // MiB))
                finally:
                    dispose(d)
        log("cold run %d: mount %.0f MB/s ttfb %.1f ms, curl %.0f MB/s ttfb %.1f ms, "
            "curl | tee | sha256sum %.0f MB/s%s"
            % (i + 1, res["mount_mbs"][-1], res["mount_ttfb"][-1] * 1e3,
               res["curl_mbs"][-1], res["curl_ttfb"][-1] * 1e3, res["pipe_mbs"][-1],
               ", %.2f hashes per chunk" % res["hashes"][-1] if res["hashes"] else ""))
    # First byte of uncached chunks: one fresh daemon, LAT_READS random 4 KiB reads, each in a
    # chunk of its own; baseline: the same kind of reads as Range GETs to the registry.
    d = new_daemon(build, work, "cold-lat", reg, "1G")
    try:
        d.add(reg.ref(repo, digest))
        lat = mount_ttfb(tools, d.blob_path(digest), 77)
        lat_origin = d.stat()["fetched"]["origin_bytes"]
    finally:
        dispose(d)
    base = range_ttfb(reg.host, reg.port, path, lat_offsets(size, LAT_READS, 77))
    log("cold first byte of %d uncached 4 KiB reads: p50 %.2f ms p99 %.2f ms (registry Range "
        "GET: p50 %.2f ms p99 %.2f ms)" % (LAT_READS, lat["p50"] * 1e3, lat["p99"] * 1e3,
                                           base["p50"] * 1e3, base["p99"] * 1e3))
    return {"mount_mbs": fig(res["mount_mbs"]), "curl_mbs": fig(res["curl_mbs"]),
            "ratio": fig([m / c for m, c in zip(res["mount_mbs"], res["curl_mbs"])]),
            "pipe_mbs": fig(res["pipe_mbs"]),
            "pipe_ratio": fig([m / c for m, c in zip(res["mount_mbs"], res["pipe_mbs"])]),
            "mount_ttfb": fig(res["mount_ttfb"]), "curl_ttfb": fig(res["curl_ttfb"]),
            "ttfb_ratio": fig([m / c for m, c in zip(res["mount_ttfb"], res["curl_ttfb"])]),
            "origin_x": fig(res["origin_x"]), "cpu": fig(res["cpu"]), "lat": lat,
            "lat_base": base, "lat_origin_bytes": lat_origin}


# ----------------------------------------------------------------------------- cgroups

class Cgroup:
    """A memory cgroup of our own, on whichever hierarchy has the memory controller.

    v1 or hybrid (memory on a v1 hierarchy, as on this machine): created below our own memory
    cgroup, so whatever limits we run under still apply; working set = memory.usage_in_bytes -
    memory.stat:total_inactive_file. v2: below our own cgroup when memory can be enabled in its
    subtree_control, else below the root; working set = memory.current -
    memory.stat:inactive_file. These are the kubelet's formulas. Removed by remove()."""

    def __init__(self, name):
        self.version, mnt = self._find_memory_hierarchy()
        own = self._own_path()
        self.path = None
        if self.version == 1:
            parent = os.path.join(mnt, own.lstrip("/"))
        else:
            parent = os.path.join(mnt, own.lstrip("/"))
            if not self._v2_enable_memory(parent):
                parent = mnt
        self.path = os.path.join(parent, name)
        os.mkdir(self.path)
        self.parent = parent

    @staticmethod
    def _find_memory_hierarchy():
        v2 = None
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                fstype, _src, sopts = post.split()[:3]
                mnt = pre.split()[4]
                if fstype == "cgroup" and "memory" in sopts.split(","):
                    return 1, mnt
                if fstype == "cgroup2" and v2 is None:
                    v2 = mnt
        if v2 is None:
            raise RuntimeError("no memory cgroup hierarchy mounted")
        with open(os.path.join(v2, "cgroup.controllers")) as f:
            if "memory" not in f.read().split():
                raise RuntimeError("cgroup2 at %s has no memory controller" % v2)
        return 2, v2

    def _own_path(self):
        with open("/proc/self/cgroup") as f:
            for line in f:
                _id, ctrls, path = line.rstrip("\n").split(":", 2)
                if self.version == 1 and "memory" in ctrls.split(","):
                    return path
                if self.version == 2 and _id == "0" and ctrls == "":
                    return path
        return "/"

    @staticmethod
    def _v2_enable_memory(parent):
        try:
            with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                if "memory" in f.read().split():
                    return True
            with open(os.path.join(parent, "cgroup.subtree_control"), "w") as f:
                f.write("+memory")
            return True
        except OSError:  # EBUSY: the cgroup has processes of its own (no internal processes)
            return False

    def describe(self):
        hybrid = self.version == 1 and any(
            l.split(" - ")[1].split()[0] == "cgroup2" for l in open("/proc/self/mountinfo"))
        return ("cgroup %s: the memory controller is on a %s hierarchy; one cgroup per run "
                "and side, `%s/p2pblobs-bench-<pid>-<daemon|curl>-<run>`" % (
                    "hybrid (v1 controllers + a cgroup2 mount without them)" if hybrid
                    else "v%d" % self.version, "v1" if self.version == 1 else "v2",
                    self.parent))

    def prefix(self):
        """argv prefix that moves the command into the cgroup before it execs."""
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', self.path]

    def read(self):
        usage_f = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        key = "total_inactive_file" if self.version == 1 else "inactive_file"
        with open(os.path.join(self.path, usage_f)) as f:
            usage = int(f.read())
        inactive = 0
        with open(os.path.join(self.path, "memory.stat")) as f:
            for line in f:
                k, v = line.split()
                if k == key:
                    inactive = int(v)
        return usage, max(0, usage - inactive)

    def remove(self):
        if not self.path or not os.path.isdir(self.path):
            return
        with open(os.path.join(self.path, "cgroup.procs")) as f:
            pids = [int(p) for p in f.read().split()]
        for p in pids:  # only processes we put there; move them back to our own cgroup
            try:
                with open(os.path.join(self.parent, "cgroup.procs"), "w") as f:
                    f.write(str(p))
            except OSError:
                pass
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)
        log("warning: could not remove cgroup", self.path)


def rss(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def fincore_bytes(paths):
    paths = [p for p in paths if os.path.exists(p)]
    if not paths:
        return 0
    r = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES"]
                       + paths, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return sum(int(x) for x in r.stdout.split() if x.isdigit())


class Sampler:
    """Every PERIOD s: t, RSS of PID, cgroup usage and working set, page cache of FILES()
    (fincore), bytes allocated on disk under DISKROOT, and EXTRA() if given."""

    def __init__(self, cg, pid, files, diskroot, extra=None, period=0.5):
        self.cg, self.pid, self.files, self.diskroot = cg, pid, files, diskroot
        self.extra, self.period = extra, period
        self.rows = []
        self.stop = threading.Event()
        self.th = threading.Thread(target=self.run, daemon=True)
        self.t0 = time.monotonic()

    def sample(self):
        usage, ws = self.cg.read()
        row = {"t": time.monotonic() - self.t0, "rss": rss(self.pid), "usage": usage, "ws": ws,
               "pagecache": fincore_bytes(self.files()),
               "disk": harness.allocated_bytes(self.diskroot)}
        if self.extra:
            row.update(self.extra())
        self.rows.append(row)

    def run(self):
        while not self.stop.is_set():
            nxt = time.monotonic() + self.period
            self.sample()
            self.stop.wait(max(0, nxt - time.monotonic()))

    def __enter__(self):
        self.t0 = time.monotonic()
        self.th.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.th.join()
        self.sample()

    def peak(self, k):
        return max(r[k] for r in self.rows)


# ----------------------------------------------------------------------------- 5 memory

def bench_memory(ctx):
    reg, work, build, tools = ctx["reg"], ctx["work"], ctx["build"], ctx["tools"]
    reps = ctx["mem_reps"]
    budget = 256 * MiB
    size = 8 * budget
    repo = "bench/memory"
    log("memory: pushing a 2 GiB blob")
    digest = make_blob(reg, work, repo, size, 13)
    warm_registry_file(reg, digest)
    url = "%s/v2/%s/blobs/%s" % (reg.url, repo, digest)
    runs = []
    for i in range(reps):
        order = ("daemon", "curl") if i % 2 == 0 else ("curl", "daemon")
        run = {}
        for side in order:
            cg = Cgroup("p2pblobs-bench-%d-%s-%d" % (os.getpid(), side, i))
            ctx["cgroup_desc"] = cg.describe()
            try:
                if side == "daemon":
                    d = new_daemon(build, work, "memory-%d" % i, reg, "256M", prefix=cg.prefix())
                    try:
                        d.add(reg.ref(repo, digest))
                        sdir = os.path.join(d.state_dir, "chunks", "sha256")
                        files = lambda: [os.path.join(sdir, n) for n in os.listdir(sdir)] \
                            if os.path.isdir(sdir) else []

                        def extra():
                            try:
                                return {"blobctl_pc": d.stat()["memory"]["store_page_cache_bytes"]}
                            except Exception:  # noqa: BLE001  (a sample may race a restart)
                                return {"blobctl_pc": 0}
                        c0 = cpu_seconds(d)
                        with Sampler(cg, d.proc.pid, files, d.chunks_dir, extra) as smp:
                            r = readbench(tools, "seq", d.blob_path(digest), MiB)
                        assert int(r["bytes"]) == size, r
                        cpu = per_gib(cpu_seconds(d) - c0, size)
                        st = d.stat()
                        run["daemon"] = {"rows": smp.rows, "mbs": size / r["seconds"] / 1e6,
                                         "cpu": cpu,
                                         "landed_peak": st["memory"].get("landed_peak_bytes", 0),
                                         "verified": st["blobs_verified"],
                                         "origin_x": st["fetched"]["origin_bytes"] / size,
                                         "self_ws": st["memory"].get("cgroup_working_set_bytes"),
                                         "self_cgv": st["memory"].get("cgroup_version")}
                    finally:
                        dispose(d)
                else:
                    dest = os.path.join(work, "curl-%d.blob" % i)
                    p = subprocess.Popen(cg.prefix() + ["curl", "-sS", "-o", dest, url])
                    with Sampler(cg, p.pid, lambda: [dest], dest) as smp:
                        t = time.monotonic()
                        p.wait()
                        dt = time.monotonic() - t
                    assert p.returncode == 0 and os.path.getsize(dest) == size
                    run["curl"] = {"rows": smp.rows, "mbs": size / dt / 1e6}
                    os.unlink(dest)
            finally:
                cg.remove()
        dr, cr = run["daemon"]["rows"], run["curl"]["rows"]
        log("memory run %d: daemon peak RSS %.0f MiB, WS %.0f MiB, store page cache %.1f MiB, "
            "store on disk %.0f MiB; curl peak WS %.0f MiB"
            % (i + 1, max(r["rss"] for r in dr) / MiB, max(r["ws"] for r in dr) / MiB,
               max(r["pagecache"] for r in dr) / MiB, max(r["disk"] for r in dr) / MiB,
               max(r["ws"] for r in cr) / MiB))
        runs.append(run)

    def peaks(side, k):
        return [max(r[k] for r in run[side]["rows"]) for run in runs]
    out = {
        "rss": fig(peaks("daemon", "rss")), "ws": fig(peaks("daemon", "ws")),
        "usage": fig(peaks("daemon", "usage")),
        "pagecache": fig(peaks("daemon", "pagecache")),
        "blobctl_pc": fig(peaks("daemon", "blobctl_pc")),
        "disk": fig(peaks("daemon", "disk")),
        "curl_ws": fig(peaks("curl", "ws")), "curl_usage": fig(peaks("curl", "usage")),
        "curl_pagecache": fig(peaks("curl", "pagecache")),
        "mbs": fig([r["daemon"]["mbs"] for r in runs]),
        "cpu": fig([r["daemon"]["cpu"] for r in runs]),
        "landed_peak": fig([r["daemon"]["landed_peak"] for r in runs]),
        "curl_mbs": fig([r["curl"]["mbs"] for r in runs]),
        "verified": [r["daemon"]["verified"] for r in runs],
        "origin_x": fig([r["daemon"]["origin_x"] for r in runs]),
        "self_cgv": runs[-1]["daemon"]["self_cgv"],
        "budget": budget, "size": size,
        "samples": [len(r["daemon"]["rows"]) for r in runs],
    }
    out["ws_ratio"] = fig([max(r["ws"] for r in run["daemon"]["rows"])
                           / max(1, max(r["ws"] for r in run["curl"]["rows"])) for run in runs])
    out["usage_ratio"] = fig([max(r["usage"] for r in run["daemon"]["rows"])
                              / max(1, max(r["usage"] for r in run["curl"]["rows"]))
                              for run in runs])
    out["disk_ratio"] = fig([d / budget for d in out["disk"]["runs"]])
    out["mbs_ratio"] = fig([r["daemon"]["mbs"] / r["curl"]["mbs"] for r in runs])
    # plot the run whose daemon working-set peak is the median one
    order = sorted(range(len(runs)), key=lambda j: out["ws"]["runs"][j])
    pick = order[len(order) // 2]
    out["plotted_run"] = pick + 1
    plot_memory(runs[pick], budget, size, os.path.join(HERE, "memory.png"), work)
    return out


def plot_memory(run, budget, size, png, work):
    dat = os.path.join(work, "memory.dat")
    with open(dat, "w") as f:
        f.write("# t rss_MiB ws_MiB store_pagecache_MiB store_disk_MiB usage_MiB\n")
        for r in run["daemon"]["rows"]:
            f.write("%.2f %.2f %.2f %.3f %.2f %.2f\n" % (
                r["t"], r["rss"] / MiB, r["ws"] / MiB, r["pagecache"] / MiB, r["disk"] / MiB,
                r["usage"] / MiB))
        f.write("\n\n# curl baseline: t ws_MiB pagecache_MiB usage_MiB\n")
        for r in run["curl"]["rows"]:
            f.write("%.2f %.2f %.2f %.2f\n" % (r["t"], r["ws"] / MiB, r["pagecache"] / MiB,
                                               r["usage"] / MiB))
    gp = os.path.join(work, "memory.gp")
    with open(gp, "w") as f:
        f.write("""
set terminal pngcairo size 1200,900 font "DejaVu Sans,12"
set output '%(png)s'
set multiplot layout 2,1 title "p2pblobsd streaming a %(gib)d GiB blob through a %(bud)d MiB budget (sampled every 0.5 s)" font ",14"
set key outside right top vertical
set grid
set xlabel "seconds since the read started"
set ylabel "MiB"
set title "p2pblobsd, in a cgroup of its own (linear scale)"
set yrange [0:*]
plot '%(dat)s' index 0 using 1:3 with lines lw 3 lc rgb "#d62728" title "cgroup working set", \\
     '' index 0 using 1:6 with lines lw 1 lc rgb "#ff7f0e" title "cgroup usage (raw)", \\
     '' index 0 using 1:2 with lines lw 2 lc rgb "#1f77b4" title "daemon RSS", \\
     '' index 0 using 1:4 with lines lw 2 lc rgb "#2ca02c" title "store page cache (fincore)", \\
     '' index 0 using 1:5 with lines lw 2 lc rgb "#9467bd" title "store on disk", \\
     %(bud)d with lines lw 1 dt 2 lc rgb "black" title "budget (%(bud)d MiB)"
set title "baseline: curl -o FILE of the same blob, in a cgroup of its own (log scale: compare the top panel)"
set logscale y
set yrange [1:*]
plot '%(dat)s' index 1 using 1:2 with lines lw 3 lc rgb "#d62728" title "cgroup working set", \\
     '' index 1 using 1:4 with lines lw 2 lc rgb "#ff7f0e" title "cgroup usage (raw)", \\
     '' index 1 using 1:3 with lines lw 2 lc rgb "#2ca02c" title "file page cache (fincore)", \\
     %(bud)d with lines lw 1 dt 2 lc rgb "black" title "p2pblobs budget (%(bud)d MiB)"
unset multiplot
""" % {"png": png, "dat": dat, "gib": size // GiB, "bud": budget // MiB})
    subprocess.run(["gnuplot", gp], check=True)


# ----------------------------------------------------------------------------- 6 evict

EVICT_BUDGETS = (256, 512, 1024)
EVICT_SEEDS = (1, 2, 3, 4, 5)


def bench_evict(ctx):
    tools, work = ctx["tools"], ctx["work"]
    per = {}  # (policy, budget) -> [hit ratio per seed]
    hot = {}
    info = []
    for seed in EVICT_SEEDS:
        trace = os.path.join(work, "trace-%d.bin" % seed)
        with open(trace, "wb") as f:
            r = subprocess.run([os.path.join(tools, "evict_trace"), str(seed)], stdout=f,
                               stderr=subprocess.PIPE, text=True, check=True)
        info.append(kv(r.stderr))
        out = sh([os.path.join(tools, "evict_sim"), trace] + [str(b) for b in EVICT_BUDGETS])
        for line in out.splitlines():
            pol = re.search(r"policy=(\w+)", line).group(1)
            v = kv(line)
            per.setdefault((pol, int(v["budget_mib"])), []).append(v["hit_ratio"])
            hot.setdefault((pol, int(v["budget_mib"])), []).append(v["hot_hit_ratio"])
        os.unlink(trace)
    res = {"info": info, "budgets": {}}
    for b in EVICT_BUDGETS:
        s3, lru = per[("s3fifo", b)], per[("lru", b)]
        res["budgets"][b] = {"s3": fig(s3), "lru": fig(lru),
                             "ratio": fig([a / c for a, c in zip(s3, lru)]),
                             "s3_hot": fig(hot[("s3fifo", b)]), "lru_hot": fig(hot[("lru", b)])}
    res["infinite"] = fig(per[("infinite", 0)])
    log("evict: " + ", ".join("%d MiB s3fifo %.3f lru %.3f" % (b, med(per[("s3fifo", b)]),
                                                                 med(per[("lru", b)]))
                              for b in EVICT_BUDGETS))
    return res


# ----------------------------------------------------------------------------- 3, 4, 7: nodes

PEER_PORT = 5001


def netns_mod():
    import netns  # tests/integration/netns.py (imported late: it needs root and ip)
    return netns


def new_net(work, name):
    netns = netns_mod()
    why = netns.available()
    if why:
        raise RuntimeError("network namespaces unavailable: %s" % why)
    return netns.Net(os.path.join(work, name))


def net_node(net, build, host, reg, peers, name, extra=()):
    """A release p2pblobsd on HOST (its own network namespace) knowing PEERS (hosts, itself
    among them, as one ConfigMap for all nodes), budget 1G, log level notice. Peer timeouts are
    the daemon's defaults: what an operator runs."""
    netns = netns_mod()
    args = ["--advertise-address", host.ip, "--cache-budget", "1G"]
    if peers:
        args += ["--peers", ",".join("%s:%d" % (h.ip, PEER_PORT) for h in peers)]
    d = netns.NetDaemon(build, os.path.join(net.workdir, name), host, registries=[reg],
                        log_level=os.environ.get("BENCH_NODE_LOG", "notice"), extra_args=args + list(extra))
    net.daemons.append(d)  # net.teardown() kills it whatever happens
    d.start()
    return d


def net_dispose(net, d):
    try:
        d.cleanup()
    finally:
        if d in net.daemons:
            net.daemons.remove(d)
        shutil.rmtree(d.workdir, ignore_errors=True)


def wait_peers_up(nodes, others=None, timeout=30):
    for d in nodes:
        want = [o.peer_id for o in (others or nodes) if o is not d]

        def ok(d=d, want=want):
            ps = {p.get("id"): p.get("state") for p in d.peers()}
            return all(ps.get(w) == "up" for w in want)
        harness.wait_until(ok, timeout, interval=0.2, what="%s to see its peers up" % d.host.name)


def wait_announced(net, nodes, holder, digest, size, timeout=40):
    """Until the directory of every node of NODES (GET /p2p/v1/locate, peer/wire.h) lists
    HOLDER with every chunk of DIGEST; returns the seconds waited, or None after TIMEOUT.
    With 2 nodes every node is a home of every blob (the daemon's default is 3 homes), so
    this is "B knows that A holds it". A restarted home learns what others hold from their
    next full refresh (every location-ttl / 3 = 20 s by default); until then a reader on it
    goes to the origin, which is not the steady state items 3 and 7 measure."""
    nchunks = (size + MiB - 1) // MiB
    t0 = time.monotonic()

    def lists(d):
        try:
            st, _h, body = net.http(d.host.ip, PEER_PORT, "GET", "/p2p/v1/locate/" + digest,
                                    timeout=2)
            if st != 200:
                return False
            for h in json.loads(body).get("holders", []):
                if h.get("node") == holder.peer_id and \
                        sum(e - s for s, e in h.get("present") or []) >= nchunks:
                    return True
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        return False
    while time.monotonic() - t0 < timeout:
        if all(lists(d) for d in nodes):
            return time.monotonic() - t0
        time.sleep(0.2)
    log("warning: %s's holding of %s not in every directory after %d s"
        % (holder.host.name, digest[:19], timeout))
    return None


def wait_verified(d, n=1, timeout=120):
    harness.wait_until(lambda: d.stat()["blobs_verified"] >= n, timeout, what="verification")


def fetched(d):
    f = d.stat()["fetched"]
    return f["origin_bytes"], f["peer_bytes"]


# ----------------------------------------------------------------------------- 3 peer

def bench_peer(ctx):
    work, build, tools, reps = ctx["work"], ctx["build"], ctx["tools"], ctx["reps"]
    size = 512 * MiB
    repo = "bench/peer"
    net = new_net(work, "peer-net")
    res = {"mount_mbs": [], "curl_mbs": [], "mount_ttfb": [], "curl_ttfb": [], "origin": [],
           "peer_x": [], "announce": [], "cpu": [], "cpu_a": []}
    try:
        s = net.add_subnet()
        reg = net.registry(net.add_host("reg", s))
        ha, hb = net.add_host("a", s), net.add_host("b", s)
        log("peer: pushing a 512 MiB blob")
        digest = make_blob(reg, work, repo, size, 14)
        a = net_node(net, build, ha, reg, [ha, hb], "peer-a")
        a.add(reg.ref(repo, digest))
        log("peer: node A reads the blob from the registry")
        r = readbench(tools, "seq", a.blob_path(digest), MiB)
        assert int(r["bytes"]) == size, r
        wait_verified(a)
        url = "http://%s:%d/v2/%s/blobs/%s" % (ha.ip, PEER_PORT, repo, digest)
        for i in range(reps):
            order = ("mount", "curl") if i % 2 == 0 else ("curl", "mount")
            hashes = ""
            for side in order:
                if side == "curl":
                    out = hb.run(["curl", "-sS", "-o", "/dev/null", "-w",
                                  "ttfb=%{time_starttransfer} seconds=%{time_total} "
                                  "bytes=%{size_download}", url], check=True, timeout=300).stdout
                    r = kv(out)
                    assert int(r["bytes"]) == size, out
                    res["curl_mbs"].append(size / r["seconds"] / 1e6)
                    res["curl_ttfb"].append(r["ttfb"])
                    continue
                b = net_node(net, build, hb, reg, [ha, hb], "peer-b-%d" % i)
                try:
                    wait_peers_up([a, b])
                    res["announce"].append(wait_announced(net, [a, b], a, digest, size))
                    b.add(reg.ref(repo, digest))
                    mark = reg.mark()
                    c0, ca0 = cpu_seconds(b), cpu_seconds(a)
                    r = readbench(tools, "seq", b.blob_path(digest), MiB)
                    assert int(r["bytes"]) == size, r
                    res["cpu"].append(per_gib(cpu_seconds(b) - c0, size))
                    res["cpu_a"].append(per_gib(cpu_seconds(a) - ca0, size))
                    res["mount_mbs"].append(size / r["seconds"] / 1e6)
                    res["mount_ttfb"].append(r["ttfb"])
                    res["origin"].append(reg.bytes_served(digest, since=mark))
                    res["peer_x"].append(fetched(b)[1] / size)
                    # B's verification: chunks passed by the chain step its source checked
                    # (linked: one hash in all), hashed again, or hashed as they landed.
                    v = b.stat().get("verify")
                    hashes = (" B's verification: %d linked, %d hashed, %d hashed on landing"
                              % (v["frontier_linked_chunks"], v["frontier_hashed_chunks"],
                                 v["landing_hashed_chunks"]) if v else "")
                finally:
                    net_dispose(net, b)
            log("peer run %d: mount %.0f MB/s ttfb %.1f ms, curl %.0f MB/s ttfb %.1f ms; "
                "registry bytes during B's read %d;%s"
                % (i + 1, res["mount_mbs"][-1], res["mount_ttfb"][-1] * 1e3,
                   res["curl_mbs"][-1], res["curl_ttfb"][-1] * 1e3, res["origin"][-1], hashes))
        # First byte of uncached chunks from the peer: a fresh B, LAT_READS random 4 KiB reads
        # each in a chunk of its own; baseline: the same kind of reads as Range GETs to A's
        # peer server from B's namespace.
        b = net_node(net, build, hb, reg, [ha, hb], "peer-b-lat")
        try:
            wait_peers_up([a, b])
            wait_announced(net, [a, b], a, digest, size)
            b.add(reg.ref(repo, digest))
            mark = reg.mark()
            lat = mount_ttfb(tools, b.blob_path(digest), 78)
            lat_registry = reg.bytes_served(digest, since=mark)
        finally:
            net_dispose(net, b)
        base = hb.call(range_ttfb, ha.ip, PEER_PORT, "/v2/%s/blobs/%s" % (repo, digest),
                       lat_offsets(size, LAT_READS, 78))
        log("peer first byte of %d uncached 4 KiB reads: p50 %.2f ms p99 %.2f ms (A's peer "
            "server, Range GET: p50 %.2f ms p99 %.2f ms); registry bytes %d"
            % (LAT_READS, lat["p50"] * 1e3, lat["p99"] * 1e3, base["p50"] * 1e3,
               base["p99"] * 1e3, lat_registry))
    finally:
        net.teardown()
    return {"mount_mbs": fig(res["mount_mbs"]), "curl_mbs": fig(res["curl_mbs"]),
            "cpu": fig(res["cpu"]), "cpu_a": fig(res["cpu_a"]), "lat": lat, "lat_base": base,
            "lat_registry_bytes": lat_registry,
            "ratio": fig([m / c for m, c in zip(res["mount_mbs"], res["curl_mbs"])]),
            "mount_ttfb": fig(res["mount_ttfb"]), "curl_ttfb": fig(res["curl_ttfb"]),
            "ttfb_ratio": fig([m / c for m, c in zip(res["mount_ttfb"], res["curl_ttfb"])]),
            "origin": fig(res["origin"]), "peer_x": fig(res["peer_x"]),
            "announce": res["announce"]}


# ----------------------------------------------------------------------------- 4 swarm

SWARM_SIZES = (2, 4, 8)


def timed_reads(tools, paths):
    """Start one `readbench seq` per path at the same moment; seconds from the common start
    until each one exits (the time its node took), and what each reported."""
    t0 = time.monotonic()
    procs = [subprocess.Popen([os.path.join(tools, "readbench"), "seq", p, str(MiB)],
                              stdout=subprocess.PIPE, text=True) for p in paths]
    done = [None] * len(procs)
    outs = [None] * len(procs)

    def wait(j):
        outs[j] = procs[j].communicate()[0]
        done[j] = time.monotonic() - t0
    ths = [threading.Thread(target=wait, args=(j,)) for j in range(len(procs))]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o
    return done, [kv(o) for o in outs]


def bench_swarm(ctx):
    work, build, tools, reps = ctx["work"], ctx["build"], ctx["tools"], ctx["swarm_reps"]
    sizes = [n for n in SWARM_SIZES if n <= ctx["swarm_max"]]
    size = 512 * MiB
    repo = "bench/swarm"
    net = new_net(work, "swarm-net")
    runs = []  # per rep: {N: {...}}
    try:
        s = net.add_subnet()
        reg = net.registry(net.add_host("reg", s))
        hosts = [net.add_host("n%d" % j, s) for j in range(max(sizes))]
        log("swarm: pushing a 512 MiB blob")
        digest = make_blob(reg, work, repo, size, 15)
        ref = reg.ref(repo, digest)
        for i in range(reps):
            order = [1] + sizes if i % 2 == 0 else list(reversed(sizes)) + [1]
            run = {}
            for n in order:
                warm_registry_file(reg, digest)
                nodes = []
                try:
                    for j in range(n):
                        nodes.append(net_node(net, build, hosts[j], reg,
                                              hosts[:n] if n > 1 else None,
                                              "swarm-%d-%d-%d" % (i, n, j)))
                    if n > 1:
                        wait_peers_up(nodes)
                    for d in nodes:
                        d.add(ref)
                    mark = reg.mark()
                    c0 = [cpu_seconds(d) for d in nodes]
                    times, outs = timed_reads(tools, [d.blob_path(digest) for d in nodes])
                    cpu = sum(cpu_seconds(d) for d in nodes) - sum(c0)
                    for o in outs:
                        assert int(o["bytes"]) == size, o
                    served = reg.bytes_served(digest, since=mark)
                    gets = reg.blob_get_count(digest, since=mark)
                    per = [fetched(d) for d in nodes]
                    run[n] = {"times": times, "registry_x": served / size, "gets": gets,
                              "cpu": per_gib(cpu, n * size),
                              "origin_x": [o / size for o, _p in per],
                              "peer_x": [p / size for _o, p in per]}
                    log("swarm run %d, %d node(s): slowest %.1f s, fastest %.1f s, registry "
                        "%.2fx the blob in %d GETs; per node origin/peer MiB %s"
                        % (i + 1, n, max(times), min(times), served / size, gets,
                           " ".join("%d/%d" % (o // MiB, p // MiB) for o, p in per)))
                finally:
                    for d in nodes:
                        net_dispose(net, d)
            runs.append(run)
    finally:
        net.teardown()
    out = {"single": fig([max(r[1]["times"]) for r in runs]), "sizes": sizes, "n": {},
           "single_cpu": fig([r[1]["cpu"] for r in runs])}
    for n in sizes:
        out["n"][n] = {
            "slowest": fig([max(r[n]["times"]) for r in runs]),
            "fastest": fig([min(r[n]["times"]) for r in runs]),
            "slow_ratio": fig([max(r[n]["times"]) / max(r[1]["times"]) for r in runs]),
            "registry_x": fig([r[n]["registry_x"] for r in runs]),
            "gets": fig([r[n]["gets"] for r in runs]),
            "agg_mbs": fig([n * size / max(r[n]["times"]) / 1e6 for r in runs]),
            "max_origin_x": fig([max(r[n]["origin_x"]) for r in runs]),
            "cpu": fig([r[n]["cpu"] for r in runs]),
        }
    out["single_registry_x"] = fig([r[1]["registry_x"] for r in runs])
    return out


# ----------------------------------------------------------------------------- 7 containerd

class FileBlob:
    """A blob on disk that ctrd.push_image can take in place of bytes (it needs len())."""

    def __init__(self, path, digest):
        self.path, self.digest, self.size = path, digest, os.path.getsize(path)

    def __len__(self):
        return self.size


class StreamingPusher:
    """ctrd.push_image's registry: FileBlobs are streamed from disk, the rest as usual."""

    def __init__(self, reg):
        self.reg = reg

    def push_blob(self, repo, data):
        if isinstance(data, FileBlob):
            return push_file(self.reg, repo, data.path, data.digest)
        return self.reg.push_blob(repo, data)

    def push_manifest(self, *a, **kw):
        return self.reg.push_manifest(*a, **kw)


class _HashingWriter:
    def __init__(self, out):
        self.out, self.h = out, hashlib.sha256()

    def write(self, b):
        self.h.update(b)
        self.out.write(b)
        return len(b)


def big_layer(path, size, seed):
    """A gzip'ed tar layer (gzip -1 -n, deterministic) of /bin/busybox and data/random.bin
    (SIZE bytes of AES-CTR keystream, incompressible). Returns (FileBlob, diff_id)."""
    import ctrd
    import tarfile
    with open(path, "wb") as out:
        gz = subprocess.Popen(["gzip", "-1", "-n", "-c"], stdin=subprocess.PIPE, stdout=out)
        hw = _HashingWriter(gz.stdin)
        with tarfile.open(fileobj=hw, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            for d in ("bin", "data"):
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                tf.addfile(ti)
            with open(ctrd.BUSYBOX, "rb") as f:
                ti = tarfile.TarInfo("bin/busybox")
                ti.size, ti.mode, ti.mtime = os.fstat(f.fileno()).st_size, 0o755, 0
                tf.addfile(ti, f)
            ks = keystream(seed)
            ti = tarfile.TarInfo("data/random.bin")
            ti.size, ti.mode, ti.mtime = size, 0o644, 0
            tf.addfile(ti, ks.stdout)
            ks.kill()
            ks.wait()
        gz.stdin.close()
        assert gz.wait() == 0
    digest = "sha256:" + sh(["sha256sum", path]).split()[0]
    return FileBlob(path, digest), "sha256:" + hw.h.hexdigest()


def bench_containerd(ctx):
    import ctrd
    work, build, reps = ctx["work"], ctx["build"], ctx["ctrd_reps"]
    why = ctrd.available()
    if why:
        raise RuntimeError("containerd unavailable: %s" % why)
    size = 512 * MiB
    repo = "bench/ctrd"
    net = new_net(work, "ctrd-net")
    ctrds = []

    def containerd(host, name):
        # nsenter --net, not `ip netns exec`: that one mounts a fresh /sys, hiding the cgroup
        # mounts runc needs (as in tests/integration/test_containerd.py).
        c = ctrd.Containerd(os.path.join(work, name), prefix=["nsenter", "--net=" + host.nspath])
        ctrds.append(c)
        return c.start()

    def drop(c):
        c.stop()
        ctrds.remove(c)
        shutil.rmtree(c.workdir, ignore_errors=True)

    def pull_run(c, hosts_dir, cid):
        mark = reg.mark()
        r, t_pull = c.pull(ref, hosts_dir, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        t0 = time.monotonic()
        rr = c.run(ref, cid, "/bin/busybox", "true", timeout=120)
        t_run = time.monotonic() - t0
        assert rr.returncode == 0, rr.stdout + rr.stderr
        reqs = reg.requests()[mark:]
        layer = sum(q.written for q in reqs if q.method == "GET" and q.path.endswith(
            "/blobs/" + img["layers"][0]))
        total = sum(q.written for q in reqs if q.method == "GET")
        return {"pull": t_pull, "run": t_run, "total": t_pull + t_run, "layer_bytes": layer,
                "registry_bytes": total, "requests": len(reqs)}

    res = {"direct": [], "mirror": [], "announce": []}
    try:
        s = net.add_subnet()
        reg = net.registry(net.add_host("reg", s))
        ha, hb = net.add_host("a", s), net.add_host("b", s)
        log("containerd: building a 512 MiB layer (busybox + 512 MiB of random data, gzip -1)")
        layer, diff = big_layer(os.path.join(work, "layer.tar.gz"), size, 16)
        img = ctrd.push_image(StreamingPusher(reg), repo, "v1", [(layer, diff)])
        os.unlink(layer.path)
        ref = "%s/%s:v1" % (reg.hostport, repo)
        blobctl = os.path.join(build, "blobctl")
        hosts_mirror = ctrd.write_hosts(blobctl, os.path.join(work, "hosts-mirror"),
                                        reg.hostport, "127.0.0.1:5000")
        hosts_direct = os.path.join(work, "hosts-direct")
        os.makedirs(os.path.join(hosts_direct, reg.hostport))
        with open(os.path.join(hosts_direct, reg.hostport, "hosts.toml"), "w") as f:
            # (containerd 1.6 refuses a hosts.toml with no [host] table: "invalid host tree")
            f.write('server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", '
                    '"resolve"]\n' % (reg.hostport, reg.hostport))
        mirror = ["--mirror-listen", "127.0.0.1:5000"]
        a = net_node(net, build, ha, reg, [ha, hb], "ctrd-node-a", mirror)
        log("containerd: node A pulls the image through its mirror (so that A holds it)")
        ca = containerd(ha, "ctrd-a")
        first = pull_run(ca, hosts_mirror, "bench-a")
        drop(ca)
        wait_verified(a)
        res["a_first"] = first
        for i in range(reps):
            order = ("direct", "mirror") if i % 2 == 0 else ("mirror", "direct")
            for side in order:
                b = None
                try:
                    if side == "mirror":
                        b = net_node(net, build, hb, reg, [ha, hb], "ctrd-node-b-%d" % i, mirror)
                        wait_peers_up([a, b])
                        res["announce"].append(wait_announced(net, [a, b], a, img["layers"][0],
                                                              img["layer_bytes"]))
                    c = containerd(hb, "ctrd-b-%s-%d" % (side, i))
                    try:
                        c0 = cpu_seconds(b) if b is not None else 0
                        r = pull_run(c, hosts_mirror if side == "mirror" else hosts_direct,
                                     "bench-%s-%d" % (side, i))
                        if b is not None:
                            r["b_origin"], r["b_peer"] = fetched(b)
                            r["b_cpu"] = per_gib(cpu_seconds(b) - c0, img["layer_bytes"])
                    finally:
                        drop(c)
                finally:
                    if b is not None:
                        net_dispose(net, b)
                res[side].append(r)
            d, m = res["direct"][-1], res["mirror"][-1]
            log("containerd run %d: direct pull %.1f s + run %.1f s, registry %d MiB; mirror "
                "pull %.1f s + run %.1f s, registry %d MiB (layer %d)"
                % (i + 1, d["pull"], d["run"], d["registry_bytes"] // MiB, m["pull"], m["run"],
                   m["registry_bytes"] // MiB, m["layer_bytes"]))
    finally:
        for c in list(ctrds):
            try:
                drop(c)
            except Exception as e:  # noqa: BLE001  (teardown goes on)
                log("warning: containerd stop:", e)
        net.teardown()
    out = {"layer_size": img["layer_bytes"], "a_first": res["a_first"],
           "announce": res["announce"]}
    for side in ("direct", "mirror"):
        for k in ("pull", "run", "total", "layer_bytes", "registry_bytes"):
            out[side + "_" + k] = fig([r[k] for r in res[side]])
    out["mirror_b_peer"] = fig([r["b_peer"] for r in res["mirror"]])
    out["mirror_b_origin"] = fig([r["b_origin"] for r in res["mirror"]])
    out["mirror_b_cpu"] = fig([r["b_cpu"] for r in res["mirror"]])
    out["ratio"] = fig([m["total"] / d["total"] for m, d in zip(res["mirror"], res["direct"])])
    out["pull_ratio"] = fig([m["pull"] / d["pull"] for m, d in zip(res["mirror"], res["direct"])])
    return out


# ----------------------------------------------------------------------------- report

def mm(f, fmt="%.0f", scale=1.0):
    return (fmt + " [" + fmt + "–" + fmt + "]") % (f["median"] * scale, f["min"] * scale,
                                                    f["max"] * scale)


def cpu_cell(f):
    """The CPU column: the daemon's user + system seconds per GiB it served, median [min–max]."""
    return mm(f, "%.2f") if f and f.get("n") else ""


def row(*cols, target="", cpu=None):
    """A row with the issue's target for its ratio (issue 15) and the daemon's CPU per GiB."""
    return cols + (target, cpu_cell(cpu))


def ms_pair(q):
    return "%.2f / %.2f" % (q["p50"] * 1e3, q["p99"] * 1e3)


def rows_for(res, cmd):
    """(item, measurement, p2pblobs, baseline, ratio, runs, command, target, CPU s/GiB) rows."""
    rows = []
    c = res.get("cached")
    if c:
        rows.append(row("1 cached", "sequential 1 MiB reads, 1 GiB blob, cache warm, page cache "
                        "dropped (MB/s)", mm(c["seq_mount"]), mm(c["seq_store"]) + " store file",
                        mm(c["seq_ratio"], "%.2f"), c["seq_ratio"]["n"], cmd("cached"),
                        target="≥ 0.9", cpu=c.get("seq_cpu")))
        rows.append(("1 cached", "  diagnostic: the same vs the store file read without "
                     "readahead (POSIX_FADV_RANDOM, as cache/store.c reads it) (MB/s)",
                     mm(c["seq_mount"]), mm(c["seq_store_nora"]) + " store file, no readahead",
                     mm(c["seq_ratio_nora"], "%.2f"), c["seq_ratio_nora"]["n"], cmd("cached")))
        rows.append(row("1 cached", "random 4 KiB reads (%d per run), same blob (reads/s)"
                        % c["nrand"], mm(c["rand_mount"]), mm(c["rand_store"]) + " store file",
                        mm(c["rand_ratio"], "%.2f"), c["rand_ratio"]["n"], cmd("cached"),
                        target="≥ 0.9", cpu=c.get("rand_cpu")))
        if c.get("rand_store_cpu"):
            # Most of a random read's CPU is the disk read itself (on this VM, the virtio
            # notify), which varies from machine to machine: the reader's own CPU for the
            # same reads done on the store file is the floor the daemon's figure compares to.
            rows.append(("1 cached", "  diagnostic: CPU s/GiB of the same random reads, the "
                         "daemon's (all threads) vs the reader's own reading the store file "
                         "(readbench user + system)", mm(c["rand_cpu"], "%.2f"),
                         mm(c["rand_store_cpu"], "%.2f") + " direct reader",
                         mm(c["rand_cpu_ratio"], "%.2f"), c["rand_cpu_ratio"]["n"],
                         cmd("cached")))
    c = res.get("cold")
    if c:
        rows.append(row("2 cold", "512 MiB blob, cold cache, from the origin (MB/s)",
                        mm(c["mount_mbs"]), mm(c["curl_mbs"]) + " curl to /dev/null",
                        mm(c["ratio"], "%.2f"), c["ratio"]["n"], cmd("cold"), target="≥ 0.4",
                        cpu=c.get("cpu")))
        if c.get("pipe_mbs"):
            rows.append(row("2 cold", "  the same vs the pipeline standard tools give (MB/s)",
                            mm(c["mount_mbs"]), mm(c["pipe_mbs"]) + " `curl URL | tee file | "
                            "sha256sum`", mm(c["pipe_ratio"], "%.2f"), c["pipe_ratio"]["n"],
                            cmd("cold"), target="≥ 2.0", cpu=c.get("cpu")))
        rows.append(row("2 cold", "time to first byte (ms; lower is better)",
                        mm(c["mount_ttfb"], "%.1f", 1e3), mm(c["curl_ttfb"], "%.1f", 1e3) +
                        " curl", mm(c["ttfb_ratio"], "%.1f"), c["ttfb_ratio"]["n"], cmd("cold")))
        if c.get("lat"):
            rows.append(row("2 cold", "  first byte of %d random 4 KiB reads, each of an "
                            "uncached chunk: p50 / p99 (ms; lower is better)" % LAT_READS,
                            ms_pair(c["lat"]), ms_pair(c["lat_base"]) + " Range GETs to the "
                            "registry (one keep-alive connection)",
                            "%.1f" % (c["lat"]["p50"] / c["lat_base"]["p50"]), 1, cmd("cold")))
    c = res.get("peer")
    if c and "error" in c:
        rows.append(("3 peer", "cold reads from a peer vs curl from the peer",
                     "not measured in this run: " + c["error"], "", "", 0, cmd("peer")))
    elif c:
        rows.append(row("3 peer", "512 MiB blob, cold cache on node B, which peer A holds "
                        "(MB/s)", mm(c["mount_mbs"]), mm(c["curl_mbs"]) + " curl from A's peer "
                        "server, in B's namespace", mm(c["ratio"], "%.2f"), c["ratio"]["n"],
                        cmd("peer"), target="≥ 0.6", cpu=c.get("cpu")))
        rows.append(row("3 peer", "time to first byte (ms; lower is better)",
                        mm(c["mount_ttfb"], "%.1f", 1e3),
                        mm(c["curl_ttfb"], "%.1f", 1e3) + " curl", mm(c["ttfb_ratio"], "%.1f"),
                        c["ttfb_ratio"]["n"], cmd("peer")))
        if c.get("lat"):
            rows.append(row("3 peer", "  first byte of %d random 4 KiB reads, each of an "
                            "uncached chunk: p50 / p99 (ms; lower is better)" % LAT_READS,
                            ms_pair(c["lat"]), ms_pair(c["lat_base"]) + " Range GETs to A's "
                            "peer server from B (one keep-alive connection)",
                            "%.1f" % (c["lat"]["p50"] / c["lat_base"]["p50"]), 1, cmd("peer"),
                            target="p50 ≤ 2 ms"))
    c = res.get("swarm")
    if c and "error" in c:
        rows.append(("4 swarm", "swarm of 2/4/8 nodes: registry bytes / blob, slowest / single "
                     "node", "not measured in this run: " + c["error"], "", "", 0,
                     cmd("swarm")))
    elif c:
        for n in c["sizes"]:
            e = c["n"][n]
            rows.append(("4 swarm", "%d nodes read one 512 MiB blob at once: registry bytes / "
                         "blob size (lower is better)" % n, mm(e["registry_x"], "%.2f"),
                         "%d.00 (%d nodes without peers; one node alone: %s)"
                         % (n, n, mm(c["single_registry_x"], "%.2f")),
                         mm(e["registry_x"], "%.2f"), e["registry_x"]["n"], cmd("swarm")))
            rows.append(row("4 swarm", "  %d nodes: slowest node's read (s; lower is better)"
                            % n, mm(e["slowest"], "%.1f"),
                            mm(c["single"], "%.1f") + " one node alone, from the registry",
                            mm(e["slow_ratio"], "%.2f"), e["slow_ratio"]["n"], cmd("swarm"),
                            target="≤ 3" if n == 8 else "", cpu=e.get("cpu")))
    c = res.get("memory")
    if c:
        rows.append(row("5 memory", "stream 2 GiB through a 256 MiB budget: peak cgroup working "
                        "set (MiB; lower is better)", mm(c["ws"], "%.0f", 1 / MiB),
                        mm(c["curl_ws"], "%.0f", 1 / MiB) + " curl -o file",
                        mm(c["ws_ratio"], "%.3f"), c["ws_ratio"]["n"], cmd("memory"),
                        target="≤ 64 MiB, no worse than before"))
        rows.append(("5 memory", "  peak cgroup usage, raw (MiB; what memory.max/MemoryMax= "
                     "act on)", mm(c["usage"], "%.0f", 1 / MiB),
                     mm(c["curl_usage"], "%.0f", 1 / MiB) + " curl -o file",
                     mm(c["usage_ratio"], "%.3f"), c["usage_ratio"]["n"], cmd("memory")))
        rows.append(("5 memory", "  peak daemon RSS (MiB)", mm(c["rss"], "%.1f", 1 / MiB), "",
                     "", c["rss"]["n"], cmd("memory")))
        rows.append(("5 memory", "  peak store page cache, fincore (MiB)",
                     mm(c["pagecache"], "%.1f", 1 / MiB),
                     mm(c["curl_pagecache"], "%.0f", 1 / MiB) + " curl's file", "",
                     c["pagecache"]["n"], cmd("memory")))
        rows.append(("5 memory", "  peak store on disk (MiB) / budget", mm(c["disk"], "%.0f",
                     1 / MiB), "256 budget", mm(c["disk_ratio"], "%.3f"), c["disk"]["n"],
                     cmd("memory")))
        rows.append(row("5 memory", "  stream throughput (MB/s)", mm(c["mbs"]),
                        mm(c["curl_mbs"]) + " curl -o file", mm(c["mbs_ratio"], "%.2f"),
                        c["mbs"]["n"], cmd("memory"), cpu=c.get("cpu")))
    c = res.get("evict")
    if c:
        for b in EVICT_BUDGETS:
            e = c["budgets"][b]
            rows.append(("6 evict", "hit ratio, hot set + full-layer scans, budget %d MiB"
                         " (infinite cache: %.3f)" % (b, c["infinite"]["median"]),
                         mm(e["s3"], "%.3f") + " S3-FIFO", mm(e["lru"], "%.3f") + " LRU",
                         mm(e["ratio"], "%.2f"), e["ratio"]["n"], cmd("evict")))
    c = res.get("containerd")
    if c and "error" in c:
        rows.append(("7 containerd", "ctr pull + run, 512 MiB layer, direct vs mirror with a "
                     "peer", "not measured in this run: " + c["error"], "", "", 0,
                     cmd("containerd")))
    elif c:
        rows.append(row("7 containerd", "`ctr image pull` + `ctr run … busybox true`, image with "
                        "a %d MiB layer, on node B (s; lower is better)"
                        % (c["layer_size"] // MiB),
                        mm(c["mirror_total"], "%.1f") + " B's mirror, peer A holds the image",
                        mm(c["direct_total"], "%.1f") + " containerd direct from the registry",
                        mm(c["ratio"], "%.2f"), c["ratio"]["n"], cmd("containerd"),
                        cpu=c.get("mirror_b_cpu")))
        rows.append(("7 containerd", "  `ctr image pull` alone (s)",
                     mm(c["mirror_pull"], "%.1f"), mm(c["direct_pull"], "%.1f") + " direct",
                     mm(c["pull_ratio"], "%.2f"), c["pull_ratio"]["n"], cmd("containerd")))
        rows.append(("7 containerd", "  registry bytes served during pull + run (MiB; lower "
                     "is better)", mm(c["mirror_registry_bytes"], "%.2f", 1 / MiB),
                     mm(c["direct_registry_bytes"], "%.0f", 1 / MiB) + " direct",
                     mm(fig([m / d for m, d in zip(c["mirror_registry_bytes"]["runs"],
                                                   c["direct_registry_bytes"]["runs"])]),
                        "%.4f"), c["ratio"]["n"], cmd("containerd")))
    rows += bench_lazy.rows_for(res, cmd)
    return [r if len(r) == 9 else r + ("", "") for r in rows]


NET_WHAT = ("The multi-node items run on the project's own test net "
            "(tests/integration/netns.py): one network namespace per node and one for the "
            "registry (Debian's `docker-registry`), all on one bridge (10.77.1.0/24, one "
            "subnet: every peer is on-link), veth pairs, no shaping. Every node is the release "
            "`p2pblobsd` started with `--advertise-address IP --peers IP:5001,...` (the same "
            "list on every node, itself included), `--cache-budget 1G` and the daemon's default "
            "peer timeouts; its mount lives in its own mount namespace and is read through "
            "`/proc/<pid>/root/<mountpoint>` by `bench/readbench seq` (1 MiB `read()`s). "
            "Registry bytes are counted from the registry's own log (body bytes written per "
            "GET), not from the daemons' statistics. All of this runs on the same 2 cores: "
            "every node, the registry, the kernel's bridge and the readers.")


def announce_note(waits):
    ok = [w for w in waits if w is not None]
    txt = ("Before each timed read on a fresh B, the bench waits (untimed) until both nodes' "
           "directories list A as holding every chunk (`GET /p2p/v1/locate/<digest>`): with "
           "2 nodes both are homes of every blob, and a restarted home learns what A holds "
           "only from A's next full refresh (every location-ttl / 3 = 20 s by default); a "
           "read started before that goes to the origin (seen while writing this bench: 476 "
           "of 513 MiB from the registry). This measures the steady state, B up and informed.")
    if ok:
        txt += " Waited %s s." % mm(fig(ok), "%.1f")
    if len(ok) < len(waits):
        txt += " **%d of %d waits timed out (40 s)**: those runs may include origin reads." % (
            len(waits) - len(ok), len(waits))
    return txt


def net_sections(res, items):
    L = []
    for item in items:
        c = res.get(item)
        title = {"peer": "## 3. Cold reads from a peer", "swarm": "## 4. Swarm",
                 "containerd": "## 7. containerd"}[item]
        L += [title, ""]
        if not c:
            L += ["Not measured in this run.", ""]
            continue
        if "error" in c:
            L += ["Not measured in this run: %s." % c["error"], ""]
            continue
        if item == "peer":
            L += [NET_WHAT, "",
                  "Node A (its own namespace) reads a 512 MiB blob from the registry through "
                  "its mount once (verified). Then, %d times, in alternating order: a fresh "
                  "node B (new state dir) on another namespace of the same subnet, `blobctl add` "
                  "(a HEAD to the registry, not timed), one sequential pass through B's mount, "
                  "timed from `open()`, time to first byte = `open()` until the first 4 KiB "
                  "`read()` returns; and the baseline, `curl -sS -o /dev/null "
                  "http://A:5001/v2/bench/peer/blobs/sha256:<hex>` (A's peer server, which "
                  "serves whole held blobs) run in B's namespace (`ip netns exec`; "
                  "`%%{time_starttransfer}`, `%%{time_total}`). Both sides read A's store file "
                  "through A's daemon, which drops the store's pages after each read, so "
                  "neither warms the other's page cache. Registry bytes served during B's reads: "
                  "%s; B's bytes from peers / blob: %s. %s"
                  % (c["ratio"]["n"], mm(c["origin"], "%.0f"), mm(c["peer_x"], "%.3f"),
                     announce_note(c["announce"])), ""]
            if c.get("lat"):
                L += ["First byte of uncached chunks from the peer: one more fresh B, informed "
                      "as above, then `bench/readbench lat` reads %d times 4 KiB at a random "
                      "offset, each in a chunk no other read touches, in random order; per "
                      "read, `pread()` call to return: p50 %.2f ms, p99 %.2f ms, max %.2f ms "
                      "(registry bytes during it: %d). Baseline: the same kind of reads as 4 KiB "
                      "Range GETs to A's peer server from B's namespace over one keep-alive "
                      "connection (Python's http.client, request sent to first body byte): "
                      "p50 %.2f ms, p99 %.2f ms. Daemon CPU per GiB during B's sequential "
                      "reads: B %s, A (serving) %s. One pass each."
                      % (LAT_READS, c["lat"]["p50"] * 1e3, c["lat"]["p99"] * 1e3,
                         c["lat"]["max"] * 1e3, c["lat_registry_bytes"],
                         c["lat_base"]["p50"] * 1e3, c["lat_base"]["p99"] * 1e3,
                         cpu_cell(c["cpu"]), cpu_cell(c["cpu_a"])), ""]
        elif item == "swarm":
            L += [NET_WHAT, "",
                  "Each run, for one node alone (no peers) and then swarms of %s nodes "
                  "(reverse order on alternate runs): fresh daemons (new state dirs) on hosts "
                  "n0…n<N-1>, each listing the N swarm members as peers; wait until every node "
                  "sees every other up; `blobctl add` on each (HEADs, not timed); then one "
                  "`bench/readbench seq` per node started at the same moment. A node's time = "
                  "from that common start until its reader exits; the figure is the slowest "
                  "node's. The registry's blob file is read into the page cache before each "
                  "swarm. %d runs; blob 512 MiB." % (", ".join(map(str, c["sizes"])),
                                                    c["single"]["n"]), "",
                  "| nodes | registry bytes / blob | GETs of the blob | slowest node (s) | "
                  "fastest node (s) | slowest / one node alone | most any node took from the "
                  "registry (× blob) | bytes read by all nodes / slowest time (MB/s) |",
                  "|---|---|---|---|---|---|---|---|",
                  "| 1 | %s | – | %s | – | 1 | %s | %s |"
                  % (mm(c["single_registry_x"], "%.2f"), mm(c["single"], "%.1f"),
                     mm(c["single_registry_x"], "%.2f"),
                     mm(fig([512 * MiB / t / 1e6 for t in c["single"]["runs"]])))]
            for n in c["sizes"]:
                e = c["n"][n]
                L.append("| %d | %s | %s | %s | %s | %s | %s | %s |"
                         % (n, mm(e["registry_x"], "%.2f"), mm(e["gets"]),
                            mm(e["slowest"], "%.1f"), mm(e["fastest"], "%.1f"),
                            mm(e["slow_ratio"], "%.2f"), mm(e["max_origin_x"], "%.2f"),
                            mm(e["agg_mbs"])))
            L.append("")
        elif item == "containerd":
            a = c["a_first"]
            L += [NET_WHAT, "",
                  "The image: one gzip'ed layer (`gzip -1 -n`, %d MiB: `/bin/busybox` from "
                  "Debian's busybox-static and `data/random.bin`, 512 MiB of AES-CTR keystream, "
                  "incompressible), an OCI config and manifest, pushed to the registry host. "
                  "Each node's containerd is Debian's containerd 1.6 with a root, state and "
                  "socket of its own (tests/integration/ctrd.py), run in the node's network "
                  "namespace (`nsenter --net`), overlayfs snapshotter. Node A pulls the image "
                  "through its own mirror first (`ctr image pull --hosts-dir`, hosts.toml from "
                  "`blobctl containerd-config`; %.1f s pull + %.1f s run, %.0f MiB from the "
                  "registry), so A's daemon holds the layer. Then, %d times, in alternating "
                  "order, on node B, each with a fresh containerd (empty content store): "
                  "**direct** — hosts.toml naming only the registry (`server = "
                  "\"http://REGISTRY\"`, no mirror), and **mirror** — a fresh B daemon "
                  "(`--mirror-listen 127.0.0.1:5000`, peers A and B) and the hosts.toml of "
                  "`blobctl containerd-config` (the mirror first, the registry as fallback). "
                  "Timed: `ctr image pull` (download, decompression, unpack into the "
                  "snapshotter) plus `ctr run --rm REF ID /bin/busybox true`. %s"
                  % (c["layer_size"] // MiB, a["pull"], a["run"], a["registry_bytes"] / MiB,
                     c["ratio"]["n"], announce_note(c["announce"])), "",
                  "| | direct | through B's mirror (peer A holds the image) |",
                  "|---|---|---|",
                  "| pull (s) | %s | %s |" % (mm(c["direct_pull"], "%.1f"),
                                            mm(c["mirror_pull"], "%.1f")),
                  "| run (s) | %s | %s |" % (mm(c["direct_run"], "%.2f"),
                                           mm(c["mirror_run"], "%.2f")),
                  "| pull + run (s) | %s | %s |" % (mm(c["direct_total"], "%.1f"),
                                                  mm(c["mirror_total"], "%.1f")),
                  "| registry bytes, all GETs (MiB) | %s | %s |"
                  % (mm(c["direct_registry_bytes"], "%.1f", 1 / MiB),
                     mm(c["mirror_registry_bytes"], "%.3f", 1 / MiB)),
                  "| registry bytes of the layer (MiB) | %s | %s |"
                  % (mm(c["direct_layer_bytes"], "%.1f", 1 / MiB),
                     mm(c["mirror_layer_bytes"], "%.1f", 1 / MiB)),
                  "| B's daemon: bytes from peers / from the origin (MiB) | – | %s / %s |"
                  % (mm(c["mirror_b_peer"], "%.0f", 1 / MiB),
                     mm(c["mirror_b_origin"], "%.1f", 1 / MiB)),
                  ""]
    return L


def render(res, mach, ctx, args):
    build_rel = os.path.relpath(args.build, os.path.join(HERE, ".."))
    full = "make bench"

    def cmd(item):
        return "`bench/run.sh %s --only %s`" % (os.path.abspath(args.build), item)

    rows = rows_for(res, cmd)
    nb = ctx["neighbours"]
    L = ["# p2pblobs benchmark results", ""]
    L.append("Produced by `%s` (bench/run.sh → bench/bench.py), %s, in %.1f minutes. "
             "Measurements only; nothing here is asserted by the tests."
             % (full, mach["date"], ctx["elapsed"] / 60))
    L.append("")
    L.append("- Machine: %s, %d cores, %.1f GiB RAM; %s; kernel %s; store and registry on %s."
             % (mach["cpu"], mach["cores"], mach["ram_gib"], mach["os"], mach["kernel"],
                mach["disk"]))
    L.append("- Build: release (`make BUILD=%s build`, -O2). Origin: Debian's `docker-registry` "
             "on 127.0.0.1, filesystem storage; its blob file is read into the page cache "
             "before each origin measurement, so origin figures measure the registry and "
             "loopback, not this disk. Only loopback traffic." % build_rel)
    if nb.busy:
        L.append("- **The run shared the machine**: other engineers' processes (%s) were "
                 "running in %d of %d samples (every 2 s); load average %.2f median, %.2f max "
                 "on 2 cores. Absolute figures are therefore noisy; the ratios pair each run "
                 "with its baseline back to back (alternating which goes first) and are the "
                 "figures to trust." % (", ".join(sorted(nb.seen)), nb.busy, nb.samples,
                                        med(nb.load), max(nb.load)))
    else:
        L.append("- No other builds or test runs were seen during the run (sampled every 2 s); "
                 "load average %.2f median, %.2f max." % (med(nb.load) if nb.load else 0,
                                                          max(nb.load) if nb.load else 0))
    L.append("- Each figure: median [min–max] over the runs given; ratio = p2pblobs / "
             "baseline, computed per run pair, then the median of those. Target: what issue 15 "
             "asks of the ratio (or of the figure itself). Daemon CPU: user + system seconds of "
             "the daemon process, all threads (`/proc/<pid>/stat` utime + stime, read before and "
             "after the timed pass), per GiB the pass read through it (for random reads, per GiB "
             "of 4 KiB reads; for the swarm, all nodes over all bytes; for containerd, node B "
             "over the layer).")
    L.append("")
    L.append("| item | measurement | p2pblobs | baseline | ratio | target (issue 15) | daemon "
             "CPU s/GiB | runs | repeat with |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |"
                 % (r[0], r[1], r[2], r[3], r[4], r[7] or "–", r[8] or "–", r[5] or "–",
                    r[6] or "–"))
    L.append("")
    L.append("Everything: `%s` (as root; this run took %.0f minutes). One item: the command in the "
             "last column (prints its rows, does not rewrite this file)." % (full, ctx["elapsed"] / 60))
    L.append("")
    c = res.get("cached")
    if c:
        met = c["seq_ratio"]["median"] >= 0.9
        L += ["## 1. Cached reads", "",
              "A daemon with a 2G budget reads the 1 GiB blob once through the mount (cache "
              "warm, blob verified; the store file has %.0f MiB allocated). Then, %d times, in "
              "alternating order: drop caches, read through the mount; drop caches, read the "
              "store file `<state-dir>/chunks/sha256/<hex>` directly; same for the random "
              "reads (`bench/readbench`, same offsets on both sides, `POSIX_FADV_RANDOM`)."
              % (c["store_alloc"] / MiB, c["seq_ratio"]["n"]),
              "",
              "Dropped before every single read pass: %s. Both sides therefore read from the "
              "disk: the mount because the kernel's FUSE page cache (the daemon opens blob "
              "files with keep_cache) was emptied, the store file because its pages were. "
              "Origin bytes fetched during the passes: %d (the cache answered everything)."
              % (DROP_WHAT, c["origin_bytes_during"]),
              "",
              "**Target ≥ 0.9 sequential: %s by the median** (median %.2f; %d of %d runs "
              "≥ 0.9; runs in order: %s). %s" % (
                  "met" if met else "NOT met", c["seq_ratio"]["median"],
                  sum(x >= 0.9 for x in c["seq_ratio"]["runs"]), c["seq_ratio"]["n"],
                  ", ".join("%.2f" % x for x in c["seq_ratio"]["runs"]),
                  "The store-file baseline itself varied %.1f× between runs: with the machine "
                  "this busy, treat the verdict as provisional." % (
                      c["seq_store"]["max"] / c["seq_store"]["min"])
                  if c["seq_store"]["max"] > 1.5 * c["seq_store"]["min"] else ""),
              "",
              "Diagnostic row: the daemon reads the store with `POSIX_FADV_RANDOM` and drops "
              "the pages after each read (cache/store.c), so each FUSE request (at most 1 MiB) "
              "is one synchronous read from disk with no readahead; the kernel's readahead of "
              "the FUSE file is what overlaps requests. Reading the store file the same way "
              "gives %s MB/s; the mount reaches %.2f of that. The rest of the gap to the "
              "plain store read is readahead on the store file plus the FUSE round trip."
              % (mm(c["seq_store_nora"]), c["seq_ratio_nora"]["median"]),
              ""]
    c = res.get("cold")
    if c:
        L += ["## 2. Cold reads from the origin", "",
              "Each run: a fresh daemon (new state dir, budget 1G), `blobctl add` (a HEAD, not "
              "timed), then one sequential pass of 1 MiB `read()`s through the mount, timed "
              "from `open()`; time to first byte = `open()` until the first 4 KiB `read()` "
              "returns. Baseline: `curl -sS -o /dev/null URL` of the same blob from the same "
              "registry (`%%{time_starttransfer}`, `%%{time_total}`). Origin bytes fetched by "
              "the daemon / blob size: %s. The daemon's time to first byte does not include "
              "the HEAD made by `blobctl add` (its connection to the registry may already be "
              "open); curl's includes its TCP connect and the registry's lookup of the blob."
              % mm(c["origin_x"], "%.3f"), ""]
        if c.get("pipe_mbs"):
            L += ["Second baseline, what standard tools take to end with the same verified "
                  "local copy: `curl -sS URL | tee FILE | sha256sum` (the file on the same disk "
                  "as the store, timed from start to exit, digest checked), %s MB/s. The three "
                  "sides run in turn, each first in one run of three." % mm(c["pipe_mbs"]), ""]
        if c.get("lat"):
            L += ["First byte of uncached chunks: one more fresh daemon, then `bench/readbench "
                  "lat` reads %d times 4 KiB at a random offset, each in a chunk no other read "
                  "touches, in random order (`POSIX_FADV_RANDOM`: no readahead); per read, "
                  "`pread()` call to return: p50 %.2f ms, p99 %.2f ms, max %.2f ms (origin bytes "
                  "%d). Baseline: the same kind of reads as 4 KiB Range GETs to the registry "
                  "over one keep-alive connection from Python's http.client (request sent to "
                  "first body byte): p50 %.2f ms, p99 %.2f ms. One pass each."
                  % (LAT_READS, c["lat"]["p50"] * 1e3, c["lat"]["p99"] * 1e3,
                     c["lat"]["max"] * 1e3, c["lat_origin_bytes"], c["lat_base"]["p50"] * 1e3,
                     c["lat_base"]["p99"] * 1e3), ""]
    L += net_sections(res, ("peer", "swarm"))
    c = res.get("memory")
    if c:
        L += ["## 5. Memory", "",
              "![memory over time](memory.png)", "",
              "The daemon runs in a memory cgroup of its own: %s, created for the run and "
              "removed afterwards. Working set = usage − inactive file pages, as the kubelet "
              "computes it (v1: `memory.usage_in_bytes − total_inactive_file`; v2: "
              "`memory.current − inactive_file`). Sampled every 0.5 s (%s samples per run): "
              "daemon RSS (`/proc/<pid>/status`), the cgroup's usage and working set, the "
              "store's page cache (`fincore` on every file under `<state-dir>/chunks/sha256/`; "
              "`blobctl stat --json` memory.store_page_cache_bytes peaked at %s MiB), and the "
              "store's allocated bytes on disk. The reader (`bench/readbench seq`, 1 MiB "
              "reads) runs outside that cgroup: the FUSE page cache of the mounted file is "
              "charged to the reader, as for a container reading the tree. No memory limit is "
              "set on the cgroup: this measures what the daemon holds, not what a limit "
              "squeezes it to. The daemon's own `blobctl stat` reported cgroup version %s."
              % (ctx.get("cgroup_desc", "?"), "/".join(str(n) for n in c["samples"]),
                 mm(c["blobctl_pc"], "%.1f", 1 / MiB), c["self_cgv"]), "",
              "Baseline: `curl -o FILE` of the same blob in a cgroup of its own, sampled the "
              "same way — what a mirror that streams layers through its own files does; its "
              "page cache is charged to it (raw usage peak %s MiB). Note how little of that "
              "the working set shows: pages written once sit on the inactive list, which the "
              "kubelet's formula leaves out; raw usage is what `memory.max`/`MemoryMax=` and "
              "the kernel's reclaim of the cgroup act on, and a reader that touches those pages "
              "again moves them to the active list, into the working set."
              % mm(c["curl_usage"], "%.0f", 1 / MiB), "",
              "The blob was verified at the end of every run: %s; origin bytes / blob: %s. "
              "The plot shows run %d (the median working-set peak)."
              % (all(v == 1 for v in c["verified"]), mm(c["origin_x"], "%.3f"),
                 c["plotted_run"]), ""]
    c = res.get("evict")
    if c:
        i0 = c["info"][0]
        L += ["## 6. Eviction", "",
              "`bench/evict_trace SEED` writes a deterministic trace (splitmix64; seeds %s) of "
              "1 MiB chunk references: a hot set of 8 layers (%.0f MiB for seed %s) read by "
              "\"container starts\" of 64 Zipf(0.9) references each, interleaved with "
              "full sequential reads of one-off layers of 64–768 MiB (about half of all "
              "references; %d references in all). `bench/evict_sim` replays it through "
              "`cache/policy.h` linked from `libp2pblobs-core.a` (S3-FIFO, driven as "
              "engine/residency.c drives it: touch on a hit, insert then evict to budget on a miss) "
              "and through a plain LRU in the driver, at budgets of 256, 512 and 1024 MiB "
              "(about ½×, 1× and 2× the hot set). Hit ratio over all references; every scan "
              "reference is a compulsory miss, so an infinite cache gets %s. Over hot-set "
              "references only:" % (", ".join(map(str, EVICT_SEEDS)),
                                    i0["hot_set_bytes"] / MiB, int(i0["seed"]),
                                    int(i0["refs"]), mm(c["infinite"], "%.3f")), ""]
        L.append("| budget | S3-FIFO hot hit ratio | LRU hot hit ratio |")
        L.append("|---|---|---|")
        for b in EVICT_BUDGETS:
            e = c["budgets"][b]
            L.append("| %d MiB | %s | %s |" % (b, mm(e["s3_hot"], "%.3f"),
                                              mm(e["lru_hot"], "%.3f")))
        L.append("")
    L += net_sections(res, ("containerd",))
    L += bench_lazy.sections(res)
    return "\n".join(L), rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--tools", help="where readbench, evict_trace, evict_sim are "
                    "(default BUILD/bench)")
    ap.add_argument("--out", help="write the report here (only when every item runs)")
    ap.add_argument("--only", action="append", choices=ITEMS)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--mem-reps", type=int, default=3)
    ap.add_argument("--swarm-reps", type=int, default=3)
    ap.add_argument("--swarm-max", type=int, default=8, help="largest swarm (2, 4 or 8 nodes)")
    ap.add_argument("--ctrd-reps", type=int, default=3)
    ap.add_argument("--lazy-reps", type=int, default=3, help="runs of the layer and start items")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (drop_caches, cgroups, FUSE mounts)")
    items = args.only or list(ITEMS)
    tools = args.tools or os.path.join(args.build, "bench")
    t0 = time.monotonic()
    nb = Neighbours()
    nb.th.start()
    work = tempfile.mkdtemp(prefix="p2pblobs-bench-", dir="/var/tmp")
    reg = harness.Registry(os.path.join(work, "registry"))
    ctx = {"reg": reg, "work": work, "build": os.path.abspath(args.build), "tools": tools,
           "reps": args.reps, "mem_reps": args.mem_reps, "neighbours": nb,
           "swarm_reps": args.swarm_reps, "swarm_max": args.swarm_max,
           "ctrd_reps": args.ctrd_reps, "lazy_reps": args.lazy_reps}
    mach = machine()
    res = {}
    try:
        if "evict" in items:
            res["evict"] = bench_evict(ctx)
        reg.start()
        if "cached" in items:
            res["cached"] = bench_cached(ctx)
        if "cold" in items:
            res["cold"] = bench_cold(ctx)
        if "memory" in items:
            res["memory"] = bench_memory(ctx)
        reg.stop()  # the items below run their own registry, on a host of their own net
        for item, fn in (("peer", bench_peer), ("swarm", bench_swarm),
                         ("containerd", bench_containerd), ("layer", bench_lazy.bench_layer),
                         ("start", bench_lazy.bench_start)):
            if item in items:
                try:
                    res[item] = fn(ctx)
                except Exception as e:  # noqa: BLE001  (reported in the table; others go on)
                    import traceback
                    traceback.print_exc()
                    res[item] = {"error": "%s: %s" % (type(e).__name__,
                                                      str(e).splitlines()[0][:200])}
    finally:
        reg.stop()
        nb.stop.set()
        shutil.rmtree(work, ignore_errors=True)
    ctx["elapsed"] = time.monotonic() - t0
    text, rows = render(res, mach, ctx, args)
    # the table, for the terminal
    cols = (0, 1, 2, 3, 4, 7, 8, 5)
    hdr = ("item", "measurement", "p2pblobs", "baseline", "ratio", "target", "CPU s/GiB", "runs")
    w = [max([len(str(r[c])) for r in rows] + [len(h)]) for c, h in zip(cols, hdr)]
    print()
    print("  ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
    for r in rows:
        print("  ".join(str(r[c] or "–").ljust(w[i]) for i, c in enumerate(cols)))
    print()
    if args.out and not args.only:
        with open(args.out, "w") as f:
            f.write(text)
        print("wrote %s (and bench/memory.png)" % args.out)
    if os.path.isdir(tools):  # the raw figures, every run, next to the tools
        with open(os.path.join(tools, "results.json"), "w") as f:
            json.dump(res, f, default=str, indent=1)


if __name__ == "__main__":
    bench_lazy.bind(sys.modules[__name__])
    main()
