//! CLIP's vision tower, transformers `CLIPVisionModel` and `CLIPVisionModelWithProjection`
//! (`models/clip/modeling_clip.py`): a patch-embedding conv (stride = patch size, no bias), a
//! learned class token in front, learned position embeddings, `pre_layrnorm` (transformers'
//! spelling), the text tower's encoder layers without a causal mask, and `post_layernorm` on
//! the class token as the pooled output; `visual_projection` maps it into the joint space.

use super::clip::ClipEncoderLayer;
use super::nn::{Conv2d, LayerNorm, Linear};
use crate::config::ClipVisionConfig;
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::kernels::attention::AttentionOptions;
use crate::kernels::concat::concat;
use crate::kernels::conv2d::PackedConv2dWeight;
use crate::kernels::elementwise::{self, BinaryOp, View};
use crate::kernels::{embedding, Activation};
use crate::weights::Loader;

/// `CLIPVisionEmbeddings`: pixels [B, 3, S, S] -> tokens [B, 1 + (S / p)^2, D].
pub struct ClipVisionEmbeddings {
    /// [D]
    pub class_embedding: Tensor,
    pub patch_embedding: Conv2d,
    /// [1 + (S / p)^2, D]
    pub position_embedding: Tensor,
    image_size: usize,
}

impl ClipVisionEmbeddings {
    pub fn load(vb: &Loader, c: &ClipVisionConfig) -> Result<Self> {
        let (d, p) = (c.hidden_size, c.patch_size);
        // A buffer older checkpoints saved; the model derives it.
        vb.ignore("position_ids");
        let w = vb.get("patch_embedding.weight", &[d, c.num_channels, p, p])?;
        Ok(ClipVisionEmbeddings {
            class_embedding: vb.get("class_embedding", &[d])?,
            patch_embedding: Conv2d {
                weight: PackedConv2dWeight::new(vb.context(), &w)?,
                bias: None,
                stride: p,
                padding: 0,
                pad_end: 0,
            },
            position_embedding: vb.get("position_embedding.weight", &[c.num_positions(), d])?,
            image_size: c.image_size,
        })
    }

    pub fn forward(&self, ctx: &Context, pixel_values: &Tensor) -> Result<Tensor> {
        let s = pixel_values.shape();
        let size = self.image_size;
        if s.len() != 4 || s[0] == 0 || s[1] != 3 || s[2] != size || s[3] != size {
            return Err(Error::shape(
                "CLIPVisionModel",
                format!(
                    "pixel_values {s:?} must be [B, 3, {size}, {size}] (`image_size`; \
                     preprocess images with the model's CLIPImageProcessor)"
                ),
            ));
        }
        let [d, ..] = self.patch_embedding.weight.shape();
        let b = s[0];
        // 1. patches: [B, D, g, g] -> [B, D, N]
        let patches = self.patch_embedding.forward(ctx, pixel_values)?;
        let n = patches.shape()[2] * patches.shape()[3];
        let patches = patches.reshape(&[b, d, n])?;
        // 2. torch.cat([class_embeds, patch_embeds], dim=1), still channels-first
        let cls = elementwise::contiguous(
            ctx,
            View {
                tensor: &self.class_embedding,
                shape: vec![b, d, 1],
                strides: vec![0, 1, 0],
                offset: 0,
            },
        )?;
        let tokens = concat(ctx, &[&cls, &patches], 2)?;
        // 3. the transpose to [B, N + 1, D] and `+ position_embedding` in one strided pass
        let t = n + 1;
        let x = View {
            tensor: &tokens,
            shape: vec![b, t, d],
            strides: vec![d * t, 1, t],
            offset: 0,
        };
        let pos = View {
            tensor: &self.position_embedding,
            shape: vec![1, t, d],
            strides: vec![0, d, 1],
            offset: 0,
        };
        elementwise::binary(ctx, x, pos, BinaryOp::Add, Activation::None)
    }
}

/// transformers `CLIPVisionModel`.
pub struct ClipVisionModel {
    pub config: ClipVisionConfig,
    act: Activation,
    pub embeddings: ClipVisionEmbeddings,
    pub pre_layrnorm: LayerNorm,
    pub layers: Vec<ClipEncoderLayer>,
    pub post_layernorm: LayerNorm,
}

