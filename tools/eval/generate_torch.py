"""Generate the prompt set with diffusers' StableDiffusionPipeline (PyTorch, CPU), named <id>.png for
score.py. Used for the ablation, whose arms are training runs rather than shipped folders: both arms go
through the same pipeline, so their scores compare; the shipped model is scored through hoa's Rust
pipeline (generate_hoa.py), which tests/default_model.rs ties to this one.

    python -m tools.eval.generate_torch --run train_runs/ft/abl_alt --vae train_runs/ft/vae \
        --out /tmp/gen_alt [--steps 25] [--guidance 3] [--seed 0] [--threads 1] [--scheduler euler_a] \
        [--guidance-high 5 --guidance-high-from 500] [--upsample]
    python -m tools.eval.generate_torch --model weights/default --out /tmp/gen_torch

--run takes a train_unet output folder (its EMA export: unet/, text_encoder/, tokenizer/) and --vae
a train_vae folder; --model a whole diffusers folder. Prompt j is seeded seed + j, as generate_hoa.py
does (the noise differs from hoa's portable generator; only the scores compare).
"""

import argparse
import json
import os

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import PreTrainedTokenizerFast, T5EncoderModel

from tools.eval.guidance import guide_high_noise
from tools.train.export import SAMPLERS, ddim_config, with_sampler
from tools.world.upsample import upsample

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def sub(folder, name):
    """A saved model is either the folder itself or its `name` subfolder."""
    return os.path.join(folder, name) if os.path.isdir(os.path.join(folder, name)) else folder


def load(args):
    if args.model:
        return StableDiffusionPipeline.from_pretrained(args.model, dtype=torch.float32)
    return StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(sub(args.vae, "vae")),
        text_encoder=T5EncoderModel.from_pretrained(os.path.join(args.run, "text_encoder")),
        tokenizer=PreTrainedTokenizerFast.from_pretrained(os.path.join(args.run, "tokenizer")),
        unet=UNet2DConditionModel.from_pretrained(os.path.join(args.run, "unet")),
        scheduler=DDIMScheduler(**ddim_config(args.run)),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default=os.path.join(ROOT, "tools", "eval", "prompts.json"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=None, help="a diffusers folder")
    ap.add_argument("--run", default=None, help="a train_unet output folder")
    ap.add_argument("--vae", default=None, help="with --run: the train_vae folder")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance-high", type=float, default=None,
                    help="guidance for the steps at timestep >= --guidance-high-from (hoa generate --guidance-high)")
    ap.add_argument("--guidance-high-from", type=float, default=500.0)
    ap.add_argument("--scheduler", default=None, choices=sorted(SAMPLERS),
                    help="replace the folder's scheduler, keeping its noise schedule (default: the folder's)")
    ap.add_argument("--upsample", action="store_true",
                    help="the shipped hoa.json's prompt upsampling (tools/world/upsample.py: sizes, textures and the "
                         "three-object layout a prompt leaves out), as hoa generate applies it")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--limit", type=int, default=None, help="first N prompts only")
    args = ap.parse_args()
    if not args.model and not (args.run and args.vae):
        ap.error("give --model DIR, or --run DIR with --vae DIR")
    torch.set_num_threads(args.threads)
    pipe = load(args)
    if args.scheduler:
        pipe.scheduler = with_sampler(pipe.scheduler, args.scheduler)
    if args.guidance_high is not None:
        guide_high_noise(pipe, args.guidance, args.guidance_high, args.guidance_high_from)
    pipe.set_progress_bar_config(disable=True)
    prompts = json.load(open(args.prompts))[: args.limit]
    os.makedirs(args.out, exist_ok=True)
    for i in range(0, len(prompts), args.batch):
        chunk = prompts[i:i + args.batch]
        gens = [torch.Generator().manual_seed(args.seed + i + k) for k in range(len(chunk))]
        text = [upsample(p["prompt"]) if args.upsample else p["prompt"] for p in chunk]
        images = pipe(text, negative_prompt=[""] * len(chunk), height=64, width=64,
                      num_inference_steps=args.steps, guidance_scale=args.guidance, generator=gens).images
        for p, img in zip(chunk, images):
            img.save(os.path.join(args.out, f"{p['id']}.png"))
    print(f"{len(prompts)} images in {args.out}")


if __name__ == "__main__":
    main()
