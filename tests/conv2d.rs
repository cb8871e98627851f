//! conv2d (implicit GEMM: the subgroup fast path and the register-tiled fallback) and the naive
//! baseline vs the f64 direct-convolution reference, on odd shapes (channels 1/3/7/33, sizes
//! 1/5/9/17, non-square), 1x1 and 3x3 kernels, stride 1 and 2, padding 0 and 1, with and without
//! bias, in f32 and f16; and the shape errors.

mod common;
use common::*;
use hoa::kernels::conv2d::{self, reference, Conv2dOptions, SgTile, Tile, DEFAULT_TILE};
use hoa::kernels::Activation;
use hoa::{DType, Tensor};
use rand::Rng;

struct Case {
    xs: [usize; 4],
    ws: [usize; 4],
    stride: usize,
    padding: usize,
    bias: bool,
    act: Activation,
}

fn random_cases(r: &mut impl Rng, count: usize) -> Vec<Case> {
    let chans = [1usize, 3, 7, 33];
    let sizes = [1usize, 5, 9, 17];
    let acts = [Activation::None, Activation::Silu, Activation::Gelu];
    let mut v = Vec::new();
    while v.len() < count {
        let i = v.len();
        let k = if i % 2 == 0 { 3 } else { 1 };
        let stride = 1 + (i / 2) % 2;
        let padding = if k == 3 { (i / 4 + 1) % 2 } else { (i / 4) % 2 };
        let xs = [
            1 + r.random_range(0..2),
            chans[r.random_range(0..4)],
            sizes[r.random_range(0..4)],
            sizes[r.random_range(0..4)],
        ];
        // Skip shapes whose output would be empty (that is an error case, tested below).
        if xs[2] + 2 * padding < k || xs[3] + 2 * padding < k {
            continue;
        }
        v.push(Case {
            xs,
            ws: [chans[r.random_range(0..4)], xs[1], k, k],
            stride,
            padding,
            bias: r.random_range(0..2) == 0,
            act: acts[i % 3],
        });
    }
    v
}

fn run_case(
    c: &hoa::Context,
    r: &mut impl Rng,
    dt: DType,
    cs: &Case,
    f: &dyn Fn(&Tensor, &Tensor, &Conv2dOptions) -> hoa::Result<Tensor>,
    what: &str,
) {
    let x = round_to(dt, &randn(r, cs.xs.iter().product(), 1.0));
    let w = round_to(dt, &randn(r, cs.ws.iter().product(), 0.5));
    let b = round_to(dt, &randn(r, cs.ws[0], 1.0));
    let tx = Tensor::from_f32(c, &x, &cs.xs, dt).unwrap();
    let tw = Tensor::from_f32(c, &w, &cs.ws, dt).unwrap();
    let tb = Tensor::from_f32(c, &b, &[cs.ws[0]], dt).unwrap();
    let o = Conv2dOptions {
        stride: cs.stride,
        padding: cs.padding,
        bias: cs.bias.then_some(&tb),
        act: cs.act,
        ..Default::default()
    };
    let out = f(&tx, &tw, &o).unwrap();
    let (want, shape) = reference::conv2d(
        &x,
        cs.xs,
        &w,
        cs.ws,
        cs.bias.then_some(&b[..]),
        cs.stride,
        cs.padding,
        cs.act,
    );
    assert_eq!(out.shape(), &shape[..], "{what}");
    let got = out.to_vec(c).unwrap();
    all_close(
        &format!(
            "{what} x {:?} w {:?} stride {} pad {} bias {} {:?} {dt:?}",
            cs.xs, cs.ws, cs.stride, cs.padding, cs.bias, cs.act
        ),
        &got,
        &want,
        &tol_for(dt, true),
    );
}

#[test]
fn conv2d_matches_reference() {
    let Some(c) = ctx() else { return };
    let mut r = rng(11);
    let mut cases = random_cases(&mut r, 24);
    // Widths that are multiples of 4 take the vec4 input paths (3x3 pad 1 and 1x1 pad 0,
    // stride 1); the others the scalar ones.
    for (xs, k, padding, bias) in [
        ([2, 7, 5, 8], 3, 1, true),
        ([1, 3, 1, 4], 3, 1, false),
        ([1, 33, 9, 12], 3, 1, false),
        ([2, 33, 3, 12], 1, 0, true),
        ([1, 1, 1, 4], 1, 0, false),
        ([1, 7, 6, 8], 3, 0, true),
    ] {
        cases.push(Case {
            xs,
            ws: [[1, 7, 33][cases.len() % 3], xs[1], k, k],
            stride: 1,
            padding,
            bias,
            act: Activation::Silu,
        });
    }
    for dt in dtypes(c) {
        for cs in &cases {
            run_case(
                c,
                &mut r,
                dt,
                cs,
                &|x, w, o| conv2d::conv2d(c, x, w, o),
                "conv2d",
            );
        }
    }
}

