#!/usr/bin/env bash
# benchmarks/gpu_check.sh   (or `make gpu-check`): the GPU check of the engine, about 8 min on one GPU.
#   1. the demo config (experiments/demo.yaml) on CUDA in bf16 under ZeRO-2, few steps, small demo teachers;
#   2. the BiStil demo (experiments/bistil/demo.yaml) on CUDA: trim, phase 1, phase 2, evaluation, few steps;
#   3. the device-aware speed benchmarks (benchmarks/run_all.py --gpu --only inference_latency train_throughput):
#      writes benchmarks/RESULTS-gpu.md, with the student step's MFU-style ratio against the bf16 matmul peak
#      measured in the same run (the CPU-side benchmarks belong to `make bench` on the CPU machine).
# The results of 1 and 2 are appended to benchmarks/RESULTS-gpu.md. On a machine without CUDA it refuses (exit 2).
#
#   PYTHON=python3 WHEELS=.whl benchmarks/gpu_check.sh
#   DEVICE=cpu SMOKE=1 benchmarks/gpu_check.sh     # every command of 1 and 2 with a few steps on the CPU (fp32),
#                                                  # to check the script before spending GPU time; no benchmarks
# PYTHON: the interpreter (default: .venv/bin/python if present, else python3). WHEELS: a folder of wheels to
# install first (into $WORK/site, no index, no dependencies), e.g. what an image lacks: deepspeed hjson pydantic
# pydantic-core annotated-types typing-inspection omegaconf antlr4-python3-runtime datasets dill multiprocess.
# WORK: scratch folder (default /tmp/mergedistill-gpu-check). The repository root is put on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
WORK=${WORK:-/tmp/mergedistill-gpu-check${SMOKE:+-smoke}}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-200}          # student steps of the demo check
TEACHER_STEPS=${TEACHER_STEPS:-300}  # build steps of each small demo teacher (on the CPU, like `teachers build`)
PRECISION=bf16 BISTIL_STEPS=60
if [ -n "${SMOKE:-}" ]; then STEPS=4 TEACHER_STEPS=10 BISTIL_STEPS=4; fi
if [ "$DEVICE" = cpu ]; then PRECISION=fp32; fi

if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  echo "gpu_check: torch ($PY) sees no CUDA GPU on this machine; run it on a machine with one (and a CUDA build of torch)" >&2
  exit 2
fi
mkdir -p "$WORK"
if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" "$WHEELS"/*.whl
  export PYTHONPATH="$WORK/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$ROOT:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" -c 'import deepspeed, omegaconf, datasets, transformers, torch; print("gpu_check:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch", torch.__version__, "transformers", transformers.__version__, "deepspeed", deepspeed.__version__)' \
  || { echo "gpu_check: a dependency is missing (above); install mergedistill's requirements, or give WHEELS=<folder of wheels>" >&2; exit 2; }

# Small copies of the demo teacher cards (fewer build steps, built under $WORK): the check is about the GPU path.
"$PY" - "$WORK" "$TEACHER_STEPS" <<'EOF'
import sys
from pathlib import Path

import yaml

work, steps = Path(sys.argv[1]), int(sys.argv[2])
(work / "cards").mkdir(exist_ok=True)
for card in ["demo-multi", "demo-de", "demo-ja", "bistil-mbert"]:
    data = yaml.safe_load(Path(f"teachers/demo/{card}.yaml").read_text(encoding="utf-8"))
    data["source"] = str(work / "zoo" / data["name"])
    data["build"]["train"]["steps"] = steps
    data["build"]["train"]["warmup"] = min(data["build"]["train"].get("warmup", 50), steps // 4)
    (work / "cards" / f"{card}.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
EOF

start=$(date +%s)
"$PY" -m mergedistill run experiments/demo.yaml output_dir="$WORK/demo" device="$DEVICE" \
  "teachers.cards=[$WORK/cards/demo-multi.yaml,$WORK/cards/demo-de.yaml,$WORK/cards/demo-ja.yaml]" \
  train.precision=$PRECISION train.zero_stage=2 train.steps="$STEPS" train.warmup_steps=$(( STEPS / 10 )) train.checkpoint_every=100 train.log_every=20 \
  corpus.max_train_paragraphs=2000 corpus.max_eval_paragraphs=100 eval.paragraphs=100 eval.pll_paragraphs=10
demo_s=$(( $(date +%s) - start ))

start=$(date +%s)
"$PY" -m mergedistill bistil run experiments/bistil/demo.yaml output_dir="$WORK/bistil" device="$DEVICE" threads=0 \
  teacher="$WORK/cards/bistil-mbert.yaml" trim.max_paragraphs=2000 \
  phase1.steps=$BISTIL_STEPS phase1.eval_every=$(( BISTIL_STEPS / 2 )) phase1.max_paragraphs=2000 \
  phase2.teacher_steps=$BISTIL_STEPS phase2.dense_steps=$BISTIL_STEPS phase2.sparse_steps=$BISTIL_STEPS phase2.max_train_examples=1000 \
  eval.max_test_examples=300 eval.latency_repeats=5 >/dev/null
bistil_s=$(( $(date +%s) - start ))

# the summary of 1 and 2 first (kept in $WORK/summary.md should the benchmarks not finish), then 3
"$PY" - "$WORK" "$demo_s" "$bistil_s" "$STEPS" "$DEVICE" "$PRECISION" <<'EOF'
import json
import sys
from pathlib import Path

work, demo_s, bistil_s, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
device, precision = sys.argv[5], sys.argv[6]
manifest = lambda path: json.loads((path / "manifest.json").read_text(encoding="utf-8"))
train = manifest(work / "demo" / "train")
rows = json.loads((work / "demo" / "eval" / "eval.json").read_text(encoding="utf-8"))["rows"]
checks = json.loads((work / "demo" / "export" / "tokenizer_check.json").read_text(encoding="utf-8"))
bistil = json.loads((work / "bistil" / "report" / "results.json").read_text(encoding="utf-8"))
lines = ["", "## GPU check (`benchmarks/gpu_check.sh`)", "",
         f"- demo config on {device}, {precision}, ZeRO-2, {steps} student steps, small demo teachers: {demo_s} s for the whole pipeline; "
         f"student {train['tokens_per_s']:.0f} tokens/s, final loss {train['final_loss']:.3f}",
         "- student / teacher masked-token accuracy per language: "
         + ", ".join(f"{r['lang']} {r['student_acc']:.3f}/{r['teacher_acc']:.3f}" for r in rows),
         "- the exported AutoTokenizer gives the ids the student was trained on: "
         + ", ".join(f"{lang} {c['ids_equal']}/{c['paragraphs']}" for lang, c in sorted(checks.items())),
         f"- BiStil demo phases on {device} (trim, phase 1, phase 2, evaluation; few steps): {bistil_s} s; target-language scores: "
         + "; ".join(f"{task}: " + ", ".join(f"{r['model']} {r['target']:.3f}" for r in entry["rows"]) for task, entry in bistil["tasks"].items())]
(work / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
print("\n".join(lines))
EOF

if [ "$DEVICE" = cuda ]; then
  "$PY" benchmarks/run_all.py --gpu --only inference_latency train_throughput
  cat "$WORK/summary.md" >> benchmarks/RESULTS-gpu.md
fi
