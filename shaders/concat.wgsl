// concat.wgsl: copies one input into its slice of a concatenation (torch.cat along any dim).
// The tensors are viewed as [outer, dim * inner]: input rows of `in_row` elements land at
// column `col_offset` of output rows of `out_row` elements. One dispatch per input.
//
// Dispatch: 1-D over the input's elements, WG per workgroup, split over x/y (grid_1d).
// Bindings: 0 = input, 1 = out, 2 = params. Overrides: WG.

override WG: u32 = 256u;

struct Params {
    n: u32,           // input elements
    in_row: u32,
    out_row: u32,
    col_offset: u32,
}

@group(0) @binding(0) var<storage, read> src: array<T>;
@group(0) @binding(1) var<storage, read_write> dst: array<T>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn concat_slice(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    let r = i / p.in_row;
    let c = i % p.in_row;
    dst[r * p.out_row + p.col_offset + c] = src[i];
}

// The same, 4 elements per invocation, when in_row, out_row and col_offset are multiples of 4
// (n counts vec4s; rows and offsets are still given in elements).
@group(0) @binding(0) var<storage, read> src4: array<T4>;
@group(0) @binding(1) var<storage, read_write> dst4: array<T4>;
@group(0) @binding(2) var<uniform> p4: Params;

@compute @workgroup_size(WG)
fn concat_slice4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p4.n) { return; }
    let e = 4u * i;
    let r = e / p4.in_row;
    let c = e % p4.in_row;
    dst4[(r * p4.out_row + p4.col_offset + c) / 4u] = src4[i];
}
