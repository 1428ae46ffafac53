//! Evaluation sets and their scores: text (NLL, perplexity), multiple choice (acc, acc_norm,
//! the lm-evaluation-harness way) and generation (exact match of the extracted answer).

mod choice;
mod generation;
mod text;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use choice::{score_choices, ChoiceItem};
pub use generation::{answers_match, extract_answer, score_generation, GenerationItem};
pub use text::{score_text, sequence_nll_sums, SequenceScore, TextScore};

use crate::data::{lm_sequences_with, read_records_with, FieldMap, LmOptions, Record, Sequence};
use crate::error::{Error, Result};
use crate::llama::Llama;
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use crate::KernelBackend;

/// The items of one evaluation file, tokenised.
#[derive(Debug, Clone)]
pub enum EvalItems {
    /// Text or prompt + completion: NLL of the scored tokens.
    Text(Vec<Sequence>),
    /// Multiple choice.
    MultipleChoice(Vec<ChoiceItem>),
    /// Greedy generation against a reference answer.
    Generation(Vec<GenerationItem>),
}

/// A named evaluation file.
#[derive(Debug, Clone)]
pub struct EvalSet {
    /// Short name (the file stem).
    pub name: String,
    /// Where it came from.
    pub path: PathBuf,
    /// Its items.
    pub items: EvalItems,
}

impl EvalSet {
    /// `text`, `multiple-choice` or `generation`.
    pub fn kind(&self) -> &'static str {
        match self.items {
            EvalItems::Text(_) => "text",
            EvalItems::MultipleChoice(_) => "multiple-choice",
            EvalItems::Generation(_) => "generation",
        }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        match &self.items {
            EvalItems::Text(s) => s.len(),
            EvalItems::MultipleChoice(s) => s.len(),
            EvalItems::Generation(s) => s.len(),
        }
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Knobs of evaluation.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Sequences per forward pass (text and multiple choice), prompts decoded together (generation).
    pub batch_size: usize,
    /// Token limit per scored sequence: text keeps its first `max_len` tokens; a choice's
    /// context and a generation prompt lose tokens from the left (the end is what is scored).
    pub max_len: usize,
    /// Tokens to generate at most per generation item.
    pub max_new_tokens: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { batch_size: 16, max_len: 1024, max_new_tokens: 64 }
    }
}

/// One set's result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalScore {
    /// Set name.
    pub name: String,
    /// Set kind.
    pub kind: &'static str,
    /// Items scored.
    pub items: usize,
    /// `nll_per_token` and `perplexity` (text), `acc` and `acc_norm` (multiple choice),
    /// `accuracy` (generation).
    pub metrics: BTreeMap<String, f64>,
    /// Per-sequence detail for text sets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<TextScore>,
}

impl EvalScore {
    /// The headline figure, higher is better: accuracy for choice and generation sets,
    /// minus the NLL per token for text.
    pub fn headline(&self) -> f64 {
        match self.kind {
            "text" => -self.metrics["nll_per_token"],
            "multiple-choice" => self.metrics["acc"],
            _ => self.metrics["accuracy"],
        }
    }
}

/// Reads and tokenises an evaluation file. All records must be of one kind (text and
/// prompt + completion count as one).
pub fn load_eval_set(path: &Path, tokenizer: &Tokenizer, max_len: usize) -> Result<EvalSet> {
    load_eval_set_with(path, tokenizer, &LmOptions { max_len, ..Default::default() })
}

/// [`load_eval_set`] with column renames (`options.fields`) and the model's chat template for
/// `messages` records (`options.chat`), which are scored on their assistant turns.
pub fn load_eval_set_with(path: &Path, tokenizer: &Tokenizer, options: &LmOptions<'_>) -> Result<EvalSet> {
    let records = read_records_with(path, options.fields.unwrap_or(&FieldMap::none()))?;
    let kind_of = |r: &Record| match r {
        Record::Text { .. } | Record::PromptCompletion { .. } | Record::Chat { .. } => "text",
        other => other.kind(),
    };
    let first = kind_of(&records[0].1);
    if let Some((line, r)) = records.iter().find(|(_, r)| kind_of(r) != first) {
        return Err(Error::BadRecord {
            path: path.to_path_buf(),
            line: *line,
            reason: format!("a {} record in a {first} file; one kind per evaluation file", r.kind()),
        });
    }
    let items = match first {
        "text" => EvalItems::Text(lm_sequences_with(path, tokenizer, &LmOptions { eos: None, ..*options })?),
        "multiple-choice" => {
            EvalItems::MultipleChoice(records.iter().map(|(_, r)| ChoiceItem::from_record(r, tokenizer)).collect::<Result<_>>()?)
        }
        _ => {
            let mut items = Vec::with_capacity(records.len());
            for (line, record) in &records {
                let item = GenerationItem::from_record(record, tokenizer)?;
                if item.prompt.is_empty() {
                    let reason = "`prompt` tokenises to nothing: there is no token to continue".to_string();
                    return Err(Error::BadRecord { path: path.to_path_buf(), line: *line, reason });
                }
                items.push(item);
            }
            EvalItems::Generation(items)
        }
    };
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = name.strip_suffix(".eval").or_else(|| name.strip_suffix(".test")).unwrap_or(&name).to_string();
    Ok(EvalSet { name, path: path.to_path_buf(), items })
}

/// Scores a model on one set.
pub fn evaluate<B: KernelBackend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    set: &EvalSet,
    options: &EvalOptions,
    progress: &Progress,
) -> Result<EvalScore> {
    let mut metrics = BTreeMap::new();
    let mut text = None;
    match &set.items {
        EvalItems::Text(sequences) => {
            let score = score_text(model, sequences, options.batch_size, progress);
            metrics.insert("nll_per_token".to_string(), score.nll_per_token);
            metrics.insert("perplexity".to_string(), score.perplexity);
            text = Some(score);
        }
        EvalItems::MultipleChoice(items) => {
            let (acc, acc_norm) = score_choices(model, items, options, progress);
            metrics.insert("acc".to_string(), acc);
            metrics.insert("acc_norm".to_string(), acc_norm);
        }
        EvalItems::Generation(items) => {
            let accuracy = score_generation(model, tokenizer, items, options, progress)?;
            metrics.insert("accuracy".to_string(), accuracy);
        }
    }
    for (key, value) in &metrics {
        if !value.is_finite() {
            return Err(Error::Numerical(format!("{}: {key} is {value} (non-finite model output?)", set.path.display())));
        }
    }
    Ok(EvalScore { name: set.name.clone(), kind: set.kind(), items: set.len(), metrics, text })
}
