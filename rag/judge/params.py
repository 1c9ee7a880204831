"""The fitted parameters of the offline judgement (abstention and list relevance), and the small
logistic model that applies them.

`rag eval calibrate` fits both on the `tune` split and writes `rag/data/judgement.json` (versioned; it
records what it was fitted on); the answerer loads it. Nothing here is hand-set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from rag.errors import ConfigError

PARAMS_VERSION = 1


@dataclass(frozen=True)
class Logistic:
    """P(y=1 | x) = sigmoid(w · standardise(x) + b), over named features."""

    features: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def from_dict(cls, d: Mapping) -> "Logistic":
        model = cls(tuple(d["features"]), tuple(map(float, d["coef"])), float(d["intercept"]),
                    tuple(map(float, d["mean"])), tuple(map(float, d["scale"])))
        if not len(model.features) == len(model.coef) == len(model.mean) == len(model.scale):
            raise ValueError("features, coef, mean and scale differ in length")
        return model

    def to_dict(self) -> dict:
        return {"features": list(self.features), "coef": list(self.coef), "intercept": self.intercept,
                "mean": list(self.mean), "scale": list(self.scale)}

    def probability(self, values: Mapping[str, float]) -> float:
        z = self.intercept
        for name, w, m, s in zip(self.features, self.coef, self.mean, self.scale):
            z += w * (float(values[name]) - m) / (s or 1.0)
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


@dataclass(frozen=True)
class JudgementParams:
    """abstention: P(answerable) from question features; abstain below `abstain_below`, answer with a
    low-confidence caveat below `low_below`. relevance: P(paper relevant) for list answers, kept at or
    above `relevant_at`."""

    abstention: Logistic
    abstain_below: float
    low_below: float
    relevance: Logistic
    relevant_at: float
    fitted: dict

    @classmethod
    def from_dict(cls, d: Mapping) -> "JudgementParams":
        if d.get("version") != PARAMS_VERSION:
            raise ValueError(f"version {d.get('version')!r}, expected {PARAMS_VERSION}")
        a, r = d["abstention"], d["relevance"]
        return cls(Logistic.from_dict(a["model"]), float(a["abstain_below"]), float(a["low_below"]),
                   Logistic.from_dict(r["model"]), float(r["relevant_at"]), dict(d.get("fitted", {})))

    def to_dict(self) -> dict:
        return {
            "version": PARAMS_VERSION,
            "abstention": {"model": self.abstention.to_dict(), "abstain_below": self.abstain_below,
                           "low_below": self.low_below},
            "relevance": {"model": self.relevance.to_dict(), "relevant_at": self.relevant_at},
            "fitted": self.fitted,
        }


def default_params_text() -> str:
    return resources.files("rag").joinpath("data", "judgement.json").read_text(encoding="utf-8")


@lru_cache(maxsize=8)
def load_params(path: str | None = None) -> JudgementParams:
    """The judgement parameters: `path` (RAG_JUDGEMENT_PARAMS) or the ones shipped with the package."""
    where = path or "rag/data/judgement.json (shipped)"
    try:
        text = Path(path).read_text(encoding="utf-8") if path else default_params_text()
        return JudgementParams.from_dict(json.loads(text))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"judgement parameters {where} are unreadable ({exc}): refit them with `rag eval calibrate`, "
            "or unset RAG_JUDGEMENT_PARAMS to use the shipped ones"
        ) from None


def params_for(settings) -> JudgementParams:
    """The judgement parameters these settings name (RAG_JUDGEMENT_PARAMS), or the shipped ones."""
    return load_params(str(settings.judgement_params) if settings.judgement_params else None)


def fit_logistic(rows: Sequence[Mapping[str, float]], labels: Sequence[int], features: Sequence[str],
                 c: float = 1.0) -> Logistic:
    """Fit a standardised, L2-regularised logistic regression (scikit-learn; used by calibration only)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.array([[float(r[f]) for f in features] for r in rows])
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    clf = LogisticRegression(C=c, max_iter=2000).fit((x - mean) / scale, np.asarray(labels))
    return Logistic(tuple(features), tuple(map(float, clf.coef_[0])), float(clf.intercept_[0]),
                    tuple(map(float, mean)), tuple(map(float, scale)))
