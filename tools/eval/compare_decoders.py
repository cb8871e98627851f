"""The shipped VAE decoder and consistency decoder on the same latents: rendered scenes are encoded with the
VAE (posterior mean), decoded by each, and compared with the render (mean squared error on [0, 1] pixels,
and the detector's shape / color accuracy on the decoded image against the scene graph). Writes a
side-by-side PNG: rows of render | VAE decode | consistency decode.

    python -m tools.eval.compare_decoders [--model weights/default] [--n 200] [--seed 7] \
        [--png weights/decoders.png] [--threads 1]
"""

import argparse
import os

import numpy as np
import torch
from diffusers import AutoencoderKL, ConsistencyDecoderVAE
from PIL import Image

from tools.eval.detector import detect
from tools.world.dataset import make_dataset


def shape_color_acc(img, scene):
    """Fraction of the scene's objects the detector finds with the right shape and color at ~their place."""
    found = detect(img)["objects"]
    hits = {"shape": 0, "color": 0}
    for o in scene["objects"]:
        near = [d for d in found if (d["x"] - o["x"]) ** 2 + (d["y"] - o["y"]) ** 2 <= o["radius"] ** 2]
        hits["shape"] += any(d["shape"] == o["shape"] for d in near)
        hits["color"] += any(d["color"] == o["color"] for d in near)
    n = len(scene["objects"])
    return hits["shape"] / n, hits["color"] / n


def to_uint8(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="weights/default")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--png", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vae = AutoencoderKL.from_pretrained(os.path.join(args.model, "vae"), torch_dtype=torch.float32)
    cd = ConsistencyDecoderVAE.from_pretrained(os.path.join(args.model, "consistency_decoder"),
                                               torch_dtype=torch.float32)
    images, scenes = make_dataset(args.n, seed=args.seed, split="any")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    out = {"vae": [], "consistency": []}
    with torch.no_grad():
        for i in range(0, args.n, 50):
            z = vae.encode(x[i:i + 50]).latent_dist.mean
            out["vae"].append(to_uint8(vae.decode(z).sample))
            g = torch.Generator().manual_seed(args.seed + i)
            out["consistency"].append(to_uint8(cd.decode(z, generator=g).sample))
    print("| decoder | MSE vs render | detector shape | detector color |")
    print("|---|---|---|---|")
    for name in out:
        dec = np.concatenate(out[name])
        mse = float(((dec.astype(np.float64) - images) / 255.0).__pow__(2).mean())
        acc = np.array([shape_color_acc(d, s) for d, s in zip(dec, scenes)])
        print(f"| {name} | {mse:.5f} | {100 * acc[:, 0].mean():.1f}% | {100 * acc[:, 1].mean():.1f}% |")
        out[name] = dec
    if args.png:
        k, s = 8, 3
        rows = [np.concatenate([images[j], out["vae"][j], out["consistency"][j]], axis=1) for j in range(k)]
        grid = np.concatenate([np.concatenate(rows[:k // 2], axis=0), np.concatenate(rows[k // 2:], axis=0)], axis=1)
        Image.fromarray(grid).resize((grid.shape[1] * s, grid.shape[0] * s), Image.NEAREST).save(args.png)
        print(f"wrote {args.png}: columns render | VAE | consistency decoder, twice")


if __name__ == "__main__":
    main()
