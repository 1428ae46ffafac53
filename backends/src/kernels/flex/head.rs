//! The LM head's cross-entropy and its gradients over blocks of tokens: each task computes
//! its block's `[rows, vocab]` logits with one gemm, turns them in place into
//! `w (softmax - onehot)`, and multiplies back by the head, so the full `[tokens, vocab]`
//! logits (64 MiB at 2048 tokens x 8192 words) never exist.

use rayon::prelude::*;

use super::gemm::{matmul, Mat, SharedMut};
use super::simd::{exp, vectorized};

/// Tokens per task.
const ROWS: usize = 32;

vectorized! {
    /// One row of logits -> `weight * (softmax - onehot(target))`; returns the row's weighted
    /// negative log-likelihood.
    fn softmax_grad_row(row: &mut [f32], target: usize, weight: f32) -> f64 {
        let picked = row[target];
        let mut acc = [f32::NEG_INFINITY; 16];
        let chunks = row.len() / 16;
        for c in 0..chunks {
            for t in 0..16 {
                let v = row[c * 16 + t];
                acc[t] = if v > acc[t] { v } else { acc[t] };
            }
        }
        let max = row[chunks * 16..].iter().chain(acc.iter()).fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
        for v in row.iter_mut() {
            *v = exp(*v - max);
        }
        let mut sums = [0f32; 16];
        for c in 0..chunks {
            for t in 0..16 {
                sums[t] += row[c * 16 + t];
            }
        }
        let sum: f32 = row[chunks * 16..].iter().sum::<f32>() + sums.iter().sum::<f32>();
        let factor = weight / sum;
        for v in row.iter_mut() {
            *v *= factor;
        }
        row[target] -= weight;
        weight as f64 * ((max as f64 + (sum as f64).ln()) - picked as f64)
    }
}

/// One token's logits -> its `weight * (softmax - onehot(target))` (zeros for weight 0, whose
/// target is not read); returns its weighted negative log-likelihood.
fn token_grad_row(row: &mut [f32], target: i64, weight: f32) -> f64 {
    if weight == 0.0 {
        row.fill(0.0);
        return 0.0;
    }
    let vocab = row.len();
    let index = usize::try_from(target).ok().filter(|&t| t < vocab);
    let index = index.unwrap_or_else(|| panic!("lm_head_loss: target {target} outside the vocabulary of {vocab}"));
    softmax_grad_row(row, index, weight)
}

/// What one run of tasks accumulates.
struct Partial {
    logits: Vec<f32>,
    nll: f64,
    head_grad: Option<Vec<f32>>,
}

/// `(sum_t w_t nll_t, dL/dh, dL/dW if asked)` for hidden `[tokens, d]` and head `[vocab, d]`.
pub fn head_loss(h: &[f32], w: &[f32], targets: &[i64], weights: &[f32], d: usize, head_grad: bool) -> (f64, Vec<f32>, Option<Vec<f32>>) {
    let vocab = w.len() / d;
    let tokens = h.len() / d;
    let mut dh = vec![0f32; tokens * d];
    let dh_ptr = SharedMut::new(&mut dh);
    let blocks = tokens.div_ceil(ROWS);
    // Few, long runs of blocks when each run keeps its own [vocab, d] head gradient.
    let min_len = if head_grad { blocks.div_ceil(2 * rayon::current_num_threads()).max(1) } else { 1 };
    let total = (0..blocks)
        .into_par_iter()
        .with_min_len(min_len)
        .fold(
            || Partial { logits: vec![0f32; ROWS * vocab], nll: 0.0, head_grad: head_grad.then(|| vec![0f32; vocab * d]) },
            |mut part, blk| {
                let (r0, r1) = (blk * ROWS, ((blk + 1) * ROWS).min(tokens));
                let rows = r1 - r0;
                let h_blk = Mat::rows(&h[r0 * d..r1 * d], d);
                let logits = &mut part.logits[..rows * vocab];
                // SAFETY: h_blk is rows x d, the head vocab x d, logits rows x vocab.
                unsafe { matmul(rows, vocab, d, logits.as_mut_ptr(), vocab, false, h_blk, Mat::rows(w, d).t(), 1.0, false) };
                for (r, row) in logits.chunks_exact_mut(vocab).enumerate() {
                    part.nll += token_grad_row(row, targets[r0 + r], weights[r0 + r]);
                }
                // SAFETY: rows r0..r1 of dh belong to this block alone.
                unsafe {
                    matmul(rows, d, vocab, dh_ptr.at(r0 * d), d, false, Mat::rows(logits, vocab), Mat::rows(w, d), 1.0, false);
                    if let Some(dw) = part.head_grad.as_mut() {
                        matmul(vocab, d, rows, dw.as_mut_ptr(), d, true, Mat::rows(logits, vocab).t(), h_blk, 1.0, false);
                    }
                }
                part
            },
        )
        .reduce_with(|mut a, b| {
            a.nll += b.nll;
            if let (Some(x), Some(y)) = (a.head_grad.as_mut(), b.head_grad.as_ref()) {
                x.iter_mut().zip(y).for_each(|(x, y)| *x += *y);
            }
            a
        });
    match total {
        Some(t) => (t.nll, dh, t.head_grad),
        None => (0.0, dh, head_grad.then(|| vec![0f32; vocab * d])),
    }
}

