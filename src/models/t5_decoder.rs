//! transformers `T5ForConditionalGeneration` (`models/t5/modeling_t5.py`): the encoder of
//! [`super::t5`], a decoder stack (causal self-attention with its own unidirectional relative
//! position bias, cross-attention to the encoder output without one, feed-forward), the final
//! RMS norm, the `d_model^-0.5` scaling of T5 v1.0-style configs and the LM head (`lm_head`
//! when the checkpoint has one, else the shared embedding). [`T5ForConditionalGeneration::
//! generate`] runs transformers' greedy and beam search with a KV cache on the device.

use super::t5::{
    check_mask, mask_value, masked_bias, RelativePositionBias, T5Attention, T5DenseReluDense,
    T5EncoderModel, T5LayerNorm,
};
use crate::config::T5Config;
use crate::error::{Error, Result};
use crate::generation::{self, GenerationConfig, Settings, StepDecoder};
use crate::gpu::{Context, DType, Tensor};
use crate::kernels::attention::{attention, AttentionOptions};
use crate::kernels::{elementwise, embedding, matmul, Activation};
use crate::model_files::{component_weights, ModelFiles};
use crate::weights::{Loader, Weights};

/// `T5Block` of the decoder: `layer.0` self-attention, `layer.1` cross-attention
/// (`EncDecAttention`), `layer.2` feed-forward, each pre-normed and residual.
pub struct T5DecoderBlock {
    pub self_attention: T5Attention,
    pub self_attention_layer_norm: T5LayerNorm,
    pub cross_attention: T5Attention,
    pub cross_attention_layer_norm: T5LayerNorm,
    pub dense: T5DenseReluDense,
    pub ff_layer_norm: T5LayerNorm,
}

pub struct T5ForConditionalGeneration {
    pub config: T5Config,
    act: Activation,
    pub shared: Tensor,
    pub encoder: T5EncoderModel,
    relative_attention_bias: RelativePositionBias,
    pub decoder_blocks: Vec<T5DecoderBlock>,
    pub decoder_final_layer_norm: T5LayerNorm,
    /// [vocab, d_model]: `lm_head.weight`, or `shared` when the checkpoint ties it.
    pub lm_head: Tensor,
    /// `generation_config.json` when the folder has one, else transformers' defaults.
    pub generation_config: GenerationConfig,
    dtype: DType,
}

/// What a teacher-forced decoder pass returns.
pub struct Seq2SeqOutput {
    /// [B, T, vocab].
    pub logits: Tensor,
    /// transformers' `decoder_hidden_states`: each block's input, then the final normed output.
    pub decoder_hidden_states: Vec<Tensor>,
    pub encoder_last_hidden_state: Tensor,
}

