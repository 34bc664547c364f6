"""The control API's query strings as the daemon sees them over its socket (net/api_routes.h:
every route with the keys it takes, parsed by net/route.c): a key a route does not take, a
key given twice and an escape that is not one are 400 with a reason, before any handler runs;
escaped keys and values arrive decoded; a request blobctl builds (layer routes included)
arrives as the route it meant. Raw HTTP over the unix socket, since blobctl cannot send any
of the refused requests."""

import http.client
import json
import socket
import urllib.parse

import harness
import layerimg as L


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def api(d, method, target):
    """METHOD TARGET (path and raw query, sent as given) on D's control socket: (status,
    JSON body)."""
    c = UnixHTTPConnection(d.socket_path)
    try:
        c.request(method, target, headers={"Content-Length": "0"} if method == "POST" else {})
        r = c.getresponse()
        body = r.read()
        return r.status, json.loads(body) if body else None
    finally:
        c.close()


def test_query_refusals(registry, blobs, daemon_factory):
    b = blobs["small200k"]
    d = daemon_factory(registries=[registry])
    hexd = "sha256:" + "0" * 64
    cases = [
        # (method, target, status, words in the reason)
        ("GET", "/v1/stat?verbose=1", 400, "verbose"),           # a key no route takes
        ("GET", "/v1/stat?ref=x", 400, "ref"),                   # a key another route takes
        ("POST", "/v1/blobs?ref=%s&wait=1" % b.ref, 400, "wait"),
        ("POST", "/v1/blobs?ref=a&ref=b", 400, "twice"),         # which one? neither
        ("POST", "/v1/layers?ref=a&ref=a", 400, "twice"),
        ("POST", "/v1/blobs?ref=a%2", 400, "escape"),            # not an escape
        ("POST", "/v1/blobs?ref=a%00b", 400, "escape"),          # not a C string
        ("POST", "/v1/blobs?=x", 400, "empty"),
        ("POST", "/v1/blobs", 400, "missing ref"),
        ("POST", "/v1/layers?wait=1", 400, "missing ref"),
        ("GET", "/v1/layers/%s/files?path=a&path=b" % hexd, 400, "twice"),
        ("GET", "/v1/layers/%s?path=a" % hexd, 400, "path"),     # ls takes it, show does not
        ("GET", "/v1/stat?" + "x" * 20000, 400, "too long"),
        # The path still comes first: 404 and 405 whatever the query says.
        ("GET", "/v1/nothing?ref=a&ref=b", 404, "no such endpoint"),
        ("DELETE", "/v1/layers?nope=%", 405, "method not allowed"),
    ]
    for method, target, status, words in cases:
        st, body = api(d, method, target)
        assert st == status, "%s %s: %d %r" % (method, target[:80], st, body)
        assert words in body["error"], "%s %s: %r" % (method, target[:80], body)
    assert d.stat()["blobs"] == 0, "a refused request registered a blob"

    # Escapes decode, in keys and values; empty pairs are nothing.
    ref = b.ref.replace("/", "%2F").replace("@", "%40").replace(":", "%3a")
    st, body = api(d, "POST", "/v1/blobs?&%72ef=" + ref + "&")
    assert st == 200, body
    assert body["digest"] == b.digest and body["size"] == b.size
    # The routes without arguments answer as before when given none, or an empty query.
    for target in ("/v1/stat", "/v1/stat?", "/v1/blobs", "/v1/peers", "/v1/layers"):
        st, body = api(d, "GET", target)
        assert st == 200, "%s: %d %r" % (target, st, body)
    st, body = api(d, "GET", "/v1/blobs/" + b.digest)
    assert st == 200 and body["digest"] == b.digest
    assert d.alive()


def test_layer_routes_from_the_table(registry, blobs, daemon_factory):
    """blobctl's layer commands build their requests from the table: an absent layer is 404
    (exit 4) on both layer routes with a digest, and a duplicate option is blobctl's usage
    error, never sent."""
    d = daemon_factory(registries=[registry])
    absent = "sha256:" + "1" * 64
    r = d.blobctl("layer", "ls", absent, "/etc")
    assert r.returncode == 4 and "no such layer" in r.stderr, (r.returncode, r.stderr)
    st, body = api(d, "GET", "/v1/layers/" + absent)
    assert st == 404 and "no such layer" in body["error"], (st, body)
    r = d.blobctl("layer", "add", registry.ref("p2pblobs/x", absent), "--diff-id", absent,
                  "--diff-id", absent)
    assert r.returncode == 2 and "twice" in r.stderr, (r.returncode, r.stderr)
    r = d.blobctl("layers", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [], (r.returncode, r.stdout, r.stderr)
    assert d.alive()


def test_layer_path_with_reserved_bytes(registry, daemon_factory):
    """A path argument made of the bytes the query syntax reserves ('&', '=', '+', '%', '?',
    '#', ';', a space) and UTF-8 goes from blobctl's encoder (api_build_request) through the
    daemon's decoder (route_query_parse) unchanged: layer ls finds the directory and the file
    in it. A script's form encoding (a space as '+', a plus as %2B: Python's urlencode) is
    understood as MHD's own argument table understood it before the daemon parsed queries
    itself, and so a raw '+' is a space: the name with its plus unescaped names nothing."""
    odd = "q a&b=c+d%2Fe?f#g;h \u00e9"
    inner = odd + "/f+1&2=3"
    lay = L.Layer([L.Entry(odd, L.DIR, mode=0o755), L.Entry(inner, L.REG, b"x\n"),
                   L.Entry("q a", L.REG, b"a decoy: the path cut at its '&'\n")], "tar")
    dg = L.push_layer(registry, "p2pblobs/routes12", lay)
    d = daemon_factory(registries=[registry])
    r = d.blobctl("layer", "add", registry.ref("p2pblobs/routes12", dg), "--wait", "120",
                  "--json", timeout=150)
    assert r.returncode == 0 and json.loads(r.stdout)["ready"], (r.returncode, r.stdout, r.stderr)

    r = d.blobctl("layer", "ls", dg, odd, "--json")
    assert r.returncode == 0, r.stderr
    assert [e["path"] for e in json.loads(r.stdout)] == [inner], r.stdout
    r = d.blobctl("layer", "ls", dg, inner, "--json")
    assert r.returncode == 0, r.stderr
    assert [(e["path"], e["size"]) for e in json.loads(r.stdout)] == [(inner, 2)], r.stdout
    r = d.blobctl("layer", "ls", dg, odd.replace("+", " "))    # a plus is not a space
    assert r.returncode == 4 and "no such path" in r.stderr, (r.returncode, r.stderr)

    st, body = api(d, "GET", "/v1/layers/%s/files?%s"
                   % (dg, urllib.parse.urlencode({"path": odd})))
    assert st == 200 and [e["path"] for e in body] == [inner], (st, body)
    st, body = api(d, "GET", "/v1/layers/%s/files?path=%s"
                   % (dg, urllib.parse.quote(odd, safe="+")))
    assert st == 404 and "no such path" in body["error"], (st, body)
    assert d.alive()
