//! diffusers `unet_2d_blocks.py`: the blocks of the U-Nets and the VAE under diffusers' class
//! names, fields named by checkpoint keys. The SD U-Net's `CrossAttnDownBlock2D` /
//! `DownBlock2D`, `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D` / `UpBlock2D`; the
//! `UNetMidBlock2D` the VAE and the consistency decoder share; the VAE's `DownEncoderBlock2D` /
//! `UpDecoderBlock2D`; the consistency decoder's `ResnetDownsampleBlock2D` /
//! `ResnetUpsampleBlock2D`. As in diffusers, a down block returns `(hidden_states,
//! output_states)` and an up block takes its `res_hidden_states_tuple` and pops from its end.

use super::attention::{Attention, Transformer2DModel};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetResample, TimeEmbeddingNorm, Upsample2D};
use crate::config::UNetBlockSpec;
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::kernels::concat;
use crate::weights::Loader;

/// The resnet arguments diffusers passes to every block of one model: `temb_channels` (None:
/// the VAE's blocks), `resnet_groups`, `resnet_eps`, `resnet_time_scale_shift` and
/// `output_scale_factor`.
#[derive(Clone, Copy, Debug)]
pub struct ResnetOptions {
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub time_embedding_norm: TimeEmbeddingNorm,
    pub output_scale_factor: f64,
}

impl ResnetOptions {
    /// "default" time-embedding norm, output scale 1.
    pub fn new(temb_channels: Option<usize>, groups: usize, eps: f64) -> ResnetOptions {
        ResnetOptions {
            temb_channels,
            groups,
            eps,
            time_embedding_norm: TimeEmbeddingNorm::Default,
            output_scale_factor: 1.0,
        }
    }

    fn resnet(
        &self,
        vb: &Loader,
        cin: usize,
        cout: usize,
        rs: ResnetResample,
    ) -> Result<ResnetBlock2D> {
        let r = self;
        ResnetBlock2D::load_with(
            vb,
            cin,
            cout,
            r.temb_channels,
            r.groups,
            r.eps,
            r.output_scale_factor,
            r.time_embedding_norm,
            rs,
        )
    }

    /// `resnets.{j}` of a block without skip inputs: `in_channels` into the first,
    /// `out_channels` after.
    fn plain_resnets(
        &self,
        vb: &Loader,
        layers: usize,
        cin: usize,
        cout: usize,
    ) -> Result<Vec<ResnetBlock2D>> {
        (0..layers)
            .map(|j| {
                let rin = if j == 0 { cin } else { cout };
                self.resnet(&vb.pp("resnets").pp(j), rin, cout, ResnetResample::None)
            })
            .collect()
    }

    /// An up block's `resnets.{j}` over `cat([hidden_states, skip])`: the first takes
    /// `prev_output_channel`, the others `out_channels`; every skip has `out_channels` but the
    /// last (`res_skip_channels = in_channels if (i == num_layers - 1) else out_channels`).
    fn up_resnets(
        &self,
        vb: &Loader,
        layers: usize,
        (prev, cin, cout): (usize, usize, usize),
    ) -> Result<Vec<ResnetBlock2D>> {
        (0..layers)
            .map(|j| {
                let skip = if j + 1 == layers { cin } else { cout };
                let rin = if j == 0 { prev } else { cout };
                self.resnet(
                    &vb.pp("resnets").pp(j),
                    rin + skip,
                    cout,
                    ResnetResample::None,
                )
            })
            .collect()
    }
}

/// What the SD U-Net's blocks share beyond the resnets (`get_down_block` / `get_up_block`
/// arguments): `downsample_padding` and `use_linear_projection`.
#[derive(Clone, Copy, Debug)]
pub struct UNetBlockOptions {
    pub resnet: ResnetOptions,
    pub downsample_padding: usize,
    pub use_linear_projection: bool,
}

impl UNetBlockOptions {
    /// `attentions.{i}` for `count` layers: `Transformer2DModel(num_attention_heads,
    /// out_channels // num_attention_heads, in_channels=out_channels, ...)`.
    fn transformers(
        &self,
        vb: &Loader,
        b: &UNetBlockSpec,
        count: usize,
    ) -> Result<Vec<Transformer2DModel>> {
        let ch = b.out_channels;
        (0..count)
            .map(|i| {
                Transformer2DModel::load(
                    &vb.pp("attentions").pp(i),
                    b.heads,
                    ch / b.heads,
                    ch,
                    b.transformer_layers,
                    b.cross_attention_dim,
                    self.resnet.groups,
                    self.use_linear_projection,
                )
            })
            .collect()
    }

