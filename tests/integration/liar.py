"""A lying cluster member, for tests/integration/test_trust.py.

It speaks the peer protocol (peer/wire.h, peer/httpd.c) well enough to be believed as a
member and a home: /healthz answers 200, announces are accepted (and ignored), a locate of the
one blob it lies about names itself as holding every chunk and gives, for each chunk, the
digest of the bytes it will serve; and it serves those bytes — the blob's real bytes with one
byte flipped in every chunk (the first; with --flip last, the last) — for any Range, with
X-P2PBlobs-Chunk-Digest set to their sha256.
So its bytes match its own word everywhere it gives one.

  python3 liar.py --listen IP:PORT --blob FILE --digest sha256:HEX --source REG/REPO
                  --chunk-size N [--announce-to IP:PORT ...] [--announce-digests]
                  [--announce-verified] [--chain] [--no-digests] [--holder ID]
                  [--log FILE] [--flip first|last|none]

With --announce-to it also announces itself as a holder of every chunk to those homes, every
half second (with --announce-digests: with its made-up digests; --announce-verified: and
claiming it verified the whole blob). With --chain its locate answers, and its announces when
they carry digests, also give chain values (util/chain.h: the SHA-256 state after each chunk)
of its altered bytes, every chunk's but the last (whose value is the blob digest, which it
cannot forge); with --no-digests they give only those, no plain chunk digests. With --holder
its locate answers name that node, not itself, as holding every chunk (a home that points
elsewhere); with --flip none its bytes, and so its digests and chain values, are the blob's
own (an honest sender, or a home whose word is true). Every request is appended to --log as
one JSON line (method, path, range), so a test can tell it was asked.
"""

import argparse
import ctypes
import ctypes.util
import hashlib
import http.server
import json
import re
import socketserver
import sys
import threading
import time
import urllib.request


def altered(data, chunk_size, where="first"):
    """DATA with the first (WHERE "last": the last; "none": no) byte of every chunk flipped."""
    b = bytearray(data)
    if where == "none":
        return bytes(b)
    for off in range(0, len(b), chunk_size):
        b[off if where == "first" else min(off + chunk_size, len(b)) - 1] ^= 0xFF
    return bytes(b)


class _Sha256Ctx(ctypes.Structure):
    """OpenSSL's SHA256_CTX: the state words H are what a chain value is (util/chain.c)."""
    _fields_ = [("h", ctypes.c_uint32 * 8), ("Nl", ctypes.c_uint32), ("Nh", ctypes.c_uint32),
                ("data", ctypes.c_uint32 * 16), ("num", ctypes.c_uint32),
                ("md_len", ctypes.c_uint32)]


def chain_values(data, chunk_size):
    """The chain values of DATA's chunks but the last: the SHA-256 state, as hex of its eight
    big-endian words, after the bytes [0, (i + 1) * chunk_size). hashlib hides that state,
    libcrypto's low-level SHA256 functions expose it."""
    assert chunk_size % 64 == 0
    lib = ctypes.CDLL(ctypes.util.find_library("crypto"))
    ctx = _Sha256Ctx()
    lib.SHA256_Init(ctypes.byref(ctx))
    out = []
    for off in range(0, len(data) - chunk_size, chunk_size):
        piece = data[off:off + chunk_size]
        lib.SHA256_Update(ctypes.byref(ctx), piece, ctypes.c_size_t(len(piece)))
        out.append("".join("%08x" % w for w in ctx.h))
    return out


