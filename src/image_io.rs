//! Images in and out: PNG encoding with the generation parameters in a text chunk (the
//! `parameters` chunk other diffusion tools write and read), and decoding of init images and
//! masks (PNG or JPEG, through the `image` crate).

use crate::error::{Error, Result};

/// An 8-bit RGB image, rows top to bottom.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// RGBA with opaque alpha, for a browser canvas.
    pub fn to_rgba(&self) -> Vec<u8> {
        self.data
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect()
    }
}

/// What made an image, written as the `parameters` text chunk in the layout of the
/// AUTOMATIC1111 web UI (which other tools parse):
/// ```text
/// a red circle
/// Negative prompt: blurry
/// Steps: 20, Sampler: ddim, CFG scale: 3, Seed: 7, Size: 64x64, Model: default, Decoder: vae
/// ```
#[derive(Clone, Debug)]
pub struct GenerationParameters {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub sampler: String,
    pub guidance: f32,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub model: String,
    pub decoder: String,
    /// Extra `key: value` pairs (strength, init image, ...).
    pub extra: Vec<(String, String)>,
}

impl GenerationParameters {
    pub fn to_text(&self) -> String {
        let mut s = self.prompt.replace('\n', " ");
        if !self.negative_prompt.is_empty() {
            s += &format!(
                "\nNegative prompt: {}",
                self.negative_prompt.replace('\n', " ")
            );
        }
        s += &format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}, Decoder: {}",
            self.steps,
            self.sampler,
            self.guidance,
            self.seed,
            self.width,
            self.height,
            self.model,
            self.decoder
        );
        for (k, v) in &self.extra {
            // A1111 quotes a value that would break its "k: v, k: v" line (its `quote`).
            if v.contains([',', ':', '\n']) {
                s += &format!(", {k}: {}", serde_json::Value::from(v.as_str()));
            } else {
                s += &format!(", {k}: {v}");
            }
        }
        s
    }
}

/// Encodes `img` as PNG with `parameters` as a `tEXt` chunk (`iTXt` when it is not Latin-1).
pub fn encode_png(img: &RgbImage, parameters: Option<&str>) -> Result<Vec<u8>> {
    let err = |e: png::EncodingError| Error::Checkpoint(format!("PNG encoding: {e}"));
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, img.width as u32, img.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        if let Some(text) = parameters {
            if text.chars().all(|c| (c as u32) < 256) {
                enc.add_text_chunk("parameters".into(), text.into())
                    .map_err(err)?;
            } else {
                enc.add_itxt_chunk("parameters".into(), text.into())
                    .map_err(err)?;
            }
        }
        let mut w = enc.write_header().map_err(err)?;
        w.write_image_data(&img.data).map_err(err)?;
        w.finish().map_err(err)?;
    }
    Ok(out)
}

/// The `parameters` text of a PNG, if it has one.
pub fn read_png_parameters(bytes: &[u8]) -> Result<Option<String>> {
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = dec
        .read_info()
        .map_err(|e| Error::Checkpoint(format!("not a PNG: {e}")))?;
    let info = reader.info();
    let t = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == "parameters")
        .map(|c| c.text.clone());
    let i = info
        .utf8_text
        .iter()
        .find(|c| c.keyword == "parameters")
        .and_then(|c| c.get_text().ok());
    Ok(t.or(i))
}

/// Decodes a PNG or JPEG to RGB (alpha dropped); `what` names it in errors ("init image").
pub fn decode_rgb(bytes: &[u8], what: &str) -> Result<RgbImage> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| Error::Checkpoint(format!("{what}: cannot decode it as PNG or JPEG ({e})")))?;
    let rgb = img.to_rgb8();
    Ok(RgbImage {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    })
}

/// Decodes a mask to one value in [0, 1] per pixel (luma; white = repaint).
pub fn decode_mask(bytes: &[u8], what: &str) -> Result<(usize, usize, Vec<f32>)> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| Error::Checkpoint(format!("{what}: cannot decode it as PNG or JPEG ({e})")))?;
    let l = img.to_luma8();
    let (w, h) = (l.width() as usize, l.height() as usize);
    Ok((
        w,
        h,
        l.into_raw().iter().map(|&v| v as f32 / 255.0).collect(),
    ))
}
