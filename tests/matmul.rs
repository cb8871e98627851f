//! Matmul kernels vs the f64 CPU reference: odd sizes (1, 7, 33, 129 in each of M, N, K), every
//! transpose combination, batches and broadcast weights, fused bias / activation / alpha, in
//! f32 and f16; bad shapes are errors that name them.

mod common;
use common::*;
use hoa::kernels::matmul::{self, reference, MatmulOptions, SgTile, Tile};
use hoa::kernels::Activation;
use hoa::{DType, Tensor};

const ACTS: [Activation; 6] = [
    Activation::None,
    Activation::Gelu,
    Activation::GeluTanh,
    Activation::Silu,
    Activation::QuickGelu,
    Activation::Relu,
];

/// One randomized case: batch (None = unbatched A), whether B is batched, dims, options.
#[derive(Clone, Copy, Debug)]
struct Case {
    batch: Option<usize>,
    b_batched: bool,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    bias: bool,
    act: Activation,
    alpha: f32,
}

/// Which kernel runs a case: `matmul`'s own routing, or one path with an explicit tile.
#[derive(Clone, Copy, Debug)]
enum Path {
    Auto,
    Tiled(Tile),
    Sg(SgTile),
}

fn run(c: &hoa::Context, dt: DType, cs: Case, seed: u64, tile: Path) {
    let mut r = rng(seed);
    let bt = cs.batch.unwrap_or(1);
    let a_batched = cs.batch.is_some();
    let b_batched = cs.b_batched && cs.batch.is_some();
    let na = if a_batched { bt } else { 1 } * cs.m * cs.k;
    let nb = if b_batched { bt } else { 1 } * cs.k * cs.n;
    let a = round_to(dt, &randn(&mut r, na, 1.0));
    let b = round_to(dt, &randn(&mut r, nb, 1.0));
    let bias = round_to(dt, &randn(&mut r, cs.n, 1.0));
    let (ar, ac) = if cs.trans_a {
        (cs.k, cs.m)
    } else {
        (cs.m, cs.k)
    };
    let (br, bc) = if cs.trans_b {
        (cs.n, cs.k)
    } else {
        (cs.k, cs.n)
    };
    let sa: Vec<usize> = if a_batched {
        vec![bt, ar, ac]
    } else {
        vec![ar, ac]
    };
    let sb: Vec<usize> = if b_batched {
        vec![bt, br, bc]
    } else {
        vec![br, bc]
    };
    let ta = Tensor::from_f32(c, &a, &sa, dt).unwrap();
    let tb = Tensor::from_f32(c, &b, &sb, dt).unwrap();
    let tbias = Tensor::from_f32(c, &bias, &[cs.n], dt).unwrap();
    let o = MatmulOptions {
        trans_a: cs.trans_a,
        trans_b: cs.trans_b,
        bias: cs.bias.then_some(&tbias),
        act: cs.act,
        alpha: cs.alpha,
    };
    let out = match tile {
        Path::Tiled(t) => matmul::matmul_with(c, &ta, &tb, &o, t),
        Path::Sg(t) => matmul::matmul_sg_with(c, &ta, &tb, &o, t),
        Path::Auto => matmul::matmul(c, &ta, &tb, &o),
    }
    .unwrap_or_else(|e| panic!("{cs:?} {dt:?} {tile:?}: {e}"));
    let want_shape: Vec<usize> = if a_batched {
        vec![bt, cs.m, cs.n]
    } else {
        vec![cs.m, cs.n]
    };
    assert_eq!(out.shape(), &want_shape[..], "{cs:?}");
    let want = reference::matmul(
        &a,
        &b,
        cs.bias.then_some(&bias[..]),
        bt,
        cs.m,
        cs.n,
        cs.k,
        cs.trans_a,
        cs.trans_b,
        a_batched,
        b_batched,
        cs.alpha,
        cs.act,
    );
    all_close(
        &format!("{cs:?} {dt:?} tile {tile:?}"),
        &out.to_vec(c).unwrap(),
        &want,
        &tol_for(dt, true),
    );
}

#[test]
fn odd_sizes_every_transpose() {
    let Some(c) = ctx() else { return };
    let sizes = [1usize, 7, 33, 129];
    let mut i = 0u64;
    for dt in dtypes(c) {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            // Each size appears in each of M, N and K; the rest cycle so the test stays small.
            for (si, &s) in sizes.iter().enumerate() {
                let o1 = sizes[(si + 1) % 4].min(33);
                let o2 = sizes[(si + 2) % 4].min(33);
                for (m, n, k) in [(s, o1, o2), (o2, s, o1), (o1, o2, s)] {
                    i += 1;
                    let cs = Case {
                        batch: None,
                        b_batched: false,
                        m,
                        n,
                        k,
                        trans_a: ta,
                        trans_b: tb,
                        bias: false,
                        act: Activation::None,
                        alpha: 1.0,
                    };
                    run(c, dt, cs, i, Path::Auto);
                }
            }
        }
    }
}

