//! Elementwise kernels vs their f64 CPU references, on odd sizes, in f32 and f16.

mod common;
use common::*;
use hoa::kernels::elementwise::{self, reference, BinaryOp, View};
use hoa::kernels::Activation;
use hoa::Tensor;

const ACTS: [Activation; 7] = [
    Activation::None,
    Activation::Gelu,
    Activation::GeluTanh,
    Activation::Silu,
    Activation::QuickGelu,
    Activation::Relu,
    Activation::Exp,
];

#[test]
fn unary_matches_reference() {
    let Some(c) = ctx() else { return };
    let mut r = rng(1);
    for dt in dtypes(c) {
        for (i, &n) in [1usize, 7, 33, 129, 1000, 4099].iter().enumerate() {
            let act = ACTS[i % ACTS.len()];
            for act in [act, ACTS[(i + 3) % ACTS.len()]] {
                // exp of a wide input would overflow f16.
                let spread = if act == Activation::Exp { 1.5 } else { 6.0 };
                let x = round_to(dt, &randn(&mut r, n, spread));
                let t = Tensor::from_f32(c, &x, &[n], dt).unwrap();
                let y = elementwise::unary(c, &t, act, 1.5, -0.25)
                    .unwrap()
                    .to_vec(c)
                    .unwrap();
                let want = reference::unary(&x, act, 1.5, -0.25);
                all_close(
                    &format!("unary {act:?} n={n} {dt:?}"),
                    &y,
                    &want,
                    &tol_for(dt, false),
                );
            }
        }
    }
}

#[test]
fn binary_same_shape_and_broadcast() {
    let Some(c) = ctx() else { return };
    let mut r = rng(2);
    // (a shape, b shape): same shape, per-channel bias, temb [B,C,1,1], scalar, row vector.
    // Cases with a last dim that is a multiple of 4 take the vec4 strided path.
    let cases: [(&[usize], &[usize]); 9] = [
        (&[2, 8, 3, 12], &[8, 1, 1]),
        (&[2, 3, 4, 8], &[4, 1]),
        (&[3, 16], &[16]),
        (&[3, 5, 7], &[3, 5, 7]),
        (&[2, 33, 3, 5], &[33, 1, 1]),
        (&[2, 7, 4, 3], &[2, 7, 1, 1]),
        (&[129], &[1]),
        (&[1, 5, 9], &[4, 1, 9]),
        (&[17, 1], &[1, 13]),
    ];
    for dt in dtypes(c) {
        for (ci, (sa, sb)) in cases.iter().enumerate() {
            for op in [BinaryOp::Add, BinaryOp::Mul, BinaryOp::Sub] {
                let na: usize = sa.iter().product();
                let nb: usize = sb.iter().product();
                let a = round_to(dt, &randn(&mut r, na, 2.0));
                let b = round_to(dt, &randn(&mut r, nb, 2.0));
                let ta = Tensor::from_f32(c, &a, sa, dt).unwrap();
                let tb = Tensor::from_f32(c, &b, sb, dt).unwrap();
                let act = ACTS[ci % ACTS.len()];
                let out = elementwise::binary(c, View::of(&ta), View::of(&tb), op, act).unwrap();
                let (va, vb) = (View::of(&ta), View::of(&tb));
                let (want, shape) = reference::binary(
                    (&a, &va.shape, &va.strides, 0),
                    (&b, &vb.shape, &vb.strides, 0),
                    op,
                    act,
                );
                assert_eq!(out.shape(), &shape[..]);
                let got = out.to_vec(c).unwrap();
                all_close(
                    &format!("{op:?} {sa:?} {sb:?} {dt:?}"),
                    &got,
                    &want,
                    &tol_for(dt, false),
                );
            }
        }
    }
}

