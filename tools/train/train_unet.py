"""Train hoa's text encoder (T5EncoderModel) and U-Net (UNet2DConditionModel) jointly on cached VAE latents.

    python -m tools.train.train_unet --vae RUN/vae --out RUN/unet --minutes 75 [--init weights/default]
        [--caption-mode synthetic|alt] [--n-scenes 200000] [--device cuda --batch 256]

* Objective: DDPM on the shipped scheduler's betas (scaled_linear 0.00085..0.012, 1000 steps), noised with
  diffusers' DDPMScheduler.add_noise, t uniform in [0, 1000). ``--prediction-type epsilon`` (default): min-SNR-gamma
  weighting (gamma 5, weight min(SNR, 5) / SNR) so the many easy low-noise steps do not dominate the gradient.
  ``--prediction-type v_prediction --zero-snr``: betas rescaled to zero terminal SNR (Lin et al. 2023) so that at
  t=999 the model sees pure noise, as it does at inference, instead of a ~7% leak of the latent that it otherwise
  learns to read its layout from; weight (min(SNR, gamma) + 1) / (SNR + 1), i.e. x0-error weight min(SNR, gamma) + 1,
  which keeps the high-noise steps (where layout and relations are decided) at weight ~1 where epsilon's is ~SNR.
  The choice is written to OUT/noise_schedule.json; export.py and generate_torch.py build the scheduler from it.
* Latents: N scenes from ``make_dataset`` are encoded once with the trained VAE and cached to
  ``RUN/latents_<n>_<seed>.pt`` (float16; the posterior MEAN times scaling_factor). The mean, not a sample: the VAE's
  KL weight is 1e-6, so its posterior std is tiny and a sample differs from the mean by far less than the diffusion
  noise added on top; the mean makes the cache deterministic and is what img2img-style encoding in hoa would return.
* Captions: a fresh ``training_caption(scene, rng, mode)`` per scene per step, so every scene is seen with many
  phrasings; 10% are replaced by "" (the pipeline's negative prompt) for classifier-free guidance.
* Text encoding is exactly the inference pipeline's (diffusers StableDiffusionPipeline.encode_prompt, which hoa's
  Rust pipeline mirrors): tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length (80),
  truncation=True), input_ids only (NO attention mask to the T5 encoder: the config has no use_attention_mask),
  last_hidden_state. Padding tokens are therefore seen by the encoder, in training and at inference alike.
* Tokenizer: trained on a caption corpus with the world's ``train_tokenizer`` (both caption modes, so either model can
  be trained with it); with ``--init`` the init folder's tokenizer is reused unchanged, and any caption producing
  <unk> aborts the run (the shipped embedding table has no row for a new word).
* ``--layout-aux W`` (default 0, off): an auxiliary loss on the text encoder only, W times the MSE between a
  linear read-out (128 -> 2, discarded at export) of the tokens "<color> <shape>" that name an object and that
  object's center in the scene. Trained by the diffusion loss alone, the T5 learned bag-of-words encodings: the
  token "red" in "a red circle left of a blue square" and in "a blue square left of a red circle" differed by 4%
  of its norm, so the U-Net's cross-attention (which is blind to token order) could not tell which object the
  relation puts where, and relations stayed at chance. The read-out makes each object's tokens carry where the
  caption places it (what the text implies: left-of objects lie left on average), for the U-Net to attend by.
* ``--t5-directional``: a fresh or ``--init`` T5's layer-0 relative position bias for heads 1 and 2 is reset so they
  look at the 5 tokens after / before each token (``directional_bias``). Without it the layout loss alone stayed
  at the no-information level (MSE 0.198, predicting the mean position) for 1000+ steps, from the shipped T5 and
  from a fresh one alike: with a flat bias a token cannot tell whether "left of" stands before or after it (a
  plateau); with directional heads the same loss falls within ~300 steps.
* ``--t-high P``: a share P of each batch draws t from [750, 1000), where the layout is decided, instead of uniformly.
* ``--binding-aux W`` (default 0, off): W times the cross-entropy of a linear read-out (128 -> vocabulary, discarded
  at export) of each mention's color token against its shape word and of its shape token against its color word.
  The U-Net attends to the T5's tokens one at a time, so a position that attends to "red" learns nothing about
  which shape is red unless the token says so; stage 5's T5 did not (a linear probe from the color token to its
  shape: 30%, below the 46% that knowing only which shapes the caption names gives).
* ``--object-weight W`` (default 0, off): the diffusion loss weighs the latent cells an object covers (from the scene
  graph: its extent + 2 px) 1 + W times, as train_vae's ``--object-weight`` does for pixels. Objects are a minority
  of the latent, so the plain mean spends most of the loss on flat background.
* EMA (decay ``--ema-decay`` with warmup) of U-Net and T5; the EMA is what is exported.

Output: RUN/unet/{unet,text_encoder,tokenizer}/ in diffusers/transformers layout, plus ckpt.pt and log.txt.
"""

