// conv2d.wgsl: 2-D convolution, NCHW input [N, Cin, H, W], weight [Cout, Cin, KH, KW] (PyTorch
// layout), optional bias [Cout], output [N, Cout, Ho, Wo], fused activation.
//
// conv2d (implicit GEMM): the conv is the matmul [Cout, Cin*KH*KW] x [Cin*KH*KW, N*Ho*Wo]; the
//      im2col operand is never materialized, each input value is read straight from x with the
//      zero padding done by bounds checks. One invocation owns a TC x 4 register tile: TC
//      output channels x 4 output pixels adjacent along one output row (one vec4 accumulator
//      per channel). All invocations of a workgroup share the same TC channels
//      (workgroup_id.y) and differ in pixel tile, so on SIMD adapters (llvmpipe: 8 lanes) the
//      weight loads are uniform broadcasts and only the input loads are per-lane gathers.
//      MODE 1 (3x3 kernel, stride 1): an invocation loads the 6 input values its 4 pixels
//      need from one input row once and reuses them for the 3 taps (6 loads instead of 12).
//      MODE 2 (3x3, stride 1, padding 1, W % 4 == 0): the same 6 values as one aligned vec4
//      load (x4, the same buffer as x) and two scalar loads. MODE 3 (1x1, stride 1, padding 0,
//      W % 4 == 0): one vec4 load per input channel. MODE 0: kernel size, stride and padding
//      are runtime values and each tap loads 4 values.
//      The accumulators are named private variables, not an array: llvmpipe keeps arrays that
//      are indexed in loops in memory.
//      Dispatch: x = pixel tiles / WG, y = ceil(Cout / TC); pixel tiles are N*Ho*ceil(Wo/4),
//      numbered with ox fastest.
// conv2d_naive: direct convolution, one output per invocation (benchmark baseline). 1-D grid
//      over outputs split over x/y (Context::grid_1d).
// Bindings: conv2d: 0 = x, 1 = x again as vec4s, 2 = packed weight, 3 = bias (the packed weight
//      again when there is none, with has_bias = 0), 4 = out, 5 = params (uniform);
//      conv2d_naive: 0 = x, 1 = weight, 2 = bias, 3 = out, 4 = params.
// pack_weight: weight [Cout, Cin*KH*KW] -> packed [Cin*KH*KW, cout4] of vec4 (4 consecutive
//      output channels, zero past Cout), so one load gives a tap's weight for 4 channels.
//      1-D grid over packed vec4s (Context::grid_1d). Bindings: 0 = weight, 1 = packed, 2 = params.
// Overrides: WG (workgroup size), TC (output channels per invocation: 4 or 8), MODE (input
//      path, above), ACT (activation id, common.wgsl).
override WG: u32 = 64u;
override TC: u32 = 8u;
override MODE: u32 = 0u;
override ACT: u32 = 0u;

struct Params {
    n: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    pad: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    cout4: u32,     // vec4 columns of the packed weight: at least ceil(Cout / TC) * TC / 4
    tiles_w: u32,   // pixel tiles per output row: ceil(Wo / 4)
    n_tiles: u32,   // N * Ho * tiles_w
    has_bias: u32,
    n_out: u32,     // naive kernel: outputs
}

@group(0) @binding(0) var<storage, read> x: array<T>;
@group(0) @binding(1) var<storage, read> x4: array<T4>; // the same buffer as x
@group(0) @binding(2) var<storage, read> wp: array<T4>;
@group(0) @binding(3) var<storage, read> bias: array<T>;
@group(0) @binding(4) var<storage, read_write> out: array<T>;
@group(0) @binding(5) var<uniform> p: Params;

var<private> a0: vec4<f32>;
var<private> a1: vec4<f32>;
var<private> a2: vec4<f32>;
var<private> a3: vec4<f32>;
var<private> a4: vec4<f32>;
var<private> a5: vec4<f32>;
var<private> a6: vec4<f32>;
var<private> a7: vec4<f32>;
var<private> g_co0: u32;

