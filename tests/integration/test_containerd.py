"""containerd pulls through the p2pblobs mirror (issue 4): a real containerd 1.6 (`ctr image pull
--hosts-dir`, which reads the hosts.toml files `blobctl containerd-config` writes), a real
docker-registry, and a real runnable image (busybox-static in one layer) built by the test.

What the registry served is counted from its own log, by user agent: `p2pblobs/...` is the
daemon (the mirror's origin fetches), `containerd/...` would be containerd falling back.
"""

import http.client
import json
import os
import subprocess
import time

import pytest

import ctrd
import harness

REPO = "p2pblobs/busybox"


@pytest.fixture
def node(private_registry, daemon_factory, tmp_path, build_dir):
    """A registry, a daemon with its mirror on a free loopback port, a containerd and the
    hosts.toml that sends its pulls to the mirror."""
    why = ctrd.available()
    if why:
        pytest.skip(why)
    mirror = "127.0.0.1:%d" % harness.free_port()
    d = daemon_factory(registries=[private_registry], extra_args=["--mirror-listen", mirror])
    c = ctrd.Containerd(tmp_path / "containerd").start()
    hosts = ctrd.write_hosts(os.path.join(build_dir, "blobctl"), str(tmp_path / "hosts"),
                             private_registry.hostport, mirror)

    class Node:
        pass

    n = Node()
    n.registry, n.daemon, n.ctrd, n.hosts, n.mirror = private_registry, d, c, hosts, mirror
    yield n
    c.stop()


def mirror_get(mirror, path, method="GET", headers=None, timeout=10):
    host, port = mirror.rsplit(":", 1)
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        return r.status, r.headers, body, time.monotonic() - t0
    finally:
        conn.close()


def by_agent(requests, agent):
    return [r for r in requests if agent in r.raw.get("http.request.useragent", "")]


def layer_bytes(requests, img):
    return sum(r.written for r in requests if r.method == "GET"
               and any(r.path.endswith("/blobs/" + l) for l in img["layers"]))


