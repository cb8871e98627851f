// elementwise.wgsl: unary activations/scale and binary add/mul/sub with broadcasting.
//
// Dispatch: 1-D over outputs (vec4 entries: over groups of 4), WG invocations per workgroup,
// the workgroup count split over x and y (Context::grid_1d); index = gid.x + gid.y * nwg.x * WG.
// Bindings: 0 = a, 1 = b (binary only), then out, then params (uniform).
// Overrides: WG (workgroup size), ACT (activation id, common.wgsl), OP (0 add, 1 mul, 2 sub),
//            ACT_B (activation applied to b before OP: GEGLU is mul with ACT_B = gelu).

override WG: u32 = 256u;
override ACT: u32 = 0u;
override OP: u32 = 0u;
override ACT_B: u32 = 0u;

struct Params {
    shape: vec4<u32>,     // output shape, right-aligned to 4 dims
    a_strides: vec4<u32>, // element strides of a into the output's 4-D index (0 = broadcast)
    b_strides: vec4<u32>,
    a_offset: u32,
    b_offset: u32,
    n: u32,               // outputs (vec4 entries: groups of 4)
    alpha: f32,           // unary: y = act(alpha * x + beta)
    beta: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

fn combine(a: f32, b: f32) -> f32 {
    let bb = activate(b, ACT_B);
    switch OP {
        case 1u: { return a * bb; }
        case 2u: { return a - bb; }
        default: { return a + bb; }
    }
}

fn combine4(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    let bb = activate4(b, ACT_B);
    switch OP {
        case 1u: { return a * bb; }
        case 2u: { return a - bb; }
        default: { return a + bb; }
    }
}

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// ---- unary, contiguous, 4 elements per invocation --------------------------------------
@group(0) @binding(0) var<storage, read> u_x: array<T4>;
@group(0) @binding(1) var<storage, read_write> u_out: array<T4>;
@group(0) @binding(2) var<uniform> u_p: Params;

@compute @workgroup_size(WG)
fn unary4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= u_p.n) { return; }
    let x = vec4<f32>(u_x[i]) * u_p.alpha + u_p.beta;
    u_out[i] = T4(activate4(x, ACT));
}

// ---- binary, same shape, contiguous, 4 elements per invocation -------------------------
@group(0) @binding(0) var<storage, read> c_a: array<T4>;
@group(0) @binding(1) var<storage, read> c_b: array<T4>;
@group(0) @binding(2) var<storage, read_write> c_out: array<T4>;
@group(0) @binding(3) var<uniform> c_p: Params;

@compute @workgroup_size(WG)
fn binary4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= c_p.n) { return; }
    c_out[i] = T4(combine4(vec4<f32>(c_a[i]), vec4<f32>(c_b[i])));
}

// ---- binary with broadcasting and offsets (views such as chunk(2, dim=-1)) -------------
@group(0) @binding(0) var<storage, read> s_a: array<T>;
@group(0) @binding(1) var<storage, read> s_b: array<T>;
@group(0) @binding(2) var<storage, read_write> s_out: array<T>;
@group(0) @binding(3) var<uniform> s_p: Params;

@compute @workgroup_size(WG)
fn binary_strided(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= s_p.n) { return; }
    let d3 = i % s_p.shape.w;
    let r2 = i / s_p.shape.w;
    let d2 = r2 % s_p.shape.z;
    let r1 = r2 / s_p.shape.z;
    let d1 = r1 % s_p.shape.y;
    let d0 = r1 / s_p.shape.y;
    let idx = vec4<u32>(d0, d1, d2, d3);
    let sa = idx * s_p.a_strides;
    let sb = idx * s_p.b_strides;
    let ia = s_p.a_offset + sa.x + sa.y + sa.z + sa.w;
    let ib = s_p.b_offset + sb.x + sb.y + sb.z + sb.w;
    s_out[i] = T(combine(f32(s_a[ia]), f32(s_b[ib])));
}

// ---- binary with broadcasting, 4 outputs per invocation --------------------------------
// For views whose last dim is contiguous (stride 1) or broadcast (stride 0), with every
// other stride, the offsets and the output's last dim multiples of 4 (GEGLU chunks, bias and
// temb broadcasts): one index decomposition per 4 outputs and vec4 loads.
@group(0) @binding(0) var<storage, read> v_a: array<T4>;
@group(0) @binding(1) var<storage, read> v_b: array<T4>;
@group(0) @binding(2) var<storage, read_write> v_out: array<T4>;
@group(0) @binding(3) var<uniform> v_p: Params;

fn load4(is_a: bool, e: u32, contiguous: bool) -> vec4<f32> {
    var v: vec4<f32>;
    if (is_a) { v = vec4<f32>(v_a[e / 4u]); } else { v = vec4<f32>(v_b[e / 4u]); }
    if (contiguous) { return v; }
    return vec4<f32>(v[e % 4u]);
}

@compute @workgroup_size(WG)
fn binary_strided4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= v_p.n) { return; }
    let e = 4u * i;
    let d3 = e % v_p.shape.w;
    let r2 = e / v_p.shape.w;
    let d2 = r2 % v_p.shape.z;
    let r1 = r2 / v_p.shape.z;
    let d1 = r1 % v_p.shape.y;
    let d0 = r1 / v_p.shape.y;
    let idx = vec4<u32>(d0, d1, d2, d3);
    let sa = idx * v_p.a_strides;
    let sb = idx * v_p.b_strides;
    let a = load4(true, v_p.a_offset + sa.x + sa.y + sa.z + sa.w, v_p.a_strides.w == 1u);
    let b = load4(false, v_p.b_offset + sb.x + sb.y + sb.z + sb.w, v_p.b_strides.w == 1u);
    v_out[i] = T4(combine4(a, b));
}
