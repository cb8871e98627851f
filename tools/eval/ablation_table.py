"""The recaptioning ablation's table from tools/eval/ablation.sh's score files.

    python -m tools.eval.ablation_table --scores /work/abl/scores [--split unseen]

Reads SCORES/<arm>-<mode>-<seed>.json (tools/eval/score.py --json; arm synthetic|alt, mode rewritten|typed) and
prints, per metric, each arm's matched figure as mean ± sample standard deviation over the seed sets, its gap to
its own mismatched-prompt baseline (mean, in brackets), and the synthetic-minus-alt difference of the matched figures (paired by seed
set: mean ± spread of the per-seed differences). Per mode, only seed sets present for both arms are used, so the
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
METRICS = ("background", "color", "shape", "binding", "size", "texture", "spatial", "count", "exact")


def load(scores):
    runs = {}
    for path in glob.glob(os.path.join(scores, "*.json")):
        m = re.fullmatch(r"(synthetic|alt)-(rewritten|typed)-(\d+)\.json", os.path.basename(path))
        if m:
            runs[(m[1], m[2], int(m[3]))] = json.load(open(path))["summary"]
    seeds = {md: sorted({s for (_, m, s) in runs if m == md and all((a, md, s) in runs for a in ARMS)})
             for md in MODES}
    return runs, seeds


def mean_sd(xs):
    xs = [100 * x for x in xs]
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.1f} ± {sd:.1f}"


def table(runs, seeds, split):
    """Per mode: each arm's matched figure (mean ± sd over seed sets) with its gap to its own mismatched baseline
    in brackets, then the paired synthetic-minus-alt difference of the matched figures."""
    head = ["metric"]
    for mode in MODES:
        head += [f"synthetic, {mode} ({len(seeds[mode])} seed sets)", f"alt, {mode}", f"syn - alt, {mode}"]
    out = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for metric in METRICS:
        cells = [metric]
        for mode in MODES:
            got = {a: [runs[(a, mode, s)][split][metric] for s in seeds[mode]] for a in ARMS}
            if not seeds[mode] or any(d["matched"] is None for a in ARMS for d in got[a]):
                cells += ["-"] * 3
                continue
            for a in ARMS:
                gaps = [d["matched"] - d["mismatched"] for d in got[a] if d["mismatched"] is not None]
                gap = f" ({100 * statistics.mean(gaps):+.1f})" if gaps else ""
                cells.append(mean_sd([d["matched"] for d in got[a]]) + gap)
            cells.append(mean_sd([x["matched"] - y["matched"] for x, y in zip(got["synthetic"], got["alt"])]))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def per_seed(runs, seeds, split, metric="binding"):
    out = []
    for mode in MODES:
        for a in ARMS:
            v = " / ".join(f"{100 * runs[(a, mode, s)][split][metric]['matched']:.1f}" for s in seeds[mode])
            out.append(f"{a}, {mode} (seeds {', '.join(map(str, seeds[mode]))}): {v}")
    return f"{split} {metric} per seed set: " + "; ".join(out)


def clip_means(scores, seeds):
    """Mean CLIP score (matched, mismatched) per arm and mode from `hoa clip score --mismatched`'s output."""
    rows = []
    for a in ARMS:
        for mode in MODES:
            got = []
            for s in seeds[mode]:
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
    if not any(seeds.values()):
        raise SystemExit(f"{a.scores}: no seed set with both arms")
    print("seed sets: " + "; ".join(f"{m} {', '.join(map(str, seeds[m]))}" for m in MODES)
          + " (matched: mean ± sample sd over them; in brackets the mean gap to the arm's mismatched baseline)\n")
    for split in a.split or ["unseen", "seen"]:
        print(f"### {split}\n\n{table(runs, seeds, split)}\n\n{per_seed(runs, seeds, split)}\n")
    clip = clip_means(a.scores, seeds)
    if clip:
        print(clip)


if __name__ == "__main__":
    main()