/// A transposed square matrix has its tensor's shape and offset but not its strides: it must
/// not take the whole-tensor fast path.
#[test]
fn binary_on_a_transposed_square_view() {
    let Some(c) = ctx() else { return };
    let mut r = rng(4);
    for dt in dtypes(c) {
        let n = 7;
        let a = round_to(dt, &randn(&mut r, n * n, 2.0));
        let b = round_to(dt, &randn(&mut r, n * n, 2.0));
        let ta = Tensor::from_f32(c, &a, &[n, n], dt).unwrap();
        let tb = Tensor::from_f32(c, &b, &[n, n], dt).unwrap();
        let mut at = View::of(&ta);
        at.strides = vec![1, n];
        let out = elementwise::binary(
            c,
            at.clone(),
            View::of(&tb),
            BinaryOp::Add,
            Activation::None,
        )
        .unwrap();
        let vb = View::of(&tb);
        let (want, _) = reference::binary(
            (&a, &at.shape, &at.strides, 0),
            (&b, &vb.shape, &vb.strides, 0),
            BinaryOp::Add,
            Activation::None,
        );
        all_close(
            &format!("a^T + b {dt:?}"),
            &out.to_vec(c).unwrap(),
            &want,
            &tol_for(dt, false),
        );
    }
}

#[test]
fn geglu_on_chunks_of_one_tensor() {
    let Some(c) = ctx() else { return };
    let mut r = rng(3);
    for dt in dtypes(c) {
        for (rows, d) in [(7usize, 33usize), (5, 40)] {
            let x = round_to(dt, &randn(&mut r, rows * 2 * d, 3.0));
            let t = Tensor::from_f32(c, &x, &[rows, 2 * d], dt).unwrap();
            let h = View::of(&t).chunk(2, 1, 0).unwrap();
            let g = View::of(&t).chunk(2, 1, 1).unwrap();
            let out = elementwise::binary(c, h.clone(), g.clone(), BinaryOp::Mul, Activation::Gelu)
                .unwrap();
            assert_eq!(out.shape(), &[rows, d]);
            let (want, _) = reference::binary(
                (&x, &h.shape, &h.strides, h.offset),
                (&x, &g.shape, &g.strides, g.offset),
                BinaryOp::Mul,
                Activation::Gelu,
            );
            all_close(
                &format!("geglu {rows}x{d} {dt:?}"),
                &out.to_vec(c).unwrap(),
                &want,
                &tol_for(dt, false),
            );
        }
    }
}

#[test]
fn mismatched_shapes_are_an_error_not_a_panic() {
    let Some(c) = ctx() else { return };
    let a = Tensor::full(c, &[3, 4], 1.0, hoa::DType::F32).unwrap();
    let b = Tensor::full(c, &[5], 1.0, hoa::DType::F32).unwrap();
    let e = elementwise::add(c, &a, &b).unwrap_err().to_string();
    assert!(e.contains("[3, 4]") && e.contains("[5]"), "{e}");
}

#[test]
fn axpy_from_f32_into_each_storage_type() {
    let Some(c) = ctx() else { return };
    let mut r = rng(4);
    // Odd sizes and a conv kernel's shape; the outputs start as NaN (the test context poisons
    // every new buffer), so an element the kernel skips fails.
    let shapes: [&[usize]; 6] = [&[1], &[7], &[33, 3], &[5, 3, 3, 3], &[1001], &[4099]];
    for out_dt in dtypes(c) {
        for (i, shape) in shapes.iter().enumerate() {
            let n: usize = shape.iter().product();
            let x = randn(&mut r, n, 2.0);
            let y = randn(&mut r, n, 0.5);
            let alpha = [1.0, 0.7, -2.5][i % 3];
            let tx = Tensor::from_f32(c, &x, shape, hoa::DType::F32).unwrap();
            let ty = Tensor::from_f32(c, &y, shape, hoa::DType::F32).unwrap();
            let out = elementwise::axpy(c, &tx, &ty, alpha, out_dt).unwrap();
            assert_eq!((out.shape(), out.dtype()), (*shape, out_dt));
            let want = round_to(out_dt, &reference::axpy(&x, &y, alpha));
            all_close(
                &format!("axpy {shape:?} -> {out_dt:?}"),
                &out.to_vec(c).unwrap(),
                &want,
                &tol_for(out_dt, false),
            );
        }
    }
    let a = Tensor::full(c, &[3, 4], 1.0, hoa::DType::F32).unwrap();
    let b = Tensor::full(c, &[4, 3], 1.0, hoa::DType::F32).unwrap();
    let e = elementwise::axpy(c, &a, &b, 1.0, hoa::DType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[3, 4]") && e.contains("[4, 3]"), "{e}");
}
