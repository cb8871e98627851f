#!/usr/bin/env bash
# Scores the recaptioning ablation's two arms (tools/train/ablation.sh exports them to $ABL/synthetic and $ABL/alt):
# the 200 evaluation prompts (tools/eval/prompts.json) through hoa's Rust pipeline (generate_hoa.py: one
# `hoa generate --prompt-file` process per run, prompt j seeded S + j, the folder's hoa.json defaults), once
# rewritten (the shipped T5 rewriter that hoa.json names, as `hoa generate` does by default) and once as typed
# (`--no-upsample`), on the seed sets SEEDS; each run scored by the detector (score.py, with its mismatched-prompt
# baseline) and, with CLIP=1, by the toy CLIP (`hoa clip score --mismatched`, against the prompts as typed). Then
# tools/eval/ablation_table.py prints the table (mean and spread over the seed sets).
#
#   tools/eval/ablation.sh                        # from the repo root, after tools/train/ablation.sh
#   SEEDS="0 1000 2000" JOBS=2 CLIP=1 STEPS=10 ABL=/work/abl tools/eval/ablation.sh
#
# STEPS (default 25, the folder's hoa.json) is the sampler's step count for every run; runs go to
# $ABL/gen-steps$STEPS and $ABL/scores-steps$STEPS.
#
# A run whose score JSON exists is skipped, so rerunning continues. JOBS runs go side by side (lavapipe uses every
# core it is given; two runs on two cores overlap the CPU-side work).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
ABL=${ABL:-/work/abl}
SEEDS=${SEEDS:-0 1000 2000}
JOBS=${JOBS:-2}
CLIP=${CLIP:-0}
HOA=${HOA:-target/release/hoa}
STEPS=${STEPS:-25}
GEN=$ABL/gen-steps$STEPS
SCORES=$ABL/scores-steps$STEPS
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg-$(id -un)-$$}
mkdir -p -m 0700 "$XDG_RUNTIME_DIR" "$GEN" "$SCORES"
$PYTHON -c "import json; [print(p['prompt']) for p in json.load(open('tools/eval/prompts.json'))]" > "$ABL/prompts.txt"

one() {  # arm mode seed
  local name="$1-$2-$3" flag=()
  [ "$2" = typed ] && flag=(--no-upsample)
  if [ ! -f "$SCORES/$name.json" ]; then
    $PYTHON tools/eval/generate_hoa.py --hoa "$HOA" --prompts tools/eval/prompts.json --model "$ABL/$1" \
      --seed "$3" --steps "$STEPS" --out "$GEN/$name" ${flag[@]+"${flag[@]}"} 2>> "$GEN/times.txt"
    $PYTHON -m tools.eval.score --images "$GEN/$name" --json "$SCORES/$name.json" > "$SCORES/$name.md"
  fi
  if [ "$CLIP" = 1 ] && [ ! -f "$SCORES/$name.clip.txt" ]; then
    "$HOA" clip score --images "$GEN/$name" --model weights/clip --prompts "$ABL/prompts.txt" --mismatched \
      > "$SCORES/$name.clip.tmp" 2>&1 && mv "$SCORES/$name.clip.tmp" "$SCORES/$name.clip.txt"
  fi
}

# Seed set by seed set, so that a stopped run still has complete (paired) seed sets.
for seed in $SEEDS; do
  for mode in rewritten typed; do
    for arm in synthetic alt; do
      one "$arm" "$mode" "$seed" &
      while [ "$(jobs -r | wc -l)" -ge "$JOBS" ]; do sleep 2; done
    done
  done
done
wait
$PYTHON -m tools.eval.ablation_table --scores "$SCORES"
