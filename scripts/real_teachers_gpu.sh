#!/usr/bin/env bash
# scripts/real_teachers_gpu.sh   (needs: pip install -e '.[real]' and a CUDA GPU; ~10 min on one H200)
# Both real-pretrained-teacher experiments at the scale a GPU allows (the CPU configs cut steps and lengths to
# fit 2 cores, and the CPU adaptation of e5-small was too short to give it a usable masked-LM head):
#   1. teachers/real/e5-small-mlm-long.yaml: multilingual-e5-small, MLM head attached and adapted on the GPU;
#   2. BiStil (experiments/bistil/e5-small.yaml) with that teacher and the BiStil demo's steps and lengths
#      (phase 1: 1,200 steps of 32 x 128; phase 2: task teachers 400 steps, BiStil and scratch 800 + 800 dense +
#      sparse steps, the demo's 1,200 + 1,200 cut to fit one 10-minute GPU call);
#   3. MergeDistill (experiments/real-teachers.yaml) with e5-small-mlm-long and minilm-mlm-long (built first),
#      128-token rows, 8,000 training paragraphs per language, 2,000 student steps of 32 in bf16.
# 2 and 3 run side by side on the one GPU (small models leave most of it idle); each is resumable (cached stages).
# Reports: runs/bistil-e5-small-gpu/report/ and runs/real-teachers-gpu/report/ (+ eval/eval.json, train manifest);
# the adaptation reports: runs/zoo/*-long/adapt_report.json. RESULTS=<dir>: also copy them there with the logs.
#
#   PYTHON=.venv/bin/python DEVICE=cuda scripts/real_teachers_gpu.sh
#   DEVICE=cpu SMOKE=1 scripts/real_teachers_gpu.sh    # the whole script with a few steps per stage, under $WORK
# PYTHON: interpreter (default .venv/bin/python if present, else python3). WORK: where SMOKE runs write.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
DEVICE=${DEVICE:-cuda}
RESULTS=${RESULTS:-}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

E5=teachers/real/e5-small-mlm-long.yaml
MINILM=teachers/real/minilm-mlm-long.yaml
BISTIL_OUT=runs/bistil-e5-small-gpu
REAL_OUT=runs/real-teachers-gpu
# step counts: the GPU run's, or a few for SMOKE (a check that every stage runs, not a result)
P1_STEPS=1200 P1_EVAL=200 P2_TEACHER=400 P2_DENSE=800 P2_SPARSE=800 P2_EXAMPLES=100000 TEST_EXAMPLES=100000
RT_STEPS=2000 RT_TRAIN=8000 RT_EVAL=300 RT_PLL=20 RT_CKPT=500
if [ -n "${SMOKE:-}" ]; then
  WORK=${WORK:-/tmp/mergedistill-real-gpu-smoke}
  mkdir -p "$WORK/cards"
  "$PY" - "$WORK" "$E5" "$MINILM" <<'EOF'
import sys
from pathlib import Path

import yaml

work = Path(sys.argv[1])
for path in sys.argv[2:]:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    data["source"] = str(work / "zoo" / data["name"])
    data["build"]["adapt"].update(steps=6, head_steps=3, warmup=2, checkpoint_every=3, eval_paragraphs=10,
                                  batch_size=8, max_length=64, max_paragraphs=200)
    data["build"]["trim"]["max_paragraphs"] = 200
    (work / "cards" / Path(path).name).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
EOF
  E5=$WORK/cards/$(basename "$E5") MINILM=$WORK/cards/$(basename "$MINILM")
  BISTIL_OUT=$WORK/bistil REAL_OUT=$WORK/real
  P1_STEPS=4 P1_EVAL=2 P2_TEACHER=4 P2_DENSE=4 P2_SPARSE=4 P2_EXAMPLES=200 TEST_EXAMPLES=100
  RT_STEPS=4 RT_TRAIN=100 RT_EVAL=20 RT_PLL=2 RT_CKPT=2
fi
LOGS=${RESULTS:-$(dirname "$REAL_OUT")}
mkdir -p "$LOGS"
stamp() { echo "[real-gpu] $(date -u +%H:%M:%S) $*"; }

stamp "e5-small-mlm-long: build on $DEVICE"
start=$(date +%s)
"$PY" -m mergedistill teachers build "$E5" --device "$DEVICE" > "$LOGS/adapt-e5.log" 2>&1 \
  || { tail -n 30 "$LOGS/adapt-e5.log"; exit 1; }
grep -v "it/s\]" "$LOGS/adapt-e5.log" | tail -n 14
stamp "e5-small-mlm-long: $(( $(date +%s) - start )) s"

bistil() {
  "$PY" -m mergedistill bistil run experiments/bistil/e5-small.yaml output_dir="$BISTIL_OUT" device="$DEVICE" threads=0 \
    teacher="$E5" phase1.steps=$P1_STEPS phase1.batch_size=32 phase1.max_length=128 phase1.eval_every=$P1_EVAL \
    phase1.max_paragraphs=20000 phase2.teacher_steps=$P2_TEACHER phase2.batch_size=32 phase2.max_length=128 \
    phase2.dense_steps=$P2_DENSE phase2.sparse_steps=$P2_SPARSE phase2.max_train_examples=$P2_EXAMPLES \
    eval.max_test_examples=$TEST_EXAMPLES
}
real_teachers() {
  "$PY" -m mergedistill run experiments/real-teachers.yaml output_dir="$REAL_OUT" device="$DEVICE" \
    "teachers.cards=[$E5,$MINILM]" student.init_teacher=e5-small-mlm-long \
    corpus.max_train_paragraphs=$RT_TRAIN data.max_length=128 train.steps=$RT_STEPS train.batch_size=32 \
    train.checkpoint_every=$RT_CKPT eval.paragraphs=$RT_EVAL eval.pll_paragraphs=$RT_PLL \
    $([ "$DEVICE" = cpu ] || echo train.precision=bf16)
}
start=$(date +%s)
stamp "BiStil and MergeDistill side by side"
(bistil > "$LOGS/bistil.log" 2>&1; echo "exit $?" >> "$LOGS/bistil.log") &
(real_teachers > "$LOGS/real-teachers.log" 2>&1; echo "exit $?" >> "$LOGS/real-teachers.log") &
wait
stamp "both done in $(( $(date +%s) - start )) s"
tail -n 1 "$LOGS/bistil.log" "$LOGS/real-teachers.log"

if [ -n "$RESULTS" ]; then
  zoo=$(dirname "$("$PY" -c 'import sys; from mergedistill.teachers import load_card; print(load_card(sys.argv[1]).source)' "$E5")")
  tar czf "$RESULTS/reports.tgz" --ignore-failed-read \
    "$zoo"/*-long/adapt_report.json "$BISTIL_OUT"/report "$REAL_OUT"/report "$REAL_OUT"/eval/eval.json \
    "$REAL_OUT"/train/manifest.json "$REAL_OUT"/select 2>/dev/null || true
  stamp "reports -> $RESULTS/reports.tgz"
fi
grep -q "^exit 0$" "$LOGS/bistil.log" && grep -q "^exit 0$" "$LOGS/real-teachers.log"