/// Extra padding after the bottom and right edges (diffusers' `Downsample2D` with padding 0:
/// `F.pad(x, (0, 1, 0, 1))` then a stride-2 3x3 conv), on widths that would otherwise take the
/// vec4 paths too, and with symmetric padding on top.
#[test]
fn conv2d_pad_end_matches_reference() {
    let Some(c) = ctx() else { return };
    let mut r = rng(12);
    for dt in dtypes(c) {
        for (xs, cout, k, stride, padding, pad_end) in [
            ([2, 5, 24, 30], 7, 3, 2, 0, 1),
            ([1, 3, 7, 9], 9, 3, 2, 0, 1),
            ([1, 4, 8, 8], 4, 3, 1, 1, 1),
            ([1, 3, 4, 4], 5, 1, 1, 0, 2),
            ([1, 2, 1, 1], 3, 3, 2, 0, 2),
        ] {
            let ws = [cout, xs[1], k, k];
            let x = round_to(dt, &randn(&mut r, xs.iter().product(), 1.0));
            let w = round_to(dt, &randn(&mut r, ws.iter().product(), 0.5));
            let b = round_to(dt, &randn(&mut r, cout, 1.0));
            let tx = Tensor::from_f32(c, &x, &xs, dt).unwrap();
            let tw = Tensor::from_f32(c, &w, &ws, dt).unwrap();
            let tb = Tensor::from_f32(c, &b, &[cout], dt).unwrap();
            let o = Conv2dOptions {
                stride,
                padding,
                pad_end,
                bias: Some(&tb),
                act: Activation::None,
            };
            let (want, shape) = reference::conv2d_pad_end(
                &x,
                xs,
                &w,
                ws,
                Some(&b),
                stride,
                padding,
                pad_end,
                Activation::None,
            );
            for (name, out) in [
                ("conv2d", conv2d::conv2d(c, &tx, &tw, &o).unwrap()),
                (
                    "conv2d_naive",
                    conv2d::conv2d_naive(c, &tx, &tw, &o).unwrap(),
                ),
            ] {
                assert_eq!(out.shape(), &shape[..]);
                all_close(
                    &format!("{name} x {xs:?} w {ws:?} stride {stride} pad {padding} pad_end {pad_end} {dt:?}"),
                    &out.to_vec(c).unwrap(),
                    &want,
                    &tol_for(dt, true),
                );
            }
        }
    }
}

/// The register-tiled fallback (which `conv2d` uses for unaligned shapes and adapters without
/// subgroups) on aligned shapes too, with its default and other register tiles (4 and 8
/// channels, other workgroup sizes), and a 5x3 kernel (the runtime-geometry path).
#[test]
fn conv2d_other_tiles_and_kernels() {
    let Some(c) = ctx() else { return };
    let mut r = rng(12);
    let tiles = [DEFAULT_TILE, Tile { wg: 64, tc: 4 }, Tile { wg: 32, tc: 8 }];
    let mut cases = random_cases(&mut r, 6);
    cases.push(Case {
        xs: [2, 3, 9, 17],
        ws: [7, 3, 5, 3],
        stride: 2,
        padding: 1,
        bias: true,
        act: Activation::None,
    });
    for t in tiles {
        for cs in &cases {
            run_case(
                c,
                &mut r,
                DType::F32,
                cs,
                &|x, w, o| conv2d::conv2d_tiled(c, x, w, o, t),
                &format!("conv2d tile {t:?}"),
            );
        }
    }
}

fn run_pad_end(
    c: &hoa::Context,
    r: &mut impl Rng,
    dt: DType,
    cs: &Case,
    pad_end: usize,
    f: &dyn Fn(&Tensor, &Tensor, &Conv2dOptions) -> hoa::Result<Tensor>,
    what: &str,
) {
    let x = round_to(dt, &randn(r, cs.xs.iter().product(), 1.0));
    let w = round_to(dt, &randn(r, cs.ws.iter().product(), 0.5));
    let b = round_to(dt, &randn(r, cs.ws[0], 1.0));
    let tx = Tensor::from_f32(c, &x, &cs.xs, dt).unwrap();
    let tw = Tensor::from_f32(c, &w, &cs.ws, dt).unwrap();
    let tb = Tensor::from_f32(c, &b, &[cs.ws[0]], dt).unwrap();
    let o = Conv2dOptions {
        stride: cs.stride,
        padding: cs.padding,
        pad_end,
        bias: cs.bias.then_some(&tb),
        act: cs.act,
    };
    let out = f(&tx, &tw, &o).unwrap();
    let (want, shape) = reference::conv2d_pad_end(
        &x,
        cs.xs,
        &w,
        cs.ws,
        cs.bias.then_some(&b[..]),
        cs.stride,
        cs.padding,
        pad_end,
        cs.act,
    );
    assert_eq!(out.shape(), &shape[..], "{what}");
    all_close(
        &format!(
            "{what} x {:?} w {:?} stride {} pad {} pad_end {pad_end} bias {} {:?} {dt:?}",
            cs.xs, cs.ws, cs.stride, cs.padding, cs.bias, cs.act
        ),
        &out.to_vec(c).unwrap(),
        &want,
        &tol_for(dt, true),
    );
}

