// attention_sg.wgsl: the subgroup fast path of attention.wgsl's attention_flash (same math, same
// layouts, same online softmax in log2 units), for head dims that are multiples of 4. Needs
// subgroups of at least 8 invocations (its own family, so that adapters without subgroups still
// build attention.wgsl); the dispatcher routes every other call to attention_flash.
//
// Why (see matmul_sg.wgsl): on lavapipe every storage load inside a loop is an 8-lane scalar
// loop whatever its address, so attention_flash, whose K / V loads are workgroup-uniform but
// issued by every lane, pays 8 lanes x 1 load for data one load would fetch. Here keys go 8 at
// a time and lane l (of each subgroup, l = subgroup_invocation_id % 8) loads key j + l's vec4s
// of K and V; subgroupBroadcast(x, jj) then hands key j + jj's vec4 to every lane (a register
// shuffle). Per 8 keys and lane: D/4 + DV/4 vec4 loads instead of 8 (D/4 + DV/4).
//   Each invocation owns 4 query rows (rows row0 + lid + r WG), as in attention_flash; per step
//   it computes 4 x 8 scores, one online-softmax update per row, then p V. The 32 scores are
//   scalar fma chains, not vec4 partial sums reduced at the end: 32 live values instead of 128
//   (llvmpipe spills them either way, 4x less traffic this way; measured 1.12x).
//
// Layout and bindings as attention.wgsl, vec4 only: 0 = q, 1 = k, 2 = v (as vec4s), 3 = bias
// (any buffer when has_bias = 0), 4 = out (vec4s), 5 = params.
// Dispatch: (ceil(Lq / (4 WG)), H, B) workgroups of WG invocations.
// Overrides: WG (invocations per workgroup), D and DV (head dims, multiples of 4, <= 160).

const DMAX4: u32 = 40u;
const LOG2E: f32 = 1.4426950408889634;
const NEG: f32 = -3.0e38;     // masked score; finite so that NEG - NEG is 0, never NaN

override WG: u32 = 16u;
override D: u32 = 64u;
override DV: u32 = 64u;
override D4: u32 = D / 4u;
override DV4: u32 = DV / 4u;

struct Params {
    lq: u32,
    lk: u32,
    heads: u32,
    d: u32,
    dv: u32,
    qk_row: u32,     // H * D: row stride of q and k (elements)
    v_row: u32,      // H * Dv: row stride of v and out
    bias_b: u32,
    scale: f32,
    causal: u32,
    has_bias: u32,
    batch: u32,
}

@group(0) @binding(0) var<storage, read> q4: array<T4>;
@group(0) @binding(1) var<storage, read> k4: array<T4>;
@group(0) @binding(2) var<storage, read> v4: array<T4>;
@group(0) @binding(3) var<storage, read> bias: array<T>;
@group(0) @binding(4) var<storage, read_write> out4: array<T4>;
@group(0) @binding(5) var<uniform> p: Params;

fn hsum(x: vec4<f32>) -> f32 {
    return (x.x + x.y) + (x.z + x.w);
}

fn hmax(x: vec4<f32>) -> f32 {
    return max(max(x.x, x.y), max(x.z, x.w));
}

// The bias of row base bb for keys jc (clamped), in log2 units.
fn bias4(bb: u32, jc: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(f32(bias[bb + jc.x]), f32(bias[bb + jc.y]), f32(bias[bb + jc.z]), f32(bias[bb + jc.w])) * LOG2E;
}

