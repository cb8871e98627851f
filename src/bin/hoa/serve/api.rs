//! OpenAI's Images API shapes (the fields of generations, edits and variations, the error
//! object) and their mapping onto hoa's [`Request`]; every default and check stays in
//! `hoa::resolve`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hoa::request::{Origin, Request};
use serde::Deserialize;
use serde_json::{json, Value};

/// Most images one request may ask for (OpenAI's own bound on `n`).
pub const MAX_N: i64 = 10;
/// Most previews a streamed request may ask for (OpenAI's bound on `partial_images`).
pub const MAX_PARTIAL_IMAGES: i64 = 3;

/// The fields of `POST /v1/images/generations` (JSON) and of the edits and variations forms:
/// OpenAI's, then hoa's own (sent with the client's `extra_body`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ImagesRequest {
    pub prompt: Option<String>,
    pub model: Option<String>,
    pub n: Option<i64>,
    pub size: Option<String>,
    pub quality: Option<String>,
    pub response_format: Option<String>,
    pub output_format: Option<String>,
    pub output_compression: Option<i64>,
    pub stream: Option<bool>,
    pub partial_images: Option<i64>,
    pub negative_prompt: Option<String>,
    pub seed: Option<u64>,
    pub steps: Option<i64>,
    pub guidance: Option<f64>,
    pub scheduler: Option<String>,
    pub decoder: Option<String>,
    pub strength: Option<f64>,
    pub noise_level: Option<i64>,
    /// false: the prompt as typed, without the model's rewrite (`hoa generate --no-upsample`).
    pub upsample: Option<bool>,
}

/// Fields [`ImagesRequest`] reads.
pub const KNOWN: [&str; 19] = [
    "prompt",
    "model",
    "n",
    "size",
    "quality",
    "response_format",
    "output_format",
    "output_compression",
    "stream",
    "partial_images",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "scheduler",
    "decoder",
    "strength",
    "noise_level",
    "upsample",
];

/// OpenAI's documented fields hoa accepts and does not act on, so that clients that send them
/// by default keep working (`style`: hoa's models have no style control).
pub const IGNORED: [&str; 7] = [
    "style",
    "user",
    "background",
    "moderation",
    "safety_identifier",
    "input_fidelity",
    "idempotency_key",
];

/// How the images come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    B64Json,
    Url,
}

/// The image file format of the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Png,
    /// JPEG at this quality (1-100), from `output_compression`.
    Jpeg(u8),
}

impl Output {
    pub fn name(self) -> &'static str {
        match self {
            Output::Png => "png",
            Output::Jpeg(_) => "jpeg",
        }
    }
}

/// One images call as hoa runs it: the hoa request plus what only the HTTP side acts on.
#[derive(Debug)]
pub struct Call {
    pub model: Option<String>,
    pub req: Request,
    pub format: Format,
    pub output: Output,
    pub stream: bool,
    /// Previews to stream (0 without `stream`).
    pub partial_images: usize,
    /// `quality` as a factor on the model's default steps, when `steps` is not given.
    pub steps_factor: Option<f64>,
    /// `quality` as the client gave it (echoed in the response).
    pub quality: String,
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn bad(param: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: param.map(String::from),
            code: None,
            retry_after: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            ..ApiError::bad(None, message)
        }
    }

    pub fn not_found(param: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            ..ApiError::bad(param, message)
        }
    }
}

/// OpenAI's error `type` for a status (also the label of the error counter in /metrics).
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": error_type(self.status),
            "param": self.param,
            "code": self.code,
        }});
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// The OpenAI field a hoa request field was given as.
fn param_of(field: &str) -> Option<&str> {
    match field {
        // resolve's memory check names all three: the size is what to change.
        "width" | "height" | "width/height" | "width/height/batch" => Some("size"),
        "batch" => Some("n"),
        "init_image" | "image" => Some("image"),
        "mask" => Some("mask"),
        "preview_every" => Some("partial_images"),
        // A stable unCLIP model needs an image to vary: the model was the wrong choice.
        "variation" => Some("model"),
        f if KNOWN.contains(&f) => Some(f),
        _ => None,
    }
}

/// A library error as the client sees it: a bad value is the request's fault (400, naming the
/// field), anything else the server's (500).
pub fn from_hoa(e: hoa::Error) -> ApiError {
    match &e {
        hoa::Error::InvalidOption { what, .. } if what == "variation" => ApiError::bad(
            param_of(what),
            format!("{e} (POST /v1/images/variations makes them)"),
        ),
        hoa::Error::InvalidOption { what, .. } => ApiError::bad(param_of(what), e.to_string()),
        hoa::Error::Config { field, .. } => ApiError::bad(param_of(field), e.to_string()),
        _ => ApiError::internal(e.to_string()),
    }
}