class State:
    def __init__(self, args):
        self.args = args
        with open(args.blob, "rb") as f:
            self.bad = altered(f.read(), args.chunk_size, args.flip)
        self.size = len(self.bad)
        self.nchunks = (self.size + args.chunk_size - 1) // args.chunk_size
        self.hex = args.digest.split(":", 1)[1]
        self.sha = [hashlib.sha256(self.chunk(i)).hexdigest() for i in range(self.nchunks)]
        self.chain = chain_values(self.bad, args.chunk_size) if args.chain else []
        self.log_lock = threading.Lock()

    def chunk(self, i):
        cs = self.args.chunk_size
        return self.bad[i * cs:(i + 1) * cs]

    def log(self, **kw):
        if not self.args.log:
            return
        with self.log_lock, open(self.args.log, "a") as f:
            f.write(json.dumps(kw) + "\n")

    def add_checks(self, obj):
        """Its made-up digests and (--chain) chain values, as peer/wire.h lists them."""
        if not self.args.no_digests:
            obj["digests"] = [[i, h] for i, h in enumerate(self.sha)]
        if self.chain:
            obj["chain"] = [[i, h] for i, h in enumerate(self.chain)]

    def locate_body(self):
        body = {
            "digest": self.args.digest, "size": self.size, "source": self.args.source,
            "chunk_size": self.args.chunk_size,
            "holders": [{"node": self.args.holder or self.args.listen,
                         "present": [[0, self.nchunks]]}],
        }
        self.add_checks(body)
        return json.dumps(body).encode()

    def announce_body(self):
        blob = {"digest": self.args.digest, "size": self.size, "source": self.args.source,
                "present": [[0, self.nchunks]]}
        if self.args.announce_digests:
            self.add_checks(blob)
        if self.args.announce_verified:
            blob["verified"] = True
        return json.dumps({"node": self.args.listen, "chunk_size": self.args.chunk_size,
                           "blobs": [blob]}).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None

    def log_message(self, *a):
        pass

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        self.state.log(method="POST", path=self.path)
        self._send(204 if self.path == "/p2p/v1/announce" else 404)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        st = self.state
        path = self.path.split("?", 1)[0]
        rng = self.headers.get("Range")
        st.log(method=self.command, path=self.path, range=rng)
        if path in ("/healthz", "/readyz"):
            return self._send(200, b"ok\n")
        if path == "/p2p/v1/locate/sha256:" + st.hex:
            return self._send(200, st.locate_body(), [("Content-Type", "application/json")])
        if path.startswith("/p2p/v1/locate/"):
            return self._send(404)
        m = re.fullmatch(r"/v2/.+/blobs/sha256:([0-9a-f]{64})", path)
        if not m or m.group(1) != st.hex:
            return self._send(404)
        start, end = 0, st.size - 1
        if rng:
            r = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not r:
                return self._send(416)
            start = int(r.group(1))
            end = int(r.group(2)) if r.group(2) else st.size - 1
            end = min(end, st.size - 1)
            if start > end:
                return self._send(416)
        body = st.bad[start:end + 1]
        hdrs = [("Content-Type", "application/octet-stream"),
                ("Content-Range", "bytes %d-%d/%d" % (start, end, st.size)),
                # Its own word about its own bytes: exactly what a reader must not believe.
                ("X-P2PBlobs-Chunk-Digest", "sha256:" + hashlib.sha256(body).hexdigest())]
        self._send(206 if rng else 200, body, hdrs)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def announcer(st, homes):
    body = st.announce_body()
    while True:
        for h in homes:
            try:
                req = urllib.request.Request("http://%s/p2p/v1/announce" % h, data=body,
                                             headers={"Content-Type": "application/json"})
                urllib.request.urlopen(req, timeout=2).read()
            except OSError:
                pass
        time.sleep(0.5)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--blob", required=True)
    p.add_argument("--digest", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--chunk-size", type=int, default=1 << 20)
    p.add_argument("--announce-to", action="append", default=[])
    p.add_argument("--announce-digests", action="store_true")
    p.add_argument("--announce-verified", action="store_true")
    p.add_argument("--chain", action="store_true", help="give chain values of its bytes too")
    p.add_argument("--no-digests", action="store_true", help="give no plain chunk digests")
    p.add_argument("--log")
    p.add_argument("--holder", help="the node its locate answers name as the holder")
    p.add_argument("--flip", choices=("first", "last", "none"), default="first",
                   help="which byte of every chunk it alters")
    args = p.parse_args()
    st = State(args)
    Handler.state = st
    host, port = args.listen.rsplit(":", 1)
    srv = Server((host, int(port)), Handler)
    if args.announce_to:
        threading.Thread(target=announcer, args=(st, args.announce_to), daemon=True).start()
    print("ready", flush=True)
    sys.stdout.flush()
    srv.serve_forever()


if __name__ == "__main__":
    main()
