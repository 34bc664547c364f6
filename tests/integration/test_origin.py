"""The origin client against real servers: TLS verification, bearer tokens with config.json
credentials, redirects to another host, and the daemon's INI config file."""

import http.client
import json
import os
import ssl
import subprocess

import pytest

import harness
from authfront import AuthFront

REPO = "p2pblobs/origin"


class TLSRegistry(harness.Registry):
    """docker-registry serving HTTPS with a certificate from our own test CA."""

    def __init__(self, workdir, ca_dir):
        self.ca_dir = ca_dir
        super().__init__(workdir)

    def _write_config(self):
        super()._write_config()
        with open(self.config_path, "a") as f:
            f.write("  tls:\n    certificate: %s/server.pem\n    key: %s/server.key\n"
                    % (self.ca_dir, self.ca_dir))

    def request(self, method, path, body=None, headers=None, timeout=30):
        ctx = ssl.create_default_context(cafile=os.path.join(self.ca_dir, "ca.pem"))
        c = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=ctx)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, r.headers, r.read()
        finally:
            c.close()


def make_ca(d):
    """A CA and a server certificate for IP 127.0.0.1, with the openssl CLI."""
    def run(*a):
        subprocess.run(a, cwd=d, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=p2pblobs test CA", "-keyout", "ca.key", "-out", "ca.pem")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")


@pytest.fixture
def tls_registry(tmp_path):
    ca = tmp_path / "ca"
    ca.mkdir()
    make_ca(str(ca))
    reg = TLSRegistry(tmp_path / "registry", str(ca))
    reg.start()
    yield reg
    reg.stop()


def test_tls_registry_verified_with_ca_file(tls_registry, daemon_factory):
    data = harness.gen_bytes(31, 3 * harness.MiB + 123)
    digest = tls_registry.push_blob(REPO, data)
    ca = os.path.join(tls_registry.ca_dir, "ca.pem")
    d = daemon_factory(extra_args=["--ca-file", ca])  # no --insecure-registry: HTTPS only
    assert d.add(tls_registry.ref(REPO, digest))[1] == len(data)
    assert harness.sha256_file(d.blob_path(digest))[0] == digest


def test_tls_registry_refused_without_trust(tls_registry, daemon_factory):
    data = harness.gen_bytes(32, 100 * harness.KiB)
    digest = tls_registry.push_blob(REPO, data)
    d = daemon_factory()
    r = d.blobctl("add", tls_registry.ref(REPO, digest))
    assert r.returncode == 1, r
    assert "certificate" in r.stderr.lower() or "ssl" in r.stderr.lower(), r.stderr
    assert not os.path.exists(d.blob_path(digest))


def test_tls_registry_never_downgraded_to_http(tls_registry, daemon_factory):
    """A registry not listed as insecure is only ever reached over HTTPS: a plain-HTTP-only
    registry at that address fails rather than being used unencrypted."""
    plain = harness.Registry(os.path.join(tls_registry.workdir, "..", "plain"))
    plain.start()
    try:
        digest = plain.push_blob(REPO, harness.gen_bytes(33, 4096))
        d = daemon_factory()
        r = d.blobctl("add", plain.ref(REPO, digest))
        assert r.returncode == 1, r
        assert plain.blob_requests(digest) == [], "the daemon spoke plain HTTP to the registry"
    finally:
        plain.stop()


@pytest.fixture
def authfront(registry):
    f = AuthFront(registry)
    yield f
    f.close()


def write_docker_config(path, hostport, user, password):
    import base64
    auth = base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
    with open(path, "w") as f:
        json.dump({"auths": {hostport: {"auth": auth}}}, f)


def test_bearer_token_with_credentials_and_redirect(registry, authfront, daemon_factory, tmp_path):
    data = harness.gen_bytes(34, 5 * harness.MiB + 7)
    digest = registry.push_blob(REPO, data)
    cfg = tmp_path / "config.json"
    write_docker_config(cfg, authfront.hostport, authfront.user, authfront.password)
    d = daemon_factory(registries=[authfront.hostport],
                       extra_args=["--registry-config", str(cfg)])
    assert d.add(authfront.ref(REPO, digest))[1] == len(data)
    got = harness.read_file(d.blob_path(digest))
    assert got == data
    # One token fetched and reused for every chunk; the chunks came through the redirect, and
    # the bearer token never left the registry's host.
    assert authfront.token_requests == 1, authfront.token_requests
    assert authfront.cdn_requests >= 6
    assert authfront.cdn_saw_authorization == 0
    # The password is never logged.
    assert authfront.password not in d.log_text()


def test_bearer_token_refused_without_credentials(registry, authfront, daemon_factory):
    digest = registry.push_blob(REPO, harness.gen_bytes(35, 4096))
    d = daemon_factory(registries=[authfront.hostport])
    r = d.blobctl("add", authfront.ref(REPO, digest))
    assert r.returncode == 1, r
    assert "token" in r.stderr or "denied" in r.stderr or "credentials" in r.stderr, r.stderr
    # Refused once, not retried in a loop.
    assert authfront.token_requests <= 2, authfront.token_requests


def test_config_file_sets_options(registry, daemon_factory, tmp_path):
    conf = tmp_path / "p2pblobs.conf"
    conf.write_text("; a comment\n[cache]\ncache-budget = 24M\nchunk-size = 256K\n"
                    "[origin]\ninsecure-registry = %s\n" % registry.hostport)
    d = daemon_factory(config=str(conf))
    s = d.stat()
    assert s["cache"]["budget_bytes"] == 24 * harness.MiB
    assert s["chunk_size"] == 256 * harness.KiB
    data = harness.gen_bytes(36, harness.MiB + 5)
    digest = registry.push_blob(REPO, data)
    d.add(registry.ref(REPO, digest))  # the insecure registry came from the file
    assert harness.read_file(d.blob_path(digest)) == data


def test_flags_override_config_file(registry, daemon_factory, tmp_path):
    conf = tmp_path / "p2pblobs.conf"
    conf.write_text("cache-budget = 24M\n")
    d = daemon_factory(config=str(conf), extra_args=["--cache-budget", "32M"])
    assert d.stat()["cache"]["budget_bytes"] == 32 * harness.MiB


@pytest.mark.parametrize("text,needle", [
    ("cache-budget = lots\n", "cache-budget"),
    ("no-such-key = 1\n", "no-such-key"),
    ("chunk-size = 1K\n", "out of range"),
    ("[broken\n", "syntax error"),
])
def test_bad_config_file_is_a_clear_error(build_dir, tmp_path, text, needle):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    r = subprocess.run([os.path.join(build_dir, "p2pblobsd"), "--config", str(conf),
                        "--mountpoint", str(tmp_path / "mnt"), "--state-dir", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2, r
    assert needle in r.stderr, r.stderr
    assert not harness.is_mounted(str(tmp_path / "mnt"))