/// The body as JSON: malformed JSON, a non-object or an unknown field is a 400.
pub fn parse(body: &[u8]) -> Result<ImagesRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(None, format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = v else {
        return Err(ApiError::bad(None, "the body must be a JSON object"));
    };
    parse_map(map)
}

/// The fields of a JSON object or a form: an unknown one, or a value of the wrong type, is a
/// 400 naming it.
pub fn parse_map(mut map: serde_json::Map<String, Value>) -> Result<ImagesRequest, ApiError> {
    if let Some(k) = map
        .keys()
        .find(|k| !KNOWN.contains(&k.as_str()) && !IGNORED.contains(&k.as_str()))
    {
        return Err(ApiError::bad(
            Some(k),
            format!("unrecognized request argument supplied: {k}"),
        ));
    }
    map.retain(|k, _| !IGNORED.contains(&k.as_str()));
    // Field by field first, so that a type error names its field.
    for (k, v) in &map {
        serde_json::from_value::<ImagesRequest>(json!({ k: v }))
            .map_err(|e| ApiError::bad(Some(k), format!("{k}: {e}")))?;
    }
    serde_json::from_value(Value::Object(map)).map_err(|e| ApiError::bad(None, e.to_string()))
}

/// `WxH` as (width, height); `auto` (or nothing) leaves the model's size.
fn size(s: Option<&str>) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let Some(s) = s.filter(|s| *s != "auto") else {
        return Ok((None, None));
    };
    let bad = || {
        ApiError::bad(
            Some("size"),
            format!("size: expected WIDTHxHEIGHT (e.g. 512x512) or auto, got {s:?}"),
        )
    };
    let (w, h) = s.split_once('x').ok_or_else(bad)?;
    let w = w.trim().parse::<i64>().map_err(|_| bad())?;
    let h = h.trim().parse::<i64>().map_err(|_| bad())?;
    Ok((Some(w), Some(h)))
}

/// `quality` as a factor on the model's default number of steps (documented in the README):
/// fewer steps are faster and rougher, more are slower and cleaner.
fn steps_factor(q: Option<&str>) -> Result<Option<f64>, ApiError> {
    Ok(match q {
        None | Some("auto") | Some("medium") | Some("standard") => None,
        Some("low") => Some(0.5),
        Some("high") | Some("hd") => Some(2.0),
        Some(q) => {
            return Err(ApiError::bad(
                Some("quality"),
                format!("quality: expected low, medium, high, standard, hd or auto, got {q:?}"),
            ))
        }
    })
}

fn bad_if(cond: bool, param: &str, message: String) -> Result<(), ApiError> {
    match cond {
        true => Err(ApiError::bad(Some(param), message)),
        false => Ok(()),
    }
}