def test_containerd_config_cli(build_dir, tmp_path):
    blobctl = os.path.join(build_dir, "blobctl")
    r = subprocess.run([blobctl, "containerd-config", "--registry", "registry.lan:5000",
                        "--registry", "docker.io", "--registry", "_default"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stderr
    assert 'server = "https://registry.lan:5000"' in r.stdout
    assert 'server = "https://registry-1.docker.io"' in r.stdout
    assert r.stdout.count('[host."http://127.0.0.1:5000"]') == 3
    assert r.stdout.count('capabilities = ["pull", "resolve"]') == 3
    for bad in (["--registry", "a/../b"], ["--registry", "x:1", "--mirror", "nope"], []):
        r = subprocess.run([blobctl, "containerd-config"] + bad, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
    r = subprocess.run([blobctl, "containerd-config", "--registry", "http://reg:5000",
                        "--mirror", "127.0.0.1:5055", "--write", str(tmp_path / "certs.d")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "certs.d" / "reg:5000" / "hosts.toml").read_text()
    assert 'server = "http://reg:5000"' in text and '[host."http://127.0.0.1:5055"]' in text


def test_pull_and_run_through_mirror(node):
    reg, d, c = node.registry, node.daemon, node.ctrd
    img = ctrd.push_image(reg, REPO, "v1", [ctrd.busybox_layer()])
    ref = "%s/%s:v1" % (reg.hostport, REPO)
    mark = reg.mark()
    r, cold = c.pull(ref, node.hosts)
    assert r.returncode == 0, r.stdout + r.stderr
    run = c.run(ref, "hello1", "/bin/busybox", "echo", "hello")
    assert run.returncode == 0 and run.stdout.strip() == "hello", run.stdout + run.stderr
    reqs = reg.requests()[mark:]
    assert reqs and not by_agent(reqs, "containerd"), \
        "containerd went to the origin itself: %s" % by_agent(reqs, "containerd")
    mirror_reqs = by_agent(reqs, "p2pblobs")
    cold_bytes = layer_bytes(mirror_reqs, img)
    assert cold_bytes == img["layer_bytes"], (cold_bytes, img, reqs)
    assert d.log_lines(r"mirror blob digest=%s" % img["layers"][0])
    assert d.log_lines(r"mirror tag resolved .*tag=v1")
    # The layer is in the tree now, like any blob added with blobctl.
    assert os.path.getsize(d.blob_path(img["layers"][0])) == img["layer_bytes"]

    # Warm: containerd forgets the image; the node still has it. Only the tag goes to the
    # registry (it is resolved there every time), no layer byte does.
    c.remove_image(ref)
    mark = reg.mark()
    r, warm = c.pull(ref, node.hosts)
    assert r.returncode == 0, r.stdout + r.stderr
    reqs = reg.requests()[mark:]
    assert layer_bytes(reqs, img) == 0, reqs
    assert [x.path for x in reqs] == ["/v2/%s/manifests/v1" % REPO], reqs
    print("\npull through the mirror: cold %.2fs (registry layer bytes %d), warm %.2fs (%d)"
          % (cold, cold_bytes, warm, layer_bytes(reqs, img)))


def test_mirror_protocol_edges(node):
    reg, m = node.registry, node.mirror
    layer, _diff = ctrd.busybox_layer()
    img = ctrd.push_image(reg, REPO, "edges", [(layer, _diff)])
    ns = "?ns=" + reg.hostport
    st, h, body, _t = mirror_get(m, "/v2/")
    assert st == 200 and h["Docker-Distribution-API-Version"] == "registry/2.0"
    # No ns=: the upstream is unknown, answered at once.
    st, _h, _b, t = mirror_get(m, "/v2/%s/blobs/%s" % (REPO, img["layers"][0]))
    assert st == 404 and t < 0.5, (st, t)
    st, _h, _b, t = mirror_get(m, "/v2/%s/blobs/sha256:%s%s" % (REPO, "0" * 64, ns))
    assert st == 404 and t < 2, (st, t)
    st, _h, _b, t = mirror_get(m, "/v2/%s/manifests/nosuchtag%s" % (REPO, ns))
    assert st == 404 and t < 2, (st, t)
    st, _h, _b, _t = mirror_get(m, "/v2/%s/blobs/%s%s" % (REPO, img["layers"][0], ns), "DELETE")
    assert st == 405
    # HEAD and Range on a blob.
    path = "/v2/%s/blobs/%s%s" % (REPO, img["layers"][0], ns)
    st, h, body, _t = mirror_get(m, path, "HEAD")
    assert st == 200 and int(h["Content-Length"]) == len(layer) and body == b""
    assert h["Docker-Content-Digest"] == img["layers"][0]
    st, h, body, _t = mirror_get(m, path, headers={"Range": "bytes=1000-300000"})
    assert st == 206 and body == layer[1000:300001], (st, len(body))
    assert h["Content-Range"] == "bytes 1000-300000/%d" % len(layer)
    st, h, body, _t = mirror_get(m, path, headers={"Range": "bytes=-100"})
    assert st == 206 and body == layer[-100:]
    st, h, _b, _t = mirror_get(m, path, headers={"Range": "bytes=%d-" % len(layer)})
    assert st == 416
    st, h, body, _t = mirror_get(m, path)
    assert st == 200 and body == layer
    # Manifests by digest: the right bytes, type and digest; kept in the engine's store like a
    # blob (one cache, one budget), no second cache beside it.
    st, h, body, _t = mirror_get(m, "/v2/%s/manifests/%s%s" % (REPO, img["manifest"], ns))
    assert st == 200 and harness.sha256_digest(body) == img["manifest"]
    assert h["Content-Type"] == ctrd.OCI_MANIFEST
    assert h["Docker-Content-Digest"] == img["manifest"]
    kept = [b for b in node.daemon.ls() if b["digest"] == img["manifest"]]
    assert kept and kept[0]["chunks_present"] == kept[0]["chunks"], kept
    assert not os.path.exists(os.path.join(node.daemon.state_dir, "manifests"))
    # What distribution 2.8 does with a manifest digest on the blobs endpoint (why a manifest
    # whose chunks were evicted is asked of the manifests endpoint, not refetched as a blob).
    st, _h, _b = reg.request("GET", "/v2/%s/blobs/%s" % (REPO, img["manifest"]))
    print("\ndocker-registry: GET blobs/<manifest digest> -> %d" % st)
    # The manifest asked for on the blobs endpoint (containerd's fall-back path): the same bytes.
    st, h, body, _t = mirror_get(m, "/v2/%s/blobs/%s%s" % (REPO, img["manifest"], ns))
    assert st == 200 and harness.sha256_digest(body) == img["manifest"]


def test_mirror_manifest_in_the_cache_budget(private_registry, daemon_factory):
    """A manifest fetched through the mirror is in the one cache: it counts in `blobctl stat`'s
    used bytes, shows in `blobctl ls`, is evicted under budget pressure like any chunk, and is
    then fetched from the origin again (there is no second cache to serve it from)."""
    reg = private_registry
    MiB = harness.MiB
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = harness.gen_bytes(71, 4096)
    cfg_d, layer_d = reg.push_blob(REPO, config), reg.push_blob(REPO, layer)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": ctrd.OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d,
                    "size": len(layer)}],
        "annotations": {"padding": "x" * (192 << 10)},  # big enough to see in used_bytes
    }).encode()
    man_d = reg.push_manifest(REPO, "budget", manifest)
    hot = [harness.gen_bytes(72 + i, 6 * MiB) for i in range(2)]
    hot_d = [reg.push_blob(REPO, b) for b in hot]
    mirror = "127.0.0.1:%d" % harness.free_port()
    d = daemon_factory(registries=[reg], extra_args=["--mirror-listen", mirror,
                                                      "--cache-budget", "8M"])
    ns = "?ns=" + reg.hostport

    def manifest_entry():
        e = [b for b in d.ls() if b["digest"] == man_d]
        return e[0] if e else None

    before = d.stat()["cache"]["used_bytes"]
    st, h, body, _t = mirror_get(mirror, "/v2/%s/manifests/%s%s" % (REPO, man_d, ns))
    assert st == 200 and body == manifest and h["Content-Type"] == ctrd.OCI_MANIFEST
    assert d.stat()["cache"]["used_bytes"] >= before + len(manifest)
    e = manifest_entry()
    assert e and e["chunks_present"] == e["chunks"] >= 1, e
    # Served again from the store: the origin is not asked.
    mark = reg.mark()
    st, _h, body, _t = mirror_get(mirror, "/v2/%s/manifests/%s%s" % (REPO, man_d, ns))
    assert st == 200 and body == manifest
    assert not [r for r in reg.requests()[mark:] if "/manifests/" in r.path]

    # Budget pressure: a hot set (two blobs read twice each) larger than the budget.
    for b, dig in zip(hot, hot_d):
        d.add(reg.ref(REPO, dig))
    paths = [d.blob_path(dig) for dig in hot_d]
    for _round in range(6):
        for p, b in zip(paths, hot):
            assert harness.read_file(p) == b
        harness.drop_caches(paths)
        e = manifest_entry()
        if not e or e["chunks_present"] == 0:
            break
    assert not e or e["chunks_present"] == 0, e
    assert d.stat()["cache"]["used_bytes"] <= 8 * MiB + 4 * MiB

    # Evicted from the one cache, so fetched from the origin again: same bytes, same type.
    mark = reg.mark()
    st, h, body, _t = mirror_get(mirror, "/v2/%s/manifests/%s%s" % (REPO, man_d, ns))
    assert st == 200 and body == manifest and h["Content-Type"] == ctrd.OCI_MANIFEST
    assert [r for r in reg.requests()[mark:] if r.path.endswith("/manifests/" + man_d)]


