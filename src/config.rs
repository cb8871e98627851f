//! Model configs: serde structs with the upstream `config.json` field names and defaults
//! (transformers' `CLIPTextConfig`, `T5Config`). Unknown fields are ignored; values hoa cannot
//! run are refused with a message naming the field.

use crate::error::{Error, Result};
use crate::kernels::Activation;
use serde::Deserialize;

fn parse<T: serde::de::DeserializeOwned>(what: &str, json: &[u8]) -> Result<T> {
    serde_json::from_slice(json).map_err(|e| Error::Checkpoint(format!("{what} config.json: {e}")))
}

fn activation(what: &str, field: &str, name: &str) -> Result<Activation> {
    Activation::from_name(name).ok_or_else(|| {
        Error::Checkpoint(format!(
            "{what} config.json: `{field}` = {name:?} is not supported (known: gelu, gelu_new, \
             gelu_pytorch_tanh, quick_gelu, silu, relu)"
        ))
    })
}

/// transformers `CLIPTextConfig`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: Some(49407),
        }
    }
}

impl ClipTextConfig {
    pub fn from_json(json: &[u8]) -> Result<Self> {
        let c: ClipTextConfig = parse("CLIPTextModel", json)?;
        c.act()?;
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(Error::Checkpoint(format!(
                "CLIPTextModel config.json: `hidden_size` {} is not divisible by `num_attention_heads` {}",
                c.hidden_size, c.num_attention_heads
            )));
        }
        Ok(c)
    }

    pub fn act(&self) -> Result<Activation> {
        activation("CLIPTextModel", "hidden_act", &self.hidden_act)
    }
}

/// transformers `T5Config` (the encoder half is what `T5EncoderModel` uses).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub feed_forward_proj: String,
}

impl Default for T5Config {
    fn default() -> Self {
        T5Config {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
        }
    }
}

impl T5Config {
    pub fn from_json(json: &[u8]) -> Result<Self> {
        let c: T5Config = parse("T5EncoderModel", json)?;
        c.feed_forward()?;
        Ok(c)
    }

    /// (activation, gated) as transformers derives them: "gated-gelu" means gelu_new (tanh).
    pub fn feed_forward(&self) -> Result<(Activation, bool)> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let (gated, act) = match parts.as_slice() {
            [a] => (false, *a),
            ["gated", a] => (true, *a),
            _ => {
                return Err(Error::Checkpoint(format!(
                    "T5EncoderModel config.json: `feed_forward_proj` = {:?} is not `ACT` or `gated-ACT`",
                    self.feed_forward_proj
                )))
            }
        };
        let act = if self.feed_forward_proj == "gated-gelu" {
            "gelu_new"
        } else {
            act
        };
        Ok((
            activation("T5EncoderModel", "feed_forward_proj", act)?,
            gated,
        ))
    }
}

/// A config value that is either one value for every block or a list with one per block.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// One value per block; a list of the wrong length is an error naming `field`.
    pub fn expand(&self, what: &str, field: &str, blocks: usize) -> Result<Vec<T>> {
        match self {
            PerBlock::One(v) => Ok(vec![v.clone(); blocks]),
            PerBlock::Each(v) if v.len() == blocks => Ok(v.clone()),
            PerBlock::Each(v) => Err(Error::Checkpoint(format!(
                "{what} config.json: `{field}` has {} entries for {blocks} blocks",
                v.len()
            ))),
        }
    }
}

fn refuse(what: &str, field: &str, why: impl std::fmt::Display) -> Error {
    Error::Checkpoint(format!(
        "{what} config.json: `{field}` {why}: hoa does not implement it"
    ))
}

