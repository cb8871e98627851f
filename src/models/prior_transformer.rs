//! diffusers `PriorTransformer` (`models/transformers/prior_transformer.py`), unCLIP's prior:
//! from a text embedding (and the text's hidden states) to a CLIP image embedding. The
//! sequence is [text tokens, projected embedding, time, image embedding, prd], plus a learned
//! positional embedding; self-attention blocks under a causal mask combined with the text's
//! padding mask; the prd token's output projected to the CLIP space.

use super::attention::Attention;
use super::nn::{LayerNorm, Linear};
use super::unet_2d_condition::batch_timesteps;
use crate::config::PriorTransformerConfig;
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::kernels::attention::{attention, AttentionOptions};
use crate::kernels::concat::concat;
use crate::kernels::elementwise::{self, BinaryOp, View};
use crate::kernels::embedding::{gather_rows, timestep_embedding, TimestepEmbedding};
use crate::kernels::Activation;
use crate::weights::Loader;

const OP: &str = "PriorTransformer";

/// diffusers' additive score for a masked key in the prior (`-10000.0`, not -inf: a key both
/// causally and padding-masked gets -20000, as in diffusers).
const MASKED: f32 = -10000.0;

/// `BasicTransformerBlock(dim, heads, dim_head, activation_fn="gelu", attention_bias=True)`
/// as the prior builds it: no cross-attention, so `norm1`, `attn1`, `norm3`, `ff` (GELU).
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm3: LayerNorm,
    /// `ff.net.0.proj` (dim -> 4 dim, GELU) and `ff.net.2`.
    pub ff_proj: Linear,
    pub ff_out: Linear,
}

impl BasicTransformerBlock {
    pub fn load(vb: &Loader, dim: usize, heads: usize, dim_head: usize) -> Result<Self> {
        let eps = 1e-5;
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::load(&vb.pp("norm1"), dim, eps)?,
            attn1: Attention::load(&vb.pp("attn1"), dim, None, heads, dim_head, true)?,
            norm3: LayerNorm::load(&vb.pp("norm3"), dim, eps)?,
            ff_proj: Linear::load(&vb.pp("ff.net.0.proj"), dim, 4 * dim, true)?,
            ff_out: Linear::load(&vb.pp("ff.net.2"), 4 * dim, dim, true)?,
        })
    }

    /// x [B, L, dim]; `bias` [B, H, L, L] the additive attention mask, if any.
    pub fn forward(&self, ctx: &Context, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let a = &self.attn1;
        let h = self.norm1.forward(ctx, x)?;
        let (q, k, v) = (
            a.to_q.forward(ctx, &h)?,
            a.to_k.forward(ctx, &h)?,
            a.to_v.forward(ctx, &h)?,
        );
        let opts = AttentionOptions {
            bias,
            ..AttentionOptions::new(a.heads)
        };
        let h = a.to_out.forward(ctx, &attention(ctx, &q, &k, &v, &opts)?)?;
        let x = elementwise::add(ctx, &h, x)?;
        let h = self.norm3.forward(ctx, &x)?;
        let h = self.ff_proj.forward_act(ctx, &h, Activation::Gelu)?;
        let h = self.ff_out.forward(ctx, &h)?;
        elementwise::add(ctx, &h, &x)
    }
}

/// diffusers `PriorTransformer`.
pub struct PriorTransformer {
    pub config: PriorTransformerConfig,
    /// `time_embedding.linear_1` (inner -> time_embed_dim, SiLU) and `linear_2` (-> inner).
    pub time_linear_1: Linear,
    pub time_linear_2: Linear,
    pub proj_in: Linear,
    pub embedding_proj_norm: Option<LayerNorm>,
    pub embedding_proj: Linear,
    pub encoder_hidden_states_proj: Option<Linear>,
    /// [1, num_embeddings + additional_embeddings, inner].
    pub positional_embedding: Tensor,
    /// [1, 1, inner] with `added_emb_type: "prd"`.
    pub prd_embedding: Option<Tensor>,
    pub norm_in: Option<LayerNorm>,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub norm_out: LayerNorm,
    pub proj_to_clip_embeddings: Linear,
    /// [1, clip_embed_dim]: `post_process_latents`' un-normalization.
    pub clip_mean: Tensor,
    pub clip_std: Tensor,
    dtype: DType,
}

