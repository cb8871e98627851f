//! diffusers' VAE tiling (`AutoencoderKL.enable_tiling`, `tiled_decode`, `_tiled_encode`,
//! `blend_v` / `blend_h`) and hoa's choice of when to use it. [`AutoencoderKL::decode_tiled`]
//! / [`AutoencoderKL::encode_tiled`] cut overlapping tiles (a strided copy each,
//! [`elementwise::contiguous`]), run them one at a time and blend the seams on the device
//! ([`tile_blend`]); [`AutoencoderKL::decode_auto`] / [`AutoencoderKL::encode_auto`] run whole
//! when every buffer fits the device's binding limit (WebGPU's default: 128 MiB) and tiled
//! otherwise.

use super::{check_image, clamp_logvar, AutoencoderKL, LatentDistribution};
use crate::error::{Error, Result};
use crate::gpu::{BufferPool, Context, DType, Tensor};
use crate::kernels::attention::MAX_HEAD_DIM;
use crate::kernels::elementwise::{self, View};
use crate::kernels::tile_blend;
use crate::models::check_nchw;

/// diffusers' VAE tiling settings (`enable_tiling()`; `tile_sample_min_size`,
/// `tile_overlap_factor`). The latent tile is `tile_sample_size / 2^(len(block_out_channels) - 1)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TileOptions {
    /// Tile edge in image pixels (`tile_sample_min_size`; diffusers: `config.sample_size`).
    pub tile_sample_size: usize,
    /// Fraction of a tile shared with its neighbour (`tile_overlap_factor`; diffusers: 0.25).
    pub overlap_factor: f64,
}

/// diffusers' derived tiling numbers, in latent (`tile`, `stride`) and image pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileGrid {
    /// `tile_latent_min_size`.
    pub tile: usize,
    /// `overlap_size = int(tile_latent_min_size * (1 - tile_overlap_factor))`.
    pub stride: usize,
    /// `blend_extent = int(tile_sample_min_size * tile_overlap_factor)`.
    pub blend_extent: usize,
    /// `row_limit = tile_sample_min_size - blend_extent`.
    pub row_limit: usize,
}

impl TileOptions {
    /// The decode grid for a VAE with scale factor `f`, or an error naming the bad setting.
    pub fn grid(&self, f: usize, op: &'static str) -> Result<TileGrid> {
        let o = self.overlap_factor;
        if !(0.0..1.0).contains(&o) {
            return Err(Error::shape(
                op,
                format!("tile overlap_factor {o} must be in [0, 1)"),
            ));
        }
        let tile = self.tile_sample_size / f;
        let stride = (tile as f64 * (1.0 - o)) as usize;
        let blend_extent = (self.tile_sample_size as f64 * o) as usize;
        if tile == 0 || stride == 0 {
            return Err(Error::shape(
                op,
                format!(
                    "tile_sample_size {} with overlap {o} leaves a latent tile of {tile} and a stride of {stride}; use tiles of at least {} pixels",
                    self.tile_sample_size,
                    4 * f
                ),
            ));
        }
        Ok(TileGrid {
            tile,
            stride,
            blend_extent,
            row_limit: self.tile_sample_size - blend_extent,
        })
    }
}

/// What [`AutoencoderKL::decode_plan`] / [`AutoencoderKL::encode_plan`] chose.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TilePlan {
    /// Every activation fits one binding: decode in one piece.
    Whole,
    /// Decode tiled with these settings.
    Tiled(TileOptions),
}

/// `x[:, :, i : i + h, j : j + w]` of a [B, C, H, W] tensor, clipped at the edges like Python
/// slicing, as a contiguous copy.
fn crop(ctx: &Context, x: &Tensor, i: usize, j: usize, h: usize, w: usize) -> Result<Tensor> {
    let s = x.shape();
    let v = View::of(x)
        .narrow(2, i, s[2].saturating_sub(i).min(h))?
        .narrow(3, j, s[3].saturating_sub(j).min(w))?;
    elementwise::contiguous(ctx, v)
}

