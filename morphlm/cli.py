"""The command line: a thin table from subcommands to typed functions (no logic of its own)."""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="morphlm: build, grow, shrink and reroute transformer language models, and measure them.")
data_app = typer.Typer(no_args_is_help=True, help="Corpora and token stores: list, prepare, inspect.")
app.add_typer(data_app, name="data")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: each writes benchmarks/results/<name>.json (+ plot).")
app.add_typer(bench_app, name="bench")
search_app = typer.Typer(no_args_is_help=True, help="Searches over layer mappings and architectures.")
app.add_typer(search_app, name="search")


def _setup_logging(verbose: bool = False) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _user_errors():
    from .data import CorpusError, TaskError, TokenizerError
    from .data.batches import BatchError
    from .data.tokens import TokenStoreError
    from .grow.errors import GrowthError
    from .interop.hf import InteropError
    from .model.config import ConfigError
    from .train.checkpoint import CheckpointError
    from .train.loop import TrainingDiverged

    return (ConfigError, CheckpointError, CorpusError, TokenizerError, TokenStoreError, TaskError, BatchError,
            InteropError, GrowthError, TrainingDiverged, FileNotFoundError, ValueError)


def _stopped(exc: KeyboardInterrupt) -> None:
    """One clear message on stderr for a run stopped by Ctrl-C/SIGTERM (what was kept, how to go on); exit 130."""
    from .train.loop import TrainingInterrupted

    if isinstance(exc, TrainingInterrupted):
        msg = f"interrupted: {exc}"
    elif str(exc):  # a verb's own stop report (e.g. a benchmark's)
        msg = f"interrupted: {exc}"
    else:  # a second Ctrl-C, or a signal outside training
        msg = ("aborted by a signal: the step in flight was not saved; checkpoints written before it are kept "
               "(rerun the same command, with --resume auto where the verb takes it)")
    typer.secho(msg, fg="yellow", err=True)
    raise typer.Exit(130)


def _sigterm_as_interrupt() -> None:
    """SIGTERM outside fit() (which handles it as a stop request itself) ends the verb like Ctrl-C does."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def friendly(fn):
    """Turn known user errors into one clear line on stderr and exit status 2 (1 for a diverged run), and a
    stopped run (TrainingInterrupted, a second Ctrl-C, a signal between trainings) into a message and exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            _stopped(exc)
        except _user_errors() as exc:
            from .train.loop import TrainingDiverged

            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(1 if isinstance(exc, TrainingDiverged) else 2) from None

    return wrapper