impl PriorTransformer {
    pub fn load(vb: &Loader, config: &PriorTransformerConfig) -> Result<Self> {
        config.validate()?;
        let c = config;
        let (inner, d) = (c.inner_dim(), c.embedding_dim);
        let (temb, pd, clip) = (
            c.time_embed_dim(),
            c.embedding_proj_dim(),
            c.clip_embed_dim(),
        );
        let layer = |on: bool, name: &str, dim: usize| {
            on.then(|| LayerNorm::load(&vb.pp(name), dim, 1e-5))
                .transpose()
        };
        let model = PriorTransformer {
            time_linear_1: Linear::load(&vb.pp("time_embedding.linear_1"), inner, temb, true)?,
            time_linear_2: Linear::load(&vb.pp("time_embedding.linear_2"), temb, inner, true)?,
            proj_in: Linear::load(&vb.pp("proj_in"), d, inner, true)?,
            embedding_proj_norm: layer(
                c.embedding_proj_norm_type.is_some(),
                "embedding_proj_norm",
                pd,
            )?,
            embedding_proj: Linear::load(&vb.pp("embedding_proj"), pd, inner, true)?,
            encoder_hidden_states_proj: (c.encoder_hid_proj_type.is_some())
                .then(|| Linear::load(&vb.pp("encoder_hidden_states_proj"), d, inner, true))
                .transpose()?,
            positional_embedding: vb.get("positional_embedding", &[1, c.sequence_len(), inner])?,
            prd_embedding: (c.added_emb_type.is_some())
                .then(|| vb.get("prd_embedding", &[1, 1, inner]))
                .transpose()?,
            norm_in: layer(c.norm_in_type.is_some(), "norm_in", inner)?,
            transformer_blocks: (0..c.num_layers)
                .map(|i| {
                    let vb = vb.pp("transformer_blocks").pp(i);
                    BasicTransformerBlock::load(
                        &vb,
                        inner,
                        c.num_attention_heads,
                        c.attention_head_dim,
                    )
                })
                .collect::<Result<_>>()?,
            norm_out: LayerNorm::load(&vb.pp("norm_out"), inner, 1e-5)?,
            proj_to_clip_embeddings: Linear::load(
                &vb.pp("proj_to_clip_embeddings"),
                inner,
                clip,
                true,
            )?,
            clip_mean: vb.get("clip_mean", &[1, clip])?,
            clip_std: vb.get("clip_std", &[1, clip])?,
            config: c.clone(),
            dtype: vb.dtype(),
        };
        vb.finish()?;
        Ok(model)
    }

