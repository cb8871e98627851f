//! The runtime: device limits give errors, the pool reuses memory safely, work recorded on
//! several threads is never overtaken by another thread's readback or upload.

mod common;
use common::*;
use hoa::kernels::{elementwise, Activation};
use hoa::{Context, ContextOptions, DType, Error, Tensor};

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

/// A context of the test's own, without poisoning: launches share submissions, so their params
/// sit at nonzero arena offsets (the shared test context submits before every new tensor), and
/// no other test moves its pool or its bind-group counters.
fn batching_ctx() -> Option<Context> {
    ctx()?;
    Some(Context::new_blocking(ContextOptions::from_env()).unwrap())
}

/// `x + 0 + 1 + ... + (n - 1)`, one launch per term, all recorded before one readback.
fn sum_chain(c: &Context, x: &Tensor, n: usize) -> Tensor {
    let mut y = x.clone();
    for i in 0..n {
        y = elementwise::unary(c, &y, Activation::None, 1.0, i as f32).unwrap();
    }
    y
}

#[test]
fn launches_read_their_own_params_across_arena_growth() {
    let Some(c) = &batching_ctx() else { return };
    let x: Vec<f32> = (0..300).map(|i| i as f32).collect();
    let t = Tensor::from_f32(c, &x, &[300], DType::F32).unwrap();
    // 2000 launches in one recording: more params than the arena first holds, so it is
    // submitted part way and grown; every launch must still add its own term.
    let n = 2000;
    let y = sum_chain(c, &t, n).to_vec(c).unwrap();
    let s = (n * (n - 1) / 2) as f32;
    let want: Vec<f32> = x.iter().map(|v| v + s).collect();
    all_close("arena chain", &y, &want, &F32);
}

#[test]
fn a_repeated_step_creates_no_bind_groups_and_reads_new_params() {
    let Some(c) = &batching_ctx() else { return };
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let t = Tensor::from_f32(c, &x, &[64], DType::F32).unwrap();
    // Five intermediates freed in an order that, were the pool a stack, would hand each one
    // the next one's buffer in the following step (a cycle of five), so no two of the first
    // five steps would bind alike.
    let step = |scale: f32| {
        let mut r = vec![elementwise::scale(c, &t, scale).unwrap()];
        for k in 1..5 {
            r.push(elementwise::add(c, &r[k - 1], &t).unwrap());
        }
        let want: Vec<f32> = x.iter().map(|v| (scale + 4.0) * v).collect();
        let got = r[4].to_vec(c).unwrap();
        all_close(&format!("step x{scale}"), &got, &want, &F32);
        for k in [0, 4, 3, 2, 1] {
            drop(std::mem::replace(&mut r[k], t.clone()));
        }
    };
    // The first step creates the buffers; from the second on, the same tensors get the same ones.
    for s in [1.0, 2.0] {
        step(s);
    }
    let before = c.bind_group_stats();
    // Cached bind groups name arena slots, not values: a new scale must still be read.
    for s in [3.0, 4.0, 5.0] {
        step(s);
    }
    let after = c.bind_group_stats();
    assert_eq!(after.created, before.created, "{before:?} -> {after:?}");
    assert_eq!(after.hits, before.hits + 15, "{before:?} -> {after:?}");

    // Trimming the pool forgets them; the recreated buffers get bind groups of their own.
    c.trim_pool();
    assert_eq!(c.bind_group_stats().cached, 0);
    step(6.0);
    assert!(c.bind_group_stats().created > after.created);
}

/// Profiling (`HOA_PROFILE=1`) submits every dispatch on its own, so the harness's final
/// submit is empty: the FMA ceiling measured under it once came out ~3000x the real one
/// (its timestamps said ~0 s). Profiling only adds submits, so its ceiling can't be much
/// higher than one measured without it.
#[test]
fn the_fma_ceiling_under_profiling_is_not_inflated() {
    let Some(c) = ctx() else { return };
    let profiled = Context::new_blocking(ContextOptions {
        profile: true,
        ..ContextOptions::from_env()
    })
    .expect("a profiling context on the test adapter");
    let plain = hoa::bench::case::ceilings(c, 3).unwrap();
    let with = hoa::bench::case::ceilings(&profiled, 3).unwrap();
    assert!(
        with.gflops < 2.0 * plain.gflops && with.gbps < 2.0 * plain.gbps,
        "profiled {with:?} vs plain {plain:?}"
    );
}
