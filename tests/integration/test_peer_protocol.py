"""The peer protocol on --listen, spoken by hand: what a node serves, and what it does with bad
input (a clear status, nothing lost, nothing spinning). One daemon on loopback whose only peer
is a closed port: enough to turn the peer layer on."""

import hashlib
import http.client
import json
import os
import time

import harness
import liar

MiB = harness.MiB
REPO = "p2pblobs/proto"


def request(listen, method, path, body=None, headers=None):
    host, port = listen.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peered(registry, daemon_factory):
    dead = "127.0.0.1:%d" % harness.free_port()
    d = daemon_factory(registries=[registry],
                       extra_args=["--advertise-address", "127.0.0.1", "--peers", dead])
    return d


def test_serves_held_chunks_only(registry, daemon_factory):
    data = harness.gen_bytes(71, 4 * MiB + 100)
    digest = registry.push_blob(REPO, data)
    d = peered(registry, daemon_factory)
    d.add(registry.ref(REPO, digest))
    path = "/v2/any/name/blobs/" + digest
    mark = registry.mark()

    # Registered, nothing held: HEAD knows the size, a chunk is 416, and nothing is fetched.
    st, hdr, _ = request(d.listen, "HEAD", path)
    assert st == 200 and int(hdr["Content-Length"]) == len(data), (st, hdr)
    st, _, _ = request(d.listen, "GET", path, headers={"Range": "bytes=0-1048575"})
    assert st == 416
    assert registry.total_bytes_served(since=mark) == 0

    # Read chunk 1 through the mount: the node holds it now, and serves it with its digest.
    assert harness.pread_exact(d.blob_path(digest), MiB + 10, 10) == data[MiB + 10:MiB + 20]
    # The read was answered from the landed bytes, before write-back: held a moment later.
    harness.wait_until(lambda: d.stat()["cache"]["chunks_present"] >= 1, 10,
                       what="chunk 1 to be written")
    st, hdr, body = request(d.listen, "GET", path, headers={"Range": "bytes=1048576-2097151"})
    assert st == 206 and body == data[MiB:2 * MiB]
    assert hdr["Content-Range"] == "bytes 1048576-2097151/%d" % len(data)
    assert hdr["X-P2PBlobs-Chunk-Digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
    # A range inside the held chunk is fine; one reaching into a missing chunk is not.
    st, _, body = request(d.listen, "GET", path, headers={"Range": "bytes=1048586-1048595"})
    assert st == 206 and body == data[MiB + 10:MiB + 20]
    st, _, _ = request(d.listen, "GET", path, headers={"Range": "bytes=1048576-3145727"})
    assert st == 416
    # Unknown blobs are 404 at once.
    other = "sha256:" + "0" * 64
    st, _, _ = request(d.listen, "GET", "/v2/x/blobs/" + other, headers={"Range": "bytes=0-9"})
    assert st == 404

    # The whole blob, once held, streams in one answer.
    assert harness.read_file(d.blob_path(digest)) == data
    st, _, body = request(d.listen, "GET", path)
    assert st == 200 and body == data


def test_bad_input_gets_a_clear_status(registry, daemon_factory):
    data = harness.gen_bytes(72, 2 * MiB)
    digest = registry.push_blob(REPO, data)
    d = peered(registry, daemon_factory)
    d.add(registry.ref(REPO, digest))
    assert harness.read_file(d.blob_path(digest)) == data
    path = "/v2/x/blobs/" + digest
    cases = [
        ("GET", "/v2/x/blobs/sha256:XYZ", None, {}, 404),
        ("GET", "/v2/x/blobs/md5:" + "0" * 32, None, {}, 404),
        ("GET", path, None, {"Range": "bytes=%d-" % len(data)}, 416),
        ("GET", path, None, {"Range": "bytes=9-1"}, 200),           # malformed: whole blob
        ("GET", path, None, {"Range": "bytes=0-1,5-9"}, 200),       # several ranges: whole
        ("DELETE", path, None, {}, 405),
        ("POST", "/p2p/v1/announce", b"{not json", {}, 400),
        ("POST", "/p2p/v1/announce", json.dumps({"node": "1.2.3.4:5001"}).encode(), {}, 400),
        ("POST", "/p2p/v1/announce",
         json.dumps({"node": "1.2.3.4:5001", "chunk_size": 65536, "blobs": []}).encode(), {}, 409),
        ("POST", "/p2p/v1/announce", b"x" * (9 << 20), {}, 413),
        ("GET", "/p2p/v1/locate/sha256:" + "1" * 64, None, {}, 404),
        ("GET", "/p2p/v1/locate/" + digest + "?chunk=zz&node=1.2.3.4:5001", None, {}, 400),
        ("GET", "/p2p/v1/locate/" + digest + "?chunk=0&node=nonsense", None, {}, 400),
    ]
    for method, p, body, headers, want in cases:
        st, _, _ = request(d.listen, method, p, body=body, headers=headers)
        assert st == want, (method, p, headers, st, want)

    # Nothing was lost, and the node answers and idles afterwards.
    st, _, body = request(d.listen, "GET", path, headers={"Range": "bytes=0-1048575"})
    assert st == 206 and body == data[:MiB]
    assert d.stat()["cache"]["chunks_present"] == 2
    before = cpu_seconds(d.proc.pid)
    time.sleep(3)
    assert cpu_seconds(d.proc.pid) - before < 0.5, "the daemon keeps busy after bad input"


def test_locate_answers_and_claims(registry, daemon_factory):
    """With itself as the only live home, the node answers locates: who holds what, the chunk
    digests, and a claim for the first asker of a chunk nobody holds."""
    data = harness.gen_bytes(73, 3 * MiB)
    digest = registry.push_blob(REPO, data)
    d = peered(registry, daemon_factory)
    d.add(registry.ref(REPO, digest))
    assert harness.pread_exact(d.blob_path(digest), 0, 10) == data[:10]
    loc = "/p2p/v1/locate/" + digest

    def holders():
        st, _, body = request(d.listen, "GET", loc)
        assert st in (200, 404), st  # 404 until the node's first announce reached itself
        ans = json.loads(body) if st == 200 else {}
        return ans if ans.get("holders") else None
    ans = harness.wait_until(holders, 10, what="the node's own announce")
    assert ans["size"] == len(data) and ans["chunk_size"] == MiB
    assert ans["holders"][0]["node"] == "127.0.0.1:" + d.listen.rsplit(":", 1)[1]
    # Chunk 0, read first, lands where the frontier is: its chain value (util/chain.h), not
    # a plain digest; either lets a reader check it.
    chain0 = liar.chain_values(data, MiB)[0]
    assert [0, hashlib.sha256(data[:MiB]).hexdigest()] in [
        [i, h.split(":")[-1]] for i, h in ans.get("digests", [])] or \
        [0, chain0] in [[i, h.split(":")[-1]] for i, h in ans.get("chain", [])], ans

    st, _, body = request(d.listen, "GET", loc + "?chunk=2&node=10.9.9.9:5001")
    first = json.loads(body)
    assert st == 200 and first["claim"] == {"chunk": 2, "granted": True}, first
    st, _, body = request(d.listen, "GET", loc + "?chunk=2&node=10.9.9.8:5001")
    second = json.loads(body)
    assert second["claim"]["granted"] is False, second
    assert any(f["node"] == "10.9.9.9:5001" for f in second.get("fetching", [])), second
