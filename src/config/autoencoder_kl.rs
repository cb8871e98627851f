//! diffusers' `AutoencoderKL` config (`models/autoencoders/autoencoder_kl.py`).

use super::parse::{parse_valid, Class, Source, MAX_DIM, MAX_LAYERS};
use crate::error::Result;
use serde::Deserialize;

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
    /// Stable Diffusion 1.x/2.x's `vae/config.json` (4 levels of 128-512 channels, 512 px tiles):
    /// the VAE the benchmarks and the size checks measure, and that single-file checkpoints imply.
    pub fn stable_diffusion() -> Self {
        AutoencoderKLConfig {
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            sample_size: serde_json::Value::from(512),
            ..Default::default()
        }
    }

    pub const WHAT: &'static str = "AutoencoderKL";
    const CLASS: Class = Class::diffusers(&[Self::WHAT]);
    /// Where a diffusers folder keeps it.
    pub const FILE: &'static str = "vae/config.json";
    /// The largest `sample_size` (image pixels, the tile size of tiled decoding) accepted.
    pub const MAX_SAMPLE_SIZE: usize = 1 << 14;

    pub fn from_json(json: &[u8]) -> Result<Self> {
        parse_valid(Self::FILE, json, &Self::CLASS, Self::validate)
    }

    /// Refuses what hoa cannot run and sizes that are zero or absurd, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.validate_in(Source::new(Self::FILE))
    }

    /// [`Self::validate`] with errors naming the keys as `src` spells them.
    pub(crate) fn validate_in(&self, src: Source) -> Result<()> {
        src.block_lists(
            &self.block_out_channels,
            (&self.down_block_types, &["DownEncoderBlock2D"]),
            (&self.up_block_types, &["UpDecoderBlock2D"]),
        )?;
        src.only("act_fn", &self.act_fn, "silu")?;
        src.positive("in_channels", self.in_channels, MAX_DIM)?;
        src.positive("out_channels", self.out_channels, MAX_DIM)?;
        src.positive("latent_channels", self.latent_channels, MAX_DIM)?;
        src.positive("layers_per_block", self.layers_per_block, MAX_LAYERS)?;
        src.sample_size("sample_size", &self.sample_size, Self::MAX_SAMPLE_SIZE)?;
        src.scale("scaling_factor", self.scaling_factor)?;
        src.groups_divide(
            "norm_num_groups",
            self.norm_num_groups,
            "block_out_channels",
            &self.block_out_channels,
        )
    }
}
