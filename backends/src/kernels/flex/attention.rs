//! FlashAttention-2-style attention on flex's f32 buffers, multithreaded with rayon.
//!
//! Forward: one task per (batch, kv head, block of [`Q_BLOCK`] queries); the `groups` query
//! heads that share the kv head are processed together (rows `i * groups + g`), so each key and
//! value tile is read once per group. Keys are visited in tiles of [`K_BLOCK`] up to the last
//! one the block can see causally, with an online softmax; only the output and each row's
//! log-sum-exp are kept.
//!
//! Backward: one task per (batch, kv head, chunk of keys), keys outer and queries inner
//! (FlashAttention-2's order): for each key tile and each query block that sees it, the
//! probabilities are recomputed from the saved log-sum-exp, and dV, dK accumulate in the
//! task's own buffers while dQ accumulates into a per-task partial that is summed at the end
//! (there is one chunk per (batch, kv head) unless that leaves cores idle).
//!
//! The matrix products are `gemm` calls on strided views of the `[batch, seq, heads, d]`
//! buffers; the element-wise work (masking, exponentials) runs in [`super::simd`]'s loops.

use rayon::prelude::*;

use super::gemm::{matmul, Mat, SharedMut};
use super::simd::{exp, vectorized};
use crate::kernels::AttentionMask;

/// Queries per head in one forward task / backward inner block.
const Q_BLOCK: usize = 64;
/// Keys per tile.
const K_BLOCK: usize = 128;

/// Problem sizes.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    /// Batch rows.
    pub batch: usize,
    /// Queries per row.
    pub seq: usize,
    /// Keys per row (cached + new).
    pub keys: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
}

impl Dims {
    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }
    /// Offset of `q[b, i, h, 0]` in a `[batch, seq, heads, d]` buffer.
    fn q_at(&self, b: usize, i: usize, h: usize) -> usize {
        ((b * self.seq + i) * self.heads + h) * self.head_dim
    }
    /// Offset of `k[b, j, kvh, 0]` in a `[batch, keys, kv_heads, d]` buffer.
    fn k_at(&self, b: usize, j: usize, kvh: usize) -> usize {
        ((b * self.keys + j) * self.kv_heads + kvh) * self.head_dim
    }
    /// Row stride of keys/values of one head.
    fn k_stride(&self) -> isize {
        (self.kv_heads * self.head_dim) as isize
    }
}

/// Per-key additive bias of one batch row: 0 for a real key, -inf for padding.
fn key_bias(mask: &AttentionMask) -> Option<Vec<f32>> {
    let valid = mask.key_valid.as_ref()?;
    Some(valid.iter().map(|&real| if real { 0.0 } else { f32::NEG_INFINITY }).collect())
}

/// Per-row limits of a tile: row r (query `i0 + r / groups`) sees keys `k0 .. k0 + limit`
/// causally (padding aside), `limit` clamped to the tile.
#[allow(clippy::too_many_arguments)]
fn tile_limits(limits: &mut Vec<usize>, rows: usize, groups: usize, i0: usize, k0: usize, kb: usize, mask: &AttentionMask, keys: usize) {
    limits.clear();
    limits.extend((0..rows).map(|r| mask.causal_end(i0 + r / groups, keys).saturating_sub(k0).min(kb)));
}

vectorized! {
    /// The forward's element-wise work on one score tile (`rows x kb`): masks each row's keys
    /// from its limit on (causal) and adds the padding bias, updates the row's running max
    /// `m` and sum `l`, turns the row into `exp(s - m_new)`, and rescales the row's output
    /// accumulator (`acc`, `rows x hd`) by `exp(m_old - m_new)`.
    #[allow(clippy::too_many_arguments)]
    fn forward_tile(scores: &mut [f32], kb: usize, limits: &[usize], bias: Option<&[f32]>, m: &mut [f32], l: &mut [f32], acc: &mut [f32], hd: usize) {
        let rows = scores.chunks_exact_mut(kb).zip(limits).zip(m.iter_mut().zip(l.iter_mut())).zip(acc.chunks_exact_mut(hd));
        for (((row, &limit), (m, l)), acc) in rows {
            row[limit..].fill(f32::NEG_INFINITY);
            if let Some(bias) = bias {
                for (s, b) in row.iter_mut().zip(bias) {
                    *s += *b;
                }
            }
            let tile_max = max(row);
            if tile_max == f32::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            let new_max = m.max(tile_max);
            for s in row.iter_mut() {
                *s = exp(*s - new_max);
            }
            let correction = exp(*m - new_max);
            *l = *l * correction + sum(row);
            *m = new_max;
            if correction != 1.0 {
                for a in acc.iter_mut() {
                    *a *= correction;
                }
            }
        }
    }
}

