// conv2d_sg.wgsl: the aligned fast path of conv2d.wgsl (same semantics: NCHW x [N, Cin, H, W],
// weight [Cout, Cin, KH, KW] packed by conv2d.wgsl's pack_weight, optional bias, output
// [N, Cout, Ho, Wo], activation) for output widths Wo % 4 == 0. Needs subgroups of at least 8
// invocations (its own family, so that adapters without subgroups still build conv2d.wgsl); the
// dispatcher routes every other shape there.
//
// Why (see matmul_sg.wgsl): on lavapipe every storage load inside a loop is an 8-lane scalar
// loop whatever its address, so cost follows the number of load instructions per FMA. The
// implicit GEMM [Cout, Cin*KH*KW] x [Cin*KH*KW, pixels] is tiled like matmul_sg:
//   - each invocation owns 4 adjacent output pixels of one output row (a vec4 accumulator per
//     channel) for the TR output channels that the whole workgroup shares (TR accumulators);
//   - per tap k = (ci, ky, kx): lane l loads the packed weight vec4 of channels
//     co0 + 4l .. co0 + 4l + 3 (one load covers 32 channels), and subgroupBroadcast hands
//     each lane's vec4 to every lane (a register shuffle, no memory access);
//   - the input values are loaded once per (ci, ky) input row and reused by the row's taps:
//     MODE 2 (3x3, stride 1, padding 1): one aligned vec4 and two scalars for 3 taps;
//     MODE 3 (1x1, stride 1, padding 0; the image is one row of H*W pixels): one vec4 per tap;
//     MODE 4 (3x3, stride 2, padding 0 or 1): two aligned vec4s and one scalar for 3 taps;
//     MODE 0 (any kernel, stride, padding): four scalars per tap.
//   So per lane and 3x3 row, 3 weight + 3 input loads feed 3 TR vec4 FMAs (TR = 32: 1 load per
//   16 FMAs, as matmul_sg); the old kernel loads 6 weight + 3 input vec4s for 24. The taps of a
//   row (MODE 2, 4) or four input channels (MODE 3) go to each accumulator as one FMA chain
//   (tap3, tap4), as matmul_sg's four k.
//   The accumulators are named private variables, not an array: llvmpipe keeps arrays that
//   are indexed in loops in memory.
//
// Dispatch: x * z = ceil(pixel tiles / WG) (split over z past the per-dimension limit),
//   y = ceil(Cout / TR); pixel tiles are N * Ho * Wo / 4, numbered with ox fastest.
// Bindings: 0 = x, 1 = x again as vec4s, 2 = packed weight [Cin*KH*KW, cout4] of vec4s (cout4 =
//   ceil(Cout / TR) * TR / 4, zero past Cout), 3 = bias (any buffer when has_bias = 0),
//   4 = out as vec4s, 5 = params.
// Overrides: WG (invocations per workgroup), TR (output channels per workgroup: 4, 8, .. 32),
//   MODE (input path, above).

override WG: u32 = 8u;
override TR: u32 = 32u;
override MODE: u32 = 0u;

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
    cout4: u32,     // vec4 columns of the packed weight
    n_tiles: u32,   // N * Ho * Wo / 4
    gx: u32,        // workgroups along x (tile = (wid.z * gx + wid.x) * WG + lid)
    has_bias: u32,
    act: u32,       // activation id (common.wgsl)
}

@group(0) @binding(0) var<storage, read> x: array<T>;
@group(0) @binding(1) var<storage, read> x4: array<T4>; // the same buffer as x
@group(0) @binding(2) var<storage, read> wp: array<T4>;
@group(0) @binding(3) var<storage, read> bias: array<T>;
@group(0) @binding(4) var<storage, read_write> out: array<T4>;
@group(0) @binding(5) var<uniform> p: Params;

