"""blobctl, the operator's window into a node (issue 6): every command's output and exit
codes with the daemon up and down, memory figures against the daemon's real cgroup, and the
progress bar in a real terminal (tmux).

The memory arithmetic itself (memory.stat / memory.current / memory.usage_in_bytes fixture
files of cgroup v1 and v2, including a cgroup whose usage is mostly inactive file pages) is
covered by the C unit tests in tests/unit/test_memstat.c and is not repeated here; this file
checks the figures of a live daemon against a cgroup the test creates and reads itself.

Exit codes: 0 ok, 1 failed, 2 bad arguments, 3 daemon not running, 4 no such blob.
"""

import hashlib
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import threading
import time

import pytest

import harness
from harness import MiB, KiB, wait_until

REPO = "p2pblobs/blobctl-ops"
ESC = "\x1b"

# The exact --json key sets (fs/api.c on_stat / blob_json). Adding a key is an interface
# change for scripts, so it should be a deliberate edit here too.
STAT_KEYS = {"version", "uptime_seconds", "chunk_size", "blobs", "blobs_verified",
             "blobs_complete", "blobs_partial", "blobs_pinned", "daemon_running", "cache",
             "fetched", "errors", "served", "peers", "memory", "layers", "snapshotter",
             "verify"}
VERIFY_KEYS = {"frontier_hashed_chunks", "frontier_linked_chunks", "landing_hashed_chunks"}
CACHE_KEYS = {"budget_bytes", "effective_budget_bytes", "used_bytes", "pinned_bytes",
              "chunks_present", "hits", "misses", "evicted_chunks", "store_allocated_bytes",
              "landed_hits"}
FETCHED_KEYS = {"origin_bytes", "origin_requests", "origin_errors", "peer_bytes",
                "inflight_chunks", "readahead_chunks"}
ERRORS_KEYS = {"origin_by_cause", "read_errors", "verify_failures", "store_full_events",
               "lost_chunks", "store_corrupt_chunks", "index_write_errors", "peer_failures",
               "peer_corrupt_chunks"}
CAUSE_KEYS = {"connect", "timeout", "http", "not_found", "denied", "protocol"}
MEMORY_KEYS = {"rss_bytes", "cgroup_version", "cgroup_usage_bytes",
               "cgroup_inactive_file_bytes", "cgroup_working_set_bytes",
               "store_page_cache_bytes", "landed_bytes", "landed_peak_bytes",
               "layer_index_bytes", "layer_span_cache_bytes"}
SERVED_KEYS = {"peer_bytes"}
PEERS_KEYS = {"known", "up"}
BLOB_KEYS = {"digest", "size", "source", "chunks", "chunks_present", "verified", "pinned",
             "prefetching", "prefetch_error", "added_at", "last_access"}
OFFLINE_STAT_KEYS = {"daemon_running", "blobs", "blobs_verified", "blobs_pinned", "cache"}
PEER_KEYS = {"id", "address", "port", "state", "locality", "latency_ms", "bytes_from",
             "bytes_to", "failures", "last_seen", "self", "source"}


# --------------------------------------------------------------------------- helpers

