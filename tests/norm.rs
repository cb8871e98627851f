//! Group norm, layer norm, RMS norm and softmax vs their f64 CPU references, on odd sizes, in
//! f32 and f16, with every row tiling (barrier-free and workgroup-reducing paths), plus the
//! inputs that break naive formulas (large mean, large logits) and the error messages.

mod common;
use common::*;
use hoa::kernels::group_norm::{self, group_norm, group_norm_with_tiling};
use hoa::kernels::layer_norm::{self, layer_norm, norm_with_tiling, rms_norm, RowTiling};
use hoa::kernels::softmax::{self, softmax, softmax_variant, softmax_with_tiling};
use hoa::{Context, DType, Tensor};

/// Inputs are bound to names until the output is read back: a dropped tensor's buffer returns to
/// the pool at once, and another test thread's upload could overwrite it (a queued write runs
/// before dispatches still pending) before the kernel that reads it has run.
fn upload(c: &Context, v: &[f32], shape: &[usize], dt: DType) -> Tensor {
    Tensor::from_f32(c, v, shape, dt).unwrap()
}

/// Random values `offset + U(-scale, scale)` rounded to what `dt` stores.
fn data(r: &mut rand::rngs::StdRng, n: usize, scale: f32, offset: f32, dt: DType) -> Vec<f32> {
    let v: Vec<f32> = randn(r, n, scale).iter().map(|x| x + offset).collect();
    round_to(dt, &v)
}

#[allow(clippy::too_many_arguments)]
fn check_group_norm(
    c: &Context,
    r: &mut rand::rngs::StdRng,
    dt: DType,
    shape: &[usize],
    groups: usize,
    affine: (bool, bool),
    silu: bool,
    offset: f32,
    tiling: Option<RowTiling>,
) {
    let (n, ch) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    let x = data(r, n * ch * inner, 2.0, offset, dt);
    let w = data(r, ch, 1.5, 0.0, dt);
    let b = data(r, ch, 1.0, 0.0, dt);
    let (tw, tb) = (upload(c, &w, &[ch], dt), upload(c, &b, &[ch], dt));
    let tx = upload(c, &x, shape, dt);
    let out = group_norm_with_tiling(
        c,
        &tx,
        groups,
        affine.0.then_some(&tw),
        affine.1.then_some(&tb),
        1e-5,
        silu,
        tiling,
    )
    .unwrap();
    assert_eq!(out.shape(), shape);
    let want = group_norm::reference::group_norm(
        &x,
        n,
        ch,
        inner,
        groups,
        affine.0.then_some(&w[..]),
        affine.1.then_some(&b[..]),
        1e-5,
        silu,
    );
    all_close(
        &format!("group_norm {shape:?} G={groups} affine={affine:?} silu={silu} +{offset} {tiling:?} {dt:?}"),
        &out.to_vec(c).unwrap(),
        &want,
        &tol_for(dt, true),
    );
}

#[test]
fn group_norm_matches_reference() {
    let Some(c) = ctx() else { return };
    let mut r = rng(10);
    let spatial: [&[usize]; 6] = [&[1, 1], &[1, 7], &[3, 11], &[3, 43], &[4, 4], &[]];
    let mut i = 0;
    for dt in dtypes(c) {
        for groups in [1usize, 3, 32] {
            for mult in [1usize, 3] {
                for sp in spatial {
                    let mut shape = vec![1 + i % 2, groups * mult];
                    shape.extend_from_slice(sp);
                    let affine = [(true, true), (false, false), (true, false)][i % 3];
                    check_group_norm(c, &mut r, dt, &shape, groups, affine, i % 2 == 0, 0.0, None);
                    i += 1;
                }
            }
        }
        // [N, C, L], vec4-aligned.
        check_group_norm(c, &mut r, dt, &[2, 6, 20], 3, (true, true), true, 0.0, None);
    }
}

