//! The LoRA projection as one kernel: each product is one `gemm` call on the f32 buffers, the
//! adapter's update accumulated into the base product's output (and in the backward `h A`
//! into `grad W`), so no full-size add and no intermediate of the output's size is made.

use super::gemm::{matmul, Mat};

/// Sizes of a LoRA projection.
#[derive(Debug, Clone, Copy)]
pub struct LoraDims {
    /// Rows of x (batch x seq).
    pub tokens: usize,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// Adapter rank.
    pub rank: usize,
}

/// `(y, z)` with `z = x A^T` and `y = x W^T + scale z B^T`.
pub fn forward(x: &[f32], w: &[f32], a: &[f32], b: &[f32], scale: f32, d: LoraDims) -> (Vec<f32>, Vec<f32>) {
    let mut z = vec![0f32; d.tokens * d.rank];
    let mut y = vec![0f32; d.tokens * d.d_out];
    // SAFETY: every buffer has the size its shape says; outputs do not alias inputs.
    unsafe {
        matmul(d.tokens, d.rank, d.d_in, z.as_mut_ptr(), d.rank, false, Mat::rows(x, d.d_in), Mat::rows(a, d.d_in).t(), 1.0, true);
        matmul(d.tokens, d.d_out, d.d_in, y.as_mut_ptr(), d.d_out, false, Mat::rows(x, d.d_in), Mat::rows(w, d.d_in).t(), 1.0, true);
        matmul(d.tokens, d.d_out, d.rank, y.as_mut_ptr(), d.d_out, true, Mat::rows(&z, d.rank), Mat::rows(b, d.rank).t(), scale, true);
    }
    (y, z)
}

/// Gradients of [`forward`] given `grad = dL/dy`, for the inputs flagged in `needs`
/// (x, weight, a, b).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    z: &[f32],
    grad: &[f32],
    scale: f32,
    d: LoraDims,
    needs: [bool; 4],
) -> [Option<Vec<f32>>; 4] {
    let grad_rows = Mat::rows(grad, d.d_out);
    // h = scale grad B, [tokens, rank]
    let mut h = vec![0f32; d.tokens * d.rank];
    // SAFETY (all products): buffers have the sizes their shapes say; outputs are fresh.
    unsafe { matmul(d.tokens, d.rank, d.d_out, h.as_mut_ptr(), d.rank, false, grad_rows, Mat::rows(b, d.rank), scale, true) };
    let dx = needs[0].then(|| {
        let mut dx = vec![0f32; d.tokens * d.d_in];
        unsafe {
            matmul(d.tokens, d.d_in, d.d_out, dx.as_mut_ptr(), d.d_in, false, grad_rows, Mat::rows(w, d.d_in), 1.0, true);
            matmul(d.tokens, d.d_in, d.rank, dx.as_mut_ptr(), d.d_in, true, Mat::rows(&h, d.rank), Mat::rows(a, d.d_in), 1.0, true);
        }
        dx
    });
    let dw = needs[1].then(|| {
        let mut dw = vec![0f32; d.d_out * d.d_in];
        unsafe { matmul(d.d_out, d.d_in, d.tokens, dw.as_mut_ptr(), d.d_in, false, grad_rows.t(), Mat::rows(x, d.d_in), 1.0, true) };
        dw
    });
    let da = needs[2].then(|| {
        let mut da = vec![0f32; d.rank * d.d_in];
        unsafe {
            matmul(d.rank, d.d_in, d.tokens, da.as_mut_ptr(), d.d_in, false, Mat::rows(&h, d.rank).t(), Mat::rows(x, d.d_in), 1.0, true)
        };
        da
    });
    let db = needs[3].then(|| {
        let mut db = vec![0f32; d.d_out * d.rank];
        unsafe { matmul(d.d_out, d.rank, d.tokens, db.as_mut_ptr(), d.rank, false, grad_rows.t(), Mat::rows(z, d.rank), scale, true) };
        db
    });
    [dx, dw, da, db]
}
