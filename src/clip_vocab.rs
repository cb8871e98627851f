//! CLIP's BPE tokenizer built into hoa (SD 1.x's and 2.x's, which share it), so single-file
//! checkpoints work offline: the vocabulary and merges of OpenAI's `bpe_simple_vocab_16e6.txt.gz`
//! (shipped in `src/clip_vocab/`, MIT, see its LICENSE) turned into transformers'
//! `CLIPTokenizer` files exactly as CLIP's `SimpleTokenizer` builds them: the 256 byte
//! characters, the same with `</w>`, one token per merge (the first 49152 - 256 - 2), then
//! `<|startoftext|>` and `<|endoftext|>` (49408 ids).

use crate::error::{Error, Result};
use std::io::Read;

const BPE_GZ: &[u8] = include_bytes!("clip_vocab/bpe_simple_vocab_16e6.txt.gz");

/// Merges CLIP uses: 49152 - 256 - 2 (the file has more).
const MERGES: usize = 49152 - 256 - 2;

/// GPT-2's / CLIP's `bytes_to_unicode`: each byte as a printable character, in CLIP's order.
fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut bytes: Vec<u32> = (0..256).filter(|&b| printable(b)).collect();
    let mut chars = bytes.clone();
    for (n, b) in (0..256).filter(|&b| !printable(b)).enumerate() {
        bytes.push(b);
        chars.push(256 + n as u32);
    }
    chars.into_iter().filter_map(char::from_u32).collect()
}

/// `vocab.json` and `merges.txt` as transformers writes them for CLIP.
pub fn vocab_and_merges() -> Result<(Vec<u8>, Vec<u8>)> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(BPE_GZ)
        .read_to_string(&mut text)
        .map_err(|e| Error::Checkpoint(format!("hoa's CLIP vocabulary: {e}")))?;
    let merges: Vec<&str> = text.lines().skip(1).take(MERGES).collect();
    let mut vocab: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
    vocab.extend(byte_chars().iter().map(|c| format!("{c}</w>")));
    vocab.extend(merges.iter().map(|m| m.replace(' ', "")));
    vocab.extend(["<|startoftext|>".to_string(), "<|endoftext|>".to_string()]);
    let map: serde_json::Map<String, serde_json::Value> = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i.into()))
        .collect();
    let vocab_json = serde_json::to_vec(&map).map_err(|e| Error::Checkpoint(e.to_string()))?;
    let merges_txt = format!("#version: 0.2\n{}\n", merges.join("\n")).into_bytes();
    Ok((vocab_json, merges_txt))
}

/// The `tokenizer.json` of CLIP's tokenizer (see [`crate::tokenizer::clip_tokenizer_json`]).
pub fn tokenizer_json() -> Result<Vec<u8>> {
    let (vocab, merges) = vocab_and_merges()?;
    crate::tokenizer::clip_tokenizer_json(&vocab, &merges)
}

/// SD 2.x's: padded with `!` (id 0), which transformers registers as a special token, so a
/// typed `!` is split off on its own (`"!!!"` is three ids 0, not `!!!</w>`), as in diffusers.
pub fn tokenizer_json_pad_bang() -> Result<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(&tokenizer_json()?)
        .map_err(|e| Error::Checkpoint(format!("hoa's CLIP tokenizer: {e}")))?;
    if let Some(added) = v["added_tokens"].as_array_mut() {
        added.push(
            serde_json::json!({"id": 0, "content": "!", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}),
        );
    }
    serde_json::to_vec(&v).map_err(|e| Error::Checkpoint(format!("hoa's CLIP tokenizer: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_vocabulary_has_clips_49408_ids_and_special_tokens_last() {
        let (vocab, merges) = super::vocab_and_merges().unwrap();
        let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&vocab).unwrap();
        assert_eq!(v.len(), 49408);
        assert_eq!(v["<|startoftext|>"], 49406);
        assert_eq!(v["<|endoftext|>"], 49407);
        assert_eq!(v["!"], 0);
        assert_eq!(v["a</w>"], 320);
        let text = String::from_utf8(merges).unwrap();
        assert_eq!(text.lines().count(), 1 + super::MERGES);
    }
}