var<private> a0: vec4<f32>;
var<private> a1: vec4<f32>;
var<private> a2: vec4<f32>;
var<private> a3: vec4<f32>;
var<private> a4: vec4<f32>;
var<private> a5: vec4<f32>;
var<private> a6: vec4<f32>;
var<private> a7: vec4<f32>;
var<private> a8: vec4<f32>;
var<private> a9: vec4<f32>;
var<private> a10: vec4<f32>;
var<private> a11: vec4<f32>;
var<private> a12: vec4<f32>;
var<private> a13: vec4<f32>;
var<private> a14: vec4<f32>;
var<private> a15: vec4<f32>;
var<private> a16: vec4<f32>;
var<private> a17: vec4<f32>;
var<private> a18: vec4<f32>;
var<private> a19: vec4<f32>;
var<private> a20: vec4<f32>;
var<private> a21: vec4<f32>;
var<private> a22: vec4<f32>;
var<private> a23: vec4<f32>;
var<private> a24: vec4<f32>;
var<private> a25: vec4<f32>;
var<private> a26: vec4<f32>;
var<private> a27: vec4<f32>;
var<private> a28: vec4<f32>;
var<private> a29: vec4<f32>;
var<private> a30: vec4<f32>;
var<private> a31: vec4<f32>;
var<private> g_wi: u32; // this lane's vec4 column of the packed weight

// One tap: every channel's accumulator += its weight at flat tap index k times the 4 pixels'
// inputs xv. Lane l loads the weights of channels co0 + 4l .. + 3; broadcast j hands lane j's
// to all.
fn tap(xv: vec4<f32>, k: u32) {
    let wv = vec4<f32>(wp[k * p.cout4 + g_wi]);
    if (TR > 0u) {
        let w = subgroupBroadcast(wv, 0u);
        a0 = fma(vec4<f32>(w.x), xv, a0);
        a1 = fma(vec4<f32>(w.y), xv, a1);
        a2 = fma(vec4<f32>(w.z), xv, a2);
        a3 = fma(vec4<f32>(w.w), xv, a3);
    }
    if (TR > 4u) {
        let w = subgroupBroadcast(wv, 1u);
        a4 = fma(vec4<f32>(w.x), xv, a4);
        a5 = fma(vec4<f32>(w.y), xv, a5);
        a6 = fma(vec4<f32>(w.z), xv, a6);
        a7 = fma(vec4<f32>(w.w), xv, a7);
    }
    if (TR > 8u) {
        let w = subgroupBroadcast(wv, 2u);
        a8 = fma(vec4<f32>(w.x), xv, a8);
        a9 = fma(vec4<f32>(w.y), xv, a9);
        a10 = fma(vec4<f32>(w.z), xv, a10);
        a11 = fma(vec4<f32>(w.w), xv, a11);
    }
    if (TR > 12u) {
        let w = subgroupBroadcast(wv, 3u);
        a12 = fma(vec4<f32>(w.x), xv, a12);
        a13 = fma(vec4<f32>(w.y), xv, a13);
        a14 = fma(vec4<f32>(w.z), xv, a14);
        a15 = fma(vec4<f32>(w.w), xv, a15);
    }
    if (TR > 16u) {
        let w = subgroupBroadcast(wv, 4u);
        a16 = fma(vec4<f32>(w.x), xv, a16);
        a17 = fma(vec4<f32>(w.y), xv, a17);
        a18 = fma(vec4<f32>(w.z), xv, a18);
        a19 = fma(vec4<f32>(w.w), xv, a19);
    }
    if (TR > 20u) {
        let w = subgroupBroadcast(wv, 5u);
        a20 = fma(vec4<f32>(w.x), xv, a20);
        a21 = fma(vec4<f32>(w.y), xv, a21);
        a22 = fma(vec4<f32>(w.z), xv, a22);
        a23 = fma(vec4<f32>(w.w), xv, a23);
    }
    if (TR > 24u) {
        let w = subgroupBroadcast(wv, 6u);
        a24 = fma(vec4<f32>(w.x), xv, a24);
        a25 = fma(vec4<f32>(w.y), xv, a25);
        a26 = fma(vec4<f32>(w.z), xv, a26);
        a27 = fma(vec4<f32>(w.w), xv, a27);
    }
    if (TR > 28u) {
        let w = subgroupBroadcast(wv, 7u);
        a28 = fma(vec4<f32>(w.x), xv, a28);
        a29 = fma(vec4<f32>(w.y), xv, a29);
        a30 = fma(vec4<f32>(w.z), xv, a30);
        a31 = fma(vec4<f32>(w.w), xv, a31);
    }
}