/// Tiles of `tile` at stride `stride` over `n` ([0, stride, 2 stride, ...] < n, Python's
/// `range(0, n, stride)`) and the size of the output that `torch.cat` of their crops makes:
/// each adds min(its size x `f`, `row_limit`) (`f` scales tile input to output pixels, or
/// divides it when `down`).
fn tile_starts(n: usize, g: &TileGrid, f: usize, down: bool) -> (Vec<usize>, usize) {
    let starts: Vec<usize> = (0..n).step_by(g.stride).collect();
    let total = starts
        .iter()
        .map(|&i| {
            let t = n.min(i + g.tile) - i;
            (if down { t / f } else { t * f }).min(g.row_limit)
        })
        .sum();
    (starts, total)
}

impl AutoencoderKL {
    /// diffusers' tiling settings after `enable_tiling()`: tiles of `config.sample_size`
    /// pixels (its first entry when it is a list, as diffusers' `tile_latent_min_size` takes),
    /// overlap 0.25.
    pub fn tile_options(&self) -> Result<TileOptions> {
        let v = &self.config.sample_size;
        let size = v
            .as_u64()
            .or_else(|| v.as_array().and_then(|a| a.first()).and_then(|x| x.as_u64()))
            .ok_or_else(|| {
                Error::shape(
                    "AutoencoderKL::tile_options",
                    format!("config sample_size {v} must be a number or a list of numbers; pass TileOptions to decode_tiled instead"),
                )
            })?;
        Ok(TileOptions {
            tile_sample_size: size as usize,
            overlap_factor: 0.25,
        })
    }

    /// Bytes of the single-head mid-block attention's [B, L, L] scores when its head is wider
    /// than the flash kernel takes (SD: 512 > MAX_HEAD_DIM, so `scaled_dot_product_attention`
    /// falls back to matmul-softmax-matmul), per batch element; 0 otherwise.
    fn mid_scores(&self, h: usize, w: usize) -> usize {
        let c = &self.config;
        let wide = c.block_out_channels.last().copied().unwrap_or(0) > MAX_HEAD_DIM;
        if c.mid_block_add_attention && wide {
            (h * w) * (h * w)
        } else {
            0
        }
    }

    /// The largest buffer of an untiled decode of a [batch, _, h, w] latent in bytes: the
    /// widest of conv_in / mid block (`block_out_channels[-1]` x h x w, and its attention's
    /// scores), each up block's resnets and upsampler, and `conv_norm_out`
    /// (`block_out_channels[0]` at full size) — for SD's VAE the last upsampler's
    /// [B, 256, 8h, 8w]. Rounded up to the buffer pool's size class, which is what a binding
    /// must hold.
    pub fn decode_peak_bytes(&self, batch: usize, h: usize, w: usize, dtype: DType) -> u64 {
        let c = &self.config;
        let rch: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let n = rch.len();
        let mut peak = (rch[0] * h * w).max(self.mid_scores(h, w));
        for (i, &ch) in rch.iter().enumerate() {
            let s = 1usize << i;
            peak = peak.max(ch * h * s * w * s);
            if i + 1 < n {
                peak = peak.max(ch * h * 2 * s * w * 2 * s);
            }
        }
        let f = 1usize << (n - 1);
        peak = peak.max(c.out_channels.max(c.block_out_channels[0]) * h * f * w * f);
        BufferPool::size_class((batch * peak * dtype.size()) as u64)
    }

    /// The largest buffer of an untiled encode of a [batch, _, h, w] image in bytes: the image,
    /// each down block's resnets (`block_out_channels[i]` at 1 / 2^i size, the first at full
    /// size) and downsampler, the mid block and its attention's scores, the moments.
    pub fn encode_peak_bytes(&self, batch: usize, h: usize, w: usize, dtype: DType) -> u64 {
        let c = &self.config;
        let ch = &c.block_out_channels;
        let n = ch.len();
        let f = 1usize << (n - 1);
        let (lh, lw) = (h.div_ceil(f), w.div_ceil(f));
        let mut peak = (c.in_channels * h * w)
            .max(self.mid_scores(lh, lw))
            .max((ch[n - 1]).max(2 * c.latent_channels) * lh * lw);
        for (i, &co) in ch.iter().enumerate() {
            let s = 1usize << i;
            peak = peak.max(co * h.div_ceil(s) * w.div_ceil(s));
        }
        BufferPool::size_class((batch * peak * dtype.size()) as u64)
    }

