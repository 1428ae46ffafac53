//! Fused element-wise kernels on f32 buffers: RMSNorm, SwiGLU and RoPE, forward and backward.
//!
//! Each reads its inputs once and writes its outputs once (the composed versions make 4 to 10
//! passes), split over rayon tasks of at least [`MIN_TASK`] elements so that small tensors stay
//! on one thread.

use rayon::prelude::*;

use super::simd::{sigmoid, vectorized};

/// Fewest elements worth a task of their own (below this the dispatch costs more than the work).
const MIN_TASK: usize = 32 * 1024;

/// Rows per task for `rows` rows of `row_len` elements.
fn rows_per_task(rows: usize, row_len: usize) -> usize {
    let total = rows * row_len;
    let tasks = (total / MIN_TASK).clamp(1, 4 * rayon::current_num_threads());
    rows.div_ceil(tasks).max(1)
}

vectorized! {
    fn sum_squares(x: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        let chunks = x.len() / 16;
        for c in 0..chunks {
            for t in 0..16 {
                acc[t] += x[c * 16 + t] * x[c * 16 + t];
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for v in &x[chunks * 16..] {
            sum += v * v;
        }
        sum
    }
}

vectorized! {
    fn rms_norm_rows(x: &[f32], weight: &[f32], y: &mut [f32], rms: &mut [f32], eps: f32) {
        let h = weight.len();
        for ((x, y), rms) in x.chunks_exact(h).zip(y.chunks_exact_mut(h)).zip(rms.iter_mut()) {
            *rms = (sum_squares(x) / h as f32 + eps).sqrt();
            let inv = 1.0 / *rms;
            for ((y, x), w) in y.iter_mut().zip(x).zip(weight) {
                *y = *x * inv * *w;
            }
        }
    }
}

/// RMSNorm over rows of `weight.len()`: returns `(y, rms)`.
pub fn rms_norm_forward(x: &[f32], weight: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let h = weight.len();
    let rows = x.len() / h;
    let mut y = vec![0f32; x.len()];
    let mut rms = vec![0f32; rows];
    let per = rows_per_task(rows, h);
    y.par_chunks_mut(per * h).zip(rms.par_chunks_mut(per)).zip(x.par_chunks(per * h)).for_each(|((y, rms), x)| {
        rms_norm_rows(x, weight, y, rms, eps);
    });
    (y, rms)
}

vectorized! {
    /// dx for a run of rows; adds `g * xhat` into `dw` when given.
    fn rms_norm_backward_rows(x: &[f32], weight: &[f32], rms: &[f32], grad: &[f32], dx: &mut [f32], dw: Option<&mut [f32]>) {
        let mut dw = dw;
        let h = weight.len();
        let rows = x.chunks_exact(h).zip(grad.chunks_exact(h)).zip(dx.chunks_exact_mut(h)).zip(rms);
        for (((x, g), dx), rms) in rows {
            let inv = 1.0 / *rms;
            // mean(xhat * w * g) with xhat = x * inv
            let mut acc = [0f32; 16];
            let chunks = h / 16;
            // Sixteen independent partial sums, so LLVM vectorises the loop.
            for c in 0..chunks {
                for (t, acc) in acc.iter_mut().enumerate() {
                    let j = c * 16 + t;
                    *acc += x[j] * weight[j] * g[j];
                }
            }
            let mut dot: f32 = acc.iter().sum();
            for j in chunks * 16..h {
                dot += x[j] * weight[j] * g[j];
            }
            let dot = dot * inv / h as f32;
            for j in 0..h {
                dx[j] = inv * (g[j] * weight[j] - x[j] * inv * dot);
            }
            if let Some(dw) = dw.as_deref_mut() {
                for j in 0..h {
                    dw[j] += g[j] * x[j] * inv;
                }
            }
        }
    }
}

/// RMSNorm backward from the saved `rms`: `(dx, dweight if asked)`.
pub fn rms_norm_backward(x: &[f32], weight: &[f32], rms: &[f32], grad: &[f32], weight_grad: bool) -> (Vec<f32>, Option<Vec<f32>>) {
    let h = weight.len();
    let rows = x.len() / h;
    let mut dx = vec![0f32; x.len()];
    let per = rows_per_task(rows, h);
    let partial_dw: Vec<Vec<f32>> = dx
        .par_chunks_mut(per * h)
        .zip(x.par_chunks(per * h).zip(grad.par_chunks(per * h)).zip(rms.par_chunks(per)))
        .map(|(dx, ((x, g), rms))| {
            let mut dw = if weight_grad { vec![0f32; h] } else { Vec::new() };
            rms_norm_backward_rows(x, weight, rms, g, dx, weight_grad.then_some(dw.as_mut_slice()));
            dw
        })
        .collect();
    let dw = weight_grad.then(|| {
        let mut dw = vec![0f32; h];
        for part in &partial_dw {
            add_into(&mut dw, part);
        }
        dw
    });
    (dx, dw)
}

vectorized! {
    fn add_into(dst: &mut [f32], src: &[f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += *s;
        }
    }
}

vectorized! {
    fn swiglu_chunk(gate: &[f32], up: &[f32], y: &mut [f32]) {
        for ((y, g), u) in y.iter_mut().zip(gate).zip(up) {
            *y = *g * sigmoid(*g) * *u;
        }
    }
}

/// `silu(gate) * up`.
pub fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; gate.len()];
    let per = rows_per_task(gate.len(), 1);
    y.par_chunks_mut(per).zip(gate.par_chunks(per).zip(up.par_chunks(per))).for_each(|(y, (g, u))| swiglu_chunk(g, u, y));
    y
}

