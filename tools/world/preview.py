"""python -m tools.world.preview --out FILE.png [--n 24] [--seed 0] [--split any]
A grid of rendered scenes, each with a descriptive caption (D:) and an alt-text (A:) under it."""

import argparse
import textwrap

import numpy as np
from PIL import Image, ImageDraw

from .captions import alt_text, descriptive_caption
from .dataset import make_dataset


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="any")
    a = ap.parse_args()
    imgs, scenes = make_dataset(a.n, a.seed, a.split)
    rng = np.random.default_rng(a.seed + 1)
    W, th, cols = 192, 120, 6
    rows = (a.n + cols - 1) // cols
    canvas = Image.new("RGB", (cols * W, rows * (W + th)), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    for k, (im, s) in enumerate(zip(imgs, scenes)):
        x, y = (k % cols) * W, (k // cols) * (W + th)
        canvas.paste(Image.fromarray(im).resize((W, W), Image.NEAREST), (x, y))
        txt = textwrap.wrap("D: " + descriptive_caption(s, rng), 34)[:8] + textwrap.wrap("A: " + alt_text(s, rng), 34)[:2]
        d.multiline_text((x + 2, y + W + 1), "\n".join(txt), fill=(0, 0, 0), spacing=0)
    canvas.save(a.out)


if __name__ == "__main__":
    main()
