"""Aggregation and central differential privacy in plain numpy (no Flower, no I/O).

The ServerApp aggregates with Flower's strategies; these functions are the
same rules written out so that they can be unit-tested, used by the benchmark's
in-process baseline and by tools that inspect updates:

- :func:`fedavg` - weighted mean (McMahan et al. 2017);
- :func:`median` - coordinate-wise median (Yin et al. 2018);
- :func:`trimmed_mean` - coordinate-wise mean after cutting ``beta`` of each tail;
- :func:`krum` - the update closest to its ``n - f - 2`` nearest neighbours (Blanchard et al. 2017);
- :func:`clip_update` / :func:`gaussian_noise` - central DP with fixed clipping
  (the update ``w_i - w_global`` is clipped to L2 norm ``C``; noise of std
  ``z * C / n`` is added to the average, as Flower's server-side fixed clipping does);
- :func:`gaussian_epsilon` - the (epsilon, delta) spent by ``rounds`` such releases,
  by Renyi-DP composition of the Gaussian mechanism (no subsampling amplification).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from edgefleet.errors import ConfigError

Weights = list[np.ndarray]


def _check(updates: Sequence[Sequence[np.ndarray]]) -> None:
    if not updates:
        raise ConfigError("nothing to aggregate: no updates")
    shapes = [tuple(np.shape(a)) for a in updates[0]]
    for u in updates[1:]:
        if [tuple(np.shape(a)) for a in u] != shapes:
            raise ConfigError("updates do not have the same layout")


def flatten(weights: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in weights]) if len(weights) else np.zeros(0)


def unflatten(vector: np.ndarray, like: Sequence[np.ndarray]) -> Weights:
    out: Weights = []
    pos = 0
    for a in like:
        n = int(np.size(a))
        out.append(vector[pos:pos + n].reshape(np.shape(a)).astype(np.asarray(a).dtype))
        pos += n
    return out


def fedavg(updates: Sequence[Sequence[np.ndarray]], num_examples: Sequence[int] | None = None) -> Weights:
    _check(updates)
    n = np.asarray(num_examples if num_examples is not None else [1] * len(updates), dtype=np.float64)
    if len(n) != len(updates) or np.any(n < 0) or n.sum() <= 0:
        raise ConfigError("num_examples must give one non-negative count per update, not all zero")
    mats = np.stack([flatten(u) for u in updates])
    return unflatten((n[:, None] * mats).sum(axis=0) / n.sum(), updates[0])


def median(updates: Sequence[Sequence[np.ndarray]]) -> Weights:
    _check(updates)
    return unflatten(np.median(np.stack([flatten(u) for u in updates]), axis=0), updates[0])


def trimmed_mean(updates: Sequence[Sequence[np.ndarray]], beta: float = 0.2) -> Weights:
    """Drop the ``floor(beta * n)`` largest and smallest values of every coordinate, average the rest."""
    _check(updates)
    if not 0.0 <= beta < 0.5:
        raise ConfigError(f"beta must be in [0, 0.5), got {beta}")
    mats = np.sort(np.stack([flatten(u) for u in updates]), axis=0)
    k = int(math.floor(beta * len(updates)))
    return unflatten(mats[k:len(updates) - k].mean(axis=0), updates[0])


def krum_scores(updates: Sequence[Sequence[np.ndarray]], num_malicious: int) -> np.ndarray:
    _check(updates)
    mats = np.stack([flatten(u) for u in updates])
    d = ((mats[:, None, :] - mats[None, :, :]) ** 2).sum(axis=2)
    k = max(len(updates) - num_malicious - 2, 1)
    return np.array([np.sort(np.delete(d[i], i))[:k].sum() for i in range(len(updates))])


def krum(updates: Sequence[Sequence[np.ndarray]], num_malicious: int = 0) -> Weights:
    scores = krum_scores(updates, num_malicious)
    return [np.array(a, copy=True) for a in updates[int(np.argmin(scores))]]


def clip_update(new: Sequence[np.ndarray], reference: Sequence[np.ndarray], clipping_norm: float) -> tuple[Weights, float]:
    """``reference + (new - reference)`` scaled so that the update's L2 norm is at most ``clipping_norm``.

    Returns the clipped weights and the update's norm before clipping."""
    if not clipping_norm > 0:
        raise ConfigError("clipping_norm must be > 0")
    delta = flatten(new) - flatten(reference)
    norm = float(np.linalg.norm(delta))
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    return unflatten(flatten(reference) + delta * scale, reference), norm


def gaussian_noise(weights: Sequence[np.ndarray], noise_multiplier: float, clipping_norm: float, num_clients: int,
                   rng: np.random.Generator) -> Weights:
    """Add N(0, (z * C / n)^2) to every coordinate of an average of ``n`` clipped updates."""
    if noise_multiplier < 0 or num_clients <= 0:
        raise ConfigError("noise_multiplier must be >= 0 and num_clients > 0")
    std = noise_multiplier * clipping_norm / num_clients
    return [np.asarray(a) + rng.normal(0.0, std, size=np.shape(a)).astype(np.asarray(a).dtype) for a in weights]


def gaussian_epsilon(noise_multiplier: float, rounds: int, delta: float = 1e-5) -> float:
    """Epsilon of ``rounds`` Gaussian releases with noise multiplier ``z`` (device-level DP, full participation).

    RDP of one release at order a is ``a / (2 z^2)``; compose over rounds and
    convert: ``eps = min_a rounds * a / (2 z^2) + log(1/delta) / (a - 1)``.
    """
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    if not 0 < delta < 1:
        raise ConfigError("delta must be in (0, 1)")
    orders = np.concatenate([np.linspace(1.01, 10, 200), np.linspace(10, 1000, 400)])
    eps = rounds * orders / (2 * noise_multiplier ** 2) + math.log(1 / delta) / (orders - 1)
    return float(eps.min())


__all__ = ["fedavg", "median", "trimmed_mean", "krum", "krum_scores", "clip_update", "gaussian_noise", "gaussian_epsilon",
           "flatten", "unflatten"]
