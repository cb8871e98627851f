//! The browser binding (wasm32 only): the same [`Pipeline`] the CLI runs, on the page's WebGPU
//! device, exported to JavaScript with `wasm-bindgen`. The page sends a request as JSON (the
//! keys of [`Request`]); defaults, validation, the prompt rewrite and the PNG's parameters come
//! from the library's one policy ([`resolve`]), so the page never parses the model's files.
//! web/app.js drives it:
//!
//! ```js
//! const hoa = await Hoa.create();          // rejects with a readable message without WebGPU
//! const d = JSON.parse(await hoa.load("default", files)); // Map<string, Uint8Array>; defaults
//! await hoa.upsample("a red circle");      // the prompt as the model reads it (hoa.json)
//! const rgba = await hoa.generate(JSON.stringify({prompt: "a red circle", seed: 7}),
//!                                 (ev) => ...);
//! const png = hoa.png();                   // the last image, with its parameters chunk
//! ```
//!
//! Everything here is single-threaded and never blocks: the pipeline awaits the GPU after each
//! step, so the page keeps painting while it generates.

mod clip;

use crate::error::Error;
use crate::gpu::{Context, ContextOptions};
use crate::image_io::{encode_png, RgbImage};
use crate::model_files::ModelFiles;
use crate::options::default_dtype;
use crate::pipeline::{Event, Pipeline};
use crate::request::{Origin, Request};
use crate::resolve::{resolve, Resolved};
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
    busy: Rc<Cell<bool>>,
    last: Rc<RefCell<Option<(RgbImage, String)>>>,
}

