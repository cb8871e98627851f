#!/usr/bin/env python3
"""Writes a diffusers Stable Diffusion 1.x / 2.x folder as ONE .safetensors file in the original
LDM (CompVis / A1111) key layout: model.diffusion_model.* (U-Net), first_stage_model.* (VAE, its
mid-attention linears as 1x1 convs), cond_stage_model.transformer.text_model.* (SD 1.x CLIP) or
cond_stage_model.model.* (SD 2.x OpenCLIP: q/k/v fused into in_proj, an extra last resblock that
SD 2.x does not condition on, text_projection); SDXL base: conditioner.embedders.0.transformer.* +
conditioner.embedders.1.model.*; SDXL refiner (no text_encoder/): conditioner.embedders.0.model.*. The inverse of diffusers' single-file loader, for
tests: `from_single_file(out, config=folder)` must load it back to the folder's tensors
(tools/fixtures/make_single_file.py checks that).

Usage: python tools/ldm_single_file.py FOLDER OUT.safetensors [--open-clip]
"""
import argparse
import json
import os

import torch
from safetensors.torch import load_file, save_file

RESNET = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
          ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection.")]


def sub(rest, table):
    for d, ldm in table:
        if rest.startswith(d):
            return ldm + rest[len(d):]
    return rest


def unet_key(k, layers, attn_up):
    """One diffusers U-Net key -> LDM. attn_up[i]: up block i has attentions."""
    n = layers
    p = k.split(".")
    if k.startswith("conv_in."):
        return "input_blocks.0.0." + k[len("conv_in."):]
    if k.startswith("time_embedding.linear_1."):
        return "time_embed.0." + k.split(".", 2)[2]
    if k.startswith("time_embedding.linear_2."):
        return "time_embed.2." + k.split(".", 2)[2]
    if k.startswith("add_embedding.linear_1."):
        return "label_emb.0.0." + k.split(".", 2)[2]
    if k.startswith("add_embedding.linear_2."):
        return "label_emb.0.2." + k.split(".", 2)[2]
    if k.startswith("conv_norm_out."):
        return "out.0." + k[len("conv_norm_out."):]
    if k.startswith("conv_out."):
        return "out.2." + k[len("conv_out."):]
    if p[0] == "down_blocks":
        i = int(p[1])
        if p[2] == "downsamplers":
            return f"input_blocks.{(i + 1) * (n + 1)}.0.op." + ".".join(p[5:])
        j, rest = int(p[3]), ".".join(p[4:])
        k2 = 1 + i * (n + 1) + j
        return f"input_blocks.{k2}.0." + sub(rest, RESNET) if p[2] == "resnets" else f"input_blocks.{k2}.1." + rest
    if p[0] == "mid_block":
        j, rest = int(p[2]), ".".join(p[3:])
        return f"middle_block.{2 * j}." + sub(rest, RESNET) if p[1] == "resnets" else "middle_block.1." + rest
    if p[0] == "up_blocks":
        i = int(p[1])
        if p[2] == "upsamplers":
            return f"output_blocks.{i * (n + 1) + n}.{2 if attn_up[i] else 1}.conv." + ".".join(p[5:])
        j, rest = int(p[3]), ".".join(p[4:])
        k2 = i * (n + 1) + j
        return f"output_blocks.{k2}.0." + sub(rest, RESNET) if p[2] == "resnets" else f"output_blocks.{k2}.1." + rest
    raise KeyError(k)


def vae_key(k, v, levels):
    p = k.split(".")
    part = p[0]
    if p[1] == "mid_block":
        if p[2] == "attentions":
            name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[p[4]]
            tail = p[-1]
            if name != "norm" and tail == "weight":
                v = v[:, :, None, None]
            return f"{part}.mid.attn_1.{name}.{tail}", v
        return f"{part}.mid.block_{int(p[3]) + 1}." + sub(".".join(p[4:]), [("conv_shortcut.", "nin_shortcut.")]), v
    if p[1] == "conv_norm_out":
        return f"{part}.norm_out.{p[2]}", v
    if p[1] in ("down_blocks", "up_blocks"):
        i = int(p[2])
        lvl, d = (i, "down") if part == "encoder" else (levels - 1 - i, "up")
        if p[3] == "resnets":
            return f"{part}.{d}.{lvl}.block.{p[4]}." + sub(".".join(p[5:]), [("conv_shortcut.", "nin_shortcut.")]), v
        return f"{part}.{d}.{lvl}.{'downsample' if d == 'down' else 'upsample'}.conv.{p[-1]}", v
    return k, v


