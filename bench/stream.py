"""Streaming and lazy-read figures for p2pblobsd against a real docker-registry on loopback.

Measures (release build; numbers, not assertions):
  1. origin bytes per 1 MiB read at random unaligned offsets of a 256 MiB blob (cold cache);
  2. streaming a 1 GiB blob through a 64 MiB budget: throughput, peak store bytes on disk
     (sampled every 100 ms), daemon RSS and peak RSS, store page cache, origin bytes;
  3. the registry's own throughput for the same blob (one whole GET, and serial 1 MiB ranged
     GETs) as the baseline the daemon is bounded by.
"""

import argparse
import hashlib
import http.client
import os
import platform
import random
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
import harness  # noqa: E402

MiB = harness.MiB


def rss_of(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


def push_random(registry, repo, size, seed):
    """Pushes SIZE pseudo-random bytes without holding them twice; returns (digest, path)."""
    path = os.path.join(registry.workdir, "blob-%d" % seed)
    h = hashlib.sha256()
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            b = rnd.randbytes(n)
            h.update(b)
            f.write(b)
            left -= n
    digest = "sha256:" + h.hexdigest()
    st, hd, _ = registry.request("POST", "/v2/%s/blobs/uploads/" % repo,
                                 headers={"Content-Length": "0"})
    assert st == 202, st
    loc = hd["Location"]
    from urllib.parse import urlsplit, quote
    u = urlsplit(loc)
    c = http.client.HTTPConnection(registry.host, registry.port, timeout=600)
    with open(path, "rb") as f:
        c.request("PUT", "%s?%s&digest=%s" % (u.path, u.query, quote(digest)), body=f,
                  headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
        r = c.getresponse()
        r.read()
        assert r.status == 201, r.status
    return digest, path


def registry_baseline(registry, repo, digest, size):
    c = http.client.HTTPConnection(registry.host, registry.port, timeout=600)
    t = time.monotonic()
    c.request("GET", "/v2/%s/blobs/%s" % (repo, digest))
    r = c.getresponse()
    n = 0
    while True:
        b = r.read(4 * MiB)
        if not b:
            break
        n += len(b)
    whole = n / (time.monotonic() - t)
    t = time.monotonic()
    count = 128
    for i in range(count):
        c.request("GET", "/v2/%s/blobs/%s" % (repo, digest),
                  headers={"Range": "bytes=%d-%d" % (i * MiB, (i + 1) * MiB - 1)})
        c.getresponse().read()
    ranged = count * MiB / (time.monotonic() - t)
    return whole, ranged


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--stream-size", type=int, default=1024)  # MiB
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="p2pblobs-bench-")
    reg = harness.Registry(os.path.join(work, "registry"))
    reg.start()
    repo = "bench/stream"
    results = []
    try:
        big, big_path = push_random(reg, repo, args.stream_size * MiB, 1)
        mid, _ = push_random(reg, repo, 256 * MiB, 2)
        whole, ranged = registry_baseline(reg, repo, big, args.stream_size * MiB)

        # 1. random 1 MiB reads, cold
        d = harness.Daemon(args.build, os.path.join(work, "d1"), registries=[reg],
                           log_level="notice")
        d.start()
        d.add(reg.ref(repo, mid))
        rnd = random.Random(7)
        reads = 32
        before = d.stat()["fetched"]["origin_bytes"]
        for _ in range(reads):
            off = rnd.randrange(0, 255 * MiB)
            harness.pread_exact(d.blob_path(mid), off, MiB)
        per_read = (d.stat()["fetched"]["origin_bytes"] - before) / reads
        d.cleanup()

        # 2. stream through a 64 MiB budget
        d = harness.Daemon(args.build, os.path.join(work, "d2"), registries=[reg],
                           extra_args=["--cache-budget", "64M"], log_level="notice")
        d.start()
        d.add(reg.ref(repo, big))
        peak = {"store": 0}
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak["store"] = max(peak["store"], harness.allocated_bytes(d.chunks_dir))
                time.sleep(0.1)

        th = threading.Thread(target=sample)
        th.start()
        t = time.monotonic()
        got, n = harness.sha256_file(d.blob_path(big), block=MiB)
        dt = time.monotonic() - t
        stop.set()
        th.join()
        assert got == big and n == args.stream_size * MiB, "stream read wrong bytes"
        s = d.stat()
        mem = rss_of(d.proc.pid)
        d.cleanup()

        results = [
            ("1 MiB read at a random offset, 256 MiB blob, cold (mean of %d)" % reads,
             "%.2f MiB fetched from origin per read" % (per_read / MiB)),
            ("stream %d MiB through a 64 MiB budget: throughput" % args.stream_size,
             "%.0f MB/s (sha256sum-style 1 MiB reads)" % (n / dt / 1e6)),
            ("  origin bytes for the stream", "%.3f x the blob (%d requests)"
             % (s["fetched"]["origin_bytes"] / n, s["fetched"]["origin_requests"])),
            ("  peak store bytes on disk (sampled 10/s)", "%.1f MiB (budget 64 MiB)"
             % (peak["store"] / MiB)),
            ("  daemon RSS after the stream / peak", "%.1f MiB / %.1f MiB"
             % (mem["VmRSS"] / MiB, mem["VmHWM"] / MiB)),
            ("  store pages in page cache after", "%.1f MiB"
             % (s["memory"]["store_page_cache_bytes"] / MiB)),
            ("  blob verified after the stream", str(s["blobs_verified"] == 1)),
            ("registry alone: one whole GET", "%.0f MB/s" % (whole / 1e6)),
            ("registry alone: serial 1 MiB ranged GETs", "%.0f MB/s" % (ranged / 1e6)),
        ]
    finally:
        reg.stop()
    lines = ["# p2pblobs benchmark results", "",
             "Produced by `make bench` (bench/stream.py) on %s, %d cores, kernel %s, %s."
             % (platform.node(), os.cpu_count(), platform.release(),
                time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())),
             "Registry: Debian's docker-registry on loopback, filesystem storage. Release build.",
             "", "| measurement | result |", "|---|---|"]
    lines += ["| %s | %s |" % r for r in results]
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
