"""Shared plumbing for the hoa training scripts: flags, seeding, time budget, logging, EMA, resumable checkpoints.

Every script writes its state to ``OUT/ckpt.pt`` (model, EMA, optimizer, step, data position, RNG states) every
``--ckpt-minutes`` and when its ``--minutes`` budget is spent; rerunning the same command resumes from it. The budget
counts only the current invocation's wall time, so ``--minutes 30`` twice trains ~60 minutes in total.
"""

import argparse
import copy
import importlib
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F


def base_parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", required=True, help="run folder for this stage (ckpt.pt, log.txt, exported model)")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget for this invocation (wall clock)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=500, help="linear LR warmup steps")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--init", default=None, help="diffusers folder to start from (e.g. weights/default) instead of random init")
    p.add_argument("--ckpt-minutes", type=float, default=5.0, help="checkpoint interval")
    p.add_argument("--log-seconds", type=float, default=30.0, help="log interval")
    p.add_argument("--world-module", default="tools.world",
                   help="python package providing dataset/captions/tokenizer (tests point this at a stand-in)")
    return p


def setup(args):
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    return torch.device(args.device)


def world(args, name):
    """Import ``<world-module>.<name>`` (dataset, captions, tokenizer)."""
    return importlib.import_module(f"{args.world_module}.{name}")


def subfolder(folder, sub):
    """``folder/sub`` when it holds a model or tokenizer (a pipeline folder), else ``folder`` itself (a single one)."""
    cand = os.path.join(folder, sub)
    marks = ("config.json", "tokenizer.json")
    return cand if any(os.path.isfile(os.path.join(cand, m)) for m in marks) else folder


