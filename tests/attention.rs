//! Attention kernel vs the f64 CPU reference: random shapes (odd lengths, Lq != Lk, head dims
//! that are not multiples of 4), causal, both bias layouts, custom scale, f32 and f16; one
//! full-size 4096-token run checked on sampled rows; bad shapes and device limits as errors.

mod common;
use common::*;
use hoa::kernels::attention::{
    self, attention, attention_naive, reference, AttentionOptions, Tiling,
};
use hoa::{DType, Error, Tensor};
use rand::Rng;

struct Case {
    batch: usize,
    heads: usize,
    d: usize,
    dv: usize,
    lq: usize,
    lk: usize,
    causal: bool,
    /// None, Some(false) = [H, Lq, Lk], Some(true) = [B, H, Lq, Lk]
    bias: Option<bool>,
    scale: Option<f32>,
}

/// Which kernel a case runs: `attention` (routed), or one path explicitly.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Routed,
    Flash,
    Sg(u32),
    Naive,
}

/// The paths a case can run on this adapter: routed and flash always, the subgroup path
/// (two workgroup sizes) where it applies.
fn paths(c: &hoa::Context, cs: &Case) -> Vec<Path> {
    let mut v = vec![Path::Routed, Path::Flash];
    if attention::subgroups_available(c) && cs.d % 4 == 0 && cs.dv % 4 == 0 {
        v.extend([Path::Sg(16), Path::Sg(8)]);
    }
    v
}

fn run_case(c: &hoa::Context, dt: DType, cs: &Case, r: &mut impl Rng, path: Path) {
    let n = reference::Dims {
        batch: cs.batch,
        lq: cs.lq,
        lk: cs.lk,
        heads: cs.heads,
        d: cs.d,
        dv: cs.dv,
    };
    let (hd, hdv) = (cs.heads * cs.d, cs.heads * cs.dv);
    let q = round_to(dt, &randn(r, cs.batch * cs.lq * hd, 2.0));
    let k = round_to(dt, &randn(r, cs.batch * cs.lk * hd, 2.0));
    let v = round_to(dt, &randn(r, cs.batch * cs.lk * hdv, 1.0));
    let tq = Tensor::from_f32(c, &q, &[cs.batch, cs.lq, hd], dt).unwrap();
    let tk = Tensor::from_f32(c, &k, &[cs.batch, cs.lk, hd], dt).unwrap();
    let tv = Tensor::from_f32(c, &v, &[cs.batch, cs.lk, hdv], dt).unwrap();
    let bias_shape: Vec<usize> = match cs.bias {
        Some(true) => vec![cs.batch, cs.heads, cs.lq, cs.lk],
        _ => vec![cs.heads, cs.lq, cs.lk],
    };
    let bias = cs.bias.map(|_| {
        let n: usize = bias_shape.iter().product();
        round_to(dt, &randn(r, n, 3.0))
    });
    let tb = bias
        .as_ref()
        .map(|b| Tensor::from_f32(c, b, &bias_shape, dt).unwrap());
    let opts = AttentionOptions {
        num_heads: cs.heads,
        scale: cs.scale,
        causal: cs.causal,
        bias: tb.as_ref(),
    };
    let out = match path {
        Path::Naive => attention_naive(c, &tq, &tk, &tv, &opts),
        Path::Routed => attention(c, &tq, &tk, &tv, &opts),
        Path::Flash => attention::attention_tiled(c, &tq, &tk, &tv, &opts, Tiling::default()),
        Path::Sg(wg) => attention::attention_sg_tiled(c, &tq, &tk, &tv, &opts, Tiling { wg }),
    }
    .unwrap();
    assert_eq!(out.shape(), &[cs.batch, cs.lq, hdv]);
    let got = out.to_vec(c).unwrap();
    let scale = cs.scale.map_or(1.0 / (cs.d as f64).sqrt(), |s| s as f64);
    let want = reference::attention(
        &q,
        &k,
        &v,
        &n,
        scale,
        cs.causal,
        bias.as_deref().map(|b| (b, cs.bias == Some(true))),
    );
    all_close(
        &format!(
            "{:?} B{} H{} D{} Dv{} Lq{} Lk{} causal={} bias={:?} scale={:?} {dt:?}",
            path, cs.batch, cs.heads, cs.d, cs.dv, cs.lq, cs.lk, cs.causal, cs.bias, cs.scale
        ),
        &got,
        &want,
        &tol_for(dt, true),
    );
}

#[test]
fn random_shapes_match_reference() {
    let Some(c) = ctx() else { return };
    let mut r = rng(11);
    let lens = [1usize, 7, 33, 129];
    for dt in dtypes(c) {
        for it in 0..12 {
            let heads = [1, 3, 8][r.random_range(0..3)];
            let d = [8, 40, 64, 80][r.random_range(0..4)];
            let lq = lens[r.random_range(0..4)];
            let lk = if it % 3 == 0 {
                lq
            } else {
                lens[r.random_range(0..4)]
            };
            let cs = Case {
                batch: r.random_range(1..=2),
                heads,
                d,
                dv: d,
                lq,
                lk,
                causal: false,
                bias: None,
                scale: None,
            };
            for path in paths(c, &cs) {
                run_case(c, dt, &cs, &mut r, path);
            }
        }
    }
}

