"""The recaptioning ablation's table from tools/eval/ablation.sh's score files.

    python -m tools.eval.ablation_table --scores /work/abl/scores [--split unseen]

Reads SCORES/<arm>-<mode>-<seed>.json (tools/eval/score.py --json; arm synthetic|alt, mode rewritten|typed) and
prints, per metric, each arm's matched figure as mean ± sample standard deviation over the seed sets, the
mismatched-prompt baseline (mean), and the synthetic-minus-alt difference of the matched figures (paired by seed
set: mean ± spread of the per-seed differences). Only seed sets present for every arm and mode are used, so the
figures stay paired. With CLIP score files (<name>.clip.txt, `hoa clip score --mismatched`) it adds their means.
"""

import argparse
import glob
import json
import os
import re
import statistics

ARMS = ("synthetic", "alt")
MODES = ("rewritten", "typed")
METRICS = ("background", "color", "shape", "binding", "size", "texture", "spatial", "spatial_color", "count", "exact")


def load(scores):
    runs = {}
    for path in glob.glob(os.path.join(scores, "*.json")):
        m = re.fullmatch(r"(synthetic|alt)-(rewritten|typed)-(\d+)\.json", os.path.basename(path))
        if m:
            runs[(m[1], m[2], int(m[3]))] = json.load(open(path))["summary"]
    seeds = sorted({s for (_, _, s) in runs if all((a, md, s) in runs for a in ARMS for md in MODES)})
    return runs, seeds


def mean_sd(xs):
    xs = [100 * x for x in xs]
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.1f} ± {sd:.1f}"


def table(runs, seeds, split):
    head = ["metric"]
    for mode in MODES:
        head += [f"synthetic, {mode}", f"alt, {mode}", f"syn - alt, {mode}", f"mismatched, {mode}"]
    out = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for metric in METRICS:
        cells = [metric]
        for mode in MODES:
            vals = {a: [runs[(a, mode, s)][split][metric]["matched"] for s in seeds] for a in ARMS}
            if any(v is None for a in ARMS for v in vals[a]):
                cells += ["-"] * 4
                continue
            mis = [runs[(a, mode, s)][split][metric]["mismatched"] for a in ARMS for s in seeds]
            mis = [m for m in mis if m is not None]
            diff = [x - y for x, y in zip(vals["synthetic"], vals["alt"])]
            cells += [mean_sd(vals["synthetic"]), mean_sd(vals["alt"]), mean_sd(diff),
                      f"{100 * statistics.mean(mis):.1f}" if mis else "-"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def per_seed(runs, seeds, split, metric="binding"):
    out = []
    for a in ARMS:
        for mode in MODES:
            v = " / ".join(f"{100 * runs[(a, mode, s)][split][metric]['matched']:.1f}" for s in seeds)
            out.append(f"{a}, {mode}: {v}")
    return f"{split} {metric} per seed set ({', '.join(map(str, seeds))}): " + "; ".join(out)


def clip_means(scores, seeds):
    """Mean CLIP score (matched, mismatched) per arm and mode from `hoa clip score --mismatched`'s output."""
    rows = []
    for a in ARMS:
        for mode in MODES:
            got = []
            for s in seeds:
                path = os.path.join(scores, f"{a}-{mode}-{s}.clip.txt")
                if os.path.isfile(path):
                    text = open(path).read()
                    m = re.search(r"CLIP score \(mean of \d+\): ([0-9.]+)", text)
                    mm = re.search(r"mismatched[^:]*: ([0-9.]+)", text)
                    if m and mm:
                        got.append((float(m[1]), float(mm[1])))
            if got:
                m = statistics.mean(g[0] for g in got)
                mm = statistics.mean(g[1] for g in got)
                sd = statistics.stdev([g[0] - g[1] for g in got]) if len(got) > 1 else 0.0
                rows.append(f"| {a} | {mode} | {len(got)} | {m:.2f} | {mm:.2f} | {m - mm:+.2f} ± {sd:.2f} |")
    if not rows:
        return ""
    return "\n".join(["| arm | prompts | seed sets | CLIP score | mismatched | gap |", "|---|---|---|---|---|---|"] + rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scores", required=True)
    ap.add_argument("--split", action="append", help="unseen, seen or all (repeatable; default unseen and seen)")
    a = ap.parse_args()
    runs, seeds = load(a.scores)
    if not seeds:
        raise SystemExit(f"{a.scores}: no seed set with all four runs (synthetic|alt x rewritten|typed)")
    print(f"seed sets: {', '.join(map(str, seeds))} (matched: mean ± sample sd over them; mismatched: mean)\n")
    for split in a.split or ["unseen", "seen"]:
        print(f"### {split}\n\n{table(runs, seeds, split)}\n\n{per_seed(runs, seeds, split)}\n")
    clip = clip_means(a.scores, seeds)
    if clip:
        print(clip)


if __name__ == "__main__":
    main()
