"""Issue 3 (peers): several p2pblobsd nodes as separate hosts in network namespaces (netns.py),
a real docker-registry on a host of the net, a real dnsmasq for discovery.

One test per bullet of the issue's "Done when" list, plus the peer HTTP interface and
resolution by digest. Figures (registry bytes per N readers, read times, stalls) are printed:
run with -s to see them.
"""

import hashlib
import json
import os
import re
import threading
import time


import harness
import netns
import rdv
from harness import MiB

REPO = "p2pblobs/peers"
PEER_PORT = 5001
DNS_NAME = "nodes"


# --------------------------------------------------------------------------- helpers

def gen_big(seed, size):
    """SIZE deterministic bytes for SEED, any size (harness.gen_bytes stops short of 256 MiB:
    random.getrandbits takes at most 2**31 - 1 bits). Made of 64 MiB gen_bytes pieces."""
    piece = 64 * MiB
    return b"".join(harness.gen_bytes(seed * 1000 + i, min(piece, size - off))
                    for i, off in enumerate(range(0, size, piece)))


def node_flags(host, peers=None, dns=None, extra=()):
    """Peer flags for a node on HOST: static PEERS (NetDaemons or Hosts, self may be among
    them, as in one ConfigMap for all nodes) and/or discovery by DNS name."""
    a = ["--advertise-address", host.ip, "--peer-refresh", "1s",
         "--peer-connect-timeout", "250ms", "--peer-stall-timeout", "1s"]
    if peers:
        a += ["--peers", ",".join("%s:%d" % (p.ip if isinstance(p, netns.Host) else p.host.ip,
                                             PEER_PORT) for p in peers)]
    if dns:
        a += ["--peer-dns", dns.fqdn(DNS_NAME), "--peer-port", str(PEER_PORT)]
    return a + list(extra)


def start_nodes(net, build_dir, reg, hosts, static=True, dns=None, extra=()):
    """A daemon on every host of HOSTS, each knowing all of HOSTS (static) and/or the DNS."""
    return [net.daemon(build_dir, h, registries=[reg], resolver=dns,
                       extra_args=node_flags(h, peers=hosts if static else None, dns=dns,
                                             extra=extra))
            for h in hosts]


def wait_peers_up(nodes, others=None, timeout=15):
    """Every node of NODES lists every other node (or OTHERS) as up."""
    t0 = time.monotonic()
    for d in nodes:
        want = [o for o in (others or nodes) if o is not d]

        def ok(d=d, want=want):
            ps = {p.get("id"): p for p in d.peers()}
            return all(ps.get(o.peer_id, {}).get("state") == "up" for o in want)
        harness.wait_until(ok, timeout, interval=0.2,
                           what="%s to see %s up" % (d.host.name,
                                                     [o.host.name for o in want]))
    return time.monotonic() - t0


def wait_announced(net, nodes, holders, blob, timeout=20, headers=None):
    """Wait until the directory of NODES lists HOLDERS (a NetDaemon or a list) holding all of
    BLOB (Net.wait_announced); returns the seconds waited."""
    if not isinstance(holders, (list, tuple)):
        holders = [holders]
    return net.wait_announced(nodes, holders, blob.digest, timeout=timeout, headers=headers)


def dir_answer(net, d, blob):
    """D's directory answer for BLOB (GET /p2p/v1/locate) as (status, json or None)."""
    st, _h, body = net.http(d.host.ip, d.peer_port, "GET", "/p2p/v1/locate/" + blob.digest,
                            timeout=2)
    return st, (json.loads(body) if st == 200 else None)


def checkable_chunks(j, nchunks, verified=False):
    """The chunks a locate answer J lets a reader check: by a plain digest, or by a chain step
    (chain values i - 1 and i; chunk 0 starts from SHA-256's initial state and the last chunk
    ends at the blob digest, util/chain.h). VERIFIED: by verified values only. A node that
    read a blob in order announces chain values, plain digests only for chunks out of order."""
    def ranges(key):
        return {i for a, b in j.get(key) or [] for i in range(a, b)}
    if verified:
        plain, chain = ranges("verified"), ranges("chain_verified")
    else:
        plain = {d[0] for d in j.get("digests") or []}
        chain = {d[0] for d in j.get("chain") or []}
    return {i for i in range(nchunks)
            if i in plain or ((i == 0 or i - 1 in chain) and (i == nchunks - 1 or i in chain))}


def recorded_holders(net, home, blob):
    """Peer ids HOME records as holders of BLOB (not claimants)."""
    st, j = dir_answer(net, home, blob)
    if st != 200:
        return set()
    return {h["node"] for h in j.get("holders", []) if not h.get("fetching")}


