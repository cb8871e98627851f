// group_norm.wgsl: GroupNorm over x [N, C, inner] (inner = H*W, L or 1), optionally followed by
// an activation (SiLU in diffusers' ResnetBlock2D: norm1 -> nonlinearity).
//
// A group (n, g) is the contiguous run x[n, g*cpg .. (g+1)*cpg, :] of cpg*inner elements, so
// group norm is a row norm over N*G rows whose weight/bias are per channel.
// Dispatch: 1-D over row blocks (Context::grid_1d); a workgroup of WG invocations handles
// WG / TPR rows, TPR invocations per row, each striding over its row by TPR (vec4 entries in
// group_norm4, which needs inner % 4 == 0; elements in group_norm1). Exact two-pass statistics:
// mean of (x - x[0]), then the sum of squared deviations (the re-read hits the cache); a
// reduction is one barrier plus a loop over the row's TPR partials. The apply pass tracks each
// invocation's channel incrementally (no division per element) and folds weight, bias, mean
// and rstd into one fma per element.
// Bindings: 0 = x, 1 = weight, 2 = bias (x again when absent), 3 = out, 4 = params.
// Overrides: WG, TPR (power of two dividing WG), AFFINE (bit 0 weight, bit 1 bias),
//            ACT (activation id, common.wgsl; 3 = SiLU).

override WG: u32 = 128u;
override TPR: u32 = 128u;
override AFFINE: u32 = 3u;
override ACT: u32 = 0u;

struct Params {
    rows: u32,    // N * G
    groups: u32,  // G
    cpg: u32,     // channels per group
    inner: u32,   // per-channel length in load units (vec4 entries or elements)
    n: u32,       // row length in load units = cpg * inner
    step_c: u32,  // TPR / inner
    step_r: u32,  // TPR % inner
    count: f32,   // row length in elements
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// ---- vec4 path: inner % 4 == 0 ---------------------------------------------------------
@group(0) @binding(0) var<storage, read> v_x: array<T4>;
@group(0) @binding(1) var<storage, read> v_w: array<T>;
@group(0) @binding(2) var<storage, read> v_b: array<T>;
@group(0) @binding(3) var<storage, read_write> v_out: array<T4>;
@group(0) @binding(4) var<uniform> v_p: Params;

@compute @workgroup_size(WG)
fn group_norm4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let row_raw = (wid.x + wid.y * nwg.x) * (WG / TPR) + lid / TPR;
    let valid = row_raw < v_p.rows;
    let row = min(row_raw, v_p.rows - 1u);
    let lane = lid % TPR;
    let n = v_p.n;
    let base = row * n;
    let k = f32(v_x[base].x);
    var s = vec4<f32>(0.0);
    for (var q = lane; q < n; q += TPR) { s += vec4<f32>(v_x[base + q]) - k; }
    let mean = k + row_sum_a(hsum(s), lid) / v_p.count;
    var ss = vec4<f32>(0.0);
    for (var q = lane; q < n; q += TPR) {
        let e = vec4<f32>(v_x[base + q]) - mean;
        ss = fma(e, e, ss);
    }
    let rstd = inverseSqrt(row_sum_b(hsum(ss), lid) / v_p.count + v_p.eps);
    if (!valid) { return; }
    let ch0 = (row % v_p.groups) * v_p.cpg;
    var c = lane / v_p.inner;
    var r = lane % v_p.inner;
    for (var q = lane; q < n; q += TPR) {
        var a = rstd;
        var sh = 0.0;
        if ((AFFINE & 1u) != 0u) { a *= f32(v_w[ch0 + c]); }
        if ((AFFINE & 2u) != 0u) { sh = f32(v_b[ch0 + c]); }
        sh -= mean * a;
        v_out[base + q] = T4(activate4(fma(vec4<f32>(v_x[base + q]), vec4<f32>(a), vec4<f32>(sh)), ACT));
        r += v_p.step_r;
        c += v_p.step_c;
        if (r >= v_p.inner) { r -= v_p.inner; c += 1u; }
    }
}

// ---- scalar path: any inner ------------------------------------------------------------
@group(0) @binding(0) var<storage, read> s_x: array<T>;
@group(0) @binding(1) var<storage, read> s_w: array<T>;
@group(0) @binding(2) var<storage, read> s_b: array<T>;
@group(0) @binding(3) var<storage, read_write> s_out: array<T>;
@group(0) @binding(4) var<uniform> s_p: Params;

@compute @workgroup_size(WG)
fn group_norm1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let row_raw = (wid.x + wid.y * nwg.x) * (WG / TPR) + lid / TPR;
    let valid = row_raw < s_p.rows;
    let row = min(row_raw, s_p.rows - 1u);
    let lane = lid % TPR;
    let n = s_p.n;
    let base = row * n;
    let k = f32(s_x[base]);
    var s = 0.0;
    for (var q = lane; q < n; q += TPR) { s += f32(s_x[base + q]) - k; }
    let mean = k + row_sum_a(s, lid) / s_p.count;
    var ss = 0.0;
    for (var q = lane; q < n; q += TPR) {
        let e = f32(s_x[base + q]) - mean;
        ss = fma(e, e, ss);
    }
    let rstd = inverseSqrt(row_sum_b(ss, lid) / s_p.count + s_p.eps);
    if (!valid) { return; }
    let ch0 = (row % s_p.groups) * s_p.cpg;
    var c = lane / s_p.inner;
    var r = lane % s_p.inner;
    for (var q = lane; q < n; q += TPR) {
        var a = rstd;
        var sh = 0.0;
        if ((AFFINE & 1u) != 0u) { a *= f32(s_w[ch0 + c]); }
        if ((AFFINE & 2u) != 0u) { sh = f32(s_b[ch0 + c]); }
        sh -= mean * a;
        s_out[base + q] = T(activate(fma(f32(s_x[base + q]), a, sh), ACT));
        r += s_p.step_r;
        c += s_p.step_c;
        if (r >= s_p.inner) { r -= s_p.inner; c += 1u; }
    }
}
