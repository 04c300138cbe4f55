"""Calibrated routing signals: each drafter's confidence and entropy mapped to the gain it
actually gets (accepted draft tokens against the verified continuation, `signals.tree_gain`),
so that signals of differently built drafters become comparable (an early-exit head is more
confident than a trained specialist at equal acceptance).

Per drafter and signal, a ridge regression gain ≈ a + b·x, updated online from verification
outcomes; x is the signal as a feature where larger is better (confidence: mean path
probability; entropy: exp(-mean entropy)). Every fit starts from one shared prior (a0, b0) with
the weight of `strength` observations, so an unfitted calibration ranks exactly as the raw
signal does. The state is a plain dict (`to_dict` / `from_dict`, `save` / `load`) so a fit made
offline (e.g. from an evaluation run) can be stored with the drafters and used as the prior."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

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
    """Ridge regression y ≈ a + b·x from sufficient statistics, prior (a0, b0) weighted as
    `strength` observations on each coefficient."""

    a0: float = 0.0
    b0: float = 1.0
    strength: float = 4.0
    n: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def add(self, x: float, y: float) -> None:
        self.n += 1
        self.sx += x
        self.sy += y
        self.sxx += x * x
        self.sxy += x * y

    def coefficients(self) -> tuple[float, float]:
        lam = self.strength
        m00, m01, m11 = lam + self.n, self.sx, lam + self.sxx
        r0, r1 = lam * self.a0 + self.sy, lam * self.b0 + self.sxy
        det = m00 * m11 - m01 * m01  # > 0: lam > 0 makes the matrix positive definite
        return (m11 * r0 - m01 * r1) / det, (m00 * r1 - m01 * r0) / det

    def predict(self, x: float) -> float:
        a, b = self.coefficients()
        return a + b * x


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

    def predict(self, signal: str, name: str, tree: DraftTree) -> float:
        """Expected gain of `tree` (drafted by `name`) from its signal."""
        return self.fit(signal, name).predict(signal_feature(signal, tree))

    def update(self, name: str, tree: DraftTree, gain: float) -> None:
        """One verified outcome of `name`'s tree: every signal learns from it."""
        for signal in SIGNALS:
            self.fit(signal, name).add(signal_feature(signal, tree), gain)

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