def open_clip(te, layers, hidden, seed, extra_layer=True):
    """transformers CLIPTextModel(WithProjection) tensors -> OpenCLIP text tower, plus (SD 2.x)
    one extra random last layer that the pipeline does not condition on."""
    g = torch.Generator().manual_seed(seed)
    te = {k.removeprefix("text_model."): v for k, v in te.items()}
    proj = te.get("text_projection.weight")
    proj = proj.T if proj is not None else torch.randn(hidden, hidden, generator=g).to(
        te["final_layer_norm.weight"].dtype)
    out = {"token_embedding.weight": te["embeddings.token_embedding.weight"],
           "positional_embedding": te["embeddings.position_embedding.weight"],
           "ln_final.weight": te["final_layer_norm.weight"], "ln_final.bias": te["final_layer_norm.bias"],
           "text_projection": proj, "logit_scale": torch.tensor(4.6)}
    for i in range(layers + int(extra_layer)):
        src = f"encoder.layers.{i}."
        get = (lambda n, s=src: te[s + n]) if i < layers else (
            lambda n, s=src: (torch.randn(te["encoder.layers.0." + n].shape, generator=g) * 0.1).to(
                te["encoder.layers.0." + n].dtype))
        r = f"transformer.resblocks.{i}."
        for d, o in [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("self_attn.out_proj", "attn.out_proj"),
                     ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]:
            for t in ("weight", "bias"):
                out[f"{r}{o}.{t}"] = get(f"{d}.{t}")
        for t in ("weight", "bias"):
            out[f"{r}attn.in_proj_{t}"] = torch.cat([get(f"self_attn.{q}_proj.{t}") for q in "qkv"])
    return out


def convert(folder, out_path, open_clip_text=False, seed=0):
    cfg = json.load(open(os.path.join(folder, "unet", "config.json")))
    layers = cfg["layers_per_block"]
    attn_up = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    sd = {}
    for k, v in load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")).items():
        sd["model.diffusion_model." + unet_key(k, layers, attn_up)] = v
    vcfg = json.load(open(os.path.join(folder, "vae", "config.json")))
    for k, v in load_file(os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors")).items():
        k2, v2 = vae_key(k, v, len(vcfg["block_out_channels"]))
        sd["first_stage_model." + k2] = v2
    if not os.path.isdir(os.path.join(folder, "text_encoder")):
        # SDXL refiner: OpenCLIP bigG (with its projection) alone, as embedder 0.
        te2 = load_file(os.path.join(folder, "text_encoder_2", "model.safetensors"))
        t2 = json.load(open(os.path.join(folder, "text_encoder_2", "config.json")))
        for k, v in open_clip(te2, t2["num_hidden_layers"], t2["hidden_size"], seed, False).items():
            sd["conditioner.embedders.0.model." + k] = v
        te, tcfg = None, None
    else:
        te = load_file(os.path.join(folder, "text_encoder", "model.safetensors"))
        tcfg = json.load(open(os.path.join(folder, "text_encoder", "config.json")))
    if te is None:
        pass
    elif os.path.isdir(os.path.join(folder, "text_encoder_2")):
        # SDXL base: CLIP ViT-L as embedder 0, OpenCLIP bigG (with its projection) as embedder 1.
        for k, v in te.items():
            sd["conditioner.embedders.0.transformer.text_model." + k.removeprefix("text_model.")] = v
        te2 = load_file(os.path.join(folder, "text_encoder_2", "model.safetensors"))
        t2 = json.load(open(os.path.join(folder, "text_encoder_2", "config.json")))
        for k, v in open_clip(te2, t2["num_hidden_layers"], t2["hidden_size"], seed, False).items():
            sd["conditioner.embedders.1.model." + k] = v
    elif open_clip_text:
        for k, v in open_clip(te, tcfg["num_hidden_layers"], tcfg["hidden_size"], seed).items():
            sd["cond_stage_model.model." + k] = v
    else:
        for k, v in te.items():
            sd["cond_stage_model.transformer.text_model." + k.removeprefix("text_model.")] = v
        n = tcfg["max_position_embeddings"]
        sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(n)[None]
    # What real checkpoints carry besides the modules: EMA copies, scheduler buffers.
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    sd["betas"] = betas
    sd["alphas_cumprod"] = torch.cumprod(1 - betas, 0)
    save_file({k: v.contiguous() for k, v in sd.items()}, out_path)


if __name__ == "__main__":
    a = argparse.ArgumentParser()
    a.add_argument("folder")
    a.add_argument("out")
    a.add_argument("--open-clip", action="store_true")
    args = a.parse_args()
    convert(args.folder, args.out, args.open_clip)