@compute @workgroup_size(WG)
fn attention_sg(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                @builtin(subgroup_invocation_id) sl: u32) {
    let b = wid.z;
    let h = wid.y;
    let row0 = wid.x * 4u * WG;
    let i = vec4<u32>(row0 + lid.x) + vec4<u32>(0u, WG, 2u * WG, 3u * WG);
    // Rows past Lq compute on a clamped row (control flow stays uniform) and store nothing.
    let ic = min(i, vec4<u32>(p.lq - 1u));
    let qs = p.scale * LOG2E;
    let qk4 = p.qk_row / 4u;
    let v4r = p.v_row / 4u;

    var q0: array<vec4<f32>, DMAX4>;
    var q1: array<vec4<f32>, DMAX4>;
    var q2: array<vec4<f32>, DMAX4>;
    var q3: array<vec4<f32>, DMAX4>;
    var a0: array<vec4<f32>, DMAX4>;
    var a1: array<vec4<f32>, DMAX4>;
    var a2: array<vec4<f32>, DMAX4>;
    var a3: array<vec4<f32>, DMAX4>;
    let qb = (b * p.lq + ic) * qk4 + h * D4;
    for (var c = 0u; c < D4; c++) {
        q0[c] = vec4<f32>(q4[qb[0] + c]) * qs;
        q1[c] = vec4<f32>(q4[qb[1] + c]) * qs;
        q2[c] = vec4<f32>(q4[qb[2] + c]) * qs;
        q3[c] = vec4<f32>(q4[qb[3] + c]) * qs;
    }
    for (var c = 0u; c < DV4; c++) {
        a0[c] = vec4<f32>(0.0);
        a1[c] = vec4<f32>(0.0);
        a2[c] = vec4<f32>(0.0);
        a3[c] = vec4<f32>(0.0);
    }

    // Causal: the workgroup's last row sees keys [0, last]; later keys are skipped uniformly.
    var kend = p.lk;
    if (p.causal != 0u) {
        kend = min(p.lk, row0 + 4u * WG);
    }
    let last = p.lk - 1u;
    let kbase = b * p.lk * qk4 + h * D4;
    let vbase = b * p.lk * v4r + h * DV4;
    let bbase = vec4<u32>(b * p.bias_b + h * p.lq * p.lk) + ic * p.lk;
    let lane = sl & 7u;
    var m = vec4<f32>(NEG);  // running max of each of the 4 rows
    var l = vec4<f32>(0.0);
    for (var j = 0u; j < kend; j += 8u) {
        // This lane's key (clamped; keys past the end are masked below).
        let jl = min(j + lane, last);
        let ko = kbase + jl * qk4;
        var s00 = 0.0;
        var s01 = 0.0;
        var s02 = 0.0;
        var s03 = 0.0;
        var s04 = 0.0;
        var s05 = 0.0;
        var s06 = 0.0;
        var s07 = 0.0;
        var s10 = 0.0;
        var s11 = 0.0;
        var s12 = 0.0;
        var s13 = 0.0;
        var s14 = 0.0;
        var s15 = 0.0;
        var s16 = 0.0;
        var s17 = 0.0;
        var s20 = 0.0;
        var s21 = 0.0;
        var s22 = 0.0;
        var s23 = 0.0;
        var s24 = 0.0;
        var s25 = 0.0;
        var s26 = 0.0;
        var s27 = 0.0;
        var s30 = 0.0;
        var s31 = 0.0;
        var s32 = 0.0;
        var s33 = 0.0;
        var s34 = 0.0;
        var s35 = 0.0;
        var s36 = 0.0;
        var s37 = 0.0;
        for (var c = 0u; c < D4; c++) {
            let kc = vec4<f32>(k4[ko + c]);
            let k0 = subgroupBroadcast(kc, 0u);
            s00 = fma(q0[c].w, k0.w, fma(q0[c].z, k0.z, fma(q0[c].y, k0.y, fma(q0[c].x, k0.x, s00))));
            s10 = fma(q1[c].w, k0.w, fma(q1[c].z, k0.z, fma(q1[c].y, k0.y, fma(q1[c].x, k0.x, s10))));
            s20 = fma(q2[c].w, k0.w, fma(q2[c].z, k0.z, fma(q2[c].y, k0.y, fma(q2[c].x, k0.x, s20))));
            s30 = fma(q3[c].w, k0.w, fma(q3[c].z, k0.z, fma(q3[c].y, k0.y, fma(q3[c].x, k0.x, s30))));
            let k1 = subgroupBroadcast(kc, 1u);
            s01 = fma(q0[c].w, k1.w, fma(q0[c].z, k1.z, fma(q0[c].y, k1.y, fma(q0[c].x, k1.x, s01))));
            s11 = fma(q1[c].w, k1.w, fma(q1[c].z, k1.z, fma(q1[c].y, k1.y, fma(q1[c].x, k1.x, s11))));
            s21 = fma(q2[c].w, k1.w, fma(q2[c].z, k1.z, fma(q2[c].y, k1.y, fma(q2[c].x, k1.x, s21))));
            s31 = fma(q3[c].w, k1.w, fma(q3[c].z, k1.z, fma(q3[c].y, k1.y, fma(q3[c].x, k1.x, s31))));
            let k2 = subgroupBroadcast(kc, 2u);
            s02 = fma(q0[c].w, k2.w, fma(q0[c].z, k2.z, fma(q0[c].y, k2.y, fma(q0[c].x, k2.x, s02))));
            s12 = fma(q1[c].w, k2.w, fma(q1[c].z, k2.z, fma(q1[c].y, k2.y, fma(q1[c].x, k2.x, s12))));
            s22 = fma(q2[c].w, k2.w, fma(q2[c].z, k2.z, fma(q2[c].y, k2.y, fma(q2[c].x, k2.x, s22))));
            s32 = fma(q3[c].w, k2.w, fma(q3[c].z, k2.z, fma(q3[c].y, k2.y, fma(q3[c].x, k2.x, s32))));
            let k3 = subgroupBroadcast(kc, 3u);
            s03 = fma(q0[c].w, k3.w, fma(q0[c].z, k3.z, fma(q0[c].y, k3.y, fma(q0[c].x, k3.x, s03))));
            s13 = fma(q1[c].w, k3.w, fma(q1[c].z, k3.z, fma(q1[c].y, k3.y, fma(q1[c].x, k3.x, s13))));
            s23 = fma(q2[c].w, k3.w, fma(q2[c].z, k3.z, fma(q2[c].y, k3.y, fma(q2[c].x, k3.x, s23))));
            s33 = fma(q3[c].w, k3.w, fma(q3[c].z, k3.z, fma(q3[c].y, k3.y, fma(q3[c].x, k3.x, s33))));
            let k4 = subgroupBroadcast(kc, 4u);
            s04 = fma(q0[c].w, k4.w, fma(q0[c].z, k4.z, fma(q0[c].y, k4.y, fma(q0[c].x, k4.x, s04))));
            s14 = fma(q1[c].w, k4.w, fma(q1[c].z, k4.z, fma(q1[c].y, k4.y, fma(q1[c].x, k4.x, s14))));
            s24 = fma(q2[c].w, k4.w, fma(q2[c].z, k4.z, fma(q2[c].y, k4.y, fma(q2[c].x, k4.x, s24))));
            s34 = fma(q3[c].w, k4.w, fma(q3[c].z, k4.z, fma(q3[c].y, k4.y, fma(q3[c].x, k4.x, s34))));
            let k5 = subgroupBroadcast(kc, 5u);
            s05 = fma(q0[c].w, k5.w, fma(q0[c].z, k5.z, fma(q0[c].y, k5.y, fma(q0[c].x, k5.x, s05))));
            s15 = fma(q1[c].w, k5.w, fma(q1[c].z, k5.z, fma(q1[c].y, k5.y, fma(q1[c].x, k5.x, s15))));
            s25 = fma(q2[c].w, k5.w, fma(q2[c].z, k5.z, fma(q2[c].y, k5.y, fma(q2[c].x, k5.x, s25))));
            s35 = fma(q3[c].w, k5.w, fma(q3[c].z, k5.z, fma(q3[c].y, k5.y, fma(q3[c].x, k5.x, s35))));
            let k6 = subgroupBroadcast(kc, 6u);
            s06 = fma(q0[c].w, k6.w, fma(q0[c].z, k6.z, fma(q0[c].y, k6.y, fma(q0[c].x, k6.x, s06))));
            s16 = fma(q1[c].w, k6.w, fma(q1[c].z, k6.z, fma(q1[c].y, k6.y, fma(q1[c].x, k6.x, s16))));
            s26 = fma(q2[c].w, k6.w, fma(q2[c].z, k6.z, fma(q2[c].y, k6.y, fma(q2[c].x, k6.x, s26))));
            s36 = fma(q3[c].w, k6.w, fma(q3[c].z, k6.z, fma(q3[c].y, k6.y, fma(q3[c].x, k6.x, s36))));
            let k7 = subgroupBroadcast(kc, 7u);
            s07 = fma(q0[c].w, k7.w, fma(q0[c].z, k7.z, fma(q0[c].y, k7.y, fma(q0[c].x, k7.x, s07))));
            s17 = fma(q1[c].w, k7.w, fma(q1[c].z, k7.z, fma(q1[c].y, k7.y, fma(q1[c].x, k7.x, s17))));
            s27 = fma(q2[c].w, k7.w, fma(q2[c].z, k7.z, fma(q2[c].y, k7.y, fma(q2[c].x, k7.x, s27))));
            s37 = fma(q3[c].w, k7.w, fma(q3[c].z, k7.z, fma(q3[c].y, k7.y, fma(q3[c].x, k7.x, s37))));
        }
        let jlo = vec4<u32>(j, j + 1u, j + 2u, j + 3u);
        let jhi = jlo + vec4<u32>(4u);
        let clo = min(jlo, vec4<u32>(last));
        let chi = min(jhi, vec4<u32>(last));
        var x0 = vec4<f32>(s00, s01, s02, s03);
        var y0 = vec4<f32>(s04, s05, s06, s07);
        var x1 = vec4<f32>(s10, s11, s12, s13);
        var y1 = vec4<f32>(s14, s15, s16, s17);
        var x2 = vec4<f32>(s20, s21, s22, s23);
        var y2 = vec4<f32>(s24, s25, s26, s27);
        var x3 = vec4<f32>(s30, s31, s32, s33);
        var y3 = vec4<f32>(s34, s35, s36, s37);
        if (p.has_bias != 0u) {
            x0 += bias4(bbase[0], clo);
            y0 += bias4(bbase[0], chi);
            x1 += bias4(bbase[1], clo);
            y1 += bias4(bbase[1], chi);
            x2 += bias4(bbase[2], clo);
            y2 += bias4(bbase[2], chi);
            x3 += bias4(bbase[3], clo);
            y3 += bias4(bbase[3], chi);
        }
        var vlo = vec4<u32>(kend);
        var vhi = vec4<u32>(kend);
        var lo0 = jlo < vlo;
        var hi0 = jhi < vhi;
        if (p.causal != 0u) {
            lo0 = lo0 & (jlo <= vec4<u32>(ic[0]));
            hi0 = hi0 & (jhi <= vec4<u32>(ic[0]));
        }
        x0 = select(vec4<f32>(NEG), x0, lo0);
        y0 = select(vec4<f32>(NEG), y0, hi0);
        var lo1 = jlo < vlo;
        var hi1 = jhi < vhi;
        if (p.causal != 0u) {
            lo1 = lo1 & (jlo <= vec4<u32>(ic[1]));
            hi1 = hi1 & (jhi <= vec4<u32>(ic[1]));
        }
        x1 = select(vec4<f32>(NEG), x1, lo1);
        y1 = select(vec4<f32>(NEG), y1, hi1);
        var lo2 = jlo < vlo;
        var hi2 = jhi < vhi;
        if (p.causal != 0u) {
            lo2 = lo2 & (jlo <= vec4<u32>(ic[2]));
            hi2 = hi2 & (jhi <= vec4<u32>(ic[2]));
        }
        x2 = select(vec4<f32>(NEG), x2, lo2);
        y2 = select(vec4<f32>(NEG), y2, hi2);
        var lo3 = jlo < vlo;
        var hi3 = jhi < vhi;
        if (p.causal != 0u) {
            lo3 = lo3 & (jlo <= vec4<u32>(ic[3]));
            hi3 = hi3 & (jhi <= vec4<u32>(ic[3]));
        }
        x3 = select(vec4<f32>(NEG), x3, lo3);
        y3 = select(vec4<f32>(NEG), y3, hi3);
        let mn = max(m, vec4<f32>(max(hmax(x0), hmax(y0)), max(hmax(x1), hmax(y1)), max(hmax(x2), hmax(y2)), max(hmax(x3), hmax(y3))));
        let corr = exp2(m - mn);
        m = mn;
        let px0 = exp2(x0 - mn[0]);
        let py0 = exp2(y0 - mn[0]);
        let px1 = exp2(x1 - mn[1]);
        let py1 = exp2(y1 - mn[1]);
        let px2 = exp2(x2 - mn[2]);
        let py2 = exp2(y2 - mn[2]);
        let px3 = exp2(x3 - mn[3]);
        let py3 = exp2(y3 - mn[3]);
        l = l * corr + vec4<f32>(hsum(px0) + hsum(py0), hsum(px1) + hsum(py1), hsum(px2) + hsum(py2), hsum(px3) + hsum(py3));
        let vo = vbase + jl * v4r;
        for (var c = 0u; c < DV4; c++) {
            let vc = vec4<f32>(v4[vo + c]);
            let w0 = subgroupBroadcast(vc, 0u);
            let w1 = subgroupBroadcast(vc, 1u);
            let w2 = subgroupBroadcast(vc, 2u);
            let w3 = subgroupBroadcast(vc, 3u);
            let w4 = subgroupBroadcast(vc, 4u);
            let w5 = subgroupBroadcast(vc, 5u);
            let w6 = subgroupBroadcast(vc, 6u);
            let w7 = subgroupBroadcast(vc, 7u);
            a0[c] = fma(vec4<f32>(py0.w), w7, fma(vec4<f32>(py0.z), w6, fma(vec4<f32>(py0.y), w5, fma(vec4<f32>(py0.x), w4, fma(vec4<f32>(px0.w), w3, fma(vec4<f32>(px0.z), w2, fma(vec4<f32>(px0.y), w1, fma(vec4<f32>(px0.x), w0, a0[c] * corr[0]))))))));
            a1[c] = fma(vec4<f32>(py1.w), w7, fma(vec4<f32>(py1.z), w6, fma(vec4<f32>(py1.y), w5, fma(vec4<f32>(py1.x), w4, fma(vec4<f32>(px1.w), w3, fma(vec4<f32>(px1.z), w2, fma(vec4<f32>(px1.y), w1, fma(vec4<f32>(px1.x), w0, a1[c] * corr[1]))))))));
            a2[c] = fma(vec4<f32>(py2.w), w7, fma(vec4<f32>(py2.z), w6, fma(vec4<f32>(py2.y), w5, fma(vec4<f32>(py2.x), w4, fma(vec4<f32>(px2.w), w3, fma(vec4<f32>(px2.z), w2, fma(vec4<f32>(px2.y), w1, fma(vec4<f32>(px2.x), w0, a2[c] * corr[2]))))))));
            a3[c] = fma(vec4<f32>(py3.w), w7, fma(vec4<f32>(py3.z), w6, fma(vec4<f32>(py3.y), w5, fma(vec4<f32>(py3.x), w4, fma(vec4<f32>(px3.w), w3, fma(vec4<f32>(px3.z), w2, fma(vec4<f32>(px3.y), w1, fma(vec4<f32>(px3.x), w0, a3[c] * corr[3]))))))));
        }
    }

    let inv = 1.0 / l;
    let ob = (b * p.lq + i) * v4r + h * DV4;
    if (i[0] < p.lq) {
        for (var c = 0u; c < DV4; c++) {
            out4[ob[0] + c] = T4(a0[c] * inv[0]);
        }
    }
    if (i[1] < p.lq) {
        for (var c = 0u; c < DV4; c++) {
            out4[ob[1] + c] = T4(a1[c] * inv[1]);
        }
    }
    if (i[2] < p.lq) {
        for (var c = 0u; c < DV4; c++) {
            out4[ob[2] + c] = T4(a2[c] * inv[2]);
        }
    }
    if (i[3] < p.lq) {
        for (var c = 0u; c < DV4; c++) {
            out4[ob[3] + c] = T4(a3[c] * inv[3]);
        }
    }
}
