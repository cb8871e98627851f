// attention.wgsl: memory-efficient multi-head attention, softmax(scale * Q K^T + bias) V, with
// flash-attention's online softmax: scores exist only for four keys at a time per query row.
//
// Layout (what diffusers' / transformers' to_q, to_k, to_v produce, heads never transposed):
//   q [B, Lq, H*D], k [B, Lk, H*D], v [B, Lk, H*Dv], out [B, Lq, H*Dv];
//   bias (optional, additive) [H, Lq, Lk] (bias_b = 0) or [B, H, Lq, Lk] (bias_b = H*Lq*Lk).
// Bindings: 0 = q, 1 = k, 2 = v, 3 = bias (any buffer when has_bias = 0), 4 = out, 5 = params.
//
// attention_flash: workgroup (x, y, z) = (query tile, head, batch); each of its WG invocations
//   owns one query row, so all invocations of a workgroup walk the same keys at the same time:
//   every K / V load has a workgroup-uniform address (a broadcast on SIMD CPUs, one cached line
//   on GPUs). Keys go four at a time: the four scores, then one online-softmax update (running
//   max m, running sum l, accumulator rescaled by exp2(m_old - m_new)), then p V. Scores are in
//   log2 units (scale and bias pre-multiplied by log2 e) so the softmax uses exp2. No Lq x Lk
//   matrix exists anywhere; per row the state is q, the accumulator, m and l.
// attention_naive: the benchmark's baseline: one invocation per (b, h, row), linear 1-D grid
//   (Context::grid_1d), scalar loops over runtime head dims, the softmax rescaled every key.
// Overrides: WG (query rows per workgroup = invocations); D and DV, the head dims of q/k and v
//   (attention_flash only): constant head dims let the compiler unroll the loops over them and
//   keep q and the accumulator in registers. Any D, DV up to 160; the last D % 4 elements take
//   a scalar tail.

const DMAX4: u32 = 41u;       // head dim <= 160, plus a slot the D % 4 tail may name
const LOG2E: f32 = 1.4426950408889634;
const NEG: f32 = -3.0e38;     // masked score; finite so that NEG - NEG is 0, never NaN

override WG: u32 = 64u;
override D: u32 = 64u;    // q/k head dim (attention_flash)
override DV: u32 = 64u;   // v head dim (attention_flash)
override D4: u32 = D / 4u;
override DV4: u32 = DV / 4u;
override VEC4: bool = false;  // D and DV multiples of 4: q / k / v read as vec4

struct Params {
    lq: u32,
    lk: u32,
    heads: u32,
    d: u32,          // q/k head dim
    dv: u32,         // v head dim
    qk_row: u32,     // H * D: row stride of q and k
    v_row: u32,      // H * Dv: row stride of v and out
    bias_b: u32,     // bias batch stride (0: one [H, Lq, Lk] bias for every batch)
    scale: f32,
    causal: u32,
    has_bias: u32,
    batch: u32,
}

@group(0) @binding(0) var<storage, read> q: array<T>;
@group(0) @binding(1) var<storage, read> k: array<T>;
@group(0) @binding(2) var<storage, read> v: array<T>;
// The same three buffers again, as vec4s (attention_flash with VEC4: one load per 4 elements).
@group(0) @binding(3) var<storage, read> q4: array<T4>;
@group(0) @binding(4) var<storage, read> k4: array<T4>;
@group(0) @binding(5) var<storage, read> v4: array<T4>;
@group(0) @binding(6) var<storage, read> bias: array<T>;
@group(0) @binding(7) var<storage, read_write> out: array<T>;
@group(0) @binding(8) var<uniform> p: Params;

// Loads of 4 consecutive elements of a q / k / v row, starting at element o = row start + 4c.
// The chunk c == D4 is the D % 4 tail: its elements past the head dim read as 0 (a select, so
// that whatever lies there, even NaN, never reaches the sum).
fn tail_mask(c: u32, d4: u32, d: u32) -> vec4<bool> {
    let n = select(4u, d % 4u, c == d4);
    return vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(n);
}

fn ldq(o: u32, c: u32) -> vec4<f32> {
    if (VEC4) { return vec4<f32>(q4[o / 4u]); }
    let x = vec4<f32>(f32(q[o]), f32(q[o + 1u]), f32(q[o + 2u]), f32(q[o + 3u]));
    return select(vec4<f32>(0.0), x, tail_mask(c, D4, D));
}

