//! Upsampling, concatenation, strided copies (the tiled VAE's crops), the tiled VAE's seam
//! blend and the timestep embedding vs their CPU references.

mod common;
use common::*;
use hoa::kernels::embedding::{self, TimestepEmbedding};
use hoa::kernels::{concat, resample};
use hoa::{DType, Tensor};

#[test]
fn upsample_nearest2x_matches_reference() {
    let Some(c) = ctx() else { return };
    let mut r = rng(10);
    for dt in dtypes(c) {
        for shape in [
            [1, 1, 1, 1],
            [2, 3, 5, 7],
            [1, 33, 4, 9],
            [2, 7, 17, 1],
            [1, 3, 5, 8],
            [2, 5, 3, 2],
        ] {
            let n: usize = shape.iter().product();
            let x = round_to(dt, &randn(&mut r, n, 3.0));
            let t = Tensor::from_f32(c, &x, &shape, dt).unwrap();
            let y = resample::upsample_nearest2x(c, &t).unwrap();
            assert_eq!(y.shape(), &[shape[0], shape[1], 2 * shape[2], 2 * shape[3]]);
            let want = resample::reference::upsample_nearest2x(&x, shape);
            // A copy: exact.
            all_close(
                &format!("upsample {shape:?} {dt:?}"),
                &y.to_vec(c).unwrap(),
                &want,
                &Tol {
                    atol: 0.0,
                    rtol: 0.0,
                },
            );
        }
    }
    let bad = Tensor::full(c, &[3, 4, 5], 0.0, DType::F32).unwrap();
    let e = resample::upsample_nearest2x(c, &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 dimensions") && e.contains("[3, 4, 5]"), "{e}");
}

#[test]
fn concat_matches_reference_along_every_dim() {
    let Some(c) = ctx() else { return };
    let mut r = rng(11);
    for dt in dtypes(c) {
        for dim in 0..4 {
            let mut shapes = vec![vec![2usize, 3, 5, 7]; 3];
            if dim == 1 {
                shapes = vec![vec![2usize, 4, 3, 4]; 3];
            }
            shapes[1][dim] = 1;
            shapes[2][dim] = 33;
            if dim == 1 {
                shapes[1][dim] = 8; // every slice on the vec4 path
            }
            let datas: Vec<Vec<f32>> = shapes
                .iter()
                .map(|s| round_to(dt, &randn(&mut r, s.iter().product(), 2.0)))
                .collect();
            let ts: Vec<Tensor> = datas
                .iter()
                .zip(&shapes)
                .map(|(d, s)| Tensor::from_f32(c, d, s, dt).unwrap())
                .collect();
            let refs: Vec<&Tensor> = ts.iter().collect();
            let out = concat::concat(c, &refs, dim).unwrap();
            let mut want_shape = shapes[0].clone();
            want_shape[dim] = shapes.iter().map(|s| s[dim]).sum();
            assert_eq!(out.shape(), &want_shape[..]);
            let inputs: Vec<(&[f32], &[usize])> = datas
                .iter()
                .zip(&shapes)
                .map(|(d, s)| (&d[..], &s[..]))
                .collect();
            let want = concat::reference::concat(&inputs, dim);
            all_close(
                &format!("concat dim {dim} {dt:?}"),
                &out.to_vec(c).unwrap(),
                &want,
                &Tol {
                    atol: 0.0,
                    rtol: 0.0,
                },
            );
        }
    }
    let a = Tensor::full(c, &[2, 3, 4], 0.0, DType::F32).unwrap();
    let b = Tensor::full(c, &[2, 5, 5], 0.0, DType::F32).unwrap();
    let e = concat::concat(c, &[&a, &b], 1).unwrap_err().to_string();
    assert!(e.contains("[2, 3, 4]") && e.contains("[2, 5, 5]"), "{e}");
}

#[test]
fn timestep_embedding_matches_diffusers_formula() {
    let Some(c) = ctx() else { return };
    // Arguments reach ~1000 rad, where one f32 ulp of the argument is 6e-5: that, not the
    // kernel, sets the tolerance against the f64 reference.
    let tol = Tol {
        atol: 3e-4,
        rtol: 0.0,
    };
    let ts = [0.0f32, 1.0, 999.0, 500.5, 37.25, 981.0, 2.0];
    let t = Tensor::from_f32(c, &ts, &[ts.len()], DType::F32).unwrap();
    for (dim, flip, shift) in [
        (320, true, 0.0),
        (33, false, 1.0),
        (8, true, 1.0),
        (1280, false, 0.0),
    ] {
        let cfg = TimestepEmbedding {
            dim,
            flip_sin_to_cos: flip,
            downscale_freq_shift: shift,
            scale: 1.0,
            max_period: 10000.0,
        };
        for dt in dtypes(c) {
            let y = embedding::timestep_embedding(c, &t, &cfg, dt).unwrap();
            assert_eq!(y.shape(), &[ts.len(), dim]);
            let want = round_to(dt, &embedding::reference::timestep_embedding(&ts, &cfg));
            let tol = if dt == DType::F16 { F16 } else { Tol { ..tol } };
            all_close(
                &format!("temb dim {dim} flip {flip} {dt:?}"),
                &y.to_vec(c).unwrap(),
                &want,
                &tol,
            );
        }
    }
}

#[test]
fn gather_rows_matches_reference_and_rejects_bad_ids() {
    let Some(c) = ctx() else { return };
    let mut r = rng(12);
    for dt in dtypes(c) {
        let (vocab, dim) = (37usize, 13usize);
        let table = round_to(dt, &randn(&mut r, vocab * dim, 1.0));
        let t = Tensor::from_f32(c, &table, &[vocab, dim], dt).unwrap();
        let ids: Vec<u32> = (0..77).map(|i| (i * 7 % vocab) as u32).collect();
        let y = embedding::gather_rows(c, &t, &ids).unwrap();
        assert_eq!(y.shape(), &[77, dim]);
        let want = embedding::reference::gather_rows(&table, dim, &ids);
        all_close(
            &format!("gather {dt:?}"),
            &y.to_vec(c).unwrap(),
            &want,
            &Tol {
                atol: 0.0,
                rtol: 0.0,
            },
        );
        let e = embedding::gather_rows(c, &t, &[3, 37])
            .unwrap_err()
            .to_string();
        assert!(e.contains("token id 37") && e.contains("37"), "{e}");
    }
}

/// The tiled VAE's seam kernel vs diffusers' `blend_v` then `blend_h` (f64 reference): the tile
/// is blended in place and its crop lands in the output, nothing else is written.
#[test]
fn tile_blend_matches_blend_v_then_blend_h() {
    use hoa::kernels::tile_blend::{reference, tile_blend, Seam};
    let Some(c) = ctx() else { return };
    let mut r = rng(12);
    for dt in dtypes(c) {
        let (top_s, left_s, tile_s, out_s) =
            ([2, 3, 7, 9], [2, 3, 6, 5], [2, 3, 6, 9], [2, 3, 12, 14]);
        let data = |s: [usize; 4], r: &mut _| round_to(dt, &randn(r, s.iter().product(), 1.0));
        let (top, left, tile) = (
            data(top_s, &mut r),
            data(left_s, &mut r),
            data(tile_s, &mut r),
        );
        let t = |d: &[f32], s: [usize; 4]| Tensor::from_f32(c, d, &s, dt).unwrap();
        let (tt, lt, xt) = (t(&top, top_s), t(&left, left_s), t(&tile, tile_s));
        let out = Tensor::full(c, &out_s, f32::NAN, dt).unwrap();
        let seam = Seam {
            top: Some(&tt),
            left: Some(&lt),
            // min(6, 7, 4) rows, min(5, 9, 4) columns.
            blend_extent: 4,
            row_limit: 5,
            at: (3, 4),
        };
        tile_blend(c, &xt, &out, &seam).unwrap();
        let mut want = tile.clone();
        reference::blend_v((&top, top_s), (&mut want, tile_s), 4);
        reference::blend_h((&left, left_s), (&mut want, tile_s), 4);
        let tol = tol_for(dt, false);
        all_close(
            &format!("tile_blend {dt:?}"),
            &xt.to_vec(c).unwrap(),
            &want,
            &tol,
        );
        let got = out.to_vec(c).unwrap();
        let mut want_out = vec![f32::NAN; got.len()];
        for q in 0..6 {
            for y in 0..5 {
                for x in 0..5 {
                    want_out[(q * 12 + 3 + y) * 14 + 4 + x] = want[(q * 6 + y) * 9 + x];
                }
            }
        }
        for (i, (g, w)) in got.iter().zip(&want_out).enumerate() {
            assert!(
                w.is_nan() == g.is_nan()
                    && (w.is_nan()
                        || ((g - w).abs() as f64) <= tol.atol + tol.rtol * w.abs() as f64),
                "tile_blend {dt:?} out[{i}]: got {g} want {w}"
            );
        }
        // A top tile of another width is refused with both shapes named.
        let bad = t(&left, left_s);
        let e = tile_blend(
            c,
            &xt,
            &out,
            &Seam {
                top: Some(&bad),
                ..seam
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("[2, 3, 6, 5]") && e.contains("[2, 3, 6, 9]"),
            "{e}"
        );
    }
}

/// `contiguous` of crops, `narrow` and `chunk` views on odd shapes (the scalar path) and
/// aligned ones (the vec4 path) vs the reference, bit for bit: a -0.0 in the view keeps its
/// sign, and the NaN-poisoned output shows any element left unwritten.
#[test]
fn contiguous_copies_views_bit_for_bit() {
    use hoa::kernels::elementwise::{contiguous, reference, View};
    let Some(c) = ctx() else { return };
    let mut r = rng(13);
    for dt in dtypes(c) {
        for (shape, dim_a, range_a, dim_b, range_b) in [
            (vec![2, 3, 7, 9], 2, (1, 5), 3, (2, 6)),
            (vec![1, 5, 3, 1], 1, (4, 1), 2, (0, 3)),
            (vec![2, 3, 5, 8], 3, (4, 4), 2, (1, 3)),
            (vec![3, 16, 12], 1, (4, 8), 2, (0, 12)),
            (vec![33], 0, (3, 29), 0, (1, 27)),
        ] {
            let n: usize = shape.iter().product();
            let mut x = round_to(dt, &randn(&mut r, n, 2.0));
            for i in (3..n).step_by(7) {
                x[i] = -0.0;
            }
            let t = Tensor::from_f32(c, &x, &shape, dt).unwrap();
            let v = View::of(&t)
                .narrow(dim_a, range_a.0, range_a.1)
                .unwrap()
                .narrow(dim_b, range_b.0, range_b.1)
                .unwrap();
            let want = reference::contiguous((&x, &v.shape, &v.strides, v.offset));
            let what = format!("contiguous {shape:?} {:?} at {} {dt:?}", v.shape, v.offset);
            let y = contiguous(c, v.clone()).unwrap();
            assert_eq!(y.shape(), &v.shape[..], "{what}");
            let got = y.to_vec(c).unwrap();
            let same = got
                .iter()
                .zip(&want)
                .all(|(g, w)| g.to_bits() == w.to_bits());
            assert!(same, "{what}: got {got:?} want {want:?}");
        }
        // chunk(2, dim=1)[1] of the moments, as the VAE without quant_conv takes it.
        let x = round_to(dt, &randn(&mut r, 2 * 6 * 3 * 5, 1.0));
        let t = Tensor::from_f32(c, &x, &[2, 6, 3, 5], dt).unwrap();
        let v = View::of(&t).chunk(2, 1, 1).unwrap();
        let want = reference::contiguous((&x, &v.shape, &v.strides, v.offset));
        let got = contiguous(c, v).unwrap().to_vec(c).unwrap();
        assert!(got
            .iter()
            .zip(&want)
            .all(|(g, w)| g.to_bits() == w.to_bits()));
    }
    // Out-of-range narrows and views that read past their tensor are errors, not panics.
    let t = Tensor::full(c, &[2, 3, 4, 5], 0.0, DType::F32).unwrap();
    let e = View::of(&t).narrow(3, 2, 4).unwrap_err().to_string();
    assert!(e.contains("dim 3 of size 5"), "{e}");
    let mut bad = View::of(&t);
    bad.offset = 1;
    let e = contiguous(c, bad).unwrap_err().to_string();
    assert!(
        e.contains("reads past") && e.contains("[2, 3, 4, 5]"),
        "{e}"
    );
}
