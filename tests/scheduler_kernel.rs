//! scheduler.wgsl (the fused sampler update, classifier-free guidance, the inpainting blend) vs
//! its f64 CPU reference, on odd sizes, in f32 and f16, outputs NaN-poisoned.

mod common;
use common::*;
use hoa::kernels::scheduler::{self, reference, StepCoefs};
use hoa::{DType, Tensor};

fn up(c: &hoa::Context, v: &[f32], shape: &[usize], dt: DType) -> Tensor {
    Tensor::from_f32(c, v, shape, dt).unwrap()
}

#[test]
fn step_matches_reference_in_every_mode() {
    let Some(c) = ctx() else { return };
    let mut r = rng(11);
    for dt in dtypes(c) {
        for (k, &n) in [1usize, 7, 257, 1000, 4099].iter().enumerate() {
            for mode in 0..16u32 {
                let (clip, use_noise, use_prev, write_x0) =
                    (mode & 1 != 0, mode & 2 != 0, mode & 4 != 0, mode & 8 != 0);
                let x = round_to(dt, &randn(&mut r, n, 3.0));
                let m = round_to(dt, &randn(&mut r, n, 2.0));
                let noise = round_to(dt, &randn(&mut r, n, 1.0));
                let prev = round_to(dt, &randn(&mut r, n, 1.5));
                let co = StepCoefs {
                    a0: 1.3,
                    a1: -0.7,
                    clip: clip.then_some((-1.0, 1.25)),
                    b_x: 0.6,
                    b_x0: 0.45,
                    b_m: -0.2,
                    b_noise: if use_noise { 0.3 } else { 0.0 },
                    b_prev: if use_prev { -0.15 } else { 0.0 },
                };
                let shape = [n];
                let (xt, mt) = (up(c, &x, &shape, dt), up(c, &m, &shape, dt));
                let nt = up(c, &noise, &shape, dt);
                let pt = up(c, &prev, &shape, dt);
                let (out, x0) = scheduler::step(
                    c,
                    &xt,
                    &mt,
                    use_noise.then_some(&nt),
                    use_prev.then_some(&pt),
                    &co,
                    write_x0,
                )
                .unwrap();
                assert_eq!(x0.is_some(), write_x0);
                let (want, want_x0) = reference::step(
                    &x,
                    &m,
                    use_noise.then_some(&noise[..]),
                    use_prev.then_some(&prev[..]),
                    &co,
                );
                let what = format!("step n={n} mode={mode:04b} {dt:?} (case {k})");
                all_close(&what, &out.to_vec(c).unwrap(), &want, &tol_for(dt, false));
                if let Some(x0) = x0 {
                    all_close(
                        &format!("{what} x0"),
                        &x0.to_vec(c).unwrap(),
                        &want_x0,
                        &tol_for(dt, false),
                    );
                }
            }
        }
    }
}

#[test]
fn classifier_free_guidance_matches_reference() {
    let Some(c) = ctx() else { return };
    let mut r = rng(12);
    for dt in dtypes(c) {
        for shape in [&[2usize, 4, 5, 7][..], &[4, 1, 3], &[2]] {
            for scale in [0.0f32, 1.0, 7.5] {
                let n: usize = shape.iter().product();
                let m = round_to(dt, &randn(&mut r, n, 2.0));
                let y =
                    scheduler::classifier_free_guidance(c, &up(c, &m, shape, dt), scale).unwrap();
                let mut half = shape.to_vec();
                half[0] /= 2;
                assert_eq!(y.shape(), &half[..]);
                let want = reference::classifier_free_guidance(&m, scale);
                // |c - u| * scale reaches ~30: f16 output rounding is relative to that.
                let tol = match dt {
                    DType::F32 => F32,
                    DType::F16 => F16_REDUCE,
                };
                all_close(
                    &format!("cfg {shape:?} scale {scale} {dt:?}"),
                    &y.to_vec(c).unwrap(),
                    &want,
                    &tol,
                );
            }
        }
    }
}

#[test]
fn blend_matches_reference() {
    let Some(c) = ctx() else { return };
    let mut r = rng(13);
    for dt in dtypes(c) {
        for (b, ch, h, w, mb) in [
            (2, 4, 5, 7, 2),
            (2, 4, 5, 7, 1),
            (1, 3, 1, 1, 1),
            (3, 9, 6, 3, 3),
        ] {
            let n = b * ch * h * w;
            let a = round_to(dt, &randn(&mut r, n, 2.0));
            let bb = round_to(dt, &randn(&mut r, n, 2.0));
            let mask: Vec<f32> = randn(&mut r, mb * h * w, 1.0)
                .iter()
                .map(|v| (v * 0.5 + 0.5).clamp(0.0, 1.0))
                .collect();
            let mask = round_to(dt, &mask);
            let y = scheduler::blend(
                c,
                &up(c, &a, &[b, ch, h, w], dt),
                &up(c, &bb, &[b, ch, h, w], dt),
                &up(c, &mask, &[mb, 1, h, w], dt),
            )
            .unwrap();
            let want = reference::blend(&a, &bb, &mask, ch, h * w);
            all_close(
                &format!("blend [{b},{ch},{h},{w}] mask batch {mb} {dt:?}"),
                &y.to_vec(c).unwrap(),
                &want,
                &tol_for(dt, false),
            );
        }
    }
}

#[test]
fn bad_shapes_are_refused() {
    let Some(c) = ctx() else { return };
    let x = up(c, &[0.5; 24], &[1, 2, 3, 4], DType::F32);
    let odd = up(c, &[0.5; 36], &[3, 1, 3, 4], DType::F32);
    let e = scheduler::classifier_free_guidance(c, &odd, 7.5)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("even batch") && e.contains("[3, 1, 3, 4]"),
        "{e}"
    );
    let even = up(c, &[0.5; 24], &[2, 1, 3, 4], DType::F32);
    let e = scheduler::classifier_free_guidance(c, &even, f32::NAN)
        .unwrap_err()
        .to_string();
    assert!(e.contains("finite"), "{e}");

    let bad_mask = up(c, &[0.5; 24], &[1, 2, 3, 4], DType::F32);
    let e = scheduler::blend(c, &x, &x, &bad_mask)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mask") && e.contains("[1, 1, 3, 4]"), "{e}");

    let co = StepCoefs {
        b_noise: 1.0,
        ..Default::default()
    };
    let e = scheduler::step(c, &x, &x, None, None, &co, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("noise"), "{e}");
    let co = StepCoefs {
        b_prev: 1.0,
        ..Default::default()
    };
    let e = scheduler::step(c, &x, &x, None, None, &co, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("previous step's x0"), "{e}");
    let e = scheduler::step(c, &x, &odd, None, None, &StepCoefs::default(), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model output") && e.contains("shape"), "{e}");
}
