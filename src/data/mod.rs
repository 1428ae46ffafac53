//! Data: JSONL records, tokenised sequences, and padded batches.

mod batch;
mod jsonl;
mod loader;

pub use batch::{Batch, Sequence};
pub use jsonl::{read_records, Record};
pub use loader::{permutation, DataPosition, Shuffler};

use std::path::Path;

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

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
    let records = read_records(path)?;
    let mut out = Vec::with_capacity(records.len());
    for (line, record) in &records {
        let sequence = match record {
            Record::Text { text } => Sequence::text(tokenizer.encode(text)?),
            Record::PromptCompletion { prompt, completion } => {
                let mut ids = tokenizer.encode(prompt)?;
                let first_target = ids.len();
                ids.extend(tokenizer.encode_with(completion, false)?);
                ids.extend(eos);
                Sequence { ids, first_target }
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
                reason: "has no token to predict (empty text, or a prompt filling --max-len)".into(),
            });
        }
        out.push(sequence);
    }
    Ok(out)
}
