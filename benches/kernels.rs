//! `cargo bench`: criterion over the same cases as `hoa bench`, timed with GPU timestamps
//! where the adapter has them (criterion's `iter_custom`), else wall time.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hoa::bench::{cases, BenchOptions, Bound};
use hoa::{Context, ContextOptions};
use std::time::{Duration, Instant};

fn kernels(c: &mut Criterion) {
    let ctx = Context::new_blocking(ContextOptions::from_env()).expect("a GPU adapter");
    eprintln!("adapter: {}", ctx.describe());
    let opts = BenchOptions {
        filter: std::env::var("HOA_BENCH_FILTER").ok(),
        quick: std::env::var("HOA_BENCH_QUICK").is_ok(),
        ..Default::default()
    };
    let mut group = c.benchmark_group("kernels");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200));
    for case in cases(&ctx, &opts).expect("bench cases") {
        if !opts.wants(&case.kernel, &case.shape) {
            continue;
        }
        match case.bound {
            Bound::Compute => group.throughput(Throughput::Elements(case.flops as u64)),
            Bound::Memory => group.throughput(Throughput::Bytes(case.bytes as u64)),
        };
        group.bench_function(format!("{} {}", case.kernel, case.shape), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    (case.run)(&ctx).unwrap();
                    let t0 = Instant::now();
                    let gpu = ctx.flush_timed().unwrap();
                    total += gpu
                        .map(Duration::from_secs_f64)
                        .unwrap_or_else(|| t0.elapsed());
                }
                total
            })
        });
        ctx.trim_pool();
    }
    group.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
