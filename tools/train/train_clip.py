"""Train a toy CLIP on the shape world (issue 29, part 3): transformers' CLIPModel from scratch,
contrastive loss on renders and their descriptive captions, the shipped default model's
word-level tokenizer (weights/default/tokenizer, 63 words), 64x64 images in 8x8 patches.

    python -m tools.train.train_clip --out runs/clip --minutes 50       # resumable, as the others
    python -m tools.train.train_clip --out runs/clip --minutes 0 --eval-only

The run folder ends up a transformers CLIPModel folder that `hoa clip` loads (config.json,
model.safetensors of the EMA weights, tokenizer.json, tokenizer_config.json,
preprocessor_config.json: no resize at 64x64, OpenAI's mean / std) plus eval.json:

- zero-shot accuracy on held-out renders (split "unseen": the held-out color-shape pairs and
  relation triples) and on fresh renders of seen combinations, against chance: color of a
  single object among 8 ("a red shape"), shape among 6 ("a circle"), texture among 3 ("a striped
  shape"), and the relation of a two-object scene against its mirror ("a red circle left of a
  blue square ..." vs "... right of ..."), chance 1/2;
- retrieval on N held-out renders with their evaluation prompts (tools.world.captions.prompt_for
  with size and texture): text->image and image->text recall@1 and @5 (chance k / N).

As a second evaluator of the default model (beside tools/eval/detector.py): generate with
`hoa generate --prompt-file P`, then `hoa clip score --images DIR --model runs/clip` (each PNG's
own prompt) against `--prompts` of a derangement of the same prompts (mismatched).
"""

import copy
import json
import os
import shutil
import time

import numpy as np
import torch

from . import common

TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "weights", "default",
                         "tokenizer")
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def build(args, tok):
    from transformers import CLIPConfig, CLIPModel

    d = args.width
    cfg = CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=d, intermediate_size=4 * d,
                         num_hidden_layers=args.layers, num_attention_heads=d // 32,
                         max_position_embeddings=tok.model_max_length, hidden_act="quick_gelu",
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id),
        vision_config=dict(hidden_size=d, intermediate_size=4 * d, num_hidden_layers=args.layers,
                           num_attention_heads=d // 32, image_size=64, patch_size=args.patch,
                           hidden_act="quick_gelu"),
        projection_dim=d,
    )
    return CLIPModel(cfg)


def tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(TOKENIZER)


def pixels(images_u8, dev):
    x = torch.from_numpy(images_u8).to(dev).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=dev).view(1, 3, 1, 1)
    return (x - mean) / std


class CaptionStream:
    """Batches of (images, captions): chunks of rendered train scenes (seed_base + chunk index), each
    reused for `repeats` shuffled passes with a fresh caption per pass (the caption varies, the render
    does not), so rendering does not dominate a 2-core CPU. Its position is part of the checkpoint."""

    def __init__(self, make_dataset, caption, seed_base, chunk, repeats, batch, inverse=None):
        self.make_dataset, self.caption, self.inverse = make_dataset, caption, inverse
        self.seed_base, self.chunk, self.repeats, self.batch = seed_base, chunk, repeats, batch
        self.chunk_idx, self.rep, self.pos = 0, 0, 0
        self.images = self.scenes = None

    def _load(self):
        self.images, self.scenes = self.make_dataset(self.chunk, seed=self.seed_base + self.chunk_idx,
                                                     split="train")

    def next(self):
        if self.images is None:
            self._load()
        if self.pos + self.batch > len(self.images):
            self.pos, self.rep = 0, self.rep + 1
            if self.rep >= self.repeats:
                self.rep, self.chunk_idx = 0, self.chunk_idx + 1
                self._load()
        order = np.random.default_rng([self.seed_base, self.chunk_idx, self.rep]).permutation(len(self.images))
        idx = order[self.pos:self.pos + self.batch]
        rng = np.random.default_rng([self.seed_base, self.chunk_idx, self.rep, self.pos])
        self.pos += self.batch
        texts, negatives = [], []
        for i in idx:
            twin = copy.deepcopy(rng)
            texts.append(self.caption(self.scenes[i], rng))
            if self.inverse is not None:
                neg = self.caption(swap_relations(self.scenes[i], self.inverse), twin)
                if neg != texts[-1]:
                    negatives.append(neg)
        return self.images[idx], texts, negatives

    def state_dict(self):
        return {"chunk_idx": self.chunk_idx, "rep": self.rep, "pos": self.pos}

    def load_state_dict(self, sd):
        self.chunk_idx, self.rep, self.pos = sd["chunk_idx"], sd["rep"], sd["pos"]
        self.images = None