def images_to_tensor(images_u8, device):
    """uint8 [n,64,64,3] -> float [-1,1] NCHW, as the diffusers VAE expects."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).to(device)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def pixel_weights(x, object_weight):
    """Per-pixel loss weights [n,1,h,w] for images x in [-1, 1]: 1 on the background, 1 + object_weight on objects
    (pixels off the background color, grown by 1 px). Small, low-contrast shapes (a white star on the sky) are a few
    percent of the pixels and differ little from the background, so a plain pixel loss spends almost nothing on
    them: the stage-6 VAE got the shape of 72% of small objects right, 54% of white ones. The backgrounds are flat
    and objects cover well under half an image, so the per-image median color is the background."""
    if object_weight == 0:
        return torch.ones_like(x[:, :1])
    bg = x.flatten(2).median(dim=2).values[:, :, None, None]
    mask = ((x - bg).abs().amax(dim=1, keepdim=True) > 1e-3).float()
    mask = F.max_pool2d(mask, 3, stride=1, padding=1)
    return 1 + object_weight * mask


def pixel_loss(pred, target, object_weight):
    """L1 + MSE between images in [-1, 1], each pixel weighted by ``pixel_weights(target, object_weight)``; with
    weight 0 exactly ``l1_loss + mse_loss``."""
    d = pred - target
    w = pixel_weights(target, object_weight)
    return (w * (d.abs() + d * d)).sum() / (d.shape[1] * w.sum())


class Logger:
    def __init__(self, out, every_s):
        self.path = os.path.join(out, "log.txt")
        self.every_s = every_s
        self.last = time.time()
        self.loss_ema = None
        self.samples = 0
        self.t_samples = time.time()

    def line(self, msg):
        msg = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(msg, flush=True)
        with open(self.path, "a") as f:
            f.write(msg + "\n")

    def step(self, step, loss, n, extra=""):
        self.loss_ema = loss if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * loss
        self.samples += n
        now = time.time()
        if now - self.last >= self.every_s:
            rate = self.samples / max(now - self.t_samples, 1e-9)
            self.line(f"step {step} loss_ema {self.loss_ema:.5f} samples/s {rate:.1f} {extra}".rstrip())
            self.last = now
            self.samples = 0
            self.t_samples = now

    def rate_summary(self, samples, seconds):
        self.line(f"throughput: {samples} samples in {seconds:.1f} s = {samples / max(seconds, 1e-9):.1f} samples/s")


class EMA:
    """Exponential moving average of parameters, decay min(decay, (1+n)/(10+n)) so early steps are not frozen."""

    def __init__(self, model, decay):
        self.decay = decay
        self.n = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach(), 1.0 - d)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)

    def state_dict(self):
        return {"n": self.n, "model": self.shadow.state_dict()}

    def load_state_dict(self, sd):
        self.n = sd["n"]
        self.shadow.load_state_dict(sd["model"])


def lr_lambda(warmup):
    return lambda step: min(1.0, (step + 1) / max(warmup, 1))


def rng_state():
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st):
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def ckpt_path(out):
    return os.path.join(out, "ckpt.pt")


def save_ckpt(out, state):
    """Atomic write: a crash mid-save leaves the previous checkpoint intact."""
    state = dict(state, rng=rng_state())
    tmp = ckpt_path(out) + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, ckpt_path(out))


def load_ckpt(out):
    p = ckpt_path(out)
    if not os.path.isfile(p):
        return None
    st = torch.load(p, map_location="cpu", weights_only=False)
    set_rng_state(st["rng"])
    return st


class GeneratorState:
    """A numpy Generator as a checkpoint part (state_dict / load_state_dict like torch objects)."""

    def __init__(self, gen):
        self.gen = gen

    def state_dict(self):
        return self.gen.bit_generator.state

    def load_state_dict(self, st):
        self.gen.bit_generator.state = st


def resume(out, parts, log, lr=None):
    """Restores every part (name -> object with load_state_dict) from out's checkpoint and returns its step,
    or None when out has no checkpoint yet. With ``lr``, parts["opt"] / parts["sched"] take that base LR instead of
    the checkpoint's (the scheduler's state would otherwise keep the old one and ignore ``--lr``): a resumed run can
    be annealed by rerunning it with a lower ``--lr``."""
    st = load_ckpt(out)
    if st is None:
        return None
    for name, part in parts.items():
        part.load_state_dict(st[name])
    log.line(f"resumed from {ckpt_path(out)} at step {st['step']}")
    sched = parts.get("sched")
    if lr is not None and sched is not None and any(b != lr for b in sched.base_lrs):
        log.line(f"base LR {sched.base_lrs[0]:g} (checkpoint) -> {lr:g} (--lr)")
        sched.base_lrs = [lr] * len(sched.base_lrs)
        for g, f in zip(parts["opt"].param_groups, sched.lr_lambdas):
            g["initial_lr"] = lr
            g["lr"] = lr * f(sched.last_epoch)
    return st["step"]


def save_parts(out, parts, step):
    save_ckpt(out, {**{name: part.state_dict() for name, part in parts.items()}, "step": step})


class Budget:
    """Wall-clock budget of this invocation plus the periodic checkpoint timer."""

    def __init__(self, minutes, ckpt_minutes):
        self.t0 = time.time()
        self.end = self.t0 + minutes * 60.0
        self.ckpt_every = ckpt_minutes * 60.0
        self.last_ckpt = self.t0

    def done(self):
        return time.time() >= self.end

    def ckpt_due(self):
        if time.time() - self.last_ckpt >= self.ckpt_every:
            self.last_ckpt = time.time()
            return True
        return False

    def elapsed(self):
        return time.time() - self.t0


class SceneStream:
    """Batches of images from ``make_dataset`` chunks with a fresh seed per chunk (seed_base + chunk index).

    Each chunk of ``chunk`` scenes is reused for ``repeats`` shuffled passes before the next is rendered, so scene
    generation does not dominate a 2-core CPU. Its position (chunk index, pass, offset) is part of the checkpoint;
    a chunk is re-rendered deterministically on resume.
    """

    def __init__(self, make_dataset, seed_base, chunk, repeats, batch):
        self.make_dataset, self.seed_base, self.chunk, self.repeats, self.batch = make_dataset, seed_base, chunk, repeats, batch
        self.chunk_idx, self.rep, self.pos = 0, 0, 0
        self.images = None

    def _load(self):
        self.images, _ = self.make_dataset(self.chunk, seed=self.seed_base + self.chunk_idx, split="train")

    def _order(self):
        g = np.random.default_rng([self.seed_base, self.chunk_idx, self.rep])
        return g.permutation(len(self.images))

    def next(self):
        if self.images is None:
            self._load()
        if self.pos + self.batch > len(self.images):
            self.pos, self.rep = 0, self.rep + 1
            if self.rep >= self.repeats:
                self.rep, self.chunk_idx = 0, self.chunk_idx + 1
                self._load()
        idx = self._order()[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return self.images[idx]

    def state_dict(self):
        return {"chunk_idx": self.chunk_idx, "rep": self.rep, "pos": self.pos}

    def load_state_dict(self, sd):
        self.chunk_idx, self.rep, self.pos = sd["chunk_idx"], sd["rep"], sd["pos"]
        self.images = None
