"""Assemble a hoa/diffusers model folder from a training run and check that diffusers loads and runs it.

    python -m tools.train.export --run RUN --out weights/default [--force]

Reads RUN/vae (AutoencoderKL), RUN/unet/{unet,text_encoder,tokenizer}, RUN/cdec (ConsistencyDecoderVAE, optional)
and writes, like the shipped weights/default:
  model_index.json            StableDiffusionPipeline: T5EncoderModel + PreTrainedTokenizerFast + DDIMScheduler
  unet/ vae/ consistency_decoder/   float16 safetensors (no variant suffix)
  text_encoder/               float32 safetensors (T5 is tiny, and its layer norms prefer f32)
  tokenizer/                  tokenizer.json + tokenizer_config.json (model_max_length 80)
  scheduler/scheduler_config.json   the shipped DDIM values, with RUN/unet/noise_schedule.json's prediction type,
                              zero-SNR rescaling and timestep spacing, as EulerAncestralDiscreteScheduler
                              (--scheduler ddim keeps DDIMScheduler)
  hoa.json                    HOA below: 25 steps, guidance 5 at timesteps >= 500 and 2 after, prompt upsampling
Then loads it with StableDiffusionPipeline.from_pretrained, renders one 64x64 image (its sampler and hoa.json) to
``--sample`` (default RUN/export_sample.png) and prints the folder's total size. Refuses a non-empty --out without
--force.
"""

import argparse
import json
import os
import shutil

import torch
from diffusers import (AutoencoderKL, ConsistencyDecoderVAE, DDIMScheduler, EulerAncestralDiscreteScheduler,
                       StableDiffusionPipeline, UNet2DConditionModel)
from transformers import PreTrainedTokenizerFast, T5EncoderModel

from tools.eval.guidance import guide_high_noise
from tools.world.upsample import RULES, upsample

DDIM = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            trained_betas=None, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
            thresholding=False, dynamic_thresholding_ratio=0.995, clip_sample_range=1.0, sample_max_value=1.0,
            timestep_spacing="leading", rescale_betas_zero_snr=False)
# Guidance 5 at the high-noise steps (layout, object count), 2 after: see weights/README.md (session 16).
HOA = {"guidance": 2.0, "guidance_high": {"scale": 5.0, "from_timestep": 500}, "steps": 25,
       "prompt_upsampling": RULES}


SAMPLERS = {"ddim": DDIMScheduler, "euler_a": EulerAncestralDiscreteScheduler}


def with_sampler(scheduler, name):
    """`scheduler`'s noise schedule (betas, prediction type, zero-SNR, spacing) under the sampler `name`."""
    return SAMPLERS[name].from_config(scheduler.config)


def ddim_config(unet_run):
    """The shipped DDIM values with the noise schedule train_unet wrote for this run (epsilon/leading if none)."""
    path = os.path.join(unet_run, "noise_schedule.json")
    return dict(DDIM, **(json.load(open(path)) if os.path.isfile(path) else {}))


def folder_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    p.add_argument("--sample", default=None, help="PNG path for the check image (default RUN/export_sample.png)")
    p.add_argument("--prompt", default="a large red circle on a white background")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scheduler", default="euler_a", choices=sorted(SAMPLERS),
                   help="the folder's default sampler, on the run's noise schedule (weights/README.md: Euler ancestral "
                        "beat DDIM by ~3 points of unseen binding in hoa's pipeline)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if os.path.isdir(args.out) and os.listdir(args.out):
        if not args.force:
            raise SystemExit(f"{args.out} exists and is not empty; pass --force to overwrite it")
        shutil.rmtree(args.out)
    os.makedirs(args.out)

    run = args.run
    vae = AutoencoderKL.from_pretrained(os.path.join(run, "vae"), torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(run, "unet", "unet"), torch_dtype=torch.float32)
    te = T5EncoderModel.from_pretrained(os.path.join(run, "unet", "text_encoder"), dtype=torch.float32)
    tok = PreTrainedTokenizerFast.from_pretrained(os.path.join(run, "unet", "tokenizer"))
    assert tok.model_max_length == 80, tok.model_max_length
    scheduler = with_sampler(DDIMScheduler(**ddim_config(os.path.join(run, "unet"))), args.scheduler)
    pipe = StableDiffusionPipeline(vae=vae.to(torch.float16), text_encoder=te, tokenizer=tok,
                                   unet=unet.to(torch.float16), scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(args.out, safe_serialization=True)
    # transformers 5 names the fast tokenizer class TokenizersBackend; record the name the shipped folder (and older
    # transformers) use. Both resolve to the same class, which the load check below confirms.
    mi_path = os.path.join(args.out, "model_index.json")
    mi = json.load(open(mi_path))
    mi["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    with open(mi_path, "w") as f:
        json.dump(mi, f, indent=2, sort_keys=True)
        f.write("\n")
    cdec_dir = os.path.join(run, "cdec")
    if os.path.isfile(os.path.join(cdec_dir, "config.json")):
        cd = ConsistencyDecoderVAE.from_pretrained(cdec_dir, torch_dtype=torch.float32)
        if abs(cd.config.scaling_factor - vae.config.scaling_factor) > 1e-9:
            raise SystemExit(f"consistency decoder scaling_factor {cd.config.scaling_factor} != VAE's "
                             f"{vae.config.scaling_factor}: retrain it on this VAE")
        cd.to(torch.float16).save_pretrained(os.path.join(args.out, "consistency_decoder"), safe_serialization=True)
    else:
        print(f"note: no {cdec_dir}; exporting without consistency_decoder/")
    with open(os.path.join(args.out, "hoa.json"), "w") as f:
        json.dump(HOA, f, indent=2)
        f.write("\n")

    # Check: diffusers loads the folder and generates with the defaults hoa uses.
    pipe = StableDiffusionPipeline.from_pretrained(args.out, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    guide_high_noise(pipe, HOA["guidance"], **HOA["guidance_high"])
    img = pipe(upsample(args.prompt), negative_prompt="", height=64, width=64, num_inference_steps=HOA["steps"],
               guidance_scale=HOA["guidance"], generator=torch.Generator().manual_seed(0)).images[0]
    sample = args.sample or os.path.join(run, "export_sample.png")
    img.save(sample)
    if os.path.isdir(os.path.join(args.out, "consistency_decoder")):
        ConsistencyDecoderVAE.from_pretrained(os.path.join(args.out, "consistency_decoder"))
    for d in sorted(os.listdir(args.out)):
        print(f"  {d:24s} {folder_size(os.path.join(args.out, d)) / 1e6:8.2f} MB")
    print(f"exported {args.out}: total {folder_size(args.out) / 1e6:.2f} MB; check image {img.size} -> {sample}")


if __name__ == "__main__":
    main()
