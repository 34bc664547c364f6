"""Issue 18 (scale): membership by DNS at 5000 names, against a real dnsmasq.

A headless Service returns every A record of its pods in one answer. Over UDP that answer
stops at 512 bytes (30 records, TC set); glibc then asks again over TCP, where one message is
at most 64 KiB: about 4090 records of a name this long. Past that the TCP answer is truncated
too, and glibc's getaddrinfo fails the lookup (EAI_AGAIN) instead of returning what came.
These tests pin what the daemon does then: it keeps the members it had (no emptying, no
growth), says so in a warning, keeps at most --max-peers members (the lowest ids), and a
membership split over several names listed in --peers reaches 5000.

The records are addresses of 198.18.0.0/15 (the benchmarking range) that no host of the net
has: the daemon holds nothing and probes nobody, so nothing is sent to them."""
import socket
import struct
import time

import pytest

import harness
import netns

pytestmark = pytest.mark.root
PEER_PORT = 5001


def fake_ips(n, start=0):
    return ["198.18.%d.%d" % (i // 250, 1 + i % 250) for i in range(start, start + n)]


def _query(server, name, tcp, timeout=5.0):
    """(answer bytes, TC flag, A records) of NAME asked of SERVER over UDP or TCP."""
    q = struct.pack("!HHHHHH", 0x5ca1, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", 1, 1)
    if tcp:
        with socket.create_connection((server, 53), timeout=timeout) as s:
            s.sendall(struct.pack("!H", len(q)) + q)
            buf = b""
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                d = s.recv(65536)
                if not d:
                    break
                buf += d
        resp = buf[2:]
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(q, (server, 53))
            resp, _ = s.recvfrom(65535)
    flags, _qd, an = struct.unpack("!HHH", resp[2:8])
    return len(resp), bool(flags & 0x200), an


def _served(dns, fq):
    """A records dnsmasq answers FQ with over TCP now; 0 while it does not answer in time (it
    is re-reading thousands of records after set_records, slow on a loaded machine)."""
    try:
        return dns.host.call(_query, dns.host.ip, fq, True)[2]
    except OSError:
        return 0


def wait_served(dns, name, n):
    """dnsmasq answers NAME over TCP with N records (or a full, truncated 64 KiB answer)."""
    fq = dns.fqdn(name)
    harness.wait_until(lambda: _served(dns, fq) >= min(n, 4000),
                       30, interval=0.2, what="dnsmasq to serve %d records of %s" % (n, fq))


def members(d):
    """Ids of D's members other than itself."""
    return {p["id"] for p in d.peers() if p.get("id") != d.peer_id}


def node_args(host, extra):
    return ["--advertise-address", host.ip, "--peer-refresh", "500ms"] + list(extra)


@pytest.fixture
def dns_net(net):
    s = net.add_subnet()
    dns = net.dnsmasq(net.add_host("dns", s))
    return net, s, dns


def test_answer_of_5000_names_is_truncated_over_udp_and_tcp(dns_net):
    net, _s, dns = dns_net
    dns.set_records("nodes", fake_ips(5000), wait=False)
    name = dns.fqdn("nodes")
    harness.wait_until(lambda: _served(dns, name) > 0, 30, interval=0.2,
                       what="dnsmasq to answer the 5000 records")
    size, tc, an = dns.host.call(_query, dns.host.ip, name, False)
    print("\n[dns] udp: %d bytes, tc=%s, %d records" % (size, tc, an))
    assert tc and size <= 512 and an < 100, "a UDP answer of 5000 records must be truncated"
    size, tc, an = dns.host.call(_query, dns.host.ip, name, True)
    print("[dns] tcp: %d bytes, tc=%s, %d of 5000 records" % (size, tc, an))
    assert size <= 65535
    assert tc and 3000 < an < 5000, "one TCP answer cannot carry 5000 A records"


def test_daemon_keeps_members_when_the_name_outgrows_one_answer(build_dir, dns_net):
    """3000 records resolve (TCP fallback): all are members. Grown to 5000 the lookup fails
    on every refresh: the daemon warns and keeps its 3000 members, neither emptied nor grown.
    A node started then learns nobody (and says so)."""
    net, s, dns = dns_net
    h = net.add_host("n1", s)
    fakes = fake_ips(5000)
    dns.set_records("nodes", [h.ip] + fakes[:2999], wait=False)
    wait_served(dns, "nodes", 3000)
    flags = ["--peer-dns", dns.fqdn("nodes"), "--peer-port", str(PEER_PORT)]
    d = net.daemon(build_dir, h, resolver=dns, extra_args=node_args(h, flags))
    harness.wait_until(lambda: len(members(d)) == 2999, 30, interval=0.5,
                       what="n1 to list the 2999 other members")
    assert members(d) == {"%s:%d" % (ip, PEER_PORT) for ip in fakes[:2999]}

    dns.set_records("nodes", [h.ip] + fakes, wait=False)
    harness.wait_until(lambda: d.log_lines(r"peer name does not resolve", ("warning",)), 30,
                       interval=0.5, what="n1 to warn that the name no longer resolves")
    line = d.log_lines(r"peer name does not resolve")[0]
    assert "members_kept=3000" in line, line
    # Over several refreshes (500 ms each) the membership stays what it was.
    for _ in range(6):
        assert len(members(d)) == 2999
        time.sleep(0.5)

    # A node that starts now learns nobody: the warning is all it has.
    h2 = net.add_host("n2", s)
    d2 = net.daemon(build_dir, h2, resolver=dns, extra_args=node_args(h2, flags))
    harness.wait_until(lambda: d2.log_lines(r"peer name does not resolve", ("warning",)), 30,
                       interval=0.5, what="n2 to warn that the name does not resolve")
    assert "members_kept=" in d2.log_lines(r"peer name does not resolve")[0]
    assert len(members(d2)) == 0


def test_max_peers_keeps_the_lowest_ids(build_dir, dns_net):
    """With more records than --max-peers, the members are the lowest ids, whatever order
    the answer came in: nodes that get the same answer keep the same members (and so agree
    on every blob's homes)."""
    net, s, dns = dns_net
    h = net.add_host("n1", s)
    fakes = fake_ips(3000)
    dns.set_records("nodes", [h.ip] + fakes, wait=False)
    wait_served(dns, "nodes", 3001)
    flags = ["--peer-dns", dns.fqdn("nodes"), "--peer-port", str(PEER_PORT),
             "--max-peers", "1000"]
    d = net.daemon(build_dir, h, resolver=dns, extra_args=node_args(h, flags))
    lowest = set(sorted(["%s:%d" % (ip, PEER_PORT) for ip in fakes] +
                        ["%s:%d" % (h.ip, PEER_PORT)])[:1000])

    def settled():
        got = members(d)
        return len(got) == 999 and got <= lowest   # 1000 with self
    harness.wait_until(settled, 30, interval=0.5, what="n1 to keep the 999 lowest other ids")
    assert d.log_lines(r"peers ignored .*max_peers=1000")


def test_split_names_reach_5000(build_dir, dns_net):
    """5000 members through two names of 2500 records each, listed in --peers (each
    name:port is resolved every refresh), with --max-peers above 5000."""
    net, s, dns = dns_net
    h = net.add_host("n1", s)
    fakes = fake_ips(5000)
    dns.set_records("nodes-a", [h.ip] + fakes[:2499], wait=False)
    dns.set_records("nodes-b", fakes[2499:], wait=False)
    wait_served(dns, "nodes-a", 2500)
    wait_served(dns, "nodes-b", 2501)
    flags = ["--peers", "%s:%d,%s:%d" % (dns.fqdn("nodes-a"), PEER_PORT,
                                         dns.fqdn("nodes-b"), PEER_PORT),
             "--max-peers", "8192"]
    d = net.daemon(build_dir, h, resolver=dns, extra_args=node_args(h, flags))
    harness.wait_until(lambda: len(members(d)) == 5000, 60, interval=1.0,
                       what="n1 to list 5000 members")
    assert members(d) == {"%s:%d" % (ip, PEER_PORT) for ip in fakes}
    assert not d.log_lines(r"peer name does not resolve")