def _parse_extra(args: list[str]) -> dict[str, str]:
    """``--field value``, ``--field=value`` or ``--set field=value`` → {field: value}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--"):
            raise typer.BadParameter(f"unexpected argument {tok!r}; settings look like --d-model 128 or --set d_model=128")
        key = tok[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:
            value, i = "true", i + 1
        if key == "set":
            if "=" not in value:
                raise typer.BadParameter(f"--set {value!r}: use --set field=value")
            key, value = value.split("=", 1)
        out[key.replace("-", "_")] = value
    return out


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Recipe YAML with model/data/train sections."),
    preset: Optional[str] = typer.Option(None, help="Model preset (tiny, small, gpt-20m, gpt2-small, bert-base, ...)."),
    corpus: Optional[str] = typer.Option(None, help="Corpus name (stdlib, shakespeare) or a path/glob/JSONL."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
    out: Optional[Path] = typer.Option(None, help="Checkpoint directory to write (and resume from)."),
    resume: Optional[str] = typer.Option(None, help="'auto': continue the run in --out if there is one "
                                                     "(default: never)."),
    batch_size: Optional[int] = typer.Option(None, help="Global batch, sequences per optimizer step."),
    seq_len: Optional[int] = typer.Option(None, help="Tokens per sequence."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    schedule_steps: Optional[int] = typer.Option(
        None, help="LR schedule horizon (warmup + cosine decay); default --max-steps. Recorded and reused on "
                   "resume: give the final length here to extend a run later without changing its past."),
    parallel: Optional[str] = typer.Option(None, help="none | ddp | fsdp (under torchrun)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda."),
    init: Optional[Path] = typer.Option(None, help="Start from this checkpoint's weights (fine-tuning)."),
    schedule: Optional[str] = typer.Option(
        None, help="Progressive schedule from growth's registry: two-stage (bert2BERT) | apollo | mslt | chain | any "
                   "registered with morphlm.grow.register_schedule. --max-steps is the budget "
                   "of all stages; stage checkpoints go to OUT/stage<k>-*/, the final model to OUT/."),
    source: Optional[Path] = typer.Option(None, help="--schedule: checkpoint of the smaller model to grow from."),
    schedule_opt: Optional[list[str]] = typer.Option(
        None, "--schedule-opt", help="--schedule option KEY=VALUE (YAML value), repeatable: two-stage l_b=3 "
        "stage1_fraction=0.125 method=aki; apollo unique=[1,3,6,12] switch=[0.05,0.1,0.25]; mslt depths=[2,4,8] "
        "final_fraction=0.5; chain stages=[{n_layers: 2}, {method: stack, n_layers: 4}]. A recipe's "
        "`schedule:` section (name: + options) does the same."),
    override: bool = typer.Option(
        False, "--override", help="With --resume auto: continue even though run-defining settings (batch, sequence "
                                  "length, seed, data, LR schedule, precision) differ from the saved run's; each "
                                  "change is recorded in metrics.jsonl and lineage.json."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train (or resume) a model. Any config field can be overridden: --d-model 128, --n-layers 4,
    --warmup-steps 50, --eval-every 100, --save-every 50, --precision bf16, --task-train F --task-val F, ...
    (or --set field=value). With --schedule, the model settings describe the final (target) model. A training
    setting given nowhere takes TrainArgs' default, so the same run from Python or a recipe trains identically."""
    _setup_logging(verbose)
    from .train.run import build_spec, train_run

    overrides = _parse_extra(ctx.args)
    overrides.update({k: v for k, v in dict(
        corpus=corpus, max_steps=max_steps, out_dir=str(out) if out else None, resume=resume,
        batch_size=batch_size, seq_len=seq_len, lr=lr, schedule_steps=schedule_steps, parallel=parallel,
        compile=compile, device=device, init=str(init) if init else None,
        override=True if override else None).items() if v is not None})
    if schedule or source or schedule_opt:
        import yaml

        sopts: dict = {}
        for item in schedule_opt or []:
            if "=" not in item:
                raise typer.BadParameter(f"--schedule-opt {item!r}: use KEY=VALUE, e.g. l_b=3")
            key, value = item.split("=", 1)
            sopts[key.strip().replace("-", "_")] = yaml.safe_load(value)
        if source:
            sopts["source"] = str(source)
        overrides.update(schedule=schedule, schedule_opts=sopts)
    spec = build_spec(preset, config, overrides)
    if spec.schedule:  # any schedule in growth's registry (morphlm.grow.SCHEDULES)
        from .grow.schedules import run_from_spec

        result = run_from_spec(spec)
    else:
        result = train_run(spec)
    if int(os.environ.get("RANK", "0")) == 0:
        msg = f"done: step {result.steps}, {result.tokens:,} tokens, {result.flops:.3g} FLOPs"
        if result.val_loss is not None:
            msg += f", val_loss {result.val_loss:.4f}"
        if result.out_dir:
            msg += f" → {result.out_dir}"
        typer.echo(msg)


@app.command("eval")
@friendly
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="Checkpoint directory."),
    corpus: Optional[str] = typer.Option(None, help="Evaluate on this corpus instead of the run's own."),
    max_batches: Optional[int] = typer.Option(None, help="Number of validation batches."),
    device: str = typer.Option("auto"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    latency: bool = typer.Option(False, "--latency/--no-latency",
                                 help="Also time the forward pass: batch 1 and 32, sequence 128, 1 thread, "
                                      "median and p90 ms."),
    latency_runs: int = typer.Option(100, help="Timed runs per batch size (after 10 warm-up runs)."),
) -> None:
    """Validation loss and perplexity (and accuracy for classifiers) of a checkpoint, its parameter count and
    bytes on disk (also for quantized directories written by `morphlm quantize`), and optionally latency."""
    _setup_logging()
    from .train.run import eval_run

    metrics = eval_run(run_dir, corpus=corpus, device=device, max_batches=max_batches, latency=latency,
                       latency_runs=latency_runs)
    if as_json:
        typer.echo(json.dumps(metrics))
    else:
        typer.echo("  ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.4f}" for k, v in metrics.items()))


