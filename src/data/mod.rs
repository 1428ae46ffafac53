//! Data: records from JSONL or parquet files, tokenised sequences, and padded batches.

mod batch;
mod fields;
mod jsonl;
mod loader;
#[cfg(feature = "parquet")]
mod parquet;

pub use batch::{Batch, Sequence};
pub use fields::{FieldMap, RECORD_FIELDS};
pub use jsonl::{is_parquet, read_records, read_records_with, ChatMessage, Record};
pub use loader::{permutation, DataPosition, Shuffler};

use std::path::Path;

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// How records become language-modelling sequences.
#[derive(Debug, Default, Clone, Copy)]
pub struct LmOptions<'a> {
    /// Tokens kept from the start of each sequence.
    pub max_len: usize,
    /// A token appended to every completion (so a fine-tuned model learns to stop).
    pub eos: Option<u32>,
    /// Columns renamed before records are read.
    pub fields: Option<&'a FieldMap>,
    /// The model's chat template, for `messages` records.
    pub chat: Option<&'a ChatTemplate>,
}

/// Tokenises the language-modelling records of a file (`text`, or `prompt` + `completion`,
/// whose loss covers the completion only), keeping the first `max_len` tokens of each. With
/// `eos`, that token ends every completion (so a fine-tuned model learns to stop); plain text
/// is left as it is, to score exactly as transformers does. Other record kinds are an error
/// naming the file and line.
pub fn lm_sequences(path: &Path, tokenizer: &Tokenizer, max_len: usize) -> Result<Vec<Sequence>> {
    lm_sequences_with_eos(path, tokenizer, max_len, None)
}

/// [`lm_sequences`] with an end-of-sequence token after each completion.
pub fn lm_sequences_with_eos(path: &Path, tokenizer: &Tokenizer, max_len: usize, eos: Option<u32>) -> Result<Vec<Sequence>> {
    lm_sequences_with(path, tokenizer, &LmOptions { max_len, eos, ..Default::default() })
}

/// Tokenises the language-modelling records of a JSONL or parquet file: `text`, `prompt` +
/// `completion` (loss on the completion), and, with a chat template, `messages` (loss on the
/// assistant turns; the template's own end-of-turn token ends each, `eos` is not added).
pub fn lm_sequences_with(path: &Path, tokenizer: &Tokenizer, options: &LmOptions<'_>) -> Result<Vec<Sequence>> {
    let (max_len, eos) = (options.max_len, options.eos);
    let records = read_records_with(path, options.fields.unwrap_or(&FieldMap::none()))?;
    let mut out = Vec::with_capacity(records.len());
    for (line, record) in &records {
        let sequence = match record {
            Record::Text { text } => Sequence::text(tokenizer.encode(text)?),
            Record::PromptCompletion { prompt, completion } => {
                let mut ids = tokenizer.encode(prompt)?;
                let first_target = ids.len();
                ids.extend(tokenizer.encode_with(completion, false)?);
                ids.extend(eos);
                Sequence::new(ids, first_target)
            }
            Record::Chat { messages } => {
                let template = options.chat.ok_or_else(|| Error::BadRecord {
                    path: path.to_path_buf(),
                    line: *line,
                    reason: "a `messages` record needs a chat template, and the model has none \
                             (no `chat_template` in tokenizer_config.json, no chat_template.jinja)"
                        .into(),
                })?;
                template.sequence(tokenizer, messages)?
            }
            other => {
                return Err(Error::BadRecord {
                    path: path.to_path_buf(),
                    line: *line,
                    reason: format!("a {} record cannot be used as language-modelling text", other.kind()),
                })
            }
        };
        let sequence = sequence.truncated(max_len);
        if sequence.num_targets() == 0 {
            return Err(Error::BadRecord {
                path: path.to_path_buf(),
                line: *line,
                reason: "has no token to predict (empty text, a prompt filling --max-len, or no assistant turn)".into(),
            });
        }
        out.push(sequence);
    }
    Ok(out)
}
