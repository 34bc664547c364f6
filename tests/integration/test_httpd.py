"""The node's HTTP server: /healthz, /readyz, /metrics on --listen."""

import http.client
import os
import re
import socket
import subprocess

import harness

MiB = harness.MiB
REPO = "p2pblobs/httpd"


def get(listen, path):
    host, port = listen.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read().decode()
    finally:
        c.close()


def parse_metrics(text):
    """Prometheus text format: every sample line is NAME{LABELS} VALUE; HELP/TYPE comments."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = re.fullmatch(r'([a-z_:][a-z0-9_:]*)(\{[a-z_]+="[^"]*"\})? (-?[0-9.e+]+)', line)
        assert m, "malformed metrics line: %r" % line
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def test_health_ready_and_metrics(registry, daemon_factory):
    data = harness.gen_bytes(61, 3 * MiB)
    digest = registry.push_blob(REPO, data)
    d = daemon_factory(registries=[registry])
    assert get(d.listen, "/healthz")[:1] == (200,)
    assert harness.wait_until(lambda: get(d.listen, "/readyz")[0] == 200, 10, what="/readyz")
    d.add(registry.ref(REPO, digest))
    assert harness.read_file(d.blob_path(digest)) == data

    status, ctype, body = get(d.listen, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), (status, ctype)
    m = parse_metrics(body)
    s = d.stat()
    assert m["p2pblobs_origin_bytes_total"] == s["fetched"]["origin_bytes"] == len(data)
    assert m["p2pblobs_cache_chunks"] == s["cache"]["chunks_present"] == 3
    assert m["p2pblobs_blobs"] == 1 and m["p2pblobs_blobs_verified"] == 1
    assert m['p2pblobs_origin_errors_total{cause="connect"}'] == 0
    assert m["p2pblobs_ready"] == 1
    assert get(d.listen, "/nope")[0] == 404


def test_readyz_reports_not_ready_while_stopping(registry, daemon_factory):
    """During a SIGTERM drain (a read waiting on a hung origin), /readyz says 503 while the
    process still answers /healthz."""
    data = harness.gen_bytes(62, 2 * MiB)
    digest = registry.push_blob(REPO, data)
    d = daemon_factory(registries=[registry], extra_args=["--shutdown-timeout", "4s"])
    d.add(registry.ref(REPO, digest))
    assert harness.wait_until(lambda: get(d.listen, "/readyz")[0] == 200, 10, what="/readyz")
    registry.pause()
    reader = subprocess.Popen(["dd", "if=" + d.blob_path(digest), "of=/dev/null", "bs=1M"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        harness.wait_until(lambda: d.stat()["fetched"]["inflight_chunks"] > 0, 10,
                           what="a fetch in flight")
        d.proc.send_signal(15)
        assert harness.wait_until(lambda: get(d.listen, "/readyz")[0] == 503, 3,
                                  what="/readyz 503 while draining")
        assert get(d.listen, "/healthz")[0] == 200
    finally:
        registry.resume()
        reader.wait(30)
    d.proc.wait(30)
    d.expected_exit = True
    assert d.proc.returncode == 0


def test_listen_off_and_bad_listen(build_dir, registry, daemon_factory, tmp_path):
    d = daemon_factory(registries=[registry], listen="off")
    host, port = "127.0.0.1", harness.free_port()
    assert d.stat()["blobs"] == 0  # serving without an HTTP server
    with socket.socket() as s:  # an occupied port: a clear error, exit 1, no mount left
        s.bind((host, port))
        s.listen()
        mnt = tmp_path / "mnt"
        r = subprocess.run([os.path.join(build_dir, "p2pblobsd"), "--foreground", "--config",
                            "/dev/null", "--mountpoint", str(mnt), "--state-dir",
                            str(tmp_path / "st"), "--control-socket", str(tmp_path / "c.sock"),
                            "--listen", "%s:%d" % (host, port)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1, r
        assert "cannot serve HTTP" in r.stderr, r.stderr
        assert not harness.is_mounted(str(mnt))
    r = subprocess.run([os.path.join(build_dir, "p2pblobsd"), "--config", "/dev/null",
                        "--mountpoint", str(tmp_path / "m2"), "--state-dir", str(tmp_path / "s2"),
                        "--control-socket", str(tmp_path / "c2.sock"), "--listen", "nonsense"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "listen" in r.stderr, r
    assert not os.path.exists(tmp_path / "s2"), "touched the state dir before rejecting"
