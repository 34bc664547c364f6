"""Issue 18: the scale simulation (bench/sim/scale_sim.c, the real directory, announcer and
membership code on a simulated clock) as a regression test of what the directory exists for:
no chunk is fetched from the origin while a live peer holds it.

Seed 9 at N = 5000 with two waves is the case that caught a home asking only a bounded number
of a blob's readers to report once whole ("quiet_whole", taken out again): the 32 recorded
holders of a blob, its first readers, evicted it in the same second while 1396 others held it
whole and were hushed, and 65 chunks came from the origin. The run is deterministic (a seeded
generator, no wall clock): the assertions are counts, not times. ~5 s in a release build,
~15 s under ASan (its exit status also carries LeakSanitizer's verdict)."""
import os
import re
import subprocess

import pytest


def run_sim(build_dir, *args):
    sim = os.path.join(build_dir, "bench", "scale_sim")
    if not os.access(sim, os.X_OK):
        pytest.fail("%s not built (make integration builds it)" % sim)
    p = subprocess.run([sim, "--confirm-wait", "--early-announce", *args],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, "scale_sim %s: rc %d\n%s" % (" ".join(args), p.returncode,
                                                          p.stderr[-4000:])
    return p.stdout


def figure(out, pattern):
    m = re.search(pattern, out, re.M)
    assert m, "no line matching %r in:\n%s" % (pattern, out)
    return m.groups()


@pytest.mark.parametrize("n,seed,waves", [(5000, 9, 2), (1000, 1, 6)])
def test_no_origin_fetch_of_a_chunk_a_peer_holds(build_dir, n, seed, waves):
    out = run_sim(build_dir, "--n", str(n), "--seed", str(seed), "--waves", str(waves))
    (held,) = figure(out, r"^origin_chunks_a_peer_held (\d+)")
    assert int(held) == 0, out
    # Every distinct chunk came from the origin at least once, and re-reads of blobs that
    # every node had evicted stay rare.
    mean, fetched, distinct = figure(
        out, r"^origin_chunks_per_distinct_chunk mean ([\d.]+) max [\d.]+ \(all (\d+) / (\d+)\)")
    assert int(fetched) >= int(distinct) > 0
    assert float(mean) <= 1.10, out
