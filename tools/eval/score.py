"""Score generated images against the prompt set with the exact detector (T2I-CompBench style).

    python -m tools.eval.score --prompts tools/eval/prompts.json --images DIR \
        [--json out.json] [--grid out.png] [--mismatch-seed 0]

Images are DIR/<id>.png (tools/eval/generate_hoa.py names them so); other sizes are box-resized
to 64x64. Per image, against its prompt's scene (only what "asked" names):
  background  the detected background is the requested one
  color       fraction of requested objects whose color is present
  shape       fraction of requested objects whose shape is present
  binding     fraction of requested objects with a detected object of that color AND shape
  size        (prompts naming sizes) fraction of requested objects whose color+shape match has that size
  texture     (prompts naming textures) same for the texture
  spatial     (two-object prompts) both objects found (color+shape) and in the requested relation
              (dominant axis of their centers)
  spatial_found  spatial among the images where both objects were found (relation alone; chance
              is ~25%; its mismatched value is often undefined, "-")
  spatial_color  (two-object prompts with two different colors, where both colors were detected) the
              objects found by color alone are in the requested relation: layout learning measured
              without needing the shapes right, on many more images than spatial_found (chance ~25%)
  count       the detected number of objects equals the requested one
  exact       all of the above hold for the image
Each is also computed against a mismatched prompt (image i scored against the prompt of another
entry of the same split, a fixed-seed derangement): blurry images contain palette colors and
shapes by chance, and only the gap (matched - mismatched) measures prompt following.
"""

import argparse
import json
import os
import sys
import textwrap

import numpy as np
from PIL import Image

from tools.eval.detector import detect
from tools.world.scene import IMAGE_SIZE, relation

METRICS = ["background", "color", "shape", "binding", "size", "texture", "spatial", "spatial_found", "spatial_color",
           "count",
           "exact"]


def _match(o, det):
    """The detected object for requested o: color+shape, else shape, else color, nearest first."""
    for cond in (lambda q: q["color"] == o["color"] and q["shape"] == o["shape"],
                 lambda q: q["shape"] == o["shape"], lambda q: q["color"] == o["color"]):
        c = [q for q in det if cond(q)]
        if c:
            return c[0]
    return None


def score_one(entry, det):
    s, asked = entry["scene"], entry.get("asked", ["background", "color", "shape"])
    objs, found = s["objects"], det["objects"]
    colors = {q["color"] for q in found}
    shapes = {q["shape"] for q in found}
    bound = [[q for q in found if q["color"] == o["color"] and q["shape"] == o["shape"]] for o in objs]
    r = {"background": float(det["background"] == s["background"]),
         "color": float(np.mean([o["color"] in colors for o in objs])),
         "shape": float(np.mean([o["shape"] in shapes for o in objs])),
         "binding": float(np.mean([len(b) > 0 for b in bound])),
         "count": float(len(found) == len(objs))}
    for a in ("size", "texture"):
        if a in asked:
            r[a] = float(np.mean([(m is not None and m[a] == o[a]) for o, m in ((o, _match(o, found)) for o in objs)]))
    if len(objs) == 2 and s["relations"]:
        i, rel, j = s["relations"][0]
        both = bool(bound[i]) and bool(bound[j])
        r["spatial"] = float(both and relation(bound[i][0], bound[j][0]) == rel)
        if both:
            r["spatial_found"] = r["spatial"]
        by_color = [[q for q in found if q["color"] == o["color"]] for o in objs]
        if objs[i]["color"] != objs[j]["color"] and by_color[i] and by_color[j]:
            r["spatial_color"] = float(relation(by_color[i][0], by_color[j][0]) == rel)
    r["exact"] = float(all(v == 1.0 for k, v in r.items() if k not in ("spatial_found", "spatial_color")))
    return r


def derangement(n, rng):
    while True:
        p = rng.permutation(n)
        if n < 2 or not np.any(p == np.arange(n)):
            return p


def load(path):
    im = Image.open(path).convert("RGB")
    if im.size != (IMAGE_SIZE, IMAGE_SIZE):
        im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)
    return np.asarray(im)


