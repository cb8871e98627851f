// scheduler.wgsl: the samplers' elementwise update (one dispatch per denoising step), classifier-
// free guidance and the inpainting blend.
//
// Dispatch: 1-D over output elements, WG invocations per workgroup, the workgroup count split
// over x and y (Context::grid_1d); index = gid.x + gid.y * nwg.x * WG. All math in f32; T is
// the storage type (f32 or f16).
// Entries and bindings (then params, uniform, last):
//   sched_step     0 = x (sample), 1 = m (model output), 2 = noise, 3 = prev (previous x0), 4 = out
//   sched_step_x0  the same, then 5 = x0_out (multistep solvers keep the step's x0)
//            x0  = a0 * x + a1 * m, clamped to [lo, hi] when flags & CLIP
//            out = b_x * x + b_x0 * x0 + b_m * m + b_noise * noise + b_prev * prev
//            noise / prev are read only when flags & NOISE / flags & PREV (else any buffer).
//   cfg      0 = m ([2B, ...], unconditional half first), 1 = out ([B, ...]):
//            out = u + scale * (c - u), u = m[i], c = m[i + half]
//   blend    0 = a, 1 = b ([B, C, H, W]), 2 = mask ([B or 1, 1, H, W]), 3 = out:
//            out = (1 - mask) * a + mask * b, mask broadcast over channels
// Overrides: WG (workgroup size).

override WG: u32 = 256u;

const CLIP: u32 = 1u;
const NOISE: u32 = 2u;
const PREV: u32 = 4u;

struct Params {
    n: u32,           // output elements
    flags: u32,       // CLIP | NOISE | PREV
    hw: u32,          // blend: H * W
    chw: u32,         // blend: C * H * W
    mask_stride: u32, // blend: mask batch stride (0 = one mask for the whole batch)
    half: u32,        // cfg: elements in one half of the batch
    _pad0: u32,
    _pad1: u32,
    a0: f32,
    a1: f32,
    lo: f32,
    hi: f32,
    b_x: f32,
    b_x0: f32,
    b_m: f32,
    b_noise: f32,
    b_prev: f32,
    scale: f32,       // cfg: guidance scale
    _pad2: f32,
    _pad3: f32,
}

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

fn predict_x0(p: Params, x: f32, m: f32) -> f32 {
    var x0 = p.a0 * x + p.a1 * m;
    if ((p.flags & CLIP) != 0u) { x0 = clamp(x0, p.lo, p.hi); }
    return x0;
}

fn combine(p: Params, x: f32, m: f32, x0: f32, noise: f32, prev: f32) -> f32 {
    var out = p.b_x * x + p.b_x0 * x0 + p.b_m * m;
    if ((p.flags & NOISE) != 0u) { out += p.b_noise * noise; }
    if ((p.flags & PREV) != 0u) { out += p.b_prev * prev; }
    return out;
}

// ---- step ------------------------------------------------------------------------------
@group(0) @binding(0) var<storage, read> s_x: array<T>;
@group(0) @binding(1) var<storage, read> s_m: array<T>;
@group(0) @binding(2) var<storage, read> s_noise: array<T>;
@group(0) @binding(3) var<storage, read> s_prev: array<T>;
@group(0) @binding(4) var<storage, read_write> s_out: array<T>;
@group(0) @binding(5) var<uniform> s_p: Params;

@compute @workgroup_size(WG)
fn sched_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= s_p.n) { return; }
    let x = f32(s_x[i]);
    let m = f32(s_m[i]);
    var noise = 0.0;
    if ((s_p.flags & NOISE) != 0u) { noise = f32(s_noise[i]); }
    var prev = 0.0;
    if ((s_p.flags & PREV) != 0u) { prev = f32(s_prev[i]); }
    let x0 = predict_x0(s_p, x, m);
    s_out[i] = T(combine(s_p, x, m, x0, noise, prev));
}

// ---- step, also writing x0 -------------------------------------------------------------
@group(0) @binding(0) var<storage, read> k_x: array<T>;
@group(0) @binding(1) var<storage, read> k_m: array<T>;
@group(0) @binding(2) var<storage, read> k_noise: array<T>;
@group(0) @binding(3) var<storage, read> k_prev: array<T>;
@group(0) @binding(4) var<storage, read_write> k_out: array<T>;
@group(0) @binding(5) var<storage, read_write> k_x0: array<T>;
@group(0) @binding(6) var<uniform> k_p: Params;

@compute @workgroup_size(WG)
fn sched_step_x0(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= k_p.n) { return; }
    let x = f32(k_x[i]);
    let m = f32(k_m[i]);
    var noise = 0.0;
    if ((k_p.flags & NOISE) != 0u) { noise = f32(k_noise[i]); }
    var prev = 0.0;
    if ((k_p.flags & PREV) != 0u) { prev = f32(k_prev[i]); }
    // The stored x0 is rounded to T, as diffusers keeps model_outputs in the model's dtype.
    let x0 = f32(T(predict_x0(k_p, x, m)));
    k_x0[i] = T(x0);
    k_out[i] = T(combine(k_p, x, m, x0, noise, prev));
}

// ---- classifier-free guidance ----------------------------------------------------------
@group(0) @binding(0) var<storage, read> g_m: array<T>;
@group(0) @binding(1) var<storage, read_write> g_out: array<T>;
@group(0) @binding(2) var<uniform> g_p: Params;

@compute @workgroup_size(WG)
fn cfg(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= g_p.n) { return; }
    let u = f32(g_m[i]);
    let c = f32(g_m[i + g_p.half]);
    g_out[i] = T(u + g_p.scale * (c - u));
}

// ---- inpainting blend ------------------------------------------------------------------
@group(0) @binding(0) var<storage, read> b_a: array<T>;
@group(0) @binding(1) var<storage, read> b_b: array<T>;
@group(0) @binding(2) var<storage, read> b_mask: array<T>;
@group(0) @binding(3) var<storage, read_write> b_out: array<T>;
@group(0) @binding(4) var<uniform> b_p: Params;

@compute @workgroup_size(WG)
fn blend(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= b_p.n) { return; }
    let mk = f32(b_mask[(i / b_p.chw) * b_p.mask_stride + i % b_p.hw]);
    b_out[i] = T((1.0 - mk) * f32(b_a[i]) + mk * f32(b_b[i]));
}
