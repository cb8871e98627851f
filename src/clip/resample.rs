//! Pillow's `Image.resize` for 8-bit RGB (`libImaging/Resample.c`), bit for bit: a separable
//! convolution whose support widens with the scale when downscaling (antialiasing), horizontal
//! pass first (rows rounded to u8), then vertical; coefficients normalized in f64, then fixed
//! point with 22 fractional bits. CLIP was trained on images resized this way, and the
//! `image` crate's filters differ from it.

/// The filters of `PIL.Image.Resampling` hoa runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `BILINEAR` (2): the triangle filter, support 1.
    Bilinear,
    /// `BICUBIC` (3): Keys' cubic with a = -0.5, support 2.
    Bicubic,
}

impl Filter {
    /// `PIL.Image.Resampling`'s number, as `preprocessor_config.json` stores it.
    pub fn from_pil(resample: i64) -> Option<Filter> {
        match resample {
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => (1.0 - x).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;
/// The accumulators start at one half, so the shift rounds.
const ROUND: i64 = 1 << (PRECISION_BITS - 1);

/// Per output pixel: the first input pixel and the fixed-point weights (`precompute_coeffs`
/// then `normalize_coeffs_8bpc`).
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    weights: Vec<Vec<i64>>,
}

fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    // Pillow passes the box as C floats: exact for every size below 2^24.
    let scale = (in_size as f32) as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) truncates; negative values are clamped to 0 right after either way.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let k: Vec<f64> = (0..n)
            .map(|x| filter.weight(((x + xmin) as f64 - center + 0.5) * ss))
            .collect();
        let ww: f64 = k.iter().sum();
        let fixed = k
            .iter()
            .map(|&w| {
                let w = if ww != 0.0 { w / ww } else { w };
                let v = w * (1u32 << PRECISION_BITS) as f64;
                (if w < 0.0 { -0.5 + v } else { 0.5 + v }) as i64
            })
            .collect();
        bounds.push((xmin, n));
        weights.push(fixed);
    }
    Coeffs { bounds, weights }
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes RGB `data` (`w` x `h`, rows top to bottom) to `ow` x `oh` as Pillow 13's
/// `Image.resize((ow, oh), resample)` does for a mode "RGB" image, including its choice of
/// which pass runs first (`ImagingResampleInner`: vertical first when the height shrinks by
/// more than twice as many pixels as the width; Pillow before 12 always ran horizontal first,
/// which differs by a few levels on such images).
pub fn resize_rgb(
    data: &[u8],
    (w, h): (usize, usize),
    (ow, oh): (usize, usize),
    filter: Filter,
) -> Vec<u8> {
    let (dh, dw) = (h as i64 - oh as i64, w as i64 - ow as i64);
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    let cv = coeffs(h, oh, filter);
    match (horizontal_first, ow != w, oh != h) {
        (_, false, false) => data.to_vec(),
        (true, true, need_v) => {
            // Only the rows the vertical pass reads go through the horizontal one.
            let first = cv.bounds.first().map_or(0, |b| b.0);
            let last = cv.bounds.last().map_or(0, |b| b.0 + b.1);
            let rows = &data[first * w * 3..last * w * 3];
            let tmp = horizontal(rows, w, last - first, &coeffs(w, ow, filter));
            if need_v {
                vertical(&tmp, ow, &cv, first)
            } else {
                tmp
            }
        }
        (true, false, true) => vertical(data, w, &cv, 0),
        (false, need_h, _) => {
            let tmp = vertical(data, w, &cv, 0);
            if need_h {
                horizontal(&tmp, w, oh, &coeffs(w, ow, filter))
            } else {
                tmp
            }
        }
    }
}

/// `ImagingResampleHorizontal_8bpc`: every row of `src` (`w` wide, `rows` high).
fn horizontal(src: &[u8], w: usize, rows: usize, ch: &Coeffs) -> Vec<u8> {
    let ow = ch.bounds.len();
    let mut out = vec![0u8; rows * ow * 3];
    for y in 0..rows {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        for (xx, ((xmin, n), k)) in ch.bounds.iter().zip(&ch.weights).enumerate() {
            for c in 0..3 {
                let s: i64 = (0..*n).map(|x| row[(xmin + x) * 3 + c] as i64 * k[x]).sum();
                out[(y * ow + xx) * 3 + c] = clip8(s + ROUND);
            }
        }
    }
    out
}

/// `ImagingResampleVertical_8bpc`: `src` (`w` wide) holds the input rows from `row0` on.
fn vertical(src: &[u8], w: usize, cv: &Coeffs, row0: usize) -> Vec<u8> {
    let oh = cv.bounds.len();
    let mut out = vec![0u8; oh * w * 3];
    for (yy, ((ymin, n), k)) in cv.bounds.iter().zip(&cv.weights).enumerate() {
        for i in 0..w * 3 {
            let s: i64 = (0..*n)
                .map(|y| src[(ymin - row0 + y) * w * 3 + i] as i64 * k[y])
                .sum();
            out[yy * w * 3 + i] = clip8(s + ROUND);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point_and_identity_is_a_copy() {
        for (i, o) in [(97, 30), (5, 30), (30, 30), (1, 7), (1000, 3)] {
            let c = coeffs(i, o, Filter::Bicubic);
            for k in &c.weights {
                let s: i64 = k.iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{i}->{o}: {s}"
                );
            }
        }
        let img: Vec<u8> = (0..5 * 4 * 3).map(|v| (v * 7) as u8).collect();
        assert_eq!(resize_rgb(&img, (5, 4), (5, 4), Filter::Bicubic), img);
    }

    #[test]
    fn a_flat_image_stays_flat_at_any_size() {
        let img = vec![200u8; 7 * 3 * 3];
        for size in [(30, 13), (2, 1), (7, 9)] {
            let out = resize_rgb(&img, (7, 3), size, Filter::Bicubic);
            assert_eq!(out.len(), size.0 * size.1 * 3);
            assert!(out.iter().all(|&v| v == 200), "{size:?}");
        }
    }
}
