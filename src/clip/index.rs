//! `hoa clip index`'s file: the normalized image embeddings of a folder as one safetensors
//! tensor `image_embeds` [n, dim], with the file names (a JSON list, in row order) and the
//! model in the header's metadata, so any safetensors reader can use it.

use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::HashMap;

/// The `format` metadata value that marks an index.
pub const FORMAT: &str = "hoa-clip-index-1";

#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingIndex {
    /// The model folder that embedded the images (a query must use the same model).
    pub model: String,
    pub names: Vec<String>,
    pub dim: usize,
    /// [names.len(), dim], each row L2-normalized.
    pub embeds: Vec<f32>,
}

impl EmbeddingIndex {
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let bytes: Vec<u8> = self.embeds.iter().flat_map(|v| v.to_le_bytes()).collect();
        let err = |e: safetensors::SafeTensorError| Error::Checkpoint(format!("index: {e}"));
        let view =
            TensorView::new(Dtype::F32, vec![self.names.len(), self.dim], &bytes).map_err(err)?;
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("model".to_string(), self.model.clone()),
            (
                "names".to_string(),
                serde_json::to_string(&self.names).unwrap_or_default(),
            ),
        ]);
        safetensors::serialize([("image_embeds", view)], Some(meta)).map_err(err)
    }

    /// Reads an index; `what` names the file in errors.
    pub fn from_safetensors(bytes: &[u8], what: &str) -> Result<EmbeddingIndex> {
        let bad =
            |why: String| Error::invalid(what, format!("{why} (write one with `hoa clip index`)"));
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let m = meta.metadata().clone().unwrap_or_default();
        if m.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!(
                "not a hoa CLIP index (no `format: {FORMAT}` metadata)"
            )));
        }
        let names: Vec<String> = m
            .get("names")
            .and_then(|n| serde_json::from_str(n).ok())
            .ok_or_else(|| bad("its `names` metadata is not a JSON list".into()))?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let t = st
            .tensor("image_embeds")
            .map_err(|_| bad("no `image_embeds` tensor".into()))?;
        let (shape, dtype) = (t.shape(), t.dtype());
        if dtype != Dtype::F32 || shape.len() != 2 || shape[0] != names.len() {
            return Err(bad(format!(
                "`image_embeds` is {dtype:?} {shape:?}; expected F32 [{}, dim]",
                names.len()
            )));
        }
        Ok(EmbeddingIndex {
            model: m.get("model").cloned().unwrap_or_default(),
            dim: shape[1],
            embeds: t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            names,
        })
    }

    /// The `k` entries most similar to the normalized `query`: (row, cosine), best first.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        let mut scored: Vec<(usize, f32)> = self
            .embeds
            .chunks_exact(self.dim.max(1))
            .map(|row| row.iter().zip(query).map(|(a, b)| a * b).sum::<f32>())
            .enumerate()
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        scored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ranks() {
        let idx = EmbeddingIndex {
            model: "m".into(),
            names: vec!["a.png".into(), "b.png".into(), "c.png".into()],
            dim: 2,
            embeds: vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8],
        };
        let back = EmbeddingIndex::from_safetensors(&idx.to_safetensors().unwrap(), "f").unwrap();
        assert_eq!(back, idx);
        let top = idx.search(&[0.0, 1.0], 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
        let e = EmbeddingIndex::from_safetensors(b"not a file at all", "x.st").unwrap_err();
        assert!(
            e.to_string().starts_with("x.st: not a safetensors file"),
            "{e}"
        );
    }
}
