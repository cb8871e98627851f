// matmul_sg.wgsl: the aligned fast path of matmul.wgsl, out[b] = act(alpha * A[b] op(B[b]) + bias)
// for contiguous A [M,K] and B [K,N] or [N,K] (trans_b, nn.Linear) with K % 4 == 0 and
// N % 4 == 0. Needs subgroups of at least 8 invocations (its own family, so that adapters
// without subgroups still build matmul.wgsl); the dispatcher routes every other shape there.
//
// Why: on lavapipe every storage load inside a loop is an 8-lane scalar loop whatever its
// address, so cost follows the number of load instructions, not bytes. Here every load is a
// vec4 and fetches data some lane actually uses:
//   - each invocation owns 4 adjacent output columns (a vec4) of the TR rows that the whole
//     workgroup shares (TR vec4 accumulators);
//   - per 4 k: lane l of each subgroup loads A[row0 + 8j + l, k..k+3] for j < TR / 8 (one vec4
//     load covers 8 rows x 4 k), and subgroupBroadcast hands row r to every lane (a register
//     shuffle, no memory access);
//   - B: 4 vec4 loads, either rows k..k+3 of its 4 columns (B [K,N]) or its 4 columns'
//     k..k+3 (B [N,K], transposed in registers, which is free in llvmpipe's SoA layout).
//   So per lane and k, 4 + TR / 8 elements are loaded for 4 TR FMAs; matmul_tiled loads
//   TM + TN = 12 for 32. llvmpipe keeps the accumulators on the stack inside the loop anyway,
//   so a large TR costs no extra spills: TR = 32 measured 1.5x TR = 8.
//
// Dispatch: (ceil(N / (4 WG)), ceil(M / TR), batch) workgroups of WG invocations.
// Bindings: 0 = A, 1 = B, 2 = bias (any buffer when has_bias = 0), 3 = out, 4 = params.
// Overrides: WG (invocations per workgroup), TR (rows per workgroup, 1..32), TB (1 = B is [N,K]).

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
    // This lane's A rows row0 + 8j + (l % 8), clamped: rows past M are loaded, never stored.
    let arow = row0 + (sl & 7u);
    let ab = batch * p.a_sb4;
    let ao0 = ab + min(arow, p.m - 1u) * k4;
    let ao1 = ab + min(arow + 8u, p.m - 1u) * k4;
    let ao2 = ab + min(arow + 16u, p.m - 1u) * k4;
    let ao3 = ab + min(arow + 24u, p.m - 1u) * k4;
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
    var acc8 = vec4<f32>(0.0);
    var acc9 = vec4<f32>(0.0);
    var acc10 = vec4<f32>(0.0);
    var acc11 = vec4<f32>(0.0);
    var acc12 = vec4<f32>(0.0);
    var acc13 = vec4<f32>(0.0);
    var acc14 = vec4<f32>(0.0);
    var acc15 = vec4<f32>(0.0);
    var acc16 = vec4<f32>(0.0);
    var acc17 = vec4<f32>(0.0);
    var acc18 = vec4<f32>(0.0);
    var acc19 = vec4<f32>(0.0);
    var acc20 = vec4<f32>(0.0);
    var acc21 = vec4<f32>(0.0);
    var acc22 = vec4<f32>(0.0);
    var acc23 = vec4<f32>(0.0);
    var acc24 = vec4<f32>(0.0);
    var acc25 = vec4<f32>(0.0);
    var acc26 = vec4<f32>(0.0);
    var acc27 = vec4<f32>(0.0);
    var acc28 = vec4<f32>(0.0);
    var acc29 = vec4<f32>(0.0);
    var acc30 = vec4<f32>(0.0);
    var acc31 = vec4<f32>(0.0);
    for (var kq = 0u; kq < k4; kq++) {
        // avj: lane l holds A[row0 + 8j + l, k .. k + 3].
        let av0 = vec4<f32>(a[ao0 + kq]);
        var av1 = vec4<f32>(0.0);
        var av2 = vec4<f32>(0.0);
        var av3 = vec4<f32>(0.0);
        if (TR > 8u) { av1 = vec4<f32>(a[ao1 + kq]); }
        if (TR > 16u) { av2 = vec4<f32>(a[ao2 + kq]); }
        if (TR > 24u) { av3 = vec4<f32>(a[ao3 + kq]); }
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
            let r = subgroupBroadcast(av0, 0u);
            acc0 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc0))));
        }
        if (TR > 1u) {
            let r = subgroupBroadcast(av0, 1u);
            acc1 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc1))));
        }
        if (TR > 2u) {
            let r = subgroupBroadcast(av0, 2u);
            acc2 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc2))));
        }
        if (TR > 3u) {
            let r = subgroupBroadcast(av0, 3u);
            acc3 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc3))));
        }
        if (TR > 4u) {
            let r = subgroupBroadcast(av0, 4u);
            acc4 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc4))));
        }
        if (TR > 5u) {
            let r = subgroupBroadcast(av0, 5u);
            acc5 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc5))));
        }
        if (TR > 6u) {
            let r = subgroupBroadcast(av0, 6u);
            acc6 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc6))));
        }
        if (TR > 7u) {
            let r = subgroupBroadcast(av0, 7u);
            acc7 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc7))));
        }
        if (TR > 8u) {
            let r = subgroupBroadcast(av1, 0u);
            acc8 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc8))));
        }
        if (TR > 9u) {
            let r = subgroupBroadcast(av1, 1u);
            acc9 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc9))));
        }
        if (TR > 10u) {
            let r = subgroupBroadcast(av1, 2u);
            acc10 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc10))));
        }
        if (TR > 11u) {
            let r = subgroupBroadcast(av1, 3u);
            acc11 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc11))));
        }
        if (TR > 12u) {
            let r = subgroupBroadcast(av1, 4u);
            acc12 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc12))));
        }
        if (TR > 13u) {
            let r = subgroupBroadcast(av1, 5u);
            acc13 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc13))));
        }
        if (TR > 14u) {
            let r = subgroupBroadcast(av1, 6u);
            acc14 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc14))));
        }
        if (TR > 15u) {
            let r = subgroupBroadcast(av1, 7u);
            acc15 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc15))));
        }
        if (TR > 16u) {
            let r = subgroupBroadcast(av2, 0u);
            acc16 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc16))));
        }
        if (TR > 17u) {
            let r = subgroupBroadcast(av2, 1u);
            acc17 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc17))));
        }
        if (TR > 18u) {
            let r = subgroupBroadcast(av2, 2u);
            acc18 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc18))));
        }
        if (TR > 19u) {
            let r = subgroupBroadcast(av2, 3u);
            acc19 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc19))));
        }
        if (TR > 20u) {
            let r = subgroupBroadcast(av2, 4u);
            acc20 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc20))));
        }
        if (TR > 21u) {
            let r = subgroupBroadcast(av2, 5u);
            acc21 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc21))));
        }
        if (TR > 22u) {
            let r = subgroupBroadcast(av2, 6u);
            acc22 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc22))));
        }
        if (TR > 23u) {
            let r = subgroupBroadcast(av2, 7u);
            acc23 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc23))));
        }
        if (TR > 24u) {
            let r = subgroupBroadcast(av3, 0u);
            acc24 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc24))));
        }
        if (TR > 25u) {
            let r = subgroupBroadcast(av3, 1u);
            acc25 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc25))));
        }
        if (TR > 26u) {
            let r = subgroupBroadcast(av3, 2u);
            acc26 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc26))));
        }
        if (TR > 27u) {
            let r = subgroupBroadcast(av3, 3u);
            acc27 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc27))));
        }
        if (TR > 28u) {
            let r = subgroupBroadcast(av3, 4u);
            acc28 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc28))));
        }
        if (TR > 29u) {
            let r = subgroupBroadcast(av3, 5u);
            acc29 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc29))));
        }
        if (TR > 30u) {
            let r = subgroupBroadcast(av3, 6u);
            acc30 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc30))));
        }
        if (TR > 31u) {
            let r = subgroupBroadcast(av3, 7u);
            acc31 = fma(vec4<f32>(r.w), b3, fma(vec4<f32>(r.z), b2, fma(vec4<f32>(r.y), b1, fma(vec4<f32>(r.x), b0, acc31))));
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
    if (TR > 8u) { store_row(acc8, row0 + 8u, c4, batch); }
    if (TR > 9u) { store_row(acc9, row0 + 9u, c4, batch); }
    if (TR > 10u) { store_row(acc10, row0 + 10u, c4, batch); }
    if (TR > 11u) { store_row(acc11, row0 + 11u, c4, batch); }
    if (TR > 12u) { store_row(acc12, row0 + 12u, c4, batch); }
    if (TR > 13u) { store_row(acc13, row0 + 13u, c4, batch); }
    if (TR > 14u) { store_row(acc14, row0 + 14u, c4, batch); }
    if (TR > 15u) { store_row(acc15, row0 + 15u, c4, batch); }
    if (TR > 16u) { store_row(acc16, row0 + 16u, c4, batch); }
    if (TR > 17u) { store_row(acc17, row0 + 17u, c4, batch); }
    if (TR > 18u) { store_row(acc18, row0 + 18u, c4, batch); }
    if (TR > 19u) { store_row(acc19, row0 + 19u, c4, batch); }
    if (TR > 20u) { store_row(acc20, row0 + 20u, c4, batch); }
    if (TR > 21u) { store_row(acc21, row0 + 21u, c4, batch); }
    if (TR > 22u) { store_row(acc22, row0 + 22u, c4, batch); }
    if (TR > 23u) { store_row(acc23, row0 + 23u, c4, batch); }
    if (TR > 24u) { store_row(acc24, row0 + 24u, c4, batch); }
    if (TR > 25u) { store_row(acc25, row0 + 25u, c4, batch); }
    if (TR > 26u) { store_row(acc26, row0 + 26u, c4, batch); }
    if (TR > 27u) { store_row(acc27, row0 + 27u, c4, batch); }
    if (TR > 28u) { store_row(acc28, row0 + 28u, c4, batch); }
    if (TR > 29u) { store_row(acc29, row0 + 29u, c4, batch); }
    if (TR > 30u) { store_row(acc30, row0 + 30u, c4, batch); }
    if (TR > 31u) { store_row(acc31, row0 + 31u, c4, batch); }
}