/// diffusers `UNet2DConditionModel`'s config. hoa runs the SD 1.x / 2.x family: the block types
/// CrossAttnDownBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D, UpBlock2D,
/// positional timestep embedding, text conditioning only; [`Self::from_json`] refuses the rest
/// with a message naming the field.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionModelConfig {
    /// The latent size it was trained at (pipelines default to sample_size x the VAE factor).
    pub sample_size: Option<usize>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerBlock<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub act_fn: String,
    pub norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<usize>,
    pub transformer_layers_per_block: PerBlock<usize>,
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    pub encoder_hid_dim: Option<usize>,
    pub encoder_hid_dim_type: Option<String>,
    /// The number of heads when `num_attention_heads` is null (diffusers' naming quirk).
    pub attention_head_dim: PerBlock<usize>,
    pub num_attention_heads: Option<PerBlock<usize>>,
    pub dual_cross_attention: bool,
    pub use_linear_projection: bool,
    pub class_embed_type: Option<String>,
    pub addition_embed_type: Option<String>,
    pub num_class_embeds: Option<usize>,
    /// Softmax in f32: hoa's attention always accumulates in f32, so this changes nothing.
    pub upcast_attention: bool,
    pub resnet_time_scale_shift: String,
    pub resnet_skip_time_act: bool,
    pub resnet_out_scale_factor: f64,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<usize>,
    pub time_embedding_act_fn: Option<String>,
    pub timestep_post_act: Option<String>,
    pub time_cond_proj_dim: Option<usize>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub attention_type: String,
    pub mid_block_only_cross_attention: Option<bool>,
    pub cross_attention_norm: Option<String>,
}

impl Default for UNet2DConditionModelConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        UNet2DConditionModelConfig {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: s(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: s(&[
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]),
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: PerBlock::One(1),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            num_class_embeds: None,
            upcast_attention: false,
            resnet_time_scale_shift: "default".into(),
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            attention_type: "default".into(),
            mid_block_only_cross_attention: None,
            cross_attention_norm: None,
        }
    }
}

/// One down or up block of a [`UNet2DConditionModelConfig`], with the per-block lists resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct UNetBlockSpec {
    pub cross_attention: bool,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Up blocks: the channels of the block below (`prev_output_channel`).
    pub prev_channels: usize,
    pub layers: usize,
    pub transformer_layers: usize,
    pub heads: usize,
    pub cross_attention_dim: usize,
    pub resample: bool,
}

impl UNet2DConditionModelConfig {
    pub const WHAT: &'static str = "UNet2DConditionModel";

    pub fn from_json(json: &[u8]) -> Result<Self> {
        let c: UNet2DConditionModelConfig = parse(Self::WHAT, json)?;
        c.validate()?;
        Ok(c)
    }

