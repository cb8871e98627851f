// elementwise.wgsl: unary activations/scale, binary add/mul/sub with broadcasting, the
// copy of a strided view into a contiguous tensor, and axpy from f32 into the storage type.
//
// Dispatch: 1-D over outputs (vec4 entries: over groups of 4), WG invocations per workgroup,
// the workgroup count split over x and y (Context::grid_1d); index = gid.x + gid.y * nwg.x * WG.
// Bindings: 0 = a, 1 = b (binary only), then out, then params (uniform); copy: 0 = x, 1 = out;
// axpy: 0 = x (f32), 1 = y (f32), 2 = out (T).
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

// The 4-D index of element e of a contiguous tensor of `shape`.
fn unravel(e: u32, shape: vec4<u32>) -> vec4<u32> {
    let d3 = e % shape.w;
    let r2 = e / shape.w;
    let d2 = r2 % shape.z;
    let r1 = r2 / shape.z;
    let d1 = r1 % shape.y;
    let d0 = r1 / shape.y;
    return vec4<u32>(d0, d1, d2, d3);
}

// offset + the dot product of an index with strides: where a view's element lives.
fn view_index(idx: vec4<u32>, strides: vec4<u32>, offset: u32) -> u32 {
    let s = idx * strides;
    return offset + s.x + s.y + s.z + s.w;
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
    let idx = unravel(i, s_p.shape);
    let ia = view_index(idx, s_p.a_strides, s_p.a_offset);
    let ib = view_index(idx, s_p.b_strides, s_p.b_offset);
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
    let idx = unravel(4u * i, v_p.shape);
    let a = load4(true, view_index(idx, v_p.a_strides, v_p.a_offset), v_p.a_strides.w == 1u);
    let b = load4(false, view_index(idx, v_p.b_strides, v_p.b_offset), v_p.b_strides.w == 1u);
    v_out[i] = T4(combine4(a, b));
}

// ---- copy of a strided view (torch's .contiguous() of a crop, narrow or chunk) -----------
// T to T, never through f32: every bit (signed zeros, NaN payloads) is kept. Uses shape,
// a_strides, a_offset and n of the params.
@group(0) @binding(0) var<storage, read> k_x: array<T>;
@group(0) @binding(1) var<storage, read_write> k_out: array<T>;
@group(0) @binding(2) var<uniform> k_p: Params;

@compute @workgroup_size(WG)
fn copy_strided(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= k_p.n) { return; }
    k_out[i] = k_x[view_index(unravel(i, k_p.shape), k_p.a_strides, k_p.a_offset)];
}

// The same, 4 outputs per invocation, when the view's last dim is contiguous and its other
// strides, its offset and its last dim are multiples of 4 (n counts vec4s).
@group(0) @binding(0) var<storage, read> k4_x: array<T4>;
@group(0) @binding(1) var<storage, read_write> k4_out: array<T4>;
@group(0) @binding(2) var<uniform> k4_p: Params;

@compute @workgroup_size(WG)
fn copy_strided4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= k4_p.n) { return; }
    k4_out[i] = k4_x[view_index(unravel(4u * i, k4_p.shape), k4_p.a_strides, k4_p.a_offset) / 4u];
}

// ---- axpy: out = T(x + alpha * y), x and y f32 whatever T is ----------------------------
// A LoRA merge: W + s·ΔW computed in f32 and stored in the model's dtype. One element per
// invocation (odd sizes, 2-byte f16 outputs). Uses alpha and n of the params.
@group(0) @binding(0) var<storage, read> ax_x: array<f32>;
@group(0) @binding(1) var<storage, read> ax_y: array<f32>;
@group(0) @binding(2) var<storage, read_write> ax_out: array<T>;
@group(0) @binding(3) var<uniform> ax_p: Params;

@compute @workgroup_size(WG)
fn axpy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= ax_p.n) { return; }
    ax_out[i] = T(ax_x[i] + ax_p.alpha * ax_y[i]);
}
