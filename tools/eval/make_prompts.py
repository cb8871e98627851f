"""Write tools/eval/prompts.json: 200 prompts, 100 "seen" (no held-out combination) and 100
"unseen" (each with a held-out color-shape pair or shape-relation-shape triple, see
tools/world/scene.py), each {"id", "prompt", "split", "scene", "asked", "kind"}.
"scene" is the full scene graph the prompt describes (renderable: x, y, radius are one valid
layout); "asked" lists the attributes the prompt names (always color, shape, background; size
and/or texture for some); "kind" is single / relation / count.

    python -m tools.eval.make_prompts [--out tools/eval/prompts.json] [--seed 0]
    python -m tools.eval.make_prompts --render DIR   # also the ground-truth renders, <id>.png

Per split: 40 single objects (16 color+shape, 8 +size, 8 +texture, 8 +size+texture),
45 two-object relations (unseen: 23 with a held-out triple, 22 with a held-out pair),
15 three-object counts.
"""

import argparse
import json
import os

import numpy as np

from tools.world.captions import prompt_for
from tools.world.scene import heldout_pair, heldout_triple, is_unseen, render, sample_scene

HERE = os.path.dirname(os.path.abspath(__file__))


def _has_triple(s):
    o = s["objects"]
    return any(heldout_triple(o[i]["shape"], r, o[j]["shape"]) for i, r, j in s["relations"])


def _has_pair(s):
    return any(heldout_pair(o) for o in s["objects"])


def build(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for split in ("seen", "unseen"):
        sp = "train" if split == "seen" else "unseen"
        plan = ([("single", 1, None, False, False)] * 16 + [("single", 1, None, True, False)] * 8
                + [("single", 1, None, False, True)] * 8 + [("single", 1, None, True, True)] * 8)
        if split == "seen":
            plan += [("relation", 2, None, False, False)] * 45
        else:
            plan += [("relation", 2, _has_triple, False, False)] * 23
            plan += [("relation", 2, lambda s: _has_pair(s) and not _has_triple(s), False, False)] * 22
        plan += [("count", 3, None, False, False)] * 15
        seen_prompts = set()
        for kind, n, where, size, texture in plan:
            while True:
                s = sample_scene(rng, sp, n_objects=n, where=where)
                p = prompt_for(s, size=size, texture=texture)
                if p not in seen_prompts:
                    break
            seen_prompts.add(p)
            assert is_unseen(s) == (split == "unseen")
            asked = ["background", "color", "shape"] + (["size"] if size else []) + (["texture"] if texture else [])
            out.append({"id": f"{split}_{len(seen_prompts) - 1:03d}", "prompt": p, "split": split,
                        "kind": kind, "asked": asked, "scene": s})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "prompts.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render", default=None, help="also write the ground-truth renders here")
    a = ap.parse_args()
    ps = build(a.seed)
    with open(a.out, "w") as f:
        json.dump(ps, f, indent=1)
        f.write("\n")
    print(f"{len(ps)} prompts -> {a.out}")
    if a.render:
        from PIL import Image
        os.makedirs(a.render, exist_ok=True)
        for p in ps:
            Image.fromarray(render(p["scene"])).save(os.path.join(a.render, p["id"] + ".png"))
        print(f"ground truth renders -> {a.render}")


if __name__ == "__main__":
    main()
