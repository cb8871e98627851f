//! API keys (`--api-key-file`, one per line): `Authorization: Bearer KEY` on every route but
//! `/healthz`, `/readyz` and the `url` images (whose unguessable names are the capability, as
//! OpenAI's signed links are), compared in constant time; otherwise 401 `invalid_api_key`.

use super::api::ApiError;
use anyhow::{bail, Context as _};
use axum::http::{header, HeaderMap, StatusCode};
use std::path::Path;
use subtle::ConstantTimeEq as _;

pub struct Keys(Vec<Vec<u8>>);

/// Routes open without a key.
pub fn open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz") || path.starts_with("/v1/files/images/")
}

impl Keys {
    /// The file's keys: one per line, blank lines and `#` comments skipped.
    pub fn read(path: &Path) -> anyhow::Result<Keys> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--api-key-file {}", path.display()))?;
        let keys: Vec<Vec<u8>> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.as_bytes().to_vec())
            .collect();
        if keys.is_empty() {
            bail!(
                "--api-key-file {}: holds no key (one per line)",
                path.display()
            );
        }
        Ok(Keys(keys))
    }

    /// Whether `key` is one of ours: every key is compared, each in constant time.
    fn knows(&self, key: &[u8]) -> bool {
        let hit = self.0.iter().fold(subtle::Choice::from(0), |acc, k| {
            acc | k.as_slice().ct_eq(key)
        });
        hit.into()
    }

    /// Checks a request's `Authorization: Bearer` header.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let unauthorized = |message: &str| ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: Some("invalid_api_key"),
            ..ApiError::bad(None, message)
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "You didn't provide an API key: send `Authorization: Bearer KEY` (a key from the \
                 server's --api-key-file)",
            ));
        };
        let key = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .unwrap_or_default();
        match self.knows(key.trim_ascii()) {
            true => Ok(()),
            false => Err(unauthorized("Incorrect API key provided")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_a_listed_bearer_key_passes() {
        let keys = Keys(vec![b"sk-one".to_vec(), b"sk-two".to_vec()]);
        assert!(keys.check(&headers(Some("Bearer sk-one"))).is_ok());
        assert!(keys.check(&headers(Some("Bearer sk-two"))).is_ok());
        for bad in [
            None,
            Some("Bearer sk-on"),
            Some("Bearer sk-one2"),
            Some("sk-one"),
            Some("Bearer "),
            Some("Basic sk-one"),
        ] {
            let e = keys.check(&headers(bad)).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::UNAUTHORIZED, Some("invalid_api_key"))
            );
        }
    }

    #[test]
    fn health_and_images_stay_open() {
        assert!(open("/healthz") && open("/readyz") && open("/v1/files/images/x.png"));
        assert!(!open("/metrics") && !open("/v1/models") && !open("/v1/images/generations"));
    }
}