def swap_relations(scene, inverse):
    """The scene with every relation inverted: its caption, drawn with the same random choices, differs
    from the true one only in the relation words (NegCLIP's hard negatives, Yuksekgonul et al. 2023)."""
    return {**scene, "relations": [(a, inverse[r], b) for a, r, b in scene["relations"]]}


def contrastive_loss(model, tok, dev, images, texts, negatives):
    """CLIP's symmetric loss; the hard negatives only add columns to the image->text side."""
    t = tok(texts + negatives, padding=True, truncation=True, return_tensors="pt").to(dev)
    img = model.get_image_features(pixel_values=pixels(images, dev)).pooler_output
    txt = model.get_text_features(input_ids=t.input_ids, attention_mask=t.attention_mask).pooler_output
    img = torch.nn.functional.normalize(img, dim=-1)
    txt = torch.nn.functional.normalize(txt, dim=-1)
    logits = model.logit_scale.exp() * img @ txt.T
    target = torch.arange(len(images), device=dev)
    f = torch.nn.functional.cross_entropy
    return 0.5 * (f(logits, target) + f(logits[:, :len(images)].T, target))


@torch.no_grad()
def embed(model, tok, dev, images=None, texts=None, batch=256):
    out = []
    n = len(images) if images is not None else len(texts)
    for i in range(0, n, batch):
        if images is not None:
            e = model.get_image_features(pixel_values=pixels(images[i:i + batch], dev)).pooler_output
        else:
            t = tok(texts[i:i + batch], padding=True, truncation=True, return_tensors="pt").to(dev)
            e = model.get_text_features(input_ids=t.input_ids, attention_mask=t.attention_mask).pooler_output
        out.append(torch.nn.functional.normalize(e, dim=-1))
    return torch.cat(out)


def zero_shot(model, tok, dev, images, scenes, scene_mod):
    """{task: (accuracy, chance, n)} over the scenes each task applies to."""
    colors, shapes = list(scene_mod.COLORS), list(scene_mod.SHAPES)
    textures = ["solid", "striped", "dotted"]
    single = [i for i, s in enumerate(scenes) if len(s["objects"]) == 1]
    tasks = {
        "color": ([f"a {c} shape" for c in colors], lambda s: colors.index(s["objects"][0]["color"])),
        "shape": ([f"a {s}" for s in shapes], lambda s: shapes.index(s["objects"][0]["shape"])),
        "texture": ([f"a {t} shape" for t in textures], lambda s: textures.index(s["objects"][0]["texture"])),
    }
    # CLIP's prompt ensembling: a class is the mean of its captions over the other attributes
    # ("a red circle", "a red square", ... for red), the grammar the captions were trained on.
    ensembles = {
        "color_ensemble": [[f"a {c} {s}" for s in shapes] for c in colors],
        "shape_ensemble": [[f"a {c} {s}" for c in colors] for s in shapes],
        "texture_ensemble": [[f"a {t} {c} {s}" for c in colors for s in shapes] for t in textures],
    }
    res = {}
    if single:
        img = embed(model, tok, dev, images=images[single])
        for name, (labels, truth) in tasks.items():
            want = np.array([truth(scenes[i]) for i in single])
            pred = (img @ embed(model, tok, dev, texts=labels).T).argmax(-1).cpu().numpy()
            res[name] = (float((pred == want).mean()), 1.0 / len(labels), len(single))
            groups = ensembles[f"{name}_ensemble"]
            cls = torch.stack([embed(model, tok, dev, texts=g).mean(0) for g in groups])
            pred = (img @ torch.nn.functional.normalize(cls, dim=-1).T).argmax(-1).cpu().numpy()
            res[f"{name}_ensemble"] = (float((pred == want).mean()), 1.0 / len(groups), len(single))
    pairs = [i for i, s in enumerate(scenes) if len(s["objects"]) == 2]
    if pairs:
        img = embed(model, tok, dev, images=images[pairs])
        right, wrong = [], []
        for i in pairs:
            s = scenes[i]
            a, r, b = s["relations"][0]
            A, B = (common_prompt(s["objects"][k]) for k in (a, b))
            right.append(f"{A} {r} {B}")
            wrong.append(f"{A} {scene_mod.INVERSE[r]} {B}")
        sr = (img * embed(model, tok, dev, texts=right)).sum(-1)
        sw = (img * embed(model, tok, dev, texts=wrong)).sum(-1)
        res["relation"] = (float((sr > sw).float().mean()), 0.5, len(pairs))
    return res


