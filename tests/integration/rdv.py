"""peer/rendezvous.c in Python, so a test can pick a blob whose homes (and the home a reader
asks first) are the nodes it needs. The score is part of the protocol (every node computes
the same homes), so this copy changes only when that one does; test_peer_paths.py checks it
against what the daemons do (a locate counted at the home this predicts).

    homes(ids, digest, k)    -> the K ids that are DIGEST's homes, best first
    spread(reader, digest, n) -> the index of the home READER asks first of N (rdv_spread)
"""

SEED = 0x703270626c6f6273   # "p2pblobs": RDV_SEED
M64 = (1 << 64) - 1


def _mix(h, w):
    z = ((h ^ w) + 0x9e3779b97f4a7c15) & M64
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return z ^ (z >> 31)


def _le(b):
    return int.from_bytes(b, "little")


def score(node_id, digest):
    """rdv_score(NODE_ID, DIGEST): DIGEST is "sha256:<hex>" or 32 bytes."""
    if isinstance(digest, str):
        digest = bytes.fromhex(digest.split(":", 1)[-1])
    idb = node_id.encode()
    h = SEED
    i = 0
    while i + 8 <= len(idb):
        h = _mix(h, _le(idb[i:i + 8]))
        i += 8
    if i < len(idb):
        h = _mix(h, _le(idb[i:]))
    h = _mix(h, len(idb))
    for i in range(0, 32, 8):
        h = _mix(h, _le(digest[i:i + 8]))
    return h


def homes(ids, digest, k):
    """DIGEST's K homes among IDS, best first: higher score, then the smaller id."""
    return sorted(ids, key=lambda i: (-score(i, digest), i.encode()))[:k]


def spread(reader_id, digest, n):
    return 0 if n <= 1 else score(reader_id, digest) % n
