//! The FLOP counter on the Context (`Context::flops`) against PyTorch's
//! `torch.utils.flop_counter.FlopCounterMode`: the same count computed here from a U-Net config
//! by FlopCounterMode's formulas (2 per multiply-add of mm / addmm / bmm, convolution and
//! scaled_dot_product_attention; norms and elementwise ops 0), checked against PyTorch's own
//! counts (tests/fixtures/unet_sd15/flops.json, written by tools/fixtures/flops.py through
//! FlopCounterMode) and then against what hoa counts running a small U-Net.
//! One GPU test only: the counter belongs to the process's one shared Context.

mod common;
#[path = "common/fixture.rs"]
mod fixture;
use common::*;
use fixture::*;
use hoa::bench::{SD15_UNET_TORCH_FLOPS, SD15_UNET_TORCH_FLOPS_QUICK};
use hoa::config::{PerBlock, UNet2DConditionModelConfig};
use hoa::models::unet_2d_condition::UNet2DConditionModel;
use hoa::weights::{Loader, Weights};
use hoa::{DType, Tensor};

fn one(p: &PerBlock<usize>) -> usize {
    match p {
        PerBlock::One(v) => *v,
        PerBlock::Each(v) => {
            assert!(v.windows(2).all(|w| w[0] == w[1]), "per-block values {v:?}");
            v[0]
        }
    }
}

/// FlopCounterMode's total for one `UNet2DConditionModel` forward (SD 1.x block types) on a
/// latent [b, in, h, w] with `seq` context tokens, from the config alone.
fn unet_flops(cfg: &UNet2DConditionModelConfig, b: u64, h: u64, w: u64, seq: u64) -> u64 {
    let boc: Vec<u64> = cfg.block_out_channels.iter().map(|&c| c as u64).collect();
    let (lpb, tl) = (
        one(&cfg.layers_per_block) as u64,
        one(&cfg.transformer_layers_per_block) as u64,
    );
    let cross = one(&cfg.cross_attention_dim) as u64;
    let temb = cfg.time_embedding_dim.map_or(4 * boc[0], |d| d as u64);
    // convolution: 2 * N * Cout * Cin * kh * kw * Hout * Wout; addmm / mm: 2 * rows * in * out.
    let conv = |ci: u64, co: u64, k: u64, ho: u64, wo: u64| 2 * b * co * ci * k * k * ho * wo;
    let lin = |rows: u64, i: u64, o: u64| 2 * rows * i * o;
    let resnet = |ci: u64, co: u64, h: u64, w: u64| {
        let short = if ci != co { conv(ci, co, 1, h, w) } else { 0 };
        conv(ci, co, 3, h, w) + lin(b, temb, co) + conv(co, co, 3, h, w) + short
    };
    // Transformer2DModel: proj_in / proj_out (1x1 conv or linear, the same count), then per
    // layer self attention (q, k, v, out; sdpa 2 * 2 * B * H * L * L * D = 4 * B * L * L * C),
    // cross attention (q, out on pixels; k, v on tokens) and the GEGLU feed-forward
    // (C -> 8C, 4C -> C).
    let transformer = |c: u64, h: u64, w: u64| {
        let l = b * h * w;
        let attn1 = 4 * lin(l, c, c) + 4 * l * h * w * c;
        let attn2 = 2 * lin(l, c, c) + 2 * lin(b * seq, cross, c) + 4 * l * seq * c;
        let ff = lin(l, c, 8 * c) + lin(l, 4 * c, c);
        2 * lin(l, c, c) + tl * (attn1 + attn2 + ff)
    };
    let cross_block = |t: &str| t.starts_with("CrossAttn");
    let (kin, kout) = (cfg.conv_in_kernel as u64, cfg.conv_out_kernel as u64);
    let mut f = lin(b, boc[0], temb) + lin(b, temb, temb);
    f += conv(cfg.in_channels as u64, boc[0], kin, h, w);
    let (mut h, mut w, n) = (h, w, boc.len());
    for (i, t) in cfg.down_block_types.iter().enumerate() {
        let (ci, co) = (boc[i.saturating_sub(1)], boc[i]);
        for j in 0..lpb {
            f += resnet(if j == 0 { ci } else { co }, co, h, w);
            if cross_block(t) {
                f += transformer(co, h, w);
            }
        }
        if i + 1 < n {
            // Downsample2D: 3x3, stride 2, padding 1.
            (h, w) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
            f += conv(co, co, 3, h, w);
        }
    }
    let c = boc[n - 1];
    f += 2 * resnet(c, c, h, w) + transformer(c, h, w);
    let rev: Vec<u64> = boc.iter().rev().copied().collect();
    for (i, t) in cfg.up_block_types.iter().enumerate() {
        let (prev, co, ci) = (rev[i.saturating_sub(1)], rev[i], rev[(i + 1).min(n - 1)]);
        for j in 0..=lpb {
            let skip = if j == lpb { ci } else { co };
            f += resnet(if j == 0 { prev } else { co } + skip, co, h, w);
            if cross_block(t) {
                f += transformer(co, h, w);
            }
        }
        if i + 1 < n {
            // Upsample2D: nearest x2, then a 3x3 conv.
            (h, w) = (2 * h, 2 * w);
            f += conv(co, co, 3, h, w);
        }
    }
    f + conv(boc[0], cfg.out_channels as u64, kout, h, w)
}

