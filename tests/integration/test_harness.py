"""The harness's own checks, which every other test relies on: a daemon's error lines fail a
test unless declared (expect_log), a sanitizer report always does, and the `root` marker comes
from the fixtures."""

import socket

import pytest

import harness

CLEAN = """==== start /x/p2pblobsd --foreground --log-level debug
<6>level=info index loaded blobs=0
<4>level=warning origin fetch failed blob=ab err="timed out"
fuse: unknown option (FUSE's own message, no level)
<5>level=notice stopped
"""


def test_log_problems_levels():
    assert harness.log_problems(CLEAN) == []
    err = "<3>level=error cannot open index path=/s/index.db err=\"No space left on device\"\n"
    crit = "<2>level=crit out of memory what=engine\n"
    for line in (err, crit):
        got = harness.log_problems(CLEAN + line)
        assert len(got) == 1 and line.strip() in got[0], got
    # Declared: a narrow regex excuses its line and nothing else.
    assert harness.log_problems(CLEAN + err, [r"cannot open index"]) == []
    got = harness.log_problems(CLEAN + err + crit, [r"cannot open index"])
    assert len(got) == 1 and "out of memory" in got[0] and "cannot open index" not in got[0]


def test_log_problems_sanitizers_always_fail():
    reports = ["==4242==ERROR: AddressSanitizer: heap-use-after-free on address 0x6020",
               "fs/fuse.c:120:7: runtime error: signed integer overflow",
               "==4242==ERROR: LeakSanitizer: detected memory leaks",
               "SUMMARY: UndefinedBehaviorSanitizer: undefined-behavior fs/fuse.c:120:7"]
    for r in reports:
        got = harness.log_problems(CLEAN + r + "\n", expected=[r".*"])
        assert len(got) == 1 and r in got[0], (r, got)


def _busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_daemon_error_line_is_caught(daemon_factory):
    """A real daemon that fails to start (its HTTP port is taken) logs an error line: the
    harness reports it until it is declared for that daemon."""
    with _busy_port() as s:
        d = daemon_factory(start=False, listen="127.0.0.1:%d" % s.getsockname()[1])
        d.start(wait=False)
        d.expected_exit = True
        assert d.proc.wait(30) != 0
    got = d.log_problems()
    assert len(got) == 1 and "level=error cannot serve HTTP" in got[0], got
    d.expect_log(r"level=error cannot serve HTTP listen=127\.0\.0\.1:\d+ err=\"?Address already")
    assert d.log_problems() == []


@pytest.mark.expect_log(r"level=error cannot serve HTTP listen=127\.0\.0\.1:\d+ err=\"?Address")
def test_marker_reaches_the_daemons(daemon_factory, request):
    with _busy_port() as s:
        d = daemon_factory(start=False, listen="127.0.0.1:%d" % s.getsockname()[1])
        assert d.expected_log, "daemon_factory did not pass the expect_log marker on"
        d.start(wait=False)
        d.expected_exit = True
        assert d.proc.wait(30) != 0
    assert d.log_problems() == []
    assert request.node.get_closest_marker("root"), "daemon_factory did not mark the test root"


def test_no_fixture_no_root_marker(request):
    assert request.node.get_closest_marker("root") is None
