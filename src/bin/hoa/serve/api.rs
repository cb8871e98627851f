//! OpenAI's Images API shapes (`POST /v1/images/generations`, its error object) and their
//! mapping onto hoa's [`Request`]; every default and check stays in `hoa::resolve`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hoa::request::{Origin, Request};
use serde::Deserialize;
use serde_json::{json, Value};

/// Most images one request may ask for (OpenAI's own bound on `n`).
pub const MAX_N: i64 = 10;

/// The body of `POST /v1/images/generations`: OpenAI's fields, then hoa's own (sent with the
/// client's `extra_body`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ImagesRequest {
    pub prompt: Option<String>,
    pub model: Option<String>,
    pub n: Option<i64>,
    pub size: Option<String>,
    pub response_format: Option<String>,
    pub output_format: Option<String>,
    pub stream: Option<bool>,
    pub negative_prompt: Option<String>,
    pub seed: Option<u64>,
    pub steps: Option<i64>,
    pub guidance: Option<f64>,
    pub scheduler: Option<String>,
}

/// Fields [`ImagesRequest`] reads.
const KNOWN: [&str; 12] = [
    "prompt",
    "model",
    "n",
    "size",
    "response_format",
    "output_format",
    "stream",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "scheduler",
];

/// OpenAI's documented fields hoa accepts and does not act on yet, so that clients that send
/// them by default keep working.
const IGNORED: [&str; 7] = [
    "quality",
    "style",
    "user",
    "background",
    "moderation",
    "output_compression",
    "partial_images",
];

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

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            429 => "rate_limit_error",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind(),
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
        "width" | "height" => Some("size"),
        "batch" => Some("n"),
        f if KNOWN.contains(&f) => Some(f),
        _ => None,
    }
}

/// A library error as the client sees it: a bad value is the request's fault (400, naming the
/// field), anything else the server's (500).
pub fn from_hoa(e: hoa::Error) -> ApiError {
    match &e {
        hoa::Error::InvalidOption { what, .. } => ApiError::bad(param_of(what), e.to_string()),
        hoa::Error::Config { field, .. } => ApiError::bad(param_of(field), e.to_string()),
        _ => ApiError::internal(e.to_string()),
    }
}

/// The body as JSON: malformed JSON, a non-object or an unknown field is a 400.
pub fn parse(body: &[u8]) -> Result<ImagesRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(None, format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut map) = v else {
        return Err(ApiError::bad(None, "the body must be a JSON object"));
    };
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

/// The hoa request these fields make; what they leave out takes the model's default.
pub fn to_request(r: &ImagesRequest) -> Result<Request, ApiError> {
    match r.response_format.as_deref() {
        None | Some("b64_json") => {}
        Some("url") => {
            return Err(ApiError::bad(
                Some("response_format"),
                "response_format: url is not supported yet; use b64_json",
            ))
        }
        Some(f) => {
            return Err(ApiError::bad(
                Some("response_format"),
                format!("response_format: expected b64_json or url, got {f:?}"),
            ))
        }
    }
    if let Some(f) = r.output_format.as_deref().filter(|f| *f != "png") {
        return Err(ApiError::bad(
            Some("output_format"),
            format!("output_format: hoa writes png only, got {f:?}"),
        ));
    }
    if r.stream == Some(true) {
        return Err(ApiError::bad(
            Some("stream"),
            "stream: streaming is not supported yet",
        ));
    }
    if let Some(n) = r.n.filter(|n| !(1..=MAX_N).contains(n)) {
        return Err(ApiError::bad(
            Some("n"),
            format!("n: must be between 1 and {MAX_N}, got {n}"),
        ));
    }
    let (width, height) = size(r.size.as_deref())?;
    Ok(Request {
        prompt: r.prompt.clone(),
        negative_prompt: r.negative_prompt.clone(),
        steps: r.steps,
        guidance: r.guidance,
        scheduler: r.scheduler.clone(),
        seed: r.seed,
        width,
        height,
        batch: r.n,
        origin: Origin::Json,
        ..Default::default()
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
        assert_eq!(param_of("steps"), Some("steps"));
        assert_eq!(param_of("the request"), None);
    }

    #[test]
    fn openai_fields_hoa_does_not_act_on_are_accepted_others_refused() {
        let ok = parse(br#"{"prompt": "a", "quality": "hd", "style": "vivid", "user": "u"}"#);
        assert_eq!(ok.unwrap().prompt.as_deref(), Some("a"));
        let e = parse(br#"{"prompt": "a", "stpes": 2}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stpes"));
        let e = parse(br#"{"prompt": "a", "seed": -1}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("seed"));
        assert_eq!(parse(b"[1]").unwrap_err().status, StatusCode::BAD_REQUEST);
    }
}