def test_octet_stream_in_index_no_retry_loop(node):
    reg, d, c = node.registry, node.daemon, node.ctrd
    odd = harness.gen_bytes(42, 3000)
    odd_digest = reg.push_blob(REPO, odd)
    img = ctrd.push_image(reg, REPO, "odd", [ctrd.busybox_layer()], extra_index_entries=[
        {"mediaType": "application/octet-stream", "digest": odd_digest, "size": len(odd)}])
    ref = "%s/%s:odd" % (reg.hostport, REPO)
    mark = reg.mark()
    r, took = c.pull(ref, node.hosts, timeout=60)
    print("\noctet-stream index: ctr exit %d after %.2fs: %s"
          % (r.returncode, took, (r.stdout + r.stderr).strip().splitlines()[-1:]))
    assert took < 30
    if r.returncode != 0:  # a clean failure names the problem
        assert "error" in (r.stdout + r.stderr).lower()
    # Afterwards: nothing keeps asking, and the daemon is idle.
    reg.settle()
    before = len(reg.requests())
    t0 = ctrd.cpu_ticks(d.proc.pid)
    time.sleep(3)
    ticks = ctrd.cpu_ticks(d.proc.pid) - t0
    after = len(reg.requests())
    hz = os.sysconf("SC_CLK_TCK")
    print("daemon CPU over 3 s after the pull: %.2f s; registry requests meanwhile: %d"
          % (ticks / hz, after - before))
    assert ticks / hz < 0.3, ticks
    assert after == before
    odd_reqs = [x for x in reg.requests()[mark:] if odd_digest in x.path]
    assert len(odd_reqs) <= 4, odd_reqs
    if r.returncode == 0:
        run = c.run(ref, "hello2", "/bin/busybox", "echo", "hello")
        assert run.returncode == 0 and run.stdout.strip() == "hello", run.stdout + run.stderr


