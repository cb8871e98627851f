//! Shared by the integration tests: one device per test process, the tolerance table, seeded
//! random data, and `all_close`, which reports the worst element with its index.
#![allow(dead_code)]

use hoa::{Context, ContextOptions, DType};
use rand::{Rng, SeedableRng};
use std::sync::OnceLock;

/// The one place tolerances live: |got - want| <= atol + rtol * |want|.
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
}

/// f32 kernels vs the f64 reference: f32 rounding over reductions of up to a few thousand terms.
pub const F32: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-4,
};
/// f32 reductions over long rows (matmul K, attention keys): error grows ~sqrt(K) ulps.
pub const F32_REDUCE: Tol = Tol {
    atol: 1e-4,
    rtol: 1e-4,
};
/// f16 storage (inputs rounded to f16, f32 math): ~2^-11 relative per stored value.
pub const F16: Tol = Tol {
    atol: 2e-3,
    rtol: 4e-3,
};
/// f16 storage with long reductions.
pub const F16_REDUCE: Tol = Tol {
    atol: 1e-2,
    rtol: 1e-2,
};

/// The process-wide test device. Fails loudly when there is no adapter, unless
/// HOA_SKIP_NO_GPU=1 is set (local machines only; CI never sets it).
pub fn ctx() -> Option<&'static Context> {
    static CTX: OnceLock<Option<Context>> = OnceLock::new();
    CTX.get_or_init(|| {
        match Context::new_blocking(ContextOptions {
            poison: true,
            ..ContextOptions::from_env()
        }) {
            Ok(c) => {
                // Written past the test harness's capture so every run shows its adapter.
                use std::io::Write;
                let line = format!("hoa test adapter: {}\n", c.describe());
                match std::fs::OpenOptions::new().write(true).open("/dev/stderr") {
                    Ok(mut f) => drop(f.write_all(line.as_bytes())),
                    Err(_) => eprint!("{line}"),
                }
                Some(c)
            }
            Err(e) => {
                if std::env::var("HOA_SKIP_NO_GPU").is_ok_and(|v| v == "1") {
                    eprintln!("skipping GPU tests: {e}");
                    None
                } else {
                    panic!(
                        "{e}\n(set HOA_SKIP_NO_GPU=1 to skip GPU tests on a machine without one)"
                    );
                }
            }
        }
    })
    .as_ref()
}

/// Dtypes to test on this adapter: f32 always, f16 when it has shader-f16.
pub fn dtypes(c: &Context) -> Vec<DType> {
    if c.has_f16() {
        vec![DType::F32, DType::F16]
    } else {
        vec![DType::F32]
    }
}

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

pub fn randn(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (r.random::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

/// Rounds through f16, so the reference sees exactly what an f16 tensor stores.
pub fn round_to(dtype: DType, v: &[f32]) -> Vec<f32> {
    match dtype {
        DType::F32 => v.to_vec(),
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
    }
}

pub fn tol_for(dtype: DType, reduce: bool) -> Tol {
    match (dtype, reduce) {
        (DType::F32, false) => F32,
        (DType::F32, true) => F32_REDUCE,
        (DType::F16, false) => F16,
        (DType::F16, true) => F16_REDUCE,
    }
}

/// Panics with how many elements missed, the worst one and the first few pairs.
pub fn all_close(what: &str, got: &[f32], want: &[f32], tol: &Tol) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    let mut bad = Vec::new();
    let mut worst = (0usize, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g as f64, w as f64);
        let err = (g - w).abs();
        let allowed = tol.atol + tol.rtol * w.abs();
        let excess = if g.is_nan() || w.is_nan() {
            f64::INFINITY
        } else {
            err / allowed
        };
        if excess > worst.1 {
            worst = (i, excess);
        }
        if err.is_nan() || err > allowed {
            bad.push(i);
        }
    }
    if !bad.is_empty() {
        let pairs: Vec<String> = bad
            .iter()
            .take(6)
            .map(|&i| format!("[{i}] got {} want {}", got[i], want[i]))
            .collect();
        panic!(
            "{what}: {} of {} elements outside atol {} + rtol {}; worst at [{}]: got {} want {}; first: {}",
            bad.len(),
            got.len(),
            tol.atol,
            tol.rtol,
            worst.0,
            got[worst.0],
            want[worst.0],
            pairs.join(", ")
        );
    }
}
