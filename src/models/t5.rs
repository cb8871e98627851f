//! transformers `T5EncoderModel` (`models/t5/modeling_t5.py`): shared token embedding, RMS
//! norms without bias, unscaled attention with a bucketed relative position bias computed by
//! the first layer and shared by all, ReLU or gated-GELU feed-forward, and the padding mask
//! (`attention_mask`). DALL-E 3's text encoder; the encoder half of
//! [`super::t5_decoder::T5ForConditionalGeneration`].

use super::nn::Linear;
use crate::config::T5Config;
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::kernels::attention::{attention, AttentionOptions};
use crate::kernels::elementwise::{self, BinaryOp, View};
use crate::kernels::{embedding, layer_norm, Activation};
use crate::weights::Loader;

/// The additive score of a masked key. transformers adds `torch.finfo(dtype).min` (sdpa puts it
/// in place of the position bias); hoa's flash kernel scales the bias by log2(e), which would
/// turn f32's min into -inf, so f32 uses half of it: still far below any score, and large
/// enough that every score of a fully masked row rounds to the same value, so such a row
/// averages all values as transformers' does. f16 storage holds at most -65504.
pub fn mask_value(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => f32::MIN / 2.0,
        DType::F16 => -65504.0,
    }
}

/// `T5LayerNorm`: RMS norm with a weight and no bias.
pub struct T5LayerNorm {
    pub weight: Tensor,
    pub eps: f32,
}

impl T5LayerNorm {
    pub(crate) fn load(vb: &Loader, dim: usize, eps: f64) -> Result<T5LayerNorm> {
        Ok(T5LayerNorm {
            weight: vb.get("weight", &[dim])?,
            eps: eps as f32,
        })
    }

    pub(crate) fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        layer_norm::rms_norm(ctx, x, Some(&self.weight), self.eps)
    }
}

/// `T5Attention`'s projections (no biases); the relative position bias lives in
/// [`RelativePositionBias`], computed once per stack.
pub struct T5Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
}

impl T5Attention {
    pub(crate) fn load(vb: &Loader, d_model: usize, inner: usize) -> Result<T5Attention> {
        Ok(T5Attention {
            q: Linear::load(&vb.pp("q"), d_model, inner, false)?,
            k: Linear::load(&vb.pp("k"), d_model, inner, false)?,
            v: Linear::load(&vb.pp("v"), d_model, inner, false)?,
            o: Linear::load(&vb.pp("o"), inner, d_model, false)?,
        })
    }
}

/// `T5DenseActDense` (wi) or `T5DenseGatedActDense` (wi_0, wi_1).
pub enum T5DenseReluDense {
    Plain {
        wi: Linear,
        wo: Linear,
    },
    Gated {
        wi_0: Linear,
        wi_1: Linear,
        wo: Linear,
    },
}

impl T5DenseReluDense {
    pub(crate) fn load(vb: &Loader, d: usize, ff: usize, gated: bool) -> Result<T5DenseReluDense> {
        Ok(if gated {
            T5DenseReluDense::Gated {
                wi_0: Linear::load(&vb.pp("wi_0"), d, ff, false)?,
                wi_1: Linear::load(&vb.pp("wi_1"), d, ff, false)?,
                wo: Linear::load(&vb.pp("wo"), ff, d, false)?,
            }
        } else {
            T5DenseReluDense::Plain {
                wi: Linear::load(&vb.pp("wi"), d, ff, false)?,
                wo: Linear::load(&vb.pp("wo"), ff, d, false)?,
            }
        })
    }

    pub(crate) fn forward(&self, ctx: &Context, x: &Tensor, act: Activation) -> Result<Tensor> {
        match self {
            T5DenseReluDense::Plain { wi, wo } => wo.forward(ctx, &wi.forward_act(ctx, x, act)?),
            T5DenseReluDense::Gated { wi_0, wi_1, wo } => {
                let gate = wi_0.forward(ctx, x)?;
                let lin = wi_1.forward(ctx, x)?;
                let g =
                    elementwise::binary(ctx, View::of(&lin), View::of(&gate), BinaryOp::Mul, act)?;
                wo.forward(ctx, &g)
            }
        }
    }
}

pub struct T5Block {
    pub self_attention: T5Attention,
    pub attention_layer_norm: T5LayerNorm,
    pub dense: T5DenseReluDense,
    pub ff_layer_norm: T5LayerNorm,
}

/// `relative_attention_bias` of a stack's first layer, [num_buckets, heads], kept on the host:
/// the bias depends only on positions and is built on the CPU.
pub struct RelativePositionBias {
    pub table: Vec<f32>,
    pub heads: usize,
    pub num_buckets: usize,
    pub max_distance: usize,
    /// The encoder's buckets tell the two directions apart; the decoder's (causal) do not.
    pub bidirectional: bool,
}

