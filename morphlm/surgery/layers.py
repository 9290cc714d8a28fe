"""Layer maps: which layer of one model each layer of another model is built from or matched to.

ONE type, ONE convention, ONE parser for every verb that pairs layers — growth (source → deeper target),
extraction (teacher → shallower student) and distillation (student block supervised by a teacher block):

    LayerMap entry m = the 0-based index of the *from* model's layer (growth source / teacher) that target /
    student layer m (0-based) is copied from or matched to; ``None`` = no layer (a distillation student block
    without intermediate supervision).

So ``blocks.m`` of the new model ↔ ``blocks.{map[m]}`` of the old one, exactly the names in a checkpoint. In
distillation, entry g of student block m pairs the student's ``hidden_states[m + 1]`` / ``attentions[m]`` with
the teacher's ``hidden_states[g + 1]`` / ``attentions[g]`` (``hidden_states[0]`` are the embeddings).

The forms users pass (``parse_layer_map``; the CLI's ``--layer-map`` / ``--layers`` strings are these):

* a comma-separated string ``"0,2,4"``; ``-`` marks an entry with no layer (``"-,2,5"``, where allowed);
* a list / tuple of ints (``None`` for no layer), or a :class:`LayerMap`;
* a name (each verb accepts the ones that make sense for it):

  ``uniform``      g(m) = max(0, ⌊(m+1)·N/M⌋ - 1): TinyBERT's uniform strategy g(m) = m·N/M in 0-based form
                   (Jiao et al. 2020, arXiv 1909.10351, §3.1; 4 of 12 → 2,5,8,11), always keeps the last layer;
                   also ETD's uniform layer selection (Chen et al. 2021, arXiv 2104.11928)
  ``bottom``       0..M-1 (the first M layers; needs M <= N)
  ``top``          N-M..N-1 (the last M layers; needs M <= N)
  ``stack``        g(m) = m mod N (StackBERT: 0 1 … N-1 0 1 …)
  ``interpolate``  g(m) = ⌊m·N/M⌋ (every layer repeated in place: 0 0 1 1 …)

Errors speak the caller's words: ``parse_layer_map(..., roles=("teacher", "student"), error=CompressionError)``
in compression, ``("source", "target")`` and GrowthError in growth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from .errors import SurgeryError

__all__ = ["LayerMap", "parse_layer_map", "NAMED_MAPS", "uniform_layers", "bottom_layers", "top_layers",
           "stack_layers", "interpolate_layers", "evenly_spaced_layers", "is_monotone"]


# ---------------------------------------------------------------------------- named maps (n_from = N, n_to = M)
def uniform_layers(n_from: int, n_to: int) -> list[int]:
    """g(m) = max(0, ⌊(m+1)·N/M⌋ - 1): evenly spaced, always the last layer; repeats layers when M > N."""
    return [max(0, (m + 1) * n_from // n_to - 1) for m in range(n_to)]


def bottom_layers(n_from: int, n_to: int) -> list[int]:
    return list(range(n_to))


def top_layers(n_from: int, n_to: int) -> list[int]:
    return list(range(n_from - n_to, n_from))


def stack_layers(n_source: int, n_target: int) -> list[int]:
    """StackBERT: target layer l copies source layer l mod L (0 1 … L-1 0 1 …)."""
    return [i % n_source for i in range(n_target)]


def interpolate_layers(n_source: int, n_target: int) -> list[int]:
    """Interpolation: every source layer repeated in place (0 0 1 1 …): target l copies ⌊l·L/L'⌋."""
    return [i * n_source // n_target for i in range(n_target)]


def evenly_spaced_layers(n_source: int, n_keep: int) -> list[int]:
    """Keep ``n_keep`` evenly spaced layers, always the last (⌊(i+1)·L/k⌋ - 1): ``uniform`` without repeats."""
    if not 0 < n_keep <= n_source:
        raise SurgeryError(f"cannot keep {n_keep} of {n_source} layers; keep 1..{n_source}")
    return uniform_layers(n_source, n_keep)


# name -> (function, needs n_to <= n_from)
NAMED_MAPS: dict[str, tuple[Callable[[int, int], list[int]], bool]] = {
    "uniform": (uniform_layers, False),
    "bottom": (bottom_layers, True),
    "top": (top_layers, True),
    "stack": (stack_layers, False),
    "interpolate": (interpolate_layers, False),
}


def is_monotone(layer_map: Sequence[int | None]) -> bool:
    """Non-decreasing over the entries that name a layer (``None`` entries are skipped)."""
    used = [g for g in layer_map if g is not None]
    return all(a <= b for a, b in zip(used, used[1:]))


# ---------------------------------------------------------------------------- the type
@dataclass(frozen=True, eq=False)
class LayerMap(Sequence):
    """``layers[m]`` = 0-based layer of the from-model (source / teacher) for layer m of the to-model
    (target / student), or ``None``; ``n_from`` = the from-model's depth (module docstring).

    A read-only sequence; it compares equal to another LayerMap with the same entries and depth, and to a
    plain list/tuple with the same entries (so code that stores lists keeps working)."""

    layers: tuple[int | None, ...]
    n_from: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(None if g is None else int(g) for g in self.layers))

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[int | None]:
        return iter(self.layers)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LayerMap):
            return self.layers == other.layers and self.n_from == other.n_from
        if isinstance(other, (list, tuple)):
            return list(self.layers) == list(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.layers, self.n_from))

    def __repr__(self) -> str:
        return f"LayerMap({list(self.layers)}, n_from={self.n_from})"

    @property
    def n_to(self) -> int:
        return len(self.layers)

    @property
    def has_gaps(self) -> bool:
        """True when some to-layer has no from-layer (``None``)."""
        return any(g is None for g in self.layers)

    def to_list(self) -> list[int | None]:
        """JSON-ready list (``None`` → null)."""
        return list(self.layers)

    def to_string(self) -> str:
        """The CLI form: ``"0,2,4"``, ``-`` for no layer."""
        return ",".join("-" if g is None else str(g) for g in self.layers)


