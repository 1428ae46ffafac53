//! Evaluation split over the peers: each scores its share of every set's items, one
//! all-reduce gathers the sums, and every peer gets the same scores.

use std::collections::BTreeMap;

use burn::tensor::{backend::Backend, Tensor};

use super::collective::Peer;
use super::shard::share;
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalItems, EvalOptions, EvalScore, EvalSet};
use crate::llama::Llama;
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use crate::KernelBackend;

/// Peer `rank`'s share of a set's items.
fn share_of(set: &EvalSet, rank: usize, world: usize) -> EvalSet {
    let range = share(set.len(), rank, world);
    let items = match &set.items {
        EvalItems::Text(s) => EvalItems::Text(s[range].to_vec()),
        EvalItems::MultipleChoice(s) => EvalItems::MultipleChoice(s[range].to_vec()),
        EvalItems::Generation(s) => EvalItems::Generation(s[range].to_vec()),
    };
    EvalSet { name: set.name.clone(), path: set.path.clone(), items }
}

/// The sums a set's score is gathered from: `[items, ...]` with, per kind, the sums of
/// `acc` and `acc_norm` (multiple choice), of `accuracy` (generation), or the predicted
/// tokens and the NLL sum (text).
fn sums(score: Option<&EvalScore>, set: &EvalSet) -> [f64; 3] {
    let Some(s) = score else { return [0.0; 3] };
    let n = s.items as f64;
    match &set.items {
        EvalItems::MultipleChoice(_) => [n, s.metrics["acc"] * n, s.metrics["acc_norm"] * n],
        EvalItems::Generation(_) => [n, s.metrics["accuracy"] * n, 0.0],
        EvalItems::Text(_) => {
            let tokens = s.text.as_ref().map_or(0, |t| t.tokens) as f64;
            [n, tokens, s.metrics["nll_per_token"] * tokens]
        }
    }
}

/// Scores `model` on every set, each peer taking its share of the items. Every peer must call
/// it with the same sets. Metrics equal one device's up to rounding (generation: up to the
/// padding of the prompts decoded together); text sets lose their per-sequence detail.
pub fn evaluate_sets<B: KernelBackend, C: Backend>(
    peer: &mut Peer<C>,
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    sets: &[EvalSet],
    options: &EvalOptions,
) -> Result<Vec<EvalScore>> {
    if sets.is_empty() {
        return Ok(Vec::new());
    }
    let (rank, world) = (peer.rank(), peer.world());
    let mut local = Vec::with_capacity(3 * sets.len());
    for set in sets {
        let mine = share_of(set, rank, world);
        let score = if mine.is_empty() { None } else { Some(evaluate(model, tokenizer, &mine, options, &Progress::hidden())?) };
        local.extend(sums(score.as_ref(), set));
    }
    let values: Vec<f32> = local.iter().map(|&v| v as f32).collect();
    let reduced = peer.all_reduce_sum(Tensor::<C, 1>::from_floats(values.as_slice(), peer.device()))?;
    let totals: Vec<f32> = reduced.into_data().convert::<f32>().to_vec().expect("f32 data");
    sets.iter()
        .zip(totals.chunks(3))
        .map(|(set, t)| {
            let (items, a, b) = (t[0] as f64, t[1] as f64, t[2] as f64);
            let mut metrics = BTreeMap::new();
            match &set.items {
                EvalItems::MultipleChoice(_) => {
                    metrics.insert("acc".to_string(), a / items);
                    metrics.insert("acc_norm".to_string(), b / items);
                }
                EvalItems::Generation(_) => {
                    metrics.insert("accuracy".to_string(), a / items);
                }
                EvalItems::Text(_) => {
                    let nll = b / a;
                    metrics.insert("nll_per_token".to_string(), nll);
                    metrics.insert("perplexity".to_string(), nll.exp());
                }
            }
            if let Some((key, value)) = metrics.iter().find(|(_, v)| !v.is_finite()) {
                return Err(Error::Numerical(format!("{}: {key} is {value} after gathering the peers' scores", set.path.display())));
            }
            Ok(EvalScore { name: set.name.clone(), kind: set.kind(), items: items.round() as usize, metrics, text: None })
        })
        .collect()
}