    /// Whole when `whole` fits `max_binding`, otherwise diffusers' tiles shrunk (to a multiple
    /// of 4 latent pixels, so the crops add up to the image) until `tile_peak(latent edge)`
    /// fits.
    fn plan(
        &self,
        whole: u64,
        tile_peak: &dyn Fn(usize) -> u64,
        max_binding: u64,
        op: &'static str,
        batch: usize,
    ) -> Result<TilePlan> {
        if whole <= max_binding {
            return Ok(TilePlan::Whole);
        }
        let f = self.scale_factor();
        let mut t = self.tile_options()?;
        let mut lat = t.tile_sample_size / f;
        if lat % 4 != 0 || tile_peak(lat) > max_binding {
            lat -= lat % 4;
            while lat > 4 && tile_peak(lat) > max_binding {
                lat -= 4;
            }
            if lat < 4 || tile_peak(lat) > max_binding {
                return Err(Error::Limit {
                    op,
                    limit: "max_storage_buffer_binding_size",
                    needed: tile_peak(4),
                    max: max_binding,
                    hint: format!(
                        "even a 4x4-latent tile of a batch of {batch} does not fit; process fewer images at once"
                    ),
                });
            }
            t.tile_sample_size = lat * f;
        }
        Ok(TilePlan::Tiled(t))
    }

    /// How [`AutoencoderKL::decode_auto`] decodes a latent of `shape` when no binding may exceed
    /// `max_binding` bytes: whole when every activation fits, otherwise tiled with diffusers'
    /// tiles shrunk (to a multiple of 4 latent pixels, so the crops add up to the image) until
    /// a tile's activations fit.
    pub fn decode_plan(&self, shape: &[usize], dtype: DType, max_binding: u64) -> Result<TilePlan> {
        const OP: &str = "AutoencoderKL::decode_auto";
        let c = &self.config;
        check_nchw(
            OP,
            "latent",
            shape,
            "h, w",
            (c.latent_channels, "latent_channels"),
        )?;
        let (b, h, w) = (shape[0], shape[2], shape[3]);
        let whole = self.decode_peak_bytes(b, h, w, dtype);
        let tile = |lat: usize| self.decode_peak_bytes(b, lat, lat, dtype);
        self.plan(whole, &tile, max_binding, OP, b)
    }

    /// How [`AutoencoderKL::encode_auto`] encodes an image of `shape` under `max_binding`
    /// bytes per binding (as [`AutoencoderKL::decode_plan`]).
    pub fn encode_plan(&self, shape: &[usize], dtype: DType, max_binding: u64) -> Result<TilePlan> {
        const OP: &str = "AutoencoderKL::encode_auto";
        let c = &self.config;
        check_nchw(OP, "image", shape, "H, W", (c.in_channels, "in_channels"))?;
        let (b, h, w) = (shape[0], shape[2], shape[3]);
        let f = self.scale_factor();
        let whole = self.encode_peak_bytes(b, h, w, dtype);
        let tile = |lat: usize| self.encode_peak_bytes(b, lat * f, lat * f, dtype);
        self.plan(whole, &tile, max_binding, OP, b)
    }

    /// Decodes whole when every activation fits the device's `max_storage_buffer_binding_size`
    /// (and `max_buffer_size`), tiled otherwise (see [`AutoencoderKL::decode_plan`]).
    pub fn decode_auto(&self, ctx: &Context, latent: &Tensor) -> Result<Tensor> {
        self.decode_auto_within(ctx, latent, ctx.max_binding_bytes())
    }

