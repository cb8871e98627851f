//! transformers `T5EncoderModel` (`models/t5/modeling_t5.py`): shared token embedding, RMS
//! norms without bias, unscaled attention with a bucketed relative position bias computed by
//! the first layer and shared by all, ReLU or gated-GELU feed-forward. DALL-E 3's text encoder.

use super::nn::Linear;
use crate::config::T5Config;
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::kernels::attention::{attention, AttentionOptions};
use crate::kernels::elementwise::{self, BinaryOp, View};
use crate::kernels::{embedding, layer_norm, Activation};
use crate::weights::Loader;

/// `T5LayerNorm`: RMS norm with a weight and no bias.
pub struct T5LayerNorm {
    pub weight: Tensor,
    pub eps: f32,
}

impl T5LayerNorm {
    fn load(vb: &Loader, dim: usize, eps: f64) -> Result<T5LayerNorm> {
        Ok(T5LayerNorm {
            weight: vb.get("weight", &[dim])?,
            eps: eps as f32,
        })
    }

    fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        layer_norm::rms_norm(ctx, x, Some(&self.weight), self.eps)
    }
}

pub struct T5Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
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

pub struct T5Block {
    pub self_attention: T5Attention,
    pub attention_layer_norm: T5LayerNorm,
    pub dense: T5DenseReluDense,
    pub ff_layer_norm: T5LayerNorm,
}

pub struct T5EncoderModel {
    pub config: T5Config,
    act: Activation,
    pub shared: Tensor,
    /// `relative_attention_bias.weight` of block 0, [num_buckets, heads], kept on the host:
    /// the bias depends only on the sequence length and is built on the CPU.
    relative_attention_bias: Vec<f32>,
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
        let (act, gated) = config.feed_forward()?;
        let (d, inner, ff) = (config.d_model, config.num_heads * config.d_kv, config.d_ff);
        // The embedding is tied: checkpoints carry `shared.weight`, `encoder.embed_tokens.weight`
        // or both.
        let shared = if vb.contains("shared.weight") {
            vb.ignore("encoder.embed_tokens.weight");
            vb.get("shared.weight", &[config.vocab_size, d])?
        } else {
            vb.get("encoder.embed_tokens.weight", &[config.vocab_size, d])?
        };
        let enc = vb.pp("encoder");
        let eps = config.layer_norm_epsilon;
        let relative_attention_bias = enc.pp("block.0.layer.0.SelfAttention").get_host(
            "relative_attention_bias.weight",
            &[config.relative_attention_num_buckets, config.num_heads],
        );
        let blocks = (0..config.num_layers)
            .map(|i| {
                let b = enc.pp("block").pp(i);
                let a = b.pp("layer.0.SelfAttention");
                let f = b.pp("layer.1.DenseReluDense");
                Ok(T5Block {
                    self_attention: T5Attention {
                        q: Linear::load(&a.pp("q"), d, inner, false)?,
                        k: Linear::load(&a.pp("k"), d, inner, false)?,
                        v: Linear::load(&a.pp("v"), d, inner, false)?,
                        o: Linear::load(&a.pp("o"), inner, d, false)?,
                    },
                    attention_layer_norm: T5LayerNorm::load(&b.pp("layer.0.layer_norm"), d, eps)?,
                    dense: if gated {
                        T5DenseReluDense::Gated {
                            wi_0: Linear::load(&f.pp("wi_0"), d, ff, false)?,
                            wi_1: Linear::load(&f.pp("wi_1"), d, ff, false)?,
                            wo: Linear::load(&f.pp("wo"), ff, d, false)?,
                        }
                    } else {
                        T5DenseReluDense::Plain {
                            wi: Linear::load(&f.pp("wi"), d, ff, false)?,
                            wo: Linear::load(&f.pp("wo"), ff, d, false)?,
                        }
                    },
                    ff_layer_norm: T5LayerNorm::load(&b.pp("layer.1.layer_norm"), d, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = T5LayerNorm::load(&enc.pp("final_layer_norm"), d, eps)?;
        vb.finish()?;
        Ok(T5EncoderModel {
            config: config.clone(),
            act,
            shared,
            relative_attention_bias,
            blocks,
            final_layer_norm,
            dtype: vb.dtype(),
        })
    }

    /// `T5Attention._relative_position_bucket` with `bidirectional=True`, in f32 as PyTorch
    /// computes it (the log buckets truncate toward zero).
    pub fn relative_position_bucket(&self, relative_position: i64) -> usize {
        let c = &self.config;
        let num_buckets = c.relative_attention_num_buckets / 2;
        let mut bucket = if relative_position > 0 {
            num_buckets
        } else {
            0
        };
        let rp = relative_position.unsigned_abs() as usize;
        let max_exact = num_buckets / 2;
        if rp < max_exact {
            bucket += rp;
        } else {
            let ratio = ((rp as f32 / max_exact as f32).ln()
                / (c.relative_attention_max_distance as f64 / max_exact as f64).ln() as f32)
                * (num_buckets - max_exact) as f32;
            let large = max_exact + ratio as usize;
            bucket += large.min(num_buckets - 1);
        }
        bucket
    }

    /// The position bias [H, L, L]: `relative_attention_bias(bucket(k - q))`.
    fn position_bias(&self, ctx: &Context, len: usize) -> Result<Tensor> {
        let h = self.config.num_heads;
        let mut bias = vec![0f32; h * len * len];
        for i in 0..len {
            for j in 0..len {
                let bucket = self.relative_position_bucket(j as i64 - i as i64);
                for head in 0..h {
                    bias[(head * len + i) * len + j] =
                        self.relative_attention_bias[bucket * h + head];
                }
            }
        }
        Tensor::from_f32(ctx, &bias, &[h, len, len], self.dtype)
    }

    /// `ids` holds `batch` sequences of equal length.
    pub fn forward(&self, ctx: &Context, ids: &[u32], batch: usize) -> Result<T5EncoderOutput> {
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
        let bias = self.position_bias(ctx, len)?;
        let opts = AttentionOptions {
            scale: Some(1.0),
            bias: Some(&bias),
            ..AttentionOptions::new(c.num_heads)
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
            let y = match &block.dense {
                T5DenseReluDense::Plain { wi, wo } => {
                    wo.forward(ctx, &wi.forward_act(ctx, &x, self.act)?)?
                }
                T5DenseReluDense::Gated { wi_0, wi_1, wo } => {
                    let gate = wi_0.forward(ctx, &x)?;
                    let lin = wi_1.forward(ctx, &x)?;
                    let g = elementwise::binary(
                        ctx,
                        View::of(&lin),
                        View::of(&gate),
                        BinaryOp::Mul,
                        self.act,
                    )?;
                    wo.forward(ctx, &g)?
                }
            };
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