fn has_subgroups(c: &hoa::Context) -> bool {
    c.features.contains(wgpu::Features::SUBGROUP) && c.info.subgroup_min_size >= 8
}

/// The subgroup fast path, called explicitly, on the shapes it takes (output widths that are
/// multiples of 4; 1x1 unpadded convs over H*W % 4 == 0 pixels): every input path (3x3 stride 1
/// padding 1; 1x1; 3x3 stride 2 with padding 1 or padding 0 + pad_end 1 as the VAE's
/// downsampler; the generic path for other kernels, strides and paddings), channel counts that
/// are not multiples of the channel tile, pixel-tile counts that are not multiples of the
/// workgroup, batch 2, bias and activations, f32 and f16, and several tiles.
#[test]
fn conv2d_sg_matches_reference() {
    let Some(c) = ctx() else { return };
    let mut r = rng(14);
    // (x, cout, k, stride, padding, pad_end)
    let shapes: [([usize; 4], usize, usize, usize, usize, usize); 16] = [
        ([2, 7, 5, 8], 33, 3, 1, 1, 0),   // MODE 2
        ([1, 4, 12, 4], 40, 3, 1, 1, 0),  // MODE 2, one pixel tile per row
        ([1, 33, 3, 12], 7, 3, 1, 1, 0),  // MODE 2, few channels
        ([2, 33, 3, 12], 65, 1, 1, 0, 0), // MODE 3
        ([1, 5, 2, 6], 9, 1, 1, 0, 0),    // MODE 3, W % 4 != 0 but H*W % 4 == 0
        ([2, 6, 7, 16], 35, 3, 2, 1, 0),  // MODE 4 (padding 1)
        ([1, 3, 16, 8], 33, 3, 2, 0, 1),  // MODE 4 (padding 0 + pad_end 1)
        ([1, 3, 16, 24], 16, 3, 2, 0, 1), // MODE 4
        ([1, 5, 6, 6], 33, 3, 1, 0, 0),   // MODE 0: 3x3 unpadded, W % 4 != 0
        ([2, 3, 5, 7], 12, 3, 1, 1, 1),   // MODE 0: pad_end
        ([1, 3, 9, 16], 34, 1, 2, 0, 0),  // MODE 0: strided 1x1
        ([1, 4, 9, 15], 17, 3, 2, 1, 1),  // MODE 0: 3x3 s2, odd width
        ([1, 2, 8, 6], 5, 5, 1, 1, 0),    // MODE 0: 5x5
        ([1, 3, 7, 8], 8, 3, 1, 1, 0),    // MODE 2, 8 channels
        ([1, 8, 4, 4], 12, 1, 1, 0, 0),   // MODE 3, input channels in steps of 4 only
        ([1, 3, 2, 2], 40, 1, 1, 0, 0),   // MODE 3, fewer than 4 input channels
    ];
    let acts = [Activation::None, Activation::Silu, Activation::Gelu];
    let tiles = [
        conv2d::SG_TILE,
        SgTile { wg: 8, tr: 8 },
        SgTile { wg: 16, tr: 12 },
        SgTile { wg: 32, tr: 16 },
    ];
    for dt in dtypes(c) {
        for (i, &(xs, cout, k, stride, padding, pad_end)) in shapes.iter().enumerate() {
            let cs = Case {
                xs,
                ws: [cout, xs[1], k, k],
                stride,
                padding,
                bias: i % 2 == 0,
                act: acts[i % 3],
            };
            let t = if dt == DType::F32 {
                tiles[i % tiles.len()]
            } else {
                conv2d::SG_TILE
            };
            if !has_subgroups(c) {
                assert!(conv2d::conv2d_sg_with(
                    c,
                    &Tensor::full(c, &xs, 0.0, dt).unwrap(),
                    &Tensor::full(c, &cs.ws, 0.0, dt).unwrap(),
                    &Conv2dOptions::default(),
                    t
                )
                .is_err());
                continue;
            }
            run_pad_end(
                c,
                &mut r,
                dt,
                &cs,
                pad_end,
                &|x, w, o| conv2d::conv2d_sg_with(c, x, w, o, t),
                &format!("conv2d_sg {t:?}"),
            );
            // conv2d routes the same shape (to the fast path here, with its own tile).
            if i % 4 == 0 {
                run_pad_end(
                    c,
                    &mut r,
                    dt,
                    &cs,
                    pad_end,
                    &|x, w, o| conv2d::conv2d(c, x, w, o),
                    "conv2d",
                );
            }
        }
    }
}

