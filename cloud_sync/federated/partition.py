"""Non-IID partitions for simulations, tests and benchmarks (each device mostly sees a few classes)."""

from __future__ import annotations

import numpy as np


def non_iid_partitions(y: np.ndarray, n_devices: int, classes_per_device: int = 2, dominant: float = 0.8,
                       seed: int = 0) -> list[np.ndarray]:
    """Disjoint index sets: device ``i`` takes its share of ``classes_per_device`` classes (assigned
    round-robin) so that about ``dominant`` of its samples come from them; the rest is spread
    uniformly over the other classes. Every sample is used at most once."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y).astype(np.int64)
    classes = np.unique(y)
    pools = {int(c): list(rng.permutation(np.flatnonzero(y == c))) for c in classes}
    own = [[int(classes[(i * classes_per_device + k) % len(classes)]) for k in range(classes_per_device)]
           for i in range(n_devices)]
    owners = {int(c): [i for i in range(n_devices) if int(c) in own[i]] for c in classes}
    # the dominant part: each class is shared among the devices owning it
    parts: list[list[int]] = [[] for _ in range(n_devices)]
    for c, pool in pools.items():
        holders = owners[c] or []
        if not holders:
            continue
        take = int(len(pool) * dominant)
        chunk = np.array_split(np.array(pool[:take], dtype=np.int64), len(holders))
        for i, idx in zip(holders, chunk):
            parts[i] += idx.tolist()
        pools[c] = pool[take:]
    # the remainder: spread over all devices, non-owned classes only
    for c, pool in pools.items():
        others = [i for i in range(n_devices) if c not in own[i]] or list(range(n_devices))
        for j, idx in enumerate(pool):
            parts[others[j % len(others)]].append(int(idx))
    # rebalance so that the minority share is about 1 - dominant
    out = []
    for i in range(n_devices):
        idx = np.array(parts[i], dtype=np.int64)
        mine = idx[np.isin(y[idx], own[i])]
        rest = idx[~np.isin(y[idx], own[i])]
        n_rest = min(len(rest), int(round(len(mine) * (1 - dominant) / dominant)))
        out.append(rng.permutation(np.concatenate([mine, rng.permutation(rest)[:n_rest]])))
    return out


__all__ = ["non_iid_partitions"]