def mismatches(prompts, mismatch_seed=0):
    """For entry k, the index of the other entry of its split it is scored against (a fixed derangement)."""
    rng = np.random.default_rng(mismatch_seed)
    mis = np.arange(len(prompts))
    for split in sorted({p["split"] for p in prompts}):
        idx = np.array([k for k, p in enumerate(prompts) if p["split"] == split])
        mis[idx] = idx[derangement(len(idx), rng)]
    return mis


def evaluate(prompts, images_dir, mismatch_seed=0):
    dets = [detect(load(os.path.join(images_dir, p["id"] + ".png"))) for p in prompts]
    mis = mismatches(prompts, mismatch_seed)
    rows = []
    for k, p in enumerate(prompts):
        rows.append({"id": p["id"], "split": p["split"], "prompt": p["prompt"], "detected": dets[k],
                     "scores": score_one(p, dets[k]), "mismatched_prompt": prompts[mis[k]]["id"],
                     "mismatched_scores": score_one(prompts[mis[k]], dets[k])})
    summary = {}
    for split in sorted({p["split"] for p in prompts}) + ["all"]:
        sel = [r for r in rows if split in ("all", r["split"])]
        summary[split] = {}
        for m in METRICS:
            a = [r["scores"][m] for r in sel if m in r["scores"]]
            b = [r["mismatched_scores"][m] for r in sel if m in r["mismatched_scores"]]
            summary[split][m] = {"matched": float(np.mean(a)) if a else None, "n": len(a),
                                 "mismatched": float(np.mean(b)) if b else None, "n_mismatched": len(b)}
    return rows, summary


def table(summary):
    splits = list(summary)
    head = "| metric | " + " | ".join(f"{s} | {s} mismatched | {s} gap" for s in splits) + " |"
    out = [head, "|---" * (1 + 3 * len(splits)) + "|"]
    for m in METRICS:
        cells = []
        for s in splits:
            d = summary[s][m]
            if d["matched"] is None:
                cells += ["-", "-", "-"]
                continue
            mm = d["mismatched"]
            cells += [f"{100 * d['matched']:.1f} (n={d['n']})", "-" if mm is None else f"{100 * mm:.1f}",
                      "-" if mm is None else f"{100 * (d['matched'] - mm):+.1f}"]
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def grid(prompts, images_dir, out, rows_=None):
    """18 seen then 18 unseen prompts' images, each with its prompt: per split the first 6 with one
    object, 8 with two and 4 with three (the set is ordered by kind, so its head is all single objects)."""
    from PIL import ImageDraw
    picks = []
    for unseen in (False, True):
        split = [k for k, p in enumerate(prompts) if (p.get("split") == "unseen") == unseen]
        for n, take in ((1, 6), (2, 8), (3, 4)):
            picks += [k for k in split if len(prompts[k]["scene"]["objects"]) == n][:take]
    sel = [prompts[k] for k in picks]
    W, th, cols = 192, 64, 6
    rows = (len(sel) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * W, rows * (W + th)), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    for k, p in enumerate(sel):
        im = Image.open(os.path.join(images_dir, p["id"] + ".png")).convert("RGB")
        x, y = (k % cols) * W, (k // cols) * (W + th)
        canvas.paste(im.resize((W, W), Image.NEAREST), (x, y))
        txt = textwrap.wrap(p["prompt"], 34)[:5]
        if rows_ is not None:
            txt.append("exact" if rows_[picks[k]]["scores"]["exact"] == 1 else "")
        d.multiline_text((x + 2, y + W + 1), "\n".join(txt), fill=(0, 0, 0), spacing=0)
    canvas.save(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts.json"))
    ap.add_argument("--images", required=True)
    ap.add_argument("--json", default=None)
    ap.add_argument("--grid", default=None)
    ap.add_argument("--mismatch-seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args()
    prompts = json.load(open(a.prompts))[: a.limit]
    rows, summary = evaluate(prompts, a.images, a.mismatch_seed)
    print(table(summary))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"summary": summary, "images": rows}, f, indent=1)
    if a.grid:
        grid(prompts, a.images, a.grid, rows)


if __name__ == "__main__":
    main()