impl RelativePositionBias {
    pub(crate) fn load(vb: &Loader, c: &T5Config, bidirectional: bool) -> RelativePositionBias {
        let (num_buckets, heads) = (c.relative_attention_num_buckets, c.num_heads);
        RelativePositionBias {
            table: vb.get_host("relative_attention_bias.weight", &[num_buckets, heads]),
            heads,
            num_buckets,
            max_distance: c.relative_attention_max_distance,
            bidirectional,
        }
    }

    /// `T5Attention._relative_position_bucket`, in f32 as PyTorch computes it (the log buckets
    /// truncate toward zero).
    pub fn bucket(&self, relative_position: i64) -> usize {
        let mut num_buckets = self.num_buckets;
        let mut bucket = 0;
        let rp = if self.bidirectional {
            num_buckets /= 2;
            if relative_position > 0 {
                bucket = num_buckets;
            }
            relative_position.unsigned_abs() as usize
        } else {
            // Keys after the query (only reachable without the causal mask) share bucket 0.
            (-relative_position.min(0)) as usize
        };
        let max_exact = num_buckets / 2;
        if rp < max_exact {
            bucket += rp;
        } else {
            let ratio = ((rp as f32 / max_exact as f32).ln()
                / (self.max_distance as f64 / max_exact as f64).ln() as f32)
                * (num_buckets - max_exact) as f32;
            let large = max_exact + ratio as usize;
            bucket += large.min(num_buckets - 1);
        }
        bucket
    }

    /// The bias [H, Lq, Lk] for queries at positions `q0..q0 + lq` and keys `0..lk`
    /// (`compute_bias` with `past_seen_tokens = q0`).
    pub fn host(&self, q0: usize, lq: usize, lk: usize) -> Vec<f32> {
        let h = self.heads;
        let mut bias = vec![0f32; h * lq * lk];
        for i in 0..lq {
            for j in 0..lk {
                let bucket = self.bucket(j as i64 - (q0 + i) as i64);
                for head in 0..h {
                    bias[(head * lq + i) * lk + j] = self.table[bucket * h + head];
                }
            }
        }
        bias
    }
}

/// Checks an attention mask against `batch` sequences of `len` ids and returns whether it
/// masks anything (transformers skips an all-ones mask too).
pub(crate) fn check_mask(what: &str, mask: &[u32], batch: usize, len: usize) -> Result<bool> {
    if mask.len() != batch * len {
        return Err(Error::shape(
            "T5 attention_mask",
            format!(
                "{what}: {} mask values for {batch} sequences of {len} tokens",
                mask.len()
            ),
        ));
    }
    if let Some(v) = mask.iter().find(|&&m| m > 1) {
        return Err(Error::invalid(
            "T5 attention_mask",
            format!("{what}: values must be 0 (padding) or 1, found {v}"),
        ));
    }
    Ok(mask.contains(&0))
}

/// `bias` [H, Lq, Lk] (or none) turned into [B, H, Lq, Lk] with masked keys (`mask[b, j] == 0`)
/// set to [`mask_value`], as sdpa's `torch.where(attention_mask, position_bias, min)`.
pub(crate) fn masked_bias(
    bias: Option<&[f32]>,
    heads: usize,
    lq: usize,
    mask: &[u32],
    batch: usize,
    dtype: DType,
) -> Vec<f32> {
    let lk = mask.len() / batch;
    let per = heads * lq * lk;
    let mut out = Vec::with_capacity(batch * per);
    for b in 0..batch {
        let keep = &mask[b * lk..(b + 1) * lk];
        for idx in 0..per {
            let j = idx % lk;
            out.push(if keep[j] == 0 {
                mask_value(dtype)
            } else {
                bias.map_or(0.0, |x| x[idx])
            });
        }
    }
    out
}

pub struct T5EncoderModel {
    pub config: T5Config,
    act: Activation,
    pub shared: Tensor,
    relative_attention_bias: RelativePositionBias,
    pub blocks: Vec<T5Block>,
    pub final_layer_norm: T5LayerNorm,
    dtype: DType,
}

/// What `T5EncoderModel(..., output_hidden_states=True)` returns.
pub struct T5EncoderOutput {
    /// [B, L, d_model], after the final RMS norm.
    pub last_hidden_state: Tensor,
    /// transformers' order: the input of each block, then the final normed output.
    pub hidden_states: Vec<Tensor>,
}

impl T5EncoderModel {
    pub fn load(vb: &Loader, config: &T5Config) -> Result<T5EncoderModel> {
        // The embedding is tied: checkpoints carry `shared.weight`, `encoder.embed_tokens.weight`
        // or both.
        let d = config.d_model;
        let shared = if vb.contains("shared.weight") {
            vb.ignore("encoder.embed_tokens.weight");
            vb.get("shared.weight", &[config.vocab_size, d])?
        } else {
            vb.get("encoder.embed_tokens.weight", &[config.vocab_size, d])?
        };
        let m = T5EncoderModel::load_stack(&vb.pp("encoder"), config, shared)?;
        vb.finish()?;
        Ok(m)
    }

