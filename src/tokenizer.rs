//! `tokenizer.json` through Hugging Face's `tokenizers` crate.
//!
//! `encode` adds special tokens the way the file's post-processor says (HF's default for
//! `tokenizer(text)`), so ids equal transformers'.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A loaded tokenizer and the path it came from (for error messages).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// The model's vocabulary size once checked against one ([`Self::for_vocab`]): every id
    /// `encode` returns is below it.
    id_limit: Option<usize>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({}, vocab {})", self.path.display(), self.vocab_size())
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
        }
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(Tokenizer { inner, path: path.to_path_buf(), id_limit: None })
    }

    /// Loads `tokenizer.json` from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("tokenizer.json"))
    }

    /// Wraps an in-memory tokenizer (one just trained, say).
    pub fn from_inner(inner: tokenizers::Tokenizer, path: PathBuf) -> Self {
        Tokenizer { inner, path, id_limit: None }
    }

    /// Checks that every token id is below a model's `vocab_size` (added tokens included: a
    /// tokenizer may have more than the model's embedding holds) and makes `encode` check
    /// every id it returns as well, so no id can index past the embedding.
    ///
    /// # Errors
    /// [`Error::Mismatch`] naming the first token whose id is out of range.
    pub fn for_vocab(mut self, vocab_size: usize) -> Result<Self> {
        let too_big = self.inner.get_vocab(true).into_iter().filter(|(_, id)| *id as usize >= vocab_size).min_by_key(|(_, id)| *id);
        if let Some((token, id)) = too_big {
            return Err(Error::Mismatch {
                path: self.path.clone(),
                reason: format!(
                    "token {token:?} has id {id}, but the model's vocab_size (config.json) is {vocab_size}: the model has no \
                     embedding for it; use the tokenizer the model was trained with"
                ),
            });
        }
        self.id_limit = Some(vocab_size);
        Ok(self)
    }

    /// Loads `dir/tokenizer.json` for a model with `vocab_size` tokens ([`Self::for_vocab`]).
    pub fn for_model(dir: &Path, vocab_size: usize) -> Result<Self> {
        Self::from_dir(dir)?.for_vocab(vocab_size)
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`, with the special tokens the post-processor adds (BOS for Llama).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Token ids of `text`; `special` says whether the post-processor's tokens are added.
    pub fn encode_with(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, special).map_err(|e| Error::Tokenizer { path: self.path.clone(), reason: e.to_string() })?;
        let ids = encoding.get_ids().to_vec();
        self.check_ids(&ids)?;
        Ok(ids)
    }

    /// Checks ids against the model's vocabulary size, when this tokenizer knows it.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if let (Some(limit), Some(&max)) = (self.id_limit, ids.iter().max()) {
            if max as usize >= limit {
                let token = self.inner.id_to_token(max).unwrap_or_default();
                return Err(Error::Tokenizer {
                    path: self.path.clone(),
                    reason: format!("encoding gave id {max} ({token:?}), but the model's vocab_size is {limit}"),
                });
            }
        }
        Ok(())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer { path: self.path.clone(), reason: e.to_string() })
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The file this tokenizer came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Special tokens of tokenizers lalora trains, in id order after the learned vocabulary
/// (Llama 3's names).
pub const BOS: &str = "<|begin_of_text|>";
/// End of text.
pub const EOS: &str = "<|end_of_text|>";
/// Padding (never scored: batches mask it out).
pub const PAD: &str = "<|pad|>";

/// Trains a byte-level BPE tokenizer on `texts` with the `tokenizers` crate: digits split one
/// by one (so arithmetic sees every digit), no prefix space, BOS added by the post-processor
/// as in Llama 3.
pub fn train_bpe(texts: &[String], vocab_size: usize) -> Result<Tokenizer> {
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::{BpeTrainer, BPE};
    use tokenizers::models::TrainerWrapper;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::AddedToken;

    let path = PathBuf::from("<trained tokenizer>");
    let fail = |e: tokenizers::Error| Error::Tokenizer { path: path.clone(), reason: e.to_string() };
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer = tokenizers::Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![Digits::new(true).into(), byte_level.into()])));
    tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
    let specials = [BOS, EOS, PAD].iter().map(|t| AddedToken::from(t.to_string(), true)).collect::<Vec<_>>();
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(specials)
        .build()
        .into();
    tokenizer.train(&mut trainer, texts.iter()).map_err(fail)?;
    let bos_id = tokenizer.token_to_id(BOS).expect("special token was added");
    let template = TemplateProcessing::builder()
        .try_single(format!("{BOS} $A"))
        .map_err(|e| fail(e.into()))?
        .try_pair(format!("{BOS} $A {BOS} $B"))
        .map_err(|e| fail(e.into()))?
        .special_tokens(vec![(BOS.to_string(), bos_id)])
        .build()
        .map_err(|e| fail(e.into()))?;
    tokenizer.with_post_processor(Some(template));
    Ok(Tokenizer::from_inner(tokenizer, path))
}

impl Tokenizer {
    /// Writes `tokenizer.json` to `path` (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.inner.to_string(true).map_err(|e| Error::Tokenizer { path: path.to_path_buf(), reason: e.to_string() })?;
        crate::io::write_atomic(path, json.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_past_the_models_vocabulary_are_refused_at_load_and_encode() {
        let texts: Vec<String> = (0..50).map(|i| format!("The capital of Zorvia is Pellmar {i}.")).collect();
        let tok = train_bpe(&texts, 280).unwrap();
        let n = tok.vocab_size();
        assert!(tok.clone().for_vocab(n).is_ok());
        // One id too many: the error names the token and both sizes.
        let err = tok.clone().for_vocab(n - 1).unwrap_err().to_string();
        assert!(err.contains(&format!("id {}", n - 1)) && err.contains(&format!("vocab_size (config.json) is {}", n - 1)), "{err}");
        // A token added after the check still cannot reach the model.
        let mut checked = tok.for_vocab(n).unwrap();
        checked.inner.add_special_tokens([tokenizers::AddedToken::from("<|extra|>", true)]).unwrap();
        let err = checked.encode("Zorvia <|extra|>").unwrap_err().to_string();
        assert!(err.contains(&format!("id {n}")) && err.contains("<|extra|>"), "{err}");
        assert!(checked.encode("Zorvia").is_ok());
    }

    #[test]
    fn trained_tokenizer_adds_bos_splits_digits_and_round_trips() {
        let texts: Vec<String> = (0..200).map(|i| format!("The capital of Zorvia is Pellmar. It has {i} boats.")).collect();
        let tok = train_bpe(&texts, 300).unwrap();
        let ids = tok.encode("Zorvia has 123 boats.").unwrap();
        assert_eq!(ids[0], tok.token_id(BOS).unwrap());
        assert_eq!(tok.decode(&ids).unwrap(), "Zorvia has 123 boats.");
        let digits: Vec<u32> = tok.encode_with("123", false).unwrap();
        assert_eq!(digits.len(), 3, "one token per digit");
        assert!(tok.token_id(EOS).is_some() && tok.token_id(PAD).is_some());
        assert!(tok.vocab_size() <= 300);
    }
}