    /// `hidden_states` [B, embedding_dim] (the noisy image embedding), `timestep` one value or
    /// one per row, `proj_embedding` [B, embedding_proj_dim] (the text embedding),
    /// `encoder_hidden_states` [B, num_embeddings, embedding_dim] (the text's hidden states),
    /// `attention_mask` B x num_embeddings values (1 keep, 0 padding; diffusers then adds its
    /// causal mask; without one, as in diffusers, no mask at all). Returns the predicted image
    /// embedding [B, clip_embed_dim].
    pub fn forward(
        &self,
        ctx: &Context,
        hidden_states: &Tensor,
        timestep: &[f32],
        proj_embedding: &Tensor,
        encoder_hidden_states: Option<&Tensor>,
        attention_mask: Option<&[f32]>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let b = self.check_inputs(hidden_states, proj_embedding, encoder_hidden_states)?;
        // 1. time: time_embedding(time_proj(t))
        let t = batch_timesteps(OP, timestep, b)?;
        let t = Tensor::from_f32(ctx, &t, &[b], DType::F32)?;
        let t_emb = timestep_embedding(ctx, &t, &TimestepEmbedding::sd(c.inner_dim()), self.dtype)?;
        let h = self
            .time_linear_1
            .forward_act(ctx, &t_emb, Activation::Silu)?;
        let time_embeddings = self.time_linear_2.forward(ctx, &h)?;
        // 2. the projected embedding, the text's hidden states and the image embedding
        let normed = (self.embedding_proj_norm.as_ref())
            .map(|n| n.forward(ctx, proj_embedding))
            .transpose()?;
        let proj = self
            .embedding_proj
            .forward(ctx, normed.as_ref().unwrap_or(proj_embedding))?;
        let text = match (&self.encoder_hidden_states_proj, encoder_hidden_states) {
            (Some(p), Some(e)) => Some(p.forward(ctx, e)?),
            (Some(_), None) => {
                return Err(Error::shape(
                    OP,
                    "encoder_hidden_states_proj requires encoder_hidden_states",
                ))
            }
            (None, e) => e.cloned(),
        };
        let x = self.proj_in.forward(ctx, hidden_states)?;
        // 3. torch.cat([text, proj, time, x, prd], dim=1) + positional_embedding
        let x = self.sequence(ctx, b, text.as_ref(), [&proj, &time_embeddings, &x])?;
        let len = x.shape()[1];
        if len != c.sequence_len() {
            return Err(Error::shape(
                OP,
                format!(
                    "a sequence of {len} tokens, but positional_embedding has {} \
                     (num_embeddings + additional_embeddings)",
                    c.sequence_len()
                ),
            ));
        }
        let pos = View {
            tensor: &self.positional_embedding,
            shape: vec![b, len, c.inner_dim()],
            strides: vec![0, c.inner_dim(), 1],
            offset: 0,
        };
        let mut x = elementwise::binary(ctx, View::of(&x), pos, BinaryOp::Add, Activation::None)?;
        // 4. the text mask and the causal mask, one additive bias
        let bias = attention_mask
            .map(|m| self.mask_bias(ctx, m, b, len))
            .transpose()?;
        if let Some(n) = &self.norm_in {
            x = n.forward(ctx, &x)?;
        }
        // 5. blocks, norm_out, the prd token (else the image embedding's), to CLIP
        for block in &self.transformer_blocks {
            x = block.forward(ctx, &x, bias.as_ref())?;
        }
        let x = self.norm_out.forward(ctx, &x)?;
        // The prd token is last; without it, `hidden_states[:, additional_embeddings_len:]`
        // is the image embedding's token, then last too (diffusers keeps its length-1 axis).
        let rows: Vec<u32> = (0..b).map(|i| (i * len + len - 1) as u32).collect();
        let x = gather_rows(ctx, &x.reshape(&[b * len, c.inner_dim()])?, &rows)?;
        self.proj_to_clip_embeddings.forward(ctx, &x)
    }

    /// diffusers' `post_process_latents`: `latents * clip_std + clip_mean`.
    pub fn post_process_latents(&self, ctx: &Context, latents: &Tensor) -> Result<Tensor> {
        let s = latents.shape().to_vec();
        let d = self.config.clip_embed_dim();
        if s.len() != 2 || s[1] != d {
            return Err(Error::shape(
                OP,
                format!("latents {s:?} must be [B, {d}] (clip_embed_dim)"),
            ));
        }
        let row = |t| View {
            tensor: t,
            shape: s.clone(),
            strides: vec![0, 1],
            offset: 0,
        };
        let x = elementwise::binary(
            ctx,
            View::of(latents),
            row(&self.clip_std),
            BinaryOp::Mul,
            Activation::None,
        )?;
        elementwise::binary(
            ctx,
            View::of(&x),
            row(&self.clip_mean),
            BinaryOp::Add,
            Activation::None,
        )
    }

