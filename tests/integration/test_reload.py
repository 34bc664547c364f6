"""SIGHUP through a real daemon: which keys change live, which are logged as needing a restart
(every one the option table marks so), and what a deleted or replaced config file does."""

import os
import re
import shutil
import signal
import socket
import subprocess

import pytest

import harness
from harness import MiB

pytestmark = pytest.mark.root


def _write_conf(path, keys):
    with open(path, "w") as f:
        for k, v in keys.items():
            f.write("%s = %s\n" % (k, v))


def _file_daemon(daemon_factory, conf, registry):
    """A daemon whose --listen and --mirror-listen come from CONF, not the command line (the
    harness passes both as flags, which would win over the file on every reload)."""
    d = daemon_factory(registries=[registry], config=str(conf), start=False)
    base = harness.Daemon.argv

    def argv():
        a = base(d)
        out = []
        skip = False
        for x in a:
            if skip:
                skip = False
                continue
            if x in ("--listen", "--mirror-listen"):
                skip = True
                continue
            out.append(x)
        return out

    d.argv = argv
    d.start()
    return d


def _reloads(d):
    return len(d.log_lines(r"reloading configuration"))


def _hup(d, done_pattern):
    """SIGHUP and wait until the reload has logged DONE_PATTERN after its start line."""
    n = _reloads(d)
    d.proc.send_signal(signal.SIGHUP)
    harness.wait_until(lambda: _reloads(d) > n, 10, what="the reload to start")

    def finished():
        text = d.log_text()
        tail = text[text.rfind("reloading configuration"):]
        return re.search(done_pattern, tail)
    harness.wait_until(finished, 10, what="the reload to log %r" % done_pattern)


def _listening(port):
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_sighup_logs_every_changed_restart_only_key(registry, daemon_factory, tmp_path):
    conf = tmp_path / "p2pblobs.conf"
    port, mport = harness.free_port(), harness.free_port()
    _write_conf(conf, {"cache-budget": "64M", "listen": "127.0.0.1:%d" % port,
                       "mirror-listen": "off", "workers": "4"})
    d = _file_daemon(daemon_factory, conf, registry)
    assert _listening(port)

    new_port = harness.free_port()
    changed = {"listen": "127.0.0.1:%d" % new_port, "mirror-listen": "127.0.0.1:%d" % mport,
               "peers": "127.0.0.1:1", "peer-dns": "peers.invalid", "peer-port": "6001",
               "homes": "5", "peer-stall-timeout": "3s", "location-ttl": "90s",
               "workers": "2", "chunk-size": "256K"}
    keys = dict(changed)
    keys["cache-budget"] = "32M"          # live
    keys["shutdown-timeout"] = "3s"       # live
    _write_conf(conf, keys)
    _hup(d, r"shutdown timeout changed")
    log = d.log_text()
    tail = log[log.rfind("reloading configuration"):]
    for key in changed:
        lines = [l for l in tail.splitlines()
                 if "restart" in l and l.rstrip().endswith("key=%s" % key)]
        assert len(lines) == 1, "changed key %s: want one 'restart needed' line, got %r\n%s" % (
            key, lines, tail)
    for key in ("cache-budget", "shutdown-timeout", "log-level", "mountpoint"):
        assert not [l for l in tail.splitlines()
                    if "restart" in l and l.rstrip().endswith("key=%s" % key)], key
    # Live keys took effect; restart-only ones kept their running values.
    assert d.stat()["cache"]["budget_bytes"] == 32 * MiB
    assert d.stat()["chunk_size"] == MiB
    assert _listening(port) and not _listening(new_port) and not _listening(mport)
    assert d.stop() == 0


def test_sighup_with_config_file_deleted_keeps_running_config(registry, daemon_factory,
                                                              tmp_path):
    conf = tmp_path / "p2pblobs.conf"
    _write_conf(conf, {"cache-budget": "64M"})
    d = daemon_factory(registries=[registry], config=str(conf))
    assert d.stat()["cache"]["budget_bytes"] == 64 * MiB
    os.unlink(conf)
    _hup(d, r"configuration file is gone|cache budget changed")
    assert d.stat()["cache"]["budget_bytes"] == 64 * MiB, \
        "a deleted config file reset the budget to the default"
    assert d.log_lines(r"configuration file is gone.*keeping the running",
                       levels=("warning",))
    assert not d.log_lines(r"cache budget changed")
    assert d.stop() == 0


def test_config_directory_is_an_error_at_start(registry, daemon_factory, tmp_path):
    confdir = tmp_path / "conf.d"
    confdir.mkdir()
    d = daemon_factory(registries=[registry], config=str(confdir), start=False)
    d.start(wait=False)
    try:
        rc = d.proc.wait(20)
    except subprocess.TimeoutExpired:
        rc = None
    d.expected_exit = True
    assert rc == 2, "p2pblobsd with a directory as --config: exit %r, want 2\n%s" % (
        rc, d.log_text()[-2000:])
    assert d.log_lines(r"is a directory"), d.log_text()[-2000:]
    assert not harness.mount_count(d.mountpoint)


def test_sighup_with_config_replaced_by_directory_keeps_running_config(registry,
                                                                      daemon_factory,
                                                                      tmp_path):
    conf = tmp_path / "p2pblobs.conf"
    _write_conf(conf, {"cache-budget": "64M"})
    d = daemon_factory(registries=[registry], config=str(conf))
    os.unlink(conf)
    os.mkdir(conf)
    try:
        _hup(d, r"reload failed|cache budget changed")
        assert d.alive()
        assert d.stat()["cache"]["budget_bytes"] == 64 * MiB, \
            "a directory in place of the config file reset the budget to the default"
        assert d.log_lines(r"is a directory")
        assert d.log_lines(r"reload failed", levels=("warning",))
        assert d.stop() == 0
    finally:
        shutil.rmtree(conf, ignore_errors=True)