/// The call these fields make; what they leave out takes the model's default in `resolve`.
pub fn to_call(r: &ImagesRequest) -> Result<Call, ApiError> {
    let format = match r.response_format.as_deref() {
        None | Some("b64_json") => Format::B64Json,
        Some("url") => Format::Url,
        Some(f) => {
            return Err(ApiError::bad(
                Some("response_format"),
                format!("response_format: expected b64_json or url, got {f:?}"),
            ))
        }
    };
    let compression = r.output_compression.unwrap_or(100);
    bad_if(
        !(0..=100).contains(&compression),
        "output_compression",
        format!("output_compression: must be between 0 and 100, got {compression}"),
    )?;
    let output = match r.output_format.as_deref() {
        None | Some("png") => Output::Png,
        Some("jpeg") => Output::Jpeg(compression.max(1) as u8),
        Some(f) => {
            return Err(ApiError::bad(
                Some("output_format"),
                format!("output_format: hoa writes png or jpeg, got {f:?}"),
            ))
        }
    };
    let stream = r.stream == Some(true);
    bad_if(
        stream && format == Format::Url,
        "response_format",
        "response_format: a stream sends b64_json; leave response_format out".into(),
    )?;
    let partial = r.partial_images.unwrap_or(0);
    bad_if(
        !(0..=MAX_PARTIAL_IMAGES).contains(&partial),
        "partial_images",
        format!("partial_images: must be between 0 and {MAX_PARTIAL_IMAGES}, got {partial}"),
    )?;
    if let Some(n) = r.n {
        bad_if(
            !(1..=MAX_N).contains(&n),
            "n",
            format!("n: must be between 1 and {MAX_N}, got {n}"),
        )?;
    }
    let steps_factor = steps_factor(r.quality.as_deref())?;
    let (width, height) = size(r.size.as_deref())?;
    let req = Request {
        prompt: r.prompt.clone(),
        negative_prompt: r.negative_prompt.clone(),
        steps: r.steps,
        guidance: r.guidance,
        scheduler: r.scheduler.clone(),
        decoder: r.decoder.clone(),
        strength: r.strength,
        noise_level: r.noise_level,
        upsample: r.upsample,
        seed: r.seed,
        width,
        height,
        batch: r.n,
        origin: Origin::Json,
        ..Default::default()
    };
    Ok(Call {
        model: r.model.clone(),
        req,
        format,
        output,
        stream,
        partial_images: if stream { partial as usize } else { 0 },
        steps_factor,
        quality: r.quality.clone().unwrap_or_else(|| "auto".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_width_x_height_or_auto() {
        assert_eq!(size(Some("32x24")).unwrap(), (Some(32), Some(24)));
        assert_eq!(size(Some("auto")).unwrap(), (None, None));
        assert_eq!(size(None).unwrap(), (None, None));
        // A negative side parses; resolve refuses it, naming `size` through param_of.
        assert_eq!(size(Some("-8x8")).unwrap(), (Some(-8), Some(8)));
        for bad in ["32", "32x", "x24", "32*24", "32x24x8", ""] {
            let e = size(Some(bad)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("size"), "{bad:?}");
        }
    }

    #[test]
    fn hoa_fields_map_to_the_openai_field_the_client_sent() {
        assert_eq!(param_of("width"), Some("size"));
        assert_eq!(param_of("height"), Some("size"));
        assert_eq!(param_of("batch"), Some("n"));
        assert_eq!(param_of("width/height/batch"), Some("size"));
        assert_eq!(param_of("width/height"), Some("size"));
        assert_eq!(param_of("init_image"), Some("image"));
        assert_eq!(param_of("steps"), Some("steps"));
        assert_eq!(param_of("noise_level"), Some("noise_level"));
        assert_eq!(param_of("variation"), Some("model"));
        assert_eq!(param_of("the request"), None);
    }

    #[test]
    fn openai_fields_hoa_does_not_act_on_are_accepted_others_refused() {
        let ok = parse(br#"{"prompt": "a", "style": "vivid", "user": "u"}"#);
        assert_eq!(ok.unwrap().prompt.as_deref(), Some("a"));
        let e = parse(br#"{"prompt": "a", "stpes": 2}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stpes"));
        let e = parse(br#"{"prompt": "a", "seed": -1}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("seed"));
        assert_eq!(parse(b"[1]").unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    fn call(json: &str) -> Result<Call, ApiError> {
        to_call(&parse(json.as_bytes()).unwrap())
    }

    #[test]
    fn quality_scales_the_default_steps_and_bad_values_name_their_field() {
        assert_eq!(
            call(r#"{"quality": "low"}"#).unwrap().steps_factor,
            Some(0.5)
        );
        assert_eq!(
            call(r#"{"quality": "hd"}"#).unwrap().steps_factor,
            Some(2.0)
        );
        assert_eq!(
            call(r#"{"quality": "standard"}"#).unwrap().steps_factor,
            None
        );
        for (json, param) in [
            (r#"{"quality": "ultra"}"#, "quality"),
            (r#"{"partial_images": 4, "stream": true}"#, "partial_images"),
            (r#"{"partial_images": -1}"#, "partial_images"),
            (
                r#"{"stream": true, "response_format": "url"}"#,
                "response_format",
            ),
            (r#"{"response_format": "jpeg"}"#, "response_format"),
            (r#"{"output_format": "webp"}"#, "output_format"),
            (
                r#"{"output_format": "jpeg", "output_compression": 101}"#,
                "output_compression",
            ),
            (r#"{"n": 0}"#, "n"),
        ] {
            let e = call(json).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{json}: {}", e.message);
        }
        let c = call(r#"{"stream": true, "partial_images": 2, "response_format": "b64_json"}"#);
        assert_eq!(c.unwrap().partial_images, 2);
        // Previews are for streams only.
        assert_eq!(call(r#"{"partial_images": 2}"#).unwrap().partial_images, 0);
        assert_eq!(
            call(r#"{"response_format": "url"}"#).unwrap().format,
            Format::Url
        );
    }
}