    fn downsampler(&self, vb: &Loader, b: &UNetBlockSpec) -> Result<Option<Downsample2D>> {
        b.resample
            .then(|| {
                Downsample2D::load(
                    &vb.pp("downsamplers.0"),
                    b.out_channels,
                    self.downsample_padding,
                )
            })
            .transpose()
    }

    fn upsampler(&self, vb: &Loader, b: &UNetBlockSpec) -> Result<Option<Upsample2D>> {
        b.resample
            .then(|| Upsample2D::load(&vb.pp("upsamplers.0"), b.out_channels))
            .transpose()
    }
}

/// The last `n` of the down blocks' residuals, taken off `res` (diffusers'
/// `down_block_res_samples[-len(upsample_block.resnets):]`).
pub fn take_skips(res: &mut Vec<Tensor>, n: usize, op: &'static str) -> Result<Vec<Tensor>> {
    let at = res.len().checked_sub(n).ok_or_else(|| {
        Error::shape(
            op,
            "the up blocks consume more skips than the down blocks make",
        )
    })?;
    Ok(res.split_off(at))
}

/// `hidden_states = torch.cat([hidden_states, res_hidden_states_tuple[-1]], dim=1)`, popping
/// the skip.
fn cat_skip(ctx: &Context, x: &Tensor, skips: &mut Vec<Tensor>) -> Result<Tensor> {
    let skip = skips
        .pop()
        .ok_or_else(|| Error::shape("up block", "fewer skips than resnets"))?;
    concat::concat(ctx, &[x, &skip], 1)
}

/// `CrossAttnDownBlock2D`: (resnet, `Transformer2DModel`) pairs, then a `Downsample2D`
/// (`downsamplers.0`) except in the last block.
pub struct CrossAttnDownBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsampler: Option<Downsample2D>,
}

impl CrossAttnDownBlock2D {
    pub fn load(vb: &Loader, b: &UNetBlockSpec, o: &UNetBlockOptions) -> Result<Self> {
        Ok(CrossAttnDownBlock2D {
            resnets: o
                .resnet
                .plain_resnets(vb, b.layers, b.in_channels, b.out_channels)?,
            attentions: o.transformers(vb, b, b.layers)?,
            downsampler: o.downsampler(vb, b)?,
        })
    }

    /// Returns `(hidden_states, output_states)`: every pair's output and the downsampler's.
    pub fn forward(
        &self,
        ctx: &Context,
        mut x: Tensor,
        temb: Option<&Tensor>,
        encoder_hidden_states: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut output_states = Vec::new();
        for (resnet, attn) in self.resnets.iter().zip(&self.attentions) {
            x = resnet.forward(ctx, &x, temb)?;
            x = attn.forward(ctx, &x, encoder_hidden_states)?;
            output_states.push(x.clone());
        }
        if let Some(d) = &self.downsampler {
            x = d.forward(ctx, &x)?;
            output_states.push(x.clone());
        }
        Ok((x, output_states))
    }
}

/// `DownBlock2D`: resnets, then a `Downsample2D` (`downsamplers.0`) except in the last block.
pub struct DownBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsampler: Option<Downsample2D>,
}

impl DownBlock2D {
    pub fn load(vb: &Loader, b: &UNetBlockSpec, o: &UNetBlockOptions) -> Result<Self> {
        Ok(DownBlock2D {
            resnets: o
                .resnet
                .plain_resnets(vb, b.layers, b.in_channels, b.out_channels)?,
            downsampler: o.downsampler(vb, b)?,
        })
    }

    /// Returns `(hidden_states, output_states)`.
    pub fn forward(
        &self,
        ctx: &Context,
        mut x: Tensor,
        temb: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut output_states = Vec::new();
        for resnet in &self.resnets {
            x = resnet.forward(ctx, &x, temb)?;
            output_states.push(x.clone());
        }
        if let Some(d) = &self.downsampler {
            x = d.forward(ctx, &x)?;
            output_states.push(x.clone());
        }
        Ok((x, output_states))
    }
}

/// One of the SD U-Net's `down_blocks`, as `get_down_block` picks it by `down_block_types`.
pub enum UNetDownBlock {
    CrossAttnDownBlock2D(CrossAttnDownBlock2D),
    DownBlock2D(DownBlock2D),
}

