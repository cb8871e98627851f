// matmul_sg.wgsl: the aligned fast path of matmul.wgsl, out[b] = act(alpha * A[b] op(B[b]) + bias)
// for contiguous A [M,K] and B [K,N] or [N,K] (trans_b, nn.Linear) with K % 4 == 0 and
// N % 4 == 0. Needs subgroups of at least 8 invocations (its own family, so that adapters
// without subgroups still build matmul.wgsl); the dispatcher routes every other shape there.
//
// Why: on lavapipe every storage load inside a loop is an 8-lane scalar loop whatever its
// address, so cost follows the number of load instructions, not bytes. Here every load is a
// vec4 and fetches data some lane actually uses:
//   - each invocation owns 4 adjacent output columns (a vec4) of TR rows shared by the whole
//     workgroup (TR vec4 accumulators);
//   - per 4 k: lane l of each subgroup loads A[row0 + l, k..k+3] (one vec4 load covers TR <= 8
//     rows x 4 k), and subgroupBroadcast hands row r to every lane (a register shuffle);
//   - B: 4 vec4 loads, either rows k..k+3 of its 4 columns (B [K,N]) or its 4 columns'
//     k..k+3 (B [N,K], transposed in registers, which is free in llvmpipe's SoA layout).
//   So 5 load instructions per 16 x TR FMAs, against ~12 per 32 in matmul_tiled.
//
// Dispatch: (ceil(N / (4 WG)), ceil(M / TR), batch) workgroups of WG invocations.
// Bindings: 0 = A, 1 = B, 2 = bias (any buffer when has_bias = 0), 3 = out, 4 = params.
// Overrides: WG (invocations per workgroup), TR (rows per workgroup, 1..8), TB (1 = B is [N,K]).

override WG: u32 = 16u;
override TR: u32 = 8u;
override TB: u32 = 0u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    a_sb4: u32,    // batch stride of A in vec4s (0 = broadcast)
    b_sb4: u32,    // ... of B
    act: u32,      // activation id (common.wgsl)
    alpha: f32,
}

@group(0) @binding(0) var<storage, read> a: array<T4>;
@group(0) @binding(1) var<storage, read> b: array<T4>;
@group(0) @binding(2) var<storage, read> bias: array<T4>;
@group(0) @binding(3) var<storage, read_write> out: array<T4>;
@group(0) @binding(4) var<uniform> p: Params;

fn store_row(acc: vec4<f32>, row: u32, c4: u32, batch: u32) {
    if (row >= p.m || c4 * 4u >= p.n) { return; }
    var v = p.alpha * acc;
    if (p.has_bias != 0u) {
        v += vec4<f32>(bias[c4]);
    }
    out[(batch * p.m + row) * (p.n / 4u) + c4] = T4(activate4(v, p.act));
}

@compute @workgroup_size(WG)
fn matmul_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
             @builtin(subgroup_invocation_id) sl: u32) {
    let batch = wid.z;
    let k4 = p.k / 4u;
    let n4 = p.n / 4u;
    let row0 = wid.y * TR;
    // This lane's A row (clamped: rows past M are loaded but never stored).
    let arow = min(row0 + min(sl, 7u), p.m - 1u);
    let ao = batch * p.a_sb4 + arow * k4;
    // This lane's 4 columns (clamped likewise).
    let c4 = wid.x * WG + lid;
    let cl = min(c4, n4 - 1u);
    var bo = batch * p.b_sb4;
    var bstep = 1u;
    if (TB == 0u) {
        bo += cl;          // B[k, 4 cl .. 4 cl + 3] is b[bo + k * n4]
        bstep = n4;
    } else {
        bo += 4u * cl * k4; // B[4 cl + j, k .. k + 3] is b[bo + j * k4 + k / 4]
        bstep = k4;
    }
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    for (var kq = 0u; kq < k4; kq++) {
        let av = vec4<f32>(a[ao + kq]);
        // b0..b3: B[k + i, the 4 columns] for i = 0..3.
        var b0: vec4<f32>;
        var b1: vec4<f32>;
        var b2: vec4<f32>;
        var b3: vec4<f32>;
        if (TB == 0u) {
            let o = bo + 4u * kq * bstep;
            b0 = vec4<f32>(b[o]);
            b1 = vec4<f32>(b[o + bstep]);
            b2 = vec4<f32>(b[o + 2u * bstep]);
            b3 = vec4<f32>(b[o + 3u * bstep]);
        } else {
            let o = bo + kq;
            let w0 = vec4<f32>(b[o]);
            let w1 = vec4<f32>(b[o + bstep]);
            let w2 = vec4<f32>(b[o + 2u * bstep]);
            let w3 = vec4<f32>(b[o + 3u * bstep]);
            b0 = vec4<f32>(w0.x, w1.x, w2.x, w3.x);
            b1 = vec4<f32>(w0.y, w1.y, w2.y, w3.y);
            b2 = vec4<f32>(w0.z, w1.z, w2.z, w3.z);
            b3 = vec4<f32>(w0.w, w1.w, w2.w, w3.w);
        }
        if (TR > 0u) {
            let r = subgroupBroadcast(av, 0u);
            acc0 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc0))));
        }
        if (TR > 1u) {
            let r = subgroupBroadcast(av, 1u);
            acc1 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc1))));
        }
        if (TR > 2u) {
            let r = subgroupBroadcast(av, 2u);
            acc2 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc2))));
        }
        if (TR > 3u) {
            let r = subgroupBroadcast(av, 3u);
            acc3 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc3))));
        }
        if (TR > 4u) {
            let r = subgroupBroadcast(av, 4u);
            acc4 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc4))));
        }
        if (TR > 5u) {
            let r = subgroupBroadcast(av, 5u);
            acc5 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc5))));
        }
        if (TR > 6u) {
            let r = subgroupBroadcast(av, 6u);
            acc6 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc6))));
        }
        if (TR > 7u) {
            let r = subgroupBroadcast(av, 7u);
            acc7 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc7))));
        }
    }
    if (TR > 0u) { store_row(acc0, row0 + 0u, c4, batch); }
    if (TR > 1u) { store_row(acc1, row0 + 1u, c4, batch); }
    if (TR > 2u) { store_row(acc2, row0 + 2u, c4, batch); }
    if (TR > 3u) { store_row(acc3, row0 + 3u, c4, batch); }
    if (TR > 4u) { store_row(acc4, row0 + 4u, c4, batch); }
    if (TR > 5u) { store_row(acc5, row0 + 5u, c4, batch); }
    if (TR > 6u) { store_row(acc6, row0 + 6u, c4, batch); }
    if (TR > 7u) { store_row(acc7, row0 + 7u, c4, batch); }
}