class TimedRead:
    """Read PATH sequentially in 1 MiB reads on a thread, hashing; records each read's end
    time so the longest gap (the stall a reader saw) can be reported. ON_PROGRESS(n) is called
    after each read with the bytes read so far; PACE seconds are slept per read."""

    def __init__(self, path, pace=0.0, on_progress=None, name="reader", barrier=None):
        self.path = path
        self.barrier = barrier
        self.pace = pace
        self.on_progress = on_progress
        self.digest = None
        self.n = 0
        self.error = None
        self.max_gap = 0.0
        self.max_gap_at = 0
        self.elapsed = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self):
        h = hashlib.sha256()
        if self.barrier is not None:
            self.barrier.wait(60)
        t0 = last = time.monotonic()
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                while True:
                    b = os.read(fd, MiB)
                    now = time.monotonic()
                    if now - last > self.max_gap:
                        self.max_gap, self.max_gap_at = now - last, self.n
                    if not b:
                        break
                    h.update(b)
                    self.n += len(b)
                    if self.on_progress:
                        self.on_progress(self.n)
                    if self.pace:
                        time.sleep(self.pace)
                    last = time.monotonic()
            finally:
                os.close(fd)
            self.digest = "sha256:" + h.hexdigest()
        except Exception as e:  # reported by the test
            self.error = e
        self.elapsed = time.monotonic() - t0

    def start(self):
        self.thread.start()
        return self

    def join(self, timeout=180):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "reader of %s still running after %ss" % (
            self.path, timeout)
        assert self.error is None, "read of %s failed after %d bytes: %r" % (
            self.path, self.n, self.error)
        return self


def full_read(d, blob):
    t0 = time.monotonic()
    digest, n = harness.sha256_file(d.blob_path(blob.digest))
    dt = time.monotonic() - t0
    assert (digest, n) == (blob.digest, blob.size), \
        "%s read %d bytes with %s, want %d with %s" % (d.host.name, n, digest, blob.size,
                                                      blob.digest)
    return dt


def mbps(size, secs):
    return size / MiB / secs if secs else float("inf")


# --------------------------------------------------------------------------- the harness