import hashlib
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, T5Config, T5EncoderModel

from . import common

SCHED = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
             clip_sample=False)


def noise_schedule(args):
    """The scheduler settings this run trains for (what inference must use), checked against a resumed run's."""
    ns = dict(prediction_type=args.prediction_type, rescale_betas_zero_snr=args.zero_snr,
              timestep_spacing="trailing" if args.zero_snr else "leading")
    if args.zero_snr and args.prediction_type != "v_prediction":
        raise SystemExit("--zero-snr needs --prediction-type v_prediction (epsilon is undefined at zero SNR)")
    path = os.path.join(args.out, "noise_schedule.json")
    if os.path.isfile(path):
        old = json.load(open(path))
        if old != ns:
            raise SystemExit(f"{args.out} was trained with {old}, this command asks for {ns}; use another --out")
    else:
        os.makedirs(args.out, exist_ok=True)
        with open(path, "w") as f:
            json.dump(ns, f, indent=2)
            f.write("\n")
    return ns


def list_shares(text):
    """--list-only: "P" (two and three objects alike) or "P2,P3"."""
    shares = tuple(float(v) for v in text.split(","))
    if len(shares) == 1:
        shares *= 2
    if len(shares) != 2 or not all(0.0 <= v <= 1.0 for v in shares):
        raise ValueError(f"--list-only wants P or P2,P3 with shares in [0, 1], got {text!r}")
    return shares


def unet_config(widths, cross_dim, head_dim):
    return dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=list(widths),
                down_block_types=["CrossAttnDownBlock2D"] * (len(widths) - 1) + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (len(widths) - 1),
                cross_attention_dim=cross_dim, attention_head_dim=head_dim, norm_num_groups=16)


def t5_config(vocab, d_model, layers, heads, d_ff):
    return T5Config(vocab_size=vocab, d_model=d_model, d_kv=d_model // heads, d_ff=d_ff, num_layers=layers,
                    num_decoder_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=False,
                    use_cache=False, tie_word_embeddings=True)


