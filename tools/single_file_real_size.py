#!/usr/bin/env python3
"""Real-size check of hoa's single-file path (no fixture: ~2-3 GB each): random-weight SD 1.5- and
SD 2.1-shaped pipelines (diffusers' real configs) saved as diffusers folders (f16) and converted
to LDM single files by tools/ldm_single_file.py. Then, by hand:
    hoa info --model OUT/sd15.safetensors
    hoa generate "a cat" --model OUT/sd15.safetensors --width 64 --height 64 --steps 2 --out a.png
    hoa generate "a cat" --model OUT/sd15 --width 64 --height 64 --steps 2 --out b.png
and the two PNGs must be equal: the configs hoa synthesizes from the file's shapes (no --config)
load the same model as diffusers' own configs.

Usage: python tools/single_file_real_size.py OUT_DIR [sd15|sd21 ...]   (default: both)
"""
import gzip
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ldm_single_file import convert  # noqa: E402


def tokenizer(pad, out):
    import open_clip
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(out, exist_ok=True)
    json.dump({t: i for i, t in enumerate(vocab)}, open(os.path.join(out, "v.json"), "w"))
    open(os.path.join(out, "m.txt"), "w").write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(os.path.join(out, "v.json"), os.path.join(out, "m.txt"), pad_token=pad)
    tok.model_max_length = 77
    return tok


def main(out, only=()):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    for name, sd2 in [("sd15", False), ("sd21", True)]:
        if only and name not in only:
            continue
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=96 if sd2 else 64, cross_attention_dim=1024 if sd2 else 768,
            attention_head_dim=[5, 10, 20, 20] if sd2 else 8, use_linear_projection=sd2)
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                            down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, sample_size=512)
        te = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=1024 if sd2 else 768, intermediate_size=4096 if sd2 else 3072,
            num_hidden_layers=23 if sd2 else 12, num_attention_heads=16 if sd2 else 12,
            max_position_embeddings=77, hidden_act="gelu" if sd2 else "quick_gelu",
            projection_dim=1024 if sd2 else 768))
        for m in (unet, vae, te):
            m.eval().to(torch.float16)
        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type="v_prediction" if sd2 else "epsilon")
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tokenizer(
            "!" if sd2 else "<|endoftext|>", os.path.join(out, "tok")), unet=unet, scheduler=sched,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        folder = os.path.join(out, name)
        pipe.save_pretrained(folder, safe_serialization=True)
        del pipe, unet, vae, te
        convert(folder, os.path.join(out, f"{name}.safetensors"), open_clip_text=sd2)
        print(name, "written", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