// One tap: every channel's accumulator += its weight at flat tap index k times the 4 pixels'
// inputs. The packed weights hold 4 channels per vec4 (one load instead of four: on llvmpipe
// each storage load costs a loop over the lanes, whatever its width).
fn tap(xv: vec4<f32>, k: u32) {
    let i = k * p.cout4 + g_co0 / 4u;
    let w0 = vec4<f32>(wp[i]);
    a0 = fma(vec4<f32>(w0.x), xv, a0);
    a1 = fma(vec4<f32>(w0.y), xv, a1);
    a2 = fma(vec4<f32>(w0.z), xv, a2);
    a3 = fma(vec4<f32>(w0.w), xv, a3);
    if (TC > 4u) {
        let w1 = vec4<f32>(wp[i + 1u]);
        a4 = fma(vec4<f32>(w1.x), xv, a4);
        a5 = fma(vec4<f32>(w1.y), xv, a5);
        a6 = fma(vec4<f32>(w1.z), xv, a6);
        a7 = fma(vec4<f32>(w1.w), xv, a7);
    }
}

// Input at column ix of the row starting at xrow; zero outside the image (padding). Negative
// columns wrapped to huge unsigned values, so one compare is the bounds check.
fn ld(xrow: u32, ix: u32, row_ok: bool) -> f32 {
    let ok = row_ok && ix < p.w;
    return select(0.0, f32(x[select(0u, xrow + ix, ok)]), ok);
}

// Four inputs at an index that is a multiple of 4 (W % 4 == 0), zero if the row is outside.
fn ld4(i: u32, row_ok: bool) -> vec4<f32> {
    return select(vec4<f32>(0.0), vec4<f32>(x4[select(0u, i / 4u, row_ok)]), row_ok);
}

fn store(c: u32, v: vec4<f32>, n: u32, oy: u32, ox0: u32) {
    let co = g_co0 + c;
    if (c >= TC || co >= p.cout) {
        return;
    }
    var b = 0.0;
    if (p.has_bias != 0u) {
        b = f32(bias[co]);
    }
    let o = activate4(v + b, ACT);
    let base = ((n * p.cout + co) * p.ho + oy) * p.wo + ox0;
    let m = p.wo - ox0;
    out[base] = T(o.x);
    if (m > 1u) { out[base + 1u] = T(o.y); }
    if (m > 2u) { out[base + 2u] = T(o.z); }
    if (m > 3u) { out[base + 3u] = T(o.w); }
}