/// Lanes of the partial reductions below: independent accumulators let LLVM vectorise a float
/// reduction it may not reassociate.
const LANES: usize = 16;

/// `max(x)` (-inf for an empty slice), vectorisable.
#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for t in 0..LANES {
            acc[t] = if c[t] > acc[t] { c[t] } else { acc[t] };
        }
    }
    tail.iter().chain(acc.iter()).fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

/// `sum(x)`, vectorisable.
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for t in 0..LANES {
            acc[t] += c[t];
        }
    }
    tail.iter().sum::<f32>() + acc.iter().sum::<f32>()
}

vectorized! {
    /// Copies `src * factor` into `dst`.
    fn copy_scaled(dst: &mut [f32], src: &[f32], factor: f32) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s * factor;
        }
    }
}

/// Attention forward; returns the output (`[batch, seq, heads, d]`) and the log-sum-exp
/// (`[batch, heads, seq]`, `+inf` for a row that sees no key).
pub fn forward(q: &[f32], k: &[f32], v: &[f32], d: Dims, mask: &AttentionMask, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let groups = d.groups();
    let hd = d.head_dim;
    let mut out = vec![0f32; d.batch * d.seq * d.heads * hd];
    let mut lse = vec![0f32; d.batch * d.heads * d.seq];
    let bias = key_bias(mask);
    let q_blocks = d.seq.div_ceil(Q_BLOCK);
    let tasks = d.batch * d.kv_heads * q_blocks;
    let (out_ptr, lse_ptr) = (SharedMut::new(&mut out), SharedMut::new(&mut lse));

    (0..tasks).into_par_iter().for_each_init(
        || (vec![0f32; Q_BLOCK * groups * hd], vec![0f32; Q_BLOCK * groups * K_BLOCK], vec![0f32; Q_BLOCK * groups * hd], Vec::new()),
        |(qs, scores, acc, limits), task| {
            let (b, rest) = (task / (d.kv_heads * q_blocks), task % (d.kv_heads * q_blocks));
            let (kvh, blk) = (rest / q_blocks, rest % q_blocks);
            let (i0, i1) = (blk * Q_BLOCK, ((blk + 1) * Q_BLOCK).min(d.seq));
            let rows = (i1 - i0) * groups;
            // Rows r = (i - i0) * groups + g: this block's queries of the group's heads, scaled.
            for i in i0..i1 {
                let src = &q[d.q_at(b, i, kvh * groups)..][..groups * hd];
                copy_scaled(&mut qs[(i - i0) * groups * hd..][..groups * hd], src, scale);
            }
            let acc = &mut acc[..rows * hd];
            acc.fill(0.0);
            let mut m = vec![f32::NEG_INFINITY; rows];
            let mut l = vec![0f32; rows];
            let key_end = mask.causal_end(i1 - 1, d.keys);
            let row_bias = bias.as_ref().map(|bias| &bias[b * d.keys..(b + 1) * d.keys]);
            for k0 in (0..key_end).step_by(K_BLOCK) {
                let kb = K_BLOCK.min(key_end - k0);
                let k_tile = Mat { ptr: k[d.k_at(b, k0, kvh)..].as_ptr(), rs: d.k_stride(), cs: 1 };
                // SAFETY: qs holds rows x hd, scores rows x kb; the key tile has kb rows.
                unsafe {
                    let lhs = Mat { ptr: qs.as_ptr(), rs: hd as isize, cs: 1 };
                    let k_t = Mat { ptr: k_tile.ptr, rs: 1, cs: k_tile.rs }; // K^T
                    matmul(rows, kb, hd, scores.as_mut_ptr(), kb, false, lhs, k_t, 1.0, false);
                }
                tile_limits(limits, rows, groups, i0, k0, kb, mask, d.keys);
                let tile_bias = row_bias.map(|bias| &bias[k0..k0 + kb]);
                forward_tile(&mut scores[..rows * kb], kb, limits, tile_bias, &mut m, &mut l, acc, hd);
                // SAFETY: scores rows x kb, the value tile kb rows of hd, acc rows x hd.
                unsafe {
                    let p = Mat { ptr: scores.as_ptr(), rs: kb as isize, cs: 1 };
                    let v_tile = Mat { ptr: v[d.k_at(b, k0, kvh)..].as_ptr(), rs: d.k_stride(), cs: 1 };
                    matmul(rows, hd, kb, acc.as_mut_ptr(), hd, true, p, v_tile, 1.0, false);
                }
            }
            for r in 0..rows {
                let (i, g) = (i0 + r / groups, r % groups);
                let h = kvh * groups + g;
                let (factor, row_lse) = if l[r] > 0.0 { (1.0 / l[r], m[r] + l[r].ln()) } else { (0.0, f32::INFINITY) };
                // SAFETY: row (b, i, h) of the output and entry (b, h, i) of lse belong to this
                // task alone: tasks split (b, kv head, query block) and h lies in the kv head's group.
                unsafe {
                    let dst = std::slice::from_raw_parts_mut(out_ptr.at(d.q_at(b, i, h)), hd);
                    copy_scaled(dst, &acc[r * hd..(r + 1) * hd], factor);
                    *lse_ptr.at((b * d.heads + h) * d.seq + i) = row_lse;
                }
            }
        },
    );
    (out, lse)
}