@app.command()
@friendly
def generate(
    run_dir: Path = typer.Argument(..., help="Checkpoint directory of a causal LM."),
    prompt: str = typer.Option("", help="Text to continue."),
    max_new_tokens: int = typer.Option(100),
    temperature: float = typer.Option(0.8, help="0 = greedy."),
    top_k: int = typer.Option(50),
    n: int = typer.Option(1, help="Number of samples."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
) -> None:
    """Sample text from a trained causal LM."""
    _setup_logging()
    from .train.run import sample_texts

    for i, text in enumerate(sample_texts(run_dir, prompt, n=n, max_new_tokens=max_new_tokens,
                                          temperature=temperature, top_k=top_k, seed=seed, device=device)):
        if n > 1:
            typer.secho(f"--- sample {i + 1}", fg="cyan")
        typer.echo(text)


@app.command()
@friendly
def convert(
    src: Path = typer.Argument(..., help="A Hugging Face model directory or a morphlm checkpoint directory."),
    out: Path = typer.Argument(..., help="Where to write the converted model."),
) -> None:
    """Hugging Face ↔ morphlm: a HF directory (GPT-2, LLaMA, BERT) becomes a morphlm checkpoint and a
    morphlm checkpoint becomes a HF directory (GPT2LMHeadModel, LlamaForCausalLM, BertForMaskedLM,
    BertForSequenceClassification)."""
    _setup_logging()
    from .interop.convert import convert_dir

    kind = convert_dir(src, out)
    typer.echo(f"wrote {kind} → {out}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def grow(
    ctx: typer.Context,
    src: Path = typer.Argument(..., help="Checkpoint directory of the source (smaller) model."),
    to: str = typer.Option(..., "--to", help="Target: a preset name or a config .json/.yaml file."),
    method: str = typer.Option("fpi", help="fpi | aki | stack | interpolate | msg (or a registered learned operator)."),
    out: Path = typer.Option(..., help="Checkpoint directory to write."),
    seed: int = typer.Option(0, help="Seed of the index maps and of new units' initialisation."),
    depth: Optional[str] = typer.Option(None, help="Layer map for a deeper target: stack | interpolate | 0,0,1,1."),
    ramp_steps: Optional[int] = typer.Option(None, help="msg: steps over which the mask ramps 0 → 1 (default 100)."),
) -> None:
    """Grow a trained model into a larger one (bert2BERT FPI/AKI, StackBERT, interpolation, MSG) and write a
    checkpoint directory that keeps the source's tokenizer; lineage.json records the source and the cost.
    Method-specific options pass through: --layers random (msg), --set key=value."""
    _setup_logging()
    from .grow.api import grow_checkpoint
    from .train.run import parse_value

    extra = {k: parse_value(v, None, k) for k, v in _parse_extra(ctx.args).items()}
    info = grow_checkpoint(src, to, method, out, seed=seed, depth=depth, ramp_steps=ramp_steps, **extra)
    typer.echo(f"grew {src} ({info['source_params']:,} params) → {info['out_dir']} ({info['target_params']:,} params) "
               f"by {info['method']}; operator FLOPs {info['flops']:.3g}, source FLOPs {info['parent_flops']:.3g}; "
               f"function-preserving: {info['function_preserving']}")


@data_app.command("list")
def data_list() -> None:
    """The registered corpus names."""
    from .data import list_corpora

    for name, desc in list_corpora().items():
        typer.echo(f"{name:14s} {desc}")
    typer.echo("(any file, folder, glob or .jsonl path works too; hf:NAME[:CONFIG][:SPLIT] with `datasets`)")


@data_app.command("prepare")
@friendly
def data_prepare(
    corpus: str = typer.Argument(..., help="Corpus name or path."),
    vocab_size: int = typer.Option(4096),
    max_bytes: Optional[int] = typer.Option(4_000_000, help="Cap on corpus bytes (0 = no cap)."),
) -> None:
    """Train (or reuse) the BPE tokenizer and token store of a corpus and print their statistics."""
    _setup_logging()
    from .data import prepare_lm_store

    tok, store = prepare_lm_store(corpus, vocab_size, max_bytes=max_bytes or None)
    meta = store.meta
    typer.echo(json.dumps({k: meta[k] for k in ("n_train_docs", "n_val_docs", "n_train_tokens", "n_val_tokens",
                                                "vocab_size")}, indent=1))


@app.command()
@friendly
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Where the demo writes its checkpoints, table and plot."),
    steps: int = typer.Option(1500, help="Total optimizer steps of the three runs (source, grown, scratch)."),
) -> None:
    """The growth story: pretrain a small GPT on the embedded stdlib corpus, grow it with the best growth
    method (from benchmarks/results/growth.json), train it and a scratch model of the target size for equal
    FLOPs, print the table and write the plot. A rerun resumes."""
    _setup_logging()
    from .demo import run_demo

    run_demo(out, steps=steps)


# the method families' own command modules (morphlm/commands/*.py) decorate onto app / bench_app / search_app
from .commands import load_all as _load_commands  # noqa: E402

_load_commands()


def main() -> None:
    """The `morphlm` entry point. Every verb is wrapped by :func:`friendly`, which turns a stopped run
    (TrainingInterrupted is a KeyboardInterrupt) into one message and exit status 130; here SIGTERM is made to
    stop a verb outside fit() (which handles it as a stop request itself) as Ctrl-C does."""
    _sigterm_as_interrupt()
    app()


if __name__ == "__main__":
    main()
