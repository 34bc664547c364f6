#!/usr/bin/python3
"""16 real p2pblobsd nodes in network namespaces read one image (3 layers) at once (issue 18).

Measures: registry bytes per image byte (≈ 1x wanted), every node's sha256 of every layer
against its digest, and each node's control traffic during the read from its /metrics
(announces sent and received, locates sent and answered), per second and per chunk read,
for bench/RESULTS.md to set beside bench/sim's figure at N = 16. Heavy (16 daemons on this
machine): run it by hand, once.

    bench/sim/swarm16.py BUILD_DIR [--nodes 16] [--out bench/sim/swarm16.json] [--flags "..."]

--flags: more daemon flags for every node, e.g. "--max-holders 4" (with the default 32 and 16
nodes no home's holder table fills, so no home ever says "full").
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import harness  # noqa: E402
import netns  # noqa: E402
import bench  # noqa: E402  (make_blob, net_node, wait_peers_up: one way to run nodes)

MiB = 1 << 20
LAYERS = (128 * MiB, 64 * MiB, 32 * MiB)
METRICS = ("peer_announces_total", "directory_announces_total", "peer_locates_total",
           "directory_locates_total", "origin_claims_total")
# Where the locates come from (source_plan.c): a spread locate that names nobody is followed
# by one to the first home; a cache hit is a miss that asked nobody.
WHY = ("peer_spread_locates_total", "peer_spread_misses_total", "peer_locate_cache_hits_total",
       "peer_run_transfers_total", "peer_run_chunks_total", "peer_locate_failures_total")
# CONFIRM (issue 18; absent from builds before it, then 0): digest questions, chunks confirmed,
# and questions a home held until an announce brought the digest.
CONFIRM = ("peer_confirm_queries_total", "peer_confirmed_chunks_total",
           "directory_digest_waits_total")
# Homes' verdicts (issue 18; "covered" and the un-hush absent from builds before them, then 0):
# blobs told "full" (covered among them), blob announces left out, un-hushes on claims.
HUSH = ("directory_told_full_total", "directory_told_covered_total",
        "peer_announce_hushed_total", "peer_announce_unhushed_total")


def metrics(d):
    status, _h, body = d.host.call(netns.http_request, d.host.ip, bench.PEER_PORT, "GET",
                                   "/metrics")
    assert status == 200, status
    out = {}
    for line in body.decode().splitlines():
        m = re.match(r"p2pblobs_(\w+) (\d+)$", line)
        if m and m.group(1) in METRICS + WHY + CONFIRM + HUSH:
            out[m.group(1)] = int(m.group(2))
    return out


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                return "sha256:" + h.hexdigest()
            h.update(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--out", default=os.path.join(HERE, "swarm16.json"))
    ap.add_argument("--flags", default="", help="more daemon flags, split at spaces")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="swarm16-")
    net = bench.new_net(work, "net")
    try:
        s = net.add_subnet()
        reg = net.registry(net.add_host("reg", s))
        hosts = [net.add_host("n%d" % j, s) for j in range(a.nodes)]
        digests = [bench.make_blob(reg, work, "bench/swarm16", size, 160 + i)
                   for i, size in enumerate(LAYERS)]
        for dg in digests:
            bench.warm_registry_file(reg, dg)
        nodes = [bench.net_node(net, a.build, h, reg, hosts, "node-%d" % j,
                                extra=a.flags.split())
                 for j, h in enumerate(hosts)]
        bench.wait_peers_up(nodes, timeout=60)
        for d in nodes:
            for dg in digests:
                d.add(reg.ref("bench/swarm16", dg))
        before = [metrics(d) for d in nodes]
        mark = reg.mark()
        results = [None] * len(nodes)
        t0 = time.monotonic()

        def read(j):  # one reader per node, its layers in order, all nodes at once
            results[j] = ([sha_file(nodes[j].blob_path(dg)) for dg in digests],
                          time.monotonic() - t0)
        ths = [threading.Thread(target=read, args=(j,)) for j in range(len(nodes))]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        wall = time.monotonic() - t0
        after = [metrics(d) for d in nodes]
        served = sum(reg.bytes_served(dg, since=mark) for dg in digests)
        total = sum(LAYERS)
        bad = [j for j, (shas, _t) in enumerate(results) if shas != digests]
        chunks = total // MiB
        per = []
        for j, d in enumerate(nodes):
            delta = {k: after[j].get(k, 0) - before[j].get(k, 0)
                     for k in METRICS + WHY + CONFIRM + HUSH}
            t = results[j][1]
            msgs = (delta["peer_announces_total"] + delta["directory_announces_total"] +
                    delta["peer_locates_total"] + delta["directory_locates_total"])
            per.append({"node": d.host.name, "seconds": t, **delta,
                        "control_msgs_per_s": msgs / wall,
                        "control_msgs_per_chunk": msgs / chunks,
                        "locates_per_chunk": delta["peer_locates_total"] / chunks,
                        "announces_sent_per_s": delta["peer_announces_total"] / wall})
        out = {"nodes": a.nodes, "image_bytes": total, "registry_bytes": served,
               "registry_x": served / total, "wall_s": wall, "bad_sha_nodes": bad, "per": per}
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
        mean = lambda k: sum(p[k] for p in per) / len(per)  # noqa: E731
        print("nodes %d image %d MiB registry %.3fx wall %.1f s sha256 wrong on %d node(s)"
              % (a.nodes, total // MiB, served / total, wall, len(bad)))
        print("per node: control msgs per chunk read %.3f (announces and locates, sent and "
              "received)" % mean("control_msgs_per_chunk"))
        print("per node: control msgs/s mean %.2f max %.2f; locates per chunk %.3f; "
              "announces sent/s %.2f; announces received/s mean %.2f max %.2f; "
              "locates answered/s mean %.2f max %.2f"
              % (mean("control_msgs_per_s"), max(p["control_msgs_per_s"] for p in per),
                 mean("locates_per_chunk"), mean("announces_sent_per_s"),
                 mean("directory_announces_total") / wall,
                 max(p["directory_announces_total"] for p in per) / wall,
                 mean("directory_locates_total") / wall,
                 max(p["directory_locates_total"] for p in per) / wall))
        print("per node, per chunk read: spread locates %.3f, of which named nobody %.3f; "
              "locate cache hits %.3f; run transfers %.3f carrying %.3f chunks; locate "
              "failures %.3f"
              % tuple(mean(k) / chunks for k in WHY))
        q, c = (sum(p[k] for p in per) for k in CONFIRM[:2])
        print("CONFIRM, all nodes: %d digest questions for %d confirmed chunks (%.2f a chunk); "
              "questions held at homes %d"
              % (q, c, q / c if c else 0, sum(p[CONFIRM[2]] for p in per)))
        print("verdicts, all nodes: told full %d (covered %d); blob announces left out %d; "
              "un-hushed on claims %d" % tuple(sum(p[k] for p in per) for k in HUSH))
        return 1 if bad else 0
    finally:
        net.teardown()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    sys.exit(main())
