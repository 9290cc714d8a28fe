"""AutoTinyBERT's search space: an :class:`Arch` (layers, hidden, heads, FFN), its config, the space of them."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ...model.config import ModelConfig
from ..errors import CompressionError


# ---------------------------------------------------------------------------- architectures and the space
@dataclass(frozen=True, order=True)
class Arch:
    """One sub-architecture. ``n_kv_heads`` follows from the super-model's grouping (see :func:`arch_config`)."""

    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Arch":
        return cls(int(data["n_layers"]), int(data["d_model"]), int(data["n_heads"]), int(data["d_ff"]))


def arch_config(base: ModelConfig, arch: Arch) -> ModelConfig:
    """The sub-model's ModelConfig: ``base`` (the super-model's) with the arch's sizes; kv heads keep the
    super-model's query-per-kv ratio."""
    R = base.n_heads // base.n_kv_heads
    if arch.n_heads % R:
        raise CompressionError(f"{arch}: n_heads={arch.n_heads} is not a multiple of the super-model's "
                               f"{R} query heads per kv head")
    return base.replace(name=f"sub-L{arch.n_layers}-d{arch.d_model}-h{arch.n_heads}-f{arch.d_ff}",
                        n_layers=arch.n_layers, d_model=arch.d_model, n_heads=arch.n_heads,
                        n_kv_heads=arch.n_heads // R, d_ff=arch.d_ff)


def _range(spec: Sequence[int], what: str) -> list[int]:
    lo, hi, step = (list(spec) + [1])[:3] if len(spec) == 2 else list(spec)
    if not (0 < lo <= hi and step > 0):
        raise CompressionError(f"search space {what}={tuple(spec)}: use (min, max[, step]) with 0 < min <= max "
                               f"and step > 0")
    return list(range(lo, hi + 1, step))


@dataclass
class SearchSpace:
    """Sub-architectures of the super-model ``base`` (its config is the maximal shape).

    ``layers=(min, max)``, ``hidden=(min, max, step)``, ``heads=(h1, h2, ...)``, ``ffn=(min, max, step)``.
    Candidates are every combination whose head_dim d/h divides evenly, is at most the super-model's head_dim
    (even with RoPE), and whose heads keep the super-model's kv grouping. Maxima must not exceed ``base``.
    """

    base: ModelConfig
    layers: tuple[int, int]
    hidden: tuple[int, int, int]
    heads: tuple[int, ...]
    ffn: tuple[int, int, int]

    def __post_init__(self) -> None:
        if isinstance(self.base, Mapping):
            self.base = ModelConfig.from_dict(dict(self.base))
        self.layers, self.hidden, self.ffn = tuple(self.layers), tuple(self.hidden), tuple(self.ffn)
        self.heads = tuple(sorted(set(int(h) for h in self.heads)))
        b = self.base
        over = [f"{what} max {vals[-1]} > super-model {have}" for what, vals, have in (
            ("layers", self.layer_choices, b.n_layers), ("hidden", self.hidden_choices, b.d_model),
            ("heads", list(self.heads), b.n_heads), ("ffn", self.ffn_choices, b.d_ff)) if vals and vals[-1] > have]
        if over:
            raise CompressionError(f"the search space exceeds the super-model: {', '.join(over)}; shrink the space "
                                   f"or build a larger super-model")
        if not self.heads or min(self.heads) < 1:
            raise CompressionError(f"search space heads={self.heads}: give at least one positive head count")
        if not self.candidates():
            raise CompressionError(
                f"the search space has no valid architecture: every hidden size in {self.hidden} must be divisible "
                f"by a head count in {self.heads} with head_dim <= {b.head_dim}; adjust hidden step or heads")

    @classmethod
    def for_model(cls, base: ModelConfig, *, layers=None, hidden=None, heads=None, ffn=None) -> "SearchSpace":
        """Defaults: layers 1..L, hidden d/4..d in steps of the head count (so head_dim varies by 1), heads = the
        super-model's, FFN d_ff/8..d_ff in steps of d_ff/16 (AutoTinyBERT's KD mode: fixed heads)."""
        H = base.n_heads
        step = 2 * H if base.position == "rope" else H
        lo = max(step, (base.d_model // 4) // step * step)
        return cls(base, tuple(layers or (1, base.n_layers)), tuple(hidden or (lo, base.d_model, step)),
                   tuple(heads or (H,)), tuple(ffn or (max(1, base.d_ff // 8), base.d_ff, max(1, base.d_ff // 16))))

    @property
    def layer_choices(self) -> list[int]:
        return _range(self.layers, "layers")

    @property
    def hidden_choices(self) -> list[int]:
        return _range(self.hidden, "hidden")

    @property
    def ffn_choices(self) -> list[int]:
        return _range(self.ffn, "ffn")

    def valid(self, arch: Arch) -> bool:
        b = self.base
        R = b.n_heads // b.n_kv_heads
        if arch.d_model % arch.n_heads or arch.n_heads % R:
            return False
        hd = arch.d_model // arch.n_heads
        return hd <= b.head_dim and not (b.position == "rope" and hd % 2)

    def candidates(self) -> list[Arch]:
        if not hasattr(self, "_cands"):
            self._cands = [Arch(L, d, h, f) for L in self.layer_choices for d in self.hidden_choices
                           for h in self.heads for f in self.ffn_choices if self.valid(Arch(L, d, h, f))]
            self._cand_set = set(self._cands)
        return self._cands

    def contains(self, arch: Arch) -> bool:
        self.candidates()
        return arch in self._cand_set

    def max_arch(self) -> Arch:
        return max(self.candidates(), key=lambda a: (a.n_layers, a.d_model, a.d_ff, a.n_heads))

    def arch_config(self, arch: Arch) -> ModelConfig:
        return arch_config(self.base, arch)

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base.to_dict(), "layers": list(self.layers), "hidden": list(self.hidden),
                "heads": list(self.heads), "ffn": list(self.ffn)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSpace":
        return cls(ModelConfig.from_dict(dict(data["base"])), tuple(data["layers"]), tuple(data["hidden"]),
                   tuple(data["heads"]), tuple(data["ffn"]))


def sample_arch(space: SearchSpace, rng: random.Random) -> Arch:
    """A uniform draw from the space's valid candidates (``rng``: a ``random.Random``)."""
    cands = space.candidates()
    return cands[rng.randrange(len(cands))]
