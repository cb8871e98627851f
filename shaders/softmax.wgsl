// softmax.wgsl: numerically stable softmax(scale * x) over the last dimension of [rows, d].
//
// Dispatch: 1-D over row blocks (Context::grid_1d); a workgroup of WG invocations handles
// WG / TPR rows, TPR invocations per row, each striding over its row by TPR (vec4 entries in
// softmax4, which needs d % 4 == 0; elements in softmax1). Three passes over the row, the last
// two from the cache: the row max of scale * x; e = exp(scale * x - max) written to out and
// summed; out *= 1 / sum. exp is evaluated once per element. A reduction is one barrier plus a
// loop over the row's TPR partials (uniform addresses when TPR == WG).
// Bindings: 0 = x, 1 = out, 2 = params.
// Overrides: WG, TPR (power of two dividing WG).

override WG: u32 = 128u;
override TPR: u32 = 128u;
override RECOMPUTE: u32 = 0u;

struct Params {
    rows: u32,
    d: u32,       // row length in load units (vec4 entries or elements)
    scale: f32,
    _pad: u32,
}

const NEG_BIG: f32 = -3.402823466e38;

// ---- vec4 path: d % 4 == 0 -------------------------------------------------------------
@group(0) @binding(0) var<storage, read> v_x: array<T4>;
@group(0) @binding(1) var<storage, read_write> v_out: array<T4>;
@group(0) @binding(2) var<uniform> v_p: Params;

@compute @workgroup_size(WG)
fn softmax4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row_raw = (wid.x + wid.y * nwg.x) * (WG / TPR) + lid / TPR;
    let valid = row_raw < v_p.rows;
    let row = min(row_raw, v_p.rows - 1u);
    let lane = lid % TPR;
    let d = v_p.d;
    let base = row * d;
    let sc = v_p.scale;
    var m4 = vec4<f32>(NEG_BIG);
    for (var q = lane; q < d; q += TPR) { m4 = max(m4, sc * vec4<f32>(v_x[base + q])); }
    let m = row_max_a(max(max(m4.x, m4.y), max(m4.z, m4.w)), lid);
    var s4 = vec4<f32>(0.0);
    if (valid) {
        for (var q = lane; q < d; q += TPR) {
            let e = exp(fma(vec4<f32>(v_x[base + q]), vec4<f32>(sc), vec4<f32>(-m)));
            if (RECOMPUTE == 0u) { v_out[base + q] = T4(e); }
            s4 += e;
        }
    }
    let inv = 1.0 / row_sum_b((s4.x + s4.y) + (s4.z + s4.w), lid);
    if (!valid) { return; }
    for (var q = lane; q < d; q += TPR) {
        if (RECOMPUTE == 0u) {
            v_out[base + q] = T4(vec4<f32>(v_out[base + q]) * inv);
        } else {
            v_out[base + q] = T4(exp(fma(vec4<f32>(v_x[base + q]), vec4<f32>(sc), vec4<f32>(-m))) * inv);
        }
    }
}

// ---- scalar path: any d ----------------------------------------------------------------
@group(0) @binding(0) var<storage, read> s_x: array<T>;
@group(0) @binding(1) var<storage, read_write> s_out: array<T>;
@group(0) @binding(2) var<uniform> s_p: Params;

@compute @workgroup_size(WG)
fn softmax1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row_raw = (wid.x + wid.y * nwg.x) * (WG / TPR) + lid / TPR;
    let valid = row_raw < s_p.rows;
    let row = min(row_raw, s_p.rows - 1u);
    let lane = lid % TPR;
    let d = s_p.d;
    let base = row * d;
    let sc = s_p.scale;
    var mx = NEG_BIG;
    for (var q = lane; q < d; q += TPR) { mx = max(mx, sc * f32(s_x[base + q])); }
    let m = row_max_a(mx, lid);
    var s = 0.0;
    if (valid) {
        for (var q = lane; q < d; q += TPR) {
            let e = exp(fma(f32(s_x[base + q]), sc, -m));
            if (RECOMPUTE == 0u) { s_out[base + q] = T(e); }
            s += e;
        }
    }
    let inv = 1.0 / row_sum_b(s, lid);
    if (!valid) { return; }
    for (var q = lane; q < d; q += TPR) {
        if (RECOMPUTE == 0u) {
            s_out[base + q] = T(f32(s_out[base + q]) * inv);
        } else {
            s_out[base + q] = T(exp(fma(f32(s_x[base + q]), sc, -m)) * inv);
        }
    }
}
