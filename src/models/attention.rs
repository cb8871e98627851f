//! diffusers' attention blocks (`models/attention_processor.py` `Attention`,
//! `models/attention.py` `BasicTransformerBlock` / `FeedForward` / `GEGLU`,
//! `models/transformers/transformer_2d.py` `Transformer2DModel` with continuous inputs): the
//! spatial transformers of the SD U-Net and the single-head attention of the VAE's mid block.

use super::nn::{
    add_sequence_to_nchw, linear_from_nchw, linears_from_nchw, GroupNorm, LayerNorm, Linear,
};
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::kernels::attention::{attention, AttentionOptions, MAX_HEAD_DIM};
use crate::kernels::concat::concat;
use crate::kernels::elementwise::{self, BinaryOp, View};
use crate::kernels::matmul::{self, MatmulOptions};
use crate::kernels::{softmax, Activation};
use crate::weights::Loader;

/// `Attention(query_dim, cross_attention_dim, heads, dim_head, bias, out_bias=True)`:
/// `to_q`, `to_k`, `to_v` (biases when `bias`), `to_out.0`; with `norm_num_groups` also the
/// `group_norm` of the VAE's spatial attention.
pub struct Attention {
    pub group_norm: Option<GroupNorm>,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: usize,
}

impl Attention {
    pub fn load(
        vb: &Loader,
        query_dim: usize,
        cross_attention_dim: Option<usize>,
        heads: usize,
        dim_head: usize,
        bias: bool,
    ) -> Result<Attention> {
        let inner = heads * dim_head;
        let kv = cross_attention_dim.unwrap_or(query_dim);
        Ok(Attention {
            group_norm: None,
            to_q: Linear::load(&vb.pp("to_q"), query_dim, inner, bias)?,
            to_k: Linear::load(&vb.pp("to_k"), kv, inner, bias)?,
            to_v: Linear::load(&vb.pp("to_v"), kv, inner, bias)?,
            to_out: Linear::load(&vb.pp("to_out.0"), inner, query_dim, true)?,
            heads,
        })
    }

    /// The VAE mid block's attention: `group_norm`, then self attention over the pixels
    /// (one head in SD's VAE), biases on every projection, `residual_connection=True`,
    /// `rescale_output_factor=1`.
    pub fn load_spatial(
        vb: &Loader,
        channels: usize,
        heads: usize,
        groups: usize,
        eps: f64,
    ) -> Result<Attention> {
        if heads == 0 || channels % heads != 0 {
            return Err(Error::Checkpoint(format!(
                "{}: {channels} channels do not split into {heads} heads",
                vb.key("to_q")
            )));
        }
        let mut a = Attention::load(vb, channels, None, heads, channels / heads, true)?;
        a.group_norm = Some(GroupNorm::load(
            &vb.pp("group_norm"),
            groups,
            channels,
            eps,
        )?);
        Ok(a)
    }

    /// x [B, L, query_dim]; `context` [B, Lk, cross_attention_dim] for cross attention, None
    /// for self attention. Returns [B, L, query_dim].
    pub fn forward(&self, ctx: &Context, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let kv = context.unwrap_or(x);
        let q = self.to_q.forward(ctx, x)?;
        let k = self.to_k.forward(ctx, kv)?;
        let v = self.to_v.forward(ctx, kv)?;
        let o = scaled_dot_product_attention(ctx, &q, &k, &v, self.heads)?;
        self.to_out.forward(ctx, &o)
    }

    /// The spatial form on x [B, C, H, W]: `x + to_out(attn(group_norm(x) as a sequence))`.
    pub fn forward_spatial(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        let gn = self.group_norm.as_ref().ok_or_else(|| {
            Error::shape(
                "Attention",
                "forward_spatial needs an attention with group_norm",
            )
        })?;
        if x.shape().len() != 4 || x.shape()[1] != gn.weight.shape()[0] {
            return Err(Error::shape(
                "Attention",
                format!(
                    "input {:?} must be [B, {}, H, W]",
                    x.shape(),
                    gn.weight.shape()[0]
                ),
            ));
        }
        let h = gn.forward(ctx, x, false)?;
        let qkv = linears_from_nchw(ctx, &h, &[&self.to_q, &self.to_k, &self.to_v])?;
        let o = scaled_dot_product_attention(ctx, &qkv[0], &qkv[1], &qkv[2], self.heads)?;
        let o = self.to_out.forward(ctx, &o)?;
        add_sequence_to_nchw(ctx, x, &o)
    }
}