    /// Refuses what hoa cannot run, naming the field.
    pub fn validate(&self) -> Result<()> {
        let w = Self::WHAT;
        let set = |field: &str, v: &Option<String>| match v {
            Some(v) => Err(refuse(w, field, format!("= {v:?}"))),
            None => Ok(()),
        };
        set("class_embed_type", &self.class_embed_type)?;
        set("addition_embed_type", &self.addition_embed_type)?;
        set("encoder_hid_dim_type", &self.encoder_hid_dim_type)?;
        set("time_embedding_act_fn", &self.time_embedding_act_fn)?;
        set("timestep_post_act", &self.timestep_post_act)?;
        set("cross_attention_norm", &self.cross_attention_norm)?;
        let num = |field: &str, v: Option<usize>| match v {
            Some(v) => Err(refuse(w, field, format!("= {v}"))),
            None => Ok(()),
        };
        num("time_cond_proj_dim", self.time_cond_proj_dim)?;
        num("num_class_embeds", self.num_class_embeds)?;
        num("encoder_hid_dim", self.encoder_hid_dim)?;
        if self.reverse_transformer_layers_per_block.is_some() {
            return Err(refuse(w, "reverse_transformer_layers_per_block", "is set"));
        }
        let eq = |field: &str, v: &str, want: &str| {
            if v == want {
                Ok(())
            } else {
                Err(refuse(w, field, format!("= {v:?} (hoa runs {want:?})")))
            }
        };
        eq("act_fn", &self.act_fn, "silu")?;
        eq(
            "resnet_time_scale_shift",
            &self.resnet_time_scale_shift,
            "default",
        )?;
        eq(
            "time_embedding_type",
            &self.time_embedding_type,
            "positional",
        )?;
        eq("attention_type", &self.attention_type, "default")?;
        if self.dual_cross_attention {
            return Err(refuse(w, "dual_cross_attention", "= true"));
        }
        if self.resnet_skip_time_act {
            return Err(refuse(w, "resnet_skip_time_act", "= true"));
        }
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(Error::Checkpoint(format!(
                "{w} config.json: `block_out_channels` is empty"
            )));
        }
        if self
            .only_cross_attention
            .expand(w, "only_cross_attention", n)?
            .contains(&true)
            || self.mid_block_only_cross_attention == Some(true)
        {
            return Err(refuse(w, "only_cross_attention", "= true"));
        }
        for (field, types, known) in [
            (
                "down_block_types",
                &self.down_block_types,
                &["CrossAttnDownBlock2D", "DownBlock2D"],
            ),
            (
                "up_block_types",
                &self.up_block_types,
                &["CrossAttnUpBlock2D", "UpBlock2D"],
            ),
        ] {
            if types.len() != n {
                return Err(Error::Checkpoint(format!(
                    "{w} config.json: `{field}` has {} entries, `block_out_channels` {n}",
                    types.len()
                )));
            }
            if let Some(t) = types.iter().find(|t| !known.contains(&t.as_str())) {
                return Err(refuse(
                    w,
                    field,
                    format!("contains {t:?} (known: {})", known.join(", ")),
                ));
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") | None => {}
            Some(t) => {
                return Err(refuse(
                    w,
                    "mid_block_type",
                    format!("= {t:?} (known: UNetMidBlock2DCrossAttn)"),
                ))
            }
        }
        let groups = self
            .norm_num_groups
            .ok_or_else(|| refuse(w, "norm_num_groups", "is null"))?;
        for (field, k) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if k % 2 == 0 {
                return Err(refuse(w, field, format!("= {k} (even kernel)")));
            }
        }
        for (i, b) in self
            .down_blocks()?
            .iter()
            .chain(&self.up_blocks()?)
            .enumerate()
        {
            for (what, ch) in [("in", b.in_channels), ("out", b.out_channels)] {
                if ch % groups != 0 {
                    return Err(Error::Checkpoint(format!(
                        "{w} config.json: block {i} has {ch} {what} channels, not divisible by \
                         `norm_num_groups` {groups}"
                    )));
                }
            }
            if b.cross_attention && (b.heads == 0 || b.out_channels % b.heads != 0) {
                return Err(Error::Checkpoint(format!(
                    "{w} config.json: {} channels do not split into {} heads \
                     (`attention_head_dim` / `num_attention_heads`)",
                    b.out_channels, b.heads
                )));
            }
        }
        let heads = *self.heads()?.last().expect("at least one block");
        let ch = *self.block_out_channels.last().expect("at least one block");
        if self.mid_block_type.is_some() && (heads == 0 || ch % heads != 0) {
            return Err(Error::Checkpoint(format!(
                "{w} config.json: the mid block's {ch} channels do not split into {heads} heads \
                 (`attention_head_dim` / `num_attention_heads`)"
            )));
        }
        Ok(())
    }

    /// The number of attention heads per down block: `num_attention_heads`, or
    /// `attention_head_dim` when that is null (diffusers' naming quirk).
    pub fn heads(&self) -> Result<Vec<usize>> {
        let n = self.block_out_channels.len();
        match &self.num_attention_heads {
            Some(h) => h.expand(Self::WHAT, "num_attention_heads", n),
            None => self
                .attention_head_dim
                .expand(Self::WHAT, "attention_head_dim", n),
        }
    }

    fn lists(&self) -> Result<(Vec<usize>, Vec<usize>, Vec<usize>)> {
        let (w, n) = (Self::WHAT, self.block_out_channels.len());
        Ok((
            self.layers_per_block.expand(w, "layers_per_block", n)?,
            self.transformer_layers_per_block
                .expand(w, "transformer_layers_per_block", n)?,
            self.cross_attention_dim
                .expand(w, "cross_attention_dim", n)?,
        ))
    }

    /// `time_embed_dim`: `time_embedding_dim` or 4 x `block_out_channels[0]`.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }

    pub fn down_blocks(&self) -> Result<Vec<UNetBlockSpec>> {
        let (layers, tl, cross) = self.lists()?;
        let heads = self.heads()?;
        let ch = &self.block_out_channels;
        Ok((0..ch.len())
            .map(|i| UNetBlockSpec {
                cross_attention: self.down_block_types[i] == "CrossAttnDownBlock2D",
                in_channels: if i == 0 { ch[0] } else { ch[i - 1] },
                out_channels: ch[i],
                prev_channels: 0,
                layers: layers[i],
                transformer_layers: tl[i],
                heads: heads[i],
                cross_attention_dim: cross[i],
                resample: i + 1 < ch.len(),
            })
            .collect())
    }

    /// Up block i works at the resolution of down block n-1-i, with the reversed lists.
    pub fn up_blocks(&self) -> Result<Vec<UNetBlockSpec>> {
        let (layers, tl, cross) = self.lists()?;
        let heads = self.heads()?;
        let n = self.block_out_channels.len();
        let rev = |v: &[usize]| v.iter().rev().copied().collect::<Vec<_>>();
        let (ch, layers, tl, cross, heads) = (
            rev(&self.block_out_channels),
            rev(&layers),
            rev(&tl),
            rev(&cross),
            rev(&heads),
        );
        Ok((0..n)
            .map(|i| UNetBlockSpec {
                cross_attention: self.up_block_types[i] == "CrossAttnUpBlock2D",
                in_channels: ch[(i + 1).min(n - 1)],
                out_channels: ch[i],
                prev_channels: if i == 0 { ch[0] } else { ch[i - 1] },
                layers: layers[i] + 1,
                transformer_layers: tl[i],
                heads: heads[i],
                cross_attention_dim: cross[i],
                resample: i + 1 < n,
            })
            .collect())
    }
}