impl UNetDownBlock {
    pub fn load(vb: &Loader, b: &UNetBlockSpec, o: &UNetBlockOptions) -> Result<Self> {
        Ok(if b.cross_attention {
            Self::CrossAttnDownBlock2D(CrossAttnDownBlock2D::load(vb, b, o)?)
        } else {
            Self::DownBlock2D(DownBlock2D::load(vb, b, o)?)
        })
    }

    pub fn forward(
        &self,
        ctx: &Context,
        x: Tensor,
        temb: Option<&Tensor>,
        encoder_hidden_states: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        match self {
            Self::CrossAttnDownBlock2D(b) => b.forward(ctx, x, temb, encoder_hidden_states),
            Self::DownBlock2D(b) => b.forward(ctx, x, temb),
        }
    }

    pub fn attentions(&self) -> &[Transformer2DModel] {
        match self {
            Self::CrossAttnDownBlock2D(b) => &b.attentions,
            Self::DownBlock2D(_) => &[],
        }
    }

    pub fn has_downsampler(&self) -> bool {
        match self {
            Self::CrossAttnDownBlock2D(b) => b.downsampler.is_some(),
            Self::DownBlock2D(b) => b.downsampler.is_some(),
        }
    }
}

/// `UNetMidBlock2DCrossAttn`: `resnets[0]`, then (`attentions[i]`, `resnets[i + 1]`).
pub struct UNetMidBlock2DCrossAttn {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

impl UNetMidBlock2DCrossAttn {
    /// `b` is the last down block (its channels, heads and transformer layers); the resnets
    /// divide by `resnet.output_scale_factor` (the config's `mid_block_scale_factor`).
    pub fn load(vb: &Loader, b: &UNetBlockSpec, o: &UNetBlockOptions) -> Result<Self> {
        let ch = b.out_channels;
        Ok(UNetMidBlock2DCrossAttn {
            resnets: o.resnet.plain_resnets(vb, 2, ch, ch)?,
            attentions: o.transformers(vb, b, 1)?,
        })
    }

    pub fn forward(
        &self,
        ctx: &Context,
        mut x: Tensor,
        temb: Option<&Tensor>,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        x = self.resnets[0].forward(ctx, &x, temb)?;
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = attn.forward(ctx, &x, encoder_hidden_states)?;
            x = resnet.forward(ctx, &x, temb)?;
        }
        Ok(x)
    }
}

/// `CrossAttnUpBlock2D`: (resnet over `cat([hidden_states, skip])`, `Transformer2DModel`)
/// pairs, then an `Upsample2D` (`upsamplers.0`) except in the last block.
pub struct CrossAttnUpBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsampler: Option<Upsample2D>,
}

impl CrossAttnUpBlock2D {
    pub fn load(vb: &Loader, b: &UNetBlockSpec, o: &UNetBlockOptions) -> Result<Self> {
        let chans = (b.prev_channels, b.in_channels, b.out_channels);
        Ok(CrossAttnUpBlock2D {
            resnets: o.resnet.up_resnets(vb, b.layers, chans)?,
            attentions: o.transformers(vb, b, b.layers)?,
            upsampler: o.upsampler(vb, b)?,
        })
    }

    /// `res_hidden_states` holds one skip per resnet, consumed from the end.
    pub fn forward(
        &self,
        ctx: &Context,
        mut x: Tensor,
        mut res_hidden_states: Vec<Tensor>,
        temb: Option<&Tensor>,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        for (resnet, attn) in self.resnets.iter().zip(&self.attentions) {
            x = cat_skip(ctx, &x, &mut res_hidden_states)?;
            x = resnet.forward(ctx, &x, temb)?;
            x = attn.forward(ctx, &x, encoder_hidden_states)?;
        }
        match &self.upsampler {
            Some(u) => u.forward(ctx, &x),
            None => Ok(x),
        }
    }
}

/// `UpBlock2D`: resnets over `cat([hidden_states, skip])`, then an `Upsample2D`
/// (`upsamplers.0`) except in the last block.
pub struct UpBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsampler: Option<Upsample2D>,
}

impl UpBlock2D {
    pub fn load(vb: &Loader, b: &UNetBlockSpec, o: &UNetBlockOptions) -> Result<Self> {
        let chans = (b.prev_channels, b.in_channels, b.out_channels);
        Ok(UpBlock2D {
            resnets: o.resnet.up_resnets(vb, b.layers, chans)?,
            upsampler: o.upsampler(vb, b)?,
        })
    }