// Three (four) taps at flat indices k .. k + 2 (+ 3) with inputs x0 .. : the same FMAs in the
// same order as tap() three (four) times, but each accumulator takes its chain at once, so
// llvmpipe (which keeps the 32 accumulators on the stack) loads and stores it once per three
// (four) FMAs instead of once per FMA: the 3x3 conv went from 45% to 69% of the FMA ceiling
// (one run each, same load). The sums are bit for bit those of the one-tap loop.
fn tap3(x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, k: u32) {
    let w0 = vec4<f32>(wp[(k + 0u) * p.cout4 + g_wi]);
    let w1 = vec4<f32>(wp[(k + 1u) * p.cout4 + g_wi]);
    let w2 = vec4<f32>(wp[(k + 2u) * p.cout4 + g_wi]);
    if (TR > 0u) {
        let u0 = subgroupBroadcast(w0, 0u);
        let u1 = subgroupBroadcast(w1, 0u);
        let u2 = subgroupBroadcast(w2, 0u);
        a0 = fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a0)));
        a1 = fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a1)));
        a2 = fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a2)));
        a3 = fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a3)));
    }
    if (TR > 4u) {
        let u0 = subgroupBroadcast(w0, 1u);
        let u1 = subgroupBroadcast(w1, 1u);
        let u2 = subgroupBroadcast(w2, 1u);
        a4 = fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a4)));
        a5 = fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a5)));
        a6 = fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a6)));
        a7 = fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a7)));
    }
    if (TR > 8u) {
        let u0 = subgroupBroadcast(w0, 2u);
        let u1 = subgroupBroadcast(w1, 2u);
        let u2 = subgroupBroadcast(w2, 2u);
        a8 = fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a8)));
        a9 = fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a9)));
        a10 = fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a10)));
        a11 = fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a11)));
    }
    if (TR > 12u) {
        let u0 = subgroupBroadcast(w0, 3u);
        let u1 = subgroupBroadcast(w1, 3u);
        let u2 = subgroupBroadcast(w2, 3u);
        a12 = fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a12)));
        a13 = fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a13)));
        a14 = fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a14)));
        a15 = fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a15)));
    }
    if (TR > 16u) {
        let u0 = subgroupBroadcast(w0, 4u);
        let u1 = subgroupBroadcast(w1, 4u);
        let u2 = subgroupBroadcast(w2, 4u);
        a16 = fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a16)));
        a17 = fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a17)));
        a18 = fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a18)));
        a19 = fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a19)));
    }
    if (TR > 20u) {
        let u0 = subgroupBroadcast(w0, 5u);
        let u1 = subgroupBroadcast(w1, 5u);
        let u2 = subgroupBroadcast(w2, 5u);
        a20 = fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a20)));
        a21 = fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a21)));
        a22 = fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a22)));
        a23 = fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a23)));
    }
    if (TR > 24u) {
        let u0 = subgroupBroadcast(w0, 6u);
        let u1 = subgroupBroadcast(w1, 6u);
        let u2 = subgroupBroadcast(w2, 6u);
        a24 = fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a24)));
        a25 = fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a25)));
        a26 = fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a26)));
        a27 = fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a27)));
    }
    if (TR > 28u) {
        let u0 = subgroupBroadcast(w0, 7u);
        let u1 = subgroupBroadcast(w1, 7u);
        let u2 = subgroupBroadcast(w2, 7u);
        a28 = fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a28)));
        a29 = fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a29)));
        a30 = fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a30)));
        a31 = fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a31)));
    }
}