#[test]
fn causal_bias_scale_and_odd_head_dims() {
    let Some(c) = ctx() else { return };
    let mut r = rng(12);
    let cases = [
        // CLIP text encoder: causal self-attention
        (2, 3, 64, 64, 33, 33, true, None, None),
        (1, 8, 8, 8, 129, 129, true, None, None),
        (1, 1, 40, 40, 7, 7, true, None, None),
        // T5: scale 1, relative position bias shared by the batch, or per batch
        (2, 3, 64, 64, 33, 7, false, Some(false), Some(1.0)),
        (2, 8, 8, 8, 7, 129, false, Some(true), Some(1.0)),
        (1, 3, 40, 40, 33, 33, true, Some(true), Some(0.3)),
        // head dims that are not multiples of 4, Dv != D, the largest head dim
        (2, 3, 6, 10, 33, 7, false, None, None),
        (1, 1, 1, 3, 7, 129, false, None, Some(2.0)),
        (1, 2, 160, 160, 33, 33, false, None, None),
        (1, 1, 13, 160, 33, 33, true, Some(false), None),
    ];
    for dt in dtypes(c) {
        for &(batch, heads, d, dv, lq, lk, causal, bias, scale) in &cases {
            let cs = Case {
                batch,
                heads,
                d,
                dv,
                lq,
                lk,
                causal,
                bias,
                scale,
            };
            for path in paths(c, &cs) {
                run_case(c, dt, &cs, &mut r, path);
            }
        }
    }
}

/// The subgroup path refuses what it cannot run (a head dim not a multiple of 4, or an adapter
/// without subgroups) with an error; `attention` routes those calls to attention_flash.
#[test]
fn subgroup_path_refuses_unaligned_head_dims() {
    let Some(c) = ctx() else { return };
    let q = Tensor::full(c, &[1, 7, 2 * 6], 0.5, DType::F32).unwrap();
    let o = AttentionOptions::new(2);
    let e = attention::attention_sg_tiled(c, &q, &q, &q, &o, Tiling::default()).unwrap_err();
    assert!(e.to_string().contains("multiples of 4"), "{e}");
    let q = Tensor::full(c, &[1, 7, 2 * 8], 0.5, DType::F32).unwrap();
    let r = attention::attention_sg_tiled(c, &q, &q, &q, &o, Tiling::default());
    assert_eq!(r.is_ok(), attention::subgroups_available(c));
    c.sync().unwrap();
}

#[test]
fn naive_baseline_matches_reference() {
    let Some(c) = ctx() else { return };
    let mut r = rng(13);
    for dt in dtypes(c) {
        for (heads, d, lq, lk, causal, bias) in [
            (3, 40, 33, 7, false, Some(true)),
            (2, 8, 129, 129, true, None),
            (1, 6, 7, 33, false, Some(false)),
        ] {
            let cs = Case {
                batch: 2,
                heads,
                d,
                dv: d,
                lq,
                lk,
                causal,
                bias,
                scale: None,
            };
            run_case(c, dt, &cs, &mut r, Path::Naive);
        }
    }
}

/// The headline size: 4096 tokens, 8 heads, D=64, one batch; the full kernel runs and
/// 16 rows spread over heads and positions are checked against the f64 reference.
#[test]
fn full_size_4096_tokens_sampled_rows() {
    let Some(c) = ctx() else { return };
    let mut r = rng(14);
    let n = reference::Dims {
        batch: 1,
        lq: 4096,
        lk: 4096,
        heads: 8,
        d: 64,
        dv: 64,
    };
    let w = n.heads * n.d;
    let q = randn(&mut r, n.lq * w, 2.0);
    let k = randn(&mut r, n.lk * w, 2.0);
    let v = randn(&mut r, n.lk * w, 1.0);
    let dt = DType::F32;
    let tq = Tensor::from_f32(c, &q, &[1, n.lq, w], dt).unwrap();
    let tk = Tensor::from_f32(c, &k, &[1, n.lk, w], dt).unwrap();
    let tv = Tensor::from_f32(c, &v, &[1, n.lk, w], dt).unwrap();
    c.sync().unwrap();
    let t0 = std::time::Instant::now();
    let out = attention(c, &tq, &tk, &tv, &AttentionOptions::new(n.heads)).unwrap();
    let got = out.to_vec(c).unwrap();
    eprintln!("attention 1x4096x4096 h8 d64 f32: {:?}", t0.elapsed());
    let scale = 1.0 / (n.d as f64).sqrt();
    for s in 0..16usize {
        let h = s % n.heads;
        let i = (s * 4093 / 15).min(n.lq - 1); // 0 .. 4095, spread
        let want: Vec<f32> = reference::row(&q, &k, &v, &n, scale, false, None, (0, h, i))
            .into_iter()
            .map(|x| x as f32)
            .collect();
        let o = i * w + h * n.d;
        all_close(
            &format!("4096 tokens row {i} head {h}"),
            &got[o..o + n.d],
            &want,
            &F32_REDUCE,
        );
    }
}

