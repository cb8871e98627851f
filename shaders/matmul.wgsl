// matmul.wgsl: out[b] = act(alpha * op(A[b]) op(B[b]) + bias), op = optional transpose.
//
// A and B are read through element strides from the params uniform, so one pipeline serves
// A [M,K] or [K,M] (trans_a), B [K,N] or [N,K] (trans_b, PyTorch's Linear weight), batches
// and a broadcast operand (batch stride 0).
//
// matmul_tiled — register-blocked, no workgroup memory, no barriers.
//   Dispatch: (ceil(N / (WG*TN)), ceil(M / TM), batch) workgroups of WG invocations.
//   A workgroup owns TM rows and WG*TN columns; invocation i owns all TM rows and the columns
//   col0 + i + j*WG (j < TN), accumulating in TM/4 x TN vec4s (4 rows each). Rows depend only
//   on workgroup_id, so A's addresses are the same for every invocation (a uniform load where
//   the driver recognizes it); each k step is TN loads of B, TM loads of A, TM*TN FMAs, and k
//   is unrolled by KU. The last row tile is moved up to end at M (it recomputes rows of its
//   neighbour without storing them) so A needs no per-row clamp; columns are clamped for the
//   loads and skipped at the store. No K tiling, so no K bounds checks in the loop.
// matmul_naive — one output per invocation, 16x16 workgroups; the benchmark baseline.
//
// Bindings: 0 = A, 1 = B, 2 = bias (any buffer when has_bias = 0), 3 = out, 4 = params.
// Overrides: WG (invocations per workgroup), TM (rows per invocation: 4, 8, .. 32),
//            TN (columns per invocation, 1..4), KU (k unroll: 1, 2 or 4).

override WG: u32 = 64u;
override TM: u32 = 8u;
override TN: u32 = 4u;
override KU: u32 = 4u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    a_sm: u32,     // element stride of A between rows of op(A)
    a_sk: u32,     // ... between k
    a_sb: u32,     // ... between batches (0 = broadcast)
    b_sk: u32,
    b_sn: u32,
    b_sb: u32,
    act: u32,      // activation id (common.wgsl)
    alpha: f32,
}

@group(0) @binding(0) var<storage, read> a: array<T>;
@group(0) @binding(1) var<storage, read> b: array<T>;
@group(0) @binding(2) var<storage, read> bias: array<T>;
@group(0) @binding(3) var<storage, read_write> out: array<T>;
@group(0) @binding(4) var<uniform> p: Params;

fn epilogue(acc: f32, row: u32, col: u32, batch: u32) {
    var v = p.alpha * acc;
    if (p.has_bias != 0u) {
        v += f32(bias[col]);
    }
    out[(batch * p.m + row) * p.n + col] = T(activate(v, p.act));
}

// The accumulators of one invocation: acc_g_j holds rows 4g..4g+3 of column slot j.
struct Acc {
    g0j0: vec4<f32>, g0j1: vec4<f32>, g0j2: vec4<f32>, g0j3: vec4<f32>,
    g1j0: vec4<f32>, g1j1: vec4<f32>, g1j2: vec4<f32>, g1j3: vec4<f32>,
    g2j0: vec4<f32>, g2j1: vec4<f32>, g2j2: vec4<f32>, g2j3: vec4<f32>,
    g3j0: vec4<f32>, g3j1: vec4<f32>, g3j2: vec4<f32>, g3j3: vec4<f32>,
    g4j0: vec4<f32>, g4j1: vec4<f32>, g4j2: vec4<f32>, g4j3: vec4<f32>,
    g5j0: vec4<f32>, g5j1: vec4<f32>, g5j2: vec4<f32>, g5j3: vec4<f32>,
    g6j0: vec4<f32>, g6j1: vec4<f32>, g6j2: vec4<f32>, g6j3: vec4<f32>,
    g7j0: vec4<f32>, g7j1: vec4<f32>, g7j2: vec4<f32>, g7j3: vec4<f32>,
}