@torch.no_grad()
def cache_latents(args, vae_dir, make_dataset, dev, log):
    mix = "" if args.objects_p is None else "_p" + "-".join(f"{x:g}" for x in args.objects_p)
    path = os.path.join(os.path.dirname(os.path.abspath(args.out)), f"latents_{args.n_scenes}_{args.seed}{mix}.pt")
    with open(os.path.join(vae_dir, "diffusion_pytorch_model.safetensors"), "rb") as f:
        vae_hash = hashlib.sha256(f.read()).hexdigest()
    if os.path.isfile(path):
        d = torch.load(path, map_location="cpu", weights_only=False)
        if d.get("vae_sha256") == vae_hash:
            log.line(f"latent cache {path}: {len(d['scenes'])} scenes")
            return d
        log.line(f"latent cache {path} was made with other VAE weights; re-encoding")
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32).to(dev).eval()
    sf = vae.config.scaling_factor
    lat, scenes, t0, chunk = [], [], time.time(), 2000
    for c, i in enumerate(range(0, args.n_scenes, chunk)):
        n = min(chunk, args.n_scenes - i)
        images, sc = make_dataset(n, seed=10_000 * (args.seed + 1) + c, split="train", objects_p=args.objects_p)
        scenes += sc
        for j in range(0, n, 250):
            x = common.images_to_tensor(images[j:j + 250], dev)
            lat.append((vae.encode(x).latent_dist.mean * sf).half().cpu())
        if c % 10 == 0:
            log.line(f"encoding latents: {i + n}/{args.n_scenes} ({(i + n) / (time.time() - t0):.0f} scenes/s)")
    d = {"latents": torch.cat(lat), "scenes": scenes, "vae_scaling": sf, "vae_sha256": vae_hash}
    log.line(f"encoded {args.n_scenes} scenes in {time.time() - t0:.0f} s; latent std {d['latents'].float().std():.3f}")
    torch.save(d, path + ".tmp")
    os.replace(path + ".tmp", path)
    return d


def build_tokenizer(args, scenes, captions, log):
    tok_dir = os.path.join(args.out, "tokenizer")
    if args.init:
        return AutoTokenizer.from_pretrained(common.subfolder(args.init, "tokenizer"))
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        wt = common.world(args, "tokenizer")
        rng = np.random.default_rng([args.seed, 77])
        texts = [captions.training_caption(s, rng, mode=m) for s in scenes[:20000] for m in ("synthetic", "alt")
                 for _ in range(2)]
        wt.save_tokenizer(wt.train_tokenizer(texts), tok_dir, max_length=80)
        log.line(f"trained tokenizer on {len(texts)} captions -> {tok_dir}")
    return AutoTokenizer.from_pretrained(tok_dir)


def directional_bias(te, strength=4.0, reach=5):
    """Re-initialize the relative position bias of the T5's heads 1 and 2 (layer 0, shared by all layers) so that
    head 1 looks at the `reach` tokens after each token and head 2 at those before it. Trained from a flat bias, the
    T5 stayed in a plateau where each token's output ignored its neighbours, so "red" could not learn whether it
    stood before or after "left of"; with directional heads it learns that in a few hundred steps."""
    from transformers.models.t5.modeling_t5 import T5Attention
    att = te.encoder.block[0].layer[0].SelfAttention
    cfg = te.config
    if cfg.num_heads < 3:
        raise SystemExit("--t5-directional needs a T5 with at least 3 heads")
    rel = torch.arange(-reach, reach + 1)
    bucket = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=cfg.relative_attention_num_buckets,
                                                   max_distance=cfg.relative_attention_max_distance)
    w = att.relative_attention_bias.weight
    with torch.no_grad():
        for head, sign in ((1, 1), (2, -1)):
            w[:, head] = -strength
            for r, b in zip(rel.tolist(), bucket.tolist()):
                if r * sign > 0:
                    w[b, head] = strength


def mention_tokens(ids, scenes, texts, captions, tok):
    """(batch index, color token index, u, v, color id, shape id) of every adjacent "<color> <shape>" token pair
    naming an object of its scene (the shape token follows at index + 1); dropped ("") captions have none."""
    found = []
    for b, (scene, text) in enumerate(zip(scenes, texts)):
        if not text:
            continue
        r = ids[b].tolist()
        for c, s, u, v in captions.mentions(scene):
            ci, si = tok.convert_tokens_to_ids(c), tok.convert_tokens_to_ids(s)
            found += [(b, j, u, v, ci, si) for j in range(len(r) - 1) if r[j] == ci and r[j + 1] == si]
    return found