/// diffusers `AutoencoderKL`'s config. `scaling_factor` (and `shift_factor`) are not applied by
/// the model: callers multiply the encoded mean by `scaling_factor` and divide latents by it
/// before decoding, as diffusers' pipelines do.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub sample_size: serde_json::Value,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub force_upcast: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKLConfig {
    fn default() -> Self {
        AutoencoderKLConfig {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: serde_json::Value::from(32),
            scaling_factor: 0.18215,
            shift_factor: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl AutoencoderKLConfig {
    pub const WHAT: &'static str = "AutoencoderKL";

    pub fn from_json(json: &[u8]) -> Result<Self> {
        let c: AutoencoderKLConfig = parse(Self::WHAT, json)?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let w = Self::WHAT;
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(Error::Checkpoint(format!(
                "{w} config.json: `block_out_channels` is empty"
            )));
        }
        if self.act_fn != "silu" {
            return Err(refuse(
                w,
                "act_fn",
                format!("= {:?} (hoa runs \"silu\")", self.act_fn),
            ));
        }
        for (field, types, known) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != n {
                return Err(Error::Checkpoint(format!(
                    "{w} config.json: `{field}` has {} entries, `block_out_channels` {n}",
                    types.len()
                )));
            }
            if let Some(t) = types.iter().find(|t| *t != known) {
                return Err(refuse(w, field, format!("contains {t:?} (known: {known})")));
            }
        }
        let g = self.norm_num_groups;
        if let Some(ch) = self
            .block_out_channels
            .iter()
            .find(|&&ch| g == 0 || ch % g != 0)
        {
            return Err(Error::Checkpoint(format!(
                "{w} config.json: {ch} channels are not divisible by `norm_num_groups` {g}"
            )));
        }
        Ok(())
    }
}

/// diffusers `UNet2DModel`'s config (`models/unets/unet_2d.py`), the unconditional U-Net of
/// the consistency decoder. hoa runs ResnetDownsampleBlock2D / ResnetUpsampleBlock2D blocks,
/// an attention-free UNetMidBlock2D (or none), the "positional" or "learned" time embedding,
/// the "default" or "scale_shift" time norm, SiLU, no class conditioning; [`Self::validate`]
/// refuses the rest with a message naming the field.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct UNet2DModelConfig {
    pub sample_size: Option<serde_json::Value>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<usize>,
    pub freq_shift: f64,
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_block_scale_factor: f64,
    pub downsample_padding: usize,
    pub downsample_type: String,
    pub upsample_type: String,
    pub dropout: f64,
    pub act_fn: String,
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: Option<usize>,
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub resnet_time_scale_shift: String,
    pub add_attention: bool,
    pub class_embed_type: Option<String>,
    pub num_class_embeds: Option<usize>,
    pub num_train_timesteps: Option<usize>,
}

