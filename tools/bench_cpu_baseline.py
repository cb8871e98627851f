#!/usr/bin/env python3
"""CPU baseline for the matmul benchmarks: numpy (OpenBLAS) sgemm on the shapes `hoa bench`
uses for `matmul` and `linear`, and, when target/release/hoa exists, hoa's GFLOP/s on the same
shapes as a ratio to numpy's.

Usage: python3 tools/bench_cpu_baseline.py [--quick] [--reps N] [--hoa PATH]
Needs numpy only. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, if set, can slow OpenBLAS down; run
e.g. `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 tools/bench_cpu_baseline.py`.
"""

import argparse
import os
import re
import subprocess
import sys
import time

import numpy as np


def shapes(quick):
    """(label as hoa prints it, M, K, N, transposed weight) for every case."""
    q = 4 if quick else 1
    out = [("1024x1024x1024 f32", 1024, 1024, 1024, False)]
    for m, k, n in [
        (8192 // q, 320, 320),
        (8192 // q, 320, 2560),
        (8192 // q, 1280, 320),
        (154, 768, 320),
        (2048 // q, 640, 640),
        (512 // q, 1280, 1280),
    ]:
        out.append((f"{m}x{k}.{n}x{k}^T f32", m, k, n, True))
    return out


def numpy_gflops(m, k, n, trans_b, reps):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    # nn.Linear: x @ W.T with W [out, in], as the U-Net does.
    b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    bias = rng.standard_normal(n, dtype=np.float32)
    best = float("inf")
    for _ in range(reps + 1):  # the first run warms up
        t0 = time.perf_counter()
        c = (a @ b.T if trans_b else a @ b)
        if trans_b:
            c += bias
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * n * k / best / 1e9


def hoa_gflops(hoa, quick):
    """Runs `hoa bench --filter matmul` and `--filter linear`; returns {(kernel, shape): GFLOP/s}."""
    res = {}
    for f in ["matmul", "linear"]:
        cmd = [hoa, "bench", "--filter", f] + (["--quick"] if quick else [])
        print("running:", " ".join(cmd), file=sys.stderr)
        try:
            text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"hoa bench failed: {e}", file=sys.stderr)
            return res
        for line in text.splitlines():
            if line.startswith("ceilings:"):
                print("hoa " + line)
            # kernel, shape (two words: dims and dtype), ms, GFLOP/s, ...
            m = re.match(r"^(\S+)\s+(\S+ f(?:16|32))\s+([\d.]+)\s+([\d.]+)", line)
            if m:
                print("hoa " + line)
                res[(m.group(1), m.group(2))] = float(m.group(4))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="M/4, as `hoa bench --quick`")
    ap.add_argument("--reps", type=int, default=3, help="timed runs per shape (best taken)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--hoa", default=os.path.join(root, "target", "release", "hoa"))
    args = ap.parse_args()

    for v in ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"]:
        if v in os.environ:
            print(f"warning: {v}={os.environ[v]} is set and may slow OpenBLAS", file=sys.stderr)

    cases = shapes(args.quick)
    have_hoa = os.path.exists(args.hoa)
    hoa = hoa_gflops(args.hoa, args.quick) if have_hoa else {}
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs")
    print(f"{'shape':<28} {'numpy GFLOP/s':>14} {'hoa kernel':>14} {'hoa GFLOP/s':>12} {'hoa/numpy':>10}")
    for label, m, k, n, tb in cases:
        g = numpy_gflops(m, k, n, tb, args.reps)
        kernel = "linear" if tb else "matmul"
        h = hoa.get((kernel, label))
        hs = f"{h:12.2f} {h / g:10.3f}" if h is not None else f"{'-':>12} {'-':>10}"
        print(f"{label:<28} {g:14.2f} {kernel:>14} {hs}")
    if not have_hoa:
        print(f"({args.hoa} not found: build with `cargo build --release` for the hoa columns)")


if __name__ == "__main__":
    main()
