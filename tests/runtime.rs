//! The runtime: device limits give errors, the pool reuses memory safely, work recorded on
//! several threads is never overtaken by another thread's readback or upload.

mod common;
use common::*;
use hoa::kernels::elementwise;
use hoa::{DType, Error, Tensor};

#[test]
fn adapter_is_reported_and_respects_limits() {
    let Some(c) = ctx() else { return };
    assert!(!c.describe().is_empty());
    // One element more than the largest binding the device allows.
    let n = (c.max_binding_bytes() / 4 + 1) as usize;
    match Tensor::empty(c, &[n], DType::F32) {
        Err(Error::Limit { limit, .. }) => assert_eq!(limit, "max_storage_buffer_binding_size"),
        other => panic!("expected a limit error, got {other:?}"),
    }
    let e = Tensor::from_f32(c, &[1.0, 2.0], &[3], DType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[3]") && e.contains("2 were given"), "{e}");
}

#[test]
fn odd_length_f16_round_trips() {
    let Some(c) = ctx() else { return };
    if !c.has_f16() {
        return;
    }
    let x = [1.5f32, -2.25, 3.0];
    let t = Tensor::from_f32(c, &x, &[3], DType::F16).unwrap();
    assert_eq!(t.to_vec(c).unwrap(), x);
}

#[test]
fn pooled_buffers_are_reused_without_corrupting_results() {
    let Some(c) = ctx() else { return };
    let mut r = rng(20);
    // A chain whose intermediates are dropped (returned to the pool) before the work that
    // reads them has been submitted, followed by uploads that reuse those buffers.
    for _ in 0..5 {
        let x = randn(&mut r, 1000, 1.0);
        let t = Tensor::from_f32(c, &x, &[1000], DType::F32).unwrap();
        let mut y = elementwise::scale(c, &t, 2.0).unwrap();
        for _ in 0..4 {
            y = elementwise::add(c, &y, &t).unwrap();
        }
        let junk = Tensor::from_f32(c, &vec![7.0; 1000], &[1000], DType::F32).unwrap();
        let want: Vec<f32> = x.iter().map(|v| 6.0 * v).collect();
        all_close("pooled chain", &y.to_vec(c).unwrap(), &want, &F32);
        drop(junk);
    }
}

#[test]
fn threads_sharing_a_context_see_their_own_results() {
    let Some(c) = ctx() else { return };
    std::thread::scope(|s| {
        for th in 0..4u64 {
            s.spawn(move || {
                let mut r = rng(100 + th);
                for i in 0..20 {
                    let n = 37 + i * 13;
                    let x = randn(&mut r, n, 1.0);
                    let t = Tensor::from_f32(c, &x, &[n], DType::F32).unwrap();
                    // Long chains make another thread's submit slow to encode, widening the
                    // window in which an unlocked readback could overtake it.
                    let mut y = elementwise::scale(c, &t, 3.0).unwrap();
                    for _ in 0..20 {
                        y = elementwise::add(c, &y, &t).unwrap();
                    }
                    let want: Vec<f32> = x.iter().map(|v| 23.0 * v).collect();
                    all_close(
                        &format!("thread {th} iter {i}"),
                        &y.to_vec(c).unwrap(),
                        &want,
                        &F32,
                    );
                }
            });
        }
    });
}
