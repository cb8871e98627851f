// attention.wgsl: memory-efficient multi-head attention, softmax(scale * Q K^T + bias) V, with
// flash-attention's online softmax: scores exist only for one tile of TK keys per query row.
//
// Layout (what diffusers' / transformers' to_q, to_k, to_v produce, heads never transposed):
//   q [B, Lq, H*D], k [B, Lk, H*D], v [B, Lk, H*Dv], out [B, Lq, H*Dv];
//   bias (optional, additive) [H, Lq, Lk] (bias_b = 0) or [B, H, Lq, Lk] (bias_b = H*Lq*Lk).
// Bindings: 0 = q, 1 = k, 2 = v, 3 = bias (any buffer when has_bias = 0), 4 = out, 5 = params.
//
// attention_flash: workgroup (x, y, z) = (query tile, head, batch); each of its WG invocations
//   owns one query row, so all invocations of a workgroup walk the same keys at the same time:
//   every K / V load has a workgroup-uniform address (a broadcast on SIMD CPUs, one cached line
//   on GPUs). Keys go in tiles of TK (scores kept in a private array), in blocks of 4 keys so
//   that each q / accumulator load feeds 4 independent FMA chains. Per tile: running max m,
//   running sum l, accumulator rescaled once by exp2(m_old - m_new). Scores are in log2 units
//   (scale and bias pre-multiplied by log2 e) so the softmax uses exp2.
// attention_naive: the benchmark's baseline: one invocation per (b, h, row), linear 1-D grid
//   (Context::grid_1d), scalar dot products, the online softmax rescaled after every key.
// Overrides: WG (query rows per workgroup = invocations), TK (keys per tile, a multiple of 4,
//   at most TK_MAX). Head dims up to DMAX = 4 * DMAX4 (q/k and v alike); any D, the last D % 4
//   elements take a scalar tail loop.

const DMAX4: u32 = 40u;       // head dim <= 160
const TK_MAX: u32 = 128u;
const LOG2E: f32 = 1.4426950408889634;
const NEG: f32 = -3.0e38;     // masked score; finite so that NEG - NEG is 0, never NaN

override WG: u32 = 64u;
override TK: u32 = 32u;

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
@group(0) @binding(3) var<storage, read> bias: array<T>;
@group(0) @binding(4) var<storage, read_write> out: array<T>;
@group(0) @binding(5) var<uniform> p: Params;

fn k4(base: u32) -> vec4<f32> {
    return vec4<f32>(f32(k[base]), f32(k[base + 1u]), f32(k[base + 2u]), f32(k[base + 3u]));
}

fn v4(base: u32) -> vec4<f32> {
    return vec4<f32>(f32(v[base]), f32(v[base + 1u]), f32(v[base + 2u]), f32(v[base + 3u]));
}

fn hsum(x: vec4<f32>) -> f32 {
    return (x.x + x.y) + (x.z + x.w);
}

