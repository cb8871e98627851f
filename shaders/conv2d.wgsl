// conv2d.wgsl: 2-D convolution, NCHW input [N, Cin, H, W], weight [Cout, Cin, KH, KW] (PyTorch
// layout), optional bias [Cout], output [N, Cout, Ho, Wo], fused activation.
//
// conv2d (implicit GEMM): the conv is the matmul [Cout, Cin*KH*KW] x [Cin*KH*KW, N*Ho*Wo]; the
//      im2col operand is never materialized, each input value is read straight from x with the
//      zero padding done by bounds checks. One invocation owns a TC x TP register tile: TC
//      output channels x TP output pixels that are adjacent along one output row. All
//      invocations of a workgroup share the same TC channels (workgroup_id.y) and differ in
//      pixel tile, so on SIMD adapters (llvmpipe: 8 lanes) the weight loads are uniform
//      broadcasts and only the input loads are per-lane. For each (cin, ky) an invocation
//      loads the (TP-1)*STRIDE + KW input values its row of pixels needs once, and reuses them
//      for all KW taps (6 loads instead of 12 for a 3x3 stride-1 conv with TP = 4).
//      Dispatch: x = pixel tiles / WG (y = channel blocks of TC, z = 1); pixel tiles are
//      N*Ho*ceil(Wo/TP), numbered with ox fastest.
// conv2d_naive: direct convolution, one output per invocation (benchmark baseline). 1-D grid
//      over outputs split over x/y (Context::grid_1d).
// Bindings: 0 = x, 1 = weight, 2 = bias (the weight buffer again when there is none, with
//      has_bias = 0), 3 = out, 4 = params (uniform).
// Overrides: WG (workgroup size), TC (<= 16), TP (<= 4), KH, KW, STRIDE (the kernel geometry:
//      constant so the tap loops unroll and the row cache stays in registers; at most
//      (TP-1)*STRIDE + KW <= 24), ACT (activation id, common.wgsl).

override WG: u32 = 64u;
override TC: u32 = 8u;
override TP: u32 = 2u;
override KH: u32 = 3u;
override KW: u32 = 3u;
override STRIDE: u32 = 1u;
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
    tiles_w: u32,   // pixel tiles per output row: ceil(Wo / TP)
    n_tiles: u32,   // N * Ho * tiles_w
    has_bias: u32,
    _pad0: u32,
    // Naive kernel only (runtime geometry).
    kh: u32,
    kw: u32,
    stride: u32,
    n_out: u32,
}

@group(0) @binding(0) var<storage, read> x: array<T>;
@group(0) @binding(1) var<storage, read> wt: array<T>;
@group(0) @binding(2) var<storage, read> bias: array<T>;
@group(0) @binding(3) var<storage, read_write> out: array<T>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn conv2d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tile = wid.x * WG + lid.x;
    let co0 = wid.y * TC;
    // Out-of-range tiles still run the loop (masked loads) so that the whole workgroup stays
    // converged; they just write nothing.
    let tile_ok = tile < p.n_tiles;
    let t = min(tile, p.n_tiles - 1u);
    let tx = t % p.tiles_w;
    let r = t / p.tiles_w;
    let oy = r % p.ho;
    let n = r / p.ho;
    let ox0 = tx * TP;

    // Input columns of the row cache: ix(i) = ox0*STRIDE - pad + i. Unsigned wrap turns
    // negative columns into huge ones, so one compare is the whole bounds check.
    let ix0 = ox0 * STRIDE - p.pad;
    let iy0 = oy * STRIDE - p.pad;
    let kk = KH * KW;
    let hw = p.h * p.w;

    var acc: array<f32, 64>; // TC x TP used, zero-initialized
    // Weight row of each output channel (clamped: channels past Cout compute garbage that is
    // never written, and stay in bounds). Uniform across the workgroup.
    let wstride = p.cin * kk;
    let x_img = n * p.cin * hw;

    for (var ci = 0u; ci < p.cin; ci++) {
        let xc = x_img + ci * hw;
        let wc = ci * kk;
        for (var ky = 0u; ky < KH; ky++) {
            let iy = iy0 + ky;
            let row_ok = iy < p.h;
            let xrow = xc + iy * p.w;
            var xr: array<f32, 24>;
            for (var i = 0u; i < (TP - 1u) * STRIDE + KW; i++) {
                let ix = ix0 + i;
                let ok = row_ok && ix < p.w;
                xr[i] = select(0.0, f32(x[select(0u, xrow + ix, ok)]), ok);
            }
            for (var kx = 0u; kx < KW; kx++) {
                let wk = wc + ky * KW + kx;
                for (var c = 0u; c < TC; c++) {
                    let co = min(co0 + c, p.cout - 1u);
                    let wv = f32(wt[co * wstride + wk]);
                    for (var j = 0u; j < TP; j++) {
                        acc[c * TP + j] = fma(wv, xr[j * STRIDE + kx], acc[c * TP + j]);
                    }
                }
            }
        }
    }

    if (!tile_ok) {
        return;
    }
    let ohw = p.ho * p.wo;
    for (var c = 0u; c < TC; c++) {
        let co = co0 + c;
        if (co >= p.cout) {
            break;
        }
        var b = 0.0;
        if (p.has_bias != 0u) {
            b = f32(bias[co]);
        }
        let obase = (n * p.cout + co) * ohw + oy * p.wo;
        for (var j = 0u; j < TP; j++) {
            let ox = ox0 + j;
            if (ox < p.wo) {
                out[obase + ox] = T(activate(acc[c * TP + j] + b, ACT));
            }
        }
    }
}

@compute @workgroup_size(WG)
fn conv2d_naive(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n_out) {
        return;
    }
    let ox = i % p.wo;
    let r0 = i / p.wo;
    let oy = r0 % p.ho;
    let r1 = r0 / p.ho;
    let co = r1 % p.cout;
    let n = r1 / p.cout;
    var s = 0.0;
    for (var ci = 0u; ci < p.cin; ci++) {
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = oy * p.stride + ky - p.pad;
            for (var kx = 0u; kx < p.kw; kx++) {
                let ix = ox * p.stride + kx - p.pad;
                if (iy < p.h && ix < p.w) {
                    let xv = f32(x[((n * p.cin + ci) * p.h + iy) * p.w + ix]);
                    let wv = f32(wt[((co * p.cin + ci) * p.kh + ky) * p.kw + kx]);
                    s = fma(wv, xv, s);
                }
            }
        }
    }
    if (p.has_bias != 0u) {
        s += f32(bias[co]);
    }
    out[i] = T(activate(s, ACT));
}
