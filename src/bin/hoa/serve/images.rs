//! The image routes. Each body (JSON for generations, a multipart form for edits and
//! variations) becomes a [`Call`]; `hoa::resolve` decides and checks it (the one policy), it is
//! queued as a job, and the answer is JSON (`b64_json` or `url`) or, with `stream`, Server-Sent
//! Events (`stream.rs`). `url` images are served by [`file`].

use super::api::{parse, parse_map, to_call, ApiError, Call, Format, Output};
use super::{enqueue, finished, form, outcome, pick_model, stream, timed_out, worker, Shared};
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Multipart, Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use hoa::resolve::{resolve, variation_request, Resolved};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

/// Which route a call came by: it names the stream's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Generation,
    Edit,
}

impl Kind {
    pub fn events(self) -> &'static str {
        match self {
            Kind::Generation => "image_generation",
            Kind::Edit => "image_edit",
        }
    }
}

pub async fn generations(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError {
        status: e.status(),
        ..ApiError::bad(None, e.body_text())
    })?;
    let call = to_call(&parse(&body)?)?;
    submit(s, call, &headers, Kind::Generation).await
}

/// img2img of `image` (no mask), inpainting with one (transparent = repaint).
pub async fn edits(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let call = {
        let _reading = upload_slot(&s)?;
        let mut f = read_form(&s, body).await?;
        let mut call = to_call(&parse_map(std::mem::take(&mut f.fields))?)?;
        call.req.init_image = Some(form::decode_image(f.take_image()?).await?);
        if let Some(m) = f.mask.take() {
            call.req.mask = Some(form::decode_mask(m).await?);
        }
        call
    };
    submit(s, call, &headers, Kind::Edit).await
}

/// Variations of `image`: on a stable unCLIP model, new images from its CLIP image embedding
/// (`noise_level` as an extra field); on any other model, img2img of `image` from the empty
/// prompt (`strength` as an extra field). `hoa::resolve::variation_request` decides which.
pub async fn variations(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let call = {
        let _reading = upload_slot(&s)?;
        let mut f = read_form(&s, body).await?;
        for field in ["prompt", "stream", "partial_images"] {
            if f.fields.contains_key(field) {
                return Err(ApiError::bad(
                    Some(field),
                    format!("{field}: variations take none (POST /v1/images/edits does)"),
                ));
            }
        }
        let mut call = to_call(&parse_map(std::mem::take(&mut f.fields))?)?;
        let image = f.take_image()?;
        let model = pick_model(&s, call.model.as_deref())?;
        let (shared, req) = (s.clone(), std::mem::take(&mut call.req));
        // Decoding is blocking work.
        call.req = tokio::task::spawn_blocking(move || {
            variation_request(req, &image, &shared.models[model].info)
        })
        .await
        .map_err(|_| ApiError::internal("decoding the image failed"))?
        .map_err(super::api::from_hoa)?;
        call
    };
    submit(s, call, &headers, Kind::Generation).await
}

/// The form, within the request's time limit (a stalled upload must not hold its slot).
async fn read_form(
    s: &Shared,
    body: Result<Multipart, MultipartRejection>,
) -> Result<form::Form, ApiError> {
    tokio::time::timeout(s.timeout, form::read(body))
        .await
        .map_err(|_| ApiError {
            status: axum::http::StatusCode::REQUEST_TIMEOUT,
            code: Some("timeout"),
            ..ApiError::bad(
                None,
                format!(
                    "the form did not arrive within {} s (--timeout-s)",
                    s.timeout.as_secs()
                ),
            )
        })?
}

/// A slot to read and decode one form in, or a 429 when as many are being read as can queue.
fn upload_slot(s: &Shared) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    s.uploads
        .try_acquire()
        .map_err(|_| super::busy("too many uploads at once; retry later"))
}

/// Resolves the call: once as given, then again with `quality`'s steps and the preview
/// interval `partial_images` asks for, both relative to the resolved steps.
fn resolve_call(s: &Shared, model: usize, call: &mut Call) -> Result<Resolved, ApiError> {
    let info = &s.models[model].info;
    let mut r = resolve(&call.req, info, s.limits).map_err(super::api::from_hoa)?;
    if let (Some(f), None) = (call.steps_factor, call.req.steps) {
        call.req.steps = Some(((r.options.steps as f64 * f).round() as i64).max(1));
        r = resolve(&call.req, info, s.limits).map_err(|e| {
            let mut e = super::api::from_hoa(e);
            if e.param.as_deref() == Some("steps") {
                e.param = Some("quality".into());
            }
            e
        })?;
    }
    if call.partial_images > 0 {
        // At most partial_images previews (the stream drops any extra), spread over the run.
        let every = (r.options.steps / (call.partial_images + 1)).max(1);
        call.req.preview_every = Some(every as i64);
        r = resolve(&call.req, info, s.limits).map_err(super::api::from_hoa)?;
    }
    Ok(r)
}

