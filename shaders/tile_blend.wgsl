// tile_blend.wgsl: the seams of diffusers' tiled VAE (`AutoencoderKL.blend_v` / `blend_h`,
// `tiled_decode` / `_tiled_encode`). One tile b [P, th, tw] (P = batch x channels planes) is
// blended in place with the already blended tile above (top [P, top_h, tw]) and then with the
// one on the left (left [P, th, left_w]), in diffusers' order, in f32:
//   b[y, :] = top[top_h - ev + y, :] * (1 - y / ev) + b[y, :] * (y / ev)     for y < ev
//   b[:, x] = left[:, left_w - eh + x] * (1 - x / eh) + b[:, x] * (x / eh)   for x < eh
// then b[:, :crop_h, :crop_w] is written into out [P, out_h, out_w] at (out_y, out_x).
// ev = 0 / eh = 0 switch a side off (its binding then holds any small buffer).
//
// Dispatch: 1-D over the tile's elements, WG per workgroup, split over x/y (grid_1d).
// Bindings: 0 = top, 1 = left, 2 = tile (read_write, blended in place), 3 = out, 4 = params.
// Overrides: WG.

override WG: u32 = 256u;

struct Params {
    n: u32,       // tile elements
    th: u32,
    tw: u32,
    top_h: u32,
    left_w: u32,
    ev: u32,      // rows blended with top (0: none)
    eh: u32,      // columns blended with left (0: none)
    crop_h: u32,
    crop_w: u32,
    out_h: u32,
    out_w: u32,
    out_y: u32,
    out_x: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> top: array<T>;
@group(0) @binding(1) var<storage, read> left: array<T>;
@group(0) @binding(2) var<storage, read_write> tile: array<T>;
@group(0) @binding(3) var<storage, read_write> out: array<T>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn tile_blend(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    let plane = p.th * p.tw;
    let q = i / plane;
    let r = i % plane;
    let y = r / p.tw;
    let x = r % p.tw;
    var v = f32(tile[i]);
    if (y < p.ev) {
        let t = f32(y) / f32(p.ev);
        let a = f32(top[(q * p.top_h + p.top_h - p.ev + y) * p.tw + x]);
        v = a * (1.0 - t) + v * t;
    }
    if (x < p.eh) {
        let t = f32(x) / f32(p.eh);
        let a = f32(left[(q * p.th + y) * p.left_w + p.left_w - p.eh + x]);
        v = a * (1.0 - t) + v * t;
    }
    let o = T(v);
    tile[i] = o;
    if (y < p.crop_h && x < p.crop_w) {
        out[(q * p.out_h + p.out_y + y) * p.out_w + p.out_x + x] = o;
    }
}
