"""A 30-second probe of whether a U-Net + T5 has learned spatial relations, for checkpoints mid-run.

    python -m tools.eval.probe_relations --run train_runs/mo/unet_r3 --vae train_runs/mo/vae
    python -m tools.eval.probe_relations --run weights/default

1. Layout at pure noise: for 16 prompts "a <A> left of / right of / above / below a <B> on a gray background",
   the guided (guidance 3) x0 prediction at t=999 from 4 fixed noises (zero terminal SNR: x0 = -v; with an epsilon
   model x0 = (x_t - sqrt(1-a) eps) / sqrt(a)), decoded by the VAE; the centroid of A's color minus B's, in pixels.
   At t=999 the best prediction is the mean image given the caption, so a model that follows the relation puts
   A's color left of B's for "left of": on mean renders of the world the same measure gives dx -30 / +30
   (left / right of) and dy -30 / +30 (above / below); a model blind to relations gives ~0 for all four.
2. Text encoder roles: |h - h'| / |h| of the tokens of "a red circle left of a blue square" against "a blue square
   left of a red circle" (same words, roles swapped). The U-Net's cross-attention does not see token order, so
   relations can only reach it through such differences; ~0.05 means bag-of-words encodings.
3. Text encoder binding: a linear probe (fit on 70% of the mentions of 1500 two- and three-object train scenes'
   descriptive captions, scored on the rest) from each "<color> <shape>" mention's color token to its shape and from
   its shape token to its color. A bag-of-words encoding knows which shapes the caption names but not which goes
   with which color: its level (printed beside) is 1 / the number of distinct shapes (colors) in the scene. The
   U-Net attends to tokens one by one, so tokens that carry their whole object make binding easier.
"""

import argparse
import os
import sys

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, T5EncoderModel

from tools.eval.generate_torch import sub
from tools.train.export import ddim_config
from tools.train.train_unet import mention_tokens
from tools.world import captions
from tools.world.dataset import make_dataset
from tools.world.scene import COLORS

RELS = ["left of", "right of", "above", "below"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a train_unet output folder or a pipeline folder")
    ap.add_argument("--vae", default=None, help="a train_vae folder (default: the run's vae/)")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(os.path.join(args.run, "tokenizer"))
    te = T5EncoderModel.from_pretrained(os.path.join(args.run, "text_encoder")).eval()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(args.run, "unet")).eval()
    vae = AutoencoderKL.from_pretrained(sub(args.vae or args.run, "vae")).eval()
    cfg = ddim_config(args.run) if os.path.isfile(os.path.join(args.run, "noise_schedule.json")) else \
        DDPMScheduler.load_config(os.path.join(args.run, "scheduler"))
    sched = DDPMScheduler.from_config(cfg)
    a = sched.alphas_cumprod[999]

    def enc(texts):
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        return te(input_ids=ids).last_hidden_state

    cols, shapes = list(COLORS), ["circle", "square", "star", "ring"]
    n = unet.config.sample_size
    noise = torch.randn(4, unet.config.in_channels, n, n, generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    res = {r: [] for r in RELS}
    with torch.no_grad():
        unc = enc([""]).expand(4, -1, -1)
        for _ in range(16):
            ca, cb = rng.choice(cols, 2, replace=False)
            sa, sb = rng.choice(shapes, 2, replace=False)
            for r in RELS:
                c = enc([f"a {ca} {sa} {r} a {cb} {sb} on a gray background"]).expand(4, -1, -1)
                out = unet(torch.cat([noise, noise]), torch.tensor(999), encoder_hidden_states=torch.cat([unc, c])).sample
                ou, oc = out.chunk(2)
                o = ou + args.guidance * (oc - ou)
                if sched.config.prediction_type == "v_prediction":
                    x0 = a.sqrt() * noise - (1 - a).sqrt() * o
                else:
                    x0 = (noise - (1 - a).sqrt() * o) / a.sqrt()
                img = vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1)
                img = ((img + 1) * 127.5).permute(0, 2, 3, 1).numpy()

                def centroid(col):
                    w = np.exp(-(np.linalg.norm(img - np.array(COLORS[col], np.float32), axis=-1) / 40) ** 2)
                    return (w * xx).sum((1, 2)) / w.sum((1, 2)), (w * yy).sum((1, 2)) / w.sum((1, 2))

                (ax, ay), (bx, by) = centroid(ca), centroid(cb)
                res[r].append(((ax - bx).mean(), (ay - by).mean()))

        def tokens(prompt):
            """word -> its output vector (each word occurs once in the probe's prompts)."""
            ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            h = te(input_ids=ids).last_hidden_state[0]
            return {w: h[i] for i, w in enumerate(tok.convert_ids_to_tokens(ids[0].tolist()))}

        h1 = tokens("a red circle left of a blue square on a gray background")
        h2 = tokens("a blue square left of a red circle on a gray background")
        roles = {w: float((h1[w] - h2[w]).norm() / h1[w].norm()) for w in ["red", "circle", "blue", "square"]}
        bind = binding_probe(tok, te)
    print("x0 at t=999, centroid of A's color minus B's (px; mean renders: left/right of dx -30/+30, above/below "
          "dy -30/+30):")
    for r in RELS:
        d = np.array(res[r])
        print(f"  {r:9s} dx {d[:, 0].mean():+6.1f}  dy {d[:, 1].mean():+6.1f}   (+- {d.std(0).max() / 4:.1f})")
    print("text encoder, role swap |h - h'| / |h|: " + "  ".join(f"{w} {v:.3f}" for w, v in roles.items()))
    print("text encoder binding, linear probe (bag-of-words level): color token -> its shape {:.1%} ({:.1%}), "
          "shape token -> its color {:.1%} ({:.1%})".format(*bind))


def binding_probe(tok, te, n=1500):
    _, scenes = make_dataset(n, seed=11, split="train", objects_p=[0, 0.5, 0.5])
    rng = np.random.default_rng(0)
    texts = [captions.descriptive_caption(s, rng) for s in scenes]
    feats = {"c": [], "s": []}
    labels = {"c": [], "s": []}
    bow = {"c": [], "s": []}
    for i in range(0, n, 100):
        ids = tok(texts[i:i + 100], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        h = te(input_ids=ids).last_hidden_state
        for b, j, _, _, ci, si in mention_tokens(ids, scenes[i:i + 100], texts[i:i + 100], captions, tok):
            objs = scenes[i + b]["objects"]
            feats["c"].append(h[b, j]); labels["c"].append(si); bow["c"].append(1 / len({o["shape"] for o in objs}))
            feats["s"].append(h[b, j + 1]); labels["s"].append(ci); bow["s"].append(1 / len({o["color"] for o in objs}))
    out = []
    for k in ("c", "s"):
        x, y = torch.stack(feats[k]), torch.tensor(labels[k])
        cut = int(0.7 * len(y))
        head = torch.nn.Linear(x.shape[1], len(tok))
        opt = torch.optim.Adam(head.parameters(), 1e-2)
        with torch.enable_grad():
            for _ in range(300):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(head(x[:cut]), y[:cut]).backward()
                opt.step()
        out += [float((head(x[cut:]).argmax(1) == y[cut:]).float().mean()), float(np.mean(bow[k][cut:]))]
    return out


if __name__ == "__main__":
    sys.exit(main())
