"""pytest fixtures for the p2pblobs integration tests (see harness.py for the classes).

- build_dir:        $P2PBLOBS_BUILD (holds p2pblobsd and blobctl)
- registry:         one real docker-registry for the whole session, with the sample blobs pushed
- blobs:            name -> Blob(repo, data, digest, ref) of those sample blobs
- private_registry: a fresh registry for tests that break it (stop it, corrupt its files)
- daemon_factory:   make(registries=[...], extra_args=[...], expect_log=[...], **kw) -> started
                    Daemon; every daemon is stopped and unmounted at teardown, and the test
                    errors if a daemon died unexpectedly, did not stop cleanly, or its log holds
                    a sanitizer report or an error/crit line that no expect_log declared.
- net:              a netns.Net whose daemons get the same checks.

Markers:
- root:             needs root and /dev/fuse. Set here on every test that uses a fixture that
                    mounts (MOUNT_FIXTURES); a test that mounts some other way says so with
                    @pytest.mark.root. Skipped, with the reason, when not root.
- expect_log(r"regex", ...): error/crit lines the test's daemons may log (re.search on the
                    whole line, e.g. r"origin fetch failed"); on a function, class or module
                    (pytestmark), all of them apply. Per daemon: Daemon(expect_log=[...]),
                    daemon_factory(expect_log=[...]), net.daemon(..., expect_log=[...]) or
                    d.expect_log(r"...").
"""

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import MiB, KiB, Blob  # noqa: E402

REPO = "p2pblobs/test"

# name -> (seed, size)
SAMPLE_BLOBS = {
    "big64": (1, 64 * MiB),
    "b32": (2, 32 * MiB),
    "b8": (3, 8 * MiB),
    "one_mib": (4, 1 * MiB),
    "small200k": (5, 200 * KiB),
    "b3": (6, 3 * MiB + 12345),
}


# Fixtures that mount FUSE (and, for net, make network namespaces): a test using any of them,
# directly or through another fixture, is a root test.
MOUNT_FIXTURES = frozenset({"daemon_factory", "net"})


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "root: needs root and /dev/fuse (real FUSE mounts); set automatically on "
                   "tests using %s" % ", ".join(sorted(MOUNT_FIXTURES)))
    config.addinivalue_line(
        "markers", "expect_log(*regex): the test's daemons may log error/crit lines matching "
                   "one of REGEX; any other error/crit line or a sanitizer report fails it")


def expected_log(node):
    """The regexes of every expect_log marker on NODE (function, class, module)."""
    out = []
    for m in node.iter_markers("expect_log"):
        out += list(m.args)
    return out


def pytest_collection_modifyitems(config, items):
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (FUSE mounts, drop_caches, tmpfs)"
    elif not os.path.exists("/dev/fuse"):
        reason = "needs /dev/fuse"
    for item in items:
        for pattern in expected_log(item):
            try:
                re.compile(pattern)
            except (re.error, TypeError) as e:
                raise pytest.UsageError("%s: bad expect_log pattern %r: %s"
                                        % (item.nodeid, pattern, e))
        if MOUNT_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.root)
        if reason and item.get_closest_marker("root"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="session")
def build_dir():
    d = os.environ.get("P2PBLOBS_BUILD")
    if not d:
        pytest.skip("P2PBLOBS_BUILD is not set (run through `make integration`)")
    for b in ("p2pblobsd", "blobctl"):
        p = os.path.join(d, b)
        if not os.access(p, os.X_OK):
            pytest.fail("%s not found or not executable (P2PBLOBS_BUILD=%s)" % (p, d))
    return os.path.abspath(d)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    if not os.access(harness.REGISTRY_BIN, os.X_OK):
        pytest.skip("docker-registry is not installed")
    reg = harness.Registry(tmp_path_factory.mktemp("registry"))
    reg.start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def blobs(registry):
    out = {}
    for name, (seed, size) in SAMPLE_BLOBS.items():
        data = harness.gen_bytes(seed, size)
        digest = registry.push_blob(REPO, data)
        out[name] = Blob(name, REPO, data, digest, registry)
    return out


@pytest.fixture
def private_registry(tmp_path):
    if not os.access(harness.REGISTRY_BIN, os.X_OK):
        pytest.skip("docker-registry is not installed")
    reg = harness.Registry(tmp_path / "registry")
    reg.start()
    yield reg
    if reg.proc is not None:
        try:
            reg.resume()
        except (OSError, AttributeError):
            pass
    reg.stop()


@pytest.fixture
def daemon_factory(build_dir, tmp_path, request):
    made = []

    marked = expected_log(request.node)

    def make(registries=(), extra_args=(), start=True, expect_log=(), **kw):
        d = harness.Daemon(build_dir, tmp_path / ("d%d" % len(made)), registries=registries,
                           extra_args=extra_args, expect_log=marked + list(expect_log), **kw)
        made.append(d)
        if start:
            d.start()
        return d

    yield make

    errors = []
    for d in made:
        try:
            d.cleanup()
        except Exception as e:  # keep cleaning the others
            errors.append("cleanup of %s: %s" % (d.workdir, e))
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for d in made:
            print("\n---- %s (tail) ----\n%s" % (d.log_path, d.log_text()[-6000:]))
    for d in made:
        try:
            d.check_health()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


# --------------------------------------------------------------------------- multi-host net

@pytest.fixture
def net(tmp_path, request):
    """A netns.Net for one test: hosts in network namespaces behind a router namespace. Add a
    registry (net.registry(host)), dnsmasq (net.dnsmasq(host)) and daemons
    (net.daemon(build_dir, host, ...)). At teardown every daemon gets SIGTERM (exit 0 expected),
    everything started is killed, every namespace deleted; the test errors if a daemon died
    unexpectedly, did not stop cleanly, or logged a sanitizer report or an undeclared
    error/crit line (see expect_log)."""
    import netns
    why = netns.available()
    if why:
        pytest.skip(why)
    n = netns.Net(tmp_path / "net", expect_log=expected_log(request.node))
    errors = []
    try:
        yield n
    finally:
        errors += n.stop_daemons()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for d in n.daemons:
                print("\n---- %s on %s %s (tail) ----\n%s"
                      % (d.log_path, d.host.name, d.host.ip, d.log_text()[-6000:]))
        errors += n.health_errors()
        n.teardown()
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)
