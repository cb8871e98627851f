// peak.wgsl: the adapter's own ceilings, measured as vkpeak does.
//
// fma_peak: each invocation runs ITERS x 16 vec4 FMAs on 4 independent accumulators (no memory
//      traffic in the loop), then writes one value so the work cannot be optimized away.
//      Four vec4 chains hide the FMA latency and still fit in registers on llvmpipe, where each
//      per-invocation float takes a whole SIMD register; eight spilled and read 40% low.
// copy_peak: vec4 storage-to-storage copy, 1-D grid split over x/y (Context::grid_1d).
// Bindings: 0 = input (copy only), then out, then params.

override WG: u32 = 256u;
override ITERS: u32 = 64u;

struct Params {
    n: u32,        // copy: vec4 elements
    seed: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> f_out: array<vec4<f32>>;
@group(0) @binding(1) var<uniform> f_p: Params;

@compute @workgroup_size(WG)
fn fma_peak(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    let s = f_p.seed + f32(i & 7u) * 1e-7;
    var a0 = vec4<f32>(s); var a1 = a0 + 1e-3; var a2 = a0 + 2e-3; var a3 = a0 + 3e-3;
    let m = vec4<f32>(0.9999);
    let c = vec4<f32>(1e-4);
    for (var k = 0u; k < ITERS; k++) {
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
    }
    f_out[i] = a0 + a1 + a2 + a3;
}

@group(0) @binding(0) var<storage, read> c_in: array<T4>;
@group(0) @binding(1) var<storage, read_write> c_out: array<T4>;
@group(0) @binding(2) var<uniform> c_p: Params;

@compute @workgroup_size(WG)
fn copy_peak(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i < c_p.n) {
        c_out[i] = c_in[i];
    }
}