    /// `res_hidden_states` holds one skip per resnet, consumed from the end.
    pub fn forward(
        &self,
        ctx: &Context,
        mut x: Tensor,
        mut res_hidden_states: Vec<Tensor>,
        temb: Option<&Tensor>,
    ) -> Result<Tensor> {
        for resnet in &self.resnets {
            x = cat_skip(ctx, &x, &mut res_hidden_states)?;
            x = resnet.forward(ctx, &x, temb)?;
        }
        match &self.upsampler {
            Some(u) => u.forward(ctx, &x),
            None => Ok(x),
        }
    }
}

/// One of the SD U-Net's `up_blocks`, as `get_up_block` picks it by `up_block_types`.
pub enum UNetUpBlock {
    CrossAttnUpBlock2D(CrossAttnUpBlock2D),
    UpBlock2D(UpBlock2D),
}

impl UNetUpBlock {
    pub fn load(vb: &Loader, b: &UNetBlockSpec, o: &UNetBlockOptions) -> Result<Self> {
        Ok(if b.cross_attention {
            Self::CrossAttnUpBlock2D(CrossAttnUpBlock2D::load(vb, b, o)?)
        } else {
            Self::UpBlock2D(UpBlock2D::load(vb, b, o)?)
        })
    }

    pub fn forward(
        &self,
        ctx: &Context,
        x: Tensor,
        res_hidden_states: Vec<Tensor>,
        temb: Option<&Tensor>,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        match self {
            Self::CrossAttnUpBlock2D(b) => {
                b.forward(ctx, x, res_hidden_states, temb, encoder_hidden_states)
            }
            Self::UpBlock2D(b) => b.forward(ctx, x, res_hidden_states, temb),
        }
    }

    pub fn resnets(&self) -> &[ResnetBlock2D] {
        match self {
            Self::CrossAttnUpBlock2D(b) => &b.resnets,
            Self::UpBlock2D(b) => &b.resnets,
        }
    }

    pub fn attentions(&self) -> &[Transformer2DModel] {
        match self {
            Self::CrossAttnUpBlock2D(b) => &b.attentions,
            Self::UpBlock2D(_) => &[],
        }
    }
}

/// `UNetMidBlock2D` (`num_layers=1`): `resnets[0]`, the optional group-norm self attention
/// `attentions.0` (`add_attention`), `resnets[1]`. The VAE's (no time embedding, one head of
/// the full width) and the consistency decoder's (attention-free, with time embedding).
pub struct UNetMidBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// Empty when `add_attention=False`.
    pub attentions: Vec<Attention>,
}

impl UNetMidBlock2D {
    /// `attention_head_dim`: Some (`add_attention=True`) gives `in_channels //
    /// attention_head_dim` heads; the attention's `rescale_output_factor` is the resnets'
    /// `output_scale_factor`, which must then be 1 (as in every VAE).
    pub fn load(
        vb: &Loader,
        in_channels: usize,
        resnet: &ResnetOptions,
        attention_head_dim: Option<usize>,
    ) -> Result<UNetMidBlock2D> {
        let ch = in_channels;
        let attentions = match attention_head_dim {
            Some(_) if resnet.output_scale_factor != 1.0 => {
                return Err(Error::Checkpoint(format!(
                    "{}: an attention with output_scale_factor {} is not supported",
                    vb.key("attentions.0"),
                    resnet.output_scale_factor
                )))
            }
            Some(d) => vec![Attention::load_spatial(
                &vb.pp("attentions.0"),
                ch,
                ch / d.max(1),
                resnet.groups,
                resnet.eps,
            )?],
            None => vec![],
        };
        Ok(UNetMidBlock2D {
            resnets: resnet.plain_resnets(vb, 2, ch, ch)?,
            attentions,
        })
    }

    pub fn forward(&self, ctx: &Context, mut x: Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        x = self.resnets[0].forward(ctx, &x, temb)?;
        if let Some(attn) = self.attentions.first() {
            x = attn.forward_spatial(ctx, &x)?;
        }
        self.resnets[1].forward(ctx, &x, temb)
    }
}