/// The form's defaults for the loaded model: what an empty request resolves to.
fn defaults_json(ctx: &Context, pipe: &Pipeline) -> Result<String, JsError> {
    let req = Request {
        prompt: Some(String::new()),
        ..Default::default()
    };
    let r = resolve(&req, &pipe.info, pipe.limits(ctx)).map_err(js_err)?;
    let o = &r.options;
    Ok(serde_json::json!({
        "width": o.width,
        "height": o.height,
        "steps": o.steps,
        "guidance": o.guidance,
        "guidance_high": o.guidance_high.map(|h| h.scale),
        "guidance_high_from": o.guidance_high.map_or(crate::resolve::DEFAULT_HIGH_FROM as f32, |h| h.from_timestep),
        "scheduler": r.sampler.name(),
        "upsampling": pipe.rewriter.is_some() || pipe.info.defaults.prompt_upsampling.is_some(),
        "consistency_decoder": pipe.info.has_consistency_decoder,
        "dtype": format!("{:?}", pipe.dtype).to_lowercase(),
    })
    .to_string())
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
    /// for the PNG's parameters. Each file is copied into wasm memory only while its component
    /// loads. Stores weights in f16 when the adapter has `shader-f16` and the model is large
    /// ([`default_dtype`]), else f32 (SwiftShader and many phones have no f16). Resolves to the
    /// model's defaults as JSON: `width`, `height`, `steps`, `guidance`, `guidance_high`
    /// (null: none), `guidance_high_from`, `scheduler`, `upsampling` and `consistency_decoder`
    /// (whether the model has them), and `dtype`.
    pub fn load(&self, name: String, files: Map) -> js_sys::Promise {
        let ctx = self.ctx.clone();
        let slot = self.pipe.clone();
        let model = self.model.clone();
        let busy = self.busy.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            if busy.get() {
                return Err(JsError::new("hoa is busy generating; wait for it to finish").into());
            }
            let files = JsFiles::new(&name, &files)?;
            // Drop the old model first: two models at once may not fit.
            *slot.borrow_mut() = None;
            let dtype = default_dtype(ctx.has_f16(), files.weight_bytes());
            let pipe = Pipeline::load(&ctx, &files, dtype).map_err(|e| load_error(e, &files))?;
            let defaults = defaults_json(&ctx, &pipe)?;
            *slot.borrow_mut() = Some(Rc::new(pipe));
            *model.borrow_mut() = name;
            Ok(defaults.into())
        })
    }

    /// Resolves to the prompt as the loaded model will read it with upsampling on (its hoa.json
    /// `rewriter` run on the GPU, else its `prompt_upsampling` rules, as `hoa generate` does
    /// unless `--no-upsample`); unchanged when the model has neither or no model is loaded.
    pub fn upsample(&self, prompt: String) -> js_sys::Promise {
        let ctx = self.ctx.clone();
        let pipe = self.pipe.borrow().clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let Some(pipe) = pipe else {
                return Ok(prompt.into());
            };
            let text = match (&pipe.rewriter, &pipe.info.defaults.prompt_upsampling) {
                (Some(rw), _) => rw.rewrite(&ctx, &prompt).await.map_err(js_err)?,
                (None, Some(u)) => u.upsample(&prompt).map_err(js_err)?,
                (None, None) => prompt,
            };
            Ok(text.into())
        })
    }

    /// Generates one image from `request` (JSON with the keys of hoa's `Request`: `prompt`,
    /// `negative_prompt`, `seed`, `steps`, `guidance`, `guidance_high`, `guidance_high_from`,
    /// `scheduler`, `eta`, `decoder`, `width`, `height`, `upsample`, `preview_every`; what is
    /// left out takes the model's default) and resolves to its RGBA bytes. `on_progress` is
    /// called with `{kind: "step", step, total}`, `{kind: "preview", step, width, height,
    /// rgba}`, `{kind: "decoding"}`, `{kind: "warning", message}` or `{kind: "resolved",
    /// prompt}` (the text the model reads) before the first step.
    pub fn generate(&self, request: String, on_progress: Function) -> js_sys::Promise {
        let ctx = self.ctx.clone();
        let slot = self.pipe.clone();
        let model = self.model.borrow().clone();
        let busy = self.busy.clone();
        let last = self.last.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let pipe = slot
                .borrow()
                .clone()
                .ok_or_else(|| JsError::new("no model loaded: call load() first"))?;
            let mut req = Request::from_json(&request).map_err(js_err)?;
            req.origin = Origin::Json;
            let mut r = resolve(&req, &pipe.info, pipe.limits(&ctx)).map_err(js_err)?;
            if r.options.batch != 1 {
                return Err(JsError::new("batch: the page makes one image at a time").into());
            }
            if busy.replace(true) {
                return Err(
                    JsError::new("hoa is already generating; wait for it to finish").into(),
                );
            }
            let rewritten =
                crate::rewriter::apply(&mut r, &ctx, pipe.rewriter.as_ref(), Some(&pipe.tokenizer))
                    .await;
            let out = match rewritten {
                Ok(()) => run(&ctx, &pipe, &r, &on_progress).await,
                Err(e) => Err(js_err(e).into()),
            };
            busy.set(false);
            let image = out?;
            let rgba = Uint8Array::from(image.to_rgba().as_slice());
            let params = r.parameters(&model, 0).to_text();
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

/// The page's `Map<path, Uint8Array>` as a model folder. The bytes stay in JavaScript until
/// the loader reads a file, so wasm memory holds one component's weights at a time, not the
/// whole model twice.
struct JsFiles {
    name: String,
    files: HashMap<String, Uint8Array>,
}

impl JsFiles {
    fn new(name: &str, files: &Map) -> Result<JsFiles, JsValue> {
        let mut map = HashMap::new();
        for entry in files.entries() {
            let pair: js_sys::Array = entry?.into();
            let path = pair.get(0).as_string().ok_or_else(|| {
                JsError::new("load: the files map's keys must be strings (paths)")
            })?;
            let bytes: Uint8Array = pair.get(1).dyn_into().map_err(|_| {
                JsError::new(&format!("load: the value for {path} is not a Uint8Array"))
            })?;
            map.insert(path, bytes);
        }
        Ok(JsFiles {
            name: name.to_string(),
            files: map,
        })
    }

    fn weight_bytes(&self) -> u64 {
        let weights = self
            .files
            .iter()
            .filter(|(p, _)| p.ends_with(".safetensors"));
        weights.map(|(_, b)| b.length() as u64).sum()
    }
}

impl ModelFiles for JsFiles {
    fn read(&self, path: &str) -> crate::Result<Option<Vec<u8>>> {
        Ok(self.files.get(path).map(Uint8Array::to_vec))
    }
    fn exists(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// A load error, with what the model needs when the device ran out of memory (browsers tell
/// no totals, so the size of the weights is the figure a person can act on).
fn load_error(e: Error, files: &JsFiles) -> JsError {
    let text = e.to_string();
    if !text.to_lowercase().contains("out of memory") {
        return JsError::new(&text);
    }
    JsError::new(&format!(
        "this device has too little GPU memory for {} ({:.0} MB of weights, more as f32 \
         without shader-f16): {text}; close other tabs or use a smaller model",
        files.name,
        files.weight_bytes() as f64 / 1e6
    ))
}

/// What to fetch for a model folder that cannot be listed (a URL): the plan of
/// [`crate::download_plan::plan`] as JSON for `model_index.json`'s text, with the `.fp16`
/// weights first when `prefer_fp16`.
#[wasm_bindgen(js_name = downloadPlan)]
pub fn download_plan(model_index: &str, prefer_fp16: bool) -> Result<String, JsError> {
    let plan = crate::download_plan::plan(model_index.as_bytes(), prefer_fp16).map_err(js_err)?;
    serde_json::to_string(&plan).map_err(|e| JsError::new(&e.to_string()))
}

/// The files of the prompt rewriter the fetched `hoa.json` names (none when it names none),
/// as JSON plan steps: the second stage of [`download_plan`].
#[wasm_bindgen(js_name = rewriterPlan)]
pub fn rewriter_plan(hoa_json: &str, prefer_fp16: bool) -> Result<String, JsError> {
    let steps =
        crate::download_plan::rewriter_plan(hoa_json.as_bytes(), prefer_fp16).map_err(js_err)?;
    serde_json::to_string(&steps).map_err(|e| JsError::new(&e.to_string()))
}

fn set(o: &Object, k: &str, v: impl Into<JsValue>) {
    // Setting a property on a fresh plain object cannot fail.
    let _ = Reflect::set(o, &k.into(), &v.into());
}

/// The page's progress object for `ev`.
fn event_object(ev: Event) -> Object {
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
    o
}

async fn run(
    ctx: &Context,
    pipe: &Pipeline,
    r: &Resolved,
    on_progress: &Function,
) -> Result<RgbImage, JsValue> {
    let mut callback_error = None;
    let mut send = |o: Object| {
        if let Err(e) = on_progress.call1(&JsValue::NULL, &o) {
            callback_error.get_or_insert(e);
        }
    };
    let o = Object::new();
    set(&o, "kind", "resolved");
    set(&o, "prompt", r.options.prompt.clone());
    send(o);
    for w in &r.warnings {
        send(event_object(Event::Warning(w.clone())));
    }
    let images = pipe
        .generate(ctx, &r.options, &mut |ev| send(event_object(ev)))
        .await
        .map_err(js_err)?;
    if let Some(e) = callback_error {
        return Err(e);
    }
    images
        .into_iter()
        .next()
        .ok_or_else(|| JsError::new("the pipeline returned no image").into())
}