vectorized! {
    /// `sum(a * b)`.
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        for (x, y) in ca.zip(cb) {
            for t in 0..LANES {
                acc[t] += x[t] * y[t];
            }
        }
        tail + acc.iter().sum::<f32>()
    }
}

vectorized! {
    /// The backward's element-wise work on one tile (`rows x kb`): `p = exp(s - lse)` on the
    /// keys each row sees (0 elsewhere), written to `probs`, and `ds = p * (dp - delta)`
    /// written over `dp`.
    #[allow(clippy::too_many_arguments)]
    fn backward_tile(scores: &[f32], dp: &mut [f32], probs: &mut [f32], kb: usize, limits: &[usize], bias: Option<&[f32]>, lse: &[f32], delta: &[f32]) {
        let rows = scores.chunks_exact(kb).zip(dp.chunks_exact_mut(kb)).zip(probs.chunks_exact_mut(kb)).zip(limits.iter().zip(lse.iter().zip(delta)));
        for (((s, dp), p), (&limit, (&lse, &delta))) in rows {
            let (seen, unseen) = p.split_at_mut(limit);
            match bias {
                Some(bias) => {
                    for ((p, s), b) in seen.iter_mut().zip(s).zip(bias) {
                        *p = exp(*s + *b - lse);
                    }
                }
                None => {
                    for (p, s) in seen.iter_mut().zip(s) {
                        *p = exp(*s - lse);
                    }
                }
            }
            unseen.fill(0.0);
            for (g, p) in dp.iter_mut().zip(p.iter()) {
                *g = *p * (*g - delta);
            }
        }
    }
}

/// Saved tensors and the incoming gradient of one attention call.
pub struct BackwardInputs<'a> {
    /// `[batch, seq, heads, d]`
    pub q: &'a [f32],
    /// `[batch, keys, kv_heads, d]`
    pub k: &'a [f32],
    /// `[batch, keys, kv_heads, d]`
    pub v: &'a [f32],
    /// `[batch, seq, heads, d]`, the forward's output.
    pub out: &'a [f32],
    /// `[batch, heads, seq]`, the forward's log-sum-exp.
    pub lse: &'a [f32],
    /// `[batch, seq, heads, d]`, dL/d output.
    pub grad: &'a [f32],
}

/// Per-(batch, kv head) copies in the backward's row order (`i * groups + g`).
struct Grouped {
    /// `scale * q`, `[batch, kv_heads, seq * groups, d]`.
    qs: Vec<f32>,
    /// dL/d output, same layout.
    grad: Vec<f32>,
    /// log-sum-exp, `[batch, kv_heads, seq * groups]`.
    lse: Vec<f32>,
    /// `rowsum(dO * O)`, same layout.
    delta: Vec<f32>,
}

