//! The model's prompt rewriter (issue 31): a transformers `T5ForConditionalGeneration` folder
//! with its own `tokenizer.json`, named by `hoa.json` `rewriter`, that turns what a person types
//! into the descriptive caption the image model was trained on (DALL-E 3's rewrite, as a small
//! model). [`crate::resolve`] decides whether it runs (a rewriter named, upsampling on); [`apply`]
//! runs it on the GPU and hands the rewrite to the [`Resolved`]. Any small T5 rewriter works the
//! same: its `generation_config.json` picks greedy or beam search, `num_beams` and the length.

use crate::error::{Error, Result};
use crate::gpu::{Context, DType};
use crate::model_files::ModelFiles;
use crate::models::t5_decoder::T5ForConditionalGeneration;
use crate::resolve::Resolved;
use crate::tokenizer::{Tokenizer, KNOWN_WORDS_LISTED};

/// The longest prompt the rewriter reads, in its tokens (the encoder's attention is quadratic
/// in it; a caption is under 60).
pub const MAX_PROMPT_TOKENS: usize = 512;

/// A loaded rewriter folder.
pub struct Rewriter {
    /// The folder, relative to the model folder (`hoa.json` `rewriter`).
    pub dir: String,
    pub model: T5ForConditionalGeneration,
    tokenizer: tokenizers::Tokenizer,
}

/// `e` with the config file it names put inside `dir` (the parsers name the file as a text
/// encoder's, `text_encoder/config.json`, or bare, `generation_config.json`).
fn in_dir(dir: &str, e: Error) -> Error {
    let rename = |file: &str| format!("{dir}/{}", file.rsplit('/').next().unwrap_or(file));
    let config = |file: &str| file.ends_with("config.json") && !file.contains(' ');
    match e {
        Error::Config { file, field, why } if config(&file) => Error::Config {
            file: rename(&file),
            field,
            why,
        },
        Error::Checkpoint(m) => match m.split_once(": ") {
            Some((file, rest)) if config(file) => {
                Error::Checkpoint(format!("{}: {rest}", rename(file)))
            }
            _ => Error::Checkpoint(m),
        },
        e => e,
    }
}

impl Rewriter {
    /// Loads `dir` of `files`: config.json, the weights, generation_config.json (optional:
    /// transformers' defaults) and tokenizer.json. Always f32: 1.5 M parameters, and exact
    /// against transformers.
    pub fn load(ctx: &Context, files: &dyn ModelFiles, dir: &str) -> Result<Rewriter> {
        let model = T5ForConditionalGeneration::from_files(ctx, files, dir, DType::F32)
            .map_err(|e| in_dir(dir, e))?;
        let path = format!("{dir}/tokenizer.json");
        let json = files.read(&path)?.ok_or_else(|| {
            Error::config(
                "hoa.json",
                "rewriter",
                format!(
                    "names {dir}/, which has no tokenizer.json ({}/{path}); the rewriter needs \
                     its fast-tokenizer file (`tokenizer.save_pretrained`)",
                    files.describe()
                ),
            )
        })?;
        let tokenizer = tokenizers::Tokenizer::from_bytes(&json)
            .map_err(|e| Error::Checkpoint(format!("{}/{path}: {e}", files.describe())))?;
        let (tv, mv) = (tokenizer.get_vocab_size(true), model.config.vocab_size);
        if tv > mv {
            return Err(Error::Checkpoint(format!(
                "{}/{path}: {tv} tokens, more than the {mv} of {dir}/config.json `vocab_size`",
                files.describe()
            )));
        }
        Ok(Rewriter {
            dir: dir.to_string(),
            model,
            tokenizer,
        })
    }

    /// The token ids of `text` as transformers' tokenizer gives them (its post-processor's
    /// special tokens included: `</s>` last for T5).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::invalid("prompt", format!("the rewriter's tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `ids` as text, special tokens skipped (transformers' `decode(skip_special_tokens=True)`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| Error::Checkpoint(format!("{}/tokenizer.json: {e}", self.dir)))
    }

    /// The rewrite of `prompt`: encode, `generate` with the folder's generation config, decode.
    pub async fn rewrite(&self, ctx: &Context, prompt: &str) -> Result<String> {
        let ids = self.encode(prompt)?;
        if ids.len() > MAX_PROMPT_TOKENS {
            return Err(Error::invalid(
                "prompt",
                format!(
                    "is {} tokens for the prompt rewriter, which reads at most \
                     {MAX_PROMPT_TOKENS}; shorten it or turn upsampling off",
                    ids.len()
                ),
            ));
        }
        let out = self
            .model
            .generate_async(ctx, &[ids], &self.model.generation_config)
            .await?;
        let seq = out.first().map(Vec::as_slice).unwrap_or_default();
        self.decode(seq)
    }
}

/// Runs `rewriter` on `r`'s prompt when resolve chose the model's rewrite
/// ([`Resolved::pending_rewrite`]); nothing otherwise. Every front end calls it between
/// `resolve` and `Pipeline::generate` (the rewrite then is what the encoder reads, what the CLI
/// prints, the PNG's `Upsampled prompt`, and `hoa serve`'s `revised_prompt`). Words of the
/// prompt as typed that the image model's `tokenizer` does not know become a warning naming
/// them and the rewrite (the rewriter maps any request into the model's world, so the
/// encoder's own warning would never fire).
pub async fn apply(
    r: &mut Resolved,
    ctx: &Context,
    rewriter: Option<&Rewriter>,
    tokenizer: Option<&Tokenizer>,
) -> Result<()> {
    if !r.pending_rewrite {
        return Ok(());
    }
    let rw = rewriter.ok_or_else(|| {
        Error::config(
            "hoa.json",
            "rewriter",
            "names a rewriter but the pipeline was loaded without it",
        )
    })?;
    let text = rw.rewrite(ctx, &r.prompt).await?;
    if let Some(tok) = tokenizer {
        let words = tok.unknown_words(&r.prompt)?;
        if !words.is_empty() {
            let quoted: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
            let mut msg = format!(
                "the prompt has words the image model does not know: {}; the rewriter made it \
                 \"{text}\" (--no-upsample to use it as typed)",
                quoted.join(", ")
            );
            if let Some(known) = tok.known_words(KNOWN_WORDS_LISTED) {
                msg += &format!("; its vocabulary: {}", known.join(" "));
            }
            r.warnings.push(msg);
        }
    }
    r.set_rewrite(text);
    Ok(())
}
