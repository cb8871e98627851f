// layer_norm.wgsl: LayerNorm and RMSNorm (T5LayerNorm) over the last dimension of [rows, d].
//
// Dispatch: 1-D over row blocks (Context::grid_1d); a workgroup of WG invocations normalizes
// WG / TPR rows, TPR invocations per row. Each invocation strides over its row by TPR (vec4
// entries in the *4 entry points, elements in the *1 ones) accumulating in registers, so a
// reduction is one barrier plus a loop over the row's TPR partials (uniform addresses when
// TPR == WG). Layer norm is exact two-pass: mean of (x - x[0]), then sum of squared deviations;
// the re-reads hit the cache.
// Bindings: 0 = x, 1 = weight, 2 = bias (x again when absent), 3 = out, 4 = params.
// Overrides: WG, TPR (power of two dividing WG), MODE (0 layer norm, 1 rms norm),
//            AFFINE (bit 0: multiply by weight, bit 1: add bias).

override WG: u32 = 64u;
override TPR: u32 = 64u;
override MODE: u32 = 0u;
override AFFINE: u32 = 3u;

struct Params {
    rows: u32,
    d: u32,      // row length in elements
    eps: f32,
    _pad: u32,
}

// ---- vec4 path: d % 4 == 0 -------------------------------------------------------------
@group(0) @binding(0) var<storage, read> v_x: array<T4>;
@group(0) @binding(1) var<storage, read> v_w: array<T4>;
@group(0) @binding(2) var<storage, read> v_b: array<T4>;
@group(0) @binding(3) var<storage, read_write> v_out: array<T4>;
@group(0) @binding(4) var<uniform> v_p: Params;

@compute @workgroup_size(WG)
fn layer_norm4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let row_raw = (wid.x + wid.y * nwg.x) * (WG / TPR) + lid / TPR;
    let valid = row_raw < v_p.rows;
    let row = min(row_raw, v_p.rows - 1u);
    let lane = lid % TPR;
    let d4 = v_p.d / 4u;
    let base = row * d4;
    let n = f32(v_p.d);
    var mean = 0.0;
    var ss = vec4<f32>(0.0);
    if (MODE == 0u) {
        let k = f32(v_x[base].x);
        var s = vec4<f32>(0.0);
        for (var q = lane; q < d4; q += TPR) { s += vec4<f32>(v_x[base + q]) - k; }
        mean = k + row_sum_a(hsum(s), lid) / n;
        for (var q = lane; q < d4; q += TPR) {
            let e = vec4<f32>(v_x[base + q]) - mean;
            ss = fma(e, e, ss);
        }
    } else {
        for (var q = lane; q < d4; q += TPR) {
            let e = vec4<f32>(v_x[base + q]);
            ss = fma(e, e, ss);
        }
    }
    let rstd = inverseSqrt(row_sum_b(hsum(ss), lid) / n + v_p.eps);
    if (!valid) { return; }
    for (var q = lane; q < d4; q += TPR) {
        var y = (vec4<f32>(v_x[base + q]) - mean) * rstd;
        if ((AFFINE & 1u) != 0u) { y *= vec4<f32>(v_w[q]); }
        if ((AFFINE & 2u) != 0u) { y += vec4<f32>(v_b[q]); }
        v_out[base + q] = T4(y);
    }
}

// ---- scalar path: any d ----------------------------------------------------------------
@group(0) @binding(0) var<storage, read> s_x: array<T>;
@group(0) @binding(1) var<storage, read> s_w: array<T>;
@group(0) @binding(2) var<storage, read> s_b: array<T>;
@group(0) @binding(3) var<storage, read_write> s_out: array<T>;
@group(0) @binding(4) var<uniform> s_p: Params;

@compute @workgroup_size(WG)
fn layer_norm1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let row_raw = (wid.x + wid.y * nwg.x) * (WG / TPR) + lid / TPR;
    let valid = row_raw < s_p.rows;
    let row = min(row_raw, s_p.rows - 1u);
    let lane = lid % TPR;
    let d = s_p.d;
    let base = row * d;
    let n = f32(d);
    var mean = 0.0;
    var ss = 0.0;
    if (MODE == 0u) {
        let k = f32(s_x[base]);
        var s = 0.0;
        for (var q = lane; q < d; q += TPR) { s += f32(s_x[base + q]) - k; }
        mean = k + row_sum_a(s, lid) / n;
        for (var q = lane; q < d; q += TPR) {
            let e = f32(s_x[base + q]) - mean;
            ss = fma(e, e, ss);
        }
    } else {
        for (var q = lane; q < d; q += TPR) {
            let e = f32(s_x[base + q]);
            ss = fma(e, e, ss);
        }
    }
    let rstd = inverseSqrt(row_sum_b(ss, lid) / n + s_p.eps);
    if (!valid) { return; }
    for (var q = lane; q < d; q += TPR) {
        var y = (f32(s_x[base + q]) - mean) * rstd;
        if ((AFFINE & 1u) != 0u) { y *= f32(s_w[q]); }
        if ((AFFINE & 2u) != 0u) { y += f32(s_b[q]); }
        s_out[base + q] = T(y);
    }
}