fn group_for_backward(x: &BackwardInputs, d: &Dims, scale: f32) -> Grouped {
    let (groups, hd, rows) = (d.groups(), d.head_dim, d.seq * d.groups());
    let size = d.batch * d.kv_heads * rows;
    let mut grouped = Grouped { qs: vec![0.0; size * hd], grad: vec![0.0; size * hd], lse: vec![0.0; size], delta: vec![0.0; size] };
    let per_head = rows * hd;
    grouped
        .qs
        .par_chunks_mut(per_head)
        .zip(grouped.grad.par_chunks_mut(per_head))
        .zip(grouped.lse.par_chunks_mut(rows).zip(grouped.delta.par_chunks_mut(rows)))
        .enumerate()
        .for_each(|(bk, ((qs, grad), (lse, delta)))| {
            let (b, kvh) = (bk / d.kv_heads, bk % d.kv_heads);
            for i in 0..d.seq {
                let at = d.q_at(b, i, kvh * groups);
                let row = i * groups * hd..(i + 1) * groups * hd;
                copy_scaled(&mut qs[row.clone()], &x.q[at..at + groups * hd], scale);
                grad[row].copy_from_slice(&x.grad[at..at + groups * hd]);
                for g in 0..groups {
                    let h = kvh * groups + g;
                    let r = i * groups + g;
                    lse[r] = x.lse[(b * d.heads + h) * d.seq + i];
                    let o = d.q_at(b, i, h);
                    delta[r] = dot(&x.out[o..o + hd], &x.grad[o..o + hd]);
                }
            }
        });
    grouped
}

/// Scratch of one backward task.
struct BackwardScratch {
    scores: Vec<f32>,
    probs: Vec<f32>,
    dscores: Vec<f32>,
    limits: Vec<usize>,
}

