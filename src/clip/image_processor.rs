//! transformers' `CLIPImageProcessor` (`preprocessor_config.json`), as its PIL backend
//! (`CLIPImageProcessorPil`, the one transformers 4 used and OpenAI's preprocessing) computes
//! it: RGB with transparency composited onto white, shortest edge resized with Pillow's
//! resampling ([`super::resample`]), center crop (zero padding where the image is smaller),
//! rescale by 1/255 in f64 then f32, normalize with the mean and std in f32. Bit-exact against
//! `CLIPImageProcessorPil` for 8-bit PNGs; transformers 5's default torchvision backend resizes
//! in float and differs by a few levels at edges (tests/models_clip.rs states the bound).

use super::resample::{resize_rgb, Filter};
use crate::config::{parse, Class, Source};
use crate::error::{Error, Result};
use crate::image_io::RgbImage;
use serde::Deserialize;

const FILE: &str = "preprocessor_config.json";

/// `size` / `crop_size`: `{"shortest_edge": n}`, `{"height": h, "width": w}` or a bare number
/// (older files; a shortest edge for `size`, a square for `crop_size`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum SizeField {
    Number(usize),
    Dict {
        shortest_edge: Option<usize>,
        height: Option<usize>,
        width: Option<usize>,
    },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
struct RawConfig {
    feature_extractor_type: Option<String>,
    do_resize: bool,
    size: SizeField,
    resample: i64,
    do_center_crop: bool,
    crop_size: SizeField,
    do_rescale: bool,
    rescale_factor: f64,
    do_normalize: bool,
    image_mean: Vec<f64>,
    image_std: Vec<f64>,
    do_convert_rgb: bool,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            feature_extractor_type: None,
            do_resize: true,
            size: SizeField::Number(224),
            resample: 3,
            do_center_crop: true,
            crop_size: SizeField::Number(224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            // OPENAI_CLIP_MEAN / OPENAI_CLIP_STD
            image_mean: vec![0.48145466, 0.4578275, 0.40821073],
            image_std: vec![0.26862954, 0.26130258, 0.27577711],
            do_convert_rgb: true,
        }
    }
}

/// How the resize step sizes its output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Resize {
    /// The shorter side becomes n, the other keeps the aspect ratio (rounded down).
    ShortestEdge(usize),
    /// Exactly (height, width).
    Exact(usize, usize),
}