def test_harness_three_nodes_origin_only(build_dir, net):
    """The harness itself, with today's daemon: three nodes on three hosts of one subnet, the
    registry on a fourth; each reads a blob from the registry through its own mount (inside
    its private mount namespace), sha256 right; the registry's log counts three full reads."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    b = harness.make_blob(reg, "h8", harness.gen_bytes(301, 8 * MiB + 4321), repo=REPO)
    nodes = [net.daemon(build_dir, net.add_host("n%d" % i, s), registries=[reg])
             for i in range(3)]
    mark = reg.mark()
    for d in nodes:
        # ip netns exec execs: the Popen pid is the daemon, and its mount is not ours.
        assert os.readlink("/proc/%d/exe" % d.proc.pid) == d.bin
        assert os.readlink("/proc/%d/ns/mnt" % d.proc.pid) != os.readlink("/proc/self/ns/mnt")
        assert harness.mount_count(d.mountpoint) == 0
        st, _h, _b = net.http(d.host.ip, 5001, "GET", "/healthz")
        assert st == 200
        assert d.add(b.ref) == (b.digest, b.size)
        full_read(d, b)
        assert d.stat()["fetched"]["origin_bytes"] >= b.size
    served = reg.bytes_served(b.digest, since=mark)
    gets = reg.blob_get_count(b.digest, since=mark)
    assert 3 * b.size <= served <= 3 * b.size + 3 * 8 * MiB, \
        "registry served %d bytes (%d GETs) for 3 full reads of %d" % (served, gets, b.size)


def test_harness_dns_and_silent_link(net):
    """dnsmasq answers from its records file and follows changes; a silent link drops packets
    without refusing anything (a connect times out, it is not refused)."""
    s = net.add_subnet()
    a, b = net.add_host("a", s), net.add_host("b", s)
    dns = net.dnsmasq(net.add_host("dns", s))
    b.set_resolver(dns.host.ip)
    dns.set_records(DNS_NAME, [a, b])
    out = b.run(["getent", "ahostsv4", dns.fqdn(DNS_NAME)], check=True).stdout
    assert {l.split()[0] for l in out.splitlines()} == {a.ip, b.ip}
    dns.remove(DNS_NAME, a)
    assert dns.query(DNS_NAME) == (0, [b.ip])
    assert dns.query("absent")[0] == 3   # NXDOMAIN, never forwarded

    a.popen(["python3", "-c",
             "import socket\ns=socket.socket()\ns.bind(('0.0.0.0',7000))\ns.listen()\n"
             "while True: s.accept()[0].close()"])
    net.wait_reachable(b, a, 7000)
    net.link_down(a)

    def connect():
        t0 = time.monotonic()
        try:
            import socket
            socket.create_connection((a.ip, 7000), timeout=1.0).close()
            return "connected", time.monotonic() - t0
        except OSError as e:
            return type(e).__name__, time.monotonic() - t0
    what, dt = b.call(connect)
    assert what in ("timeout", "TimeoutError"), (what, dt)
    assert dt >= 0.9
    net.link_up(a)
    net.wait_reachable(b, a, 7000)


# --------------------------------------------------------------------------- issue 3

def test_peer_http_ranges(build_dir, net):
    """GET /v2/<any>/blobs/sha256:<hex> with Range on a node: 206 with the right bytes for
    chunks it holds (also of a blob it holds only in part), 416 for chunks it lacks, 404 for
    a blob it does not know."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    b = harness.make_blob(reg, "r64", harness.gen_bytes(311, 64 * MiB), repo=REPO)
    hosts = [net.add_host("a", s)]
    (a,) = start_nodes(net, build_dir, reg, hosts)
    a.add(b.ref)
    off = 2 * MiB + 100
    assert harness.pread_exact(a.blob_path(b.digest), off, 1000) == b.data[off:off + 1000]
    # The read is answered from the landed bytes, before they are written: the chunk is held
    # (present) a moment later.
    harness.wait_until(lambda: {e["digest"]: e for e in a.ls()}[b.digest]["chunks_present"] >= 1,
                       10, interval=0.05, what="chunk 2 to be written")

    path = "/v2/anything/at/all/blobs/" + b.digest
    st, h, body = net.http(a.host.ip, PEER_PORT, "GET", path,
                           headers={"Range": "bytes=%d-%d" % (2 * MiB, 3 * MiB - 1)})
    assert st == 206, (st, body[:200])
    assert body == b.data[2 * MiB:3 * MiB]
    assert h.get("Content-Range", "").startswith("bytes %d-%d/" % (2 * MiB, 3 * MiB - 1))

    origin_before = a.stat()["fetched"]["origin_bytes"]
    for _ in range(2):   # still 416 the second time: asking never makes A fetch it
        st, _h, body = net.http(a.host.ip, PEER_PORT, "GET", path,
                                headers={"Range": "bytes=%d-%d" % (60 * MiB, 61 * MiB - 1)})
        assert st == 416, "chunk 60 was never read on this node: want 416, got %d" % st
        assert a.stat()["fetched"]["inflight_chunks"] == 0, "a peer request made A fetch"
    assert a.stat()["fetched"]["origin_bytes"] == origin_before, "a peer request made A fetch"

    unknown = "sha256:" + "ab" * 32
    st, _h, _b = net.http(a.host.ip, PEER_PORT, "GET", "/v2/x/blobs/" + unknown,
                          headers={"Range": "bytes=0-1023"})
    assert st == 404