vectorized! {
    fn swiglu_backward_chunk(gate: &[f32], up: &[f32], grad: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
        for i in 0..gate.len() {
            let (g, u, d) = (gate[i], up[i], grad[i]);
            let s = sigmoid(g);
            dgate[i] = d * u * s * (1.0 + g * (1.0 - s));
            dup[i] = d * g * s;
        }
    }
}

/// Gradients of `silu(gate) * up`: `(dgate, dup)`.
pub fn swiglu_backward(gate: &[f32], up: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dgate = vec![0f32; gate.len()];
    let mut dup = vec![0f32; gate.len()];
    let per = rows_per_task(gate.len(), 1);
    dgate
        .par_chunks_mut(per)
        .zip(dup.par_chunks_mut(per))
        .zip(gate.par_chunks(per).zip(up.par_chunks(per)).zip(grad.par_chunks(per)))
        .for_each(|((dg, du), ((g, u), d))| swiglu_backward_chunk(g, u, d, dg, du));
    (dgate, dup)
}

/// Sizes of a RoPE call.
#[derive(Debug, Clone, Copy)]
pub struct RopeShape {
    /// Batch rows.
    pub batch: usize,
    /// Positions per row.
    pub seq: usize,
    /// Heads.
    pub heads: usize,
    /// Per-head width (even).
    pub head_dim: usize,
    /// Whether the tables are `[batch, seq, half]` (else `[1, seq, half]`).
    pub per_row_tables: bool,
}

vectorized! {
    /// Rotates the heads of one position: `x` and `y` are `heads * head_dim` long.
    fn rope_position(x: &[f32], cos: &[f32], sin: &[f32], y: &mut [f32]) {
        let half = cos.len();
        for (x, y) in x.chunks_exact(2 * half).zip(y.chunks_exact_mut(2 * half)) {
            let (x1, x2) = x.split_at(half);
            let (y1, y2) = y.split_at_mut(half);
            for j in 0..half {
                y1[j] = x1[j] * cos[j] - x2[j] * sin[j];
                y2[j] = x2[j] * cos[j] + x1[j] * sin[j];
            }
        }
    }
}

/// Rotate-half RoPE of `[batch, seq, heads, head_dim]` with `[1 or batch, seq, head_dim / 2]`
/// tables.
pub fn rope(x: &[f32], cos: &[f32], sin: &[f32], s: RopeShape) -> Vec<f32> {
    let (row, half) = (s.heads * s.head_dim, s.head_dim / 2);
    let positions = s.batch * s.seq;
    let mut y = vec![0f32; x.len()];
    let per = rows_per_task(positions, row);
    y.par_chunks_mut(per * row).enumerate().for_each(|(task, y)| {
        for (offset, y) in y.chunks_exact_mut(row).enumerate() {
            let p = task * per + offset; // b * seq + t
            let table_row = if s.per_row_tables { p } else { p % s.seq };
            let table = table_row * half..(table_row + 1) * half;
            rope_position(&x[p * row..(p + 1) * row], &cos[table.clone()], &sin[table], y);
        }
    });
    y
}
