//! Multiple choice, scored as lm-evaluation-harness does: the log-likelihood of each choice as
//! a continuation of the context; `acc` picks the highest sum, `acc_norm` the highest sum per
//! byte of the choice's text.

use super::text::sequence_nll_sums;
use super::EvalOptions;
use crate::data::{Record, Sequence};
use crate::error::Result;
use crate::llama::Llama;
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use crate::KernelBackend;

/// One tokenised multiple-choice question.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceItem {
    /// Context tokens (BOS included).
    pub context: Vec<u32>,
    /// Each choice's continuation tokens.
    pub continuations: Vec<Vec<u32>>,
    /// Each choice's length in bytes (for `acc_norm`).
    pub bytes: Vec<usize>,
    /// Index of the right choice.
    pub label: usize,
}

impl ChoiceItem {
    /// Tokenises a multiple-choice record. The continuation is what `context + choice` adds to
    /// the context's tokens, so merges across the boundary are tokenised as in the whole text.
    pub fn from_record(record: &Record, tokenizer: &Tokenizer) -> Result<Self> {
        let Record::MultipleChoice { context, choices, label } = record else {
            unreachable!("load_eval_set only passes multiple-choice records")
        };
        let context_ids = tokenizer.encode(context)?;
        let mut continuations = Vec::with_capacity(choices.len());
        for choice in choices {
            let whole = tokenizer.encode(&format!("{context}{choice}"))?;
            let continuation = if whole.len() > context_ids.len() && whole.starts_with(&context_ids) {
                whole[context_ids.len()..].to_vec()
            } else {
                tokenizer.encode_with(choice, false)?
            };
            continuations.push(continuation);
        }
        Ok(ChoiceItem { context: context_ids, continuations, bytes: choices.iter().map(|c| c.len().max(1)).collect(), label: *label })
    }

    /// Each choice as a sequence whose scored tokens are the continuation, cut from the left to
    /// `max_len` tokens.
    fn sequences(&self, max_len: usize) -> Vec<Sequence> {
        self.continuations
            .iter()
            .map(|cont| {
                let mut ids = self.context.clone();
                ids.extend(cont);
                let mut first_target = self.context.len();
                if ids.len() > max_len {
                    let drop = ids.len() - max_len;
                    ids.drain(..drop);
                    first_target = first_target.saturating_sub(drop).max(1);
                }
                Sequence::new(ids, first_target)
            })
            .collect()
    }
}

fn argmax(values: &[f64]) -> usize {
    values.iter().enumerate().fold((0, f64::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
}

/// `(acc, acc_norm)` over `items`.
pub fn score_choices<B: KernelBackend>(model: &Llama<B>, items: &[ChoiceItem], options: &EvalOptions, progress: &Progress) -> (f64, f64) {
    let sequences: Vec<Sequence> = items.iter().flat_map(|i| i.sequences(options.max_len)).collect();
    let sums = sequence_nll_sums(model, &sequences, options.batch_size, &Progress::hidden());
    let (mut correct, mut correct_norm) = (0usize, 0usize);
    let mut at = 0;
    for item in items {
        let n = item.continuations.len();
        let loglik: Vec<f64> = sums[at..at + n].iter().map(|(nll, _)| -nll).collect();
        let per_byte: Vec<f64> = loglik.iter().zip(&item.bytes).map(|(l, b)| l / *b as f64).collect();
        correct += (argmax(&loglik) == item.label) as usize;
        correct_norm += (argmax(&per_byte) == item.label) as usize;
        at += n;
        progress.inc(1);
    }
    let n = items.len().max(1) as f64;
    (correct as f64 / n, correct_norm as f64 / n)
}