impl T5ForConditionalGeneration {
    pub fn load(vb: &Loader, config: &T5Config) -> Result<T5ForConditionalGeneration> {
        let (act, gated) = config.feed_forward()?;
        let (d, v) = (config.d_model, config.vocab_size);
        let (inner, ff, eps) = (
            config.num_heads * config.d_kv,
            config.d_ff,
            config.layer_norm_epsilon,
        );
        let shared = vb.get("shared.weight", &[v, d])?;
        for tied in [
            "encoder.embed_tokens.weight",
            "decoder.embed_tokens.weight",
            "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
        ] {
            vb.ignore(tied);
        }
        // transformers 5 ties `lm_head` to `shared` unless the checkpoint holds both.
        let lm_head = if vb.contains("lm_head.weight") {
            vb.get("lm_head.weight", &[v, d])?
        } else {
            shared.clone()
        };
        let encoder = T5EncoderModel::load_stack(&vb.pp("encoder"), config, shared.clone())?;
        let dec = vb.pp("decoder");
        let relative_attention_bias =
            RelativePositionBias::load(&dec.pp("block.0.layer.0.SelfAttention"), config, false);
        let decoder_blocks = (0..config.decoder_layers())
            .map(|i| {
                let b = dec.pp("block").pp(i);
                Ok(T5DecoderBlock {
                    self_attention: T5Attention::load(&b.pp("layer.0.SelfAttention"), d, inner)?,
                    self_attention_layer_norm: T5LayerNorm::load(
                        &b.pp("layer.0.layer_norm"),
                        d,
                        eps,
                    )?,
                    cross_attention: T5Attention::load(&b.pp("layer.1.EncDecAttention"), d, inner)?,
                    cross_attention_layer_norm: T5LayerNorm::load(
                        &b.pp("layer.1.layer_norm"),
                        d,
                        eps,
                    )?,
                    dense: T5DenseReluDense::load(&b.pp("layer.2.DenseReluDense"), d, ff, gated)?,
                    ff_layer_norm: T5LayerNorm::load(&b.pp("layer.2.layer_norm"), d, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let decoder_final_layer_norm = T5LayerNorm::load(&dec.pp("final_layer_norm"), d, eps)?;
        vb.finish()?;
        Ok(T5ForConditionalGeneration {
            config: config.clone(),
            act,
            shared,
            encoder,
            relative_attention_bias,
            decoder_blocks,
            decoder_final_layer_norm,
            lm_head,
            generation_config: GenerationConfig::default(),
            dtype: vb.dtype(),
        })
    }

    /// Loads a `save_pretrained` folder (`dir` inside `files`, "" for the root): config.json,
    /// model.safetensors and, when present, generation_config.json.
    pub fn from_files(
        ctx: &Context,
        files: &dyn ModelFiles,
        dir: &str,
        dtype: DType,
    ) -> Result<T5ForConditionalGeneration> {
        let path = |f: &str| {
            if dir.is_empty() {
                f.to_string()
            } else {
                format!("{dir}/{f}")
            }
        };
        let config = T5Config::from_json(&files.require(&path("config.json"))?)?;
        let weights = if dir.is_empty() {
            Weights::from_bytes("model.safetensors", files.require("model.safetensors")?)?
        } else {
            component_weights(files, dir)?
        };
        let mut m = T5ForConditionalGeneration::load(&Loader::new(ctx, &weights, dtype), &config)?;
        if let Some(json) = files.read(&path("generation_config.json"))? {
            m.generation_config = GenerationConfig::from_json(&json)?;
        }
        Ok(m)
    }

    /// The cross-attention bias [N, H, lq, Lenc] of a padded encoder batch, or none.
    fn cross_bias(
        &self,
        ctx: &Context,
        mask: Option<&[u32]>,
        rows: usize,
        lq: usize,
    ) -> Result<Option<Tensor>> {
        let Some(m) = mask else { return Ok(None) };
        let h = self.config.num_heads;
        let b = masked_bias(None, h, lq, m, rows, self.dtype);
        Ok(Some(Tensor::from_f32(
            ctx,
            &b,
            &[rows, h, lq, m.len() / rows],
            self.dtype,
        )?))
    }

    /// The encoder over `batch` rows of `ids` with their mask (checked; `None` when it masks
    /// nothing): last_hidden_state [B, L, d_model].
    pub fn encode(
        &self,
        ctx: &Context,
        ids: &[u32],
        batch: usize,
        mask: Option<&[u32]>,
    ) -> Result<(Tensor, Option<Vec<u32>>)> {
        let out = self.encoder.forward_masked(ctx, ids, batch, mask)?;
        let len = ids.len() / batch;
        let mask = match mask {
            Some(m) if check_mask("T5ForConditionalGeneration", m, batch, len)? => Some(m.to_vec()),
            _ => None,
        };
        Ok((out.last_hidden_state, mask))
    }

    /// Final norm, T5 v1.0's `d_model^-0.5` scaling, LM head: [.., d] -> [.., vocab].
    fn head(&self, ctx: &Context, h: &Tensor) -> Result<Tensor> {
        let mut x = self.decoder_final_layer_norm.forward(ctx, h)?;
        if self.config.scale_decoder_outputs() {
            x = elementwise::scale(ctx, &x, (self.config.d_model as f64).powf(-0.5) as f32)?;
        }
        matmul::linear(ctx, &x, &self.lm_head, None, Activation::None)
    }

    /// One decoder block: `self_kv` gives the self-attention keys/values for the projected
    /// k, v of `h` (the block's own for a full pass, the cache for a step).
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        ctx: &Context,
        blk: &T5DecoderBlock,
        h: &Tensor,
        self_opts: &AttentionOptions,
        mut self_kv: impl FnMut(Tensor, Tensor) -> Result<(Tensor, Tensor)>,
        cross_kv: (&Tensor, &Tensor),
        cross_opts: &AttentionOptions,
    ) -> Result<Tensor> {
        let sa = &blk.self_attention;
        let x = blk.self_attention_layer_norm.forward(ctx, h)?;
        let q = sa.q.forward(ctx, &x)?;
        let (k, v) = self_kv(sa.k.forward(ctx, &x)?, sa.v.forward(ctx, &x)?)?;
        let o = attention(ctx, &q, &k, &v, self_opts)?;
        let h = elementwise::add(ctx, h, &sa.o.forward(ctx, &o)?)?;
        let ca = &blk.cross_attention;
        let x = blk.cross_attention_layer_norm.forward(ctx, &h)?;
        let q = ca.q.forward(ctx, &x)?;
        let o = attention(ctx, &q, cross_kv.0, cross_kv.1, cross_opts)?;
        let h = elementwise::add(ctx, &h, &ca.o.forward(ctx, &o)?)?;
        let x = blk.ff_layer_norm.forward(ctx, &h)?;
        let y = blk.dense.forward(ctx, &x, self.act)?;
        elementwise::add(ctx, &h, &y)
    }

    /// The teacher-forced pass `model(input_ids, attention_mask, decoder_input_ids)`:
    /// `batch` rows of encoder ids (with their mask) and of decoder ids.
    pub fn forward(
        &self,
        ctx: &Context,
        input_ids: &[u32],
        attention_mask: Option<&[u32]>,
        decoder_input_ids: &[u32],
        batch: usize,
    ) -> Result<Seq2SeqOutput> {
        let c = &self.config;
        if batch == 0 || decoder_input_ids.is_empty() || decoder_input_ids.len() % batch != 0 {
            return Err(Error::shape(
                "T5ForConditionalGeneration",
                format!(
                    "{} decoder ids do not split into {batch} sequences",
                    decoder_input_ids.len()
                ),
            ));
        }
        let (enc, mask) = self.encode(ctx, input_ids, batch, attention_mask)?;
        let t = decoder_input_ids.len() / batch;
        let heads = c.num_heads;
        let pos = self.relative_attention_bias.host(0, t, t);
        let self_bias = Tensor::from_f32(ctx, &pos, &[heads, t, t], self.dtype)?;
        let self_opts = AttentionOptions {
            scale: Some(1.0),
            causal: true,
            bias: Some(&self_bias),
            ..AttentionOptions::new(heads)
        };
        let cross_bias = self.cross_bias(ctx, mask.as_deref(), batch, t)?;
        let cross_opts = AttentionOptions {
            scale: Some(1.0),
            bias: cross_bias.as_ref(),
            ..AttentionOptions::new(heads)
        };
        let mut h = embedding::gather_rows(ctx, &self.shared, decoder_input_ids)?
            .reshape(&[batch, t, c.d_model])?;
        let mut hidden = Vec::with_capacity(self.decoder_blocks.len() + 1);
        for blk in &self.decoder_blocks {
            hidden.push(h.clone());
            let ca = &blk.cross_attention;
            let (ck, cv) = (ca.k.forward(ctx, &enc)?, ca.v.forward(ctx, &enc)?);
            h = self.block(
                ctx,
                blk,
                &h,
                &self_opts,
                |k, v| Ok((k, v)),
                (&ck, &cv),
                &cross_opts,
            )?;
        }
        hidden.push(self.decoder_final_layer_norm.forward(ctx, &h)?);
        Ok(Seq2SeqOutput {
            logits: self.head(ctx, &h)?,
            decoder_hidden_states: hidden,
            encoder_last_hidden_state: enc,
        })
    }

    /// transformers' `generate` for `input_ids` rows of any lengths (padded on the right with
    /// the pad token and masked, as a tokenizer batch is): greedy search for `num_beams` 1,
    /// beam search otherwise. Special tokens missing from `cfg` come from config.json.
    /// Returns transformers' `sequences`: each row starts with `decoder_start_token_id`, and
    /// rows that finished early are filled (greedy: pad token; beam search: pad token, or the
    /// first eos token when the pad token is 0, as transformers does).
    pub async fn generate_async(
        &self,
        ctx: &Context,
        input_ids: &[Vec<u32>],
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        let c = &self.config;
        let s = Settings::resolve(
            cfg,
            c.decoder_start_token_id,
            c.eos_token_id.as_ref().map(|e| e.to_vec()),
            c.pad_token_id,
            c.vocab_size,
        )?;
        let batch = input_ids.len();
        let len = input_ids.iter().map(Vec::len).max().unwrap_or(0);
        if batch == 0 || input_ids.iter().any(Vec::is_empty) {
            return Err(Error::invalid(
                "generate",
                "every input needs at least one token",
            ));
        }
        let pad = c.pad_token_id.unwrap_or(0);
        let (mut ids, mut mask) = (
            Vec::with_capacity(batch * len),
            Vec::with_capacity(batch * len),
        );
        for row in input_ids {
            ids.extend(row.iter().copied().chain(std::iter::repeat(pad)).take(len));
            mask.extend((0..len).map(|i| u32::from(i < row.len())));
        }
        let (enc, mask) = self.encode(ctx, &ids, batch, Some(&mask))?;
        let mut state = DecoderState::new(
            self,
            ctx,
            &enc,
            mask.as_deref(),
            batch,
            s.num_beams,
            s.max_length,
        )?;
        if s.num_beams == 1 {
            generation::greedy_search(&mut state, batch, &s).await
        } else {
            generation::beam_search(&mut state, batch, &s).await
        }
    }

    /// [`Self::generate_async`], blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate(
        &self,
        ctx: &Context,
        input_ids: &[Vec<u32>],
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        pollster::block_on(self.generate_async(ctx, input_ids, cfg))
    }
}

/// The decoder's state during generation for `rows` = batch × beams sequences: self-attention
/// keys/values preallocated to the maximum length (zeros, so unwritten slots are finite and
/// masked), cross-attention keys/values computed once from the encoder output.
pub struct DecoderState<'a> {
    model: &'a T5ForConditionalGeneration,
    ctx: &'a Context,
    rows: usize,
    max_len: usize,
    len: usize,
    /// Per layer, [rows, max_len, H*D].
    self_k: Vec<Tensor>,
    self_v: Vec<Tensor>,
    /// Per layer, [rows, Lenc, H*D].
    cross_k: Vec<Tensor>,
    cross_v: Vec<Tensor>,
    /// [rows, H, 1, Lenc] when the encoder batch is padded.
    cross_bias: Option<Tensor>,
}

impl<'a> DecoderState<'a> {
    /// `enc` [B, Lenc, d] and its mask, each row repeated for `beams` (`_expand_inputs_for_generation`).
    pub fn new(
        model: &'a T5ForConditionalGeneration,
        ctx: &'a Context,
        enc: &Tensor,
        mask: Option<&[u32]>,
        batch: usize,
        beams: usize,
        max_len: usize,
    ) -> Result<DecoderState<'a>> {
        let c = &model.config;
        let (lenc, inner) = (enc.shape()[1], c.num_heads * c.d_kv);
        let rows = batch
            .checked_mul(beams)
            .ok_or_else(|| Error::invalid("generate", "too many beams"))?;
        let expand: Vec<u32> = (0..rows).map(|r| (r / beams) as u32).collect();
        let enc = if beams > 1 {
            embedding::gather_rows(ctx, &enc.reshape(&[batch, lenc * c.d_model])?, &expand)?
                .reshape(&[rows, lenc, c.d_model])?
        } else {
            enc.clone()
        };
        let mask: Option<Vec<u32>> = mask.map(|m| {
            expand
                .iter()
                .flat_map(|&b| {
                    m[b as usize * lenc..(b as usize + 1) * lenc]
                        .iter()
                        .copied()
                })
                .collect()
        });
        if (inner * model.dtype.size()) % 4 != 0 {
            return Err(Error::invalid(
                "generate",
                format!("num_heads * d_kv = {inner} must be even for the f16 KV cache"),
            ));
        }
        let (mut self_k, mut self_v, mut cross_k, mut cross_v) = (vec![], vec![], vec![], vec![]);
        for blk in &model.decoder_blocks {
            self_k.push(Tensor::full(
                ctx,
                &[rows, max_len, inner],
                0.0,
                model.dtype,
            )?);
            self_v.push(Tensor::full(
                ctx,
                &[rows, max_len, inner],
                0.0,
                model.dtype,
            )?);
            cross_k.push(blk.cross_attention.k.forward(ctx, &enc)?);
            cross_v.push(blk.cross_attention.v.forward(ctx, &enc)?);
        }
        let cross_bias = model.cross_bias(ctx, mask.as_deref(), rows, 1)?;
        Ok(DecoderState {
            model,
            ctx,
            rows,
            max_len,
            len: 0,
            self_k,
            self_v,
            cross_k,
            cross_v,
            cross_bias,
        })
    }

    /// Copies the new position's keys and values ([rows, 1, H*D] each) into the caches at
    /// `self.len`, in one submission ordered after the dispatches that computed them.
    fn write(&self, pairs: [(&Tensor, &Tensor); 2]) -> Result<()> {
        let (rows, max_len, len) = (self.rows as u64, self.max_len as u64, self.len as u64);
        self.ctx.submit_with(false, |enc| {
            for (new, cache) in pairs {
                let row = (new.shape()[2] * new.dtype().size()) as u64;
                for r in 0..rows {
                    let dst = (r * max_len + len) * row;
                    enc.copy_buffer_to_buffer(new.buffer(), r * row, cache.buffer(), dst, row);
                }
            }
        })?;
        Ok(())
    }

    /// The self-attention bias [H, 1, max_len] of the query at `self.len`: the relative
    /// position bias over the keys seen so far, [`mask_value`] over the empty slots.
    fn self_bias(&self) -> Result<Tensor> {
        let m = self.model;
        let h = m.config.num_heads;
        let pos = m.relative_attention_bias.host(self.len, 1, self.len + 1);
        let mut b = vec![mask_value(m.dtype); h * self.max_len];
        for head in 0..h {
            b[head * self.max_len..head * self.max_len + self.len + 1]
                .copy_from_slice(&pos[head * (self.len + 1)..(head + 1) * (self.len + 1)]);
        }
        Tensor::from_f32(self.ctx, &b, &[h, 1, self.max_len], m.dtype)
    }

    /// Logits [rows, vocab] of the next token after feeding `tokens` at the next position.
    pub fn step_tensor(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let (m, ctx) = (self.model, self.ctx);
        if tokens.len() != self.rows || self.len >= self.max_len {
            return Err(Error::invalid(
                "generate",
                format!(
                    "step {} of {} with {} tokens for {} rows",
                    self.len,
                    self.max_len,
                    tokens.len(),
                    self.rows
                ),
            ));
        }
        let heads = m.config.num_heads;
        let self_bias = self.self_bias()?;
        let self_opts = AttentionOptions {
            scale: Some(1.0),
            bias: Some(&self_bias),
            ..AttentionOptions::new(heads)
        };
        let cross_opts = AttentionOptions {
            scale: Some(1.0),
            bias: self.cross_bias.as_ref(),
            ..AttentionOptions::new(heads)
        };
        let mut h = embedding::gather_rows(ctx, &m.shared, tokens)?.reshape(&[
            self.rows,
            1,
            m.config.d_model,
        ])?;
        for (l, blk) in m.decoder_blocks.iter().enumerate() {
            let (ck, cv) = (&self.cross_k[l], &self.cross_v[l]);
            let (sk, sv) = (&self.self_k[l], &self.self_v[l]);
            let kv = |k: Tensor, v: Tensor| {
                self.write([(&k, sk), (&v, sv)])?;
                Ok((sk.clone(), sv.clone()))
            };
            h = m.block(ctx, blk, &h, &self_opts, kv, (ck, cv), &cross_opts)?;
        }
        self.len += 1;
        m.head(ctx, &h)?.reshape(&[self.rows, m.config.vocab_size])
    }
}

impl StepDecoder for DecoderState<'_> {
    async fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let logits = self.step_tensor(tokens)?;
        logits.read(self.ctx).await
    }

    fn reorder(&mut self, rows: &[u32]) -> Result<()> {
        if rows.iter().enumerate().all(|(i, &r)| r as usize == i) {
            return Ok(());
        }
        let shape = [self.rows, self.max_len * self.self_k[0].shape()[2]];
        for cache in self.self_k.iter_mut().chain(self.self_v.iter_mut()) {
            let full = cache.shape().to_vec();
            *cache =
                embedding::gather_rows(self.ctx, &cache.reshape(&shape)?, rows)?.reshape(&full)?;
        }
        Ok(())
    }

    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }
}
