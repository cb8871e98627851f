"""Train hoa's consistency decoder (diffusers ConsistencyDecoderVAE) on top of the trained VAE's frozen encoder.

    python -m tools.train.train_cdec --vae RUN/vae --out RUN/cdec --minutes 12 [--init weights/default/consistency_decoder]

The model is a ``ConsistencyDecoderVAE`` in diffusers' layout: the encoder + quant_conv are copied from the trained
AutoencoderKL and frozen (so it encodes exactly as the VAE does), the decoder is a ``UNet2DModel`` (config as the
shipped one: 7 input channels = 3 noisy-image + 4 upsampled-latent, 6 output channels of which decode() uses the
first 3, learned time embedding over 1024 steps, scale-shift ResNets).

What decode() does (diffusers/models/autoencoders/consistency_decoder_vae.py and
schedulers/scheduling_consistency_decoder.py), and this script reproduces for training:
  z  = (z_raw * scaling_factor - means) / stds           (the hard-coded SD channel means/stds)
  z  = nearest-upsample(z, 4)                             (4 = 2 ** (len(block_out_channels) - 1))
  x  = sqrt(1 - abar[1008]) * noise                       (init_noise_sigma * randn)
  for t in (1008, 512):
      out = decoder_unet(cat(c_in[t] * x, z), t).sample[:, :3]
      x0  = c_out[t] * out + c_skip[t] * x
      x   = sqrt(abar[512]) * x0 + sqrt(1 - abar[512]) * noise'   (after the first step; x0 after the second)
with abar the cosine schedule of 1024 steps, sigma = sqrt(1/abar - 1), sigma_data 0.5,
c_skip = sqrt(1/abar) * 0.25 / (sigma^2 + 0.25), c_out = sigma * 0.5 / sqrt(sigma^2 + 0.25),
c_in = sqrt(1/abar) / sqrt(sigma^2 + 0.25) -- taken from diffusers' ConsistencyDecoderScheduler itself, not retyped.

Training: each sample draws t in {1008, 512}; x_t is built exactly as decode() would feed it (t = 1008: pure scaled
noise; t = 512: the clean image re-noised to abar[512]); the loss is MSE + L1 between the predicted clean image
c_out * out + c_skip * x_t and the real image, in [-1, 1] pixels (object pixels weighted 1 + --object-weight).

Why direct training at the two levels instead of consistency distillation: distillation needs a many-step teacher
(a diffusion decoder sampled along the ODE), and none exists here -- training one would cost more than the whole
budget. And the 2-step schedule only ever queries t = 1008 and t = 512, so a model that is good at exactly those two
noise levels, given the latent, is all decode() needs; the consistency property at other t is never used. At
t = 512 we re-noise the true image rather than the model's first-step output; the two differ by the first step's
error, which shrinks as training proceeds (the same approximation consistency training makes).

Output: OUT is a diffusers ConsistencyDecoderVAE folder (config.json + safetensors), plus ckpt.pt and log.txt.
"""

import os
import time

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ConsistencyDecoderVAE
from diffusers.schedulers.scheduling_consistency_decoder import ConsistencyDecoderScheduler

from . import common

TIMESTEPS = (1008, 512)


def cdec_config(vae_cfg, widths):
    return dict(scaling_factor=vae_cfg["scaling_factor"], latent_channels=4, sample_size=64, encoder_act_fn="silu",
                encoder_block_out_channels=list(vae_cfg["block_out_channels"]), encoder_double_z=True,
                encoder_down_block_types=list(vae_cfg["down_block_types"]), encoder_in_channels=3,
                encoder_layers_per_block=vae_cfg["layers_per_block"],
                encoder_norm_num_groups=vae_cfg["norm_num_groups"], encoder_out_channels=4,
                decoder_add_attention=False, decoder_block_out_channels=list(widths),
                decoder_down_block_types=["ResnetDownsampleBlock2D"] * len(widths), decoder_downsample_padding=1,
                decoder_in_channels=7, decoder_layers_per_block=1, decoder_norm_eps=1e-5, decoder_norm_num_groups=8,
                decoder_num_train_timesteps=1024, decoder_out_channels=6,
                decoder_resnet_time_scale_shift="scale_shift", decoder_time_embedding_type="learned",
                decoder_up_block_types=["ResnetUpsampleBlock2D"] * len(widths))