impl Default for UNet2DModelConfig {
    fn default() -> Self {
        UNet2DModelConfig {
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: [
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            mid_block_type: Some("UNetMidBlock2D".into()),
            up_block_types: [
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            dropout: 0.0,
            act_fn: "silu".into(),
            attention_head_dim: Some(8),
            norm_num_groups: Some(32),
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: "default".into(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            num_train_timesteps: None,
        }
    }
}

impl UNet2DModelConfig {
    pub const WHAT: &'static str = "UNet2DModel";

    pub fn from_json(json: &[u8]) -> Result<Self> {
        let c: UNet2DModelConfig = parse(Self::WHAT, json)?;
        c.validate()?;
        Ok(c)
    }

    /// Refuses what hoa cannot run, naming the field.
    pub fn validate(&self) -> Result<()> {
        let w = Self::WHAT;
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(Error::Checkpoint(format!(
                "{w} config.json: `block_out_channels` is empty"
            )));
        }
        for (field, types, known) in [
            (
                "down_block_types",
                &self.down_block_types,
                "ResnetDownsampleBlock2D",
            ),
            (
                "up_block_types",
                &self.up_block_types,
                "ResnetUpsampleBlock2D",
            ),
        ] {
            if types.len() != n {
                return Err(Error::Checkpoint(format!(
                    "{w} config.json: `{field}` has {} entries, `block_out_channels` {n}",
                    types.len()
                )));
            }
            if let Some(t) = types.iter().find(|t| *t != known) {
                return Err(refuse(w, field, format!("contains {t:?} (known: {known})")));
            }
        }
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2D") => {}
            Some(t) => {
                return Err(refuse(
                    w,
                    "mid_block_type",
                    format!("= {t:?} (known: \"UNetMidBlock2D\", null)"),
                ))
            }
        }
        if self.mid_block_type.is_some() && self.add_attention {
            return Err(refuse(
                w,
                "add_attention",
                "= true (the mid block's attention)",
            ));
        }
        match self.time_embedding_type.as_str() {
            "positional" => {}
            "learned" => {
                if self.num_train_timesteps.is_none() {
                    return Err(Error::Checkpoint(format!(
                        "{w} config.json: `time_embedding_type` \"learned\" needs \
                         `num_train_timesteps`"
                    )));
                }
            }
            t => {
                return Err(refuse(
                    w,
                    "time_embedding_type",
                    format!("= {t:?} (known: \"positional\", \"learned\")"),
                ))
            }
        }
        match self.resnet_time_scale_shift.as_str() {
            "default" | "scale_shift" => {}
            t => {
                return Err(refuse(
                    w,
                    "resnet_time_scale_shift",
                    format!("= {t:?} (known: \"default\", \"scale_shift\")"),
                ))
            }
        }
        if self.act_fn != "silu" {
            return Err(refuse(
                w,
                "act_fn",
                format!("= {:?} (hoa runs \"silu\")", self.act_fn),
            ));
        }
        if let Some(t) = &self.class_embed_type {
            return Err(refuse(w, "class_embed_type", format!("= {t:?}")));
        }
        if let Some(v) = self.num_class_embeds {
            return Err(refuse(w, "num_class_embeds", format!("= {v}")));
        }
        let Some(g) = self.norm_num_groups else {
            return Err(refuse(w, "norm_num_groups", "= null"));
        };
        if let Some(ch) = self
            .block_out_channels
            .iter()
            .find(|&&ch| g == 0 || ch % g != 0)
        {
            return Err(Error::Checkpoint(format!(
                "{w} config.json: {ch} channels are not divisible by `norm_num_groups` {g}"
            )));
        }
        Ok(())
    }

    /// `time_embed_dim`: `time_embedding_dim` or 4 x `block_out_channels[0]`.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }
}

/// diffusers `ConsistencyDecoderVAE`'s config (`models/autoencoders/consistency_decoder_vae.py`):
/// an `AutoencoderKL`-style encoder (`encoder_*`) and a `UNet2DModel` decoder (`decoder_*`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ConsistencyDecoderVAEConfig {
    pub scaling_factor: f64,
    pub latent_channels: usize,
    pub sample_size: serde_json::Value,
    pub encoder_act_fn: String,
    pub encoder_block_out_channels: Vec<usize>,
    pub encoder_double_z: bool,
    pub encoder_down_block_types: Vec<String>,
    pub encoder_in_channels: usize,
    pub encoder_layers_per_block: usize,
    pub encoder_norm_num_groups: usize,
    pub encoder_out_channels: usize,
    pub decoder_add_attention: bool,
    pub decoder_block_out_channels: Vec<usize>,
    pub decoder_down_block_types: Vec<String>,
    pub decoder_downsample_padding: usize,
    pub decoder_in_channels: usize,
    pub decoder_layers_per_block: usize,
    pub decoder_norm_eps: f64,
    pub decoder_norm_num_groups: usize,
    pub decoder_num_train_timesteps: usize,
    pub decoder_out_channels: usize,
    pub decoder_resnet_time_scale_shift: String,
    pub decoder_time_embedding_type: String,
    pub decoder_up_block_types: Vec<String>,
    /// Registered by diffusers as `encoder_block_out_channels`; `decode` takes its latent
    /// upsampling factor `2 ** (len(block_out_channels) - 1)` from it.
    pub block_out_channels: Option<Vec<usize>>,
}

