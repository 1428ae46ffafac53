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
/// whose loss covers the completion only), keeping the first `max_len` tokens of each.
/// Other record kinds are an error naming the file.
pub fn lm_sequences(path: &Path, tokenizer: &Tokenizer, max_len: usize) -> Result<Vec<Sequence>> {
    let records = read_records(path)?;
    let mut out = Vec::with_capacity(records.len());
    for (line, record) in &records {
        let sequence = match record {
            Record::Text { text } => Sequence::text(tokenizer.encode(text)?),
            Record::PromptCompletion { prompt, completion } => {
                let mut ids = tokenizer.encode(prompt)?;
                let first_target = ids.len();
                ids.extend(tokenizer.encode_with(completion, false)?);
                Sequence { ids, first_target }
            }
            other => {
                return Err(Error::BadRecord {
                    path: path.to_path_buf(),
                    line: *line,
                    reason: format!("a {} record cannot be scored as text", other.kind()),
                })
            }
        };
        out.push(sequence.truncated(max_len));
    }
    Ok(out)
}