def test_blob_resolves_on_every_node(build_dir, net):
    """A blob registered on one node resolves by digest on the others within about a
    second: stat and read of blobs/sha256/<hex> where blobctl add was never run."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    b = harness.make_blob(reg, "res", harness.gen_bytes(312, 3 * MiB + 7), repo=REPO)
    hosts = [net.add_host("n%d" % i, s) for i in range(3)]
    nodes = start_nodes(net, build_dir, reg, hosts)
    wait_peers_up(nodes)
    nodes[0].add(b.ref)
    t0 = time.monotonic()
    for d in nodes[1:]:
        st = harness.wait_until(lambda d=d: _stat_or_none(d.blob_path(b.digest)), 5,
                                interval=0.05, what="%s to resolve %s" % (d.host.name,
                                                                          b.digest))
        assert st.st_size == b.size
    dt = time.monotonic() - t0
    print("\n[resolve] blob added on n0 resolved on n1, n2 after %.2fs" % dt)
    assert dt < 2.5, "took %.2fs to resolve on every node (about a second expected)" % dt
    for d in nodes[1:]:
        full_read(d, b)


def _stat_or_none(p):
    try:
        return os.stat(p)
    except OSError:
        return None


def test_b_reads_blob_a_holds(build_dir, net):
    """Node B reading a blob that node A holds fetches it from A: the registry serves no
    extra bytes, B's bytes are right, B's peer_bytes is the blob's size."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    blob = harness.make_blob(reg, "ab128", harness.gen_bytes(321, 128 * MiB), repo=REPO)
    a, b = start_nodes(net, build_dir, reg, [net.add_host("a", s), net.add_host("b", s)])
    wait_peers_up([a, b])

    a.add(blob.ref)
    t_a = full_read(a, blob)
    waited = wait_announced(net, [a, b], a, blob)
    mark = reg.mark()
    b.add(blob.ref)
    t_b = full_read(b, blob)

    served = reg.bytes_served(blob.digest, since=mark)
    sb, sa = b.stat(), a.stat()
    pa = b.peer(a) or {}
    print("\n[a->b] %d MiB: A from registry %.2fs (%.0f MiB/s), B from A %.2fs (%.0f MiB/s); "
          "registry bytes during B's read: %d; B peer_bytes %d origin_bytes %d; A served %d; "
          "announce seen after %s s"
          % (blob.size // MiB, t_a, mbps(blob.size, t_a), t_b, mbps(blob.size, t_b), served,
             sb["fetched"]["peer_bytes"], sb["fetched"]["origin_bytes"],
             sa["served"]["peer_bytes"], "%.2f" % waited if waited is not None else "?"))
    assert served == 0, "registry served %d bytes for B's read of a blob A holds" % served
    assert sb["fetched"]["origin_bytes"] == 0
    assert blob.size <= sb["fetched"]["peer_bytes"] <= 1.1 * blob.size
    assert sa["served"]["peer_bytes"] >= blob.size
    assert pa.get("bytes_from", 0) >= blob.size, pa
    assert (a.peer(b) or {}).get("bytes_to", 0) >= blob.size