#[test]
fn batched_and_broadcast_weight() {
    let Some(c) = ctx() else { return };
    for dt in dtypes(c) {
        for (i, (tb, b_batched)) in [(false, true), (true, true), (false, false), (true, false)]
            .into_iter()
            .enumerate()
        {
            let cs = Case {
                batch: Some(3),
                b_batched,
                m: 37,
                n: 9 + 8 * i,
                k: 21,
                trans_a: i == 1,
                trans_b: tb,
                bias: i % 2 == 0,
                act: Activation::None,
                alpha: 1.0,
            };
            run(c, dt, cs, 100 + i as u64, Path::Auto);
        }
    }
}

#[test]
fn fused_bias_activation_alpha() {
    let Some(c) = ctx() else { return };
    for dt in dtypes(c) {
        for (i, act) in ACTS.into_iter().enumerate() {
            let cs = Case {
                batch: None,
                b_batched: false,
                m: 19,
                n: 33,
                k: 40,
                trans_a: false,
                trans_b: i % 2 == 1,
                bias: true,
                act,
                alpha: 0.5 + 0.25 * i as f32,
            };
            run(c, dt, cs, 200 + i as u64, Path::Auto);
        }
    }
}

/// Every register tile the shader supports computes the same thing (edge tiles included).
#[test]
fn other_tiles() {
    let Some(c) = ctx() else { return };
    for (i, &(tm, tn)) in [(4u32, 1u32), (12, 2), (32, 3)].iter().enumerate() {
        let cs = Case {
            batch: Some(2),
            b_batched: false,
            m: 45,
            n: 70,
            k: 13,
            trans_a: false,
            trans_b: true,
            bias: true,
            act: Activation::Silu,
            alpha: 1.0,
        };
        run(
            c,
            DType::F32,
            cs,
            300 + i as u64,
            Path::Tiled(Tile { wg: 16, tm, tn }),
        );
    }
}

/// Whether this adapter runs the subgroup fast path (lavapipe does; SwiftShader does not).
fn has_sg(c: &hoa::Context) -> bool {
    c.features.contains(wgpu::Features::SUBGROUP) && c.info.subgroup_min_size >= 8
}

/// Aligned shapes (K, N multiples of 4, A untransposed) are routed to `matmul_sg`; cover its
/// edges: M not a multiple of the row tile, N not a multiple of the column tile, K = 4,
/// both B layouts, batches, a broadcast weight, bias + activation + alpha, in every dtype.
#[test]
fn aligned_fast_path() {
    let Some(c) = ctx() else { return };
    let mut i = 0u64;
    for dt in dtypes(c) {
        for tb in [false, true] {
            for (batch, b_batched, m, n, k, bias, act, alpha) in [
                (None, false, 1, 4, 4, false, Activation::None, 1.0),
                (None, false, 13, 68, 36, true, Activation::Gelu, 0.5),
                (None, false, 70, 132, 8, true, Activation::Silu, 1.0),
                (Some(3), true, 9, 20, 44, false, Activation::None, 1.0),
                (Some(2), false, 17, 12, 64, true, Activation::Relu, 2.0),
                (None, false, 33, 260, 132, false, Activation::QuickGelu, 1.0),
            ] {
                i += 1;
                let cs = Case {
                    batch,
                    b_batched,
                    m,
                    n,
                    k,
                    trans_a: false,
                    trans_b: tb,
                    bias,
                    act,
                    alpha,
                };
                run(c, dt, cs, 600 + i, Path::Auto);
                if has_sg(c) {
                    run(c, dt, cs, 600 + i, Path::Sg(matmul::SG_TILE));
                }
            }
        }
    }
}

/// Every row tile of `matmul_sg` (and a few workgroup sizes) computes the same thing.
#[test]
fn other_sg_tiles() {
    let Some(c) = ctx() else { return };
    if !has_sg(c) {
        return;
    }
    for (i, &(wg, tr)) in [(8u32, 1u32), (16, 11), (32, 27)].iter().enumerate() {
        for tb in [false, true] {
            let cs = Case {
                batch: Some(2),
                b_batched: !tb,
                m: 29,
                n: 76,
                k: 24,
                trans_a: false,
                trans_b: tb,
                bias: true,
                act: Activation::GeluTanh,
                alpha: 1.0,
            };
            run(
                c,
                DType::F32,
                cs,
                700 + i as u64,
                Path::Sg(SgTile { wg, tr }),
            );
        }
    }
    // Shapes it cannot take are errors, not wrong answers.
    let t = |s: &[usize]| Tensor::full(c, s, 1.0, DType::F32).unwrap();
    let d = MatmulOptions::default();
    for (a, b) in [([3usize, 6usize], [6usize, 8usize]), ([3, 8], [8, 6])] {
        let e = matmul::matmul_sg_with(c, &t(&a), &t(&b), &d, matmul::SG_TILE);
        assert!(e.is_err(), "{a:?} x {b:?}");
    }
}

