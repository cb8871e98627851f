// resample.wgsl: nearest-neighbour 2x upsampling of NCHW tensors (diffusers Upsample2D,
// F.interpolate(scale_factor=2, mode="nearest")).
//
// Dispatch: 1-D over input elements (N*C*H*W), WG per workgroup, split over x/y
// (Context::grid_1d). Each invocation writes its 2x2 output block.
// Bindings: 0 = x, 1 = out, 2 = params. Overrides: WG.

override WG: u32 = 256u;

struct Params {
    n: u32,  // input elements
    w: u32,  // input width
    h: u32,  // input height
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<T>;
@group(0) @binding(1) var<storage, read_write> out: array<T>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn upsample_nearest2x(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    let col = i % p.w;
    let row = (i / p.w) % p.h;
    let plane = i / (p.w * p.h);
    let w2 = 2u * p.w;
    let base = plane * 4u * p.w * p.h + 2u * row * w2 + 2u * col;
    let v = x[i];
    out[base] = v;
    out[base + 1u] = v;
    out[base + w2] = v;
    out[base + w2 + 1u] = v;
}

// The same for even W, two input elements per invocation and a vec4 store into each of the
// two output rows (n counts input pairs).
@group(0) @binding(0) var<storage, read> x2: array<T>;
@group(0) @binding(1) var<storage, read_write> out4: array<T4>;
@group(0) @binding(2) var<uniform> p2: Params;

@compute @workgroup_size(WG)
fn upsample_nearest2x_pairs(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p2.n) { return; }
    let e = 2u * i;
    let col = e % p2.w;
    let row = (e / p2.w) % p2.h;
    let plane = e / (p2.w * p2.h);
    let w2 = 2u * p2.w;
    let base = plane * 4u * p2.w * p2.h + 2u * row * w2 + 2u * col;
    let a = x2[e];
    let b = x2[e + 1u];
    let v = T4(a, a, b, b);
    out4[base / 4u] = v;
    out4[(base + w2) / 4u] = v;
}