/// A checked `CLIPImageProcessor` configuration.
#[derive(Clone, Debug)]
pub struct ClipImageProcessor {
    pub resize: Option<(Resize, Filter)>,
    /// (height, width)
    pub crop: Option<(usize, usize)>,
    pub rescale: Option<f64>,
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

/// Sizes a preprocessor may ask for (released CLIPs use 224 to 448).
const MAX_SIDE: usize = 1 << 13;

/// `do_resize`, `size` and `resample`: how the image is resized, if it is.
fn resize_of(src: &Source, c: &RawConfig) -> Result<Option<(Resize, Filter)>> {
    Ok(if c.do_resize {
        let filter = Filter::from_pil(c.resample).ok_or_else(|| {
            src.refuse(
                "resample",
                format!("= {} (hoa runs 2 = BILINEAR and 3 = BICUBIC)", c.resample),
            )
        })?;
        let r = match c.size {
            SizeField::Number(n) => Resize::ShortestEdge(n),
            SizeField::Dict {
                shortest_edge: Some(n),
                ..
            } => Resize::ShortestEdge(n),
            SizeField::Dict {
                height: Some(h),
                width: Some(w),
                ..
            } => Resize::Exact(h, w),
            _ => return Err(src.err("size", "needs `shortest_edge` or `height` and `width`")),
        };
        match r {
            Resize::ShortestEdge(n) => src.positive("size", n, MAX_SIDE)?,
            Resize::Exact(h, w) => {
                src.positive("size", h, MAX_SIDE)?;
                src.positive("size", w, MAX_SIDE)?;
            }
        }
        Some((r, filter))
    } else {
        None
    })
}

/// `do_center_crop` and `crop_size`: the (height, width) of the center crop, if any.
fn crop_of(src: &Source, c: &RawConfig) -> Result<Option<(usize, usize)>> {
    Ok(if c.do_center_crop {
        let (h, w) = match c.crop_size {
            SizeField::Number(n) => (n, n),
            SizeField::Dict {
                height: Some(h),
                width: Some(w),
                ..
            } => (h, w),
            _ => return Err(src.err("crop_size", "needs `height` and `width`")),
        };
        src.positive("crop_size", h, MAX_SIDE)?;
        src.positive("crop_size", w, MAX_SIDE)?;
        Some((h, w))
    } else {
        None
    })
}

impl ClipImageProcessor {
    pub fn from_json(json: &[u8]) -> Result<Self> {
        const KNOWN: &[&str] = &[
            "CLIPImageProcessor",
            "CLIPImageProcessorFast",
            "CLIPImageProcessorPil",
            "CLIPFeatureExtractor",
        ];
        let class = Class {
            key: "image_processor_type",
            known: KNOWN,
        };
        let c: RawConfig = parse(FILE, json, &class)?;
        let src = Source::new(FILE);
        if let Some(k) = c
            .feature_extractor_type
            .as_ref()
            .filter(|k| !KNOWN.contains(&k.as_str()))
        {
            return Err(src.refuse("feature_extractor_type", format!("= {k:?}")));
        }
        let resize = resize_of(&src, &c)?;
        let crop = crop_of(&src, &c)?;
        let three = |field: &str, v: &[f64]| -> Result<[f32; 3]> {
            match v {
                [a, b, c] => Ok([*a as f32, *b as f32, *c as f32]),
                _ => Err(src.err(field, format!("has {} values; RGB needs 3", v.len()))),
            }
        };
        let normalize = if c.do_normalize {
            let std = three("image_std", &c.image_std)?;
            if std
                .iter()
                .any(|&s| s.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
            {
                return Err(src.err("image_std", "must be positive"));
            }
            Some((three("image_mean", &c.image_mean)?, std))
        } else {
            None
        };
        if !c.do_convert_rgb {
            return Err(src.refuse("do_convert_rgb", "= false (hoa always reads RGB)"));
        }
        Ok(ClipImageProcessor {
            resize,
            crop,
            rescale: c.do_rescale.then_some(c.rescale_factor),
            normalize,
        })
    }

    /// The (height, width) every preprocessed image has, when the config fixes one.
    pub fn output_size(&self) -> Option<(usize, usize)> {
        match (self.crop, self.resize) {
            (Some(c), _) => Some(c),
            (None, Some((Resize::Exact(h, w), _))) => Some((h, w)),
            _ => None,
        }
    }

    /// `pixel_values` of one image: [3, H, W], channels first.
    pub fn preprocess(&self, img: &RgbImage) -> Result<(Vec<f32>, (usize, usize))> {
        let (mut data, mut w, mut h) = (img.data.clone(), img.width, img.height);
        if w == 0 || h == 0 || data.len() != w * h * 3 {
            return Err(Error::invalid(
                "image",
                format!("{w}x{h} with {} bytes", data.len()),
            ));
        }
        if let Some((r, filter)) = self.resize {
            let (oh, ow) = match r {
                Resize::ShortestEdge(n) => shortest_edge_size(h, w, n),
                Resize::Exact(h, w) => (h, w),
            };
            data = resize_rgb(&data, (w, h), (ow, oh), filter);
            (w, h) = (ow, oh);
        }
        if let Some((ch, cw)) = self.crop {
            data = center_crop(&data, (w, h), (cw, ch));
            (w, h) = (cw, ch);
        }
        let mut out = vec![0f32; 3 * h * w];
        for (i, px) in data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                // np_rescale: float64 product, cast to float32; np_normalize in float32.
                let mut v = match self.rescale {
                    Some(s) => (px[c] as f64 * s) as f32,
                    None => px[c] as f32,
                };
                if let Some((mean, std)) = self.normalize {
                    v = (v - mean[c]) / std[c];
                }
                out[c * h * w + i] = v;
            }
        }
        Ok((out, (h, w)))
    }
}

