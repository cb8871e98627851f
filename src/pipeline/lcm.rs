//! Latent consistency models (diffusers' `LatentConsistencyModelPipeline`): a U-Net with
//! `time_cond_proj_dim` takes the guidance scale as an embedding, `timestep_cond`, in one
//! batch, instead of classifier-free guidance's two.

use super::{GenerateOptions, Pipeline};
use crate::error::Result;
use crate::gpu::{Context, Tensor};

/// diffusers' `get_guidance_scale_embedding(w, embedding_dim)` for each `w`: `w * 1000` times
/// `dim / 2` frequencies `exp(-i · ln(10000) / (dim/2 - 1))`, sines then cosines, a zero
/// appended when `dim` is odd; [w.len(), dim] row-major. Computed step by step in f32 as
/// PyTorch does (each product rounded), since the arguments reach thousands of radians and
/// an exact product would differ from diffusers' by ~1e-4. `dim` ≥ 4 (the config checks it).
pub fn guidance_scale_embedding(w: &[f32], dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let step = (libm::log(10000.0) as f32) / (half.saturating_sub(1) as f32);
    let freqs: Vec<f32> = (0..half)
        .map(|i| libm::exp(f64::from(i as f32 * -step)) as f32)
        .collect();
    let mut out = Vec::with_capacity(w.len() * dim);
    for &w in w {
        let args: Vec<f64> = freqs.iter().map(|&f| f64::from(w * 1000.0 * f)).collect();
        out.extend(args.iter().map(|&a| libm::sin(a) as f32));
        out.extend(args.iter().map(|&a| libm::cos(a) as f32));
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}

impl Pipeline {
    /// Whether this model embeds the guidance scale (an LCM U-Net) rather than guiding.
    pub fn embeds_guidance(&self) -> bool {
        self.info.unet.time_cond_proj_dim.is_some()
    }

    /// For an LCM U-Net, `cond_proj` of the embedding of `w = guidance - 1` for each image
    /// ([batch, block_out_channels[0]]), made once before the loop; `None` otherwise.
    pub(super) fn time_cond(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
    ) -> Result<Option<Tensor>> {
        let Some(dim) = self.info.unet.time_cond_proj_dim else {
            return Ok(None);
        };
        let w = vec![(f64::from(opts.guidance) - 1.0) as f32; opts.batch];
        let emb = guidance_scale_embedding(&w, dim);
        let emb = Tensor::from_f32(ctx, &emb, &[opts.batch, dim], self.dtype)?;
        self.unet_model()?.time_cond(ctx, &emb).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_layout_and_values() {
        // dim 5: two frequencies (1 and 1/10000), sines, cosines, a zero pad.
        let e = guidance_scale_embedding(&[0.0, 0.5], 5);
        assert_eq!(e.len(), 10);
        assert_eq!(&e[..5], &[0.0, 0.0, 1.0, 1.0, 0.0]);
        let want = [
            500f64.sin(),
            0.05f64.sin(),
            500f64.cos(),
            0.05f64.cos(),
            0.0,
        ];
        for (g, w) in e[5..].iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-4, "{g} vs {w}");
        }
    }
}