/// `F.scaled_dot_product_attention` on the [B, L, H*D] layout. Head dims up to the flash
/// kernel's [`MAX_HEAD_DIM`] use it; larger single-head attention (the SD VAE's 512-wide mid
/// block) falls back to matmul, softmax, matmul, which materializes the [B, Lq, Lk] scores.
pub fn scaled_dot_product_attention(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    let d = q.shape().last().copied().unwrap_or(0) / heads.max(1);
    if d <= MAX_HEAD_DIM || heads != 1 {
        return attention(ctx, q, k, v, &AttentionOptions::new(heads));
    }
    let scores = matmul::matmul(
        ctx,
        q,
        k,
        &MatmulOptions {
            trans_b: true,
            alpha: 1.0 / (d as f32).sqrt(),
            ..Default::default()
        },
    )?;
    let p = softmax::softmax(ctx, &scores, 1.0)?;
    matmul::matmul(ctx, &p, v, &MatmulOptions::default())
}

/// `FeedForward(dim, activation_fn="geglu")`: `net.0.proj` (dim -> 2 * inner) as GEGLU, then
/// `net.2` (inner -> dim).
pub struct FeedForward {
    pub proj: Linear,
    pub out: Linear,
}

impl FeedForward {
    pub fn load(vb: &Loader, dim: usize, inner: usize) -> Result<FeedForward> {
        Ok(FeedForward {
            proj: Linear::load(&vb.pp("net.0.proj"), dim, 2 * inner, true)?,
            out: Linear::load(&vb.pp("net.2"), inner, dim, true)?,
        })
    }

    pub fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        // The projection is 8x wider than x: at large sizes it alone would exceed one binding
        // (SD at 768x768 with guidance: 189 MB against WebGPU's 128 MiB). Like diffusers'
        // `_chunked_feed_forward`, run it on chunks of tokens then; each row is independent.
        let dim = *x.shape().last().unwrap_or(&1);
        let rows = x.numel() / dim.max(1);
        let wide = self.proj.weight.shape()[0] as u64 * x.dtype().size() as u64;
        // Leave room for the pool's size classes (up to 1/8 over the request).
        let fit = (ctx.max_binding_bytes() / 9 * 8 / wide.max(1)) as usize;
        if rows > fit && fit > 0 {
            return self.forward_in_chunks(ctx, x, fit);
        }
        self.forward_rows(ctx, x)
    }

    /// The feed-forward on chunks of at most `rows_per_chunk` tokens, concatenated.
    pub fn forward_in_chunks(
        &self,
        ctx: &Context,
        x: &Tensor,
        rows_per_chunk: usize,
    ) -> Result<Tensor> {
        let dim = *x.shape().last().unwrap_or(&1);
        let rows = x.numel() / dim.max(1);
        let flat = x.reshape(&[rows, dim])?;
        let mut outs = Vec::new();
        let mut start = 0;
        while start < rows {
            let n = rows_per_chunk.max(1).min(rows - start);
            outs.push(self.forward_rows(ctx, &flat.narrow_rows(ctx, start, n)?)?);
            start += n;
        }
        let refs: Vec<&Tensor> = outs.iter().collect();
        concat(ctx, &refs, 0)?.reshape(x.shape())
    }

    fn forward_rows(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        // hidden_states, gate = proj(x).chunk(2, dim=-1); hidden_states * gelu(gate)
        let p = self.proj.forward(ctx, x)?;
        let last = p.shape().len() - 1;
        let g = elementwise::binary(
            ctx,
            View::of(&p).chunk(2, last, 0)?,
            View::of(&p).chunk(2, last, 1)?,
            BinaryOp::Mul,
            Activation::Gelu,
        )?;
        self.out.forward(ctx, &g)
    }
}