    /// The token sequence [B, L, inner]: the text's tokens, then each [B, inner] row of
    /// `rows` as one token, then `prd` (expanded to the batch).
    fn sequence(
        &self,
        ctx: &Context,
        b: usize,
        text: Option<&Tensor>,
        rows: [&Tensor; 3],
    ) -> Result<Tensor> {
        let inner = self.config.inner_dim();
        let mut parts: Vec<Tensor> = text.into_iter().cloned().collect();
        for r in rows {
            parts.push(r.reshape(&[b, 1, inner])?);
        }
        if let Some(prd) = &self.prd_embedding {
            parts.push(elementwise::contiguous(
                ctx,
                View {
                    tensor: prd,
                    shape: vec![b, 1, inner],
                    strides: vec![0, inner, 1],
                    offset: 0,
                },
            )?);
        }
        concat(ctx, &parts.iter().collect::<Vec<_>>(), 1)
    }

    /// `(1 - mask) * -10000` padded with zeros over the additional tokens, plus the causal
    /// `triu(-10000, 1)`, repeated per head: [B, H, L, L].
    fn mask_bias(&self, ctx: &Context, mask: &[f32], b: usize, len: usize) -> Result<Tensor> {
        let n = self.config.num_embeddings;
        if mask.len() != b * n {
            return Err(Error::shape(
                OP,
                format!(
                    "attention_mask holds {} values; {b} rows of {n} text tokens \
                     (num_embeddings) need {}",
                    mask.len(),
                    b * n
                ),
            ));
        }
        let heads = self.config.num_attention_heads;
        let mut v = Vec::with_capacity(b * heads * len * len);
        for row in mask.chunks_exact(n) {
            let text: Vec<f32> = (0..len)
                .map(|j| row.get(j).map_or(0.0, |&m| (1.0 - m) * MASKED))
                .collect();
            let mut one = Vec::with_capacity(len * len);
            for i in 0..len {
                one.extend((0..len).map(|j| text[j] + if j > i { MASKED } else { 0.0 }));
            }
            for _ in 0..heads {
                v.extend_from_slice(&one);
            }
        }
        Tensor::from_f32(ctx, &v, &[b, heads, len, len], self.dtype)
    }

    /// Shapes and dtypes of `forward`'s inputs; returns the batch size.
    fn check_inputs(
        &self,
        hidden_states: &Tensor,
        proj_embedding: &Tensor,
        encoder_hidden_states: Option<&Tensor>,
    ) -> Result<usize> {
        let c = &self.config;
        let b = hidden_states.shape().first().copied().unwrap_or(0);
        let want = |t: &Tensor, shape: &[usize]| t.shape() == shape && t.dtype() == self.dtype;
        if b == 0 || !want(hidden_states, &[b, c.embedding_dim]) {
            return Err(Error::shape(
                OP,
                format!(
                    "hidden_states {:?} must be [B, {}] (embedding_dim) in {}",
                    hidden_states.shape(),
                    c.embedding_dim,
                    self.dtype.name()
                ),
            ));
        }
        if !want(proj_embedding, &[b, c.embedding_proj_dim()]) {
            return Err(Error::shape(
                OP,
                format!(
                    "proj_embedding {:?} must be [{b}, {}] (embedding_proj_dim)",
                    proj_embedding.shape(),
                    c.embedding_proj_dim()
                ),
            ));
        }
        if let Some(e) = encoder_hidden_states {
            if !want(e, &[b, c.num_embeddings, c.embedding_dim]) {
                return Err(Error::shape(
                    OP,
                    format!(
                        "encoder_hidden_states {:?} must be [{b}, {}, {}] (num_embeddings, \
                         embedding_dim)",
                        e.shape(),
                        c.num_embeddings,
                        c.embedding_dim
                    ),
                ));
            }
        }
        Ok(b)
    }
}