/// `DownEncoderBlock2D`: resnets without time embedding, then (except in the last block) a
/// stride-2 conv whose input is padded (0, 1, 0, 1) (`downsample_padding=0`).
pub struct DownEncoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    pub fn load(
        vb: &Loader,
        resnet: &ResnetOptions,
        layers: usize,
        (cin, cout): (usize, usize),
        add_downsample: bool,
    ) -> Result<DownEncoderBlock2D> {
        Ok(DownEncoderBlock2D {
            resnets: resnet.plain_resnets(vb, layers, cin, cout)?,
            downsampler: add_downsample
                .then(|| Downsample2D::load(&vb.pp("downsamplers.0"), cout, 0))
                .transpose()?,
        })
    }

    pub fn forward(&self, ctx: &Context, mut x: Tensor) -> Result<Tensor> {
        for resnet in &self.resnets {
            x = resnet.forward(ctx, &x, None)?;
        }
        match &self.downsampler {
            Some(d) => d.forward(ctx, &x),
            None => Ok(x),
        }
    }
}

/// `UpDecoderBlock2D`: resnets without time embedding, then (except in the last block) nearest
/// 2x + conv.
pub struct UpDecoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    pub fn load(
        vb: &Loader,
        resnet: &ResnetOptions,
        layers: usize,
        (cin, cout): (usize, usize),
        add_upsample: bool,
    ) -> Result<UpDecoderBlock2D> {
        Ok(UpDecoderBlock2D {
            resnets: resnet.plain_resnets(vb, layers, cin, cout)?,
            upsampler: add_upsample
                .then(|| Upsample2D::load(&vb.pp("upsamplers.0"), cout))
                .transpose()?,
        })
    }

    pub fn forward(&self, ctx: &Context, mut x: Tensor) -> Result<Tensor> {
        for resnet in &self.resnets {
            x = resnet.forward(ctx, &x, None)?;
        }
        match &self.upsampler {
            Some(u) => u.forward(ctx, &x),
            None => Ok(x),
        }
    }
}

/// `ResnetDownsampleBlock2D`: resnets, then (except in the last block) a
/// `ResnetBlock2D(down=True)` as `downsamplers.0`.
pub struct ResnetDownsampleBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsampler: Option<ResnetBlock2D>,
}

impl ResnetDownsampleBlock2D {
    pub fn load(
        vb: &Loader,
        resnet: &ResnetOptions,
        layers: usize,
        (cin, cout): (usize, usize),
        add_downsample: bool,
    ) -> Result<Self> {
        let down = |vb: &Loader| resnet.resnet(vb, cout, cout, ResnetResample::Down);
        Ok(ResnetDownsampleBlock2D {
            resnets: resnet.plain_resnets(vb, layers, cin, cout)?,
            downsampler: add_downsample
                .then(|| down(&vb.pp("downsamplers.0")))
                .transpose()?,
        })
    }

    /// Returns `(hidden_states, output_states)`.
    pub fn forward(
        &self,
        ctx: &Context,
        mut x: Tensor,
        temb: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut output_states = Vec::new();
        for resnet in &self.resnets {
            x = resnet.forward(ctx, &x, temb)?;
            output_states.push(x.clone());
        }
        if let Some(d) = &self.downsampler {
            x = d.forward(ctx, &x, temb)?;
            output_states.push(x.clone());
        }
        Ok((x, output_states))
    }
}

/// `ResnetUpsampleBlock2D`: resnets over `cat([hidden_states, skip])`, then (except in the last
/// block) a `ResnetBlock2D(up=True)` as `upsamplers.0`.
pub struct ResnetUpsampleBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsampler: Option<ResnetBlock2D>,
}

impl ResnetUpsampleBlock2D {
    /// `chans`: (`prev_output_channel`, `in_channels`, `out_channels`).
    pub fn load(
        vb: &Loader,
        resnet: &ResnetOptions,
        layers: usize,
        chans: (usize, usize, usize),
        add_upsample: bool,
    ) -> Result<Self> {
        let cout = chans.2;
        let up = |vb: &Loader| resnet.resnet(vb, cout, cout, ResnetResample::Up);
        Ok(ResnetUpsampleBlock2D {
            resnets: resnet.up_resnets(vb, layers, chans)?,
            upsampler: add_upsample
                .then(|| up(&vb.pp("upsamplers.0")))
                .transpose()?,
        })
    }

    /// `res_hidden_states` holds one skip per resnet, consumed from the end.
    pub fn forward(
        &self,
        ctx: &Context,
        mut x: Tensor,
        mut res_hidden_states: Vec<Tensor>,
        temb: Option<&Tensor>,
    ) -> Result<Tensor> {
        for resnet in &self.resnets {
            x = cat_skip(ctx, &x, &mut res_hidden_states)?;
            x = resnet.forward(ctx, &x, temb)?;
        }
        match &self.upsampler {
            Some(u) => u.forward(ctx, &x, temb),
            None => Ok(x),
        }
    }
}