// One k step: TN per-invocation loads of B, TM uniform loads of A, TM*TN FMAs.
fn step(acc: ptr<function, Acc>, ao: u32, bo: vec4<u32>, k: u32) {
    let kb = k * p.b_sk;
    let ka = ao + k * p.a_sk;
    var b0 = 0.0;
    { b0 = f32(b[bo.x + kb]); }
    var b1 = 0.0;
    if (TN > 1u) { b1 = f32(b[bo.y + kb]); }
    var b2 = 0.0;
    if (TN > 2u) { b2 = f32(b[bo.z + kb]); }
    var b3 = 0.0;
    if (TN > 3u) { b3 = f32(b[bo.w + kb]); }
    if (TM > 0u) {
        let a0 = vec4<f32>(f32(a[ka + 0u * p.a_sm]), f32(a[ka + 1u * p.a_sm]), f32(a[ka + 2u * p.a_sm]), f32(a[ka + 3u * p.a_sm]));
        { (*acc).g0j0 = fma(a0, vec4<f32>(b0), (*acc).g0j0); }
        if (TN > 1u) { (*acc).g0j1 = fma(a0, vec4<f32>(b1), (*acc).g0j1); }
        if (TN > 2u) { (*acc).g0j2 = fma(a0, vec4<f32>(b2), (*acc).g0j2); }
        if (TN > 3u) { (*acc).g0j3 = fma(a0, vec4<f32>(b3), (*acc).g0j3); }
    }
    if (TM > 4u) {
        let a1 = vec4<f32>(f32(a[ka + 4u * p.a_sm]), f32(a[ka + 5u * p.a_sm]), f32(a[ka + 6u * p.a_sm]), f32(a[ka + 7u * p.a_sm]));
        { (*acc).g1j0 = fma(a1, vec4<f32>(b0), (*acc).g1j0); }
        if (TN > 1u) { (*acc).g1j1 = fma(a1, vec4<f32>(b1), (*acc).g1j1); }
        if (TN > 2u) { (*acc).g1j2 = fma(a1, vec4<f32>(b2), (*acc).g1j2); }
        if (TN > 3u) { (*acc).g1j3 = fma(a1, vec4<f32>(b3), (*acc).g1j3); }
    }
    if (TM > 8u) {
        let a2 = vec4<f32>(f32(a[ka + 8u * p.a_sm]), f32(a[ka + 9u * p.a_sm]), f32(a[ka + 10u * p.a_sm]), f32(a[ka + 11u * p.a_sm]));
        { (*acc).g2j0 = fma(a2, vec4<f32>(b0), (*acc).g2j0); }
        if (TN > 1u) { (*acc).g2j1 = fma(a2, vec4<f32>(b1), (*acc).g2j1); }
        if (TN > 2u) { (*acc).g2j2 = fma(a2, vec4<f32>(b2), (*acc).g2j2); }
        if (TN > 3u) { (*acc).g2j3 = fma(a2, vec4<f32>(b3), (*acc).g2j3); }
    }
    if (TM > 12u) {
        let a3 = vec4<f32>(f32(a[ka + 12u * p.a_sm]), f32(a[ka + 13u * p.a_sm]), f32(a[ka + 14u * p.a_sm]), f32(a[ka + 15u * p.a_sm]));
        { (*acc).g3j0 = fma(a3, vec4<f32>(b0), (*acc).g3j0); }
        if (TN > 1u) { (*acc).g3j1 = fma(a3, vec4<f32>(b1), (*acc).g3j1); }
        if (TN > 2u) { (*acc).g3j2 = fma(a3, vec4<f32>(b2), (*acc).g3j2); }
        if (TN > 3u) { (*acc).g3j3 = fma(a3, vec4<f32>(b3), (*acc).g3j3); }
    }
    if (TM > 16u) {
        let a4 = vec4<f32>(f32(a[ka + 16u * p.a_sm]), f32(a[ka + 17u * p.a_sm]), f32(a[ka + 18u * p.a_sm]), f32(a[ka + 19u * p.a_sm]));
        { (*acc).g4j0 = fma(a4, vec4<f32>(b0), (*acc).g4j0); }
        if (TN > 1u) { (*acc).g4j1 = fma(a4, vec4<f32>(b1), (*acc).g4j1); }
        if (TN > 2u) { (*acc).g4j2 = fma(a4, vec4<f32>(b2), (*acc).g4j2); }
        if (TN > 3u) { (*acc).g4j3 = fma(a4, vec4<f32>(b3), (*acc).g4j3); }
    }
    if (TM > 20u) {
        let a5 = vec4<f32>(f32(a[ka + 20u * p.a_sm]), f32(a[ka + 21u * p.a_sm]), f32(a[ka + 22u * p.a_sm]), f32(a[ka + 23u * p.a_sm]));
        { (*acc).g5j0 = fma(a5, vec4<f32>(b0), (*acc).g5j0); }
        if (TN > 1u) { (*acc).g5j1 = fma(a5, vec4<f32>(b1), (*acc).g5j1); }
        if (TN > 2u) { (*acc).g5j2 = fma(a5, vec4<f32>(b2), (*acc).g5j2); }
        if (TN > 3u) { (*acc).g5j3 = fma(a5, vec4<f32>(b3), (*acc).g5j3); }
    }
    if (TM > 24u) {
        let a6 = vec4<f32>(f32(a[ka + 24u * p.a_sm]), f32(a[ka + 25u * p.a_sm]), f32(a[ka + 26u * p.a_sm]), f32(a[ka + 27u * p.a_sm]));
        { (*acc).g6j0 = fma(a6, vec4<f32>(b0), (*acc).g6j0); }
        if (TN > 1u) { (*acc).g6j1 = fma(a6, vec4<f32>(b1), (*acc).g6j1); }
        if (TN > 2u) { (*acc).g6j2 = fma(a6, vec4<f32>(b2), (*acc).g6j2); }
        if (TN > 3u) { (*acc).g6j3 = fma(a6, vec4<f32>(b3), (*acc).g6j3); }
    }
    if (TM > 28u) {
        let a7 = vec4<f32>(f32(a[ka + 28u * p.a_sm]), f32(a[ka + 29u * p.a_sm]), f32(a[ka + 30u * p.a_sm]), f32(a[ka + 31u * p.a_sm]));
        { (*acc).g7j0 = fma(a7, vec4<f32>(b0), (*acc).g7j0); }
        if (TN > 1u) { (*acc).g7j1 = fma(a7, vec4<f32>(b1), (*acc).g7j1); }
        if (TN > 2u) { (*acc).g7j2 = fma(a7, vec4<f32>(b2), (*acc).g7j2); }
        if (TN > 3u) { (*acc).g7j3 = fma(a7, vec4<f32>(b3), (*acc).g7j3); }
    }
}

