//! Tile seams of diffusers' tiled VAE (`shaders/tile_blend.wgsl`): `AutoencoderKL.blend_v` then
//! `blend_h` on one tile, in place, and the copy of its `[:row_limit, :row_limit]` crop into
//! the assembled output (`torch.cat` of the cropped tiles in `tiled_decode`). Runs on the device
//! so a tiled decode never reads tiles back (the browser's readback is asynchronous).

use super::{same_dtype, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{Context, PipelineKey, ShaderFamily, Tensor};

pub const SHADER: ShaderFamily = ShaderFamily {
    name: "tile_blend",
    source: include_str!("../../shaders/tile_blend.wgsl"),
    includes: &[],
};

const WG: u32 = 256;
const OP: &str = "tile_blend";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    th: u32,
    tw: u32,
    top_h: u32,
    left_w: u32,
    ev: u32,
    eh: u32,
    crop_h: u32,
    crop_w: u32,
    out_h: u32,
    out_w: u32,
    out_y: u32,
    out_x: u32,
    _pad: [u32; 3],
}

/// Where one tile goes: its blended neighbours and its place in the output.
#[derive(Clone, Copy, Debug)]
pub struct Seam<'a> {
    /// The tile above, already blended (`rows[i - 1][j]`), or None in the first row.
    pub top: Option<&'a Tensor>,
    /// The tile on the left, already blended (`row[j - 1]`), or None in the first column.
    pub left: Option<&'a Tensor>,
    /// diffusers' `blend_extent` before its `min` with the two tiles' sizes.
    pub blend_extent: usize,
    /// diffusers' `row_limit`: the tile's `[:row_limit, :row_limit]` goes to the output.
    pub row_limit: usize,
    /// (row, column) of the crop's top-left corner in the output.
    pub at: (usize, usize),
}

fn dims(t: &Tensor, what: &str) -> Result<[usize; 4]> {
    <[usize; 4]>::try_from(t.shape())
        .map_err(|_| Error::shape(OP, format!("{what} {:?} must be [B, C, H, W]", t.shape())))
}

/// Blends `tile` [B, C, h, w] in place with its neighbours as `blend_v` then `blend_h` do and
/// writes its crop into `out` [B, C, H, W] at `seam.at`.
pub fn tile_blend(ctx: &Context, tile: &Tensor, out: &Tensor, seam: &Seam) -> Result<()> {
    let p = params(tile, out, seam)?;
    if p.n == 0 {
        return Ok(());
    }
    dispatch(ctx, tile, out, seam, &p)
}

/// The two sides a tile is blended with; each blends along one spatial axis of [B, C, H, W].
#[derive(Clone, Copy)]
enum Side {
    /// `blend_v`: along the height, the width must match.
    Top,
    /// `blend_h`: along the width, the height must match.
    Left,
}

/// Checks every tensor of one call against `tile` and computes the shader's parameters.
fn params(tile: &Tensor, out: &Tensor, seam: &Seam) -> Result<Params> {
    let td @ [b, c, th, tw] = dims(tile, "tile")?;
    let [ob, oc, oh, ow] = dims(out, "out")?;
    same_dtype(OP, &[tile, out])?;
    if (ob, oc) != (b, c) {
        return Err(Error::shape(
            OP,
            format!(
                "tile {:?} and out {:?} differ in batch or channels",
                tile.shape(),
                out.shape()
            ),
        ));
    }
    let e = seam.blend_extent;
    let (ev, top_h) = neighbour(tile, td, seam.top, Side::Top, e)?;
    let (eh, left_w) = neighbour(tile, td, seam.left, Side::Left, e)?;
    let (crop_h, crop_w) = (th.min(seam.row_limit), tw.min(seam.row_limit));
    let (y0, x0) = seam.at;
    if y0 + crop_h > oh || x0 + crop_w > ow {
        return Err(Error::shape(
            OP,
            format!(
                "a {crop_h}x{crop_w} crop at ({y0}, {x0}) does not fit in out {:?}",
                out.shape()
            ),
        ));
    }
    let u = |what, n| to_u32(OP, what, n);
    let p = Params {
        n: u("tile", tile.numel())?,
        th: u("dim", th)?,
        tw: u("dim", tw)?,
        top_h: u("dim", top_h)?,
        left_w: u("dim", left_w)?,
        ev: u("dim", ev)?,
        eh: u("dim", eh)?,
        crop_h: u("dim", crop_h)?,
        crop_w: u("dim", crop_w)?,
        out_h: u("dim", oh)?,
        out_w: u("dim", ow)?,
        out_y: u("dim", y0)?,
        out_x: u("dim", x0)?,
        _pad: [0; 3],
    };
    u("out", out.numel())?;
    Ok(p)
}