def test_registry_down(node):
    reg, d, c = node.registry, node.daemon, node.ctrd
    img = ctrd.push_image(reg, REPO, "v2", [ctrd.busybox_layer()])
    other = ctrd.push_image(reg, REPO, "never", [ctrd.tar_layer([("x", b"never pulled", 0o644)])])
    ref = "%s/%s:v2" % (reg.hostport, REPO)
    r, _t = c.pull(ref, node.hosts)
    assert r.returncode == 0, r.stdout + r.stderr
    c.remove_image(ref)
    reg.stop()

    by_digest = "%s/%s@%s" % (reg.hostport, REPO, img["manifest"])
    r, took = c.pull(by_digest, node.hosts)
    assert r.returncode == 0, r.stdout + r.stderr
    run = c.run(by_digest, "hello3", "/bin/busybox", "echo", "hello")
    assert run.returncode == 0 and run.stdout.strip() == "hello", run.stdout + run.stderr
    print("\nregistry down: cached image by digest pulled in %.2fs" % took)

    # By tag: the last known mapping, flagged as stale.
    c.remove_image(by_digest)
    r, took_tag = c.pull(ref, node.hosts)
    assert r.returncode == 0, r.stdout + r.stderr
    assert d.log_lines(r"mirror serving a stale tag", levels=("warning",))

    # Never pulled: a quick, clear error.
    r, took_miss = c.pull("%s/%s@%s" % (reg.hostport, REPO, other["manifest"]), node.hosts,
                          timeout=60)
    msg = (r.stdout + r.stderr).strip()
    print("registry down: stale tag %.2fs; uncached image fails in %.2fs: %s"
          % (took_tag, took_miss, msg.splitlines()[-1:]))
    assert r.returncode != 0
    assert took_miss < 10, took_miss
    assert "connection refused" in msg, msg  # the origin's own error, not the mirror's


def test_two_nodes_pull_from_peer(build_dir, net, tmp_path):
    """Node B (its own network namespace, containerd and daemon) pulls every layer from node A;
    the registry serves B only the tag resolution. Each node's containerd talks to its own
    mirror on 127.0.0.1:5000 inside its namespace."""
    why = ctrd.available()
    if why:
        pytest.skip(why)
    ctrds = []
    try:
        s = net.add_subnet()
        a_host, b_host = net.add_host("a", s), net.add_host("b", s)
        reg = net.registry(net.add_host("reg", s))
        peers = ",".join("%s:5001" % h.ip for h in (a_host, b_host))
        nodes = [net.daemon(build_dir, h, registries=[reg],
                            extra_args=["--advertise-address", h.ip, "--peers", peers,
                                        "--mirror-listen", "127.0.0.1:5000"])
                 for h in (a_host, b_host)]
        # An index: the tag names it, the image's manifest is fetched by digest (shared
        # between nodes like a blob), then its config and layer (blobs).
        img = ctrd.push_image(reg, REPO, "v1", [ctrd.busybox_layer()], index=True)
        ref = "%s/%s:v1" % (reg.hostport, REPO)
        blobctl = os.path.join(build_dir, "blobctl")
        hosts = ctrd.write_hosts(blobctl, str(tmp_path / "hosts"), reg.hostport, "127.0.0.1:5000")
        times, layer_served, by_digest = [], [], []
        for name, h in (("a", a_host), ("b", b_host)):
            # nsenter --net, not `ip netns exec` (h.prefix): that one mounts a fresh /sys,
            # hiding the cgroup mounts runc needs.
            c = ctrd.Containerd(tmp_path / ("containerd-" + name),
                                prefix=["nsenter", "--net=" + h.nspath]).start()
            ctrds.append(c)
            mark = reg.mark()
            r, took = c.pull(ref, hosts)
            assert r.returncode == 0, r.stdout + r.stderr
            run = c.run(ref, "hello-" + name, "/bin/busybox", "echo", "hello")
            assert run.returncode == 0 and run.stdout.strip() == "hello", run.stdout + run.stderr
            reqs = reg.requests()[mark:]
            times.append(took)
            layer_served.append(layer_bytes(reqs, img))
            # Content-addressed things the registry served: manifests by digest, the config.
            by_digest.append(sorted(r.path for r in reqs if r.method == "GET" and (
                "/manifests/sha256:" in r.path or r.path.endswith("/blobs/" + img["config"]))))
            if name == "a":
                # What B fetches by digest (manifest, config, layer) is in the directory,
                # held by A, before B pulls: B's pull must not race A's first announce.
                for dg in [img["manifest"], img["config"]] + img["layers"]:
                    net.wait_announced(nodes, [nodes[0]], dg)
        print("\npull A (registry) %.2fs, %d layer bytes from the registry; "
              "B (peer) %.2fs, %d layer bytes from the registry"
              % (times[0], layer_served[0], times[1], layer_served[1]))
        print("registry GETs by digest: A %s; B %s" % (by_digest[0], by_digest[1]))
        assert layer_served[0] == img["layer_bytes"]
        assert layer_served[1] == 0
        assert by_digest[0], "A's pull fetched nothing by digest from the registry?"
        assert by_digest[1] == [], "B fetched %s from the registry, not from A" % by_digest[1]
        assert nodes[1].alive()
    finally:
        for c in ctrds:
            c.stop()