def mention_vectors(cond, found):
    """The T5 outputs of each mention's color token and shape token, interleaved."""
    return cond[[f[0] for f in found for _ in (0, 1)], [f[1] + k for f in found for k in (0, 1)]]


def layout_loss(head, cond, found):
    """MSE of a linear read-out of both tokens of each mention against its object's center."""
    if not found:
        return cond.sum() * 0
    pred = head(mention_vectors(cond, found))
    uv = torch.tensor([f[2:4] for f in found for _ in (0, 1)], dtype=pred.dtype, device=pred.device)
    return F.mse_loss(pred, uv)


def binding_loss(head, cond, found):
    """Cross-entropy of a linear read-out (over the vocabulary) of each mention's color token against its shape
    word and of its shape token against its color word: each token must carry its whole object."""
    if not found:
        return cond.sum() * 0
    target = torch.tensor([w for f in found for w in (f[5], f[4])], device=cond.device)
    return F.cross_entropy(head(mention_vectors(cond, found)), target)


def object_weights(scenes, extent, size, image_size, weight):
    """[n,1,size,size] latent weights: 1, plus ``weight`` on the latent cells an object covers (its extent + 2 px).
    The pixel-space twin of common.pixel_weights, from the scene graph since the latent has no flat background."""
    cell = image_size / size
    c = (torch.arange(size, dtype=torch.float32) + 0.5) * cell
    w = torch.ones(len(scenes), 1, size, size)
    for k, sc in enumerate(scenes):
        m = torch.zeros(size, size, dtype=torch.bool)
        for o in sc["objects"]:
            r = o["radius"] * extent[o["shape"]] + 2
            m |= ((c[None, :] - o["x"]) ** 2 + (c[:, None] - o["y"]) ** 2) <= r * r
        w[k, 0] += weight * m
    return w