/// `BasicTransformerBlock(dim, heads, dim_head, cross_attention_dim, activation_fn="geglu")`
/// with `norm_type="layer_norm"`: pre-LN self attention, cross attention, GEGLU feed-forward.
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn load(
        vb: &Loader,
        dim: usize,
        heads: usize,
        dim_head: usize,
        cross_attention_dim: usize,
    ) -> Result<BasicTransformerBlock> {
        let eps = 1e-5;
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::load(&vb.pp("norm1"), dim, eps)?,
            attn1: Attention::load(&vb.pp("attn1"), dim, None, heads, dim_head, false)?,
            norm2: LayerNorm::load(&vb.pp("norm2"), dim, eps)?,
            attn2: Attention::load(
                &vb.pp("attn2"),
                dim,
                Some(cross_attention_dim),
                heads,
                dim_head,
                false,
            )?,
            norm3: LayerNorm::load(&vb.pp("norm3"), dim, eps)?,
            ff: FeedForward::load(&vb.pp("ff"), dim, 4 * dim)?,
        })
    }

    /// x [B, L, dim], context [B, Lk, cross_attention_dim].
    pub fn forward(&self, ctx: &Context, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let h = self
            .attn1
            .forward(ctx, &self.norm1.forward(ctx, x)?, None)?;
        let x = elementwise::add(ctx, &h, x)?;
        let h = self
            .attn2
            .forward(ctx, &self.norm2.forward(ctx, &x)?, Some(context))?;
        let x = elementwise::add(ctx, &h, &x)?;
        let h = self.ff.forward(ctx, &self.norm3.forward(ctx, &x)?)?;
        elementwise::add(ctx, &h, &x)
    }
}

/// `Transformer2DModel` on continuous inputs: GroupNorm (eps 1e-6), `proj_in` (1x1 conv, or
/// linear with `use_linear_projection`), the transformer blocks, `proj_out`, residual. Both
/// projections are the same matmul on the pixels; only the checkpoint shape differs.
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Linear,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Linear,
    pub in_channels: usize,
}

impl Transformer2DModel {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        vb: &Loader,
        heads: usize,
        dim_head: usize,
        in_channels: usize,
        num_layers: usize,
        cross_attention_dim: usize,
        norm_num_groups: usize,
        use_linear_projection: bool,
    ) -> Result<Transformer2DModel> {
        let inner = heads * dim_head;
        let proj = |name: &str, cin: usize, cout: usize| -> Result<Linear> {
            if use_linear_projection {
                Linear::load(&vb.pp(name), cin, cout, true)
            } else {
                let p = vb.pp(name);
                Ok(Linear {
                    weight: p.get("weight", &[cout, cin, 1, 1])?.reshape(&[cout, cin])?,
                    bias: Some(p.get("bias", &[cout])?),
                })
            }
        };
        Ok(Transformer2DModel {
            norm: GroupNorm::load(&vb.pp("norm"), norm_num_groups, in_channels, 1e-6)?,
            proj_in: proj("proj_in", in_channels, inner)?,
            transformer_blocks: (0..num_layers)
                .map(|i| {
                    BasicTransformerBlock::load(
                        &vb.pp("transformer_blocks").pp(i),
                        inner,
                        heads,
                        dim_head,
                        cross_attention_dim,
                    )
                })
                .collect::<Result<_>>()?,
            proj_out: proj("proj_out", inner, in_channels)?,
            in_channels,
        })
    }

    /// x [B, C, H, W], context [B, Lk, cross_attention_dim]; returns [B, C, H, W].
    pub fn forward(&self, ctx: &Context, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        if x.shape().len() != 4 || x.shape()[1] != self.in_channels {
            return Err(Error::shape(
                "Transformer2DModel",
                format!(
                    "input {:?} must be [B, {}, H, W]",
                    x.shape(),
                    self.in_channels
                ),
            ));
        }
        let h = self.norm.forward(ctx, x, false)?;
        // proj_in, then permute(0, 2, 3, 1).reshape(batch, height * width, inner_dim)
        let mut h = linear_from_nchw(ctx, &h, &self.proj_in)?;
        for block in &self.transformer_blocks {
            h = block.forward(ctx, &h, context)?;
        }
        // proj_out, reshape(batch, height, width, inner_dim).permute(0, 3, 1, 2) + residual
        let h = self.proj_out.forward(ctx, &h)?;
        add_sequence_to_nchw(ctx, x, &h)
    }
}
