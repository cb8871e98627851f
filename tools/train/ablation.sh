#!/usr/bin/env bash
# The recaptioning ablation (issue 31 part 3; DALL-E 3, "Improving Image Generation with Better Captions"): two
# U-Net + T5 arms trained from scratch on the shipped VAE's latents, identical (seed, scenes, batch, LR, flags, number
# of optimizer steps) except for the training captions: `--caption-mode synthetic` (the default: 75% descriptive,
# 20% short, 5% alt-text) against `--caption-mode alt` (alt-text only). Each arm is exported to a pipeline folder with
# the shipped VAE, consistency decoder and T5 rewriter, so hoa's `generate` runs it as it runs weights/default; the
# scoring is tools/eval/ablation.sh.
#
#   tools/train/ablation.sh                  # from the repo root; ~40 min on one core per arm, both arms at once
#   ABL=/data/abl STEPS=1200 tools/train/ablation.sh
#
# Steps, not minutes: on a shared machine the two arms (run side by side, one thread each) would otherwise do
# different amounts of work. Unless STEPS is given, both arms first train PROBE_MIN (1) minute, and STEPS is set to
# what the slower arm's measured rate gives in TARGET_MIN (33) minutes; the arms then resume (bit-exact: RNG, data
# position and optimizer are in the checkpoint) and stop at STEPS. Rerunning resumes; a finished arm is kept.
#
# Env: PYTHON, ABL (runs + exported folders, outside the repository; default /work/abl), STEPS, TARGET_MIN, PROBE_MIN,
#      N_SCENES, BATCH, LR, WARMUP, SEED, NICE.
# The scene-graph losses of run_default.sh (--layout-aux, --binding-aux, --object-weight) are left out of BOTH arms:
# they read the scene's objects, which an alt-text-only model must not see. The caption-independent ones (directional
# T5 heads, half of each batch at high noise, v-prediction on zero-terminal-SNR betas) are in both. `--list-only`
# shapes descriptive captions only (alt mode ignores it), so the two command lines differ in --caption-mode alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
ABL=${ABL:-/work/abl}
TARGET_MIN=${TARGET_MIN:-33}
PROBE_MIN=${PROBE_MIN:-1}
N_SCENES=${N_SCENES:-20000}
BATCH=${BATCH:-32}
LR=${LR:-1e-3}
WARMUP=${WARMUP:-100}
SEED=${SEED:-0}
NICE=${NICE:-5}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
ARMS=(synthetic alt)
mkdir -p "$ABL/runs"

train() {  # arm minutes max_steps
  nice -n "$NICE" $PYTHON -m tools.train.train_unet --vae weights/default --out "$ABL/runs/$1/unet" \
    --caption-mode "$1" --minutes "$2" --max-steps "$3" --threads 1 --seed "$SEED" --batch "$BATCH" --lr "$LR" \
    --warmup "$WARMUP" --n-scenes "$N_SCENES" --objects-p 0.15,0.45,0.4 --prediction-type v_prediction --zero-snr \
    --t5-directional --t-high 0.5 --list-only 0,0.5 --ckpt-minutes 5 >> "$ABL/runs/$1.log" 2>&1
}
step_of() { $PYTHON -c "import torch,sys; print(torch.load(sys.argv[1], map_location='cpu', weights_only=False)['step'])" \
  "$ABL/runs/$1/unet/ckpt.pt" 2>/dev/null || echo 0; }

# 1. The latent cache (train_unet keeps it next to --out, i.e. in $ABL/runs/<arm>/: encoded once by the first arm,
#    linked into the other's) and each arm's tokenizer, step 0, one arm at a time.
for arm in "${ARMS[@]}"; do
  mkdir -p "$ABL/runs/$arm"
  for f in "$ABL/runs/${ARMS[0]}"/latents_*.pt; do
    [ -f "$f" ] && [ ! -e "$ABL/runs/$arm/$(basename "$f")" ] && ln -s "$f" "$ABL/runs/$arm/"
  done
  [ -f "$ABL/runs/$arm/unet/ckpt.pt" ] || train "$arm" 0 0
done

# 2. The step count: measured in the first PROBE_MIN minutes of both arms running side by side.
if [ -z "${STEPS:-}" ]; then
  if [ -f "$ABL/steps" ]; then
    STEPS=$(cat "$ABL/steps")
  else
    s0=$(step_of synthetic)
    for arm in "${ARMS[@]}"; do train "$arm" "$PROBE_MIN" 0 & done
    wait
    rate=$(for arm in "${ARMS[@]}"; do echo $(( $(step_of "$arm") - s0 )); done | sort -n | head -1)
    STEPS=$(( rate * TARGET_MIN / PROBE_MIN ))
    echo "$STEPS" > "$ABL/steps"
    echo "probe: slower arm did $rate steps in $PROBE_MIN min -> STEPS=$STEPS for $TARGET_MIN min" | tee -a "$ABL/runs/probe.txt"
  fi
fi

# 3. Both arms to STEPS, side by side.
for arm in "${ARMS[@]}"; do
  ( s=$(date +%s); train "$arm" 600 "$STEPS"; echo "$arm: to step $STEPS in $(( $(date +%s) - s )) s" \
      >> "$ABL/runs/times.txt" ) &
done
wait

# 4. Export: the arm's U-Net + T5 with the shipped VAE and consistency decoder, plus the shipped rewriter (hoa.json
#    names it as weights/default's does).
for arm in "${ARMS[@]}"; do
  run="$ABL/runs/$arm"
  ln -sfn "$PWD/weights/default/vae" "$run/vae"
  ln -sfn "$PWD/weights/default/consistency_decoder" "$run/cdec"
  $PYTHON -m tools.train.export --run "$run" --out "$ABL/$arm" --threads 1 --force
  cp -r weights/default/rewriter "$ABL/$arm/rewriter"
  $PYTHON - "$ABL/$arm/hoa.json" <<'EOF'
import json, sys
p = sys.argv[1]; h = json.load(open(p)); h["rewriter"] = "rewriter"; json.dump(h, open(p, "w"), indent=2)
EOF
done
echo "exported: $ABL/synthetic $ABL/alt"