def main():
    p = common.base_parser(__doc__)
    p.add_argument("--vae", required=True, help="trained AutoencoderKL folder (train_vae's --out)")
    p.add_argument("--caption-mode", default="synthetic", choices=["synthetic", "alt"])
    p.add_argument("--max-steps", type=int, default=0,
                   help="stop at this optimizer step (counted over resumes) even if --minutes is left; 0 = no limit. "
                        "Arms of an ablation that run side by side on a shared CPU do the same work this way")
    p.add_argument("--n-scenes", type=int, default=200000)
    p.add_argument("--objects-p", default=None, type=lambda v: [float(x) for x in v.split(",")],
                   help="probabilities of 1,2,3 objects per training scene, e.g. 0.15,0.45,0.4 (default: the world's "
                        "own mix, ~52%% single objects after the held-out filter)")
    p.add_argument("--cfg-drop", type=float, default=0.1)
    p.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR-gamma weighting; 0 disables")
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    p.add_argument("--zero-snr", action="store_true", help="rescale betas to zero terminal SNR (v_prediction only)")
    p.add_argument("--layout-aux", type=float, default=0.0,
                   help="weight of the text encoder's layout loss (object tokens -> object center); 0 = off")
    p.add_argument("--binding-aux", type=float, default=0.0,
                   help="weight of the text encoder's binding loss (color token -> its shape, shape token -> its "
                        "color); 0 = off")
    p.add_argument("--list-only", type=list_shares, default=(0.0, 0.0), metavar="P or P2,P3",
                   help="share of two- and three-object descriptive captions that list the objects without relations "
                        "(one share for both, or one per object count)")
    p.add_argument("--object-weight", type=float, default=0.0,
                   help="extra diffusion-loss weight on the latent cells objects cover (0 = plain mean)")
    p.add_argument("--t5-directional", action="store_true",
                   help="start with T5 heads 1 and 2 looking at the 5 tokens after / before each token (not on resume)")
    p.add_argument("--t-high", type=float, default=0.0,
                   help="share of samples whose t is drawn from the top quarter [750, 1000) (layout is decided "
                        "at high noise); the rest uniform")
    p.add_argument("--unet-widths", default="32,64,64")
    p.add_argument("--head-dim", type=int, default=2, help="U-Net attention_head_dim (heads per block in diffusers)")
    p.add_argument("--t5-dim", type=int, default=128)
    p.add_argument("--t5-layers", type=int, default=3)
    p.add_argument("--t5-heads", type=int, default=4)
    p.add_argument("--t5-ff", type=int, default=256)
    p.set_defaults(lr=5e-4, batch=64)
    args = p.parse_args()
    dev = common.setup(args)
    ns = noise_schedule(args)
    log = common.Logger(args.out, args.log_seconds)
    make_dataset = common.world(args, "dataset").make_dataset
    captions = common.world(args, "captions")
    scene_mod = common.world(args, "scene") if args.object_weight > 0 else None

    data = cache_latents(args, common.subfolder(args.vae, "vae"), make_dataset, dev, log)
    latents, scenes = data["latents"], data["scenes"]
    tok = build_tokenizer(args, scenes, captions, log)
    max_len = tok.model_max_length
    assert max_len == 80, f"tokenizer model_max_length {max_len}, expected 80"
    unk = tok.unk_token_id

    if args.init:
        unet = UNet2DConditionModel.from_pretrained(common.subfolder(args.init, "unet"), torch_dtype=torch.float32)
        te = T5EncoderModel.from_pretrained(common.subfolder(args.init, "text_encoder"), dtype=torch.float32)
    else:
        te = T5EncoderModel(t5_config(len(tok), args.t5_dim, args.t5_layers, args.t5_heads, args.t5_ff))
        unet = UNet2DConditionModel(**unet_config([int(w) for w in args.unet_widths.split(",")], args.t5_dim,
                                                  args.head_dim))
    assert te.config.vocab_size >= len(tok), "tokenizer larger than the text encoder's vocabulary"
    unet.to(dev).train(); te.to(dev).train()
    models = torch.nn.ModuleDict({"unet": unet, "te": te})
    if (args.layout_aux > 0 or args.binding_aux > 0) and not hasattr(captions, "mentions"):
        raise SystemExit(f"--layout-aux / --binding-aux need {args.world_module}.captions.mentions(scene)")
    if args.layout_aux > 0:
        models["layout"] = torch.nn.Linear(te.config.d_model, 2).to(dev)
    if args.binding_aux > 0:
        models["binding"] = torch.nn.Linear(te.config.d_model, len(tok)).to(dev)
    if args.t5_directional and not os.path.isfile(common.ckpt_path(args.out)):  # a resume keeps its trained bias
        directional_bias(te)
    ema = common.EMA(models, args.ema_decay)
    opt = torch.optim.AdamW(models.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, common.lr_lambda(args.warmup))
    noise_sched = DDPMScheduler(**SCHED, prediction_type=ns["prediction_type"],
                                rescale_betas_zero_snr=ns["rescale_betas_zero_snr"])
    ac = noise_sched.alphas_cumprod.to(dev)
    snr = ac / (1 - ac)
    cap_rng = np.random.default_rng([args.seed, 1])
    parts = {"model": models, "ema": ema, "opt": opt, "sched": sched, "cap_rng": common.GeneratorState(cap_rng)}
    try:
        step = common.resume(args.out, parts, log, lr=args.lr)
    except (RuntimeError, ValueError) as e:  # a state dict with or without an aux read-out
        raise SystemExit(f"{args.out}'s checkpoint does not fit this command (--layout-aux or --binding-aux on in "
                         f"one, off in the other?); use another --out. ({str(e).splitlines()[0]})")
    if step is None:
        step = 0
        log.line(f"start: {'init ' + args.init if args.init else 'random init'}; unet "
                 f"{sum(p.numel() for p in unet.parameters())} params, t5 {sum(p.numel() for p in te.parameters())}"
                 f" params, vocab {len(tok)}, {len(scenes)} scenes, batch {args.batch}, mode {args.caption_mode}, "
                 f"{ns['prediction_type']}, layout-aux {args.layout_aux}, t5-directional {args.t5_directional}, "
                 f"t-high {args.t_high}, binding-aux {args.binding_aux}, list-only {args.list_only}, "
                 f"object-weight {args.object_weight}")

    budget = common.Budget(args.minutes, args.ckpt_minutes)
    t_train, n_train, aux_ema = 0.0, 0, {}
    cap_kw = {"list_only": args.list_only} if any(args.list_only) else {}  # other world modules need not know it
    while not budget.done() and not (args.max_steps and step >= args.max_steps):
        t0 = time.time()
        idx = torch.from_numpy(cap_rng.integers(0, len(scenes), args.batch))
        texts = ["" if cap_rng.random() < args.cfg_drop else
                 captions.training_caption(scenes[i], cap_rng, mode=args.caption_mode, **cap_kw) for i in idx.tolist()]
        ids = tok(texts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
        if (ids == unk).any():
            bad = [t for t, r in zip(texts, ids) if (r == unk).any()]
            raise SystemExit(f"caption(s) with words the tokenizer lacks (<unk>): {bad[:5]}")
        x0 = latents[idx].to(dev).float()
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (args.batch,), device=dev)
        if args.t_high > 0:
            high = torch.rand(args.batch, device=dev) < args.t_high
            t = torch.where(high, torch.randint(750, 1000, (args.batch,), device=dev), t)
        xt = noise_sched.add_noise(x0, noise, t)
        cond = te(input_ids=ids.to(dev)).last_hidden_state
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        target = noise if args.prediction_type == "epsilon" else noise_sched.get_velocity(x0, noise, t)
        sq = F.mse_loss(pred.float(), target, reduction="none")
        if args.object_weight > 0:
            w = object_weights([scenes[i] for i in idx.tolist()], scene_mod.EXTENT, x0.shape[-1],
                               scene_mod.IMAGE_SIZE, args.object_weight).to(dev)
            per = (w * sq).sum(dim=(1, 2, 3)) / (sq.shape[1] * w.sum(dim=(1, 2, 3)))
        else:
            per = sq.mean(dim=(1, 2, 3))
        if args.snr_gamma > 0:
            g = torch.clamp(snr[t], max=args.snr_gamma)
            per = per * (g / snr[t] if args.prediction_type == "epsilon" else (g + 1) / (snr[t] + 1))
        loss = per.mean()
        if args.layout_aux > 0 or args.binding_aux > 0:
            found = mention_tokens(ids, [scenes[i] for i in idx.tolist()], texts, captions, tok)
            for name, w, fn in (("layout_mse", args.layout_aux, layout_loss), ("binding_ce", args.binding_aux,
                                                                                 binding_loss)):
                if w > 0:
                    aux = fn(models[name.split("_")[0]], cond, found)
                    loss = loss + w * aux
                    aux_ema[name] = 0.98 * aux_ema.get(name, aux.item()) + 0.02 * aux.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
        opt.step(); sched.step(); ema.update(models)
        step += 1
        t_train += time.time() - t0; n_train += args.batch
        log.step(step, loss.item(), args.batch, " ".join(f"{k}_ema {v:.4f}" for k, v in aux_ema.items()))
        if budget.ckpt_due():
            common.save_parts(args.out, parts, step)
    common.save_parts(args.out, parts, step)
    log.rate_summary(n_train, t_train)
    ema.shadow["unet"].save_pretrained(os.path.join(args.out, "unet"), safe_serialization=True)
    ema.shadow["te"].save_pretrained(os.path.join(args.out, "text_encoder"), safe_serialization=True)
    if args.init:
        tok.save_pretrained(os.path.join(args.out, "tokenizer"))
    log.line(f"saved EMA unet/text_encoder/tokenizer under {args.out} (step {step})")


if __name__ == "__main__":
    main()
