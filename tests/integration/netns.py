"""Several hosts on one machine: network namespaces, a router, a real registry and a real DNS
server, and p2pblobsd daemons running as separate nodes. Standard library only; needs root.

Topology (all of it inside namespaces this module creates; the root namespace is untouched):

    host ns "p2pt-<pid>-<rand>-<name>"          router ns "p2pt-<pid>-<rand>-router"
      eth0 10.77.S.N/24  <--veth-->  vhN --- bridge brS (10.77.S.1/24) ---+
      default via 10.77.S.1                                               | ip_forward=1
                                                   other bridges brT ------+

    net = Net(workdir)
    s1 = net.add_subnet()                 # 10.77.1.0/24, router 10.77.1.1 on bridge br1
    a = net.add_host("a", s1)             # Host: name, ip, ns, nspath, prefix, run, popen
    reg = net.registry(net.add_host("reg", s1))        # NetRegistry (harness.Registry)
    dns = net.dnsmasq(net.add_host("dns", s1))         # Dnsmasq, authoritative for p2p.test
    d = net.daemon(build_dir, a, registries=[reg], resolver=dns, extra_args=[...])
    harness.sha256_file(d.blob_path(digest))           # through /proc/<pid>/root/<mnt>
    net.link_down(a); net.link_up(a)                   # silent link: packets vanish
    net.http(ip, port, "GET", path, headers)           # an HTTP request from the router ns
    net.teardown()                                     # idempotent; kills all, deletes all

Processes run in a host through `ip netns exec NS ...`, which execs (so Popen.pid is the
process itself), enters the network namespace, and unshares a private mount namespace in which
/etc/netns/NS/resolv.conf is bind-mounted over /etc/resolv.conf: that is how a daemon's glibc
resolver talks to our dnsmasq and nothing else. The price: a daemon's FUSE mount lives in that
private mount namespace. The test reaches it through /proc/<daemon pid>/root/<mountpoint>
(NetDaemon.view_mountpoint); when the daemon exits, its mount namespace and the mount go with it
(no stale mount is left behind, even after kill -9). The control socket is a plain file in the
shared temp dir, so blobctl runs from the root namespace.

The test process itself reaches addresses inside the net from a short-lived thread that setns()
into a namespace (network namespaces are per thread): Host.call / Net.http / NetRegistry.request.
"""

import ctypes
import ctypes.util
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import harness
from harness import HarnessError

IP = "/usr/sbin/ip"
BRIDGE = "/usr/sbin/bridge"
DNSMASQ = "/usr/sbin/dnsmasq"
NETNS_RUN = "/run/netns"
NETNS_ETC = "/etc/netns"
NS_PREFIX = "p2pt-"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _sh(argv, check=True, timeout=30):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise HarnessError("%s: exit %d: %s" % (" ".join(argv), r.returncode, r.stderr.strip()))
    return r


def available():
    """None when this machine can run the net (root, ip, bridge module, dnsmasq), else why not."""
    if os.geteuid() != 0:
        return "needs root"
    for b in (IP, DNSMASQ):
        if not os.access(b, os.X_OK):
            return "%s is not installed" % b
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    return None


def call_in_netns(nspath, fn, *args, **kw):
    """Run FN(*ARGS, **KW) on a fresh thread that has joined the network namespace NSPATH;
    sockets it creates belong to that namespace. Returns FN's value or re-raises its error."""
    box = {}

    def body():
        try:
            fd = os.open(nspath, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, "setns(%s): %s" % (nspath, os.strerror(e)))
            finally:
                os.close(fd)
            box["value"] = fn(*args, **kw)
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=body, name="netns-call", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def http_request(ip, port, method, path, headers=None, body=None, timeout=10):
    """(status, headers, body) of one HTTP request (in the calling thread's namespace)."""
    import http.client
    c = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, r.headers, data
    finally:
        c.close()


