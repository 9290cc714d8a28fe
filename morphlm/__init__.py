"""morphlm: build, grow, shrink and reroute transformer language models.

The Python front door (every name below is also importable from the module that defines it)::

    from morphlm import ModelConfig, TransformerLM, TrainArgs, fit, grow, distill, quantize_, TernaryConfig

    model = TransformerLM(ModelConfig.from_name("tiny"))
    fit(model, model_loss, data, TrainArgs(max_steps=100))            # the one training loop
    big = grow(model, {"n_layers": 4}, method="stack")                # partial targets read against the source
    quantize_(big, TernaryConfig())                                   # in place; Int8Config() for int8

Checkpoint directories: ``save_checkpoint``, ``load_checkpoint(dir) -> model``, ``open_checkpoint(dir) ->
(model, tokenizer, record)`` and ``parent_record(dir)`` for lineage. Searches: ``run_layermap_search`` /
``layermap_search_run`` (student→teacher layer maps) and ``train_supernet`` + ``evolutionary_search``
(AutoTinyBERT). ``morphlm.grow`` is the growth verb here; its package stays importable as a module path
(``from morphlm.grow import run_schedule``, ``import morphlm.grow.api``).
"""

from .model import ModelConfig, TransformerLM
from .train.checkpoint import load_model as load_checkpoint
from .train.checkpoint import open_checkpoint, parent_record, save_checkpoint
from .train.loop import FitResult, TrainingDiverged, evaluate, fit, model_loss
from .train.optim import TrainArgs
from .train.run import build_spec, train_run
# TrainingInterrupted (train/loop.py) is exported here, next to TrainingDiverged.
from .grow.api import grow  # noqa: E402  (binds morphlm.grow to the verb; the package stays in sys.modules)
from .compress.distill import DistillConfig, distill
from .compress.extract import extract, extract_student
from .compress.quantize import Int8Config, quantize_
from .compress.ternary import TernaryConfig
from .compress.layermap import GAConfig, layermap_search_run, run_layermap_search
from .compress.nas import SearchSpace, evolutionary_search, train_supernet

__all__ = [
    "DistillConfig", "FitResult", "GAConfig", "Int8Config", "ModelConfig", "SearchSpace", "TernaryConfig",
    "TrainArgs", "TrainingDiverged", "TransformerLM", "build_spec", "distill", "evaluate", "evolutionary_search",
    "extract", "extract_student", "fit", "grow", "layermap_search_run", "load_checkpoint", "model_loss",
    "open_checkpoint", "parent_record", "quantize_", "run_layermap_search", "save_checkpoint", "train_run",
    "train_supernet",
]
