//! The multipart forms of `POST /v1/images/edits` and `/v1/images/variations` (axum's
//! `Multipart`): text fields become the same field map a JSON body gives (numbers and booleans
//! typed, so errors name their field), files are kept as bytes; then the images are decoded.

use super::api::ApiError;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::Multipart;
use hoa::image_io::{decode_rgb, RgbImage};
use hoa::request::Mask;
use serde_json::{Map, Value};

/// Most `image` parts one form may hold (OpenAI's bound); hoa edits the first only.
const MAX_IMAGES: usize = 16;
/// Form fields whose text is a number.
const NUMBERS: [&str; 8] = [
    "n",
    "noise_level",
    "seed",
    "steps",
    "guidance",
    "strength",
    "partial_images",
    "output_compression",
];

pub struct Form {
    pub fields: Map<String, Value>,
    pub images: Vec<Vec<u8>>,
    pub mask: Option<Vec<u8>>,
}

fn broken(e: MultipartError) -> ApiError {
    ApiError {
        status: e.status(),
        ..ApiError::bad(None, format!("the multipart form: {}", e.body_text()))
    }
}

/// A text field as the JSON value it stands for.
fn value_of(name: &str, text: &str) -> Result<Value, ApiError> {
    let bad =
        |what: &str| ApiError::bad(Some(name), format!("{name}: expected {what}, got {text:?}"));
    if NUMBERS.contains(&name) {
        return serde_json::from_str::<serde_json::Number>(text.trim())
            .map(Value::Number)
            .map_err(|_| bad("a number"));
    }
    match name {
        "stream" => match text.trim() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(bad("true or false")),
        },
        _ => Ok(Value::String(text.to_string())),
    }
}

/// Reads the whole form (the body limit bounds it: 413 past it).
pub async fn read(form: Result<Multipart, MultipartRejection>) -> Result<Form, ApiError> {
    let mut form = form.map_err(|e| ApiError {
        status: e.status(),
        ..ApiError::bad(
            None,
            format!("expected a multipart/form-data body: {}", e.body_text()),
        )
    })?;
    let mut out = Form {
        fields: Map::new(),
        images: Vec::new(),
        mask: None,
    };
    while let Some(field) = form.next_field().await.map_err(broken)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "image" | "image[]" => {
                if out.images.len() == MAX_IMAGES {
                    return Err(ApiError::bad(
                        Some("image"),
                        format!("image: at most {MAX_IMAGES} images"),
                    ));
                }
                out.images
                    .push(field.bytes().await.map_err(broken)?.to_vec());
            }
            "mask" if out.mask.is_some() => {
                return Err(ApiError::bad(Some("mask"), "mask: given twice"))
            }
            "mask" => out.mask = Some(field.bytes().await.map_err(broken)?.to_vec()),
            _ => {
                let text = field.text().await.map_err(broken)?;
                let v = value_of(&name, &text)?;
                if out.fields.insert(name.clone(), v).is_some() {
                    return Err(ApiError::bad(Some(&name), format!("{name}: given twice")));
                }
            }
        }
    }
    Ok(out)
}

impl Form {
    /// The one image to start from (hoa edits one; OpenAI's several are references).
    pub fn take_image(&mut self) -> Result<Vec<u8>, ApiError> {
        match self.images.len() {
            0 => Err(ApiError::bad(
                Some("image"),
                "image: is required (a PNG or JPEG file)",
            )),
            1 => Ok(self.images.remove(0)),
            n => Err(ApiError::bad(
                Some("image"),
                format!("image: hoa edits one image, got {n}"),
            )),
        }
    }
}

/// The picture to start from, decoded off the async threads.
pub async fn decode_image(bytes: Vec<u8>) -> Result<RgbImage, ApiError> {
    tokio::task::spawn_blocking(move || decode_rgb(&bytes, "image"))
        .await
        .map_err(|_| ApiError::internal("decoding the image failed"))?
        .map_err(|e| ApiError::bad(Some("image"), e.to_string()))
}

/// OpenAI's mask: a PNG whose fully transparent pixels mark the area to edit; hoa's mask is
/// 1 where it repaints, so 1 - alpha (partial alpha gives a gray mask, which `resolve`
/// binarizes with a warning, as diffusers does).
pub async fn decode_mask(bytes: Vec<u8>) -> Result<Mask, ApiError> {
    tokio::task::spawn_blocking(move || mask_from_alpha(&bytes))
        .await
        .map_err(|_| ApiError::internal("decoding the mask failed"))?
}

fn mask_from_alpha(bytes: &[u8]) -> Result<Mask, ApiError> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| ApiError::bad(Some("mask"), format!("mask: cannot decode it as PNG ({e})")))?;
    if !img.color().has_alpha() {
        return Err(ApiError::bad(
            Some("mask"),
            "mask: needs an alpha channel: its transparent pixels mark the area to edit",
        ));
    }
    let rgba = img.to_rgba8();
    Ok(Mask {
        width: rgba.width() as usize,
        height: rgba.height() as usize,
        values: rgba.pixels().map(|p| 1.0 - p[3] as f32 / 255.0).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_text_becomes_typed_values_naming_the_field_when_bad() {
        assert_eq!(value_of("n", "2").unwrap(), serde_json::json!(2));
        assert_eq!(
            value_of("guidance", " 1.5").unwrap(),
            serde_json::json!(1.5)
        );
        assert_eq!(value_of("stream", "true").unwrap(), Value::Bool(true));
        assert_eq!(value_of("prompt", "7").unwrap(), serde_json::json!("7"));
        for (name, text) in [("n", "two"), ("seed", ""), ("stream", "yes")] {
            assert_eq!(
                value_of(name, text).unwrap_err().param.as_deref(),
                Some(name)
            );
        }
    }

    #[test]
    fn transparent_mask_pixels_are_the_ones_repainted() {
        let mut png = Vec::new();
        let img =
            image::RgbaImage::from_fn(2, 1, |x, _| image::Rgba([9, 9, 9, [0, 255][x as usize]]));
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let m = mask_from_alpha(&png).unwrap();
        assert_eq!((m.width, m.height, m.values), (2, 1, vec![1.0, 0.0]));
        let mut rgb = Vec::new();
        image::RgbImage::new(2, 1)
            .write_to(&mut std::io::Cursor::new(&mut rgb), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(
            mask_from_alpha(&rgb).unwrap_err().param.as_deref(),
            Some("mask")
        );
        assert_eq!(
            mask_from_alpha(b"junk").unwrap_err().param.as_deref(),
            Some("mask")
        );
    }
}
