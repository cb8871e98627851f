"""Score rewrites of the rewriter's sets (tools/rewriter/sets): the prompt as typed, hoa's rule set
(tools/world/upsample.py, the Python twin of src/prompt_upsampling.rs, identical on its fixtures) and the trained
rewriter (greedy and beam), against the canonical caption of each request's spec.

Metrics, per family and overall (percent of rows):
  exact     the rewrite is the canonical caption, character for character;
  count     as many objects as asked (`data.parse`: an object is "<color> <shape>" in canonical words, not after "the");
  binding   the asked color-shape pairs, no more, no fewer (a multiset);
  size      binding and every object's size (unstated = large, the default the captions carry);
  texture   binding and every object's texture (unstated = solid);
  spatial   rows with a stated two-object relation: the relation between the two asked objects;
  bg        the asked background (or none named when none was asked).
`data.parse` reads only canonical words, as the image model reads only its caption vocabulary, so a synonym left as
typed ("crimson") counts as missing for every method alike.

    python -m tools.rewriter.evaluate --model weights/default/rewriter              # dev + evaluation prompts
    python -m tools.rewriter.evaluate --model weights/default/rewriter --test       # also the paraphrase test set
"""

import argparse
import json
import os
import time
from collections import defaultdict

import numpy as np
import torch

from tools.rewriter import data

METRICS = ["exact", "count", "binding", "size", "texture", "spatial", "bg"]


def truth(spec):
    return [(o["size"] or "large", o["texture"] or "solid", o["color"], o["shape"]) for o in spec["objects"]]


def score(out, row):
    spec, got = row["spec"], data.parse(out)
    want, have = truth(spec), got["objects"]
    s = {"exact": out == row["target"], "count": len(have) == len(want),
         "binding": sorted(w[2:] for w in want) == sorted(h[2:] for h in have),
         "size": sorted((w[2:], w[0]) for w in want) == sorted((h[2:], h[0]) for h in have),
         "texture": sorted((w[2:], w[1]) for w in want) == sorted((h[2:], h[1]) for h in have),
         "bg": got["background"] == spec["background"]}
    if len(want) == 2 and spec["rel"]:
        a, b = (w[2:] for w in want)
        r = None
        if len(have) >= 2 and got["rel"]:
            pa, pb = have[0][2:], have[1][2:]
            r = got["rel"] if (pa, pb) == (a, b) else data.INVERSE[got["rel"]] if (pa, pb) == (b, a) else None
        s["spatial"] = r == spec["rel"]
    return s


def table(rows, outs, title):
    """Markdown: one line per family and one for all, the mean of each metric (spatial over its rows)."""
    fam = defaultdict(list)
    for r, o in zip(rows, outs):
        sc = score(o, r)
        fam[r["family"]].append(sc)
    fam["ALL"] = [s for scs in list(fam.values()) for s in scs]
    lines = [f"### {title}", "", "| family | n | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    res = {}
    for f, scs in fam.items():
        vals = {}
        for m in METRICS:
            xs = [s[m] for s in scs if m in s]
            vals[m] = float(np.mean(xs) * 100) if xs else None
        res[f] = vals
        lines.append(f"| {f} | {len(scs)} | " + " | ".join("-" if vals[m] is None else f"{vals[m]:.1f}"
                                                           for m in METRICS) + " |")
    return "\n".join(lines) + "\n", res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="a rewriter folder (none: only the as-typed and rule baselines)")
    ap.add_argument("--test", action="store_true", help="also score the paraphrase test set (once, at the end)")
    ap.add_argument("--beams", type=int, default=0, help="beam width (0: the folder's generation_config)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--show-errors", type=int, default=0)
    ap.add_argument("--stride", type=int, default=1, help="every n-th row only (quick looks at dev mid-run)")
    ap.add_argument("--sets", default=None, help="comma list of sets (default: dev,eval_prompts[,test])")
    a = ap.parse_args()
    from tools.world.upsample import upsample
    torch.set_num_threads(1)
    sets = a.sets.split(",") if a.sets else ["dev", "eval_prompts"] + (["test"] if a.test else [])
    assert "test" not in sets or a.test, "the test set is scored with --test only (once, at the end)"
    methods = {"as typed": lambda xs: list(xs), "rules": lambda xs: [upsample(x) for x in xs]}
    if a.model:
        from transformers import GenerationConfig, T5ForConditionalGeneration
        from tools.rewriter.tokenizer import fast_tokenizer
        from tools.rewriter.train import rewrite
        model = T5ForConditionalGeneration.from_pretrained(a.model)
        ft = fast_tokenizer(os.path.join(a.model, "tokenizer.json"))
        gc = GenerationConfig.from_pretrained(a.model)
        beams = a.beams or gc.num_beams
        methods["rewriter greedy"] = lambda xs: rewrite(model, ft, xs, 1, gc.max_length)
        methods[f"rewriter beam {beams}"] = lambda xs: rewrite(model, ft, xs, beams, gc.max_length)
    report, res = [], {}
    for name in sets:
        rows = data.read_jsonl(os.path.join(data.SETS, f"{name}.jsonl"))[::a.stride]
        for m, fn in methods.items():
            t = time.time()
            outs = fn([r["input"] for r in rows])
            dt = (time.time() - t) / len(rows) * 1000
            md, r = table(rows, outs, f"{name}: {m} ({dt:.1f} ms/prompt)")
            res[f"{name}/{m}"] = r
            report.append(md)
            print(md, flush=True)
            if a.show_errors and m.startswith("rewriter"):
                bad = [(r_["input"], o, r_["target"]) for r_, o in zip(rows, outs) if o != r_["target"]]
                for x in bad[:a.show_errors]:
                    print(" IN ", x[0], "\n OUT", x[1], "\n WANT", x[2])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
