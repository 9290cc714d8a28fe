"""The latency predictor: latencies measured on this machine, cost-model features, a non-negative ridge fit."""

from __future__ import annotations

import random
from typing import Any, Iterable, Mapping, Sequence

import torch

from ...model.transformer import TransformerLM
from ..errors import CompressionError
from .space import Arch, SearchSpace


# ---------------------------------------------------------------------------- latency
def measure_arch_latencies(space: SearchSpace, archs: Sequence[Arch], *, batch_size: int = 1, seq_len: int = 128,
                           threads: int = 1, warmup: int = 3, runs: int = 10, progress: bool = True,
                           stat: str = "median_ms") -> list[float]:
    """Measured forward latency (ms, ``stat`` of measure_latency's dict) of each arch, randomly initialised."""
    from ..latency import measure_latency

    it: Iterable = archs
    if progress:
        from ...progress import progress_bar

        it = progress_bar(archs, desc="latency", unit="arch")
    out = []
    for arch in it:
        cfg = space.arch_config(arch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = TransformerLM(cfg)
        res = measure_latency(model, batch_size=batch_size, seq_len=min(seq_len, cfg.max_seq_len), threads=threads,
                              warmup=warmup, runs=runs)
        out.append(float(res[stat]))
    return out


def arch_features(arch: Arch, vocab_size: int = 0) -> list[float]:
    """Cost-model features (see the module docstring); scaled to O(1) by the predictor."""
    L, d, h, f = arch.n_layers, arch.d_model, arch.n_heads, arch.d_ff
    return [L, L * d, L * d * d, L * d * f, L * f, L * h, d]


def _nnls(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """min ||Ax - b|| subject to x >= 0 (Lawson-Hanson active set; float64)."""
    m, n = A.shape
    tol = 10 * torch.finfo(A.dtype).eps * float(A.abs().sum(0).max()) * max(m, n)
    P = torch.zeros(n, dtype=torch.bool)
    x = torch.zeros(n, dtype=A.dtype)
    w = A.T @ (b - A @ x)
    for _ in range(3 * n):
        if bool(P.all()) or float(w[~P].max()) <= tol:
            break
        P[int(torch.where(~P, w, torch.full_like(w, -float("inf"))).argmax())] = True
        while True:
            z = torch.zeros(n, dtype=A.dtype)
            z[P] = torch.linalg.lstsq(A[:, P], b[:, None]).solution[:, 0]
            if bool((z[P] > 0).all()):
                break
            neg = P & (z <= 0)
            alpha = float((x[neg] / (x[neg] - z[neg])).min())
            x = x + alpha * (z - x)
            P = P & (x > tol)
        x = z
        w = A.T @ (b - A @ x)
    return x


class LatencyPredictor:
    """Latency (ms) as a non-negative combination of :func:`arch_features` plus a non-negative overhead:
    every term is a cost, so predictions are positive and grow with every size (a small ridge penalty
    ``alpha`` on the RMS-scaled features keeps the fit stable with few samples)."""

    def __init__(self, alpha: float = 1e-6) -> None:
        self.alpha = alpha
        self.coef: torch.Tensor | None = None

    def _z(self, archs: Sequence[Arch]) -> torch.Tensor:
        x = torch.tensor([arch_features(a) for a in archs], dtype=torch.float64) / self.scale
        return torch.cat([torch.ones(len(archs), 1, dtype=torch.float64), x], 1)

    def fit(self, archs: Sequence[Arch], ms: Sequence[float]) -> "LatencyPredictor":
        archs = [a if isinstance(a, Arch) else Arch.from_dict(a) for a in archs]
        if len(archs) != len(ms) or len(archs) < 2:
            raise CompressionError(f"the latency predictor needs >= 2 (arch, ms) pairs of equal count, got "
                                   f"{len(archs)} archs and {len(ms)} latencies")
        x = torch.tensor([arch_features(a) for a in archs], dtype=torch.float64)
        self.scale = x.square().mean(0).sqrt().clamp(min=1e-12)
        z, y = self._z(archs), torch.tensor(list(ms), dtype=torch.float64)
        k = z.shape[1]
        ridge = (self.alpha * len(archs)) ** 0.5 * torch.eye(k, dtype=torch.float64)[1:]  # intercept unpenalised
        self.coef = _nnls(torch.cat([z, ridge]), torch.cat([y, torch.zeros(k - 1, dtype=torch.float64)]))
        return self

    def predict_many(self, archs: Sequence[Arch]) -> list[float]:
        if self.coef is None:
            raise CompressionError("the latency predictor is not fitted; call .fit(archs, ms) first")
        return (self._z([a if isinstance(a, Arch) else Arch.from_dict(a) for a in archs]) @ self.coef).tolist()

    def predict(self, arch: Arch | Mapping[str, int]) -> float:
        return self.predict_many([arch])[0]

    def mape(self, archs: Sequence[Arch], ms: Sequence[float]) -> float:
        """Mean absolute percentage error (in %) on (archs, measured ms)."""
        pred = self.predict_many(archs)
        return 100.0 * sum(abs(p - y) / y for p, y in zip(pred, ms)) / max(len(ms), 1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "nonneg-ridge", "alpha": self.alpha, "coef": self.coef.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LatencyPredictor":
        p = cls(float(data["alpha"]))
        p.coef, p.scale = (torch.tensor(data[k], dtype=torch.float64) for k in ("coef", "scale"))
        return p


def fit_latency_predictor(archs: Sequence[Arch], ms: Sequence[float], *, holdout: float = 0.2,
                          seed: int = 0) -> tuple[LatencyPredictor, dict[str, Any]]:
    """Fit on a random (1 − holdout) split, report MAPE on both parts; returns (predictor, report)."""
    n = len(archs)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_hold = int(round(holdout * n)) if n >= 5 else 0
    hold, train = order[:n_hold], order[n_hold:]
    pred = LatencyPredictor().fit([archs[i] for i in train], [ms[i] for i in train])
    report = {"n_train": len(train), "n_holdout": len(hold),
              "train_mape": pred.mape([archs[i] for i in train], [ms[i] for i in train]),
              "holdout_mape": pred.mape([archs[i] for i in hold], [ms[i] for i in hold]) if hold else None}
    return pred, report