    /// [`AutoencoderKL::decode_auto`] under a binding limit of `max_binding` bytes (at most the
    /// device's): lets tests and callers that share the device ask for smaller tiles.
    pub fn decode_auto_within(
        &self,
        ctx: &Context,
        latent: &Tensor,
        max_binding: u64,
    ) -> Result<Tensor> {
        let max = max_binding.min(ctx.max_binding_bytes());
        match self.decode_plan(latent.shape(), latent.dtype(), max)? {
            TilePlan::Whole => Ok(self.run_decoder(ctx, latent, false)?.0),
            TilePlan::Tiled(t) => self.decode_tiled(ctx, latent, t),
        }
    }

    /// Encodes whole when every activation fits the device's binding limit, tiled otherwise
    /// (see [`AutoencoderKL::encode_plan`]).
    pub fn encode_auto(&self, ctx: &Context, image: &Tensor) -> Result<LatentDistribution> {
        self.encode_auto_within(ctx, image, ctx.max_binding_bytes())
    }

    /// [`AutoencoderKL::encode_auto`] under a binding limit of `max_binding` bytes (at most
    /// the device's).
    pub fn encode_auto_within(
        &self,
        ctx: &Context,
        image: &Tensor,
        max_binding: u64,
    ) -> Result<LatentDistribution> {
        let max = max_binding.min(ctx.max_binding_bytes());
        match self.encode_plan(image.shape(), image.dtype(), max)? {
            TilePlan::Whole => {
                let e = self.encode(ctx, image)?;
                Ok(LatentDistribution {
                    mean: e.mean,
                    logvar: e.logvar,
                })
            }
            TilePlan::Tiled(t) => self.encode_tiled(ctx, image, t),
        }
    }

    /// diffusers' `AutoencoderKL.tiled_decode`: the latent is cut into overlapping tiles of
    /// `tile_latent_min_size = tile_sample_size / 2^(len(block_out_channels) - 1)` with stride
    /// `int(tile_latent_min_size * (1 - overlap))`; each is decoded on its own
    /// (`post_quant_conv` included), blended with the (already blended) tiles above and to the
    /// left over `int(tile_sample_size * overlap)` rows / columns and cropped to
    /// `row_limit = tile_sample_size - blend_extent`, in raster order, as diffusers' in-place
    /// `blend_v` / `blend_h` do. Blending runs on the device (`kernels::tile_blend`), so no
    /// tile is read back; only one row of blended tiles is held at a time. Always tiles, even
    /// a latent smaller than one tile (diffusers' `decode` only calls it for larger ones).
    pub fn decode_tiled(
        &self,
        ctx: &Context,
        latent: &Tensor,
        opts: TileOptions,
    ) -> Result<Tensor> {
        const OP: &str = "AutoencoderKL::decode_tiled";
        self.check_latent(latent, OP)?;
        let f = self.scale_factor();
        let g = opts.grid(f, OP)?;
        let s = latent.shape();
        let (ys, out_h) = tile_starts(s[2], &g, f, false);
        let (xs, out_w) = tile_starts(s[3], &g, f, false);
        let out = Tensor::empty(
            ctx,
            &[s[0], self.config.out_channels, out_h, out_w],
            latent.dtype(),
        )?;
        self.tiled(ctx, (s[2], s[3]), &ys, &xs, &g, &[&out], &|i, j| {
            // tile = z[:, :, i : i + tile_latent_min_size, j : j + tile_latent_min_size]
            let tile = crop(ctx, latent, i, j, g.tile, g.tile)?;
            Ok(vec![self.run_decoder(ctx, &tile, false)?.0])
        })?;
        Ok(out)
    }

