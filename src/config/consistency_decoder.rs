//! diffusers' `ConsistencyDecoderVAE` config
//! (`models/autoencoders/consistency_decoder_vae.py`), with the `AutoencoderKL` encoder and
//! `UNet2DModel` decoder configs it builds.

use super::parse::{parse_valid, Class, Source, MAX_LEVELS};
use super::{AutoencoderKLConfig, UNet2DModelConfig};
use crate::error::Result;
use serde::Deserialize;

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
    const CLASS: Class = Class::diffusers(&[Self::WHAT]);
    /// Where hoa's model folders keep it (beside `vae/`).
    pub const FILE: &'static str = "consistency_decoder/config.json";

    pub fn from_json(json: &[u8]) -> Result<Self> {
        parse_valid(Self::FILE, json, &Self::CLASS, Self::validate)
    }

    /// Refuses what hoa (or diffusers itself) cannot run, naming the field; the encoder and
    /// decoder configs are validated with `encoder_` / `decoder_` in front of their fields.
    pub fn validate(&self) -> Result<()> {
        let src = Source::new(Self::FILE);
        // decode normalizes with 4 fixed channel means / stds.
        if self.latent_channels != 4 {
            return Err(src.err(
                "latent_channels",
                format!(
                    "= {}: the decoder's latent means / stds have 4 channels",
                    self.latent_channels
                ),
            ));
        }
        if !self.encoder_double_z {
            return Err(src.refuse("encoder_double_z", "= false"));
        }
        if self.encoder_out_channels != self.latent_channels {
            return Err(src.err(
                "encoder_out_channels",
                format!(
                    "= {} must equal latent_channels {} (quant_conv)",
                    self.encoder_out_channels, self.latent_channels
                ),
            ));
        }
        if self.decoder_in_channels != 3 + self.latent_channels {
            return Err(src.err(
                "decoder_in_channels",
                format!(
                    "= {}: the decoder takes 3 image channels + {} latent channels",
                    self.decoder_in_channels, self.latent_channels
                ),
            ));
        }
        if self.decoder_out_channels < 3 {
            return Err(src.err(
                "decoder_out_channels",
                format!(
                    "= {}: decode keeps the first 3 channels",
                    self.decoder_out_channels
                ),
            ));
        }
        if let Some(b) = &self.block_out_channels {
            if b.is_empty() {
                return Err(src.err("block_out_channels", "is empty"));
            }
            src.at_most("block_out_channels", b.len(), MAX_LEVELS)?;
        }
        // Keys the encoder config shares with the file unprefixed: checked here, so that the
        // prefixed checks below never name them.
        src.sample_size(
            "sample_size",
            &self.sample_size,
            AutoencoderKLConfig::MAX_SAMPLE_SIZE,
        )?;
        src.scale("scaling_factor", self.scaling_factor)?;
        self.encoder_config()
            .validate_in(src.prefixed("encoder_"))?;
        self.decoder_unet_config()
            .validate_in(src.prefixed("decoder_"))
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