/// Head rows widened at a time by [`head_loss_chunked`].
const VOCAB_CHUNK: usize = crate::kernels::HEAD_ROWS_PER_WIDENING;

/// [`head_loss`] without the head gradient, for a head stored in bf16 or f16 that
/// `widen_rows(v0, v1, out)` converts to f32 [`VOCAB_CHUNK`] rows at a time, so no f32 copy of
/// the whole head exists (2 GiB for Llama-3.1-8B's). The `[tokens, vocab]` logits are made
/// chunk by chunk, turned into `w (softmax - onehot)` row by row, and multiplied back by the
/// head chunk by chunk. The same products and row function as [`head_loss`], so the result
/// equals it on the widened head up to the order of the sums.
pub fn head_loss_chunked(
    h: &[f32],
    vocab: usize,
    widen_rows: impl Fn(usize, usize, &mut [f32]),
    targets: &[i64],
    weights: &[f32],
    d: usize,
) -> (f64, Vec<f32>) {
    let tokens = h.len() / d;
    let mut logits = vec![0f32; tokens * vocab];
    let mut chunk = vec![0f32; VOCAB_CHUNK.min(vocab) * d];
    let chunks = || (0..vocab).step_by(VOCAB_CHUNK).map(|v0| (v0, (v0 + VOCAB_CHUNK).min(vocab)));
    for (v0, v1) in chunks() {
        let w = &mut chunk[..(v1 - v0) * d];
        widen_rows(v0, v1, w);
        // SAFETY: logits[:, v0..v1] (row stride vocab) is tokens x (v1 - v0); h is tokens x d.
        unsafe { matmul(tokens, v1 - v0, d, logits.as_mut_ptr().add(v0), vocab, false, Mat::rows(h, d), Mat::rows(w, d).t(), 1.0, true) };
    }
    let nll: f64 = logits.par_chunks_mut(vocab.max(1)).enumerate().map(|(t, row)| token_grad_row(row, targets[t], weights[t])).sum();
    let mut dh = vec![0f32; tokens * d];
    for (i, (v0, v1)) in chunks().enumerate() {
        let w = &mut chunk[..(v1 - v0) * d];
        widen_rows(v0, v1, w);
        let grad = Mat { ptr: logits[v0..].as_ptr(), rs: vocab as isize, cs: 1 };
        // SAFETY: grad is logits[:, v0..v1] (tokens x (v1 - v0), row stride vocab); dh is fresh.
        unsafe { matmul(tokens, d, v1 - v0, dh.as_mut_ptr(), d, i > 0, grad, Mat::rows(w, d), 1.0, true) };
    }
    (nll, dh)
}