// Stores rows row..row+3 of one column, skipping those before `first` or past M.
fn store4s(c: vec4<f32>, row: u32, first: u32, col: u32, batch: u32) {
    if (col >= p.n) { return; }
    for (var i = 0u; i < 4u; i++) {
        let r = row + i;
        if (r >= first && r < p.m) { epilogue(c[i], r, col, batch); }
    }
}

@compute @workgroup_size(WG)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let batch = wid.z;
    // Tiles hanging over the last row are moved up (recomputing rows of the previous tile,
    // which they do not store), so that the A loads need no per-row clamp.
    let row0 = wid.y * TM;
    let rs = select(row0, max(p.m, TM) - TM, row0 + TM > p.m);
    let ao = batch * p.a_sb + rs * p.a_sm;
    let col0 = wid.x * WG * TN + lid;
    let cols = min(vec4<u32>(col0) + vec4<u32>(0u, WG, 2u * WG, 3u * WG), vec4<u32>(p.n - 1u));
    let bo = vec4<u32>(batch * p.b_sb) + cols * p.b_sn;
    var acc: Acc;
    let ku = p.k & ~(KU - 1u);
    var k = 0u;
    for (; k < ku; k += KU) {
        step(&acc, ao, bo, k);
        if (KU > 1u) { step(&acc, ao, bo, k + 1u); }
        if (KU > 2u) { step(&acc, ao, bo, k + 2u); step(&acc, ao, bo, k + 3u); }
    }
    for (; k < p.k; k++) {
        step(&acc, ao, bo, k);
    }
    // Rows rs.. were computed; store those at or after row0 (and below M).
    if (TM > 0u) {
        { store4s(acc.g0j0, rs + 0u, row0, col0 + 0u * WG, batch); }
        if (TN > 1u) { store4s(acc.g0j1, rs + 0u, row0, col0 + 1u * WG, batch); }
        if (TN > 2u) { store4s(acc.g0j2, rs + 0u, row0, col0 + 2u * WG, batch); }
        if (TN > 3u) { store4s(acc.g0j3, rs + 0u, row0, col0 + 3u * WG, batch); }
    }
    if (TM > 4u) {
        { store4s(acc.g1j0, rs + 4u, row0, col0 + 0u * WG, batch); }
        if (TN > 1u) { store4s(acc.g1j1, rs + 4u, row0, col0 + 1u * WG, batch); }
        if (TN > 2u) { store4s(acc.g1j2, rs + 4u, row0, col0 + 2u * WG, batch); }
        if (TN > 3u) { store4s(acc.g1j3, rs + 4u, row0, col0 + 3u * WG, batch); }
    }
    if (TM > 8u) {
        { store4s(acc.g2j0, rs + 8u, row0, col0 + 0u * WG, batch); }
        if (TN > 1u) { store4s(acc.g2j1, rs + 8u, row0, col0 + 1u * WG, batch); }
        if (TN > 2u) { store4s(acc.g2j2, rs + 8u, row0, col0 + 2u * WG, batch); }
        if (TN > 3u) { store4s(acc.g2j3, rs + 8u, row0, col0 + 3u * WG, batch); }
    }
    if (TM > 12u) {
        { store4s(acc.g3j0, rs + 12u, row0, col0 + 0u * WG, batch); }
        if (TN > 1u) { store4s(acc.g3j1, rs + 12u, row0, col0 + 1u * WG, batch); }
        if (TN > 2u) { store4s(acc.g3j2, rs + 12u, row0, col0 + 2u * WG, batch); }
        if (TN > 3u) { store4s(acc.g3j3, rs + 12u, row0, col0 + 3u * WG, batch); }
    }
    if (TM > 16u) {
        { store4s(acc.g4j0, rs + 16u, row0, col0 + 0u * WG, batch); }
        if (TN > 1u) { store4s(acc.g4j1, rs + 16u, row0, col0 + 1u * WG, batch); }
        if (TN > 2u) { store4s(acc.g4j2, rs + 16u, row0, col0 + 2u * WG, batch); }
        if (TN > 3u) { store4s(acc.g4j3, rs + 16u, row0, col0 + 3u * WG, batch); }
    }
    if (TM > 20u) {
        { store4s(acc.g5j0, rs + 20u, row0, col0 + 0u * WG, batch); }
        if (TN > 1u) { store4s(acc.g5j1, rs + 20u, row0, col0 + 1u * WG, batch); }
        if (TN > 2u) { store4s(acc.g5j2, rs + 20u, row0, col0 + 2u * WG, batch); }
        if (TN > 3u) { store4s(acc.g5j3, rs + 20u, row0, col0 + 3u * WG, batch); }
    }
    if (TM > 24u) {
        { store4s(acc.g6j0, rs + 24u, row0, col0 + 0u * WG, batch); }
        if (TN > 1u) { store4s(acc.g6j1, rs + 24u, row0, col0 + 1u * WG, batch); }
        if (TN > 2u) { store4s(acc.g6j2, rs + 24u, row0, col0 + 2u * WG, batch); }
        if (TN > 3u) { store4s(acc.g6j3, rs + 24u, row0, col0 + 3u * WG, batch); }
    }
    if (TM > 28u) {
        { store4s(acc.g7j0, rs + 28u, row0, col0 + 0u * WG, batch); }
        if (TN > 1u) { store4s(acc.g7j1, rs + 28u, row0, col0 + 1u * WG, batch); }
        if (TN > 2u) { store4s(acc.g7j2, rs + 28u, row0, col0 + 2u * WG, batch); }
        if (TN > 3u) { store4s(acc.g7j3, rs + 28u, row0, col0 + 3u * WG, batch); }
    }
}

@compute @workgroup_size(16, 16)
fn matmul_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let row = gid.y;
    let batch = gid.z;
    if (row >= p.m || col >= p.n) {
        return;
    }
    var acc = 0.0;
    let ao = batch * p.a_sb + row * p.a_sm;
    let bo = batch * p.b_sb + col * p.b_sn;
    for (var k = 0u; k < p.k; k++) {
        acc = fma(f32(a[ao + k * p.a_sk]), f32(b[bo + k * p.b_sk]), acc);
    }
    epilogue(acc, row, col, batch);
}
