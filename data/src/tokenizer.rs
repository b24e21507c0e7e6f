//! Byte-level BPE with Huginn's special tokens (reference §4.1), trained with the `tokenizers` crate,
//! or any existing `tokenizer.json` that has the tokens Muninn needs.

use std::path::Path;

use anyhow::{anyhow, ensure, Context, Result};
use sha2::{Digest, Sha256};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

pub const BOS: &str = "<|begin_text|>";
pub const EOS: &str = "<|end_text|>";
pub const PAD: &str = "<|pad|>";

/// Huginn's special tokens, in the order of its released tokenizer (bos, eos, …, end_turn, pad at
/// offsets 0, 1, 4, 5 of the 32 specials at the top of the vocabulary), padded with reserved slots.
pub fn special_tokens() -> Vec<String> {
    let mut v: Vec<String> = [
        BOS,
        EOS,
        "<|begin_header|>",
        "<|end_header|>",
        "<|end_turn|>",
        PAD,
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend((0..10).map(|i| format!("<|c_{i}|>")));
    let reserved = 32 - v.len();
    v.extend((0..reserved).map(|i| format!("<|reserved_{i}|>")));
    v
}

/// The ids Muninn needs, looked up by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
}

/// A tokenizer plus what Muninn derives from it.
pub struct TokenizerInfo {
    pub tokenizer: Tokenizer,
    pub specials: SpecialIds,
    /// Number of ids, added tokens included; every id is below this.
    pub vocab_size: usize,
    /// sha256 of the tokenizer's canonical JSON: shards record it, and the loader checks it.
    pub sha256: String,
}

impl TokenizerInfo {
    pub fn new(tokenizer: Tokenizer, origin: &str) -> Result<Self> {
        let id = |name: &str| {
            tokenizer.token_to_id(name).ok_or_else(|| {
                anyhow!(
                    "tokenizer {origin} has no `{name}` token; Muninn needs {BOS}, {EOS} and {PAD}"
                )
            })
        };
        let specials = SpecialIds {
            bos: id(BOS)?,
            eos: id(EOS)?,
            pad: id(PAD)?,
        };
        let canonical = tokenizer
            .to_string(false)
            .map_err(|e| anyhow!("serialising tokenizer {origin}: {e}"))?;
        let sha256 = format!("{:x}", Sha256::digest(canonical.as_bytes()));
        let max_id = tokenizer
            .get_vocab(true)
            .values()
            .copied()
            .max()
            .unwrap_or(0) as usize;
        let vocab_size = tokenizer.get_vocab_size(true).max(max_id + 1);
        Ok(TokenizerInfo {
            tokenizer,
            specials,
            vocab_size,
            sha256,
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("reading tokenizer {}: {e}", path.display()))?;
        Self::new(tokenizer, &path.display().to_string())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        self.tokenizer
            .save(&tmp, true)
            .map_err(|e| anyhow!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `<|begin_text|>` followed by the text's tokens: how every command reads a text prompt.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<i64>> {
        let mut ids = vec![i64::from(self.specials.bos)];
        ids.extend(self.encode(text)?.into_iter().map(i64::from));
        Ok(ids)
    }

    /// Token ids back to text, special tokens left out.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
        self.tokenizer
            .decode(&ids, true)
            .map_err(|e| anyhow!("decoding tokens: {e}"))
    }
}

/// Trains a byte-level BPE of `vocab_size` ids on `texts`; the 32 special tokens take the top ids.
pub fn train<'a>(
    texts: impl Iterator<Item = &'a str> + Send,
    vocab_size: usize,
    progress: bool,
) -> Result<TokenizerInfo> {
    let specials = special_tokens();
    let min = 256 + specials.len() + 1;
    ensure!(
        vocab_size >= min,
        "--vocab-size {vocab_size} is too small: byte-level BPE needs at least {min}"
    );
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size - specials.len())
        .min_frequency(2)
        .show_progress(progress)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(byte_level));
    tokenizer.with_decoder(Some(byte_level));
    let mut inner = tokenizer.into_inner();
    inner
        .train(&mut trainer, texts)
        .map_err(|e| anyhow!("training BPE: {e}"))?;
    let mut tokenizer = Tokenizer::from(inner);
    let added: Vec<AddedToken> = specials
        .iter()
        .map(|s| AddedToken::from(s.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&added);
    let (bos, eos) = (
        tokenizer.token_to_id(BOS).expect("added"),
        tokenizer.token_to_id(EOS).expect("added"),
    );
    // Like Huginn's tokenizer: encoding with special tokens wraps a document as bos … eos.
    let template = TemplateProcessing::builder()
        .try_single(format!("{BOS} $A {EOS}"))
        .map_err(|e| anyhow!("post-processor template: {e}"))?
        .special_tokens(vec![(BOS, bos), (EOS, eos)])
        .build()
        .map_err(|e| anyhow!("post-processor: {e}"))?;
    tokenizer.with_post_processor(Some(template));
    TokenizerInfo::new(tokenizer, "(trained)")
}
