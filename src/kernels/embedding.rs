//! Embeddings (`shaders/embedding.wgsl`): the sinusoidal timestep embedding of diffusers'
//! `embeddings.get_timestep_embedding` / `Timesteps`, and token-embedding lookup
//! (`nn.Embedding`).

use super::to_u32;
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, PipelineKey, ShaderFamily, Tensor};

pub const SHADER: ShaderFamily = ShaderFamily {
    name: "embedding",
    source: include_str!("../../shaders/embedding.wgsl"),
    includes: &[],
};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    dim: u32,
    flip: u32,
    _pad: u32,
    shift: f32,
    scale: f32,
    log_max_period: f32,
    _pad1: f32,
}

/// diffusers `Timesteps(num_channels, flip_sin_to_cos, downscale_freq_shift)` settings.
#[derive(Clone, Copy, Debug)]
pub struct TimestepEmbedding {
    pub dim: usize,
    pub flip_sin_to_cos: bool,
    pub downscale_freq_shift: f32,
    pub scale: f32,
    pub max_period: f32,
}

impl TimestepEmbedding {
    /// Stable Diffusion's settings: `Timesteps(320, True, 0)`.
    pub fn sd(dim: usize) -> Self {
        TimestepEmbedding {
            dim,
            flip_sin_to_cos: true,
            downscale_freq_shift: 0.0,
            scale: 1.0,
            max_period: 10000.0,
        }
    }
}

/// An `nn.Embedding` table held as blocks of rows that each fit one storage binding: CLIP's
/// token table in f32 (49408 x 768, 145 MiB) is past WebGPU's 128 MiB. One block looks up with
/// [`gather_rows`]; several copy each row from its block (bytes copied: exact).
pub struct EmbeddingTable {
    pub blocks: Vec<Tensor>,
    pub rows_per_block: usize,
    /// [rows, dim] of the whole table.
    pub shape: [usize; 2],
}

impl EmbeddingTable {
    /// Table `name` [rows, dim] from `vb`, in blocks that fit `max_bytes` (the device's
    /// storage-binding limit).
    pub fn load(
        vb: &crate::weights::Loader,
        name: &str,
        shape: [usize; 2],
        max_bytes: u64,
    ) -> Result<EmbeddingTable> {
        let (blocks, rows_per_block) = vb.get_row_blocks(name, &shape, max_bytes)?;
        Ok(EmbeddingTable {
            blocks,
            rows_per_block,
            shape,
        })
    }

    /// The rows `ids` as [ids.len(), dim].
    pub fn lookup(&self, ctx: &Context, ids: &[u32]) -> Result<Tensor> {
        if let [one] = &self.blocks[..] {
            return gather_rows(ctx, one, ids);
        }
        let [vocab, dim] = self.shape;
        check_ids(ids, vocab)?;
        let dtype = self.blocks[0].dtype();
        let row = (dim * dtype.size()) as u64;
        if row % 4 != 0 {
            return Err(Error::shape(
                "embedding",
                format!(
                    "a [{vocab}, {dim}] {} table split over storage bindings needs rows of a \
                     multiple of 4 bytes; load the model in f32",
                    dtype.name()
                ),
            ));
        }
        let out = Tensor::empty(ctx, &[ids.len(), dim], dtype)?;
        ctx.submit_with(false, |enc| {
            for (k, &id) in ids.iter().enumerate() {
                let (b, r) = (
                    id as usize / self.rows_per_block,
                    id as usize % self.rows_per_block,
                );
                let src = self.blocks[b].buffer();
                enc.copy_buffer_to_buffer(src, r as u64 * row, out.buffer(), k as u64 * row, row);
            }
        })?;
        Ok(out)
    }
}

/// Every id must index the table; at least one.
fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::shape(
            "embedding",
            format!(
                "token id {bad} is outside the vocabulary of {vocab}; tokenizer and model disagree"
            ),
        ));
    }
    if ids.is_empty() {
        return Err(Error::shape("embedding", "no token ids"));
    }
    Ok(())
}