def common_prompt(o):
    return f"a {o['color']} {o['shape']}"


def retrieval(model, tok, dev, images, scenes, captions_mod):
    texts = [captions_mod.prompt_for(s, size=True, texture=True) for s in scenes]
    sim = embed(model, tok, dev, images=images) @ embed(model, tok, dev, texts=texts).T
    n = len(scenes)
    out = {}
    for name, m in [("image->text", sim), ("text->image", sim.T)]:
        rank = (m > m.diag().unsqueeze(1)).sum(-1)  # how many beat the true pair
        for k in (1, 5):
            out[f"{name} R@{k}"] = (float((rank < k).float().mean()), k / n)
    out["n"] = n
    return out


def evaluate(model, tok, dev, args, log):
    ds = common.world(args, "dataset")
    scene_mod = common.world(args, "scene")
    captions = common.world(args, "captions")
    report = {}
    for split, seed in [("unseen", 424_242), ("train", 434_343)]:
        images, scenes = ds.make_dataset(args.eval_n, seed=seed, split=split)
        zs = zero_shot(model, tok, dev, images, scenes, scene_mod)
        rt = retrieval(model, tok, dev, images[:args.retrieval_n], scenes[:args.retrieval_n], captions)
        report[split] = {"zero_shot": zs, "retrieval": rt}
        for k, (acc, chance, n) in zs.items():
            log.line(f"{split} zero-shot {k}: {acc:.3f} (chance {chance:.3f}, n={n})")
        for k, v in rt.items():
            if k != "n":
                log.line(f"{split} retrieval {k}: {v[0]:.3f} (chance {v[1]:.3f}, n={rt['n']})")
    return report


def export(model, tok, out):
    from transformers import CLIPImageProcessorPil

    model.save_pretrained(out, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZER, f), os.path.join(out, f))
    CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(out)


def main():
    p = common.base_parser(__doc__)
    p.add_argument("--width", type=int, default=128, help="hidden size of both towers and the projection")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--chunk", type=int, default=4096, help="scenes rendered per chunk")
    p.add_argument("--repeats", type=int, default=4, help="passes over a chunk (fresh captions each)")
    p.add_argument("--eval-n", type=int, default=2000, help="renders per evaluation split")
    p.add_argument("--retrieval-n", type=int, default=500)
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--hard-negatives", action="store_true",
                   help="add each caption with its relations inverted as an image->text negative")
    p.set_defaults(lr=5e-4, batch=256, warmup=300)
    args = p.parse_args()
    dev = common.setup(args)
    tok = tokenizer()
    ds = common.world(args, "dataset")
    captions = common.world(args, "captions")
    log = common.Logger(args.out, args.log_seconds)

    model = build(args, tok).to(dev).train()
    ema = common.EMA(model, args.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, common.lr_lambda(args.warmup))
    stream = CaptionStream(ds.make_dataset, lambda s, r: captions.descriptive_caption(s, r, list_only=0.2),
                           3_000_000 + 1000 * args.seed, args.chunk, args.repeats, args.batch,
                           common.world(args, "scene").INVERSE if args.hard_negatives else None)
    parts = {"model": model, "ema": ema, "opt": opt, "sched": sched, "stream": stream}
    step = common.resume(args.out, parts, log, lr=args.lr)
    if step is not None:
        ema.shadow.to(dev)
    else:
        step = 0
        log.line(f"start: {sum(q.numel() for q in model.parameters())} params, batch {args.batch}, device {dev}")
    budget = common.Budget(0 if args.eval_only else args.minutes, args.ckpt_minutes)
    t_train, n_train = 0.0, 0
    while not budget.done():
        t0 = time.time()
        images, texts, negatives = stream.next()
        loss = contrastive_loss(model, tok, dev, images, texts, negatives)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step(); ema.update(model)
        with torch.no_grad():  # CLIP clamps the temperature at 100
            model.logit_scale.clamp_(0, np.log(100.0))
        step += 1
        t_train += time.time() - t0; n_train += len(images)
        log.step(step, loss.item(), len(images), f"scale {model.logit_scale.exp().item():.1f}")
        if budget.ckpt_due():
            common.save_parts(args.out, parts, step)
    if not args.eval_only:
        common.save_parts(args.out, parts, step)
        log.rate_summary(n_train, t_train)
    best = ema.shadow.eval()
    export(best, tok, args.out)
    report = evaluate(best, tok, dev, args, log)
    report["step"] = step
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(report, f, indent=1)
    log.line(f"saved the EMA CLIPModel to {args.out} (step {step}); eval.json written")


if __name__ == "__main__":
    main()
