//! CLIP's text tower, transformers `CLIPTextModel` (`models/clip/modeling_clip.py`): token and
//! position embeddings, pre-LN transformer layers with causal self-attention, final layer norm,
//! and the pooled EOS embedding. Stable Diffusion 1.x uses `last_hidden_state`; SD 2.x the
//! penultimate layer (`hidden_states[-2]`), which [`ClipTextOutput::hidden_states`] exposes.

use super::nn::{LayerNorm, Linear};
use crate::config::ClipTextConfig;
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::kernels::attention::{attention, AttentionOptions};
use crate::kernels::embedding::EmbeddingTable;
use crate::kernels::{elementwise, embedding, Activation};
use crate::weights::Loader;

pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
}

pub struct ClipMlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

pub struct ClipEncoderLayer {
    pub self_attn: ClipAttention,
    pub layer_norm1: LayerNorm,
    pub mlp: ClipMlp,
    pub layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    /// `encoder.layers.{i}` of either tower: width `d`, MLP width `ff`.
    pub fn load(l: &Loader, d: usize, ff: usize, eps: f64) -> Result<ClipEncoderLayer> {
        let a = l.pp("self_attn");
        Ok(ClipEncoderLayer {
            self_attn: ClipAttention {
                q_proj: Linear::load(&a.pp("q_proj"), d, d, true)?,
                k_proj: Linear::load(&a.pp("k_proj"), d, d, true)?,
                v_proj: Linear::load(&a.pp("v_proj"), d, d, true)?,
                out_proj: Linear::load(&a.pp("out_proj"), d, d, true)?,
            },
            layer_norm1: LayerNorm::load(&l.pp("layer_norm1"), d, eps)?,
            mlp: ClipMlp {
                fc1: Linear::load(&l.pp("mlp.fc1"), d, ff, true)?,
                fc2: Linear::load(&l.pp("mlp.fc2"), ff, d, true)?,
            },
            layer_norm2: LayerNorm::load(&l.pp("layer_norm2"), d, eps)?,
        })
    }

    /// Pre-LN self-attention then MLP, each added back: `CLIPEncoderLayer.forward`. The text
    /// tower passes a causal `attn`, the vision tower a plain one.
    pub fn forward(
        &self,
        ctx: &Context,
        h: &Tensor,
        attn: &AttentionOptions,
        act: Activation,
    ) -> Result<Tensor> {
        let x = self.layer_norm1.forward(ctx, h)?;
        let sa = &self.self_attn;
        let q = sa.q_proj.forward(ctx, &x)?;
        let k = sa.k_proj.forward(ctx, &x)?;
        let v = sa.v_proj.forward(ctx, &x)?;
        let o = attention(ctx, &q, &k, &v, attn)?;
        let h = elementwise::add(ctx, h, &sa.out_proj.forward(ctx, &o)?)?;
        let x = self.layer_norm2.forward(ctx, &h)?;
        let x = self.mlp.fc1.forward_act(ctx, &x, act)?;
        elementwise::add(ctx, &h, &self.mlp.fc2.forward(ctx, &x)?)
    }
}

pub struct ClipTextModel {
    pub config: ClipTextConfig,
    act: Activation,
    /// In blocks when it exceeds one storage binding (the f32 49408 x 768 table).
    pub token_embedding: EmbeddingTable,
    pub position_embedding: Tensor,
    pub layers: Vec<ClipEncoderLayer>,
    pub final_layer_norm: LayerNorm,
}

/// What `CLIPTextModel(..., output_hidden_states=True)` returns.
pub struct ClipTextOutput {
    /// [B, L, D], after the final layer norm.
    pub last_hidden_state: Tensor,
    /// [B, D]: the final state at each sequence's EOS token.
    pub pooler_output: Tensor,
    /// The embeddings' output, then each layer's output (before the final layer norm).
    pub hidden_states: Vec<Tensor>,
}

impl ClipTextModel {
    /// Loads from a checkpoint with or without the `text_model.` key prefix (SD checkpoints
    /// have it; transformers 5 saves without it). Every problem is reported at once.
    pub fn load(root: &Loader, config: &ClipTextConfig) -> Result<ClipTextModel> {
        let vb = if root.contains("text_model.embeddings.token_embedding.weight") {
            root.pp("text_model")
        } else {
            root.clone()
        };
        let model = Self::load_unchecked(&vb, config)?;
        root.finish()?;
        Ok(model)
    }