fn tap4(x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, k: u32) {
    let w0 = vec4<f32>(wp[(k + 0u) * p.cout4 + g_wi]);
    let w1 = vec4<f32>(wp[(k + 1u) * p.cout4 + g_wi]);
    let w2 = vec4<f32>(wp[(k + 2u) * p.cout4 + g_wi]);
    let w3 = vec4<f32>(wp[(k + 3u) * p.cout4 + g_wi]);
    if (TR > 0u) {
        let u0 = subgroupBroadcast(w0, 0u);
        let u1 = subgroupBroadcast(w1, 0u);
        let u2 = subgroupBroadcast(w2, 0u);
        let u3 = subgroupBroadcast(w3, 0u);
        a0 = fma(vec4<f32>(u3.x), x3, fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a0))));
        a1 = fma(vec4<f32>(u3.y), x3, fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a1))));
        a2 = fma(vec4<f32>(u3.z), x3, fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a2))));
        a3 = fma(vec4<f32>(u3.w), x3, fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a3))));
    }
    if (TR > 4u) {
        let u0 = subgroupBroadcast(w0, 1u);
        let u1 = subgroupBroadcast(w1, 1u);
        let u2 = subgroupBroadcast(w2, 1u);
        let u3 = subgroupBroadcast(w3, 1u);
        a4 = fma(vec4<f32>(u3.x), x3, fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a4))));
        a5 = fma(vec4<f32>(u3.y), x3, fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a5))));
        a6 = fma(vec4<f32>(u3.z), x3, fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a6))));
        a7 = fma(vec4<f32>(u3.w), x3, fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a7))));
    }
    if (TR > 8u) {
        let u0 = subgroupBroadcast(w0, 2u);
        let u1 = subgroupBroadcast(w1, 2u);
        let u2 = subgroupBroadcast(w2, 2u);
        let u3 = subgroupBroadcast(w3, 2u);
        a8 = fma(vec4<f32>(u3.x), x3, fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a8))));
        a9 = fma(vec4<f32>(u3.y), x3, fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a9))));
        a10 = fma(vec4<f32>(u3.z), x3, fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a10))));
        a11 = fma(vec4<f32>(u3.w), x3, fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a11))));
    }
    if (TR > 12u) {
        let u0 = subgroupBroadcast(w0, 3u);
        let u1 = subgroupBroadcast(w1, 3u);
        let u2 = subgroupBroadcast(w2, 3u);
        let u3 = subgroupBroadcast(w3, 3u);
        a12 = fma(vec4<f32>(u3.x), x3, fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a12))));
        a13 = fma(vec4<f32>(u3.y), x3, fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a13))));
        a14 = fma(vec4<f32>(u3.z), x3, fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a14))));
        a15 = fma(vec4<f32>(u3.w), x3, fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a15))));
    }
    if (TR > 16u) {
        let u0 = subgroupBroadcast(w0, 4u);
        let u1 = subgroupBroadcast(w1, 4u);
        let u2 = subgroupBroadcast(w2, 4u);
        let u3 = subgroupBroadcast(w3, 4u);
        a16 = fma(vec4<f32>(u3.x), x3, fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a16))));
        a17 = fma(vec4<f32>(u3.y), x3, fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a17))));
        a18 = fma(vec4<f32>(u3.z), x3, fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a18))));
        a19 = fma(vec4<f32>(u3.w), x3, fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a19))));
    }
    if (TR > 20u) {
        let u0 = subgroupBroadcast(w0, 5u);
        let u1 = subgroupBroadcast(w1, 5u);
        let u2 = subgroupBroadcast(w2, 5u);
        let u3 = subgroupBroadcast(w3, 5u);
        a20 = fma(vec4<f32>(u3.x), x3, fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a20))));
        a21 = fma(vec4<f32>(u3.y), x3, fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a21))));
        a22 = fma(vec4<f32>(u3.z), x3, fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a22))));
        a23 = fma(vec4<f32>(u3.w), x3, fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a23))));
    }
    if (TR > 24u) {
        let u0 = subgroupBroadcast(w0, 6u);
        let u1 = subgroupBroadcast(w1, 6u);
        let u2 = subgroupBroadcast(w2, 6u);
        let u3 = subgroupBroadcast(w3, 6u);
        a24 = fma(vec4<f32>(u3.x), x3, fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a24))));
        a25 = fma(vec4<f32>(u3.y), x3, fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a25))));
        a26 = fma(vec4<f32>(u3.z), x3, fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a26))));
        a27 = fma(vec4<f32>(u3.w), x3, fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a27))));
    }
    if (TR > 28u) {
        let u0 = subgroupBroadcast(w0, 7u);
        let u1 = subgroupBroadcast(w1, 7u);
        let u2 = subgroupBroadcast(w2, 7u);
        let u3 = subgroupBroadcast(w3, 7u);
        a28 = fma(vec4<f32>(u3.x), x3, fma(vec4<f32>(u2.x), x2, fma(vec4<f32>(u1.x), x1, fma(vec4<f32>(u0.x), x0, a28))));
        a29 = fma(vec4<f32>(u3.y), x3, fma(vec4<f32>(u2.y), x2, fma(vec4<f32>(u1.y), x1, fma(vec4<f32>(u0.y), x0, a29))));
        a30 = fma(vec4<f32>(u3.z), x3, fma(vec4<f32>(u2.z), x2, fma(vec4<f32>(u1.z), x1, fma(vec4<f32>(u0.z), x0, a30))));
        a31 = fma(vec4<f32>(u3.w), x3, fma(vec4<f32>(u2.w), x2, fma(vec4<f32>(u1.w), x1, fma(vec4<f32>(u0.w), x0, a31))));
    }
}

