//! Compile-time backend selection for lalora.
//!
//! The `lalora` library is generic over `B: Backend`; this crate is the one place that names a
//! concrete backend. Each cargo feature enables one backend module (`flex`, `ndarray`, `wgpu`,
//! `cuda`), and the crate root re-exports the *selected* one as [`Backend`], [`device`] and
//! [`NAME`], so binaries and examples write `lalora_backends::Backend` and never change.
//!
//! Selection when several features are on: a GPU backend (`cuda` or `wgpu`) wins over the CPU
//! ones, and `ndarray` wins over `flex` (which is on by default, so `--features ndarray` means
//! "ndarray"). `cuda` and `wgpu` together are a compile error: there is no sensible silent pick.
//!
//! Every enabled backend also stays reachable by name (`lalora_backends::ndarray::Backend`), so
//! one test binary can run the same cases on several backends.

#![warn(missing_docs)]

#[cfg(all(feature = "cuda", feature = "wgpu"))]
compile_error!("features `cuda` and `wgpu` select two GPU backends at once; enable exactly one of them");

#[cfg(not(any(feature = "flex", feature = "ndarray", feature = "wgpu", feature = "cuda")))]
compile_error!("lalora-backends needs one backend feature: flex, ndarray, wgpu or cuda");

/// The autodiff wrapper used for training on any backend.
pub use burn::backend::Autodiff;

pub mod kernels;
pub use kernels::{frozen_matmul, AttentionMask, KernelAutodiffBackend, KernelBackend, HEAD_ROWS_PER_WIDENING};

/// burn's portable CPU backend (gemm-based, multi-threaded). The default.
#[cfg(feature = "flex")]
pub mod flex {
    /// The tensor backend.
    /// Its kernels: `crate::kernels::flex`.
    pub type Backend = burn_flex::Flex<f32, i32>;
    /// Human-readable backend name, as printed in reports.
    pub const NAME: &str = "flex";
    /// The default device.
    pub fn device() -> burn_flex::FlexDevice {
        burn_flex::FlexDevice
    }
    /// Whether a device can be used on this machine (the CPU always can).
    pub fn available() -> bool {
        true
    }
}

/// The ndarray CPU backend.
#[cfg(feature = "ndarray")]
pub mod ndarray {
    /// The tensor backend.
    pub type Backend = burn_ndarray::NdArray<f32, i64>;

    impl crate::KernelBackend for Backend {}
    /// Human-readable backend name, as printed in reports.
    pub const NAME: &str = "ndarray";
    /// The default device.
    pub fn device() -> burn_ndarray::NdArrayDevice {
        burn_ndarray::NdArrayDevice::Cpu
    }
    /// Whether a device can be used on this machine (the CPU always can).
    pub fn available() -> bool {
        true
    }
}

/// The wgpu backend: Vulkan, Metal, DirectX 12 or WebGPU through wgpu (llvmpipe works too).
#[cfg(feature = "wgpu")]
pub mod wgpu {
    /// The tensor backend.
    /// Its kernels: `crate::kernels::cubecl`.
    pub type Backend = burn_wgpu::Wgpu<f32, i32>;
    /// Human-readable backend name, as printed in reports.
    pub const NAME: &str = "wgpu";
    /// The default device: the best adapter wgpu finds.
    pub fn device() -> burn_wgpu::WgpuDevice {
        burn_wgpu::WgpuDevice::default()
    }
    /// Whether wgpu finds an adapter here. wgpu panics on its first operation when there is
    /// none, so the probe runs one tiny operation and catches that.
    pub fn available() -> bool {
        use burn::tensor::Tensor;
        std::panic::catch_unwind(|| {
            Tensor::<Backend, 1>::zeros([1], &device()).into_data();
        })
        .is_ok()
    }
}

/// The CUDA backend (NVIDIA GPUs).
#[cfg(feature = "cuda")]
pub mod cuda {
    /// The tensor backend.
    /// Its kernels: `crate::kernels::cubecl`.
    pub type Backend = burn_cuda::Cuda<f32, i32>;
    /// Human-readable backend name, as printed in reports.
    pub const NAME: &str = "cuda";
    /// The default device: GPU 0.
    pub fn device() -> burn_cuda::CudaDevice {
        burn_cuda::CudaDevice::default()
    }
    /// Whether a CUDA device answers here.
    pub fn available() -> bool {
        use burn::tensor::Tensor;
        std::panic::catch_unwind(|| {
            Tensor::<Backend, 1>::zeros([1], &device()).into_data();
        })
        .is_ok()
    }
}

#[cfg(feature = "cuda")]
pub use cuda as selected;
#[cfg(all(feature = "flex", not(any(feature = "cuda", feature = "wgpu", feature = "ndarray"))))]
pub use flex as selected;
#[cfg(all(feature = "ndarray", not(any(feature = "cuda", feature = "wgpu"))))]
pub use ndarray as selected;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub use wgpu as selected;

/// The backend selected by the enabled cargo features (see the crate docs for the rule).
pub type Backend = selected::Backend;
/// The selected backend with autodiff, for training.
pub type AutodiffBackend = Autodiff<Backend>;
/// The selected backend's name.
pub const NAME: &str = selected::NAME;

/// The selected backend's default device.
pub fn device() -> burn::tensor::Device<Backend> {
    selected::device()
}
