//! transformers `CLIPModel` (`models/clip/modeling_clip.py`): the text and vision towers, their
//! bias-free projections into one embedding space (`get_text_features`,
//! `get_image_features`) and `logit_scale`. The last step of `forward` (L2 normalization and
//! `logit_scale.exp()` x cosine) runs on the host over the few embeddings read back:
//! [`normalize`] and [`logits`].

use super::clip::ClipTextModel;
use super::clip_vision::ClipVisionModel;
use super::nn::Linear;
use crate::config::ClipConfig;
use crate::error::Result;
use crate::gpu::{Context, Tensor};
use crate::weights::Loader;

pub struct ClipModel {
    pub config: ClipConfig,
    pub text_model: ClipTextModel,
    pub vision_model: ClipVisionModel,
    /// `nn.Linear(vision hidden_size, projection_dim, bias=False)`
    pub visual_projection: Linear,
    /// `nn.Linear(text hidden_size, projection_dim, bias=False)`
    pub text_projection: Linear,
    /// The learned temperature's log (the checkpoint's `logit_scale`); logits use its exp.
    pub logit_scale: f32,
}

impl ClipModel {
    /// Loads a `CLIPModel` checkpoint (`text_model.*`, `vision_model.*`, the two projections,
    /// `logit_scale`); every missing, unexpected or misshapen tensor is reported at once.
    pub fn load(root: &Loader, config: &ClipConfig) -> Result<ClipModel> {
        let (tc, vc, p) = (
            &config.text_config,
            &config.vision_config,
            config.projection_dim,
        );
        let logit_scale = root.get_host("logit_scale", &[]);
        let model = ClipModel {
            config: config.clone(),
            text_model: ClipTextModel::load_unchecked(&root.pp("text_model"), tc)?,
            vision_model: ClipVisionModel::load_unchecked(&root.pp("vision_model"), vc)?,
            visual_projection: Linear::load(
                &root.pp("visual_projection"),
                vc.hidden_size,
                p,
                false,
            )?,
            text_projection: Linear::load(&root.pp("text_projection"), tc.hidden_size, p, false)?,
            logit_scale: logit_scale.first().copied().unwrap_or_default(),
        };
        root.finish()?;
        Ok(model)
    }

    /// `get_image_features`: [B, projection_dim], not normalized.
    pub fn get_image_features(&self, ctx: &Context, pixel_values: &Tensor) -> Result<Tensor> {
        let out = self.vision_model.forward(ctx, pixel_values)?;
        self.visual_projection.forward(ctx, &out.pooler_output)
    }

    /// `get_text_features` of `batch` token sequences of equal length: [B, projection_dim].
    /// Padding after the end token needs no attention mask: the causal mask already keeps it
    /// out of the pooled end-token state.
    pub fn get_text_features(&self, ctx: &Context, ids: &[u32], batch: usize) -> Result<Tensor> {
        let out = self.text_model.forward(ctx, ids, batch)?;
        self.text_projection.forward(ctx, &out.pooler_output)
    }

    /// `logit_scale.exp()`: the factor on cosines that makes CLIPModel's logits.
    pub fn logit_scale_exp(&self) -> f32 {
        self.logit_scale.exp()
    }
}

/// `x / x.norm(dim=-1)` for each row of `dim` values, in f32 as transformers computes it (a
/// zero row stays zero rather than becoming NaN).
pub fn normalize(x: &[f32], dim: usize) -> Vec<f32> {
    x.chunks_exact(dim.max(1))
        .flat_map(|row| {
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter().map(move |v| if n > 0.0 { v / n } else { 0.0 })
        })
        .collect()
}

/// `logits_per_image` [images, texts] = scale x (image . text) over normalized rows of `dim`.
pub fn logits(image_embeds: &[f32], text_embeds: &[f32], dim: usize, scale: f32) -> Vec<f32> {
    let d = dim.max(1);
    image_embeds
        .chunks_exact(d)
        .flat_map(|i| {
            text_embeds
                .chunks_exact(d)
                .map(move |t| scale * i.iter().zip(t).map(|(a, b)| a * b).sum::<f32>())
        })
        .collect()
}
