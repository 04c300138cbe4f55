"""Calibrated routing signals: each drafter's confidence and entropy mapped to the gain it
actually gets (accepted draft tokens against the verified continuation, `signals.tree_gain`),
so that signals of differently built drafters become comparable (an early-exit head is more
confident than a trained specialist at equal acceptance).

Per drafter and signal, a ridge regression gain ≈ a + b·x + c·z, updated online from
verification outcomes; x is the signal as a feature where larger is better (confidence: mean path
probability; entropy: exp(-mean entropy)); z is the turn's domain evidence for the drafter: the
domain router's probability that the prompt is of this drafter's domain, centred (p - 1/K for K
domains; 0 where no domain router covers the drafters). A signal alone cannot tell a specialist
confident outside its domain from one confident in it (measured: a fit on x alone, pooled over
math and chat, lets the math drafter draft most chat steps); z, read once per turn from the
prefill, can (docs/design.md "Feedback, gains and calibration"). Every fit starts from one
shared prior (a0, b0, c0 = 0) with the weight of `strength` observations per coefficient, so an
unfitted calibration ranks exactly as the raw signal does. The state is a plain dict (`to_dict` /
`from_dict`, `save` / `load`) so a fit made offline (e.g. from an evaluation run) can be stored
with the drafters and used as the prior."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from runtime.atomic import write_json
from trees import DraftTree

from .signals import tree_confidence, tree_entropy

SIGNALS = ("confidence", "entropy")


def signal_feature(signal: str, tree: DraftTree) -> float:
    """The signal of `tree` as a feature where larger predicts more acceptance."""
    if signal == "confidence":
        return tree_confidence(tree)
    if signal == "entropy":
        h = tree_entropy(tree)
        return 0.0 if math.isinf(h) else math.exp(-h)
    raise ValueError(f"unknown routing signal {signal!r}; known: {SIGNALS}")


@dataclass
class LinearFit:
    """Ridge regression y ≈ a + b·x + c·z from sufficient statistics, prior (a0, b0, c0) weighted
    as `strength` observations on each coefficient. A fit that never saw z ≠ 0 (stored before z
    existed, or used without a domain router) keeps c = c0 and is exactly the two-feature fit."""

    a0: float = 0.0
    b0: float = 1.0
    strength: float = 4.0
    n: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    c0: float = 0.0
    sz: float = 0.0
    sxz: float = 0.0
    szz: float = 0.0
    szy: float = 0.0

    def add(self, x: float, y: float, z: float = 0.0) -> None:
        self.n += 1
        self.sx += x
        self.sy += y
        self.sxx += x * x
        self.sxy += x * y
        self.sz += z
        self.sxz += x * z
        self.szz += z * z
        self.szy += z * y

    def coefficients(self) -> tuple[float, float, float]:
        """(a, b, c): the ridge solution (λI + XᵀX) β = λ·prior + Xᵀy over rows [1, x, z]."""
        lam = self.strength  # > 0 makes the matrix positive definite
        m = np.array([[lam + self.n, self.sx, self.sz],
                      [self.sx, lam + self.sxx, self.sxz],
                      [self.sz, self.sxz, lam + self.szz]])
        r = np.array([lam * self.a0 + self.sy, lam * self.b0 + self.sxy, lam * self.c0 + self.szy])
        a, b, c = np.linalg.solve(m, r)
        return float(a), float(b), float(c)

    def predict(self, x: float, z: float = 0.0) -> float:
        a, b, c = self.coefficients()
        return a + b * x + c * z


class Calibration:
    """Fits per (signal, drafter name). `prior` holds stored fits (e.g. fitted offline) that
    unseen drafters start from."""

    def __init__(self, fits: Mapping[str, Mapping[str, LinearFit]] | None = None, strength: float = 4.0):
        self.strength = strength
        self.fits: dict[str, dict[str, LinearFit]] = {s: dict((fits or {}).get(s, {})) for s in SIGNALS}

    def fit(self, signal: str, name: str) -> LinearFit:
        if signal not in self.fits:
            raise ValueError(f"unknown routing signal {signal!r}; known: {SIGNALS}")
        return self.fits[signal].setdefault(name, LinearFit(strength=self.strength))

    def predict(self, signal: str, name: str, tree: DraftTree, domain: float = 0.0) -> float:
        """Expected gain of `tree` (drafted by `name`) from its signal and the turn's centred
        domain evidence for `name` (`domain_evidence`; 0: none)."""
        return self.fit(signal, name).predict(signal_feature(signal, tree), domain)

    def update(self, name: str, tree: DraftTree, gain: float, domain: float = 0.0) -> None:
        """One verified outcome of `name`'s tree: every signal learns from it."""
        for signal in SIGNALS:
            self.fit(signal, name).add(signal_feature(signal, tree), gain, domain)

    def only(self, names) -> "Calibration":
        """A copy holding the fits of `names` alone."""
        keep = set(names)
        return Calibration({s: {n: f for n, f in fits.items() if n in keep} for s, fits in self.fits.items()},
                           strength=self.strength)

    def uses_domain(self) -> bool:
        """Whether any fit learnt a domain coefficient (it saw domain evidence)."""
        return any(f.szz > 0 for fits in self.fits.values() for f in fits.values())

    def observations(self, signal: str) -> dict[str, int]:
        return {n: int(f.n) for n, f in self.fits[signal].items()}

    # --- storage --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"strength": self.strength, "fits": {s: {n: asdict(f) for n, f in fits.items()} for s, fits in self.fits.items()}}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Calibration":
        try:
            fits = {s: {n: LinearFit(**f) for n, f in by_name.items()} for s, by_name in data["fits"].items()}
            return cls(fits, strength=float(data.get("strength", 4.0)))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a routing calibration: {e}") from e

    def save(self, path: str | Path) -> Path:
        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def domain_evidence(probabilities: Mapping[str, float], names) -> dict[str, float]:
    """The calibration's z per drafter: the domain router's probability for the drafter's domain,
    centred on the uninformed 1/K. Empty (no evidence) unless the router covers every drafter."""
    names = list(names)
    if not probabilities or any(n not in probabilities for n in names):
        return {}
    k = len(probabilities)
    return {n: float(probabilities[n]) - 1.0 / k for n in names}