#[test]
fn group_norm_every_tiling() {
    let Some(c) = ctx() else { return };
    let mut r = rng(11);
    for t in RowTiling::TESTED {
        for shape in [[2usize, 12, 3, 11], [3, 8, 8, 4]] {
            check_group_norm(
                c,
                &mut r,
                DType::F32,
                &shape,
                4,
                (true, true),
                true,
                0.0,
                Some(t),
            );
        }
    }
}

/// 100 + U(-1, 1): E[x^2] - E[x]^2 in f32 loses most of the variance's digits here.
#[test]
fn group_norm_large_mean() {
    let Some(c) = ctx() else { return };
    let mut r = rng(12);
    for dt in dtypes(c) {
        for t in [None, Some(RowTiling { wg: 64, tpr: 64 })] {
            let shape = [2, 8, 16, 16];
            let (n, ch, inner) = (2, 8, 256);
            let x = data(&mut r, n * ch * inner, 1.0, 100.0, dt);
            let tx = upload(c, &x, &shape, dt);
            let out = group_norm_with_tiling(c, &tx, 2, None, None, 1e-6, false, t).unwrap();
            let want =
                group_norm::reference::group_norm(&x, n, ch, inner, 2, None, None, 1e-6, false);
            all_close(
                &format!("group_norm 100+U(-1,1) {t:?} {dt:?}"),
                &out.to_vec(c).unwrap(),
                &want,
                &tol_for(dt, true),
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_layer_norm(
    c: &Context,
    r: &mut rand::rngs::StdRng,
    dt: DType,
    (rows, d): (usize, usize),
    affine: (bool, bool),
    rms: bool,
    offset: f32,
    tiling: Option<RowTiling>,
) {
    let x = data(r, rows * d, 2.0, offset, dt);
    let w = data(r, d, 1.5, 0.0, dt);
    let b = data(r, d, 1.0, 0.0, dt);
    let (tw, tb) = (upload(c, &w, &[d], dt), upload(c, &b, &[d], dt));
    let tx = upload(c, &x, &[rows, d], dt);
    let (tw, tb) = (affine.0.then_some(&tw), affine.1.then_some(&tb));
    let out = match (tiling, rms) {
        (Some(t), _) => norm_with_tiling(c, &tx, tw, tb, 1e-5, rms, t),
        (None, false) => layer_norm(c, &tx, tw, tb, 1e-5),
        (None, true) => rms_norm(c, &tx, tw, 1e-5),
    }
    .unwrap();
    let (w, b) = (affine.0.then_some(&w[..]), affine.1.then_some(&b[..]));
    let want = if rms {
        layer_norm::reference::rms_norm(&x, d, w, 1e-5)
    } else {
        layer_norm::reference::layer_norm(&x, d, w, b, 1e-5)
    };
    all_close(
        &format!(
            "{} [{rows}, {d}] affine={affine:?} +{offset} {tiling:?} {dt:?}",
            if rms { "rms_norm" } else { "layer_norm" }
        ),
        &out.to_vec(c).unwrap(),
        &want,
        &tol_for(dt, true),
    );
}

#[test]
fn layer_norm_and_rms_norm_match_reference() {
    let Some(c) = ctx() else { return };
    let mut r = rng(20);
    let mut i = 0;
    for dt in dtypes(c) {
        for rows in [1usize, 7, 33] {
            for d in [1usize, 7, 33, 129, 1000, 4099, 320] {
                if rows * d > 40_000 {
                    continue;
                }
                let affine = [(true, true), (false, false), (true, false)][i % 3];
                check_layer_norm(c, &mut r, dt, (rows, d), affine, false, 0.0, None);
                // RMS norm has no bias.
                check_layer_norm(c, &mut r, dt, (rows, d), (affine.0, false), true, 0.0, None);
                i += 1;
            }
        }
    }
}

#[test]
fn layer_norm_every_tiling() {
    let Some(c) = ctx() else { return };
    let mut r = rng(21);
    for t in RowTiling::TESTED {
        for shape in [(33usize, 129usize), (7, 1000)] {
            for rms in [false, true] {
                check_layer_norm(
                    c,
                    &mut r,
                    DType::F32,
                    shape,
                    (true, !rms),
                    rms,
                    0.0,
                    Some(t),
                );
            }
        }
    }
}

#[test]
fn layer_norm_large_mean() {
    let Some(c) = ctx() else { return };
    let mut r = rng(22);
    for dt in dtypes(c) {
        for t in [None, Some(RowTiling { wg: 32, tpr: 32 })] {
            // x = 100 + U(-1, 1) with the generator's scale 2 halved.
            let x = data(&mut r, 3 * 1000, 1.0, 100.0, dt);
            let tx = upload(c, &x, &[3, 1000], dt);
            let out = match t {
                Some(t) => norm_with_tiling(c, &tx, None, None, 1e-6, false, t),
                None => layer_norm(c, &tx, None, None, 1e-6),
            }
            .unwrap();
            let want = layer_norm::reference::layer_norm(&x, 1000, None, None, 1e-6);
            all_close(
                &format!("layer_norm 100+U(-1,1) {t:?} {dt:?}"),
                &out.to_vec(c).unwrap(),
                &want,
                &tol_for(dt, true),
            );
        }
    }
}

fn check_softmax(
    c: &Context,
    r: &mut rand::rngs::StdRng,
    dt: DType,
    (rows, d): (usize, usize),
    range: f32,
    scale: f32,
    tiling: Option<RowTiling>,
) {
    let x = data(r, rows * d, range, 0.0, dt);
    let tx = upload(c, &x, &[rows, d], dt);
    let out = softmax_with_tiling(c, &tx, scale, tiling).unwrap();
    let want = softmax::reference::softmax(&x, d, scale);
    all_close(
        &format!("softmax [{rows}, {d}] range {range} scale {scale} {tiling:?} {dt:?}"),
        &out.to_vec(c).unwrap(),
        &want,
        &tol_for(dt, false),
    );
}

#[test]
fn softmax_matches_reference() {
    let Some(c) = ctx() else { return };
    let mut r = rng(30);
    let mut i = 0;
    for dt in dtypes(c) {
        for rows in [1usize, 7, 33] {
            for d in [1usize, 7, 33, 129, 1000, 4099, 77, 64] {
                if rows * d > 40_000 {
                    continue;
                }
                let scale = [1.0, 0.125, -0.5][i % 3];
                check_softmax(c, &mut r, dt, (rows, d), 4.0, scale, None);
                i += 1;
            }
        }
    }
    // The public entry point, on a 3-D input.
    let x = [0.0f32, 1.0, 2.0, 3.0, -1.0, 0.5];
    let t = upload(c, &x, &[1, 2, 3], DType::F32);
    let got = softmax(c, &t, 1.0).unwrap().to_vec(c).unwrap();
    all_close(
        "softmax [1,2,3]",
        &got,
        &softmax::reference::softmax(&x, 3, 1.0),
        &F32,
    );
}

#[test]
fn softmax_every_tiling() {
    let Some(c) = ctx() else { return };
    let mut r = rng(31);
    for t in RowTiling::TESTED {
        for shape in [(33usize, 77usize), (7, 1000), (3, 129)] {
            check_softmax(c, &mut r, DType::F32, shape, 4.0, 0.3, Some(t));
        }
    }
}

/// The last pass evaluating exp again instead of rescaling the stored values.
#[test]
fn softmax_recompute_variant() {
    let Some(c) = ctx() else { return };
    let mut r = rng(33);
    for dt in dtypes(c) {
        for t in [RowTiling { wg: 16, tpr: 1 }, RowTiling { wg: 32, tpr: 32 }] {
            for (rows, d) in [(7usize, 77usize), (3, 1000)] {
                let x = data(&mut r, rows * d, 50.0, 0.0, dt);
                let tx = upload(c, &x, &[rows, d], dt);
                let out = softmax_variant(c, &tx, 0.7, Some(t), Some(true)).unwrap();
                all_close(
                    &format!("softmax recompute [{rows}, {d}] {t:?} {dt:?}"),
                    &out.to_vec(c).unwrap(),
                    &softmax::reference::softmax(&x, d, 0.7),
                    &tol_for(dt, false),
                );
            }
        }
    }
}

/// Logits of +-100: exp overflows f32 (and f16) unless the row max is subtracted first.
#[test]
fn softmax_large_logits() {
    let Some(c) = ctx() else { return };
    let mut r = rng(32);
    for dt in dtypes(c) {
        for t in [None, Some(RowTiling { wg: 64, tpr: 8 })] {
            for shape in [(7usize, 77usize), (3, 1000)] {
                check_softmax(c, &mut r, dt, shape, 100.0, 1.0, t);
            }
        }
    }
}

#[test]
fn bad_inputs_are_errors_naming_the_shapes() {
    let Some(c) = ctx() else { return };
    let f = DType::F32;
    let t = |shape: &[usize]| Tensor::full(c, shape, 1.0, f).unwrap();
    let err = |r: hoa::Result<Tensor>| r.unwrap_err().to_string();

    let e = err(group_norm(
        c,
        &t(&[2, 10, 4, 4]),
        3,
        None,
        None,
        1e-5,
        false,
    ));
    assert!(e.contains("[2, 10, 4, 4]") && e.contains("3 groups"), "{e}");
    let e = err(group_norm(
        c,
        &t(&[2, 6, 4]),
        3,
        Some(&t(&[5])),
        None,
        1e-5,
        false,
    ));
    assert!(
        e.contains("weight") && e.contains("[6]") && e.contains("[5]"),
        "{e}"
    );
    let e = err(group_norm(
        c,
        &t(&[2, 6, 4]),
        3,
        None,
        Some(&t(&[6, 1])),
        1e-5,
        false,
    ));
    assert!(e.contains("bias") && e.contains("[6, 1]"), "{e}");
    let e = err(group_norm(c, &t(&[12]), 3, None, None, 1e-5, false));
    assert!(e.contains("[12]"), "{e}");
    let e = err(group_norm(
        c,
        &t(&[1, 6, 2, 2, 2]),
        3,
        None,
        None,
        1e-5,
        false,
    ));
    assert!(e.contains("[1, 6, 2, 2, 2]"), "{e}");
    let e = err(group_norm(c, &t(&[1, 6, 2]), 0, None, None, 1e-5, false));
    assert!(e.contains("0 groups"), "{e}");

    let e = err(layer_norm(c, &t(&[4, 8]), Some(&t(&[7])), None, 1e-5));
    assert!(e.contains("[4, 8]") && e.contains("[7]"), "{e}");
    let e = err(layer_norm(c, &t(&[4, 8]), None, Some(&t(&[9])), 1e-5));
    assert!(e.contains("bias") && e.contains("[9]"), "{e}");
    let e = err(rms_norm(c, &t(&[4, 8]), Some(&t(&[2, 4])), 1e-5));
    assert!(e.contains("[2, 4]") && e.contains("[8]"), "{e}");
    let e = err(layer_norm(c, &t(&[]), None, None, 1e-5));
    assert!(e.contains("[]"), "{e}");
    let e = err(softmax(c, &t(&[]), 1.0));
    assert!(e.contains("[]"), "{e}");
    let e = err(norm_with_tiling(
        c,
        &t(&[4, 8]),
        None,
        None,
        1e-5,
        false,
        RowTiling { wg: 64, tpr: 3 },
    ));
    assert!(e.contains("tpr"), "{e}");

    if c.has_f16() {
        let h = Tensor::full(c, &[8], 1.0, DType::F16).unwrap();
        let e = err(layer_norm(c, &t(&[4, 8]), Some(&h), None, 1e-5));
        assert!(e.contains("f32") && e.contains("f16"), "{e}");
    }
}