def main():
    p = common.base_parser(__doc__)
    p.add_argument("--vae", required=True, help="trained AutoencoderKL folder (train_vae's --out)")
    p.add_argument("--widths", default="16,32,64", help="decoder block_out_channels (from-scratch only)")
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--object-weight", type=float, default=0.0,
                   help="extra loss weight on object pixels (see common.pixel_weights)")
    p.set_defaults(lr=5e-4, batch=32)
    args = p.parse_args()
    dev = common.setup(args)
    log = common.Logger(args.out, args.log_seconds)
    make_dataset = common.world(args, "dataset").make_dataset

    vae_dir = common.subfolder(args.vae, "vae")
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32)
    if args.init:
        cd = ConsistencyDecoderVAE.from_pretrained(common.subfolder(args.init, "consistency_decoder"),
                                                   torch_dtype=torch.float32)
    else:
        cd = ConsistencyDecoderVAE(**cdec_config(dict(vae.config), [int(w) for w in args.widths.split(",")]))
    # The encoder is the VAE's, frozen, and decode() must scale latents as the VAE's U-Net saw them.
    cd.encoder.load_state_dict(vae.encoder.state_dict())
    cd.quant_conv.load_state_dict(vae.quant_conv.state_dict())
    cd.register_to_config(scaling_factor=vae.config.scaling_factor)
    del vae
    cd.to(dev)
    cd.encoder.requires_grad_(False).eval(); cd.quant_conv.requires_grad_(False)
    dec = cd.decoder_unet.train()
    sch = ConsistencyDecoderScheduler()
    sch.set_timesteps(2, device=dev)
    assert tuple(sch.timesteps.tolist()) == TIMESTEPS, sch.timesteps
    ts = torch.tensor(TIMESTEPS, device=dev)
    c_in, c_out, c_skip = sch.c_in[ts], sch.c_out[ts], sch.c_skip[ts]
    a, s = sch.sqrt_alphas_cumprod[ts], sch.sqrt_one_minus_alphas_cumprod[ts]
    a = torch.where(ts == TIMESTEPS[0], torch.zeros_like(a), a)  # decode() starts from pure noise at t=1008
    up = 2 ** (len(cd.config.block_out_channels) - 1)

    ema = common.EMA(dec, args.ema_decay)
    opt = torch.optim.AdamW(dec.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, common.lr_lambda(args.warmup))
    stream = common.SceneStream(make_dataset, 2_000_000 + 1000 * args.seed, args.chunk, args.repeats, args.batch)
    parts = {"model": dec, "ema": ema, "opt": opt, "sched": sched, "stream": stream}
    step = common.resume(args.out, parts, log, lr=args.lr)
    if step is None:
        step = 0
        log.line(f"start: {'init ' + args.init if args.init else 'random init'}, decoder "
                 f"{sum(p.numel() for p in dec.parameters())} params, batch {args.batch}, device {dev}")

    budget = common.Budget(args.minutes, args.ckpt_minutes)
    t_train, n_train = 0.0, 0
    while not budget.done():
        t0 = time.time()
        x0 = common.images_to_tensor(stream.next(), dev)
        b = len(x0)
        with torch.no_grad():
            z = cd.encode(x0).latent_dist.mean  # raw latent, as the pipeline passes latents / scaling_factor
            z = (z * cd.config.scaling_factor - cd.means) / cd.stds
            z = F.interpolate(z, mode="nearest", scale_factor=up)
        k = torch.randint(0, 2, (b,), device=dev)
        v = lambda t: t[k].view(b, 1, 1, 1)
        xt = v(a) * x0 + v(s) * torch.randn_like(x0)
        out = dec(torch.cat([v(c_in) * xt, z], dim=1), ts[k]).sample[:, :3]
        pred = v(c_out) * out + v(c_skip) * xt
        loss = common.pixel_loss(pred, x0, args.object_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec.parameters(), 1.0)
        opt.step(); sched.step(); ema.update(dec)
        step += 1
        t_train += time.time() - t0; n_train += b
        log.step(step, loss.item(), b)
        if budget.ckpt_due():
            common.save_parts(args.out, parts, step)
    common.save_parts(args.out, parts, step)
    log.rate_summary(n_train, t_train)
    cd.decoder_unet = ema.shadow
    cd.save_pretrained(args.out, safe_serialization=True)
    log.line(f"saved ConsistencyDecoderVAE (EMA decoder) to {args.out} (step {step})")
    # Sanity: the saved folder decodes through diffusers' own 2-step decode().
    chk = ConsistencyDecoderVAE.from_pretrained(args.out).to(dev).eval()
    with torch.no_grad():
        x = x0[:4]
        rec = chk.decode(chk.encode(x).latent_dist.mean, generator=torch.Generator(dev).manual_seed(0)).sample
    log.line(f"2-step decode() check on 4 training images: MSE {F.mse_loss(rec, x).item():.4f}")


if __name__ == "__main__":
    main()
