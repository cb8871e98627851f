#!/usr/bin/env python3
"""Side-by-side for `hoa bench --model`: one Stable Diffusion 1.5 U-Net step (its real
architecture, random weights, fp32) with diffusers on PyTorch's CPU backend on this machine,
then, when the hoa binary exists, the same step through hoa, and the ratio.

Usage: /tmp/fxenv/bin/python tools/bench_torch_unet.py [--quick] [--reps N] [--threads N]
  --quick: 32x32 latent (256x256 image), batch 1; default 64x64 (512x512), batch 2 (CFG).
Needs the packages of tools/fixtures/requirements.txt.
"""
import argparse
import os
import re
import statistics
import subprocess
import time

import torch
from diffusers import UNet2DConditionModel


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--hoa", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "hoa"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, s = (1, 32) if args.quick else (2, 64)
    # SD 1.5's unet/config.json differs from the class defaults only in cross_attention_dim.
    unet = UNet2DConditionModel(cross_attention_dim=768).eval()
    sample = torch.randn(b, 4, s, s)
    enc = torch.randn(b, 77, 768)
    t = torch.tensor([999] * b)
    times = []
    with torch.no_grad():
        unet(sample, t, enc)  # warm-up
        for _ in range(args.reps):
            t0 = time.perf_counter()
            unet(sample, t, enc)
            times.append(time.perf_counter() - t0)
    torch_ms = statistics.median(times) * 1e3
    print(f"torch {torch.__version__} CPU, {args.threads} threads: U-Net step [{b}, 4, {s}, {s}] median {torch_ms:.0f} ms")
    if not os.path.exists(args.hoa):
        print(f"(no hoa binary at {args.hoa}: cargo build --release)")
        return
    cmd = [args.hoa, "bench", "--model", "--reps", "1"] + (["--quick"] if args.quick else [])
    print("running:", " ".join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    print(out.rstrip())
    m = re.search(r"unet_sd15_step_f32\s+.*?\s([\d.]+)\s*$", out, re.M)
    if m:
        hoa_ms = float(m.group(1))
        print(f"hoa / torch time: {hoa_ms / torch_ms:.2f}x (hoa {hoa_ms:.0f} ms, torch {torch_ms:.0f} ms)")


if __name__ == "__main__":
    main()
