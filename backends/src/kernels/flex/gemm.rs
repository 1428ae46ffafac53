//! Thin helpers over the `gemm` crate (the matrix-product kernels burn-flex itself uses).

/// A strided matrix operand: element (i, j) at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub struct Mat {
    /// First element.
    pub ptr: *const f32,
    /// Row stride.
    pub rs: isize,
    /// Column stride.
    pub cs: isize,
}

impl Mat {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &[f32], cols: usize) -> Self {
        Mat { ptr: data.as_ptr(), rs: cols as isize, cs: 1 }
    }

    /// The transpose (a view).
    pub fn t(self) -> Self {
        Mat { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
}

/// Products with at least this many multiply-adds use gemm's own threads (burn-flex's threshold).
const PARALLEL_OPS: usize = 192 * 192 * 192;

/// `dst (m x n, row stride dst_rs) = [dst +] beta * lhs (m x k) rhs (k x n)`. With `threaded`,
/// gemm splits the product over rayon's pool when it is large enough; otherwise it runs on the
/// calling thread (for callers that are themselves parallel tasks).
///
/// # Safety
/// The pointers must be valid for the given sizes and strides, and `dst` must not overlap the
/// operands.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    beta: f32,
    threaded: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                std::slice::from_raw_parts_mut(dst.add(r * dst_rs), n).fill(0.0);
            }
        }
        return;
    }
    let parallelism = if threaded && m * n * k >= PARALLEL_OPS { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        1.0,
        beta,
        false,
        false,
        false,
        parallelism,
    );
}

/// A raw pointer that may cross threads: tasks write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
pub struct SharedMut(*mut f32);
// SAFETY: every task writes a disjoint set of elements (documented at each use).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// Wraps the buffer's pointer.
    pub fn new(data: &mut [f32]) -> Self {
        SharedMut(data.as_mut_ptr())
    }

    /// The pointer at `offset` (a method, so closures capture the whole `Send` wrapper).
    pub fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}
