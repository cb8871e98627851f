//! The browser binding (wasm32 only): the same [`Pipeline`] the CLI runs, on the page's WebGPU
//! device, exported to JavaScript with `wasm-bindgen`. web/app.js drives it:
//!
//! ```js
//! const hoa = await Hoa.create();          // rejects with a readable message without WebGPU
//! await hoa.load("default", files);        // Map<string, Uint8Array> of a diffusers folder
//! hoa.upsample("a red circle");            // the prompt as the model reads it (hoa.json)
//! const rgba = await hoa.generate("a red circle", true, "", 7n, 20, 3.0, undefined, 500,
//!                                 "ddim", 0, "vae", 64, 64, 5, (ev) => ...);
//! const png = hoa.png();                   // the last image, with its parameters chunk
//! ```
//!
//! Everything here is single-threaded and never blocks: the pipeline awaits the GPU after each
//! step, so the page keeps painting while it generates.

use crate::error::Error;
use crate::gpu::{Context, ContextOptions, DType};
use crate::image_io::{encode_png, GenerationParameters, RgbImage};
use crate::model_defaults::ModelDefaults;
use crate::model_files::MemoryFiles;
use crate::pipeline::{Decoder, Event, GenerateOptions, GuidanceHigh, Pipeline};
use crate::prompt_upsampling::PromptUpsampling;
use crate::schedulers::{self, SchedulerKind};
use js_sys::{Function, Map, Object, Reflect, Uint8Array};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use wasm_bindgen::prelude::*;

fn js_err(e: Error) -> JsError {
    JsError::new(&e.to_string())
}

/// WebGPU's default limits, which every WebGPU adapter must meet and which hoa's kernels are
/// written to fit (compatibility-mode adapters report less).
const REQUIRED: [(&str, u64); 5] = [
    ("maxStorageBuffersPerShaderStage", 8),
    ("maxStorageBufferBindingSize", 128 << 20),
    ("maxComputeInvocationsPerWorkgroup", 256),
    ("maxComputeWorkgroupStorageSize", 16384),
    ("maxComputeWorkgroupsPerDimension", 65535),
];

fn too_small(l: &wgpu::Limits) -> Vec<String> {
    let have = [
        l.max_storage_buffers_per_shader_stage as u64,
        l.max_storage_buffer_binding_size,
        l.max_compute_invocations_per_workgroup as u64,
        l.max_compute_workgroup_storage_size as u64,
        l.max_compute_workgroups_per_dimension as u64,
    ];
    REQUIRED
        .iter()
        .zip(have)
        .filter(|((_, want), have)| have < want)
        .map(|((name, want), have)| format!("{name} is {have}, hoa needs {want}"))
        .collect()
}

/// A WebGPU device and, once [`Hoa::load`] ran, a model.
#[wasm_bindgen]
pub struct Hoa {
    ctx: Rc<Context>,
    pipe: Rc<RefCell<Option<Rc<Pipeline>>>>,
    model: Rc<RefCell<String>>,
    /// The loaded model's hoa.json `prompt_upsampling`.
    upsampling: Rc<RefCell<Option<PromptUpsampling>>>,
    busy: Rc<Cell<bool>>,
    last: Rc<RefCell<Option<(RgbImage, String)>>>,
}

#[wasm_bindgen]
impl Hoa {
    /// Opens the browser's WebGPU adapter. Fails with a message a person can act on when the
    /// browser has no WebGPU, no adapter, or an adapter below WebGPU's default limits.
    pub async fn create() -> Result<Hoa, JsError> {
        let nav = Reflect::get(&js_sys::global(), &"navigator".into()).unwrap_or(JsValue::NULL);
        let gpu = if nav.is_object() {
            Reflect::get(&nav, &"gpu".into()).unwrap_or(JsValue::UNDEFINED)
        } else {
            JsValue::UNDEFINED
        };
        if gpu.is_undefined() || gpu.is_null() {
            return Err(JsError::new(
                "this browser has no WebGPU (navigator.gpu is undefined): use a recent Chrome, \
                 Edge or Safari, or Firefox with WebGPU enabled, on a secure (https or \
                 localhost) page",
            ));
        }
        let ctx = Context::new(ContextOptions {
            backends: Some(wgpu::Backends::BROWSER_WEBGPU),
            // What every WebGPU device has, so that what runs here runs on any of them.
            webgpu_default_limits: true,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            JsError::new(&format!(
                "WebGPU is there but gave no usable GPU ({e}); check that hardware \
                 acceleration is on"
            ))
        })?;
        let small = too_small(&ctx.limits);
        if !small.is_empty() {
            return Err(JsError::new(&format!(
                "this GPU's WebGPU limits are too small for hoa: {}",
                small.join("; ")
            )));
        }
        Ok(Hoa {
            ctx: Rc::new(ctx),
            pipe: Rc::default(),
            model: Rc::default(),
            upsampling: Rc::default(),
            busy: Rc::default(),
            last: Rc::default(),
        })
    }