fn ldk(o: u32, c: u32) -> vec4<f32> {
    if (VEC4) { return vec4<f32>(k4[o / 4u]); }
    let x = vec4<f32>(f32(k[o]), f32(k[o + 1u]), f32(k[o + 2u]), f32(k[o + 3u]));
    return select(vec4<f32>(0.0), x, tail_mask(c, D4, D));
}

fn ldv(o: u32, c: u32) -> vec4<f32> {
    if (VEC4) { return vec4<f32>(v4[o / 4u]); }
    let x = vec4<f32>(f32(v[o]), f32(v[o + 1u]), f32(v[o + 2u]), f32(v[o + 3u]));
    return select(vec4<f32>(0.0), x, tail_mask(c, DV4, DV));
}

fn store(o: u32, c: u32, x: vec4<f32>) {
    let n = select(4u, DV % 4u, c == DV4);
    out[o] = T(x.x);
    if (n > 1u) { out[o + 1u] = T(x.y); }
    if (n > 2u) { out[o + 2u] = T(x.z); }
    if (n > 3u) { out[o + 3u] = T(x.w); }
}

fn hsum(x: vec4<f32>) -> f32 {
    return (x.x + x.y) + (x.z + x.w);
}

@compute @workgroup_size(WG)
fn attention_flash(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let b = wid.z;
    let h = wid.y;
    // Invocation lid owns rows row0 + lid + r * WG, r < 4 (consecutive lanes, consecutive rows).
    let row0 = wid.x * 4u * WG;
    let i = vec4<u32>(row0 + lid.x) + vec4<u32>(0u, WG, 2u * WG, 3u * WG);
    // Rows past Lq compute on a clamped row (keeping control flow uniform) and store nothing.
    let ic = min(i, vec4<u32>(p.lq - 1u));
    let qs = p.scale * LOG2E;

    // Loops over D4 / DV4 have constant trip counts once the overrides are set, so they unroll
    // and these arrays are indexed by constants (a dynamically indexed private array is slow).
    var q0: array<vec4<f32>, DMAX4>;
    var a0: array<vec4<f32>, DMAX4>;
    var q1: array<vec4<f32>, DMAX4>;
    var a1: array<vec4<f32>, DMAX4>;
    var q2: array<vec4<f32>, DMAX4>;
    var a2: array<vec4<f32>, DMAX4>;
    var q3: array<vec4<f32>, DMAX4>;
    var a3: array<vec4<f32>, DMAX4>;
    let qb = (b * p.lq + ic) * p.qk_row + h * D;
    for (var c = 0u; c < D4 + select(0u, 1u, D % 4u != 0u); c++) {
        q0[c] = ldq(qb[0] + 4u * c, c) * qs;
        q1[c] = ldq(qb[1] + 4u * c, c) * qs;
        q2[c] = ldq(qb[2] + 4u * c, c) * qs;
        q3[c] = ldq(qb[3] + 4u * c, c) * qs;
    }
    for (var c = 0u; c < DV4 + select(0u, 1u, DV % 4u != 0u); c++) {
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
    let kbase = b * p.lk * p.qk_row + h * D;
    let vbase = b * p.lk * p.v_row + h * DV;
    let bbase = vec4<u32>(b * p.bias_b + h * p.lq * p.lk) + ic * p.lk;
    var m = vec4<f32>(NEG);  // running max of each of the 4 rows
    var l = vec4<f32>(0.0);
    // Four keys per step: every K / V load feeds 4 rows' FMAs; the running max, sum and
    // accumulators are rescaled once per step.
    for (var j = 0u; j < kend; j += 4u) {
        let jv = vec4<u32>(j, j + 1u, j + 2u, j + 3u);
        let jc = min(jv, vec4<u32>(last)); // keys past the end: clamped here, masked below
        let rk = kbase + jc * p.qk_row;
        var s00 = vec4<f32>(0.0);
        var s01 = vec4<f32>(0.0);
        var s02 = vec4<f32>(0.0);
        var s03 = vec4<f32>(0.0);
        var s10 = vec4<f32>(0.0);
        var s11 = vec4<f32>(0.0);
        var s12 = vec4<f32>(0.0);
        var s13 = vec4<f32>(0.0);
        var s20 = vec4<f32>(0.0);
        var s21 = vec4<f32>(0.0);
        var s22 = vec4<f32>(0.0);
        var s23 = vec4<f32>(0.0);
        var s30 = vec4<f32>(0.0);
        var s31 = vec4<f32>(0.0);
        var s32 = vec4<f32>(0.0);
        var s33 = vec4<f32>(0.0);
        for (var c = 0u; c < D4 + select(0u, 1u, D % 4u != 0u); c++) {
            let k0 = ldk(rk[0] + 4u * c, c);
            s00 = fma(q0[c], k0, s00);
            s10 = fma(q1[c], k0, s10);
            s20 = fma(q2[c], k0, s20);
            s30 = fma(q3[c], k0, s30);
            let k1 = ldk(rk[1] + 4u * c, c);
            s01 = fma(q0[c], k1, s01);
            s11 = fma(q1[c], k1, s11);
            s21 = fma(q2[c], k1, s21);
            s31 = fma(q3[c], k1, s31);
            let k2 = ldk(rk[2] + 4u * c, c);
            s02 = fma(q0[c], k2, s02);
            s12 = fma(q1[c], k2, s12);
            s22 = fma(q2[c], k2, s22);
            s32 = fma(q3[c], k2, s32);
            let k3 = ldk(rk[3] + 4u * c, c);
            s03 = fma(q0[c], k3, s03);
            s13 = fma(q1[c], k3, s13);
            s23 = fma(q2[c], k3, s23);
            s33 = fma(q3[c], k3, s33);
        }
        var valid = jv < vec4<u32>(kend);
        var s0 = vec4<f32>(hsum(s00), hsum(s01), hsum(s02), hsum(s03));
        var s1 = vec4<f32>(hsum(s10), hsum(s11), hsum(s12), hsum(s13));
        var s2 = vec4<f32>(hsum(s20), hsum(s21), hsum(s22), hsum(s23));
        var s3 = vec4<f32>(hsum(s30), hsum(s31), hsum(s32), hsum(s33));
        if (p.has_bias != 0u) {
            s0 += vec4<f32>(f32(bias[bbase[0] + jc.x]), f32(bias[bbase[0] + jc.y]), f32(bias[bbase[0] + jc.z]), f32(bias[bbase[0] + jc.w])) * LOG2E;
            s1 += vec4<f32>(f32(bias[bbase[1] + jc.x]), f32(bias[bbase[1] + jc.y]), f32(bias[bbase[1] + jc.z]), f32(bias[bbase[1] + jc.w])) * LOG2E;
            s2 += vec4<f32>(f32(bias[bbase[2] + jc.x]), f32(bias[bbase[2] + jc.y]), f32(bias[bbase[2] + jc.z]), f32(bias[bbase[2] + jc.w])) * LOG2E;
            s3 += vec4<f32>(f32(bias[bbase[3] + jc.x]), f32(bias[bbase[3] + jc.y]), f32(bias[bbase[3] + jc.z]), f32(bias[bbase[3] + jc.w])) * LOG2E;
        }
        var v0 = valid;
        if (p.causal != 0u) { v0 = v0 & (jv <= vec4<u32>(ic[0])); }
        s0 = select(vec4<f32>(NEG), s0, v0);
        var v1 = valid;
        if (p.causal != 0u) { v1 = v1 & (jv <= vec4<u32>(ic[1])); }
        s1 = select(vec4<f32>(NEG), s1, v1);
        var v2 = valid;
        if (p.causal != 0u) { v2 = v2 & (jv <= vec4<u32>(ic[2])); }
        s2 = select(vec4<f32>(NEG), s2, v2);
        var v3 = valid;
        if (p.causal != 0u) { v3 = v3 & (jv <= vec4<u32>(ic[3])); }
        s3 = select(vec4<f32>(NEG), s3, v3);
        let mn = max(m, vec4<f32>(max(max(s0.x, s0.y), max(s0.z, s0.w)), max(max(s1.x, s1.y), max(s1.z, s1.w)), max(max(s2.x, s2.y), max(s2.z, s2.w)), max(max(s3.x, s3.y), max(s3.z, s3.w))));
        let corr = exp2(m - mn);
        m = mn;
        let p0 = exp2(s0 - mn[0]);
        let p1 = exp2(s1 - mn[1]);
        let p2 = exp2(s2 - mn[2]);
        let p3 = exp2(s3 - mn[3]);
        l = l * corr + vec4<f32>(hsum(p0), hsum(p1), hsum(p2), hsum(p3));
        let rv = vbase + jc * p.v_row;
        for (var c = 0u; c < DV4 + select(0u, 1u, DV % 4u != 0u); c++) {
            let w0 = ldv(rv[0] + 4u * c, c);
            let w1 = ldv(rv[1] + 4u * c, c);
            let w2 = ldv(rv[2] + 4u * c, c);
            let w3 = ldv(rv[3] + 4u * c, c);
            a0[c] = fma(vec4<f32>(p0.w), w3, fma(vec4<f32>(p0.z), w2, fma(vec4<f32>(p0.y), w1, fma(vec4<f32>(p0.x), w0, a0[c] * corr[0]))));
            a1[c] = fma(vec4<f32>(p1.w), w3, fma(vec4<f32>(p1.z), w2, fma(vec4<f32>(p1.y), w1, fma(vec4<f32>(p1.x), w0, a1[c] * corr[1]))));
            a2[c] = fma(vec4<f32>(p2.w), w3, fma(vec4<f32>(p2.z), w2, fma(vec4<f32>(p2.y), w1, fma(vec4<f32>(p2.x), w0, a2[c] * corr[2]))));
            a3[c] = fma(vec4<f32>(p3.w), w3, fma(vec4<f32>(p3.z), w2, fma(vec4<f32>(p3.y), w1, fma(vec4<f32>(p3.x), w0, a3[c] * corr[3]))));
        }
    }

    let inv = 1.0 / l;
    let ob = (b * p.lq + i) * p.v_row + h * DV;
    if (i[0] < p.lq) {
        for (var c = 0u; c < DV4 + select(0u, 1u, DV % 4u != 0u); c++) {
            store(ob[0] + 4u * c, c, a0[c] * inv[0]);
        }
    }
    if (i[1] < p.lq) {
        for (var c = 0u; c < DV4 + select(0u, 1u, DV % 4u != 0u); c++) {
            store(ob[1] + 4u * c, c, a1[c] * inv[1]);
        }
    }
    if (i[2] < p.lq) {
        for (var c = 0u; c < DV4 + select(0u, 1u, DV % 4u != 0u); c++) {
            store(ob[2] + 4u * c, c, a2[c] * inv[2]);
        }
    }
    if (i[3] < p.lq) {
        for (var c = 0u; c < DV4 + select(0u, 1u, DV % 4u != 0u); c++) {
            store(ob[3] + 4u * c, c, a3[c] * inv[3]);
        }
    }
}

@compute @workgroup_size(WG)
fn attention_naive(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * WG;
    if (idx >= p.batch * p.heads * p.lq) {
        // Never true (Lq >= 1); names the vec4 bindings so both entries share one layout.
        if (p.lq == 0u) { out[0] = q4[0].x + k4[0].x + v4[0].x; }
        return;
    }
    let i = idx % p.lq;
    let h = (idx / p.lq) % p.heads;
    let b = idx / (p.lq * p.heads);
    let qb = (b * p.lq + i) * p.qk_row + h * p.d;
    let kbase = b * p.lk * p.qk_row + h * p.d;
    let vbase = b * p.lk * p.v_row + h * p.dv;
    let bbase = b * p.bias_b + (h * p.lq + i) * p.lk;
    var kend = p.lk;
    if (p.causal != 0u) {
        kend = i + 1u;
    }
    var acc: array<f32, 4u * DMAX4>;
    for (var c = 0u; c < p.dv; c++) {
        acc[c] = 0.0;
    }
    var m = NEG;
    var l = 0.0;
    for (var j = 0u; j < kend; j++) {
        var s = 0.0;
        for (var c = 0u; c < p.d; c++) {
            s += f32(q[qb + c]) * f32(k[kbase + j * p.qk_row + c]);
        }
        s *= p.scale;
        if (p.has_bias != 0u) {
            s += f32(bias[bbase + j]);
        }
        let mn = max(m, s);
        let corr = exp(m - mn);
        let pj = exp(s - mn);
        l = l * corr + pj;
        for (var c = 0u; c < p.dv; c++) {
            acc[c] = acc[c] * corr + pj * f32(v[vbase + j * p.v_row + c]);
        }
        m = mn;
    }
    let ob = (b * p.lq + i) * p.v_row + h * p.dv;
    for (var c = 0u; c < p.dv; c++) {
        out[ob + c] = T(acc[c] / l);
    }
}
