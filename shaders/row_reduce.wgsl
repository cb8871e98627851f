// row_reduce.wgsl: prepended (after common.wgsl) to the row-wise families (group_norm,
// layer_norm, softmax). Those declare `override WG` (invocations per workgroup) and
// `override TPR` (invocations per row, a power of two dividing WG). A row's TPR invocations
// combine their partial values through workgroup memory; with TPR == 1 there is no barrier at
// all (the fastest choice on CPU adapters, where barriers are expensive).
// Must be called in uniform control flow. Two arrays, so that two reductions in a row need
// no barrier between the second one's writes and the first one's reads.

var<workgroup> red_a: array<f32, WG>;
var<workgroup> red_b: array<f32, WG>;

// First slot of this invocation's row; a constant 0 when one row fills the workgroup, so the
// loads that follow are uniform.
fn row_base(lid: u32) -> u32 {
    return select(lid & ~(TPR - 1u), 0u, TPR == WG);
}

fn row_sum_a(v: f32, lid: u32) -> f32 {
    if (TPR == 1u) { return v; }
    red_a[lid] = v;
    workgroupBarrier();
    var s = 0.0;
    for (var i = 0u; i < TPR; i++) { s += red_a[row_base(lid) + i]; }
    return s;
}

fn row_sum_b(v: f32, lid: u32) -> f32 {
    if (TPR == 1u) { return v; }
    red_b[lid] = v;
    workgroupBarrier();
    var s = 0.0;
    for (var i = 0u; i < TPR; i++) { s += red_b[row_base(lid) + i]; }
    return s;
}

fn row_max_a(v: f32, lid: u32) -> f32 {
    if (TPR == 1u) { return v; }
    red_a[lid] = v;
    workgroupBarrier();
    var m = v;
    for (var i = 0u; i < TPR; i++) { m = max(m, red_a[row_base(lid) + i]); }
    return m;
}

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}
