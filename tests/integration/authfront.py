"""An auth-enforcing front for a real docker-registry, for testing p2pblobsd's origin client.

It plays the parts a real deployment splits over several hosts:
  - a registry that wants bearer tokens: /v2/... without "Authorization: Bearer <token>" is
    answered 401 with a WWW-Authenticate challenge naming the realm below;
  - a token service (/token) that hands out the token only to basic-auth credentials USER:PASS;
  - a CDN: authorised blob GETs are redirected (307) to /cdn/... on *another host name*
    (localhost instead of 127.0.0.1), which serves the bytes (Range included) from the real
    registry, and records whether an Authorization header leaked to it.
Standard library only; threads; stops with close().
"""

import base64
import http.client
import http.server
import json
import threading


class AuthFront:
    def __init__(self, registry, user="puller", password="s3cret", token="tok-123"):
        self.registry = registry
        self.user, self.password, self.token = user, password, token
        self.token_requests = 0
        self.unauthorised = 0
        self.cdn_requests = 0
        self.cdn_saw_authorization = 0
        self.lock = threading.Lock()
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _upstream(self, path):
                c = http.client.HTTPConnection(front.registry.host, front.registry.port, timeout=30)
                headers = {}
                if self.headers.get("Range"):
                    headers["Range"] = self.headers["Range"]
                c.request(self.command, path, headers=headers)
                r = c.getresponse()
                body = r.read()
                c.close()
                keep = [(k, v) for k, v in r.getheaders()
                        if k.lower() in ("content-range", "content-type", "docker-content-digest",
                                         "accept-ranges")]
                if self.command == "HEAD":
                    keep.append(("X-Length", r.getheader("Content-Length", "0")))
                return r.status, body, keep

            def _handle(self):
                host = self.headers.get("Host", "")
                if self.path.startswith("/token"):
                    with front.lock:
                        front.token_requests += 1
                    want = "Basic " + base64.b64encode(
                        ("%s:%s" % (front.user, front.password)).encode()).decode()
                    if self.headers.get("Authorization") != want:
                        return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
                    body = json.dumps({"token": front.token, "expires_in": 300}).encode()
                    return self._send(200, body, [("Content-Type", "application/json")])
                if self.path.startswith("/cdn/"):
                    with front.lock:
                        front.cdn_requests += 1
                        if self.headers.get("Authorization"):
                            front.cdn_saw_authorization += 1
                    status, body, hdrs = self._upstream(self.path[len("/cdn"):])
                    return self._send(status, body, hdrs)
                if not self.path.startswith("/v2/"):
                    return self._send(404)
                if self.headers.get("Authorization") != "Bearer " + front.token:
                    with front.lock:
                        front.unauthorised += 1
                    repo = self.path[len("/v2/"):].split("/blobs/")[0]
                    challenge = ('Bearer realm="http://%s/token",service="authfront",'
                                 'scope="repository:%s:pull"' % (front.hostport, repo))
                    return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                                      [("WWW-Authenticate", challenge)])
                if self.command == "GET" and "/blobs/" in self.path and host.startswith("127."):
                    where = "http://localhost:%d/cdn%s" % (front.port, self.path)
                    return self._send(307, b"", [("Location", where)])
                status, body, hdrs = self._upstream(self.path)
                if self.command == "HEAD":
                    length = dict(hdrs).pop("X-Length", "0")
                    hdrs = [(k, v) for k, v in hdrs if k != "X-Length"]
                    self.send_response(status)
                    for k, v in hdrs:
                        self.send_header(k, v)
                    self.send_header("Content-Length", length)
                    self.end_headers()
                    return None
                return self._send(status, body, hdrs)

            do_GET = _handle
            do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.hostport = "127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def ref(self, repo, digest):
        return "%s/%s@%s" % (self.hostport, repo, digest)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