impl Default for ConsistencyDecoderVAEConfig {
    fn default() -> Self {
        let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        ConsistencyDecoderVAEConfig {
            scaling_factor: 0.18215,
            latent_channels: 4,
            sample_size: serde_json::Value::from(32),
            encoder_act_fn: "silu".into(),
            encoder_block_out_channels: vec![128, 256, 512, 512],
            encoder_double_z: true,
            encoder_down_block_types: strs(&["DownEncoderBlock2D"; 4]),
            encoder_in_channels: 3,
            encoder_layers_per_block: 2,
            encoder_norm_num_groups: 32,
            encoder_out_channels: 4,
            decoder_add_attention: false,
            decoder_block_out_channels: vec![320, 640, 1024, 1024],
            decoder_down_block_types: strs(&["ResnetDownsampleBlock2D"; 4]),
            decoder_downsample_padding: 1,
            decoder_in_channels: 7,
            decoder_layers_per_block: 3,
            decoder_norm_eps: 1e-5,
            decoder_norm_num_groups: 32,
            decoder_num_train_timesteps: 1024,
            decoder_out_channels: 6,
            decoder_resnet_time_scale_shift: "scale_shift".into(),
            decoder_time_embedding_type: "learned".into(),
            decoder_up_block_types: strs(&["ResnetUpsampleBlock2D"; 4]),
            block_out_channels: None,
        }
    }
}

impl ConsistencyDecoderVAEConfig {
    pub const WHAT: &'static str = "ConsistencyDecoderVAE";

    pub fn from_json(json: &[u8]) -> Result<Self> {
        let c: ConsistencyDecoderVAEConfig = parse(Self::WHAT, json)?;
        c.validate()?;
        Ok(c)
    }

