"""Fréchet distance between feature sets, with the real-vs-real floor at the same N.

Protocol ("cross-half"): the scored pairs are split into two halves A and B by patient. A method's
distance is the mean of FD(method on A, real targets of B) and FD(method on B, real targets of A);
the floor is FD(real targets of A, real targets of B). Both compare disjoint patients at the same
sizes, so the floor is the value a perfect generator would get (FID's bias at small N is large:
hundreds of images per set leave a floor well above 0); the `real_target` method scores exactly
the floor.
"""

from __future__ import annotations

import warnings

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance
from scipy.linalg import LinAlgWarning

PROTOCOL = (
    "cross-half: pairs split into halves A/B by patient; value = mean(FD(method_A, real_B), FD(method_B, real_A)); "
    "floor = FD(real_A, real_B) at the same sizes"
)


def feature_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance in float64, as pytorch-fid's `calculate_activation_statistics`."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors of shape (N, d), got {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_from_stats(mu1, s1, mu2, s2) -> tuple[float, str]:
    """pytorch-fid's Fréchet distance; the symmetric eigh form only if sqrtm goes complex."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy 1.17 deprecates sqrtm(disp=)
        warnings.simplefilter("ignore", LinAlgWarning)  # singular covariances at N <= d: flagged in the result's note
        try:
            return float(calculate_frechet_distance(mu1, s1, mu2, s2)), "pytorch_fid.calculate_frechet_distance"
        except ValueError as err:  # 'Imaginary component ...' on badly conditioned covariances
            return _frechet_eigh(mu1, s1, mu2, s2), f"eigh (pytorch-fid raised: {err})"


def _frechet_eigh(mu1, s1, mu2, s2) -> float:
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev).sum())


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between two feature sets (N_a, d) and (N_b, d)."""
    return frechet_from_stats(*feature_statistics(feats_a), *feature_statistics(feats_b))[0]


def patient_halves(subject_ids, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two halves with no patient in both, as equal in size as the patients allow."""
    subject_ids = np.asarray(subject_ids)
    rng = np.random.default_rng(seed)
    uniq = np.unique(subject_ids)
    if len(uniq) < 2:  # one patient: split the pairs themselves
        perm = rng.permutation(len(subject_ids))
        return np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2 :])
    counts = {s: int((subject_ids == s).sum()) for s in uniq}
    order = sorted(rng.permutation(uniq).tolist(), key=lambda s: -counts[s])  # big patients first, ties random
    half_a, half_b, n_a, n_b = set(), set(), 0, 0
    for s in order:
        if n_a <= n_b:
            half_a.add(s)
            n_a += counts[s]
        else:
            half_b.add(s)
            n_b += counts[s]
    idx = np.arange(len(subject_ids))
    return idx[np.isin(subject_ids, list(half_a))], idx[np.isin(subject_ids, list(half_b))]


def cross_half_fd(method_feats: np.ndarray, real_feats: np.ndarray, halves: tuple[np.ndarray, np.ndarray]) -> dict:
    """The method's cross-half distance and the real-vs-real floor at the same sizes (see module doc)."""
    a, b = halves
    out: dict = {"n_a": int(len(a)), "n_b": int(len(b)), "dim": int(real_feats.shape[1]), "protocol": PROTOCOL}
    if min(len(a), len(b)) < 2:
        out.update(value=None, floor=None, reason=f"too few pairs for two halves of >= 2 ({len(a)} and {len(b)})")
        return out
    ra, rb = feature_statistics(real_feats[a]), feature_statistics(real_feats[b])
    ma, mb = feature_statistics(method_feats[a]), feature_statistics(method_feats[b])
    ab, alg1 = frechet_from_stats(*ma, *rb)
    ba, alg2 = frechet_from_stats(*mb, *ra)
    floor, alg3 = frechet_from_stats(*ra, *rb)
    algs = sorted({alg1, alg2, alg3})
    out.update(
        value=(ab + ba) / 2,
        value_a_vs_b=ab,
        value_b_vs_a=ba,
        floor=floor,
        above_floor=(ab + ba) / 2 - floor,
        algorithm="; ".join(algs),
    )
    if out["dim"] >= min(len(a), len(b)):
        out["note"] = (
            f"N per half ({min(len(a), len(b))}) <= feature dim ({out['dim']}): covariances are "
            "singular and the small-N bias dominates; compare only to the floor"
        )
    return out
