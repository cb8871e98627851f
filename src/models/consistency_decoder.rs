//! diffusers `ConsistencyDecoderVAE` (`models/autoencoders/consistency_decoder_vae.py`) with its
//! `ConsistencyDecoderScheduler` (`schedulers/scheduling_consistency_decoder.py`): DALL-E 3's
//! consistency decoder. The encoder is AutoencoderKL's (`encoder.` + `quant_conv`); decoding
//! runs a `UNet2DModel` (`decoder_unet.`) twice on [noisy image x c_in, upsampled latent],
//! with the scheduler's c_skip / c_out / c_in and fresh noise between the two steps. The noise
//! is supplied by the caller, so a run can consume exactly the tensors PyTorch drew.

use super::autoencoder_kl::{load_quant_conv, Encoder, EncoderOutput};
use super::nn::Conv2d;
use super::unet_2d::UNet2DModel;
use crate::config::{AutoencoderKLConfig, ConsistencyDecoderVAEConfig};
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::kernels::elementwise::{self, BinaryOp, View};
use crate::kernels::{concat, resample, Activation};
use crate::models::check_nchw;
use crate::weights::Loader;

/// The latent statistics `ConsistencyDecoderVAE` registers as buffers (`means`, `stds`).
pub const LATENT_MEANS: [f32; 4] = [0.38862467, 0.02253063, 0.07381133, -0.0171294];
pub const LATENT_STDS: [f32; 4] = [0.9654121, 1.0440036, 0.76147926, 0.77022034];

/// `ConsistencyDecoderScheduler(num_train_timesteps, sigma_data)`: the cosine
/// `betas_for_alpha_bar` schedule and the consistency-model scalings, computed on the host
/// like PyTorch does (betas and alphas_cumprod stored as f32, the cumulative product
/// accumulated in f64 as torch's CPU cumprod does, the rest in f64).
#[derive(Clone, Debug)]
pub struct ConsistencyDecoderScheduler {
    pub num_train_timesteps: usize,
    pub sigma_data: f64,
    pub sqrt_alphas_cumprod: Vec<f64>,
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    pub c_skip: Vec<f64>,
    pub c_out: Vec<f64>,
    pub c_in: Vec<f64>,
}

impl Default for ConsistencyDecoderScheduler {
    /// The scheduler `ConsistencyDecoderVAE` builds: `ConsistencyDecoderScheduler()`.
    fn default() -> Self {
        Self::new(1024, 0.5)
    }
}

impl ConsistencyDecoderScheduler {
    pub fn new(num_train_timesteps: usize, sigma_data: f64) -> Self {
        let n = num_train_timesteps;
        let alpha_bar = |t: f64| {
            ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                .cos()
                .powi(2)
        };
        let mut cum = 1f64;
        let (mut sac, mut s1m) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut c_skip, mut c_out, mut c_in) = (vec![], vec![], vec![]);
        for i in 0..n {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            let beta = (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32;
            cum *= (1.0f32 - beta) as f64;
            let ac = cum as f32 as f64;
            let sigma2 = 1.0 / ac - 1.0;
            let sd2 = sigma_data * sigma_data;
            let sqrt_recip = (1.0 / ac).sqrt();
            sac.push(ac.sqrt());
            s1m.push((1.0 - ac).sqrt());
            c_skip.push(sqrt_recip * sd2 / (sigma2 + sd2));
            c_out.push(sigma2.sqrt() * sigma_data / (sigma2 + sd2).sqrt());
            c_in.push(sqrt_recip / (sigma2 + sd2).sqrt());
        }
        ConsistencyDecoderScheduler {
            num_train_timesteps,
            sigma_data,
            sqrt_alphas_cumprod: sac,
            sqrt_one_minus_alphas_cumprod: s1m,
            c_skip,
            c_out,
            c_in,
        }
    }

    /// `set_timesteps(num_inference_steps)`: diffusers supports exactly 2 steps, [1008, 512].
    pub fn timesteps(&self, num_inference_steps: usize) -> Result<Vec<usize>> {
        if num_inference_steps != 2 {
            return Err(Error::shape(
                "ConsistencyDecoderScheduler",
                format!(
                    "num_inference_steps = {num_inference_steps}: the consistency decoder \
                     runs exactly 2 steps"
                ),
            ));
        }
        let ts = vec![1008, 512];
        if ts[0] >= self.num_train_timesteps {
            return Err(Error::shape(
                "ConsistencyDecoderScheduler",
                format!(
                    "timestep {} needs num_train_timesteps > {}, have {}",
                    ts[0], ts[0], self.num_train_timesteps
                ),
            ));
        }
        Ok(ts)
    }

