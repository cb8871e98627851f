//! The browser binding of `hoa::clip` (wasm32 only): load a transformers `CLIPModel` folder on
//! the page's WebGPU device and embed, classify or score the images it has (the page can rank
//! or search what it generated). web/app.js would drive it:
//!
//! ```js
//! const clip = await hoa.clip(files);      // Map<string, Uint8Array>: config.json, ...
//! const probs = await clip.classify([png], ["a red circle", "a blue square"], "a photo of {}");
//! const e = await clip.embed_images([png1, png2]);   // Float32Array [n * clip.dim()]
//! ```

use super::{js_err, Hoa, JsFiles};
use crate::clip::{decode_image, prompts, Clip};
use crate::gpu::{Context, DType};
use crate::image_io::RgbImage;
use js_sys::{Array, Float32Array, Map, Uint8Array};
use std::rc::Rc;
use wasm_bindgen::prelude::*;

/// A loaded CLIP model on the page's device.
#[wasm_bindgen]
pub struct HoaClip {
    ctx: Rc<Context>,
    clip: Rc<Clip>,
}

#[wasm_bindgen]
impl Hoa {
    /// Loads a CLIP model folder given as `Map<path, Uint8Array>` (`config.json`,
    /// `model.safetensors`, `tokenizer.json`, `preprocessor_config.json`), in f32.
    pub fn clip(&self, files: Map) -> js_sys::Promise {
        let ctx = self.ctx.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let files = JsFiles::new("clip", &files)?;
            let clip = Clip::load(&ctx, &files, DType::F32).map_err(js_err)?;
            Ok(HoaClip {
                ctx,
                clip: Rc::new(clip),
            }
            .into())
        })
    }
}

/// PNG / JPEG bytes (an array of Uint8Array) decoded as CLIP's processor reads them.
fn images(list: &Array) -> Result<Vec<RgbImage>, JsValue> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let bytes: Uint8Array = v
                .dyn_into()
                .map_err(|_| JsError::new(&format!("image {i} is not a Uint8Array")))?;
            decode_image(&bytes.to_vec(), &format!("image {i}")).map_err(|e| js_err(e).into())
        })
        .collect()
}

#[wasm_bindgen]
impl HoaClip {
    /// The embedding width (`projection_dim`).
    pub fn dim(&self) -> usize {
        self.clip.dim()
    }

    /// L2-normalized image embeddings, `[n * dim]`.
    pub fn embed_images(&self, list: Array) -> js_sys::Promise {
        let (ctx, clip) = (self.ctx.clone(), self.clip.clone());
        wasm_bindgen_futures::future_to_promise(async move {
            let imgs = images(&list)?;
            let e = clip.embed_images(&ctx, &imgs).await.map_err(js_err)?;
            Ok(Float32Array::from(e.as_slice()).into())
        })
    }

    /// L2-normalized text embeddings, `[n * dim]`.
    pub fn embed_texts(&self, texts: Vec<String>) -> js_sys::Promise {
        let (ctx, clip) = (self.ctx.clone(), self.clip.clone());
        wasm_bindgen_futures::future_to_promise(async move {
            let e = clip.embed_texts(&ctx, &texts).await.map_err(js_err)?;
            Ok(Float32Array::from(e.as_slice()).into())
        })
    }

    /// Zero-shot probabilities `[images * labels]`, as `hoa clip classify` prints them.
    pub fn classify(&self, list: Array, labels: Vec<String>, template: String) -> js_sys::Promise {
        let (ctx, clip) = (self.ctx.clone(), self.clip.clone());
        wasm_bindgen_futures::future_to_promise(async move {
            let texts = prompts(&labels, &template).map_err(js_err)?;
            let imgs = images(&list)?;
            let p = clip.classify(&ctx, &imgs, &texts).await.map_err(js_err)?;
            Ok(Float32Array::from(p.as_slice()).into())
        })
    }
}