def dns_query_a(server, name, timeout=1.0, port=53):
    """A records of NAME asked of SERVER over UDP (in the calling thread's namespace):
    (rcode, sorted list of IPv4 strings)."""
    qid = random.randrange(65536)
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, (server, port))
        while True:
            resp, _ = s.recvfrom(4096)
            if len(resp) >= 12 and struct.unpack("!H", resp[:2])[0] == qid:
                break
    _id, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", resp[:12])
    rcode = flags & 0xF
    pos = 12

    def skip_name(p):
        while True:
            ln = resp[p]
            if ln == 0:
                return p + 1
            if ln & 0xC0 == 0xC0:
                return p + 2
            p += 1 + ln

    for _ in range(qd):
        pos = skip_name(pos) + 4
    ips = []
    for _ in range(an):
        pos = skip_name(pos)
        typ, _cls, _ttl, rdlen = struct.unpack("!HHIH", resp[pos:pos + 10])
        pos += 10
        if typ == 1 and rdlen == 4:
            ips.append(socket.inet_ntoa(resp[pos:pos + 4]))
        pos += rdlen
    return rcode, sorted(ips)


def sweep_stale():
    """Delete namespaces (and /etc/netns dirs) left by earlier runs whose process is gone."""
    names = set(os.path.basename(p) for p in glob.glob(os.path.join(NETNS_RUN, NS_PREFIX + "*")))
    names |= set(os.path.basename(p) for p in glob.glob(os.path.join(NETNS_ETC, NS_PREFIX + "*")))
    for name in names:
        try:
            pid = int(name[len(NS_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or os.path.exists("/proc/%d" % pid):
            continue
        _kill_ns_pids(name)
        subprocess.run([IP, "netns", "del", name], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(os.path.join(NETNS_ETC, name), ignore_errors=True)


def _kill_ns_pids(ns):
    r = subprocess.run([IP, "netns", "pids", ns], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True)
    for tok in r.stdout.split():
        try:
            os.kill(int(tok), signal.SIGKILL)
        except (ValueError, OSError):
            pass


# --------------------------------------------------------------------------- topology

class Subnet:
    def __init__(self, index, name):
        self.index = index
        self.name = name
        self.network = "10.77.%d.0" % index
        self.prefixlen = 24
        self.router_ip = "10.77.%d.1" % index
        self.bridge = "br%d" % index
        self.hosts = []
        self._next = 2

    @property
    def cidr(self):
        return "%s/%d" % (self.network, self.prefixlen)

    def __repr__(self):
        return "<Subnet %s %s>" % (self.name, self.cidr)


class Host:
    """One host: its own network namespace with eth0 on a subnet."""

    def __init__(self, net, name, ns, subnet, ip, router_port):
        self.net = net
        self.name = name
        self.ns = ns
        self.subnet = subnet
        self.ip = ip
        self.router_port = router_port   # the bridge-side veth, in the router namespace
        self.link_is_down = False

    @property
    def nspath(self):
        return os.path.join(NETNS_RUN, self.ns)

    @property
    def prefix(self):
        """Command prefix that runs a program on this host (network + private mount ns)."""
        return [IP, "netns", "exec", self.ns]

    def run(self, argv, check=False, timeout=30, **kw):
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        r = subprocess.run(self.prefix + list(argv), timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise HarnessError("on %s: %s: exit %d: %s" % (self.name, " ".join(argv),
                                                           r.returncode, r.stderr))
        return r

    def popen(self, argv, **kw):
        """Start ARGV on this host; the process is killed at Net.teardown."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(self.prefix + list(argv), **kw)
        self.net._procs.append(p)
        return p

    def call(self, fn, *args, **kw):
        """FN(*ARGS, **KW) on a thread inside this host's network namespace."""
        return call_in_netns(self.nspath, fn, *args, **kw)

    def http(self, ip, port, method, path, headers=None, body=None, timeout=10):
        return self.call(http_request, ip, port, method, path, headers, body, timeout)

    def set_resolver(self, nameserver_ip):
        """/etc/resolv.conf as seen by processes started on this host (from now on)."""
        d = os.path.join(NETNS_ETC, self.ns)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "resolv.conf"), "w") as f:
            f.write("# p2pblobs test net %s\nnameserver %s\noptions timeout:1 attempts:2\n"
                    % (self.net.run_id, nameserver_ip))

    def __repr__(self):
        return "<Host %s %s>" % (self.name, self.ip)


class Net:
    """Namespaces, bridges and veths for one test; everything it makes, teardown() removes."""

    def __init__(self, workdir, expect_log=()):
        sweep_stale()
        self.expect_log = list(expect_log)  # error-line regexes every daemon here may log
        self.workdir = os.path.abspath(str(workdir))
        os.makedirs(self.workdir, exist_ok=True)
        self.run_id = "%s%d-%04x" % (NS_PREFIX, os.getpid(), random.randrange(1 << 16))
        self.router_ns = self.run_id + "-router"
        self.subnets = []
        self.hosts = []
        self._procs = []          # Popen objects started on hosts
        self._services = []       # objects with .stop()/.cleanup() (registries, dnsmasq, ...)
        self.daemons = []
        self._namespaces = []
        self._torn_down = False
        try:
            self._add_ns(self.router_ns)
            self._in(self.router_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        except Exception:
            self.teardown()
            raise

    # -- plumbing
    def _add_ns(self, ns):
        _sh([IP, "netns", "add", ns])
        self._namespaces.append(ns)
        _sh([IP, "-n", ns, "link", "set", "lo", "up"])

    def _in(self, ns, argv, check=True):
        return _sh([IP, "netns", "exec", ns] + argv, check=check)

    def _r(self, *args, check=True):
        return _sh([IP, "-n", self.router_ns] + list(args), check=check)

    @property
    def router_nspath(self):
        return os.path.join(NETNS_RUN, self.router_ns)

    # -- topology
    def add_subnet(self, name=None):
        """A /24 (10.77.<n>.0/24) with a bridge in the router namespace holding <n>.1."""
        idx = len(self.subnets) + 1
        if idx > 250:
            raise HarnessError("too many subnets")
        s = Subnet(idx, name or "s%d" % idx)
        self._r("link", "add", s.bridge, "type", "bridge")
        # No STP, no forwarding delay: a port is forwarding as soon as it is up.
        _sh([IP, "-n", self.router_ns, "link", "set", s.bridge, "type", "bridge",
             "stp_state", "0", "forward_delay", "0"], check=False)
        self._r("addr", "add", "%s/%d" % (s.router_ip, s.prefixlen), "dev", s.bridge)
        self._r("link", "set", s.bridge, "up")
        self.subnets.append(s)
        return s

    def add_host(self, name, subnet=None):
        """A host namespace with eth0 on SUBNET (default: the first, created if needed)."""
        if subnet is None:
            subnet = self.subnets[0] if self.subnets else self.add_subnet()
        if any(h.name == name for h in self.hosts):
            raise HarnessError("host %s exists" % name)
        n = len(self.hosts) + 1
        ns = "%s-%s" % (self.run_id, name)
        ip = "10.77.%d.%d" % (subnet.index, subnet._next)
        subnet._next += 1
        port = "vh%d" % n
        self._add_ns(ns)
        _sh([IP, "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
             "netns", self.router_ns])
        self._r("link", "set", port, "master", subnet.bridge)
        self._r("link", "set", port, "up")
        _sh([IP, "-n", ns, "addr", "add", "%s/%d" % (ip, subnet.prefixlen), "dev", "eth0"])
        _sh([IP, "-n", ns, "link", "set", "eth0", "up"])
        _sh([IP, "-n", ns, "route", "add", "default", "via", subnet.router_ip])
        h = Host(self, name, ns, subnet, ip, port)
        self.hosts.append(h)
        subnet.hosts.append(h)
        # Until told otherwise, names resolve nowhere (never the machine's resolver).
        h.set_resolver("127.0.0.1")
        return h

    def host(self, name):
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def wait_reachable(self, src, dst, port, timeout=10):
        """Wait until SRC can open a TCP connection to DST:PORT."""
        def probe():
            try:
                with socket.create_connection((dst.ip if isinstance(dst, Host) else dst, port),
                                              timeout=0.5):
                    return True
            except OSError:
                return False
        harness.wait_until(lambda: src.call(probe), timeout, interval=0.1,
                           what="%s to reach %s:%s" % (src, dst, port))

    # -- faults
    def link_down(self, host):
        """The host's link goes silent: its bridge port stops forwarding in both directions.
        Packets vanish; nothing is refused (no RST, no ICMP), and neither end sees a carrier
        change. (The bridge port is set to state disabled; if the kernel refuses that, the
        bridge-side veth is taken down instead, which is just as silent to peers.)"""
        r = _sh([BRIDGE, "-n", self.router_ns, "link", "set", "dev", host.router_port,
                 "state", "0"], check=False) if os.access(BRIDGE, os.X_OK) else None
        if r is None or r.returncode != 0:
            self._r("link", "set", host.router_port, "down")
            host._down_how = "link"
        else:
            host._down_how = "port"
        host.link_is_down = True

    def link_up(self, host):
        if getattr(host, "_down_how", None) == "port":
            _sh([BRIDGE, "-n", self.router_ns, "link", "set", "dev", host.router_port,
                 "state", "3"])
        else:
            self._r("link", "set", host.router_port, "up")
        host.link_is_down = False

    # -- clients from the test process
    def http(self, ip, port, method, path, headers=None, body=None, timeout=10):
        """One HTTP request from the router namespace (which reaches every subnet)."""
        return call_in_netns(self.router_nspath, http_request, ip, port, method, path,
                             headers, body, timeout)

    def metrics(self, ip, port, timeout=5):
        """The unlabelled samples of the /metrics at IP:PORT, name (without "p2pblobs_") ->
        number."""
        st, _h, body = self.http(ip, port, "GET", "/metrics", timeout=timeout)
        assert st == 200, "GET /metrics: %d" % st
        out = {}
        for line in body.decode().splitlines():
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#") and "{" not in parts[0]:
                out[parts[0].removeprefix("p2pblobs_")] = float(parts[1])
        return out

    # -- services
    def registry(self, host, port=5000, workdir=None):
        reg = NetRegistry(host, workdir or os.path.join(self.workdir, "registry-" + host.name),
                          port=port)
        self._services.append(reg)
        reg.start()
        return reg

    def dnsmasq(self, host, domain="p2p.test", workdir=None):
        d = Dnsmasq(host, workdir or os.path.join(self.workdir, "dns-" + host.name),
                    domain=domain)
        self._services.append(d)
        d.start()
        return d

    def daemon(self, build_dir, host, registries=(), resolver=None, start=True, expect_log=(),
               **kw):
        """A NetDaemon on HOST (workdir under the net's), started unless START is false.
        RESOLVER (a Dnsmasq or an IP) becomes the host's nameserver. EXPECT_LOG: regexes of
        error lines this daemon may log, beside the net's own (self.expect_log, which the
        `net` fixture fills from the test's expect_log markers)."""
        if resolver is not None:
            host.set_resolver(resolver.host.ip if isinstance(resolver, Dnsmasq) else resolver)
        d = NetDaemon(build_dir, os.path.join(self.workdir, "node-" + host.name), host,
                      registries=registries, expect_log=list(self.expect_log) + list(expect_log),
                      **kw)
        self.daemons.append(d)
        if start:
            d.start()
        return d

    # -- the peer directory
    def holders(self, nodes, digest, headers=None):
        """Peer ids that the directory of any of NODES (GET /p2p/v1/locate, see peer/wire.h)
        lists as holding every chunk of DIGEST. Nodes that are down or do not answer are
        skipped. HEADERS: e.g. the cluster token ({"X-P2PBlobs-Token": ...})."""
        seen = set()
        for d in nodes:
            if not d.alive():
                continue
            try:
                st, _h, body = self.http(d.host.ip, d.peer_port, "GET",
                                         "/p2p/v1/locate/" + digest, headers=headers,
                                         timeout=2)
                if st != 200:
                    continue
                j = json.loads(body)
                chunk = int(j["chunk_size"])
                nchunks = (int(j["size"]) + chunk - 1) // chunk
                for h in j.get("holders", []):
                    if sum(e - s for s, e in h.get("present") or []) >= nchunks:
                        seen.add(h.get("node"))
            except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
                continue
        return seen

    def wait_announced(self, nodes, holders, digest, timeout=20, headers=None):
        """Wait until the directory of NODES lists each of HOLDERS (NetDaemons) as holding
        every chunk of DIGEST, so a read that follows does not race the first announce;
        returns the seconds waited, raises HarnessError after TIMEOUT."""
        t0 = time.monotonic()
        want = {h.peer_id for h in holders}
        harness.wait_until(lambda: want <= self.holders(nodes, digest, headers), timeout,
                           interval=0.1,
                           what="the directory of %s to list %s holding %s"
                           % ([d.host.name for d in nodes], [h.host.name for h in holders],
                              digest[:19]))
        return time.monotonic() - t0

    # -- teardown
    def stop_daemons(self):
        """SIGTERM every daemon still running (checking clean exits); returns errors."""
        errors = []
        for d in self.daemons:
            try:
                d.cleanup()
            except Exception as e:
                errors.append("cleanup of %s: %s" % (d.workdir, e))
        return errors

    def health_errors(self):
        errors = []
        for d in self.daemons:
            try:
                d.check_health()
            except AssertionError as e:
                errors.append("%s: %s" % (d.host.name, e))
        return errors

    def teardown(self):
        """Kill every process we started, delete every namespace (bridges and veths go with
        the router namespace) and /etc/netns dir. Idempotent; never raises."""
        for d in self.daemons:
            try:
                if d.alive():
                    d.proc.kill()
                    d.proc.wait(10)
                d._close_log()
            except Exception:
                pass
        for s in self._services:
            try:
                s.stop()
            except Exception:
                pass
        for p in self._procs:
            try:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
            except Exception:
                pass
        for ns in reversed(self._namespaces):
            _kill_ns_pids(ns)
        for ns in reversed(self._namespaces):
            subprocess.run([IP, "netns", "del", ns], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            shutil.rmtree(os.path.join(NETNS_ETC, ns), ignore_errors=True)
        self._torn_down = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.teardown()


# --------------------------------------------------------------------------- services

class NetRegistry(harness.Registry):
    """harness.Registry on a Host: listens on HOST.ip:PORT inside the namespace; the test
    process talks to it from a thread in that namespace."""

    def __init__(self, host, workdir, port=5000, **kw):
        self.host_obj = host
        super().__init__(workdir, host=host.ip, port=port, prefix=host.prefix, **kw)

    def request(self, method, path, body=None, headers=None, timeout=30):
        return self.host_obj.call(http_request, self.host, self.port, method, path,
                                  headers, body, timeout)

    def stop(self, timeout=10):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.resume()
            except OSError:
                pass
        super().stop(timeout)


class Dnsmasq:
    """A real dnsmasq on HOST, authoritative for DOMAIN, answering only from an addn-hosts file
    that set_records() rewrites (then SIGHUP makes dnsmasq re-read it). Never forwards."""

    def __init__(self, host, workdir, domain="p2p.test"):
        self.host = host
        self.domain = domain
        self.workdir = os.path.abspath(str(workdir))
        os.makedirs(self.workdir, exist_ok=True)
        # dnsmasq re-reads the file on SIGHUP; keep it readable whatever user it runs as.
        os.chmod(self.workdir, 0o755)
        self.hosts_path = os.path.join(self.workdir, "hosts")
        self.log_path = os.path.join(self.workdir, "dnsmasq.log")
        self.records = {}   # name -> set of IPs
        self.proc = None
        self._logf = None
        self._write()

    def fqdn(self, name):
        return name if name.endswith("." + self.domain) or name == self.domain \
            else "%s.%s" % (name, self.domain)

    def _write(self):
        tmp = self.hosts_path + ".tmp"
        with open(tmp, "w") as f:
            for name in sorted(self.records):
                for ip in sorted(self.records[name]):
                    f.write("%s %s\n" % (ip, name))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.hosts_path)

    def argv(self):
        # (dnsmasq's optional-argument options need the --opt=value form.)
        return [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
                "--port=53", "--listen-address=" + self.host.ip, "--bind-interfaces",
                "--except-interface=lo", "--addn-hosts=" + self.hosts_path,
                "--local=/%s/" % self.domain, "--domain=" + self.domain,
                "--local-ttl=0", "--cache-size=0", "--user=root", "--group=root",
                "--pid-file", "--log-facility=-", "--log-queries"]

    def start(self, timeout=10):
        self._logf = open(self.log_path, "ab")
        self.proc = self.host.popen(self.argv(), stdout=self._logf, stderr=subprocess.STDOUT)
        probe = "probe-%d.%s" % (os.getpid(), self.domain)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise HarnessError("dnsmasq exited %s:\n%s" % (self.proc.returncode,
                                                               self.log_text()[-3000:]))
            try:
                rcode, _ = self.query(probe, timeout=0.3)
                if rcode == 3:   # NXDOMAIN: up, and authoritative for the domain
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise HarnessError("dnsmasq did not answer on %s:53" % self.host.ip)
            time.sleep(0.1)

    def query(self, name, timeout=1.0):
        """(rcode, [ips]) for NAME's A records, asked from the DNS host's namespace."""
        return self.host.call(dns_query_a, self.host.ip, self.fqdn(name), timeout)

    def set_records(self, name, ips, wait=True, timeout=5):
        """NAME (relative to the domain) now has exactly the A records IPS; dnsmasq re-reads
        (SIGHUP) and, with WAIT, we check that it answers so."""
        fq = self.fqdn(name)
        ips = set(ip.ip if isinstance(ip, Host) else ip for ip in ips)
        if ips:
            self.records[fq] = ips
        else:
            self.records.pop(fq, None)
        self._write()
        self.proc.send_signal(signal.SIGHUP)
        if wait:
            want = sorted(ips)
            harness.wait_until(lambda: self.query(fq)[1] == want, timeout, interval=0.1,
                               what="dnsmasq to answer %s = %s" % (fq, want))

    def add(self, name, ip, **kw):
        cur = set(self.records.get(self.fqdn(name), ()))
        cur.add(ip.ip if isinstance(ip, Host) else ip)
        self.set_records(name, cur, **kw)

    def remove(self, name, ip, **kw):
        cur = set(self.records.get(self.fqdn(name), ()))
        cur.discard(ip.ip if isinstance(ip, Host) else ip)
        self.set_records(name, cur, **kw)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def queries(self, name, client):
        """How many A queries for NAME dnsmasq has logged from CLIENT (a Host or an IP):
        with --log-queries each is a line "query[A] <fqdn> from <ip>"."""
        ip = client.ip if isinstance(client, Host) else client
        rx = re.compile(r"query\[A\] %s from %s$" % (re.escape(self.fqdn(name)), re.escape(ip)),
                        re.M)
        return len(rx.findall(self.log_text()))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._logf:
            self._logf.close()
            self._logf = None


# --------------------------------------------------------------------------- daemon

class NetDaemon(harness.Daemon):
    """harness.Daemon running on a Host via `ip netns exec` (so it uses the host's
    /etc/netns/NS/resolv.conf). Its mount lives in its private mount namespace: every path the
    test uses goes through /proc/<pid>/root. blobctl talks to the control socket (a file in
    the shared temp dir) from the root namespace."""

    def __init__(self, build_dir, workdir, host, listen="0.0.0.0:5001", **kw):
        self.host = host
        super().__init__(build_dir, workdir, prefix=host.prefix, listen=listen, **kw)

    @property
    def peer_port(self):
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def peer_id(self):
        """The id peers know this node by: "<ip>:<port>"."""
        return "%s:%d" % (self.host.ip, self.peer_port)

    @property
    def view_mountpoint(self):
        """The mountpoint as the test process can reach it (inside the daemon's mount ns)."""
        if self.proc is None:
            raise HarnessError("daemon on %s not started" % self.host.name)
        return "/proc/%d/root%s" % (self.proc.pid, self.mountpoint)

    @property
    def blobs_dir(self):
        return os.path.join(self.view_mountpoint, "blobs", "sha256")

    def _ns_mount_ids(self):
        real = self.mountpoint
        ids = []
        try:
            with open("/proc/%d/mountinfo" % self.proc.pid) as f:
                for line in f:
                    fields = line.split()
                    if len(fields) > 4 and fields[4].replace("\\040", " ") == real:
                        ids.append(int(fields[0]))
        except OSError:
            pass
        return ids

    def mounted(self):
        if self.proc is None or self.proc.poll() is not None:
            return False
        if not self._ns_mount_ids():
            return False
        try:
            os.listdir(self.view_mountpoint)
            os.listdir(self.blobs_dir)
        except OSError:
            return False
        return True

    def blobctl(self, *args, timeout=30, socket_path=None):
        cmd = [self.blobctl_bin, "--socket", socket_path or self.socket_path]
        cmd += [str(a) for a in args]
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout, env=self.env)

    # -- peer views
    def peers(self):
        """blobctl peers --json: list of dicts (id, state, locality, latency_ms, bytes_from,
        bytes_to, failures)."""
        r = self.blobctl("peers", "--json")
        if r.returncode != 0:
            raise HarnessError("blobctl peers on %s: exit %d: %s%s"
                               % (self.host.name, r.returncode, r.stderr, r.stdout))
        return json.loads(r.stdout)

    def peer(self, other):
        """This node's entry for OTHER (a NetDaemon or an id), or None."""
        pid = other.peer_id if isinstance(other, NetDaemon) else other
        for p in self.peers():
            if p.get("id") == pid:
                return p
        return None

    def stat_field(self, dotted):
        v = self.stat()
        for k in dotted.split("."):
            v = v[k]
        return v

    def chunk_file(self, digest):
        return os.path.join(self.state_dir, "chunks", "sha256", harness.hex_of(digest))
