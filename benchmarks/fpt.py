"""Plain prompt tuning vs FPT (progressive prompt tuning on partial models) on SST-2.

A thin script over :func:`morphlm.bench.fpt.run` (the same as ``morphlm bench fpt``); see that module for
the protocol. Writes benchmarks/results/fpt.json and fpt.png.

    python benchmarks/fpt.py [--quick] [--seeds 3] [--objective causal|mlm] [--model DIR]
"""

from __future__ import annotations

import argparse
import logging

import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 seed (about a minute on 2 cores)")
    ap.add_argument("--size", choices=("full", "quick", "tiny"), default=None)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--model", default=None, help="pretrained checkpoint dir (default: pretrain one, cached)")
    ap.add_argument("--objective", choices=("causal", "mlm"), default="causal")
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--task-train", default=None)
    ap.add_argument("--task-val", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    from morphlm.bench.fpt import run

    res = run(size=a.size or ("quick" if a.quick else "full"), seeds=a.seeds, model_dir=a.model,
              objective=a.objective, corpus=a.corpus, task_train=a.task_train, task_val=a.task_val, out=a.out)
    s = res["summary"]
    print(f"plain final acc {s['plain_final_accuracy_mean']}, FPT final acc {s['fpt_final_accuracy_mean']}, "
          f"FPT reached target in {s['fpt_reached']}/{s['seeds']} seeds, FLOPs saving {s['flops_saving_mean']}, "
          f"wall saving {s['wall_saving_mean']} -> {res['path']}")


if __name__ == "__main__":
    main()