/// `get_resize_output_image_size(default_to_square=False)`: (height, width) with the shorter
/// side `size` and the longer `int(size * long / short)`.
pub fn shortest_edge_size(h: usize, w: usize, size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if w <= h {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// transformers' `center_crop` (numpy): the window starts at `(size - crop) // 2`; an image
/// smaller than the crop is first padded with zeros, `ceil((crop - size) / 2)` before it.
fn center_crop(data: &[u8], (w, h): (usize, usize), (cw, ch): (usize, usize)) -> Vec<u8> {
    // The source index of output index i along an axis, if inside the image.
    let axis = |size: usize, crop: usize| -> Vec<Option<usize>> {
        (0..crop)
            .map(|i| {
                if crop <= size {
                    Some((size - crop) / 2 + i)
                } else {
                    let before = (crop - size).div_ceil(2);
                    i.checked_sub(before).filter(|&s| s < size)
                }
            })
            .collect()
    };
    let (xs, ys) = (axis(w, cw), axis(h, ch));
    let mut out = vec![0u8; cw * ch * 3];
    for (oy, sy) in ys.iter().enumerate() {
        for (ox, sx) in xs.iter().enumerate() {
            if let (Some(sy), Some(sx)) = (sy, sx) {
                let s = (sy * w + sx) * 3;
                out[(oy * cw + ox) * 3..][..3].copy_from_slice(&data[s..s + 3]);
            }
        }
    }
    out
}

/// Decodes a PNG or JPEG as `PIL.Image.open(f)` followed by transformers' `convert_to_rgb`:
/// gray is replicated, transparency is composited onto white with Pillow's integer
/// `alpha_composite`. `what` names the image in errors.
pub fn decode_image(bytes: &[u8], what: &str) -> Result<RgbImage> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| Error::invalid(what, format!("cannot decode it as PNG or JPEG ({e})")))?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data = if img.color().has_alpha() {
        img.to_rgba8()
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| {
                let a = p[3] as u32;
                [0, 1, 2].map(|c| over_white(p[c], a))
            })
            .collect()
    } else {
        img.to_rgb8().into_raw()
    };
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

/// One channel of Pillow's `alpha_composite(white, rgba)` (`AlphaComposite.c`, 7 bits of
/// precision, rounded divisions by 255).
fn over_white(v: u8, a: u32) -> u8 {
    if a == 0 {
        return 255;
    }
    let coef1 = a << 7;
    let coef2 = (255 << 7) - coef1;
    let t = v as u32 * coef1 + 255 * coef2 + (0x80 << 7);
    ((((t >> 8) + t) >> 8) >> 7) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_keeps_the_aspect_ratio_rounding_down() {
        assert_eq!(shortest_edge_size(61, 97, 30), (30, 47));
        assert_eq!(shortest_edge_size(88, 41, 30), (64, 30));
        assert_eq!(shortest_edge_size(5, 7, 30), (30, 42));
        assert_eq!(shortest_edge_size(224, 224, 224), (224, 224));
    }

    #[test]
    fn center_crop_pads_a_small_image_ceil_before() {
        // 1x2 image (w=1), crop 4x1: rows -> [0, src0, src1, 0]? before = ceil(2/2) = 1.
        let img = [1, 1, 1, 2, 2, 2];
        let out = center_crop(&img, (1, 2), (1, 4));
        assert_eq!(out, [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0]);
        let out = center_crop(&img, (1, 2), (1, 5));
        assert_eq!(out[..9], [0, 0, 0, 0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn reads_openai_legacy_and_current_files_and_refuses_others() {
        // openai/clip-vit-base-patch32's preprocessor_config.json (transformers 4.x era).
        let legacy = br#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true,
            "do_resize": true, "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}"#;
        let p = ClipImageProcessor::from_json(legacy).unwrap();
        assert_eq!(p.resize, Some((Resize::ShortestEdge(224), Filter::Bicubic)));
        assert_eq!(
            (p.crop, p.output_size()),
            (Some((224, 224)), Some((224, 224)))
        );
        let exact = br#"{"size": {"height": 32, "width": 48}, "do_center_crop": false}"#;
        let p = ClipImageProcessor::from_json(exact).unwrap();
        assert_eq!(p.output_size(), Some((32, 48)));
        let cases: [(&[u8], &str); 4] = [
            (
                br#"{"image_processor_type": "SiglipImageProcessor"}"#,
                "preprocessor_config.json: `image_processor_type` = \"SiglipImageProcessor\": \
                 this file is not a CLIPImageProcessor",
            ),
            (
                br#"{"resample": 1}"#,
                "preprocessor_config.json: `resample` = 1",
            ),
            (
                br#"{"image_std": [0.5, 0, 0.5]}"#,
                "preprocessor_config.json: `image_std` must",
            ),
            (
                br#"{"size": {"width": 3}}"#,
                "preprocessor_config.json: `size` needs",
            ),
        ];
        for (json, want) in cases {
            let e = ClipImageProcessor::from_json(json).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn alpha_composite_ends() {
        assert_eq!(over_white(10, 0), 255);
        assert_eq!(over_white(10, 255), 10);
        assert_eq!(over_white(0, 128), 127);
    }
}
