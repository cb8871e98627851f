//! Model configs: serde structs with the upstream `config.json` field names and defaults
//! (transformers' `CLIPTextConfig`, `T5Config`; diffusers' model configs), one file per model.
//! Unknown fields are ignored; values hoa cannot run, sizes that are zero or absurd, a file
//! that is not a JSON object and a foreign `_class_name` / `architectures` are refused with an
//! [`Error::Config`](crate::Error::Config) naming the file (its place in a diffusers folder,
//! e.g. `unet/config.json`) and the key. Nothing here depends on the GPU code.

mod autoencoder_kl;
mod clip;
mod consistency_decoder;
mod parse;
mod prior_transformer;
mod t5;
mod unet_2d;
mod unet_2d_condition;

pub use autoencoder_kl::AutoencoderKLConfig;
pub use clip::{ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use consistency_decoder::ConsistencyDecoderVAEConfig;
pub use parse::{parse, Class, PerBlock, Source, MAX_DIM, MAX_LAYERS, MAX_LEVELS, MAX_VOCAB};
pub use prior_transformer::PriorTransformerConfig;
pub use t5::T5Config;
pub use unet_2d::UNet2DModelConfig;
pub use unet_2d_condition::{UNet2DConditionModelConfig, UNetBlockSpec};

use crate::activation::Activation;
use crate::error::Result;

/// The widest convolution kernel a config may ask for (diffusers' are 1, 3 or 7).
pub const MAX_KERNEL: usize = 31;

/// The activation named `name` in `field`, or an error listing the known names.
fn activation(src: Source, field: &str, name: &str) -> Result<Activation> {
    Activation::from_name(name).ok_or_else(|| {
        src.err(
            field,
            format!(
                "= {name:?} is not supported (known: gelu, gelu_new, gelu_pytorch_tanh, \
                 quick_gelu, silu, relu)"
            ),
        )
    })
}