def fmt_size(n):
    """util/parse.c format_size(): B below 1 KiB, else one decimal in the largest unit."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    if n < 1024:
        return "%d B" % n
    u = 0
    while u + 1 < len(units) and n >> (10 * (u + 1)) > 0:
        u += 1
    while True:
        unit = 1 << (10 * u)
        whole, rem = n >> (10 * u), n & (unit - 1)
        tenths = (rem * 10 + unit // 2) >> (10 * u)
        if tenths == 10:
            whole, tenths = whole + 1, 0
        if whole < 1024 or u + 1 >= len(units):
            return "%d.%d %s" % (whole, tenths, units[u])
        u += 1


def test_fmt_size_matches_c():
    """Sanity of the helper the other tests rely on (mirrors tests/unit/test_parse.c)."""
    assert fmt_size(0) == "0 B"
    assert fmt_size(1023) == "1023 B"
    assert fmt_size(1024) == "1.0 KiB"
    assert fmt_size(200 * KiB) == "200.0 KiB"
    assert fmt_size(8 * MiB) == "8.0 MiB"
    assert fmt_size(MiB - 1) == "1.0 MiB"
    assert fmt_size(3 * MiB + 12345) == "3.0 MiB"


def show(r):
    return "exit %s\nstdout: %r\nstderr: %r" % (r.returncode, r.stdout[-3000:], r.stderr[-3000:])


def ok(r, what=""):
    assert r.returncode == 0, "%s: %s" % (what, show(r))
    assert ESC not in r.stdout and ESC not in r.stderr, \
        "%s: escape sequences with stdout/stderr not a TTY: %s" % (what, show(r))
    return r


def ctl(d, *args, **kw):
    return d.blobctl(*args, **kw)


def stat_json(d):
    r = ok(ctl(d, "stat", "--json"), "stat --json")
    return json.loads(r.stdout)


def ls_json(d):
    r = ok(ctl(d, "ls", "--json"), "ls --json")
    arr = json.loads(r.stdout)
    assert isinstance(arr, list), arr
    return {b["digest"]: b for b in arr}


def idle(d, timeout=30):
    """Wait until nothing is in flight (prefetch, readahead, hashing frontier)."""
    def quiet():
        s = stat_json(d)
        blobs = ls_json(d)
        return (s["fetched"]["inflight_chunks"] == 0
                and not any(b["prefetching"] for b in blobs.values()))
    wait_until(quiet, timeout, interval=0.1, what="daemon idle")


def wait_verified(d, digest, timeout=30):
    wait_until(lambda: ls_json(d)[digest]["verified"], timeout, interval=0.1,
               what="%s verified" % digest[:19])


def ls_rows(stdout):
    """Human ls: {digest: (size, present%, ver, pin, source)} (LAST READ may hold spaces)."""
    rows = {}
    lines = stdout.splitlines()
    assert lines and lines[0].split()[:6] == ["DIGEST", "SIZE", "PRESENT", "VER", "PIN",
                                              "LAST"], lines[:1]
    for line in lines[1:]:
        m = re.match(r"(sha256:[0-9a-f]{64})\s+(\d+(?:\.\d)? [KMGT]?i?B)\s+(\d+)%\s+(yes|no)\s+"
                     r"(yes|-)\s+(.*?)\s+(\S+)$", line)
        assert m, "ls line not in the documented shape: %r" % line
        rows[m.group(1)] = (m.group(2), int(m.group(3)), m.group(4), m.group(5), m.group(7))
    return rows


def push(registry, seed, size):
    data = harness.gen_bytes(seed, size)
    return harness.Blob("s%d" % seed, REPO, data, registry.push_blob(REPO, data), registry)


def store_file(d, digest):
    return os.path.join(d.state_dir, "chunks", "sha256", harness.hex_of(digest))


# --------------------------------------------------------------------------- daemon up

def test_stat_and_ls_with_daemon_up(registry, blobs, daemon_factory):
    b8, small = blobs["b8"], blobs["small200k"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])

    # add: "<digest> <size>" and exit 0; --json gives the blob object.
    r = ok(ctl(d, "add", b8.ref), "add")
    assert r.stdout.split() == [b8.digest, str(b8.size)], show(r)
    r = ok(ctl(d, "add", "--json", small.ref), "add --json")
    j = json.loads(r.stdout)
    assert set(j) == BLOB_KEYS, j
    assert (j["digest"], j["size"], j["chunks"]) == (small.digest, small.size, 1), j

    # Nothing read yet: 0% present, not verified.
    rows = ls_rows(ok(ctl(d, "ls"), "ls").stdout)
    assert set(rows) == {b8.digest, small.digest}, rows
    assert rows[b8.digest][:4] == ("8.0 MiB", 0, "no", "-"), rows
    assert rows[small.digest][:4] == ("200.0 KiB", 0, "no", "-"), rows

    s0 = stat_json(d)
    assert s0["blobs"] == 2 and s0["cache"]["chunks_present"] == 0, s0
    assert s0["fetched"]["origin_bytes"] == 0, s0

    # Read b8 through the mount; ls then says 100% and verified yes.
    assert harness.read_file(d.blob_path(b8.digest)) == b8.data
    idle(d)
    wait_verified(d, b8.digest)
    rows = ls_rows(ok(ctl(d, "ls"), "ls").stdout)
    assert rows[b8.digest][:4] == ("8.0 MiB", 100, "yes", "-"), rows
    assert rows[small.digest][1] == 0 and rows[small.digest][2] == "no", rows

    lj = ls_json(d)
    for b in lj.values():
        assert set(b) == BLOB_KEYS, b
    e = lj[b8.digest]
    assert (e["size"], e["chunks"], e["chunks_present"], e["verified"], e["pinned"],
            e["prefetching"], e["prefetch_error"]) == (8 * MiB, 8, 8, True, False, False, None), e
    assert e["last_access"] >= e["added_at"] > 0, e
    assert rows[b8.digest][4] == e["source"], (rows, e)

    # stat --json: exact key sets, figures consistent with what was read.
    s = stat_json(d)
    assert set(s) == STAT_KEYS, sorted(set(s) ^ STAT_KEYS)
    assert set(s["cache"]) == CACHE_KEYS, sorted(set(s["cache"]) ^ CACHE_KEYS)
    assert set(s["fetched"]) == FETCHED_KEYS, sorted(set(s["fetched"]) ^ FETCHED_KEYS)
    assert set(s["errors"]) == ERRORS_KEYS, sorted(set(s["errors"]) ^ ERRORS_KEYS)
    assert set(s["errors"]["origin_by_cause"]) == CAUSE_KEYS, s["errors"]
    assert set(s["memory"]) == MEMORY_KEYS, sorted(set(s["memory"]) ^ MEMORY_KEYS)
    assert set(s["served"]) == SERVED_KEYS, s["served"]
    assert set(s["peers"]) == PEERS_KEYS, s["peers"]
    c = s["cache"]
    assert c["budget_bytes"] == c["effective_budget_bytes"] == 64 * MiB, c
    assert c["chunks_present"] == 8 and c["used_bytes"] == 8 * MiB, c
    assert 8 * MiB <= c["store_allocated_bytes"] <= 8 * MiB + 64 * KiB, c
    assert s["fetched"]["origin_bytes"] == 8 * MiB, s["fetched"]
    assert s["fetched"]["origin_requests"] >= 1, s["fetched"]
    # Origin bytes read whole: the verification hashed each of the 8 chunks (none came with a
    # chain step to pass it by).
    assert set(s["verify"]) == VERIFY_KEYS, s["verify"]
    assert (s["verify"]["frontier_hashed_chunks"], s["verify"]["frontier_linked_chunks"]) == \
        (8, 0), s["verify"]
    assert (s["blobs"], s["blobs_complete"], s["blobs_partial"], s["blobs_verified"]) == \
        (2, 1, 0, 1), s
    assert s["chunk_size"] == MiB, s
    assert c["misses"] >= 1, c
    assert s["memory"]["rss_bytes"] > 0, s["memory"]

    # Human stat shows the same figures (taken right after an idle --json).
    r = ok(ctl(d, "stat"), "stat")
    out = r.stdout
    assert re.search(r"^p2pblobsd \S+, up \d+d \d\d:\d\d:\d\d$", out, re.M), out
    assert re.search(r"^cache +%s of %s \(%d%%\), %d chunks, %s in use \(reads, readahead, hashing\)$" % (
        re.escape(fmt_size(c["used_bytes"])), re.escape(fmt_size(c["budget_bytes"])),
        round(100 * c["used_bytes"] / c["budget_bytes"]), c["chunks_present"],
        re.escape(fmt_size(c["pinned_bytes"]))), out, re.M), out
    assert re.search(r"^fetched +%s from origin \(%d requests\), 0 B from peers \(0%%\), 0 chunks "
                     r"in flight$" % (re.escape(fmt_size(s["fetched"]["origin_bytes"])),
                                      s["fetched"]["origin_requests"]), out, re.M), out
    assert re.search(r"^blobs +2 known: 1 complete, 0 partial, 1 verified, 0 pinned$", out, re.M), out
    assert re.search(r"^hit ratio +[\d.]+% \(\d+ hits, \d+ misses\), 0 evicted$", out, re.M), out
    assert re.search(r"^peers +0 up of 0 known$", out, re.M), out
    assert re.search(r"^errors +0 read errors;", out, re.M), out
    assert re.search(r"^memory +rss \d+\.\d [KMG]iB, cgroup v[12] working set \S+ \S+ "
                     r"\(usage \S+ \S+\), store in page cache \S+ \S+$", out, re.M), out
    assert r.stderr == "", show(r)


def test_prefetch(registry, blobs, daemon_factory):
    b8, b3, b32, small = blobs["b8"], blobs["b3"], blobs["b32"], blobs["small200k"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "16M"])
    for b in (b8, b3, b32, small):
        d.add(b.ref)
    registry.settle()
    mark = registry.mark()

    # Not a TTY: no bar, one summary line per blob on stdout. Bare hex is accepted.
    r = ok(ctl(d, "prefetch", b8.digest, b3.hex, timeout=120), "prefetch")
    assert "\r" not in r.stdout + r.stderr, show(r)
    assert r.stdout.splitlines() == ["%s %s present" % (b8.digest, fmt_size(b8.size)),
                                     "%s %s present" % (b3.digest, fmt_size(b3.size))], show(r)
    lj = ls_json(d)
    for b in (b8, b3):
        e = lj[b.digest]
        assert e["chunks_present"] == e["chunks"] == (b.size + MiB - 1) // MiB, e
        assert e["prefetching"] is False and e["prefetch_error"] is None, e
    s = stat_json(d)
    assert s["fetched"]["origin_bytes"] == b8.size + b3.size, s["fetched"]
    assert registry.bytes_served(b8.digest, since=mark) == b8.size
    assert registry.bytes_served(b3.digest, since=mark) == b3.size
    # The prefetched bytes are the blob's: reading them costs the origin nothing more.
    assert harness.sha256_file(d.blob_path(b8.digest))[0] == b8.digest
    assert stat_json(d)["fetched"]["origin_bytes"] == b8.size + b3.size

    # Prefetching what is already present is a no-op that succeeds.
    ok(ctl(d, "prefetch", b8.digest), "prefetch again")
    assert stat_json(d)["fetched"]["origin_bytes"] == b8.size + b3.size

    # --json: the blob object after the prefetch.
    r = ok(ctl(d, "prefetch", "--json", small.digest), "prefetch --json")
    j = json.loads(r.stdout)
    assert set(j) == BLOB_KEYS and j["chunks_present"] == j["chunks"] == 1, j

    # Bigger than the budget: refused, nothing fetched.
    before = stat_json(d)["fetched"]["origin_bytes"]
    r = ctl(d, "prefetch", b32.digest)
    assert r.returncode == 1, show(r)
    assert "budget" in r.stderr, show(r)
    assert ls_json(d)[b32.digest]["chunks_present"] == 0
    assert stat_json(d)["fetched"]["origin_bytes"] == before

    # Unknown (well-formed) digest: 4. Malformed: 2, before talking to the daemon.
    unknown = "sha256:" + hashlib.sha256(b"never added").hexdigest()
    r = ctl(d, "prefetch", unknown)
    assert r.returncode == 4, show(r)
    assert r.stderr.strip(), show(r)
    for bad in ("sha256:xyz", b8.hex[:63], b8.hex.upper(), "md5:" + b8.hex[:32],
                "sha256:" + b8.hex + "0"):
        r = ctl(d, "prefetch", bad)
        assert r.returncode == 2, "prefetch %r: %s" % (bad, show(r))
        assert "not a digest" in r.stderr, show(r)
    # The first failure stops the list: a good digest after an unknown one is not fetched.
    ok(ctl(d, "evict", small.digest))
    r = ctl(d, "prefetch", unknown, small.digest)
    assert r.returncode == 4, show(r)
    assert ls_json(d)[small.digest]["chunks_present"] == 0


def test_prefetch_origin_down(private_registry, daemon_factory):
    """The origin goes away: prefetch stops with exit 1 and says why, in bounded time."""
    blob = push(private_registry, 703, 4 * MiB)
    d = daemon_factory(registries=[private_registry],
                       extra_args=["--fetch-timeout", "3s", "--connect-timeout", "1s"])
    d.add(blob.ref)
    private_registry.stop()
    t0 = time.monotonic()
    r = ctl(d, "prefetch", blob.digest, timeout=60)
    assert r.returncode == 1, show(r)
    assert "prefetch of %s stopped:" % blob.digest in r.stderr, show(r)
    assert time.monotonic() - t0 < 30
    e = ls_json(d)[blob.digest]
    assert e["prefetch_error"] and e["prefetching"] is False, e
    assert e["chunks_present"] < e["chunks"], e


def test_prefetch_checks_every_digest_before_fetching(registry, blobs, daemon_factory):
    """Bad arguments (exit 2) mean nothing was done: `prefetch GOOD sha256:zz` must not fetch
    GOOD first and only then complain about the second argument."""
    b8 = blobs["b8"]
    d = daemon_factory(registries=[registry])
    d.add(b8.ref)
    r = ctl(d, "prefetch", b8.digest, "sha256:zz", timeout=60)
    assert r.returncode == 2, show(r)
    assert "not a digest" in r.stderr, show(r)
    idle(d)
    assert ls_json(d)[b8.digest]["chunks_present"] == 0, \
        "bad arguments, yet the good digest was prefetched: %s" % show(r)
    assert stat_json(d)["fetched"]["origin_bytes"] == 0


def test_pin_survives_pressure_and_restart(registry, blobs, daemon_factory):
    a = blobs["b8"]
    b = push(registry, 601, 8 * MiB)
    c = push(registry, 602, 16 * MiB)
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "16M"])
    for x in (a, b, c):
        d.add(x.ref)

    r = ok(ctl(d, "pin", a.digest), "pin")
    assert r.stdout.strip() == "%s pinned" % a.digest, show(r)
    assert ls_rows(ok(ctl(d, "ls")).stdout)[a.digest][3] == "yes"
    r = ok(ctl(d, "pin", "--json", a.hex), "pin --json (bare hex)")
    assert json.loads(r.stdout)["pinned"] is True, show(r)

    # A (pinned) is read first, so it is the oldest: without the pin it would go first.
    assert harness.sha256_file(d.blob_path(a.digest))[0] == a.digest
    idle(d)
    assert harness.sha256_file(d.blob_path(b.digest))[0] == b.digest
    idle(d)
    assert harness.sha256_file(d.blob_path(c.digest))[0] == c.digest
    idle(d)
    lj = ls_json(d)
    assert lj[a.digest]["chunks_present"] == lj[a.digest]["chunks"] == 8, lj[a.digest]
    assert lj[b.digest]["chunks_present"] == 0, lj[b.digest]
    s = stat_json(d)
    assert s["cache"]["evicted_chunks"] >= 8, s["cache"]
    assert s["cache"]["used_bytes"] <= 16 * MiB + 8 * MiB, s["cache"]
    rows = ls_rows(ok(ctl(d, "ls")).stdout)
    assert rows[a.digest][1:4] == (100, "yes", "yes"), rows
    assert rows[b.digest][1] == 0 and rows[b.digest][3] == "-", rows

    # Re-reading A costs the origin nothing.
    harness.drop_caches([d.blob_path(a.digest)])
    before = stat_json(d)["fetched"]["origin_bytes"]
    assert harness.read_file(d.blob_path(a.digest)) == a.data
    assert stat_json(d)["fetched"]["origin_bytes"] == before

    # The pin is in the index: it survives a restart, and the offline reader sees it.
    d.restart()
    assert ls_json(d)[a.digest]["pinned"] is True
    assert ls_json(d)[b.digest]["pinned"] is False
    d.stop()
    r = ctl(d, "--state-dir", d.state_dir, "ls", "--json")
    assert r.returncode == 3, show(r)
    off = {x["digest"]: x for x in json.loads(r.stdout)}
    assert off[a.digest]["pinned"] is True and off[c.digest]["pinned"] is False, off
    d.start()

    # unpin: says so, persists too.
    r = ok(ctl(d, "unpin", a.digest), "unpin")
    assert r.stdout.strip() == "%s unpinned" % a.digest, show(r)
    assert ls_rows(ok(ctl(d, "ls")).stdout)[a.digest][3] == "-"
    d.restart()
    assert ls_json(d)[a.digest]["pinned"] is False

    # Unknown blob: 4; malformed: 2.
    unknown = "sha256:" + hashlib.sha256(b"no such pin").hexdigest()
    for cmd in ("pin", "unpin"):
        r = ctl(d, cmd, unknown)
        assert r.returncode == 4 and r.stderr.strip(), "%s: %s" % (cmd, show(r))
        r = ctl(d, cmd, "sha256:nothex")
        assert r.returncode == 2 and r.stderr.strip(), "%s: %s" % (cmd, show(r))


def test_evict(registry, blobs, daemon_factory):
    b8, one = blobs["b8"], blobs["one_mib"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])
    d.add(b8.ref)
    d.add(one.ref)
    assert harness.read_file(d.blob_path(b8.digest)) == b8.data
    assert harness.read_file(d.blob_path(one.digest)) == one.data
    idle(d)
    s0 = stat_json(d)
    alloc0 = harness.allocated_bytes(d.chunks_dir)
    assert alloc0 >= 9 * MiB, alloc0
    assert s0["cache"]["chunks_present"] == 9, s0["cache"]

    r = ok(ctl(d, "evict", b8.digest), "evict")
    assert r.stdout.strip() == "evicted 8 chunks (8.0 MiB)", show(r)
    lj = ls_json(d)
    assert lj[b8.digest]["chunks_present"] == 0 and lj[one.digest]["chunks_present"] == 1, lj
    s1 = stat_json(d)
    assert s1["cache"]["chunks_present"] == 1 and s1["cache"]["used_bytes"] == MiB, s1["cache"]
    assert s1["cache"]["evicted_chunks"] == s0["cache"]["evicted_chunks"] + 8, s1["cache"]
    assert s1["cache"]["store_allocated_bytes"] <= s0["cache"]["store_allocated_bytes"] - 8 * MiB
    alloc1 = harness.allocated_bytes(d.chunks_dir)
    assert alloc1 <= alloc0 - 8 * MiB, (alloc0, alloc1)
    rows = ls_rows(ok(ctl(d, "ls")).stdout)
    assert rows[b8.digest][1] == 0 and rows[one.digest][1] == 100, rows

    # Evicting again: nothing left; --json gives the counts.
    r = ok(ctl(d, "evict", "--json", b8.hex), "evict --json")
    assert json.loads(r.stdout) == {"evicted_chunks": 0, "evicted_bytes": 0}, show(r)

    # A later read refetches the right bytes.
    harness.drop_caches([d.blob_path(b8.digest)])
    before = s1["fetched"]["origin_bytes"]
    assert harness.read_file(d.blob_path(b8.digest)) == b8.data
    idle(d)
    assert stat_json(d)["fetched"]["origin_bytes"] == before + 8 * MiB
    assert ls_json(d)[b8.digest]["chunks_present"] == 8

    # evict --all: everything goes, the store is (almost) empty, reads still work.
    r = ok(ctl(d, "evict", "--all"), "evict --all")
    assert r.stdout.strip() == "evicted 9 chunks (9.0 MiB)", show(r)
    assert all(b["chunks_present"] == 0 for b in ls_json(d).values())
    s2 = stat_json(d)
    assert s2["cache"]["chunks_present"] == 0 and s2["cache"]["used_bytes"] == 0, s2["cache"]
    assert harness.allocated_bytes(d.chunks_dir) <= 64 * KiB
    assert s2["cache"]["store_allocated_bytes"] <= 64 * KiB, s2["cache"]
    r = ok(ctl(d, "evict", "--all", "--json"), "evict --all --json")
    assert json.loads(r.stdout) == {"evicted_chunks": 0, "evicted_bytes": 0}, show(r)
    harness.drop_caches([d.blob_path(b8.digest), d.blob_path(one.digest)])
    assert harness.pread_exact(d.blob_path(one.digest), 0, one.size) == one.data
    assert harness.pread_exact(d.blob_path(b8.digest), 5 * MiB, MiB) == \
        b8.data[5 * MiB:6 * MiB]

    r = ctl(d, "evict", "sha256:" + hashlib.sha256(b"x").hexdigest())
    assert r.returncode == 4 and r.stderr.strip(), show(r)


def test_verify_detects_and_repairs_corruption(registry, blobs, daemon_factory):
    b8 = blobs["b8"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])
    d.add(b8.ref)
    path = d.blob_path(b8.digest)
    assert harness.read_file(path) == b8.data
    idle(d)
    wait_verified(d, b8.digest)

    r = ok(ctl(d, "verify", b8.digest), "verify")
    assert r.stdout.strip() == ("%s: 8 chunks checked, 8 ok, 0 bad, 0 lost, 0 without a "
                                "recorded digest" % b8.digest), show(r)
    r = ok(ctl(d, "verify", "--json", b8.hex), "verify --json")
    assert json.loads(r.stdout) == {"checked": 8, "ok": 8, "bad": 0, "lost": 0,
                                    "unknown": 0}, show(r)

    # Flip 4 KiB in the middle of chunk 2 inside the store file (same size, still allocated).
    sf = store_file(d, b8.digest)
    size_before = os.path.getsize(sf)
    off = 2 * MiB + MiB // 2
    fd = os.open(sf, os.O_RDWR)
    try:
        good = os.pread(fd, 4096, off)
        assert good == b8.data[off:off + 4096], "store file does not hold the blob at its offset"
        os.pwrite(fd, bytes(x ^ 0xFF for x in good), off)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert os.path.getsize(sf) == size_before
    harness.drop_caches([path])

    r = ctl(d, "verify", b8.digest)
    assert r.returncode == 1, show(r)
    assert "8 chunks checked, 7 ok, 1 bad, 0 lost" in r.stdout, show(r)
    assert ESC not in r.stdout, show(r)
    lj = ls_json(d)[b8.digest]
    assert lj["chunks_present"] == 7, lj

    # The damaged range is refetched on the next read and comes back right.
    harness.drop_caches([path])
    before = stat_json(d)["fetched"]["origin_bytes"]
    assert harness.pread_exact(path, 2 * MiB, MiB) == b8.data[2 * MiB:3 * MiB]
    assert harness.read_file(path) == b8.data
    idle(d)
    assert stat_json(d)["fetched"]["origin_bytes"] >= before + MiB
    r = ok(ctl(d, "verify", "--json", b8.digest), "verify after repair")
    assert json.loads(r.stdout) == {"checked": 8, "ok": 8, "bad": 0, "lost": 0,
                                    "unknown": 0}, show(r)

    # A blob with nothing present: nothing checked, ok. Unknown: 4. Malformed: 2.
    ok(ctl(d, "evict", b8.digest))
    r = ok(ctl(d, "verify", "--json", b8.digest), "verify of an evicted blob")
    assert json.loads(r.stdout)["checked"] == 0, show(r)
    r = ctl(d, "verify", "sha256:" + hashlib.sha256(b"y").hexdigest())
    assert r.returncode == 4 and r.stderr.strip(), show(r)
    r = ctl(d, "verify", "0123")
    assert r.returncode == 2 and r.stderr.strip(), show(r)
    # The daemon logged the damage as a warning.
    assert d.log_lines(r"verify found damaged chunks", levels=("warning",)), d.log_text()[-3000:]


# --------------------------------------------------------------------------- daemon down

def test_daemon_down(registry, blobs, daemon_factory, tmp_path):
    b8, small, one = blobs["b8"], blobs["small200k"], blobs["one_mib"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])
    for b in (b8, small, one):
        d.add(b.ref)
    assert harness.read_file(d.blob_path(b8.digest)) == b8.data
    assert harness.pread_exact(d.blob_path(one.digest), 0, 4096) == one.data[:4096]
    idle(d)
    wait_verified(d, b8.digest)
    ok(ctl(d, "pin", small.digest))
    online = ls_json(d)
    s_on = stat_json(d)
    assert d.stop() == 0
    sd = ["--state-dir", d.state_dir]

    # stat, human: a notice on stderr, what the index records on stdout, exit 3.
    r = ctl(d, *sd, "stat")
    assert r.returncode == 3, show(r)
    assert "not running" in r.stderr and "index" in r.stderr, show(r)
    assert ESC not in r.stdout + r.stderr, show(r)
    assert re.search(r"^daemon +not running$", r.stdout, re.M), show(r)
    nver = sum(b["verified"] for b in online.values())
    assert nver == s_on["blobs_verified"] >= 1, (online, s_on)
    assert re.search(r"^blobs +3 known, %d verified, 1 pinned$" % nver, r.stdout, re.M), show(r)
    assert re.search(r"^cache +%d chunks recorded present$" % s_on["cache"]["chunks_present"],
                     r.stdout, re.M), show(r)

    r = ctl(d, *sd, "stat", "--json")
    assert r.returncode == 3, show(r)
    assert "not running" in r.stderr, show(r)
    j = json.loads(r.stdout)
    assert set(j) == OFFLINE_STAT_KEYS, j
    assert j["daemon_running"] is False, j
    assert (j["blobs"], j["blobs_verified"], j["blobs_pinned"]) == (3, nver, 1), j
    assert j["cache"] == {"chunks_present": s_on["cache"]["chunks_present"]}, (j, s_on["cache"])

    # ls: the same blobs, the same presence, from the index.
    r = ctl(d, *sd, "ls")
    assert r.returncode == 3, show(r)
    assert "not running" in r.stderr, show(r)
    rows = ls_rows(r.stdout)
    assert set(rows) == set(online), (rows, online)
    assert rows[b8.digest][:4] == ("8.0 MiB", 100, "yes", "-"), rows
    assert rows[small.digest][3] == "yes", rows
    r = ctl(d, *sd, "ls", "--json")
    assert r.returncode == 3, show(r)
    off = {b["digest"]: b for b in json.loads(r.stdout)}
    assert set(off) == set(online)
    for dg, b in off.items():
        assert set(b) <= BLOB_KEYS, sorted(set(b) - BLOB_KEYS)
        for k in ("size", "chunks", "chunks_present", "verified", "pinned", "source",
                  "added_at"):
            assert b[k] == online[dg][k], (k, b, online[dg])

    # Commands that need the daemon: 3, a message naming the socket, nothing on stdout.
    ref = b8.ref
    for args in (("add", ref), ("pin", b8.digest), ("unpin", b8.digest),
                 ("evict", b8.digest), ("evict", "--all"), ("verify", b8.digest),
                 ("prefetch", b8.digest)):
        r = ctl(d, *sd, *args)
        assert r.returncode == 3, "%s: %s" % (args, show(r))
        assert "not running" in r.stderr and d.socket_path in r.stderr, "%s: %s" % (args, show(r))
        assert r.stdout == "", "%s: %s" % (args, show(r))

    # --watch with the daemon down does not loop.
    r = ctl(d, *sd, "stat", "--watch", "1", timeout=10)
    assert r.returncode == 3, show(r)

    # After a crash (kill -9: the socket file may be left behind, the index not closed):
    # still 3, and the index is still readable.
    d.start()
    assert harness.read_file(d.blob_path(small.digest)) == small.data
    idle(d)
    chunks = stat_json(d)["cache"]["chunks_present"]
    d.kill9()
    r = ctl(d, *sd, "stat", "--json")
    assert r.returncode == 3 and "not running" in r.stderr, show(r)
    j = json.loads(r.stdout)
    assert j["blobs"] == 3 and j["cache"]["chunks_present"] == chunks, (j, chunks)
    r = ctl(d, *sd, "pin", b8.digest)
    assert r.returncode == 3 and "not running" in r.stderr, show(r)
    harness.force_unmount(d.mountpoint)

    # No index where --state-dir points: 3 and a message that says so.
    empty = tmp_path / "empty-state"
    empty.mkdir()
    for args in (("stat",), ("stat", "--json"), ("ls",), ("ls", "--json")):
        r = ctl(d, "--state-dir", str(empty), *args)
        assert r.returncode == 3, "%s: %s" % (args, show(r))
        assert "no index" in r.stderr and str(empty) in r.stderr, "%s: %s" % (args, show(r))
        assert r.stdout == "", "%s: %s" % (args, show(r))


def test_peers_alone(registry, daemon_factory):
    """A node started without --peers: `blobctl peers` says it runs alone, stat's peer figures
    are zeros; with the daemon down the peers table of the index is read (empty here), with
    the same exit code and notice as stat and ls. (Peers proper: tests/integration/test_peers.py.)"""
    d = daemon_factory(registries=[registry])
    r = ok(ctl(d, "peers"), "peers")
    assert r.stdout.startswith("no peers"), show(r)
    r = ok(ctl(d, "peers", "--json"), "peers --json")
    assert json.loads(r.stdout) == [], show(r)
    s = stat_json(d)
    assert s["peers"] == {"known": 0, "up": 0}, s["peers"]
    assert s["served"] == {"peer_bytes": 0} and s["fetched"]["peer_bytes"] == 0, s
    assert d.stop() == 0
    r = ctl(d, "--state-dir", d.state_dir, "peers", "--json")
    assert r.returncode == 3, show(r)
    assert "not running" in r.stderr and "index" in r.stderr, show(r)
    assert json.loads(r.stdout) == [], show(r)
    r = ctl(d, "--state-dir", d.state_dir, "peers")
    assert r.returncode == 3 and r.stdout.startswith("no peers"), show(r)


def test_peers_with_a_dead_peer(registry, daemon_factory):
    """--peers with a closed port on loopback: the peer is listed with the documented keys,
    self is recognised from --advertise-address, stat counts it as known, and the membership
    is persisted at stop for blobctl to read with the daemon down. (Health and failover:
    tests/unit/test_members.c and tests/integration/test_peers.py.)"""
    dead = harness.free_port()
    d = daemon_factory(registries=[registry],
                       extra_args=["--peers", "127.0.0.1:%d" % dead,
                                   "--advertise-address", "127.0.0.1"])
    r = ok(ctl(d, "peers", "--json"), "peers --json")
    peers = {p["id"]: p for p in json.loads(r.stdout)}
    pid = "127.0.0.1:%d" % dead
    assert pid in peers, peers
    for p in peers.values():
        assert set(p) == PEER_KEYS, p
    p = peers[pid]
    assert (p["address"], p["port"], p["self"], p["source"]) == ("127.0.0.1", dead, False,
                                                                 "static"), p
    assert p["state"] in ("up", "down") and p["locality"] in ("self", "on-link", "routed",
                                                                  "unknown"), p
    selves = [x for x in peers.values() if x["self"]]
    assert len(selves) == 1 and selves[0]["address"] == "127.0.0.1", peers
    s = stat_json(d)
    assert s["peers"]["known"] == 1, s["peers"]
    r = ok(ctl(d, "peers"), "peers")
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["ADDRESS", "STATE", "LOCALITY", "LATENCY"], show(r)
    assert any(l.startswith(pid + " ") for l in lines[1:]), show(r)
    assert any("(self)" in l for l in lines[1:]), show(r)
    assert d.stop() == 0
    # Persisted at stop: blobctl reads the same membership from the index.
    r = ctl(d, "--state-dir", d.state_dir, "peers", "--json")
    assert r.returncode == 3, show(r)
    off = {p["id"]: p for p in json.loads(r.stdout)}
    assert pid in off and set(off[pid]) == PEER_KEYS and off[pid]["source"] is None, off


def test_bad_arguments(build_dir, tmp_path):
    """Bad arguments exit 2 with a message, before any attempt to reach the daemon (no daemon
    listens on the socket, so an accepted command line would exit 3 instead)."""
    blobctl = os.path.join(build_dir, "blobctl")
    sock = str(tmp_path / "nobody.sock")
    dg = "sha256:" + "ab" * 32
    cases = [
        (),
        ("frobnicate",),
        ("stat", "extra"),
        ("stat", "--bogus"),
        ("stat", "--watch", "0"),
        ("stat", "--watch", "soon"),
        ("ls", "--watch"),
        ("ls", "extra"),
        ("peers", "extra"),
        ("peers", "--watch"),
        ("peers", "--all"),
        ("add",),
        ("add", "a", "b"),
        ("prefetch",),
        ("evict",),
        ("evict", "--all", dg),
        ("evict", dg, dg),
        ("pin",),
        ("pin", dg, dg),
        ("pin", "--all", dg),
        ("unpin",),
        ("verify",),
        ("verify", "--watch", dg),
        ("pin", "not-a-digest"),
        ("evict", "sha256:" + "AB" * 32),
        ("verify", "sha256:" + "ab" * 31),
    ]
    for args in cases:
        r = subprocess.run([blobctl, "--socket", sock] + list(args), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=10)
        assert r.returncode == 2, "blobctl %s: %s" % (" ".join(args), show(r))
        assert r.stderr.strip(), "blobctl %s: no message: %s" % (" ".join(args), show(r))
        assert "nothing listens" not in r.stderr, "blobctl %s: %s" % (" ".join(args), show(r))
    r = subprocess.run([blobctl, "--bogus-global", "stat"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=10)
    assert r.returncode == 2 and "Usage" in r.stderr, show(r)
    r = subprocess.run([blobctl, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=10)
    assert r.returncode == 0 and "Usage" in r.stdout and "Exit status" in r.stdout, show(r)
    # A well-formed command line with nobody listening: 3, not 2.
    r = subprocess.run([blobctl, "--socket", sock, "pin", dg], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=10)
    assert r.returncode == 3, show(r)


def _json_docs(s):
    """The JSON documents in S, one after another (blank lines between); a last one cut short
    (the process was killed mid-report) is left out."""
    dec = json.JSONDecoder()
    pos, docs = 0, []
    while True:
        while pos < len(s) and s[pos].isspace():
            pos += 1
        if pos >= len(s):
            return docs
        try:
            obj, pos = dec.raw_decode(s, pos)
        except ValueError:
            return docs
        docs.append(obj)


def test_stat_watch(registry, blobs, daemon_factory, tmp_path):
    d = daemon_factory(registries=[registry])
    d.add(blobs["small200k"].ref)
    base = [d.blobctl_bin, "--socket", d.socket_path]
    outs = [tmp_path / "human.out", tmp_path / "json.out"]
    procs = []
    try:
        for args, out in zip((["stat", "--watch", "1"], ["stat", "--json", "--watch", "1"]),
                             outs):
            with open(out, "wb") as f:
                procs.append(subprocess.Popen(base + args, stdout=f, stderr=subprocess.PIPE,
                                              env=d.env))

        def so_far():
            return (re.findall(r"^p2pblobsd \S+, up ", outs[0].read_text(), re.M),
                    _json_docs(outs[1].read_text()))
        # Two reports from each, however long the loaded machine takes to print them; the
        # processes are still watching after that.
        harness.wait_until(lambda: all(len(r) >= 2 for r in so_far()), 30,
                           what="two reports from each `stat --watch 1`")
        for p in procs:
            assert p.poll() is None, "stat --watch exited early: %s" % (p.communicate(),)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.communicate(timeout=10)
    text = outs[0].read_text()
    assert ESC not in text, repr(text)
    reports = re.findall(r"^p2pblobsd \S+, up ", text, re.M)
    assert len(reports) >= 2, repr(text)
    assert len(re.findall(r"^blobs +1 known", text, re.M)) == len(reports), repr(text)
    # JSON reports, one after another (a blank line between): each parses, uptime advances.
    docs = _json_docs(outs[1].read_text())
    assert len(docs) >= 2, repr(outs[1].read_text())
    assert all(set(x) == STAT_KEYS for x in docs), docs
    assert docs[-1]["uptime_seconds"] >= docs[0]["uptime_seconds"] + 1, docs


# --------------------------------------------------------------------------- memory

def _mountpoints():
    v1 = v2 = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            lf, rf = left.split(), right.split()
            if len(rf) < 3 or lf[3] != "/":
                continue
            if rf[0] == "cgroup" and "memory" in rf[2].split(","):
                v1 = lf[4]
            elif rf[0] == "cgroup2" and v2 is None:
                v2 = lf[4]
    return v1, v2


def _proc_cgroup(pid):
    v1 = v2 = None
    with open("/proc/%d/cgroup" % pid) as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            if "memory" in ctrls.split(","):
                v1 = path
            if hid == "0" and ctrls == "":
                v2 = path
    return v1, v2


def _read_int(path):
    with open(path) as f:
        return int(f.read().split()[0])


def _stat_value(path, key):
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    raise KeyError(key)


def _vmrss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise KeyError("VmRSS")


def test_memory_matches_real_cgroup(registry, blobs, daemon_factory, tmp_path):
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])
    pid = d.proc.pid
    v1_mnt, v2_mnt = _mountpoints()
    v1_path, v2_path = _proc_cgroup(pid)
    if v1_mnt and v1_path is not None:
        version, mnt, orig = 1, v1_mnt, v1_path
        usage_file, inactive_key = "memory.usage_in_bytes", "total_inactive_file"
    elif v2_mnt and v2_path is not None:
        version, mnt, orig = 2, v2_mnt, v2_path
        usage_file, inactive_key = "memory.current", "inactive_file"
    else:
        pytest.skip("no cgroup memory controller visible")
    orig_dir = os.path.join(mnt, orig.lstrip("/"))
    cg = os.path.join(mnt, "p2pblobs-test-%s" % secrets.token_hex(4))
    os.mkdir(cg)
    try:
        if not os.path.exists(os.path.join(cg, usage_file)):
            pytest.skip("memory controller not enabled in %s" % mnt)
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write("%d\n" % pid)
        assert _proc_cgroup(pid)[version - 1] == "/" + os.path.basename(cg)

        # Work in the daemon after the move (its own charges), and page cache in the same
        # cgroup from a helper reading a file: inactive file pages, most of the usage.
        d.add(blobs["b8"].ref)
        ok(ctl(d, "prefetch", blobs["b8"].digest, timeout=60))
        assert harness.read_file(d.blob_path(blobs["b8"].digest)) == blobs["b8"].data
        big = tmp_path / "pagecache.bin"
        with open(big, "wb") as f:
            f.write(os.urandom(48 * MiB))
            f.flush()
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        procs = os.path.join(cg, "cgroup.procs")

        def join_cgroup():
            with open(procs, "w") as f:
                f.write("0\n")
        subprocess.run(["cat", str(big)], stdout=subprocess.DEVNULL, check=True,
                       preexec_fn=join_cgroup)
        idle(d)

        def sample():
            u = _read_int(os.path.join(cg, usage_file))
            i = _stat_value(os.path.join(cg, "memory.stat"), inactive_key)
            return u, i, max(u - i, 0), _vmrss(pid)

        slack = 4 * MiB
        for _ in range(2):
            before = sample()
            m = stat_json(d)["memory"]
            after = sample()
            print("cgroup %s: before %s daemon %s after %s" % (cg, before, m, after))
            assert m["cgroup_version"] == version, m
            for k, i in (("cgroup_usage_bytes", 0), ("cgroup_inactive_file_bytes", 1),
                         ("cgroup_working_set_bytes", 2)):
                lo, hi = min(before[i], after[i]), max(before[i], after[i])
                assert lo - slack <= m[k] <= hi + slack, \
                    "%s=%d, the cgroup said %d..%d (%s)" % (k, m[k], lo, hi, cg)
            assert m["cgroup_working_set_bytes"] == \
                max(m["cgroup_usage_bytes"] - m["cgroup_inactive_file_bytes"], 0), m
            # The helper's page cache is charged here and inactive: usage is mostly
            # inactive file, and the working set leaves it out.
            assert m["cgroup_inactive_file_bytes"] >= 32 * MiB, (m, before, after)
            assert m["cgroup_working_set_bytes"] <= m["cgroup_usage_bytes"] - 32 * MiB, m
            lo, hi = min(before[3], after[3]), max(before[3], after[3])
            assert 0.8 * lo <= m["rss_bytes"] <= 1.2 * hi, (m["rss_bytes"], lo, hi)

        # Human output shows the same cgroup version and working set/usage sizes.
        r = ok(ctl(d, "stat"))
        mm = re.search(r"cgroup v(\d) working set (\S+ \S+) \(usage (\S+ \S+)\)", r.stdout)
        assert mm and int(mm.group(1)) == version, r.stdout
    finally:
        try:
            if os.path.exists("/proc/%d" % pid):
                with open(os.path.join(orig_dir, "cgroup.procs"), "w") as f:
                    f.write("%d\n" % pid)
        except OSError:
            pass
        for _ in range(50):
            try:
                os.rmdir(cg)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


# --------------------------------------------------------------------------- terminal

class Tmux:
    """One detached tmux session running a shell command in a 160x20 terminal."""

    def __init__(self, cmd):
        self.name = "pbtest-%d-%s" % (os.getpid(), secrets.token_hex(3))
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "160", "-y", "20",
                        cmd], check=True, timeout=10)

    def capture(self, escapes=False):
        r = subprocess.run(["tmux", "capture-pane", "-p", "-J"] + (["-e"] if escapes else [])
                           + ["-t", self.name], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, timeout=10)
        return r.stdout if r.returncode == 0 else None

    def kill(self):
        subprocess.run(["tmux", "kill-session", "-t", self.name], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=10)


def _tmux_or_skip():
    if subprocess.run(["which", "tmux"], stdout=subprocess.DEVNULL).returncode != 0:
        pytest.skip("tmux is not installed")


def _slow_origin(reg, stop):
    """Pause the registry on and off, so a 64 MiB prefetch takes a few seconds."""
    while not stop.is_set():
        reg.pause()
        stop.wait(0.35)
        reg.resume()
        stop.wait(0.15)
    reg.resume()


BAR_RE = re.compile(r"(sha256:[0-9a-f]{12}) \[([#-]{24})\] +(\d+)% ([\d.]+ [KMG]?i?B) / "
                    r"64\.0 MiB +[\d.]+ [KMG]?i?B/s")


def _run_prefetch_in_tmux(blobctl, sock, digest, rcfile, extra=""):
    cmd = "env -u NO_COLOR %s --socket %s prefetch %s%s; echo rc=$? > %s; sleep 30" % (
        shlex.quote(blobctl), shlex.quote(sock), digest, extra, shlex.quote(rcfile))
    return Tmux(cmd)


def test_progress_bar_in_terminal(private_registry, daemon_factory, tmp_path):
    _tmux_or_skip()
    reg = private_registry
    blob = push(reg, 700, 64 * MiB)
    d = daemon_factory(registries=[reg], extra_args=["--max-connections", "1"])
    d.add(blob.ref)
    rcfile = str(tmp_path / "rc")
    stop = threading.Event()
    slow = threading.Thread(target=_slow_origin, args=(reg, stop), daemon=True)
    frames = []
    t = None
    try:
        slow.start()
        t = _run_prefetch_in_tmux(d.blobctl_bin, d.socket_path, blob.digest, rcfile)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not os.path.exists(rcfile):
            f = t.capture()
            if f:
                frames.append(f)
            time.sleep(0.1)
        stop.set()
        final = t.capture()
        frames.append(final or "")
    finally:
        stop.set()
        slow.join(5)
        reg.resume()
        if t:
            t.kill()
    assert os.path.exists(rcfile), "prefetch did not finish; last frame:\n%s" % frames[-1:]
    with open(rcfile) as f:
        assert f.read().strip() == "rc=0"
    bars = [m for fr in frames for m in BAR_RE.finditer(fr)]
    assert bars, "no progress bar seen; frames:\n%s" % "\n----\n".join(frames[-5:])
    assert all(m.group(1) == blob.digest[:19] for m in bars), bars[:3]
    partial = [m for m in bars if 0 < int(m.group(3)) < 100 and "#" in m.group(2)]
    assert partial, "never saw a bar part way (only %s)" % sorted({m.group(3) for m in bars})
    assert any("ETA" in fr for fr in frames), "no ETA while running"
    # Bars only ever advance.
    pcts = [int(m.group(3)) for m in bars]
    assert pcts == sorted(pcts), pcts
    last = BAR_RE.search(final)
    assert last and last.group(3) == "100" and last.group(2) == "#" * 24 and \
        last.group(4) == "64.0 MiB", final
    # One bar line, drawn in place: not one line per update.
    assert final.count("sha256:") == 1, final
    lj = ls_json(d)[blob.digest]
    assert lj["chunks_present"] == lj["chunks"] == 64, lj

    # Not a TTY: no bar, no carriage returns, no escapes, one summary line.
    ok(ctl(d, "evict", blob.digest))
    r = ok(ctl(d, "prefetch", blob.digest, timeout=120), "prefetch, piped")
    assert "\r" not in r.stdout + r.stderr, show(r)
    assert r.stdout.strip() == "%s 64.0 MiB present" % blob.digest, show(r)
    assert r.stderr == "", show(r)

    # Ctrl-C while fetching: exit 1, a message that the daemon carries on.
    ok(ctl(d, "evict", blob.digest))
    reg.pause()
    try:
        p = subprocess.Popen([d.blobctl_bin, "--socket", d.socket_path, "prefetch",
                              blob.digest], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=d.env)
        # The daemon is fetching for it (the origin hangs): blobctl has sent its request, so
        # it is past installing its SIGINT handler and is waiting on the prefetch.
        wait_until(lambda: p.poll() is not None or d.stat()["fetched"]["inflight_chunks"] >= 1,
                   30, what="the prefetch to be waiting on the origin")
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
    finally:
        reg.resume()
    assert p.returncode == 1, (p.returncode, out, err)
    assert "interrupted" in err, (out, err)
    idle(d, timeout=60)
    assert ls_json(d)[blob.digest]["chunks_present"] == 64


def test_colour_only_on_a_tty(registry, blobs, daemon_factory, tmp_path):
    _tmux_or_skip()
    d = daemon_factory(registries=[registry])
    d.add(blobs["small200k"].ref)
    q = shlex.quote
    base = "%s --socket %s ls" % (q(d.blobctl_bin), q(d.socket_path))
    done = str(tmp_path / "done")
    frames = {}
    for label, env in (("colour", "env -u NO_COLOR"), ("nocolour", "env NO_COLOR=1")):
        marker = done + label
        t = Tmux("%s %s; touch %s; sleep 30" % (env, base, q(marker)))
        try:
            wait_until(lambda: os.path.exists(marker), 20, what="ls in tmux")
            # The pane shows ls's output once tmux has drawn it (a moment after ls exits).
            frames[label] = wait_until(
                lambda: (lambda f: f if f and blobs["small200k"].digest in f else None)(
                    t.capture(escapes=True)), 20, what="ls's output in the tmux pane")
        finally:
            t.kill()
    assert blobs["small200k"].digest in frames["colour"], frames
    assert "\x1b[1m" in frames["colour"], repr(frames["colour"])
    assert blobs["small200k"].digest in frames["nocolour"], frames
    assert ESC not in frames["nocolour"], repr(frames["nocolour"])
    # And piped: none either (ok() checks).
    ok(ctl(d, "ls"))


def test_progress_bar_not_written_into_a_redirected_stderr(private_registry, daemon_factory,
                                                           tmp_path):
    """The bar goes to stderr, so it is drawn only when stderr is a terminal: with stdout on a
    TTY and stderr redirected to a file (`blobctl prefetch X 2>log`), the file must not fill
    with carriage returns and escape sequences."""
    _tmux_or_skip()
    reg = private_registry
    blob = push(reg, 701, 8 * MiB)
    d = daemon_factory(registries=[reg], extra_args=["--max-connections", "1"])
    d.add(blob.ref)
    rcfile = str(tmp_path / "rc")
    errfile = str(tmp_path / "stderr.txt")
    t = _run_prefetch_in_tmux(d.blobctl_bin, d.socket_path, blob.digest, rcfile,
                              extra=" 2>%s" % shlex.quote(errfile))
    try:
        wait_until(lambda: os.path.exists(rcfile), 60, what="prefetch in tmux")
    finally:
        t.kill()
    with open(rcfile) as f:
        assert f.read().strip() == "rc=0"
    with open(errfile, "rb") as f:
        err = f.read()
    assert b"\r" not in err and b"\x1b" not in err, \
        "progress bar written into a redirected stderr: %r" % err[:300]