@compute @workgroup_size(WG)
fn conv2d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tile = wid.x * WG + lid.x;
    g_co0 = wid.y * TC;
    // Out-of-range tiles still run the loop (on a clamped tile) so that the workgroup stays
    // converged; they write nothing.
    let t = min(tile, p.n_tiles - 1u);
    let tx = t % p.tiles_w;
    let r = t / p.tiles_w;
    let oy = r % p.ho;
    let n = r / p.ho;
    let ox0 = tx * 4u;
    let s = p.stride;
    let ix0 = ox0 * s - p.pad;
    let iy0 = oy * s - p.pad;
    let hw = p.h * p.w;
    let x_img = n * p.cin * hw;

    for (var ci = 0u; ci < p.cin; ci++) {
        let xc = x_img + ci * hw;
        let wc = ci * p.kh * p.kw;
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = iy0 + ky;
            let row_ok = iy < p.h;
            let xrow = xc + iy * p.w;
            let wk = wc + ky * p.kw;
            if (MODE == 2u) {
                // Columns ox0-1 .. ox0+4: one aligned vec4 and two scalars.
                let c = ld4(xrow + ox0, row_ok);
                let r0 = ld(xrow, ox0 - 1u, row_ok);
                let r5 = ld(xrow, ox0 + 4u, row_ok);
                tap(vec4<f32>(r0, c.xyz), wk);
                tap(c, wk + 1u);
                tap(vec4<f32>(c.yzw, r5), wk + 2u);
            } else if (MODE == 3u) {
                tap(ld4(xrow + ox0, row_ok), wk);
            } else if (MODE == 1u) {
                let r0 = ld(xrow, ix0, row_ok);
                let r1 = ld(xrow, ix0 + 1u, row_ok);
                let r2 = ld(xrow, ix0 + 2u, row_ok);
                let r3 = ld(xrow, ix0 + 3u, row_ok);
                let r4 = ld(xrow, ix0 + 4u, row_ok);
                let r5 = ld(xrow, ix0 + 5u, row_ok);
                tap(vec4<f32>(r0, r1, r2, r3), wk);
                tap(vec4<f32>(r1, r2, r3, r4), wk + 1u);
                tap(vec4<f32>(r2, r3, r4, r5), wk + 2u);
            } else {
                for (var kx = 0u; kx < p.kw; kx++) {
                    let ix = ix0 + kx;
                    let xv = vec4<f32>(
                        ld(xrow, ix, row_ok),
                        ld(xrow, ix + s, row_ok),
                        ld(xrow, ix + 2u * s, row_ok),
                        ld(xrow, ix + 3u * s, row_ok),
                    );
                    tap(xv, wk + kx);
                }
            }
        }
    }

    if (tile >= p.n_tiles) {
        return;
    }
    store(0u, a0, n, oy, ox0);
    store(1u, a1, n, oy, ox0);
    store(2u, a2, n, oy, ox0);
    store(3u, a3, n, oy, ox0);
    store(4u, a4, n, oy, ox0);
    store(5u, a5, n, oy, ox0);
    store(6u, a6, n, oy, ox0);
    store(7u, a7, n, oy, ox0);
}

@group(0) @binding(0) var<storage, read> n_x: array<T>;
@group(0) @binding(1) var<storage, read> n_w: array<T>;
@group(0) @binding(2) var<storage, read> n_bias: array<T>;
@group(0) @binding(3) var<storage, read_write> n_out: array<T>;
@group(0) @binding(4) var<uniform> n_p: Params;

@compute @workgroup_size(WG)
fn conv2d_naive(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= n_p.n_out) {
        return;
    }
    let ox = i % n_p.wo;
    let r0 = i / n_p.wo;
    let oy = r0 % n_p.ho;
    let r1 = r0 / n_p.ho;
    let co = r1 % n_p.cout;
    let n = r1 / n_p.cout;
    var s = 0.0;
    for (var ci = 0u; ci < n_p.cin; ci++) {
        for (var ky = 0u; ky < n_p.kh; ky++) {
            let iy = oy * n_p.stride + ky - n_p.pad;
            for (var kx = 0u; kx < n_p.kw; kx++) {
                let ix = ox * n_p.stride + kx - n_p.pad;
                if (iy < n_p.h && ix < n_p.w) {
                    let xv = f32(n_x[((n * n_p.cin + ci) * n_p.h + iy) * n_p.w + ix]);
                    let wv = f32(n_w[((co * n_p.cin + ci) * n_p.kh + ky) * n_p.kw + kx]);
                    s = fma(wv, xv, s);
                }
            }
        }
    }
    if (n_p.has_bias != 0u) {
        s += f32(n_bias[co]);
    }
    n_out[i] = T(activate(s, ACT));
}

@group(0) @binding(0) var<storage, read> k_w: array<T>;
@group(0) @binding(1) var<storage, read_write> k_out: array<T4>;
@group(0) @binding(2) var<uniform> k_p: Params;

@compute @workgroup_size(WG)
fn pack_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= k_p.n_out) {
        return;
    }
    let kk = k_p.cin * k_p.kh * k_p.kw;
    let k = i / k_p.cout4;
    let co = (i % k_p.cout4) * 4u;
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (co + j < k_p.cout) {
            v[j] = f32(k_w[(co + j) * kk + k]);
        }
    }
    k_out[i] = T4(v);
}
