"""``morphlm simulate``: the cost simulator (morphlm/sim/) — search a model space × parallel layouts on a hardware
profile for the best predicted loss per time; ``--calibrate`` measures this machine, ``--validate`` checks the
predicted step times against measured ones."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, app, friendly
from .options import verb, with_config


@app.command("simulate", cls=verb())
@with_config
@friendly
def simulate(
    hardware: str = typer.Option("cpu-local", help="cpu-local (measured; the cache's calibration when there is "
                                                   "one) | h100 | h200 (spec sheets) | a profile JSON file."),
    space: str = typer.Option("default", help="Model space: a JSON file mapping SimModel fields (n_layers, "
                                              "d_model, experts, top_k, expert_d_ff, shared_experts, pool_size, "
                                              "loop_repeats, ...) to a value or a list; 'default' picks a CPU or "
                                              "GPU space by the hardware."),
    layout: Optional[list[str]] = typer.Option(None, help="Parallel layout(s), e.g. dp=8,tp=1,pp=1,ep=8,m=1,b=4 "
                                                          "(repeat the option for several). Default: one device, or "
                                                          "every layout of --devices."),
    devices: Optional[int] = typer.Option(None, help="Device count: every layout's dp·tp·pp must equal it; "
                                                     "without --layout, all its factorisations are searched."),
    global_batch: int = typer.Option(64, "--global-batch", help="Sequences per step (without --layout)."),
    micro_batch_size: int = typer.Option(8, "--micro-batch-size", help="Sequences per micro-batch (without "
                                                                       "--layout)."),
    dtype: str = typer.Option("bf16", help="bf16 | fp32."),
    hours: float = typer.Option(1.0, help="Wall-clock budget: configs are ranked by the loss predicted after it."),
    top: int = typer.Option(10, help="Rows of the table."),
    results: Optional[list[Path]] = typer.Option(None, help="Benchmark results JSON(s) whose runs fit the scaling "
                                                           "law (default benchmarks/results/*.json)."),
    runs: Optional[list[Path]] = typer.Option(None, "--run", help="Run folder(s) whose metrics.jsonl add records "
                                                                  "to the scaling-law fit."),
    out: Path = typer.Option(Path("simulate.json"), help="JSON file to write (all ranked configs, the law, the "
                                                         "profile)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object instead of the table."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Measure this CPU first (matmuls, bandwidth, "
                                                              "operator overhead, attention; ~10 s) and save it as "
                                                              "the cpu-local profile in the cache."),
    validate: bool = typer.Option(False, "--validate", help="Measure training steps of held-out small dense "
                                                            "models and routed FFN layers on this CPU and report "
                                                            "the simulator's error (MAPE; < 1 min); no search."),
    quick: bool = typer.Option(False, "--quick", help="With --calibrate/--validate: fewer shapes and configs."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Predict step time, memory per device and MFU of every config of a model space under each parallel layout
    from operator costs, drop what does not fit, and rank the rest by the loss a scaling law (fitted to our runs,
    else Chinchilla's) predicts after --hours; prints the top configs and writes JSON."""
    import json

    from ..io import json_safe, json_text, write_atomic
    from ..sim import hardware as hw
    from ..sim import scaling, search, space as sp

    _setup_logging(verbose)
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"--dtype {dtype!r}: use bf16 or fp32")
    if top < 1:
        raise ValueError(f"--top {top}: must be at least 1")
    if devices is not None and devices < 1:
        raise ValueError(f"--devices {devices}: must be at least 1")
    if global_batch < 1 or micro_batch_size < 1 or hours <= 0:
        raise ValueError("--global-batch and --micro-batch-size must be at least 1 and --hours positive")
    if calibrate:
        if hardware != "cpu-local":
            raise ValueError(f"--calibrate measures this CPU (cpu-local), not {hardware!r}; drop --hardware")
        prof = hw.calibrate(threads=1, quick=quick, write=hw.cache_path())
        typer.echo(f"calibrated cpu-local: best matmul fp32 {prof.peak('fp32') / 1e9:.4g} GFLOP/s, bf16 "
                   f"{prof.peak('bf16') / 1e9:.4g} GFLOP/s; wrote {hw.cache_path()}")
    prof = hw.load_profile(hardware)
    if hardware == "cpu-local" and not hw.cache_path().is_file():
        typer.secho(f"note: cpu-local is the committed profile ({prof.source}, {prof.date}); run morphlm simulate "
                    "--calibrate to measure this machine", fg="yellow", err=True)
    if validate:
        from ..sim.validate import HELD_OUT, MOE_LAYERS, QUICK, validate as run_validation, validate_moe_layer

        if prof.interconnect_bw is not None or not prof.name.startswith("cpu"):
            raise ValueError(f"--validate measures this CPU: use --hardware cpu-local (not {hardware!r})")
        res = run_validation(prof, QUICK if quick else HELD_OUT)
        moe = validate_moe_layer(prof, MOE_LAYERS[:2] if quick else MOE_LAYERS, steps=3 if quick else 5)
        doc = json_safe({"validation": res, "moe_layer_validation": moe, "profile": prof.to_dict()})
        text = json_text(doc)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, text)
        if as_json:
            typer.echo(text)
        else:
            for r in res["rows"] + moe["rows"]:
                typer.echo(f"{r['config']:<16} {r['dtype']:<5} measured {r['measured_s'] * 1e3:8.2f} ms  "
                           f"predicted {r['predicted_s'] * 1e3:8.2f} ms  error {r['error']:+.1%}")
            typer.echo(f"MAPE {res['mape']:.1f}% over {len(res['rows'])} held-out training steps (dense models, "
                       f"best of the timed steps), {moe['mape']:.1f}% over {len(moe['rows'])} routed FFN layers "
                       f"(mean of the steps); wrote {out}")
        return
    spc = search.load_space(space, prof)
    if layout:
        layouts = [sp.parse_layout(t) for t in layout]
    elif devices:
        layouts = sp.enumerate_layouts(devices, global_batch=global_batch, micro_batch_size=micro_batch_size)
        if not layouts:
            raise ValueError(f"--global-batch {global_batch} cannot be split into micro-batches of "
                             f"{micro_batch_size} over any data-parallel size of {devices} devices; change one")
    else:  # one device: the global batch in micro-batches (gradient accumulation)
        if global_batch % micro_batch_size:
            raise ValueError(f"--global-batch {global_batch} is not a multiple of --micro-batch-size "
                             f"{micro_batch_size}; make it one")
        layouts = [sp.Layout(micro_batches=global_batch // micro_batch_size, micro_batch_size=micro_batch_size)]
    for lay in layouts:
        if devices is not None and lay.devices != devices:
            raise ValueError(f"layout {lay.describe()} uses dp·tp·pp = {lay.devices} devices, not --devices "
                             f"{devices}; make the product equal the device count")
        if lay.devices > 1 and prof.interconnect_bw is None:
            raise ValueError(f"hardware {prof.name!r} is one device; layout {lay.describe()} needs "
                             f"{lay.devices}: use dp=tp=pp=1 or a multi-device profile (h100, h200)")
    if results is None:
        root = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
        results = sorted(root.glob("*.json"))
    for path in results:
        if not Path(path).is_file():
            raise ValueError(f"--results {path} does not exist")
    law = scaling.scaling_law(results=results, runs=runs or [])
    res = search.search(spc, layouts, prof, law, dtype=dtype, budget_s=hours * 3600.0, devices=devices)
    if not res["results"]:
        why = f" (first: {res['first_incompatible']})" if res.get("first_incompatible") else ""
        raise ValueError(f"no config of the space fits: {res['over_memory']} over the "
                         f"{res['memory_limit_gib']:.3g} GiB per device, {res['incompatible']} incompatible with "
                         f"the layouts{why}, {res['invalid_models']} invalid; widen the space, change the layout "
                         "or add devices")
    doc = json_safe({"hardware": prof.to_dict(), "space": spc, "top": res["results"][:top], **res})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json_text(doc))
    if as_json:
        typer.echo(json.dumps({k: v for k, v in doc.items() if k not in ("results", "hardware")}))
    else:
        typer.echo(search.render_table(res, top))
        typer.echo(f"wrote {out}")