    /// `init_noise_sigma`: `sqrt_one_minus_alphas_cumprod[timesteps[0]]`.
    pub fn init_noise_sigma(&self, timesteps: &[usize]) -> f64 {
        self.sqrt_one_minus_alphas_cumprod[timesteps[0]]
    }
}

pub struct ConsistencyDecoderVAE {
    pub config: ConsistencyDecoderVAEConfig,
    pub encoder: Encoder,
    /// `quant_conv` split into its mean and log-variance rows.
    pub quant_conv_mean: Conv2d,
    pub quant_conv_logvar: Conv2d,
    pub decoder_unet: UNet2DModel,
    pub decoder_scheduler: ConsistencyDecoderScheduler,
    encoder_config: AutoencoderKLConfig,
    /// `(z * scaling_factor - means) / stds` as `z * latent_scale + latent_shift`, [1, 4, 1, 1].
    latent_scale: Tensor,
    latent_shift: Tensor,
    dtype: DType,
}

/// One denoising step of [`ConsistencyDecoderVAE::decode`].
pub struct DecodeStep {
    pub timestep: usize,
    /// `torch.concat([scale_model_input(x_t, t), z], dim=1)` [B, 7, H, W].
    pub model_input: Tensor,
    /// The U-Net's whole output [B, decoder_out_channels, H, W] (decode uses channels 0..3).
    pub model_output: Tensor,
}

pub struct ConsistencyDecodeOutput {
    /// x_0 [B, 3, H, W].
    pub sample: Tensor,
    pub steps: Vec<DecodeStep>,
}

impl ConsistencyDecoderVAE {
    pub fn load(vb: &Loader, config: &ConsistencyDecoderVAEConfig) -> Result<Self> {
        config.validate()?;
        let c = config;
        let encoder_config = c.encoder_config();
        let encoder = Encoder::load(&vb.pp("encoder"), &encoder_config)?;
        let (quant_conv_mean, quant_conv_logvar) =
            load_quant_conv(&vb.pp("quant_conv"), c.latent_channels)?;
        let decoder_unet =
            UNet2DModel::load_part(&vb.pp("decoder_unet"), &c.decoder_unet_config())?;
        vb.finish()?;
        let sf = c.scaling_factor;
        let scale: Vec<f32> = LATENT_STDS
            .iter()
            .map(|&s| (sf / s as f64) as f32)
            .collect();
        let shift: Vec<f32> = LATENT_MEANS
            .iter()
            .zip(LATENT_STDS)
            .map(|(&m, s)| (-(m as f64) / s as f64) as f32)
            .collect();
        let ctx = vb.context();
        let dtype = vb.dtype();
        Ok(ConsistencyDecoderVAE {
            config: c.clone(),
            encoder,
            quant_conv_mean,
            quant_conv_logvar,
            decoder_unet,
            decoder_scheduler: ConsistencyDecoderScheduler::default(),
            encoder_config,
            latent_scale: Tensor::from_f32(ctx, &scale, &[1, 4, 1, 1], dtype)?,
            latent_shift: Tensor::from_f32(ctx, &shift, &[1, 4, 1, 1], dtype)?,
            dtype,
        })
    }

    /// The factor between image and latent sizes: `2 ** (len(block_out_channels) - 1)`.
    /// The latent `scaling_factor` of its config (pipelines divide latents by it).
    pub fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    pub fn scale_factor(&self) -> usize {
        self.config.scale_factor()
    }

    /// image [B, 3, H, W] (values in [-1, 1]) -> the latent distribution (mean and log-variance,
    /// unscaled, as AutoencoderKL's).
    pub fn encode(&self, ctx: &Context, image: &Tensor) -> Result<EncoderOutput> {
        self.encoder.encode(
            ctx,
            &self.encoder_config,
            Some((&self.quant_conv_mean, &self.quant_conv_logvar)),
            image,
            "ConsistencyDecoderVAE::encode",
        )
    }