    /// What hoa got from the adapter (browsers hide its name; the page shows `adapter.info`).
    pub fn adapter(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        format!(
            "shader-f16: {}, subgroups: {}, storage binding up to {} MiB",
            yes(self.ctx.has_f16()),
            yes(self.ctx.features.contains(wgpu::Features::SUBGROUP)),
            self.ctx.max_binding_bytes() >> 20
        )
    }

    /// Loads a diffusers folder given as `Map<path, Uint8Array>` (paths relative to the folder,
    /// e.g. `unet/config.json`), through the loader the CLI uses; `name` is the model's name
    /// for the PNG's parameters. Computes in f32 (every adapter has it; SwiftShader and many
    /// phones have no `shader-f16`). Resolves to the model's native image size `[w, h]`.
    pub fn load(&self, name: String, files: Map) -> js_sys::Promise {
        let ctx = self.ctx.clone();
        let slot = self.pipe.clone();
        let model = self.model.clone();
        let upsampling = self.upsampling.clone();
        let busy = self.busy.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            if busy.get() {
                return Err(JsError::new("hoa is busy generating; wait for it to finish").into());
            }
            let mut map = HashMap::new();
            for entry in files.entries() {
                let pair: js_sys::Array = entry?.into();
                let path = pair.get(0).as_string().ok_or_else(|| {
                    JsError::new("load: the files map's keys must be strings (paths)")
                })?;
                let bytes: Uint8Array = pair.get(1).dyn_into().map_err(|_| {
                    JsError::new(&format!("load: the value for {path} is not a Uint8Array"))
                })?;
                map.insert(path, bytes.to_vec());
            }
            let files = MemoryFiles {
                name: name.clone(),
                files: map,
            };
            let defaults = ModelDefaults::load(&files).map_err(js_err)?;
            // Drop the old model first: two models at once may not fit.
            *slot.borrow_mut() = None;
            let pipe = Pipeline::load(&ctx, &files, DType::F32).map_err(js_err)?;
            let f = pipe.vae_scale_factor();
            let native = pipe.unet_config.sample_size.unwrap_or(64) * f;
            *slot.borrow_mut() = Some(Rc::new(pipe));
            *model.borrow_mut() = name;
            *upsampling.borrow_mut() = defaults.prompt_upsampling;
            let size = js_sys::Array::of2(&(native as u32).into(), &(native as u32).into());
            Ok(size.into())
        })
    }

    /// The prompt as the loaded model will read it with `upsample` on: its hoa.json
    /// `prompt_upsampling` applied (as `hoa generate` does unless `--no-upsample`); unchanged
    /// when the model has none.
    pub fn upsample(&self, prompt: String) -> Result<String, JsError> {
        match self.upsampling.borrow().as_ref() {
            Some(u) => u.upsample(&prompt).map_err(js_err),
            None => Ok(prompt),
        }
    }

    /// Generates one image and resolves to its RGBA bytes (`width * height * 4`).
    /// `upsample`: apply the model's prompt upsampling ([`Hoa::upsample`]);
    /// `guidance_high`: the scale for the steps at timestep ≥ `guidance_high_from` (as the
    /// CLI's `--guidance-high`), undefined for `guidance` throughout;
    /// `scheduler`: "" for the model's own, else ddim, euler, dpm++2m, ... (as the CLI's
    /// `--scheduler`); `eta`: DDIM's eta in [0, 1] (as `--eta`; other schedulers warn that
    /// they ignore it); `decoder`: "vae" or "consistency"; `preview_every`: decode the latents
    /// every this many steps for a live preview (0 = never). `on_progress` is called with
    /// `{kind: "step", step, total}`, `{kind: "preview", step, width, height, rgba}`,
    /// `{kind: "decoding"}` or `{kind: "warning", message}`.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &self,
        prompt: String,
        upsample: bool,
        negative: String,
        seed: u64,
        steps: usize,
        guidance: f32,
        guidance_high: Option<f32>,
        guidance_high_from: f32,
        scheduler: String,
        eta: f32,
        decoder: String,
        width: usize,
        height: usize,
        preview_every: usize,
        on_progress: Function,
    ) -> js_sys::Promise {
        let ctx = self.ctx.clone();
        let slot = self.pipe.clone();
        let model = self.model.borrow().clone();
        let busy = self.busy.clone();
        let last = self.last.clone();
        let upsampled = upsample.then(|| self.upsample(prompt.clone())).transpose();
        wasm_bindgen_futures::future_to_promise(async move {
            let upsampled = upsampled?.filter(|u| *u != prompt);
            let pipe = slot
                .borrow()
                .clone()
                .ok_or_else(|| JsError::new("no model loaded: call load() first"))?;
            if busy.replace(true) {
                return Err(
                    JsError::new("hoa is already generating; wait for it to finish").into(),
                );
            }
            let out = run(
                &ctx,
                &pipe,
                &model,
                GenerateInput {
                    prompt,
                    upsampled,
                    negative,
                    seed,
                    steps,
                    guidance,
                    guidance_high: guidance_high.map(|scale| GuidanceHigh {
                        scale,
                        from_timestep: guidance_high_from,
                    }),
                    scheduler,
                    eta,
                    decoder,
                    width,
                    height,
                    preview_every,
                },
                &on_progress,
            )
            .await;
            busy.set(false);
            let (image, params) = out?;
            let rgba = Uint8Array::from(image.to_rgba().as_slice());
            *last.borrow_mut() = Some((image, params));
            Ok(rgba.into())
        })
    }

    /// The last generated image as PNG bytes with an A1111-style `parameters` chunk (what the
    /// CLI writes).
    pub fn png(&self) -> Result<Uint8Array, JsError> {
        let last = self.last.borrow();
        let (image, params) = last
            .as_ref()
            .ok_or_else(|| JsError::new("nothing generated yet"))?;
        let png = encode_png(image, Some(params)).map_err(js_err)?;
        Ok(Uint8Array::from(png.as_slice()))
    }
}