    /// The tower at `vb` without checking that the checkpoint holds nothing else (a
    /// `CLIPModel` loads both towers, then calls [`Loader::finish`] once).
    pub fn load_unchecked(vb: &Loader, config: &ClipTextConfig) -> Result<ClipTextModel> {
        // A buffer older checkpoints saved; the model derives it.
        vb.ignore("embeddings.position_ids");
        let (d, ff) = (config.hidden_size, config.intermediate_size);
        let emb = vb.pp("embeddings");
        let token_embedding = EmbeddingTable::load(
            &emb,
            "token_embedding.weight",
            [config.vocab_size, d],
            vb.context().max_binding_bytes(),
        )?;
        let position_embedding = emb.get(
            "position_embedding.weight",
            &[config.max_position_embeddings, d],
        )?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                ClipEncoderLayer::load(&vb.pp("encoder.layers").pp(i), d, ff, config.layer_norm_eps)
            })
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm =
            LayerNorm::load(&vb.pp("final_layer_norm"), d, config.layer_norm_eps)?;
        Ok(ClipTextModel {
            act: config.act()?,
            config: config.clone(),
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
        })
    }

    /// `ids` holds `batch` sequences of equal length (at most `max_position_embeddings`).
    pub fn forward(&self, ctx: &Context, ids: &[u32], batch: usize) -> Result<ClipTextOutput> {
        let c = &self.config;
        if batch == 0 || ids.len() % batch != 0 {
            return Err(Error::shape(
                "CLIPTextModel",
                format!(
                    "{} token ids do not split into {batch} sequences",
                    ids.len()
                ),
            ));
        }
        let len = ids.len() / batch;
        if len > c.max_position_embeddings {
            return Err(Error::shape(
                "CLIPTextModel",
                format!(
                    "sequences of {len} tokens exceed max_position_embeddings {}; truncate the prompt",
                    c.max_position_embeddings
                ),
            ));
        }
        let d = c.hidden_size;
        // 1. embeddings: token + position
        let tok = self
            .token_embedding
            .lookup(ctx, ids)?
            .reshape(&[batch, len, d])?;
        let positions: Vec<u32> = (0..len as u32).collect();
        let pos = embedding::gather_rows(ctx, &self.position_embedding, &positions)?;
        let mut h = elementwise::add(ctx, &tok, &pos)?;
        let mut hidden_states = vec![h.clone()];
        // 2. encoder layers (pre-LN, causal self-attention)
        let attn = AttentionOptions {
            causal: true,
            ..AttentionOptions::new(c.num_attention_heads)
        };
        for layer in &self.layers {
            h = layer.forward(ctx, &h, &attn, self.act)?;
            hidden_states.push(h.clone());
        }
        // 3. final layer norm and the pooled EOS state
        let last = self.final_layer_norm.forward(ctx, &h)?;
        let rows: Vec<u32> = (0..batch)
            .map(|b| (b * len + self.eos_position(&ids[b * len..(b + 1) * len])) as u32)
            .collect();
        let pooler_output = embedding::gather_rows(ctx, &last.reshape(&[batch * len, d])?, &rows)?;
        Ok(ClipTextOutput {
            last_hidden_state: last,
            pooler_output,
            hidden_states,
        })
    }

    /// transformers' rule: with the legacy `eos_token_id == 2` the highest id (argmax), else
    /// the first `eos_token_id`; the first maximal / matching index in both cases.
    fn eos_position(&self, ids: &[u32]) -> usize {
        match self.config.eos_token_id {
            Some(eos) if eos != 2 => ids.iter().position(|&t| t == eos).unwrap_or(0),
            _ => {
                let max = ids.iter().copied().max().unwrap_or(0);
                ids.iter().position(|&t| t == max).unwrap_or(0)
            }
        }
    }
}

/// transformers `CLIPTextModelWithProjection`: the text tower and `text_projection` (a
/// bias-free linear to `projection_dim`) of the pooled EOS state, SDXL's `text_encoder_2`.
pub struct ClipTextModelWithProjection {
    pub text_model: ClipTextModel,
    pub text_projection: Linear,
}

/// What `CLIPTextModelWithProjection(..., output_hidden_states=True)` returns.
pub struct ClipTextModelWithProjectionOutput {
    /// [B, projection_dim]: `text_projection(pooler_output)`.
    pub text_embeds: Tensor,
    pub last_hidden_state: Tensor,
    pub hidden_states: Vec<Tensor>,
}

impl ClipTextModelWithProjection {
    pub fn load(root: &Loader, config: &ClipTextConfig) -> Result<Self> {
        let d = config.hidden_size;
        let p = config.projection_dim;
        // Loaded first: the text model's load checks that every key was used.
        let text_projection = Linear::load(&root.pp("text_projection"), d, p, false)?;
        Ok(ClipTextModelWithProjection {
            text_model: ClipTextModel::load(root, config)?,
            text_projection,
        })
    }

    pub fn forward(
        &self,
        ctx: &Context,
        ids: &[u32],
        batch: usize,
    ) -> Result<ClipTextModelWithProjectionOutput> {
        let o = self.text_model.forward(ctx, ids, batch)?;
        Ok(ClipTextModelWithProjectionOutput {
            text_embeds: self.text_projection.forward(ctx, &o.pooler_output)?,
            last_hidden_state: o.last_hidden_state,
            hidden_states: o.hidden_states,
        })
    }
}
