"""Which config fields two models must share before one can be built from the other's units."""

from __future__ import annotations

from ..model.config import ModelConfig
from .errors import SurgeryError

# fields that must be equal between the two models (surgery changes sizes, never the architecture kind)
SAME_FIELDS = ("vocab_size", "activation", "norm", "norm_placement", "norm_eps", "position", "causal", "head",
               "bias", "tie_embeddings", "embed_norm", "final_norm", "n_segments")


def check_same_family(ref: ModelConfig, other: ModelConfig, error: type[ValueError] = SurgeryError, *,
                      ref_name: str, other_name: str, verb: str) -> None:
    """The checks growth and extraction share: ``other`` may differ from ``ref`` in sizes only (same vocabulary,
    architecture fields, RoPE base and class count). Raises ``error`` naming the field and the fix."""
    if ref.vocab_size != other.vocab_size:
        raise error(
            f"the {ref_name}'s vocabulary has {ref.vocab_size} tokens but the {other_name}'s vocab_size is "
            f"{other.vocab_size}; the {other_name} keeps the {ref_name}'s tokenizer, so set "
            f"vocab_size={ref.vocab_size} in the {other_name} config")
    for key, plain in (("qk_norm", "none"), ("qkv_bias", None)):  # weights the index maps do not cover
        if getattr(ref, key) != plain or getattr(other, key) != plain:
            raise error(f"{key}={getattr(ref, key)!r} ({ref_name}) / {getattr(other, key)!r} ({other_name}): {verb} "
                        f"does not map QK-norm weights or a q/k/v-only bias; use models with qk_norm='none' and "
                        f"qkv_bias=null")
    for key in SAME_FIELDS:
        a, b = getattr(ref, key), getattr(other, key)
        if a != b:
            raise error(f"{ref_name} and {other_name} differ in {key} ({a!r} vs {b!r}); {verb} changes sizes only, "
                        f"so set {key}={a!r} in the {other_name} config")
    if ref.position == "rope" and ref.rope_theta != other.rope_theta:
        raise error(f"rope_theta differs ({ref.rope_theta} vs {other.rope_theta}); keep the {ref_name}'s")
    if ref.head == "cls" and ref.n_classes != other.n_classes:
        raise error(f"n_classes differs ({ref.n_classes} vs {other.n_classes}); keep the {ref_name}'s")