/// `(blend extent, neighbour's size along the blended axis)` for one side of `tile` (dims
/// `td`), (0, 0) without a neighbour: diffusers' `min(a.shape[axis], b.shape[axis],
/// blend_extent)`, after checking the neighbour matches the tile across that axis.
fn neighbour(
    tile: &Tensor,
    td: [usize; 4],
    n: Option<&Tensor>,
    side: Side,
    extent: usize,
) -> Result<(usize, usize)> {
    let Some(n) = n else {
        return Ok((0, 0));
    };
    // (name, blended axis, the other spatial axis, what may differ)
    let (name, axis, across, differs) = match side {
        Side::Top => ("top", 2, 3, "height"),
        Side::Left => ("left", 3, 2, "width"),
    };
    let nd = dims(n, name)?;
    same_dtype(OP, &[tile, n])?;
    if (nd[0], nd[1], nd[across]) != (td[0], td[1], td[across]) {
        return Err(Error::shape(
            OP,
            format!(
                "{name} {:?} must match tile {:?} in all but {differs}",
                n.shape(),
                tile.shape()
            ),
        ));
    }
    Ok((nd[axis].min(td[axis]).min(extent), nd[axis]))
}

/// Records the blend-and-crop of one checked, non-empty tile.
fn dispatch(ctx: &Context, tile: &Tensor, out: &Tensor, seam: &Seam, p: &Params) -> Result<()> {
    // An unused side binds a small placeholder (never read: ev / eh = 0).
    let none = Tensor::empty(ctx, &[4], tile.dtype())?;
    let top = seam.top.unwrap_or(&none);
    let left = seam.left.unwrap_or(&none);
    let key = PipelineKey {
        family: SHADER.name,
        entry: "tile_blend",
        dtype: tile.dtype(),
        constants: vec![("WG", WG)],
    };
    let pipe = ctx.pipeline(&SHADER, key)?;
    let wg = ctx.grid_1d(p.n.div_ceil(WG) as u64);
    ctx.check_grid(OP, wg)?;
    ctx.launch(
        &pipe,
        "tile_blend",
        &[top.buffer(), left.buffer(), tile.buffer(), out.buffer()],
        bytemuck::bytes_of(p),
        wg,
    );
    Ok(())
}

/// CPU references, f64 arithmetic, written as diffusers' loops. Tensors are (data, [B, C, H, W]).
pub mod reference {
    /// `AutoencoderKL.blend_v(a, b, blend_extent)`: modifies and returns b.
    pub fn blend_v(a: (&[f32], [usize; 4]), b: (&mut [f32], [usize; 4]), extent: usize) {
        let (ad, [_, _, ah, w]) = a;
        let (bd, [n, c, bh, _]) = b;
        let e = ah.min(bh).min(extent);
        for q in 0..n * c {
            for y in 0..e {
                let t = y as f64 / e as f64;
                for x in 0..w {
                    let av = ad[(q * ah + ah - e + y) * w + x] as f64;
                    let bv = &mut bd[(q * bh + y) * w + x];
                    *bv = (av * (1.0 - t) + *bv as f64 * t) as f32;
                }
            }
        }
    }

    /// `AutoencoderKL.blend_h(a, b, blend_extent)`.
    pub fn blend_h(a: (&[f32], [usize; 4]), b: (&mut [f32], [usize; 4]), extent: usize) {
        let (ad, [_, _, h, aw]) = a;
        let (bd, [n, c, _, bw]) = b;
        let e = aw.min(bw).min(extent);
        for q in 0..n * c {
            for y in 0..h {
                for x in 0..e {
                    let t = x as f64 / e as f64;
                    let av = ad[(q * h + y) * aw + aw - e + x] as f64;
                    let bv = &mut bd[(q * h + y) * bw + x];
                    *bv = (av * (1.0 - t) + *bv as f64 * t) as f32;
                }
            }
        }
    }
}