fn t(c: &hoa::Context, shape: &[usize]) -> Tensor {
    Tensor::full(c, shape, 0.5, DType::F32).unwrap()
}

#[test]
fn bad_shapes_are_errors_naming_them() {
    let Some(c) = ctx() else { return };
    let o = AttentionOptions::new(2);
    let msg = |e: Error| e.to_string();
    // k width differs from q width
    let e = msg(attention(
        c,
        &t(c, &[1, 7, 16]),
        &t(c, &[1, 5, 12]),
        &t(c, &[1, 5, 16]),
        &o,
    )
    .unwrap_err());
    assert!(e.contains("[1, 5, 12]") && e.contains("[1, 7, 16]"), "{e}");
    // heads do not divide the width
    let o3 = AttentionOptions::new(3);
    let e = msg(attention(
        c,
        &t(c, &[1, 7, 16]),
        &t(c, &[1, 5, 16]),
        &t(c, &[1, 5, 16]),
        &o3,
    )
    .unwrap_err());
    assert!(e.contains("num_heads 3") && e.contains("[1, 7, 16]"), "{e}");
    // k and v lengths differ
    let e = msg(attention(
        c,
        &t(c, &[1, 7, 16]),
        &t(c, &[1, 5, 16]),
        &t(c, &[1, 6, 16]),
        &o,
    )
    .unwrap_err());
    assert!(e.contains("[1, 5, 16]") && e.contains("[1, 6, 16]"), "{e}");
    // batch differs
    let e = msg(attention(
        c,
        &t(c, &[2, 7, 16]),
        &t(c, &[1, 5, 16]),
        &t(c, &[1, 5, 16]),
        &o,
    )
    .unwrap_err());
    assert!(e.contains("[2, 7, 16]"), "{e}");
    // rank
    let e = msg(attention(
        c,
        &t(c, &[7, 16]),
        &t(c, &[1, 5, 16]),
        &t(c, &[1, 5, 16]),
        &o,
    )
    .unwrap_err());
    assert!(e.contains("[7, 16]"), "{e}");
    // bias of the wrong shape
    let bias = t(c, &[2, 7, 6]);
    let ob = AttentionOptions {
        bias: Some(&bias),
        ..o
    };
    let e = msg(attention(
        c,
        &t(c, &[1, 7, 16]),
        &t(c, &[1, 5, 16]),
        &t(c, &[1, 5, 16]),
        &ob,
    )
    .unwrap_err());
    assert!(e.contains("[2, 7, 6]") && e.contains("[2, 7, 5]"), "{e}");
    // causal with Lq != Lk
    let oc = AttentionOptions { causal: true, ..o };
    let e = msg(attention(
        c,
        &t(c, &[1, 7, 16]),
        &t(c, &[1, 5, 16]),
        &t(c, &[1, 5, 16]),
        &oc,
    )
    .unwrap_err());
    assert!(
        e.contains("causal") && e.contains("[1, 7, 16]") && e.contains("[1, 5, 16]"),
        "{e}"
    );
    c.sync().unwrap();
}

#[test]
fn device_limits_are_errors_not_crashes() {
    let Some(c) = ctx() else { return };
    // The output [1, Lq, 160] needs more than one storage binding while q, k, v fit easily.
    let max = c.max_binding_bytes();
    let lq = (max / (160 * 4) + 1) as usize;
    let q = t(c, &[1, lq, 1]);
    let kv = (t(c, &[1, 1, 1]), t(c, &[1, 1, 160]));
    let e = attention(c, &q, &kv.0, &kv.1, &AttentionOptions::new(1)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Limit {
                limit: "max_storage_buffer_binding_size",
                ..
            }
        ),
        "{e}"
    );
    drop(q);
    // A grid with more workgroups along x than the device allows (4 rows per workgroup).
    let max_wg = c.limits.max_compute_workgroups_per_dimension as usize;
    let q = t(c, &[1, 4 * (max_wg + 1), 1]);
    let e = attention::attention_tiled(
        c,
        &q,
        &kv.0,
        &kv.0,
        &AttentionOptions::new(1),
        Tiling { wg: 1 },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Limit {
                limit: "max_compute_workgroups_per_dimension",
                ..
            }
        ),
        "{e}"
    );
    // Head dims beyond the kernel's registers.
    let q = t(c, &[1, 3, 2 * 200]);
    let e = attention(c, &q, &q, &q, &AttentionOptions::new(2)).unwrap_err();
    assert!(e.to_string().contains("head dim"), "{e}");
    c.sync().unwrap();
}