/// Shapes the fast path cannot take are refused by the explicit entry (and `conv2d` takes them
/// through the fallback, tested above).
#[test]
fn conv2d_sg_refuses_unaligned_output() {
    let Some(c) = ctx() else { return };
    let t = |s: &[usize]| Tensor::full(c, s, 0.0, DType::F32).unwrap();
    let o = Conv2dOptions {
        padding: 1,
        ..Default::default()
    };
    let e = conv2d::conv2d_sg_with(c, &t(&[1, 3, 5, 5]), &t(&[4, 3, 3, 3]), &o, conv2d::SG_TILE)
        .expect_err("width 5 is not a multiple of 4")
        .to_string();
    assert!(e.contains("[1, 3, 5, 5]"), "{e}");
    let e = conv2d::conv2d_sg_with(
        c,
        &t(&[1, 3, 4, 4]),
        &t(&[4, 3, 3, 3]),
        &o,
        SgTile { wg: 8, tr: 6 },
    )
    .expect_err("tr 6 is not a multiple of 4")
    .to_string();
    assert!(e.contains("tr"), "{e}");
}

#[test]
fn conv2d_naive_matches_reference() {
    let Some(c) = ctx() else { return };
    let mut r = rng(13);
    let cases = random_cases(&mut r, 8);
    for cs in &cases {
        run_case(
            c,
            &mut r,
            DType::F32,
            cs,
            &|x, w, o| conv2d::conv2d_naive(c, x, w, o),
            "conv2d_naive",
        );
    }
}

#[test]
fn conv2d_rejects_bad_shapes() {
    let Some(c) = ctx() else { return };
    let t = |s: &[usize]| Tensor::full(c, s, 0.0, DType::F32).unwrap();
    let x = t(&[1, 3, 5, 5]);
    let w = t(&[4, 3, 3, 3]);
    let err = |x: &Tensor, w: &Tensor, o: &Conv2dOptions| {
        conv2d::conv2d(c, x, w, o)
            .expect_err("bad shapes must be refused")
            .to_string()
    };
    let d = Conv2dOptions::default();

    let e = err(&x, &t(&[4, 2, 3, 3]), &d);
    assert!(
        e.contains("[1, 3, 5, 5]") && e.contains("[4, 2, 3, 3]"),
        "{e}"
    );

    // The packed weight (what models hold) checks the same way.
    let pw = conv2d::PackedConv2dWeight::new(c, &w).unwrap();
    assert_eq!(pw.shape(), [4, 3, 3, 3]);
    let e = conv2d::conv2d_packed(c, &t(&[1, 2, 5, 5]), &pw, &d)
        .expect_err("channel mismatch must be refused")
        .to_string();
    assert!(
        e.contains("[1, 2, 5, 5]") && e.contains("[4, 3, 3, 3]"),
        "{e}"
    );
    assert!(conv2d::PackedConv2dWeight::new(c, &t(&[4, 27])).is_err());

    let e = err(&t(&[3, 5, 5]), &w, &d);
    assert!(e.contains("[3, 5, 5]") && e.contains("4 dimensions"), "{e}");
    let e = err(&x, &t(&[4, 27]), &d);
    assert!(e.contains("[4, 27]") && e.contains("4 dimensions"), "{e}");

    let b = t(&[5]);
    let o = Conv2dOptions {
        bias: Some(&b),
        ..Default::default()
    };
    let e = err(&x, &w, &o);
    assert!(e.contains("[5]") && e.contains("[4]"), "{e}");

    let e = err(&t(&[1, 3, 2, 5]), &w, &d);
    assert!(
        e.contains("[1, 3, 2, 5]") && e.contains("empty output"),
        "{e}"
    );

    let o = Conv2dOptions {
        stride: 0,
        ..Default::default()
    };
    assert!(err(&x, &w, &o).contains("stride"));
    // Padding makes the same input valid.
    let o = Conv2dOptions {
        padding: 1,
        ..Default::default()
    };
    let y = conv2d::conv2d(c, &t(&[1, 3, 2, 5]), &w, &o).unwrap();
    assert_eq!(y.shape(), &[1, 4, 2, 5]);

    if c.has_f16() {
        let xh = Tensor::full(c, &[1, 3, 5, 5], 0.0, DType::F16).unwrap();
        assert!(err(&xh, &w, &d).contains("mixed dtypes"));
    }
}