/// Attention backward; returns (dq, dk, dv) in the inputs' layouts.
pub fn backward(x: BackwardInputs, d: Dims, mask: &AttentionMask, scale: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (groups, hd) = (d.groups(), d.head_dim);
    let rows_per_head = d.seq * groups;
    let grouped = group_for_backward(&x, &d, scale);
    let bias = key_bias(mask);

    // Key chunks per (batch, kv head): enough tasks to keep every thread busy (the causal
    // triangle makes early chunks heavier, so aim for several tasks per thread).
    let key_tiles = d.keys.div_ceil(K_BLOCK);
    let heads = d.batch * d.kv_heads;
    let chunks = (4 * rayon::current_num_threads()).div_ceil(heads).clamp(1, key_tiles.max(1));
    let tiles_per_chunk = key_tiles.div_ceil(chunks).max(1);
    let chunks = key_tiles.div_ceil(tiles_per_chunk).max(1);

    let mut dk = vec![0f32; d.batch * d.keys * d.kv_heads * hd];
    let mut dv = vec![0f32; dk.len()];
    let (dk_ptr, dv_ptr) = (SharedMut::new(&mut dk), SharedMut::new(&mut dv));
    let max_rows = Q_BLOCK * groups;

    // Each task returns its partial dQ (grouped rows from `first_row` on).
    let partials: Vec<(usize, usize, Vec<f32>)> = (0..heads * chunks)
        .into_par_iter()
        .map_init(
            || BackwardScratch {
                scores: vec![0.0; max_rows * K_BLOCK],
                probs: vec![0.0; max_rows * K_BLOCK],
                dscores: vec![0.0; max_rows * K_BLOCK],
                limits: Vec::new(),
            },
            |s, task| {
                let (bk, chunk) = (task / chunks, task % chunks);
                let (b, kvh) = (bk / d.kv_heads, bk % d.kv_heads);
                let kc0 = chunk * tiles_per_chunk * K_BLOCK;
                let kc1 = ((chunk + 1) * tiles_per_chunk * K_BLOCK).min(d.keys);
                // The first query block with a query that can see key kc0 causally.
                let first_query = kc0.saturating_sub(mask.past).min(d.seq) / Q_BLOCK * Q_BLOCK;
                let first_row = first_query * groups;
                let mut dq = vec![0f32; (rows_per_head - first_row) * hd];
                let mut dk_acc = vec![0f32; (kc1 - kc0) * hd];
                let mut dv_acc = vec![0f32; (kc1 - kc0) * hd];
                let head_rows = bk * rows_per_head;
                let qs = &grouped.qs[head_rows * hd..(head_rows + rows_per_head) * hd];
                let grad = &grouped.grad[head_rows * hd..(head_rows + rows_per_head) * hd];
                let lse = &grouped.lse[head_rows..head_rows + rows_per_head];
                let delta = &grouped.delta[head_rows..head_rows + rows_per_head];
                let row_bias = bias.as_ref().map(|bias| &bias[b * d.keys..(b + 1) * d.keys]);
                for k0 in (kc0..kc1).step_by(K_BLOCK) {
                    let kb = K_BLOCK.min(kc1 - k0);
                    let k_ptr = x.k[d.k_at(b, k0, kvh)..].as_ptr();
                    let v_ptr = x.v[d.k_at(b, k0, kvh)..].as_ptr();
                    let q_start = k0.saturating_sub(mask.past).min(d.seq);
                    let block_start = q_start / Q_BLOCK * Q_BLOCK;
                    for i0 in (block_start..d.seq).step_by(Q_BLOCK) {
                        let i1 = (i0 + Q_BLOCK).min(d.seq);
                        let (r0, rows) = (i0 * groups, (i1 - i0) * groups);
                        let q_blk = Mat { ptr: qs[r0 * hd..].as_ptr(), rs: hd as isize, cs: 1 };
                        let g_blk = Mat { ptr: grad[r0 * hd..].as_ptr(), rs: hd as isize, cs: 1 };
                        // SAFETY (all products below): buffers hold rows x kb scores, the
                        // key/value tiles kb rows of hd, the q/grad blocks rows x hd.
                        unsafe {
                            // S = Qs K^T and dP = dO V^T.
                            matmul(
                                rows,
                                kb,
                                hd,
                                s.scores.as_mut_ptr(),
                                kb,
                                false,
                                q_blk,
                                Mat { ptr: k_ptr, rs: 1, cs: d.k_stride() },
                                1.0,
                                false,
                            );
                            matmul(
                                rows,
                                kb,
                                hd,
                                s.dscores.as_mut_ptr(),
                                kb,
                                false,
                                g_blk,
                                Mat { ptr: v_ptr, rs: 1, cs: d.k_stride() },
                                1.0,
                                false,
                            );
                        }
                        tile_limits(&mut s.limits, rows, groups, i0, k0, kb, mask, d.keys);
                        let span = ..rows * kb;
                        let tile_bias = row_bias.map(|bias| &bias[k0..k0 + kb]);
                        let (lse, delta) = (&lse[r0..r0 + rows], &delta[r0..r0 + rows]);
                        backward_tile(&s.scores[span], &mut s.dscores[span], &mut s.probs[span], kb, &s.limits, tile_bias, lse, delta);
                        let p = Mat { ptr: s.probs.as_ptr(), rs: kb as isize, cs: 1 };
                        let ds = Mat { ptr: s.dscores.as_ptr(), rs: kb as isize, cs: 1 };
                        let tile = (k0 - kc0) * hd;
                        unsafe {
                            // dV += P^T dO, dK += dS^T Qs, dQ += scale dS K.
                            matmul(kb, hd, rows, dv_acc[tile..].as_mut_ptr(), hd, true, p.t(), g_blk, 1.0, false);
                            matmul(kb, hd, rows, dk_acc[tile..].as_mut_ptr(), hd, true, ds.t(), q_blk, 1.0, false);
                            let dq_rows = dq[(r0 - first_row) * hd..].as_mut_ptr();
                            matmul(rows, hd, kb, dq_rows, hd, true, ds, Mat { ptr: k_ptr, rs: d.k_stride(), cs: 1 }, scale, false);
                        }
                    }
                }
                for j in kc0..kc1 {
                    let at = d.k_at(b, j, kvh);
                    // SAFETY: rows kc0..kc1 of kv head kvh in batch row b belong to this task.
                    unsafe {
                        std::slice::from_raw_parts_mut(dk_ptr.at(at), hd).copy_from_slice(&dk_acc[(j - kc0) * hd..][..hd]);
                        std::slice::from_raw_parts_mut(dv_ptr.at(at), hd).copy_from_slice(&dv_acc[(j - kc0) * hd..][..hd]);
                    }
                }
                (bk, first_row, dq)
            },
        )
        .collect();

    // Sum each (batch, kv head)'s partial dQs and scatter them to [batch, seq, heads, d].
    let mut dq = vec![0f32; d.batch * d.seq * d.heads * hd];
    let dq_ptr = SharedMut::new(&mut dq);
    (0..heads).into_par_iter().for_each(|bk| {
        let (b, kvh) = (bk / d.kv_heads, bk % d.kv_heads);
        for (_, first_row, part) in partials.iter().filter(|p| p.0 == bk) {
            for (offset, row) in part.chunks_exact(hd).enumerate() {
                let r = first_row + offset;
                let (i, g) = (r / groups, r % groups);
                // SAFETY: rows of kv head kvh's group in batch row b belong to this task.
                let dst = unsafe { std::slice::from_raw_parts_mut(dq_ptr.at(d.q_at(b, i, kvh * groups + g)), hd) };
                add_into(dst, row);
            }
        }
    });
    (dq, dk, dv)
}

vectorized! {
    /// `dst += src`.
    fn add_into(dst: &mut [f32], src: &[f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += *s;
        }
    }
}