struct GenerateInput {
    prompt: String,
    upsampled: Option<String>,
    negative: String,
    seed: u64,
    steps: usize,
    guidance: f32,
    guidance_high: Option<GuidanceHigh>,
    scheduler: String,
    eta: f32,
    decoder: String,
    width: usize,
    height: usize,
    preview_every: usize,
}

fn set(o: &Object, k: &str, v: impl Into<JsValue>) {
    // Setting a property on a fresh plain object cannot fail.
    let _ = Reflect::set(o, &k.into(), &v.into());
}

async fn run(
    ctx: &Context,
    pipe: &Pipeline,
    model: &str,
    a: GenerateInput,
    on_progress: &Function,
) -> Result<(RgbImage, String), JsValue> {
    let scheduler = match a.scheduler.as_str() {
        "" => None,
        s => Some(s.parse::<SchedulerKind>().map_err(js_err)?),
    };
    let decoder: Decoder = a.decoder.parse().map_err(js_err)?;
    let opts = GenerateOptions {
        prompt: a.upsampled.clone().unwrap_or_else(|| a.prompt.clone()),
        negative_prompt: a.negative,
        width: a.width,
        height: a.height,
        steps: a.steps,
        guidance: a.guidance,
        guidance_high: a.guidance_high,
        scheduler,
        eta: a.eta,
        seed: a.seed,
        batch: 1,
        decoder,
        preview_every: a.preview_every,
        ..Default::default()
    };
    pipe.validate(ctx, &opts).map_err(js_err)?;
    let kind = pipe.scheduler_kind(&opts).map_err(js_err)?;
    let sampler = kind.name().to_string();
    let mut callback_error = None;
    let images = pipe
        .generate(ctx, &opts, &mut |ev| {
            let o = Object::new();
            match ev {
                Event::Step { step, total, .. } => {
                    set(&o, "kind", "step");
                    set(&o, "step", step as u32);
                    set(&o, "total", total as u32);
                }
                Event::Preview { step, image } => {
                    set(&o, "kind", "preview");
                    set(&o, "step", step as u32);
                    set(&o, "width", image.width as u32);
                    set(&o, "height", image.height as u32);
                    set(&o, "rgba", Uint8Array::from(image.to_rgba().as_slice()));
                }
                Event::Decoding => set(&o, "kind", "decoding"),
                Event::Warning(w) => {
                    web_sys::console::warn_1(&w.clone().into());
                    set(&o, "kind", "warning");
                    set(&o, "message", w);
                }
            }
            if let Err(e) = on_progress.call1(&JsValue::NULL, &o) {
                callback_error.get_or_insert(e);
            }
        })
        .await
        .map_err(js_err)?;
    if let Some(e) = callback_error {
        return Err(e);
    }
    let image = images
        .into_iter()
        .next()
        .ok_or_else(|| JsError::new("the pipeline returned no image"))?;
    let params = GenerationParameters {
        prompt: a.prompt,
        negative_prompt: opts.negative_prompt.clone(),
        steps: opts.steps,
        sampler,
        guidance: opts.guidance,
        seed: opts.seed,
        width: opts.width,
        height: opts.height,
        model: model.to_string(),
        decoder: opts.decoder.name().to_string(),
        extra: opts
            .guidance_high
            .map(|h| h.parameter())
            .into_iter()
            .chain(schedulers::eta_parameter(kind, opts.eta))
            .chain(a.upsampled.map(|u| ("Upsampled prompt".to_string(), u)))
            .collect(),
    }
    .to_text();
    Ok((image, params))
}