// Input at column ix of the row starting at xrow; zero outside the image (padding). Negative
// columns wrapped to huge unsigned values, so one compare is the bounds check.
fn ld(xrow: u32, ix: u32, row_ok: bool) -> f32 {
    let ok = row_ok && ix < p.w;
    return select(0.0, f32(x[select(0u, xrow + ix, ok)]), ok);
}

// Four inputs at an index that is a multiple of 4, zero if the row is outside.
fn ld4(i: u32, row_ok: bool) -> vec4<f32> {
    return select(vec4<f32>(0.0), vec4<f32>(x4[select(0u, i / 4u, row_ok)]), row_ok);
}

fn store(c: u32, v: vec4<f32>, co0: u32, n: u32, oy: u32, tx: u32) {
    let co = co0 + c;
    if (co >= p.cout) {
        return;
    }
    var b = 0.0;
    if (p.has_bias != 0u) {
        b = f32(bias[co]);
    }
    out[((n * p.cout + co) * p.ho + oy) * (p.wo / 4u) + tx] = T4(activate4(v + b, p.act));
}

@compute @workgroup_size(WG)
fn conv2d_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
             @builtin(subgroup_invocation_id) sl: u32) {
    let tile = (wid.z * p.gx + wid.x) * WG + lid;
    let co0 = wid.y * TR;
    g_wi = co0 / 4u + min(sl & 7u, TR / 4u - 1u);
    // Out-of-range tiles still run the loop (on a clamped tile) so that the subgroup stays
    // converged for the broadcasts; they write nothing.
    let t = min(tile, p.n_tiles - 1u);
    let tw = p.wo / 4u;
    let tx = t % tw;
    let r = t / tw;
    let oy = r % p.ho;
    let n = r / p.ho;
    let ox0 = tx * 4u;
    let s = p.stride;
    let ix0 = ox0 * s - p.pad;
    let iy0 = oy * s - p.pad;
    let hw = p.h * p.w;
    let x_img = n * p.cin * hw;
    let kk = p.kh * p.kw;

    if (MODE == 3u) {
        // 1x1: four input channels per step, then the rest one by one.
        var ci = 0u;
        for (; ci + 4u <= p.cin; ci += 4u) {
            let xc = x_img + ci * hw + ox0;
            tap4(ld4(xc, true), ld4(xc + hw, true), ld4(xc + 2u * hw, true),
                 ld4(xc + 3u * hw, true), ci);
        }
        for (; ci < p.cin; ci++) {
            tap(ld4(x_img + ci * hw + ox0, true), ci);
        }
    }
    for (var ci = 0u; ci < p.cin && MODE != 3u; ci++) {
        let xc = x_img + ci * hw;
        let wc = ci * kk;
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
                tap3(vec4<f32>(r0, c.xyz), c, vec4<f32>(c.yzw, r5), wk);
            } else if (MODE == 4u) {
                // Columns 2 ox0 - pad + 2 j + kx: the aligned vec4s at 2 ox0 and 2 ox0 + 4 and
                // one scalar, column 2 ox0 - 1 (padding 1) or 2 ox0 + 8 (padding 0).
                let c0 = ld4(xrow + 2u * ox0, row_ok);
                let c1 = ld4(xrow + 2u * ox0 + 4u, row_ok);
                if (p.pad == 1u) {
                    let l = ld(xrow, 2u * ox0 - 1u, row_ok);
                    tap3(vec4<f32>(l, c0.y, c0.w, c1.y), vec4<f32>(c0.x, c0.z, c1.x, c1.z),
                         vec4<f32>(c0.y, c0.w, c1.y, c1.w), wk);
                } else {
                    let rr = ld(xrow, 2u * ox0 + 8u, row_ok);
                    tap3(vec4<f32>(c0.x, c0.z, c1.x, c1.z), vec4<f32>(c0.y, c0.w, c1.y, c1.w),
                         vec4<f32>(c0.z, c1.x, c1.z, rr), wk);
                }
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
    if (TR > 0u) { store(0u, a0, co0, n, oy, tx); }
    if (TR > 1u) { store(1u, a1, co0, n, oy, tx); }
    if (TR > 2u) { store(2u, a2, co0, n, oy, tx); }
    if (TR > 3u) { store(3u, a3, co0, n, oy, tx); }
    if (TR > 4u) { store(4u, a4, co0, n, oy, tx); }
    if (TR > 5u) { store(5u, a5, co0, n, oy, tx); }
    if (TR > 6u) { store(6u, a6, co0, n, oy, tx); }
    if (TR > 7u) { store(7u, a7, co0, n, oy, tx); }
    if (TR > 8u) { store(8u, a8, co0, n, oy, tx); }
    if (TR > 9u) { store(9u, a9, co0, n, oy, tx); }
    if (TR > 10u) { store(10u, a10, co0, n, oy, tx); }
    if (TR > 11u) { store(11u, a11, co0, n, oy, tx); }
    if (TR > 12u) { store(12u, a12, co0, n, oy, tx); }
    if (TR > 13u) { store(13u, a13, co0, n, oy, tx); }
    if (TR > 14u) { store(14u, a14, co0, n, oy, tx); }
    if (TR > 15u) { store(15u, a15, co0, n, oy, tx); }
    if (TR > 16u) { store(16u, a16, co0, n, oy, tx); }
    if (TR > 17u) { store(17u, a17, co0, n, oy, tx); }
    if (TR > 18u) { store(18u, a18, co0, n, oy, tx); }
    if (TR > 19u) { store(19u, a19, co0, n, oy, tx); }
    if (TR > 20u) { store(20u, a20, co0, n, oy, tx); }
    if (TR > 21u) { store(21u, a21, co0, n, oy, tx); }
    if (TR > 22u) { store(22u, a22, co0, n, oy, tx); }
    if (TR > 23u) { store(23u, a23, co0, n, oy, tx); }
    if (TR > 24u) { store(24u, a24, co0, n, oy, tx); }
    if (TR > 25u) { store(25u, a25, co0, n, oy, tx); }
    if (TR > 26u) { store(26u, a26, co0, n, oy, tx); }
    if (TR > 27u) { store(27u, a27, co0, n, oy, tx); }
    if (TR > 28u) { store(28u, a28, co0, n, oy, tx); }
    if (TR > 29u) { store(29u, a29, co0, n, oy, tx); }
    if (TR > 30u) { store(30u, a30, co0, n, oy, tx); }
    if (TR > 31u) { store(31u, a31, co0, n, oy, tx); }
}