# ---------------------------------------------------------------------------- the parser
def _entry(tok: str) -> int | None:
    tok = tok.strip()
    return None if tok == "-" else int(tok)


def parse_layer_map(spec: str | Sequence[int | None] | LayerMap | None, n_from: int, n_to: int, *,
                    names: Sequence[str] = tuple(NAMED_MAPS), default: str | None = None,
                    allow_gaps: bool = False, monotone: bool = False, roles: tuple[str, str] = ("source", "target"),
                    error: type[ValueError] = SurgeryError) -> LayerMap:
    """A user's layer map (a name in ``names``, ``"0,2,4"``, a list, a LayerMap; ``None`` → ``default``) → a
    validated :class:`LayerMap` of length ``n_to`` over ``n_from`` layers.

    ``allow_gaps``: ``None`` / ``-`` entries are accepted. ``monotone``: the named layers must not decrease.
    ``roles`` = (from-model, to-model) words for messages; ``error`` = the exception class to raise."""
    src, dst = roles
    if n_from < 1 or n_to < 1:
        raise error(f"a layer map needs at least one layer on each side ({src} {n_from}, {dst} {n_to})")
    forms = f"{', '.join(names)} or " if names else ""
    example = ",".join(str(g) for g in uniform_layers(n_from, n_to))
    hint = (f"use {forms}comma-separated 0-based {src} layer indices, one per {dst} layer, such as {example}"
            + (" (- = none)" if allow_gaps else ""))
    if spec is None:
        if default is None:
            raise error(f"no layer map given; {hint}")
        spec = default
    if isinstance(spec, str):
        text = spec.strip()
        if text in NAMED_MAPS:
            if text not in names:
                raise error(f"layer map {text!r} is not available here; {hint}")
            fn, shrink_only = NAMED_MAPS[text]
            if shrink_only and n_to > n_from:
                raise error(f"layer map {text!r} needs a {dst} no deeper than the {src} ({n_to} > {n_from} "
                            f"layers); use another map or an explicit list")
            return LayerMap(tuple(fn(n_from, n_to)), n_from)
        try:
            spec = [_entry(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise error(f"layer map {spec!r}: {hint}") from None
    layers = [None if g is None else g for g in spec]
    bad_type = [g for g in layers if g is not None and (isinstance(g, bool) or not isinstance(g, int))]
    if bad_type:
        raise error(f"layer map {layers} has non-integer entries {bad_type}; {hint}")
    if len(layers) != n_to:
        raise error(f"layer map {layers} has {len(layers)} entries but the {dst} has {n_to} layers; give one "
                    f"{src} layer per {dst} layer ({hint})")
    if not allow_gaps and None in layers:
        raise error(f"layer map {layers} leaves {dst} layers without a {src} layer; every {dst} layer needs one here")
    bad = [g for g in layers if g is not None and not 0 <= g < n_from]
    if bad:
        raise error(f"layer map {layers} names {src} layers {bad}; the {src} has layers 0..{n_from - 1} "
                    f"(0-based)")
    if monotone and not is_monotone(layers):
        raise error(f"layer map {layers} is not monotone (a deeper {dst} layer is mapped to a shallower {src} "
                    f"layer); reorder it or allow free mappings")
    return LayerMap(tuple(layers), n_from)