def test_five_readers_one_blob(build_dir, net):
    """5 nodes read one 256 MiB blob at the same moment: the registry serves about 1x the
    blob (assert < 1.5x), every copy's sha256 is right."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    blob = harness.make_blob(reg, "five256", gen_big(331, 256 * MiB), repo=REPO)
    hosts = [net.add_host("n%d" % i, s) for i in range(5)]
    nodes = start_nodes(net, build_dir, reg, hosts)
    wait_peers_up(nodes)
    for d in nodes:
        d.add(blob.ref)
    mark = reg.mark()
    barrier = threading.Barrier(len(nodes))
    readers = [TimedRead(d.blob_path(blob.digest), name=d.host.name, barrier=barrier)
               for d in nodes]
    t0 = time.monotonic()
    for r in readers:
        r.start()
    for r in readers:
        r.join(240)
    wall = time.monotonic() - t0
    served = reg.bytes_served(blob.digest, since=mark)
    gets = reg.blob_get_count(blob.digest, since=mark)
    lines = []
    for d, r in zip(nodes, readers):
        st = d.stat()
        lines.append("  %s: %.1fs origin %d MiB peers %d MiB served %d MiB"
                     % (d.host.name, r.elapsed, st["fetched"]["origin_bytes"] // MiB,
                        st["fetched"]["peer_bytes"] // MiB, st["served"]["peer_bytes"] // MiB))
    fails = {}
    for d in nodes:
        for line in d.log_lines(r"peer transfer failed"):
            m = re.search(r'why="([^"]*)"', line)
            fails[m.group(1) if m else "?"] = fails.get(m.group(1) if m else "?", 0) + 1
    print("\n[5 readers] %d MiB blob: registry served %d bytes = %.2fx the blob in %d GETs; "
          "wall %.1fs; failed peer transfers by reason: %s\n%s"
          % (blob.size // MiB, served, served / blob.size, gets, wall, fails or "none",
             "\n".join(lines)))
    for d, r in zip(nodes, readers):
        assert (r.digest, r.n) == (blob.digest, blob.size), "%s read wrong bytes" % d.host.name
    assert served < 1.5 * blob.size, \
        "registry served %.2fx the blob for 5 readers" % (served / blob.size)


def test_holder_killed_mid_read(build_dir, net):
    """B reads a blob only A holds; A is killed with kill -9 when B has read half: B finishes
    from another source (the origin), bytes right."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    blob = harness.make_blob(reg, "kill128", harness.gen_bytes(341, 128 * MiB), repo=REPO)
    a, b = start_nodes(net, build_dir, reg, [net.add_host("a", s), net.add_host("b", s)])
    wait_peers_up([a, b])
    a.add(blob.ref)
    full_read(a, blob)
    wait_announced(net, [a, b], a, blob)
    b.add(blob.ref)
    mark = reg.mark()
    killed = {}

    def progress(n):
        if n >= blob.size // 2 and not killed:
            killed["at"] = n
            killed["t"] = time.monotonic()
            a.kill9()

    r = TimedRead(b.blob_path(blob.digest), pace=0.01, on_progress=progress).start()
    r.join(180)
    served = reg.bytes_served(blob.digest, since=mark)
    st = b.stat()
    print("\n[kill -9] A killed at %d MiB of B's read; B finished %.1fs later, longest gap "
          "%.2fs at %d MiB; B: peer %d MiB, origin %d MiB; registry served %d MiB"
          % (killed.get("at", 0) // MiB, time.monotonic() - killed.get("t", 0), r.max_gap,
             r.max_gap_at // MiB, st["fetched"]["peer_bytes"] // MiB,
             st["fetched"]["origin_bytes"] // MiB, served // MiB))
    assert killed, "A was never killed (B's read ended early?)"
    assert not a.alive()
    assert (r.digest, r.n) == (blob.digest, blob.size)
    # B really was reading from A before the kill, and the rest came from the origin.
    assert st["fetched"]["peer_bytes"] >= blob.size // 4, st["fetched"]
    assert served > 0, "nothing fetched from the registry after A died"
    assert st["fetched"]["peer_bytes"] + st["fetched"]["origin_bytes"] >= blob.size


def test_corrupt_peer_never_seen(build_dir, net):
    """A serves corrupt bytes (its store file is overwritten in the middle after it read the
    blob): B's reader never sees them, and B penalises A / refetches the chunk."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    blob = harness.make_blob(reg, "bad64", harness.gen_bytes(351, 64 * MiB), repo=REPO)
    a, b = start_nodes(net, build_dir, reg, [net.add_host("a", s), net.add_host("b", s)])
    wait_peers_up([a, b])
    a.add(blob.ref)
    full_read(a, blob)
    wait_announced(net, [a, b], a, blob)

    store = a.chunk_file(blob.digest)
    size_before = os.path.getsize(store)
    off, n = 20 * MiB + 12345, 64 * 1024
    bad = bytes(x ^ 0xFF for x in blob.data[off:off + n])
    fd = os.open(store, os.O_WRONLY)
    try:
        assert os.pwrite(fd, bad, off) == n
        os.fsync(fd)
    finally:
        os.close(fd)
    assert os.path.getsize(store) == size_before
    # Does A now serve the bad bytes to peers? (If A checks its own chunks before serving,
    # it refuses instead; then B must still refetch, but has nothing to penalise A for.)
    st, _h, body = net.http(a.host.ip, PEER_PORT, "GET", "/v2/x/blobs/" + blob.digest,
                            headers={"Range": "bytes=%d-%d" % (20 * MiB, 21 * MiB - 1)})
    a_serves_bad = st == 206 and body != blob.data[20 * MiB:21 * MiB]
    assert not (st == 206 and body == blob.data[20 * MiB:21 * MiB]), \
        "A served the original bytes of a chunk overwritten in its store"

    mark = reg.mark()
    b.add(blob.ref)
    full_read(b, blob)   # the reader never sees a corrupt byte
    served = reg.bytes_served(blob.digest, since=mark)
    pa = b.peer(a) or {}
    lines = b.log_lines(r"%s.*(mismatch|corrupt|digest|bad|verif)|(mismatch|corrupt|digest|bad|"
                        r"verif).*%s" % (a.host.ip.replace(".", r"\."),
                                         a.host.ip.replace(".", r"\.")),
                        levels=("warning",))
    sb = b.stat()["fetched"]
    print("\n[corrupt] A %s; B: A failures %s, B origin %d bytes, registry refetched %d bytes;"
          " log:\n  %s" % ("served the bad bytes" if a_serves_bad else
                           "refused the bad chunk (status %d)" % st,
                           pa.get("failures"), sb["origin_bytes"], served,
                           "\n  ".join(lines[:5])))
    assert served >= MiB, "the corrupt chunk was not refetched from the origin"
    assert sb["origin_bytes"] >= MiB
    if a_serves_bad:
        assert pa.get("failures", 0) >= 1 or lines, \
            "B shows no sign of penalising A for a corrupt chunk (peers: %r)" % pa


def test_dns_join_and_leave(build_dir, net):
    """Nodes discover each other through a DNS name only. A node whose record is added
    appears in `blobctl peers` and is used (serves what it holds); once its record is removed
    it leaves the list and is no longer asked."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    dns = net.dnsmasq(net.add_host("dns", s))
    x = harness.make_blob(reg, "x64", harness.gen_bytes(361, 64 * MiB), repo=REPO)
    y = harness.make_blob(reg, "y64", harness.gen_bytes(362, 64 * MiB), repo=REPO)
    h1, h2, h3 = (net.add_host(n, s) for n in ("n1", "n2", "n3"))
    dns.set_records(DNS_NAME, [h1, h2])
    n1, n2, n3 = start_nodes(net, build_dir, reg, [h1, h2, h3], static=False, dns=dns)
    wait_peers_up([n1, n2])

    # n3 (not in DNS yet) holds x and y, from the origin.
    for blob in (x, y):
        n3.add(blob.ref)
        full_read(n3, blob)
    # n1 and n2 re-resolve the name (every --peer-refresh 1s): after two answers each that
    # lack n3, they had their chance to list it wrongly.
    asked = {h: dns.queries(DNS_NAME, h) for h in (h1, h2)}
    harness.wait_until(lambda: all(dns.queries(DNS_NAME, h) >= asked[h] + 2 for h in asked), 20,
                       what="n1 and n2 to re-resolve %s twice" % dns.fqdn(DNS_NAME))
    assert n1.peer(n3) is None and n2.peer(n3) is None, "n3 is listed before its record exists"

    t0 = time.monotonic()
    dns.add(DNS_NAME, h3)
    wait_peers_up([n1, n2], others=[n1, n2, n3], timeout=15)
    joined = time.monotonic() - t0
    wait_announced(net, [n1, n2, n3], n3, x)
    mark = reg.mark()
    n1.add(x.ref)
    full_read(n1, x)
    served_x = reg.bytes_served(x.digest, since=mark)
    from3 = (n1.peer(n3) or {}).get("bytes_from", 0)
    print("\n[dns] n3 listed by n1 and n2 %.1fs after its record was added; n1 read x: "
          "%d MiB from n3, registry %d bytes" % (joined, from3 // MiB, served_x))
    assert served_x == 0, "registry served %d bytes of x although n3 holds it" % served_x
    assert from3 >= x.size

    t0 = time.monotonic()
    dns.remove(DNS_NAME, h3)
    harness.wait_until(lambda: n1.peer(n3) is None and n2.peer(n3) is None, 15, interval=0.2,
                       what="n3 to leave n1's and n2's peer lists")
    left = time.monotonic() - t0
    served_by_3 = n3.stat()["served"]["peer_bytes"]
    mark = reg.mark()
    n2.add(y.ref)
    full_read(n2, y)
    served_y = reg.bytes_served(y.digest, since=mark)
    asked = n3.stat()["served"]["peer_bytes"] - served_by_3
    print("[dns] n3 gone from the lists %.1fs after its record was removed; n2 read y: "
          "n3 served %d bytes, registry %d MiB" % (left, asked, served_y // MiB))
    assert asked == 0, "n3 served %d bytes after it left DNS" % asked
    assert served_y >= y.size


def test_silent_link_mid_read(build_dir, net):
    """A holds the blob and is B's best source; A's link goes silent (packets vanish) while B
    reads: B still finishes with the right bytes and the longest pause between its 1 MiB reads
    is bounded."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    blob = harness.make_blob(reg, "silent128", harness.gen_bytes(371, 128 * MiB), repo=REPO)
    a, b = start_nodes(net, build_dir, reg, [net.add_host("a", s), net.add_host("b", s)])
    wait_peers_up([a, b])
    a.add(blob.ref)
    full_read(a, blob)
    wait_announced(net, [a, b], a, blob)
    b.add(blob.ref)
    mark = reg.mark()
    cut = {}

    def progress(n):
        if n >= blob.size // 4 and not cut:
            cut["at"] = n
            net.link_down(a.host)

    try:
        r = TimedRead(b.blob_path(blob.digest), pace=0.01, on_progress=progress).start()
        r.join(180)
        served = reg.bytes_served(blob.digest, since=mark)
        st = b.stat()
        pa = b.peer(a) or {}
    finally:
        if a.host.link_is_down:
            net.link_up(a.host)
    print("\n[silent link] A's link cut at %d MiB of B's read; B's longest gap between 1 MiB "
          "reads: %.2fs (at %d MiB); B total %.1fs; B: peer %d MiB, origin %d MiB; A is %s "
          "on B" % (cut.get("at", 0) // MiB, r.max_gap, r.max_gap_at // MiB, r.elapsed,
                    st["fetched"]["peer_bytes"] // MiB, st["fetched"]["origin_bytes"] // MiB,
                    pa.get("state")))
    assert cut, "the link was never cut"
    assert (r.digest, r.n) == (blob.digest, blob.size)
    assert st["fetched"]["peer_bytes"] >= blob.size // 8, "B was not reading from A"
    assert served > 0, "the rest did not come from the origin"
    assert r.max_gap < 10, "B stalled %.1fs behind a silent peer" % r.max_gap
    assert pa.get("state") == "down", "A still %r on B after its link went silent" % pa


def test_two_subnets_on_link_preferred(build_dir, net):
    """Two subnets joined by the router: B (subnet 1) with peers A1 (subnet 1) and A2
    (subnet 2), both holding the blob. B lists A1 on-link and A2 routed, and reads from A1."""
    s1, s2 = net.add_subnet("one"), net.add_subnet("two")
    reg = net.registry(net.add_host("reg", s1))
    blob = harness.make_blob(reg, "loc64", harness.gen_bytes(381, 64 * MiB), repo=REPO)
    h_b, h_a1, h_a2 = net.add_host("b", s1), net.add_host("a1", s1), net.add_host("a2", s2)
    b, a1, a2 = start_nodes(net, build_dir, reg, [h_b, h_a1, h_a2])
    wait_peers_up([b, a1, a2])
    for d in (a1, a2):
        d.add(blob.ref)
        full_read(d, blob)
    for d in (a1, a2):   # both really hold it: first and last chunk answer 206
        for lo in (0, blob.size - MiB):
            st, _h, _b = net.http(d.host.ip, PEER_PORT, "GET", "/v2/x/blobs/" + blob.digest,
                                  headers={"Range": "bytes=%d-%d" % (lo, lo + MiB - 1)})
            assert st == 206, "%s does not serve chunk at %d: %d" % (d.host.name, lo, st)
    wait_announced(net, [b, a1, a2], [a1, a2], blob)
    mark = reg.mark()
    b.add(blob.ref)
    full_read(b, blob)
    served = reg.bytes_served(blob.digest, since=mark)
    ps = {p["id"]: p for p in b.peers()}
    e1, e2 = ps.get(a1.peer_id, {}), ps.get(a2.peer_id, {})
    print("\n[locality] B's peers:\n  %s\n  registry bytes during B's read: %d"
          % ("\n  ".join(json.dumps(p, sort_keys=True) for p in ps.values()), served))
    assert e1.get("locality") == "on-link", e1
    assert e2.get("locality") == "routed", e2
    assert ps.get(b.peer_id, {}).get("locality", "self") == "self"
    assert served == 0
    assert e1.get("bytes_from", 0) >= 0.9 * blob.size, (e1, e2)
    assert e2.get("bytes_from", 0) <= 0.1 * blob.size, (e1, e2)


def test_address_change_is_announced(build_dir, net):
    """A node without --advertise-address takes the address of its default route's interface
    (netlink) and, when that address changes, announces what it holds under the new one: a
    reader that finds it again through DNS reads from it, not from the registry."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    dns = net.dnsmasq(net.add_host("dns", s))
    blob = harness.make_blob(reg, "renum32", harness.gen_bytes(391, 32 * MiB), repo=REPO)
    ha, hb = net.add_host("a", s), net.add_host("b", s)
    dns.set_records(DNS_NAME, [ha, hb])
    flags = ["--peer-refresh", "1s", "--peer-dns", dns.fqdn(DNS_NAME),
             "--peer-port", str(PEER_PORT)]
    a = net.daemon(build_dir, ha, registries=[reg], resolver=dns, extra_args=flags)
    b = net.daemon(build_dir, hb, registries=[reg], resolver=dns,
                   extra_args=flags + ["--advertise-address", hb.ip])
    wait_peers_up([a, b])
    assert (a.peer(a) or {}).get("self"), "A did not find its own address through netlink"
    a.add(blob.ref)
    full_read(a, blob)

    # Renumber A: a new address on eth0, the old one gone, the default route back.
    old, new = ha.ip, "10.77.%d.200" % s.index
    ha.run(["sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"], check=True)
    ha.run(["ip", "addr", "add", "%s/%d" % (new, s.prefixlen), "dev", "eth0"], check=True)
    ha.run(["ip", "addr", "del", "%s/%d" % (old, s.prefixlen), "dev", "eth0"], check=True)
    ha.run(["ip", "route", "replace", "default", "via", s.router_ip], check=True)
    ha.ip = new
    dns.set_records(DNS_NAME, [ha, hb])
    t0 = time.monotonic()
    harness.wait_until(lambda: (a.peer(a) or {}).get("self"), 15, interval=0.2,
                       what="A to take its new address as its id")
    wait_peers_up([b], others=[a, b], timeout=15)
    wait_announced(net, [b], a, blob, timeout=10)
    took = time.monotonic() - t0
    mark = reg.mark()
    b.add(blob.ref)
    full_read(b, blob)
    served = reg.bytes_served(blob.digest, since=mark)
    from_a = (b.peer(a) or {}).get("bytes_from", 0)
    print("\n[renumber] A %s -> %s; B saw it up under the new id and its announce %.1fs later; "
          "B read %d MiB from A, registry %d bytes" % (old, new, took, from_a // MiB, served))
    assert served == 0, "registry served %d bytes although A holds the blob" % served
    assert from_a >= blob.size
    assert b.peer("%s:%d" % (old, PEER_PORT)) is None or \
        b.peer("%s:%d" % (old, PEER_PORT))["state"] == "down"


def test_restarted_home_still_finds_holders(build_dir, net):
    """A node restarts and reads at once a blob it had registered and is the first home of: it
    knows the blob but, until holders announce again, not who holds it. It must still find the
    holder through the other homes, not fetch from the registry (it used to grant itself the
    chunks and read them all from the origin for up to a refresh interval)."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    ha, hb = net.add_host("a", s), net.add_host("b", s)
    a_id, b_id = "%s:%d" % (ha.ip, PEER_PORT), "%s:%d" % (hb.ip, PEER_PORT)
    for seed in range(394, 494):  # data whose first home is B (about one seed in two)
        data = harness.gen_bytes(seed, 32 * MiB)
        if rdv.score(b_id, harness.sha256_digest(data)) > rdv.score(a_id,
                                                                    harness.sha256_digest(data)):
            break
    blob = harness.make_blob(reg, "restart32", data, repo=REPO)
    a, b = start_nodes(net, build_dir, reg, [ha, hb])
    wait_peers_up([a, b])
    a.add(blob.ref)
    full_read(a, blob)
    b.add(blob.ref)  # registered on B, nothing read
    wait_announced(net, [a, b], a, blob)
    b.restart()
    mark = reg.mark()
    full_read(b, blob)
    served = reg.bytes_served(blob.digest, since=mark)
    from_a = (b.peer(a) or {}).get("bytes_from", 0)
    print("\n[restart] B (first home) read right after its restart: %d MiB from A, registry %d "
          "bytes" % (from_a // MiB, served))
    assert served == 0, "registry served %d bytes although A holds the blob" % served
    assert from_a >= blob.size


def test_cluster_token(build_dir, net, tmp_path):
    """With --cluster-token-file, peers share only with nodes that present the same token:
    B (same token) reads from A; C (another token) is refused and reads from the registry; a
    request without the token gets 401, probes stay open."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    blob = harness.make_blob(reg, "token32", harness.gen_bytes(395, 32 * MiB), repo=REPO)
    hosts = [net.add_host(n, s) for n in ("a", "b", "c")]
    good, bad = tmp_path / "good", tmp_path / "bad"
    token = "s3cr3t-for-this-cluster"
    good.write_text(token + "\n")
    bad.write_text("another-cluster\n")
    a, b, c = [net.daemon(build_dir, h, registries=[reg],
                          extra_args=node_flags(h, peers=hosts) + ["--cluster-token-file", str(t)])
               for h, t in zip(hosts, (good, good, bad))]
    wait_peers_up([a, b, c])
    a.add(blob.ref)
    full_read(a, blob)
    wait_announced(net, [a, b], a, blob, headers={"X-P2PBlobs-Token": token})

    mark = reg.mark()
    b.add(blob.ref)
    full_read(b, blob)
    assert reg.bytes_served(blob.digest, since=mark) == 0, "B (same token) did not read from A"
    mark = reg.mark()
    c.add(blob.ref)
    full_read(c, blob)
    from_registry = reg.bytes_served(blob.digest, since=mark)
    assert from_registry >= blob.size, "C (another token) got bytes from a peer"
    assert (c.peer(a) or {}).get("bytes_from", 0) == 0

    path = "/v2/x/blobs/" + blob.digest
    ha_ip = hosts[0].ip
    st, _h, _b = net.http(ha_ip, PEER_PORT, "GET", path, {"Range": "bytes=0-9"})
    assert st == 401, st
    st, _h, _b = net.http(ha_ip, PEER_PORT, "GET", path,
                          {"Range": "bytes=0-9", "X-P2PBlobs-Token": token})
    assert st == 206, st
    st, _h, _b = net.http(ha_ip, PEER_PORT, "GET", "/healthz")
    assert st == 200, st
    assert a.log_lines(r"refused a peer request without the cluster token")
    print("\n[token] B read from A with the shared token; C (another token) read %d MiB from "
          "the registry; no token: 401" % (from_registry // MiB))