@compute @workgroup_size(WG)
fn attention_flash(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let b = wid.z;
    let h = wid.y;
    let i = wid.x * WG + lid.x;
    // Rows past Lq compute on a clamped row (keeping control flow uniform) and store nothing.
    let ic = min(i, p.lq - 1u);
    let d4 = p.d / 4u;
    let dv4 = p.dv / 4u;
    let qs = p.scale * LOG2E;

    var qv: array<vec4<f32>, DMAX4>;
    var acc: array<vec4<f32>, DMAX4>;
    let qb = (b * p.lq + ic) * p.qk_row + h * p.d;
    for (var c = 0u; c < d4; c++) {
        let o = qb + 4u * c;
        qv[c] = vec4<f32>(f32(q[o]), f32(q[o + 1u]), f32(q[o + 2u]), f32(q[o + 3u])) * qs;
    }
    if (d4 < DMAX4) {
        qv[d4] = vec4<f32>(0.0);
        for (var e = 4u * d4; e < p.d; e++) {
            qv[d4][e % 4u] = f32(q[qb + e]) * qs;
        }
    }
    for (var c = 0u; c < DMAX4; c++) {
        acc[c] = vec4<f32>(0.0);
    }

    // Causal: the workgroup's last row sees keys [0, last]; later keys are skipped uniformly.
    var kend = p.lk;
    if (p.causal != 0u) {
        kend = min(p.lk, wid.x * WG + WG);
    }
    let kbase = b * p.lk * p.qk_row + h * p.d;
    let vbase = b * p.lk * p.v_row + h * p.dv;
    let bbase = b * p.bias_b + (h * p.lq + ic) * p.lk;
    var m = NEG;
    var l = 0.0;
    var sc: array<f32, TK_MAX>;
    for (var j0 = 0u; j0 < kend; j0 += TK) {
        let n = min(TK, kend - j0);
        // 1. scores of this tile, four keys at a time (keys past the end: clamped, masked)
        var tmax = m;
        for (var t = 0u; t < n; t += 4u) {
            let j = j0 + t;
            let last = p.lk - 1u;
            let r0 = kbase + min(j, last) * p.qk_row;
            let r1 = kbase + min(j + 1u, last) * p.qk_row;
            let r2 = kbase + min(j + 2u, last) * p.qk_row;
            let r3 = kbase + min(j + 3u, last) * p.qk_row;
            var s0 = vec4<f32>(0.0);
            var s1 = vec4<f32>(0.0);
            var s2 = vec4<f32>(0.0);
            var s3 = vec4<f32>(0.0);
            for (var c = 0u; c < d4; c++) {
                let qc = qv[c];
                let o = 4u * c;
                s0 = fma(qc, k4(r0 + o), s0);
                s1 = fma(qc, k4(r1 + o), s1);
                s2 = fma(qc, k4(r2 + o), s2);
                s3 = fma(qc, k4(r3 + o), s3);
            }
            var s = vec4<f32>(hsum(s0), hsum(s1), hsum(s2), hsum(s3));
            for (var e = 4u * d4; e < p.d; e++) {
                let qe = qv[d4][e % 4u];
                s += qe * vec4<f32>(f32(k[r0 + e]), f32(k[r1 + e]), f32(k[r2 + e]), f32(k[r3 + e]));
            }
            let jv = vec4<u32>(j, j + 1u, j + 2u, j + 3u);
            let jc = min(jv, vec4<u32>(last));
            if (p.has_bias != 0u) {
                s += vec4<f32>(f32(bias[bbase + jc.x]), f32(bias[bbase + jc.y]),
                               f32(bias[bbase + jc.z]), f32(bias[bbase + jc.w])) * LOG2E;
            }
            var valid = jv < vec4<u32>(j0 + n);
            if (p.causal != 0u) {
                valid = valid & (jv <= vec4<u32>(ic));
            }
            s = select(vec4<f32>(NEG), s, valid);
            sc[t] = s.x;
            sc[t + 1u] = s.y;
            sc[t + 2u] = s.z;
            sc[t + 3u] = s.w;
            tmax = max(tmax, max(max(s.x, s.y), max(s.z, s.w)));
        }
        // 2. rescale what came before to the new running max
        let corr = exp2(m - tmax);
        m = tmax;
        l *= corr;
        for (var c = 0u; c < min(dv4 + 1u, DMAX4); c++) {
            acc[c] *= corr;
        }
        // 3. accumulate p V, four keys at a time
        for (var t = 0u; t < n; t += 4u) {
            let j = j0 + t;
            let last = p.lk - 1u;
            let pj = exp2(vec4<f32>(sc[t], sc[t + 1u], sc[t + 2u], sc[t + 3u]) - m);
            l += hsum(pj);
            let r0 = vbase + min(j, last) * p.v_row;
            let r1 = vbase + min(j + 1u, last) * p.v_row;
            let r2 = vbase + min(j + 2u, last) * p.v_row;
            let r3 = vbase + min(j + 3u, last) * p.v_row;
            for (var c = 0u; c < dv4; c++) {
                let o = 4u * c;
                var a = acc[c];
                a = fma(vec4<f32>(pj.x), v4(r0 + o), a);
                a = fma(vec4<f32>(pj.y), v4(r1 + o), a);
                a = fma(vec4<f32>(pj.z), v4(r2 + o), a);
                a = fma(vec4<f32>(pj.w), v4(r3 + o), a);
                acc[c] = a;
            }
            for (var e = 4u * dv4; e < p.dv; e++) {
                acc[dv4][e % 4u] += dot(pj, vec4<f32>(f32(v[r0 + e]), f32(v[r1 + e]), f32(v[r2 + e]), f32(v[r3 + e])));
            }
        }
    }

    if (i < p.lq) {
        let inv = 1.0 / l;
        let ob = (b * p.lq + i) * p.v_row + h * p.dv;
        for (var c = 0u; c < dv4; c++) {
            let a = acc[c] * inv;
            let o = ob + 4u * c;
            out[o] = T(a.x);
            out[o + 1u] = T(a.y);
            out[o + 2u] = T(a.z);
            out[o + 3u] = T(a.w);
        }
        for (var e = 4u * dv4; e < p.dv; e++) {
            out[ob + e] = T(acc[dv4][e % 4u] * inv);
        }
    }
}

@compute @workgroup_size(WG)
fn attention_naive(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * WG;
    if (idx >= p.batch * p.heads * p.lq) { return; }
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