async fn submit(
    s: Arc<Shared>,
    mut call: Call,
    headers: &HeaderMap,
    kind: Kind,
) -> Result<Response, ApiError> {
    let model = pick_model(&s, call.model.as_deref())?;
    let resolved = resolve_call(&s, model, &mut call)?;
    let revised = resolved
        .upsampled
        .clone()
        .unwrap_or_else(|| resolved.prompt.clone());
    let size = format!("{}x{}", resolved.options.width, resolved.options.height);
    let deadline = Instant::now() + s.timeout;
    let (job, mut events) = worker::Job::new(model, resolved, Some(deadline));
    let in_flight = s.metrics.in_flight();
    enqueue(&s, job, &call.req).await?;
    let mut meta = Meta {
        kind,
        size,
        quality: call.quality,
        revised,
        output: call.output,
    };
    if call.stream {
        return Ok(stream::respond(
            s,
            events,
            deadline,
            meta,
            call.partial_images,
            in_flight,
        ));
    }
    let last = tokio::time::timeout_at(
        deadline.into(),
        finished(&s, &mut events, &mut meta.revised),
    )
    .await
    .map_err(|_| timed_out(s.timeout))?;
    let pngs = outcome(last, s.timeout)?;
    s.metrics.images.inc_by(pngs.len() as u64);
    let images = convert(pngs, call.output).await?;
    let data = match call.format {
        Format::B64Json => images
            .iter()
            .map(|img| json!({"b64_json": b64(img), "revised_prompt": meta.revised}))
            .collect(),
        Format::Url => links(&s, headers, images, &meta).await?,
    };
    let mut answer = meta.fields();
    answer["created"] = json!(super::now());
    answer["data"] = Value::Array(data);
    Ok(Json(answer).into_response())
}

pub fn b64(png: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(png)
}

/// The worker's PNGs in the answer's format (JPEG drops the PNG's `parameters` chunk).
pub async fn convert(pngs: Vec<Vec<u8>>, output: Output) -> Result<Vec<Vec<u8>>, ApiError> {
    let Output::Jpeg(quality) = output else {
        return Ok(pngs);
    };
    tokio::task::spawn_blocking(move || pngs.iter().map(|p| to_jpeg(p, quality)).collect())
        .await
        .map_err(|_| ApiError::internal("encoding the JPEG failed"))?
}

fn to_jpeg(png: &[u8], quality: u8) -> Result<Vec<u8>, ApiError> {
    let failed = |e: image::ImageError| ApiError::internal(format!("encoding the JPEG: {e}"));
    let rgb = image::load_from_memory(png).map_err(failed)?.to_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&rgb)
        .map_err(failed)?;
    Ok(out)
}

/// What every answer and event echoes about the request.
pub struct Meta {
    pub kind: Kind,
    pub size: String,
    pub quality: String,
    pub revised: String,
    pub output: Output,
}

impl Meta {
    /// The fields OpenAI's answers carry beside the images. hoa counts no tokens: `usage` is
    /// zeros, there for clients that read it.
    pub fn fields(&self) -> Value {
        json!({
            "size": self.size,
            "quality": self.quality,
            "background": "opaque",
            "output_format": self.output.name(),
            "usage": {
                "input_tokens": 0,
                "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
                "output_tokens": 0,
                "total_tokens": 0,
            },
        })
    }
}

/// Stores the images and links them under the public URL (`--public-url`, else the request's
/// `Host`, else the address the server listens on).
async fn links(
    s: &Arc<Shared>,
    headers: &HeaderMap,
    images: Vec<Vec<u8>>,
    meta: &Meta,
) -> Result<Vec<Value>, ApiError> {
    let store = s.files.clone();
    let ext = match meta.output {
        Output::Png => ".png",
        Output::Jpeg(_) => ".jpg",
    };
    let names = tokio::task::spawn_blocking(move || {
        images
            .iter()
            .map(|p| store.save(p, ext))
            .collect::<anyhow::Result<Vec<String>>>()
    })
    .await
    .map_err(|_| ApiError::internal("storing the images failed"))?
    .map_err(|e| ApiError::internal(format!("storing the images failed: {e:#}")))?;
    let base = match &s.public_url {
        Some(u) => u.clone(),
        None => format!("http://{}", host(headers).unwrap_or(s.addr.to_string())),
    };
    Ok(names
        .iter()
        .map(|n| json!({"url": format!("{base}/v1/files/images/{n}"), "revised_prompt": meta.revised}))
        .collect())
}

/// The request's `Host` header when it is a plain host[:port].
fn host(headers: &HeaderMap) -> Option<String> {
    let h = headers.get(header::HOST)?.to_str().ok()?;
    let plain = !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    plain.then(|| h.to_string())
}

/// `GET /v1/files/images/{name}`: a `url` image while its time lasts; 404 for anything else.
pub async fn file(
    State(s): State<Arc<Shared>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let gone = || {
        ApiError::not_found(
            None,
            "no such image: links hold for --url-ttl-s seconds after they are made",
        )
    };
    let Path(name) = name.map_err(|_| gone())?;
    let store = s.files.clone();
    let (bytes, kind, left) = tokio::task::spawn_blocking(move || store.get(&name))
        .await
        .ok()
        .flatten()
        .ok_or_else(gone)?;
    let headers = [
        (header::CONTENT_TYPE, kind.to_string()),
        (header::CACHE_CONTROL, format!("private, max-age={left}")),
    ];
    Ok((headers, bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_host_header_makes_links() {
        let mut h = HeaderMap::new();
        assert_eq!(host(&h), None);
        for (given, want) in [
            ("example.com:8000", Some("example.com:8000")),
            ("[::1]:80", Some("[::1]:80")),
            ("evil.com/path", None),
            ("a b", None),
            ("x@y", None),
        ] {
            h.insert(header::HOST, given.parse().unwrap());
            assert_eq!(host(&h).as_deref(), want, "{given}");
        }
    }
}