/// `timesteps` is an f32 tensor [B] (fractional values allowed); returns [B, dim] in `dtype`.
pub fn timestep_embedding(
    ctx: &Context,
    timesteps: &Tensor,
    cfg: &TimestepEmbedding,
    dtype: DType,
) -> Result<Tensor> {
    if timesteps.shape().len() != 1 || timesteps.dtype() != DType::F32 {
        return Err(Error::shape(
            "timestep_embedding",
            format!("timesteps must be an f32 vector, got {timesteps:?}"),
        ));
    }
    let half = cfg.dim / 2;
    if half == 0 || half as f32 - cfg.downscale_freq_shift == 0.0 {
        return Err(Error::shape(
            "timestep_embedding",
            format!(
                "dim {} with shift {} gives no frequencies",
                cfg.dim, cfg.downscale_freq_shift
            ),
        ));
    }
    let b = timesteps.shape()[0];
    let out = Tensor::empty(ctx, &[b, cfg.dim], dtype)?;
    let n = to_u32("timestep_embedding", "output", b * cfg.dim)?;
    let p = Params {
        n,
        dim: cfg.dim as u32,
        flip: cfg.flip_sin_to_cos as u32,
        _pad: 0,
        shift: cfg.downscale_freq_shift,
        scale: cfg.scale,
        log_max_period: cfg.max_period.ln(),
        _pad1: 0.0,
    };
    let key = PipelineKey {
        family: SHADER.name,
        entry: "timestep_embedding",
        dtype,
        constants: vec![("WG", WG)],
    };
    let pipe = ctx.pipeline(&SHADER, key)?;
    let wg = ctx.grid_1d(n.div_ceil(WG) as u64);
    ctx.launch(
        &pipe,
        "timestep_embedding",
        &[timesteps.buffer(), out.buffer()],
        bytemuck::bytes_of(&p),
        wg,
    );
    Ok(out)
}

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct GatherParams {
    n: u32,
    dim: u32,
    vocab: u32,
    _pad: u32,
}

/// `nn.Embedding`: rows of `table` [V, D] picked by `ids`; returns [ids.len(), D].
pub fn gather_rows(ctx: &Context, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    use wgpu::util::DeviceExt;
    if table.shape().len() != 2 {
        return Err(Error::shape(
            "embedding",
            format!("table must be [vocab, dim], got {:?}", table.shape()),
        ));
    }
    let (vocab, dim) = (table.shape()[0], table.shape()[1]);
    check_ids(ids, vocab)?;
    let out = Tensor::empty(ctx, &[ids.len(), dim], table.dtype())?;
    let n = to_u32("embedding", "output", ids.len() * dim)?;
    let id_buf = ctx
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("token ids"),
            contents: bytemuck::cast_slice(ids),
            usage: wgpu::BufferUsages::STORAGE,
        });
    let p = GatherParams {
        n,
        dim: to_u32("embedding", "dim", dim)?,
        vocab: to_u32("embedding", "vocab", vocab)?,
        _pad: 0,
    };
    let key = PipelineKey {
        family: SHADER.name,
        entry: "gather_rows",
        dtype: table.dtype(),
        constants: vec![("WG", WG)],
    };
    let pipe = ctx.pipeline(&SHADER, key)?;
    let wg = ctx.grid_1d(n.div_ceil(WG) as u64);
    ctx.launch(
        &pipe,
        "gather_rows",
        &[table.buffer(), &id_buf, out.buffer()],
        bytemuck::bytes_of(&p),
        wg,
    );
    Ok(out)
}

pub mod reference {
    use super::TimestepEmbedding;

    pub fn gather_rows(table: &[f32], dim: usize, ids: &[u32]) -> Vec<f32> {
        ids.iter()
            .flat_map(|&i| {
                table[i as usize * dim..(i as usize + 1) * dim]
                    .iter()
                    .copied()
            })
            .collect()
    }

    pub fn timestep_embedding(t: &[f32], cfg: &TimestepEmbedding) -> Vec<f32> {
        let half = cfg.dim / 2;
        let mut out = Vec::with_capacity(t.len() * cfg.dim);
        for &tv in t {
            let args: Vec<f64> = (0..half)
                .map(|j| {
                    let e = -(cfg.max_period as f64).ln() * j as f64
                        / (half as f64 - cfg.downscale_freq_shift as f64);
                    cfg.scale as f64 * tv as f64 * e.exp()
                })
                .collect();
            let sin = args.iter().map(|a| a.sin() as f32);
            let cos = args.iter().map(|a| a.cos() as f32);
            if cfg.flip_sin_to_cos {
                out.extend(cos.chain(sin));
            } else {
                out.extend(sin.chain(cos));
            }
            if cfg.dim % 2 == 1 {
                out.push(0.0);
            }
        }
        out
    }
}
