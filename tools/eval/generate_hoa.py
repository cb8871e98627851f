"""Generate the prompt set's images with hoa's Rust pipeline (the `hoa generate` binary, on
whatever adapter it picks: lavapipe here), named <id>.png for tools/eval/score.py.

    cargo build --release
    python tools/eval/generate_hoa.py --prompts tools/eval/prompts.json --out /tmp/gen_hoa \
        [--model weights/default] [--steps 25] [--guidance 3] [--decoder vae|consistency] \
        [--scheduler ddim] [--seed 0] [--limit N] [--grid weights/samples_hoa.png] [--no-upsample]
    python tools/eval/score.py --prompts tools/eval/prompts.json --images /tmp/gen_hoa

One process for the whole set (`--prompt-file`: the model loads and the kernels compile once);
prompt j is seeded seed + j. Only the standard library is needed (plus PIL and numpy for --grid).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=os.path.join(ROOT, "weights", "default"))
    ap.add_argument("--hoa", default=os.path.join(ROOT, "target", "release", "hoa"))
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--guidance-high", type=float, default=None, help="hoa generate --guidance-high")
    ap.add_argument("--guidance-high-from", type=float, default=None, help="hoa generate --guidance-high-from")
    ap.add_argument("--scheduler", default=None)
    ap.add_argument("--eta", type=float, default=None, help="DDIM's eta (hoa generate --eta)")
    ap.add_argument("--decoder", default="vae")
    ap.add_argument("--no-upsample", action="store_true",
                    help="hoa generate --no-upsample: the prompts as written, without the model's prompt upsampling")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="first N prompts only")
    ap.add_argument("--grid", default=None, help="also write a grid PNG of the first 36")
    args = ap.parse_args()

    prompts = json.load(open(args.prompts))[: args.limit]
    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="hoa-eval-")
    listing = os.path.join(tmp, "prompts.txt")
    with open(listing, "w") as f:
        for p in prompts:
            f.write(p["prompt"].replace("\n", " ") + "\n")
    cmd = [args.hoa, "generate", "--prompt-file", listing, "--model", args.model,
           "--steps", str(args.steps), "--seed", str(args.seed), "--decoder", args.decoder,
           "--out", os.path.join(tmp, "img.png")]
    if args.guidance is not None:
        cmd += ["--guidance", str(args.guidance)]
    if args.guidance_high is not None:
        cmd += ["--guidance-high", str(args.guidance_high)]
    if args.guidance_high_from is not None:
        cmd += ["--guidance-high-from", str(args.guidance_high_from)]
    if args.scheduler:
        cmd += ["--scheduler", args.scheduler]
    if args.eta is not None:
        cmd += ["--eta", str(args.eta)]
    if args.no_upsample:
        cmd += ["--no-upsample"]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    dt = time.time() - t0
    for j, p in enumerate(prompts):
        name = "img.png" if len(prompts) == 1 else f"img-{j:04d}.png"
        shutil.move(os.path.join(tmp, name), os.path.join(args.out, p["id"] + ".png"))
    shutil.rmtree(tmp)
    print(f"{len(prompts)} images in {dt:.0f} s ({dt / max(len(prompts), 1):.2f} s/image) -> {args.out}",
          file=sys.stderr)
    if args.grid:
        sys.path.insert(0, ROOT)
        from tools.eval.score import grid
        grid(prompts, args.out, args.grid)


if __name__ == "__main__":
    main()