    /// `decode(z, generator)` with the generator's draws passed in: z [B, 4, h, w] (a latent as
    /// the encoder gives it, before `scaling_factor`); `noise[0]` is the initial standard-normal
    /// x_T and `noise[1]` the step noise, each [B, 3, h * f, w * f] (f = [`Self::scale_factor`]),
    /// in the order diffusers' `randn_tensor` draws them.
    pub fn decode(
        &self,
        ctx: &Context,
        z: &Tensor,
        noise: &[&Tensor],
    ) -> Result<ConsistencyDecodeOutput> {
        let sched = &self.decoder_scheduler;
        let timesteps = sched.timesteps(2)?;
        self.check_decode_inputs(z, noise, timesteps.len())?;
        let zn = self.normalize_latent(ctx, z)?;

        // x_t = init_noise_sigma * randn_tensor((batch_size, 3, height, width))
        let mut x_t = elementwise::scale(ctx, noise[0], sched.init_noise_sigma(&timesteps) as f32)?;
        let mut steps = Vec::new();
        for (i, &t) in timesteps.iter().enumerate() {
            let (x0, step) = self.denoise(ctx, &x_t, &zn, t)?;
            x_t = match timesteps.get(i + 1) {
                None => x0,
                // prev_sample = sqrt_alphas_cumprod[t_next] * x_0
                //             + sqrt_one_minus_alphas_cumprod[t_next] * noise
                Some(&next) => {
                    let a = elementwise::scale(ctx, &x0, sched.sqrt_alphas_cumprod[next] as f32)?;
                    let n = elementwise::scale(
                        ctx,
                        noise[i + 1],
                        sched.sqrt_one_minus_alphas_cumprod[next] as f32,
                    )?;
                    elementwise::add(ctx, &a, &n)?
                }
            };
            steps.push(step);
        }
        Ok(ConsistencyDecodeOutput { sample: x_t, steps })
    }

    /// One step at timestep `t`: the U-Net on `[scale_model_input(x_t, t), z]`, and
    /// `x_0 = c_out[t] * model_output[:, :3] + c_skip[t] * x_t`.
    fn denoise(
        &self,
        ctx: &Context,
        x_t: &Tensor,
        zn: &Tensor,
        t: usize,
    ) -> Result<(Tensor, DecodeStep)> {
        let sched = &self.decoder_scheduler;
        // model_input = torch.concat([scale_model_input(x_t, t), z], dim=1)
        let scaled = elementwise::scale(ctx, x_t, sched.c_in[t] as f32)?;
        let model_input = concat::concat(ctx, &[&scaled, zn], 1)?;
        // model_output = decoder_unet(model_input, t).sample[:, :3, :, :]
        let out = self
            .decoder_unet
            .forward(ctx, &model_input, &[t as f32])?
            .sample;
        // x_0 = c_out[t] * model_output + c_skip[t] * sample
        let o = elementwise::scale(ctx, &out, sched.c_out[t] as f32)?;
        let sx = elementwise::scale(ctx, x_t, sched.c_skip[t] as f32)?;
        let first3 = View {
            shape: x_t.shape().to_vec(),
            ..View::of(&o)
        };
        let x0 = elementwise::binary(ctx, first3, View::of(&sx), BinaryOp::Add, Activation::None)?;
        let step = DecodeStep {
            timestep: t,
            model_input,
            model_output: out,
        };
        Ok((x0, step))
    }

    /// `z = (z * scaling_factor - means) / stds`, then `F.interpolate(z, mode="nearest",
    /// scale_factor=2 ** (len(block_out_channels) - 1))`.
    fn normalize_latent(&self, ctx: &Context, z: &Tensor) -> Result<Tensor> {
        let zn = elementwise::mul(ctx, z, &self.latent_scale)?;
        let mut zn = elementwise::add(ctx, &zn, &self.latent_shift)?;
        for _ in 0..self.scale_factor().trailing_zeros() {
            zn = resample::upsample_nearest2x(ctx, &zn)?;
        }
        Ok(zn)
    }

    /// The latent's shape and dtype, and `steps` noise tensors of the image's shape.
    fn check_decode_inputs(&self, z: &Tensor, noise: &[&Tensor], steps: usize) -> Result<()> {
        const OP: &str = "ConsistencyDecoderVAE::decode";
        let lat = self.config.latent_channels;
        let s = z.shape();
        check_nchw(OP, "latent", s, "h, w", (lat, "latent_channels"))?;
        if z.dtype() != self.dtype {
            return Err(Error::shape(
                OP,
                format!("latent must be {} like the weights", self.dtype.name()),
            ));
        }
        let f = self.scale_factor();
        let (b, h, w) = (s[0], s[2] * f, s[3] * f);
        if noise.len() != steps {
            return Err(Error::shape(
                OP,
                format!(
                    "{} noise tensors given: the {steps}-step decode draws {steps} (the initial \
                     x_T, then one per step but the last)",
                    noise.len(),
                ),
            ));
        }
        for (i, n) in noise.iter().enumerate() {
            if n.shape() != [b, 3, h, w] || n.dtype() != self.dtype {
                return Err(Error::shape(
                    OP,
                    format!(
                        "noise[{i}] is {:?} {}, must be [{b}, 3, {h}, {w}] {}",
                        n.shape(),
                        n.dtype().name(),
                        self.dtype.name()
                    ),
                ));
            }
        }
        Ok(())
    }
}