    /// Refuses what hoa (or diffusers itself) cannot run, naming the field; the encoder and
    /// decoder configs are validated with `encoder_` / `decoder_` in front of their fields.
    pub fn validate(&self) -> Result<()> {
        let w = Self::WHAT;
        let bad = |field: &str, why: String| {
            Err(Error::Checkpoint(format!(
                "{w} config.json: `{field}` {why}"
            )))
        };
        // decode normalizes with 4 fixed channel means / stds.
        if self.latent_channels != 4 {
            return bad(
                "latent_channels",
                format!(
                    "= {}: the decoder's latent means / stds have 4 channels",
                    self.latent_channels
                ),
            );
        }
        if !self.encoder_double_z {
            return Err(refuse(w, "encoder_double_z", "= false"));
        }
        if self.encoder_out_channels != self.latent_channels {
            return bad(
                "encoder_out_channels",
                format!(
                    "= {} must equal latent_channels {} (quant_conv)",
                    self.encoder_out_channels, self.latent_channels
                ),
            );
        }
        if self.decoder_in_channels != 3 + self.latent_channels {
            return bad(
                "decoder_in_channels",
                format!(
                    "= {}: the decoder takes 3 image channels + {} latent channels",
                    self.decoder_in_channels, self.latent_channels
                ),
            );
        }
        if self.decoder_out_channels < 3 {
            return bad(
                "decoder_out_channels",
                format!(
                    "= {}: decode keeps the first 3 channels",
                    self.decoder_out_channels
                ),
            );
        }
        if let Some(b) = &self.block_out_channels {
            if b.is_empty() {
                return bad("block_out_channels", "is empty".into());
            }
        }
        // "AutoencoderKL config.json: `act_fn` ..." -> "ConsistencyDecoderVAE config.json:
        // `encoder_act_fn` ...": every backquoted name is a field of the inner config.
        let prefixed = |inner: &str, prefix: &str, e: Error| match e {
            Error::Checkpoint(m) => Error::Checkpoint(
                m.replacen(inner, w, 1)
                    .split('`')
                    .enumerate()
                    .map(|(i, part)| {
                        if i % 2 == 1 {
                            format!("`{prefix}{part}`")
                        } else {
                            part.to_string()
                        }
                    })
                    .collect(),
            ),
            e => e,
        };
        self.encoder_config()
            .validate()
            .map_err(|e| prefixed(AutoencoderKLConfig::WHAT, "encoder_", e))?;
        self.decoder_unet_config()
            .validate()
            .map_err(|e| prefixed(UNet2DModelConfig::WHAT, "decoder_", e))?;
        Ok(())
    }

    /// The encoder's config in `AutoencoderKL` terms (diffusers builds the same `Encoder`).
    pub fn encoder_config(&self) -> AutoencoderKLConfig {
        let n = self.encoder_block_out_channels.len();
        AutoencoderKLConfig {
            in_channels: self.encoder_in_channels,
            out_channels: 3,
            down_block_types: self.encoder_down_block_types.clone(),
            up_block_types: vec!["UpDecoderBlock2D".into(); n],
            block_out_channels: self.encoder_block_out_channels.clone(),
            layers_per_block: self.encoder_layers_per_block,
            act_fn: self.encoder_act_fn.clone(),
            latent_channels: self.latent_channels,
            norm_num_groups: self.encoder_norm_num_groups,
            sample_size: self.sample_size.clone(),
            scaling_factor: self.scaling_factor,
            shift_factor: None,
            force_upcast: false,
            use_quant_conv: true,
            use_post_quant_conv: false,
            mid_block_add_attention: true,
        }
    }

    /// The `UNet2DModel` config `ConsistencyDecoderVAE.__init__` builds.
    pub fn decoder_unet_config(&self) -> UNet2DModelConfig {
        UNet2DModelConfig {
            add_attention: self.decoder_add_attention,
            block_out_channels: self.decoder_block_out_channels.clone(),
            down_block_types: self.decoder_down_block_types.clone(),
            downsample_padding: self.decoder_downsample_padding,
            in_channels: self.decoder_in_channels,
            layers_per_block: self.decoder_layers_per_block,
            norm_eps: self.decoder_norm_eps,
            norm_num_groups: Some(self.decoder_norm_num_groups),
            num_train_timesteps: Some(self.decoder_num_train_timesteps),
            out_channels: self.decoder_out_channels,
            resnet_time_scale_shift: self.decoder_resnet_time_scale_shift.clone(),
            time_embedding_type: self.decoder_time_embedding_type.clone(),
            up_block_types: self.decoder_up_block_types.clone(),
            ..Default::default()
        }
    }

    /// `2 ** (len(block_out_channels) - 1)`: the latent's nearest upsampling factor in decode.
    pub fn scale_factor(&self) -> usize {
        let n = self
            .block_out_channels
            .as_ref()
            .unwrap_or(&self.encoder_block_out_channels)
            .len();
        1 << n.saturating_sub(1)
    }
}