/// PyTorch's FlopCounterMode totals (tools/fixtures/flops.py): `small` for the unet_sd15
/// fixture's config, `sd15` for SD-1.5's U-Net.
fn torch_counts() -> serde_json::Value {
    let p = dir("unet_sd15").join("flops.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// One count of flops.json: (batch, height, width, tokens, flops).
fn case(v: &serde_json::Value) -> (u64, u64, u64, u64, u64) {
    let f = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("flops.json: `{k}` in {v}"))
    };
    (f("batch"), f("height"), f("width"), f("tokens"), f("flops"))
}

/// The formulas above give exactly the counts PyTorch's FlopCounterMode wrote for SD-1.5's
/// U-Net at [1, 4, 32, 32] and [2, 4, 64, 64].
#[test]
fn formulas_equal_flop_counter_modes_sd15_counts() {
    let sd15 = UNet2DConditionModelConfig {
        cross_attention_dim: PerBlock::One(768),
        ..Default::default()
    };
    let counts = torch_counts();
    let cases = counts["sd15"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for c in cases {
        let (b, h, w, seq, want) = case(c);
        let got = unet_flops(&sd15, b, h, w, seq);
        assert_eq!(
            got, want,
            "[{b}, 4, {h}, {w}]: formulas {got}, FlopCounterMode {want}"
        );
    }
}

/// The formulas above give PyTorch's own figures for the SD-1.5 U-Net, to the digits stated.
#[test]
fn formulas_give_pytorchs_sd15_figures() {
    let sd15 = UNet2DConditionModelConfig {
        cross_attention_dim: PerBlock::One(768),
        ..Default::default()
    };
    for (b, s, want) in [
        (1, 32, SD15_UNET_TORCH_FLOPS_QUICK),
        (2, 64, SD15_UNET_TORCH_FLOPS),
    ] {
        let got = unet_flops(&sd15, b, s, s, 77) as f64;
        // Stated to 4 significant digits (x.xxx TFLOP): half a unit of the last.
        assert!(
            (got - want).abs() <= 0.0005e12,
            "[{b}, 4, {s}, {s}]: formulas {got:.4e}, PyTorch {want:.4e}"
        );
    }
}

/// hoa's kernels count one forward of a small SD-1.5-style U-Net (the unet_sd15 fixture's
/// config; non-square latent, batch 2, 7 tokens) exactly as FlopCounterMode counted it in
/// PyTorch, and as the formulas above give.
#[test]
fn unet_forward_counts_flops_as_flop_counter_mode() {
    let Some(c) = ctx() else { return };
    let cfg = UNet2DConditionModelConfig::from_json(&config("unet_sd15")).unwrap();
    let (b, h, w, seq, torch) = case(&torch_counts()["small"]);
    let (b, h, w, seq) = (b as usize, h as usize, w as usize, seq as usize);
    let cross = one(&cfg.cross_attention_dim);
    let empty = Weights::from_files(vec![]).unwrap();
    let unet = UNet2DConditionModel::load(&Loader::random(c, &empty, DType::F32, 3), &cfg).unwrap();
    let mut r = rng(5);
    let sample = Tensor::from_f32(
        c,
        &randn(&mut r, b * 4 * h * w, 1.0),
        &[b, 4, h, w],
        DType::F32,
    )
    .unwrap();
    let enc = Tensor::from_f32(
        c,
        &randn(&mut r, b * seq * cross, 1.0),
        &[b, seq, cross],
        DType::F32,
    )
    .unwrap();
    c.reset_flops();
    unet.forward(c, &sample, &[999.0], &enc).unwrap();
    let got = c.flops();
    c.sync().unwrap();
    let want = unet_flops(&cfg, b as u64, h as u64, w as u64, seq as u64);
    assert_eq!(
        got, torch,
        "hoa counted {got} FLOPs, PyTorch's FlopCounterMode {torch} (tools/fixtures/flops.py)"
    );
    assert_eq!(
        got, want,
        "hoa counted {got} FLOPs, FlopCounterMode's formulas give {want}"
    );
    c.reset_flops();
    assert_eq!(c.flops(), 0);
}