    /// The `encoder.` stack under `enc`, with the shared embedding already loaded (the
    /// seq2seq model shares it with its decoder); does not check for unused weights.
    pub(crate) fn load_stack(enc: &Loader, config: &T5Config, shared: Tensor) -> Result<Self> {
        let (act, gated) = config.feed_forward()?;
        let (d, inner, ff) = (config.d_model, config.num_heads * config.d_kv, config.d_ff);
        let eps = config.layer_norm_epsilon;
        let relative_attention_bias =
            RelativePositionBias::load(&enc.pp("block.0.layer.0.SelfAttention"), config, true);
        let blocks = (0..config.num_layers)
            .map(|i| {
                let b = enc.pp("block").pp(i);
                Ok(T5Block {
                    self_attention: T5Attention::load(&b.pp("layer.0.SelfAttention"), d, inner)?,
                    attention_layer_norm: T5LayerNorm::load(&b.pp("layer.0.layer_norm"), d, eps)?,
                    dense: T5DenseReluDense::load(&b.pp("layer.1.DenseReluDense"), d, ff, gated)?,
                    ff_layer_norm: T5LayerNorm::load(&b.pp("layer.1.layer_norm"), d, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = T5LayerNorm::load(&enc.pp("final_layer_norm"), d, eps)?;
        Ok(T5EncoderModel {
            config: config.clone(),
            act,
            shared,
            relative_attention_bias,
            blocks,
            final_layer_norm,
            dtype: enc.dtype(),
        })
    }

    /// `T5Attention._relative_position_bucket` with `bidirectional=True`.
    pub fn relative_position_bucket(&self, relative_position: i64) -> usize {
        self.relative_attention_bias.bucket(relative_position)
    }

    /// `ids` holds `batch` sequences of equal length.
    pub fn forward(&self, ctx: &Context, ids: &[u32], batch: usize) -> Result<T5EncoderOutput> {
        self.forward_masked(ctx, ids, batch, None)
    }

    /// [`Self::forward`] with transformers' `attention_mask` (1 = token, 0 = padding, one per
    /// id): padded keys are masked out of every self-attention. Padded positions still get
    /// outputs (as in transformers). A mask of all ones runs exactly the unmasked path.
    pub fn forward_masked(
        &self,
        ctx: &Context,
        ids: &[u32],
        batch: usize,
        attention_mask: Option<&[u32]>,
    ) -> Result<T5EncoderOutput> {
        let c = &self.config;
        if batch == 0 || ids.is_empty() || ids.len() % batch != 0 {
            return Err(Error::shape(
                "T5EncoderModel",
                format!(
                    "{} token ids do not split into {batch} sequences",
                    ids.len()
                ),
            ));
        }
        let len = ids.len() / batch;
        let mut h =
            embedding::gather_rows(ctx, &self.shared, ids)?.reshape(&[batch, len, c.d_model])?;
        let heads = c.num_heads;
        let pos = self.relative_attention_bias.host(0, len, len);
        let bias = match attention_mask {
            Some(m) if check_mask("T5EncoderModel", m, batch, len)? => {
                let b = masked_bias(Some(&pos), heads, len, m, batch, self.dtype);
                Tensor::from_f32(ctx, &b, &[batch, heads, len, len], self.dtype)?
            }
            _ => Tensor::from_f32(ctx, &pos, &[heads, len, len], self.dtype)?,
        };
        let opts = AttentionOptions {
            scale: Some(1.0),
            bias: Some(&bias),
            ..AttentionOptions::new(heads)
        };
        let mut hidden_states = Vec::with_capacity(self.blocks.len() + 1);
        for block in &self.blocks {
            hidden_states.push(h.clone());
            // layer[0]: self-attention
            let x = block.attention_layer_norm.forward(ctx, &h)?;
            let sa = &block.self_attention;
            let (q, k, v) = (
                sa.q.forward(ctx, &x)?,
                sa.k.forward(ctx, &x)?,
                sa.v.forward(ctx, &x)?,
            );
            let o = attention(ctx, &q, &k, &v, &opts)?;
            h = elementwise::add(ctx, &h, &sa.o.forward(ctx, &o)?)?;
            // layer[1]: feed-forward
            let x = block.ff_layer_norm.forward(ctx, &h)?;
            let y = block.dense.forward(ctx, &x, self.act)?;
            h = elementwise::add(ctx, &h, &y)?;
        }
        let last = self.final_layer_norm.forward(ctx, &h)?;
        hidden_states.push(last.clone());
        Ok(T5EncoderOutput {
            last_hidden_state: last,
            hidden_states,
        })
    }
}