/// What `CLIPVisionModel(pixel_values, output_hidden_states=True)` returns.
pub struct ClipVisionOutput {
    /// [B, 1 + N, D]: the last layer's output (no norm after it).
    pub last_hidden_state: Tensor,
    /// [B, D]: `post_layernorm` of the class token.
    pub pooler_output: Tensor,
    /// The encoder's input (embeddings after `pre_layrnorm`), then each layer's output.
    pub hidden_states: Vec<Tensor>,
}

impl ClipVisionModel {
    /// Loads a `CLIPVisionModel` checkpoint with or without the `vision_model.` key prefix
    /// (transformers 4 wrote it; 5 does not). Every problem is reported at once.
    pub fn load(root: &Loader, config: &ClipVisionConfig) -> Result<Self> {
        let vb = if root.contains("vision_model.embeddings.class_embedding") {
            root.pp("vision_model")
        } else {
            root.clone()
        };
        let model = Self::load_unchecked(&vb, config)?;
        root.finish()?;
        Ok(model)
    }

    /// The tower at `vb`, leaving [`Loader::finish`] to the caller (a model that holds it).
    pub fn load_unchecked(vb: &Loader, config: &ClipVisionConfig) -> Result<Self> {
        let (d, ff, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        let layers = (0..config.num_hidden_layers)
            .map(|i| ClipEncoderLayer::load(&vb.pp("encoder.layers").pp(i), d, ff, eps))
            .collect::<Result<Vec<_>>>()?;
        Ok(ClipVisionModel {
            act: config.act()?,
            config: config.clone(),
            embeddings: ClipVisionEmbeddings::load(&vb.pp("embeddings"), config)?,
            pre_layrnorm: LayerNorm::load(&vb.pp("pre_layrnorm"), d, eps)?,
            layers,
            post_layernorm: LayerNorm::load(&vb.pp("post_layernorm"), d, eps)?,
        })
    }

    /// `pixel_values` [B, 3, image_size, image_size], as `CLIPImageProcessor` makes them.
    pub fn forward(&self, ctx: &Context, pixel_values: &Tensor) -> Result<ClipVisionOutput> {
        // 1. embeddings, then the pre-norm
        let h = self.embeddings.forward(ctx, pixel_values)?;
        let mut h = self.pre_layrnorm.forward(ctx, &h)?;
        let mut hidden_states = vec![h.clone()];
        // 2. encoder: every patch sees every other (no mask)
        let attn = AttentionOptions::new(self.config.num_attention_heads);
        for layer in &self.layers {
            h = layer.forward(ctx, &h, &attn, self.act)?;
            hidden_states.push(h.clone());
        }
        // 3. pooled_output = post_layernorm(last_hidden_state[:, 0, :])
        let (b, t, d) = (h.shape()[0], h.shape()[1], h.shape()[2]);
        let rows: Vec<u32> = (0..b).map(|i| (i * t) as u32).collect();
        let cls = embedding::gather_rows(ctx, &h.reshape(&[b * t, d])?, &rows)?;
        Ok(ClipVisionOutput {
            pooler_output: self.post_layernorm.forward(ctx, &cls)?,
            last_hidden_state: h,
            hidden_states,
        })
    }
}

/// transformers `CLIPVisionModelWithProjection` (unCLIP's `image_encoder`).
pub struct ClipVisionModelWithProjection {
    pub vision_model: ClipVisionModel,
    /// `nn.Linear(hidden_size, projection_dim, bias=False)`
    pub visual_projection: Linear,
}

/// What `CLIPVisionModelWithProjection(pixel_values)` returns, plus the tower's output.
pub struct ClipVisionModelWithProjectionOutput {
    /// [B, projection_dim], not normalized (as transformers returns it).
    pub image_embeds: Tensor,
    pub vision: ClipVisionOutput,
}

impl ClipVisionModelWithProjection {
    pub fn load(root: &Loader, config: &ClipVisionConfig) -> Result<Self> {
        let model = ClipVisionModelWithProjection {
            vision_model: ClipVisionModel::load_unchecked(&root.pp("vision_model"), config)?,
            visual_projection: Linear::load(
                &root.pp("visual_projection"),
                config.hidden_size,
                config.projection_dim,
                false,
            )?,
        };
        root.finish()?;
        Ok(model)
    }

    pub fn forward(
        &self,
        ctx: &Context,
        pixel_values: &Tensor,
    ) -> Result<ClipVisionModelWithProjectionOutput> {
        let vision = self.vision_model.forward(ctx, pixel_values)?;
        Ok(ClipVisionModelWithProjectionOutput {
            image_embeds: self.visual_projection.forward(ctx, &vision.pooler_output)?,
            vision,
        })
    }
}
