"""Train hoa's AutoencoderKL (64x64 RGB -> 4x16x16 latents) on procedural scenes.

    python -m tools.train.train_vae --out RUN/vae --minutes 30 [--init weights/default] [--device cuda --batch 128]

Loss: L1 + MSE on pixels (object pixels weighted 1 + ``--object-weight``) plus a tiny KL (1e-6), which keeps the
posterior near-deterministic (its mean is what the U-Net is trained on) while stopping the latent scale from
drifting freely. AdamW with warmup, EMA of the weights; the
EMA is exported. At the end ``scaling_factor = 1 / std(latent means)`` over ``--scale-scenes`` scenes is written into
the config, except with ``--init`` (``--keep-scaling`` defaults on there): the shipped U-Net was trained on the old
scale, so a fine-tuned VAE must keep it (the newly measured std is logged for comparison).

4x downsampling (three blocks, two downsamplers): 64x64 pixels become 16x16 latents. 8x (as Stable Diffusion) would
leave 8x8 latents, too coarse for small shapes at this resolution; 16x16 keeps a shape of a few pixels visible in the
latent while the U-Net still runs on 256 positions only.

The folder ``OUT`` ends up a diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors), with
ckpt.pt and log.txt beside it.
"""

import time

import numpy as np
import torch
from diffusers import AutoencoderKL

from . import common


def vae_config(widths):
    n = len(widths)
    return dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
                up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=list(widths), layers_per_block=1,
                act_fn="silu", latent_channels=4, norm_num_groups=8, sample_size=64, scaling_factor=1.0,
                force_upcast=True)


def build(args):
    if args.init:
        return AutoencoderKL.from_pretrained(common.subfolder(args.init, "vae"), torch_dtype=torch.float32)
    return AutoencoderKL(**vae_config([int(w) for w in args.widths.split(",")]))


@torch.no_grad()
def latent_std(vae, make_dataset, n, seed, device, batch=256):
    images, _ = make_dataset(n, seed=seed, split="train")
    zs = []
    for i in range(0, n, batch):
        x = common.images_to_tensor(images[i:i + batch], device)
        zs.append(vae.encode(x).latent_dist.mean.float().cpu())
    return torch.cat(zs).std().item()


def main():
    p = common.base_parser(__doc__)
    p.add_argument("--widths", default="16,32,64", help="block_out_channels (from-scratch only)")
    p.add_argument("--chunk", type=int, default=4096, help="scenes rendered per chunk")
    p.add_argument("--repeats", type=int, default=4, help="passes over a chunk before rendering the next")
    p.add_argument("--kl", type=float, default=1e-6)
    p.add_argument("--scale-scenes", type=int, default=2000)
    p.add_argument("--object-weight", type=float, default=0.0,
                   help="extra loss weight on object pixels (those differing from the flat background, grown by 1 px)")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="train the decoder only: the latents (and so a U-Net trained on them) stay valid")
    p.add_argument("--keep-scaling", action=argparse_bool(), default=None,
                   help="keep the init's scaling_factor (default: on with --init, off otherwise)")
    p.set_defaults(lr=5e-4, batch=32)
    args = p.parse_args()
    keep = bool(args.init) if args.keep_scaling is None else args.keep_scaling
    dev = common.setup(args)
    make_dataset = common.world(args, "dataset").make_dataset
    log = common.Logger(args.out, args.log_seconds)

    vae = build(args).to(dev).train()
    ema = common.EMA(vae, args.ema_decay)
    if args.freeze_encoder:
        for m in (vae.encoder, vae.quant_conv):
            m.requires_grad_(False)
    opt = torch.optim.AdamW([q for q in vae.parameters() if q.requires_grad], lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, common.lr_lambda(args.warmup))
    stream = common.SceneStream(make_dataset, 1_000_000 + 1000 * args.seed, args.chunk, args.repeats, args.batch)
    parts = {"model": vae, "ema": ema, "opt": opt, "sched": sched, "stream": stream}
    step = common.resume(args.out, parts, log, lr=args.lr)
    if step is not None:
        ema.shadow.to(dev)
    else:
        step = 0
        log.line(f"start: {'init ' + args.init if args.init else 'random init'}, "
                 f"{sum(p.numel() for p in vae.parameters())} params, batch {args.batch}, device {dev}")

    budget = common.Budget(args.minutes, args.ckpt_minutes)
    t_train, n_train = 0.0, 0
    while not budget.done():
        t0 = time.time()
        images = stream.next()
        x = common.images_to_tensor(images, dev)
        with torch.set_grad_enabled(not args.freeze_encoder):
            post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = common.pixel_loss(rec, x, args.object_weight) + args.kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step(); sched.step(); ema.update(vae)
        step += 1
        t_train += time.time() - t0; n_train += len(images)
        log.step(step, loss.item(), len(images))
        if budget.ckpt_due():
            common.save_parts(args.out, parts, step)
    common.save_parts(args.out, parts, step)
    log.rate_summary(n_train, t_train)

    model = ema.shadow
    std = latent_std(model, make_dataset, args.scale_scenes, 999_999, dev)
    if keep:
        log.line(f"latent std {std:.4f} (1/std = {1 / std:.4f}); keeping scaling_factor {model.config.scaling_factor}")
    else:
        model.register_to_config(scaling_factor=1.0 / std)
        log.line(f"latent std {std:.4f}: scaling_factor = {1 / std:.6f}")
    model.save_pretrained(args.out, safe_serialization=True)
    log.line(f"saved EMA AutoencoderKL to {args.out} (step {step})")


def argparse_bool():
    import argparse
    return argparse.BooleanOptionalAction


if __name__ == "__main__":
    main()