    /// diffusers' `AutoencoderKL._tiled_encode` and the `DiagonalGaussianDistribution` of its
    /// moments: image tiles of `tile_sample_size` at stride `int(tile_sample_size *
    /// (1 - overlap))` are encoded (`quant_conv` included), blended over
    /// `int(tile_latent_min_size * overlap)` latent rows / columns and cropped to
    /// `tile_latent_min_size - blend_extent`; the log-variance is clamped after blending.
    pub fn encode_tiled(
        &self,
        ctx: &Context,
        image: &Tensor,
        opts: TileOptions,
    ) -> Result<LatentDistribution> {
        const OP: &str = "AutoencoderKL::encode_tiled";
        let c = &self.config;
        check_image(c, image, OP)?;
        let s = image.shape();
        let f = self.scale_factor();
        let d = opts.grid(f, OP)?;
        // In image pixels: tile and stride; in latent pixels: blend extent and crop.
        let g = TileGrid {
            tile: opts.tile_sample_size,
            stride: (opts.tile_sample_size as f64 * (1.0 - opts.overlap_factor)) as usize,
            blend_extent: (d.tile as f64 * opts.overlap_factor) as usize,
            row_limit: d.tile - (d.tile as f64 * opts.overlap_factor) as usize,
        };
        if g.tile % f != 0 || g.stride % f != 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "image {}x{} with tiles of {} (stride {}): every tile must be divisible by {f} (the VAE's scale factor); use tiles of a multiple of {}",
                    s[2],
                    s[3],
                    g.tile,
                    g.stride,
                    4 * f
                ),
            ));
        }
        let (ys, out_h) = tile_starts(s[2], &g, f, true);
        let (xs, out_w) = tile_starts(s[3], &g, f, true);
        let shape = [s[0], c.latent_channels, out_h, out_w];
        let mean = Tensor::empty(ctx, &shape, image.dtype())?;
        let logvar = Tensor::empty(ctx, &shape, image.dtype())?;
        let quant = match (&self.quant_conv_mean, &self.quant_conv_logvar) {
            (Some(m), Some(l)) => Some((m, l)),
            _ => None,
        };
        self.tiled(
            ctx,
            (s[2], s[3]),
            &ys,
            &xs,
            &g,
            &[&mean, &logvar],
            &|i, j| {
                let tile = crop(ctx, image, i, j, g.tile, g.tile)?;
                let e = self
                    .encoder
                    .encode_moments(ctx, c, quant, &tile, OP, false)?;
                Ok(vec![e.mean, e.logvar])
            },
        )?;
        let logvar = clamp_logvar(ctx, &logvar)?;
        Ok(LatentDistribution { mean, logvar })
    }

    /// The raster-order loop shared by the tiled decode and encode: `run(i, j)` gives the
    /// tile(s) at input offset (i, j), one per output; each is blended in place with the
    /// blended tile above and on the left and its crop written into its output.
    /// `input` is the (height, width) the tiles are cut from.
    #[allow(clippy::too_many_arguments)]
    fn tiled(
        &self,
        ctx: &Context,
        input: (usize, usize),
        ys: &[usize],
        xs: &[usize],
        g: &TileGrid,
        outs: &[&Tensor],
        run: &dyn Fn(usize, usize) -> Result<Vec<Tensor>>,
    ) -> Result<()> {
        let mut above: Vec<Vec<Tensor>> = Vec::new();
        let mut oy = 0;
        let mut last = (0, 0);
        for &i in ys {
            let mut row: Vec<Vec<Tensor>> = Vec::with_capacity(xs.len());
            let mut ox = 0;
            for (jx, &j) in xs.iter().enumerate() {
                // A tile of another size (the partial ones at the ends) needs buffers of other
                // size classes: release the free ones first, so the pool does not keep a set
                // per tile size (SD 1.5 at 512x512 in f32: 44 and 31 latent pixels).
                let size = ((input.0 - i).min(g.tile), (input.1 - j).min(g.tile));
                if size != last {
                    ctx.trim_pool();
                    last = size;
                }
                let tiles = run(i, j)?;
                for (k, (t, out)) in tiles.iter().zip(outs).enumerate() {
                    tile_blend::tile_blend(
                        ctx,
                        t,
                        out,
                        &tile_blend::Seam {
                            top: above.get(jx).map(|a| &a[k]),
                            left: row.last().map(|l| &l[k]),
                            blend_extent: g.blend_extent,
                            row_limit: g.row_limit,
                            at: (oy, ox),
                        },
                    )?;
                }
                ox += tiles[0].shape()[3].min(g.row_limit);
                row.push(tiles);
                // One tile's work per submission keeps the recorded list (and what it holds
                // alive) small.
                ctx.flush()?;
            }
            oy += row[0][0].shape()[2].min(g.row_limit);
            above = row;
        }
        Ok(())
    }
}