#[test]
fn naive_matches_reference() {
    let Some(c) = ctx() else { return };
    let mut r = rng(400);
    let (m, n, k) = (33, 7, 129);
    let a = randn(&mut r, m * k, 1.0);
    let b = randn(&mut r, k * n, 1.0);
    let ta = Tensor::from_f32(c, &a, &[m, k], DType::F32).unwrap();
    let tb = Tensor::from_f32(c, &b, &[k, n], DType::F32).unwrap();
    let got = matmul::matmul_naive(c, &ta, &tb, &MatmulOptions::default())
        .unwrap()
        .to_vec(c)
        .unwrap();
    let want = reference::matmul(
        &a,
        &b,
        None,
        1,
        m,
        n,
        k,
        false,
        false,
        false,
        false,
        1.0,
        Activation::None,
    );
    all_close("naive", &got, &want, &F32_REDUCE);
}

#[test]
fn linear_is_torch_linear() {
    let Some(c) = ctx() else { return };
    let mut r = rng(500);
    for dt in dtypes(c) {
        // x [2, 3, 5, in] (leading dims flattened), weight [out, in].
        let (lead, inp, out) = ([2usize, 3, 5], 24usize, 17usize);
        let rows: usize = lead.iter().product();
        let x = round_to(dt, &randn(&mut r, rows * inp, 1.0));
        let w = round_to(dt, &randn(&mut r, out * inp, 1.0));
        let bias = round_to(dt, &randn(&mut r, out, 1.0));
        let tx = Tensor::from_f32(c, &x, &[2, 3, 5, inp], dt).unwrap();
        let tw = Tensor::from_f32(c, &w, &[out, inp], dt).unwrap();
        let tbias = Tensor::from_f32(c, &bias, &[out], dt).unwrap();
        let y = matmul::linear(c, &tx, &tw, Some(&tbias), Activation::Gelu).unwrap();
        assert_eq!(y.shape(), &[2, 3, 5, out]);
        let want = reference::matmul(
            &x,
            &w,
            Some(&bias),
            1,
            rows,
            out,
            inp,
            false,
            true,
            false,
            false,
            1.0,
            Activation::Gelu,
        );
        all_close(
            &format!("linear {dt:?}"),
            &y.to_vec(c).unwrap(),
            &want,
            &tol_for(dt, true),
        );
    }
}

#[test]
fn bad_shapes_are_errors_naming_them() {
    let Some(c) = ctx() else { return };
    let t = |s: &[usize]| Tensor::full(c, s, 1.0, DType::F32).unwrap();
    let d = MatmulOptions::default();
    // K mismatch.
    let e = matmul::matmul(c, &t(&[3, 4]), &t(&[5, 6]), &d)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[3, 4]") && e.contains("[5, 6]"), "{e}");
    // Batch mismatch.
    let e = matmul::matmul(c, &t(&[2, 3, 4]), &t(&[3, 4, 6]), &d)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[2, 3, 4]") && e.contains("[3, 4, 6]"), "{e}");
    // Bias of the wrong length.
    let bias = t(&[5]);
    let o = MatmulOptions {
        bias: Some(&bias),
        ..Default::default()
    };
    let e = matmul::matmul(c, &t(&[3, 4]), &t(&[4, 6]), &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[5]") && e.contains("[6]"), "{e}");
    // Rank.
    let e = matmul::matmul(c, &t(&[2, 2, 3, 4]), &t(&[4, 6]), &d)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[2, 2, 3, 4]"), "{e}");
    // Linear in-features mismatch.
    let e = matmul::linear(c, &t(&[3, 4]), &t(&[6, 5]), None, Activation::None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[3, 4]") && e.contains("[6, 5]"), "{e}");
    // Mixed dtypes.
    if c.has_f16() {
        let h = Tensor::full(c, &[4, 6], 1.0, DType::F16).unwrap();
        let e = matmul::matmul(c, &t(&[3, 4]), &h, &d)
            .unwrap_err()
            .to_string();
        assert!(e.contains("f16") && e.contains("f32"), "{e}");
    }
}
