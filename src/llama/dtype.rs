//! The float type of a model's frozen base weights: f32, bf16 or f16, chosen per run
//! (`--dtype auto|f32|bf16|f16`).
//!
//! Only the frozen base weights (embeddings, the seven projections, the norms and the LM head)
//! are stored in it. Activations, LoRA A/B, gradients, optimiser state, the penalty and the
//! curvature statistics stay f32. How each step computes with a narrower weight (rounding to
//! what, accumulating in what) is written out in DESIGN-level detail in
//! `docs/precision.md`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use burn::tensor::{DType, FloatDType, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::KernelBackend;

/// The float type the frozen base weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// 32-bit float: the weights exactly as an f32 checkpoint holds them (bf16 checkpoints are
    /// widened exactly).
    #[default]
    F32,
    /// bfloat16, as most Llama checkpoints ship: half the memory of f32.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl WeightDtype {
    /// The names `--dtype` takes: `f32`, `bf16`, `f16`.
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::F16 => "f16",
        }
    }

    /// burn's dtype.
    pub fn dtype(self) -> DType {
        match self {
            WeightDtype::F32 => DType::F32,
            WeightDtype::Bf16 => DType::BF16,
            WeightDtype::F16 => DType::F16,
        }
    }

    /// burn's float dtype.
    pub fn float_dtype(self) -> FloatDType {
        self.dtype().into()
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::Bf16 | WeightDtype::F16 => 2,
        }
    }

    /// Host data converted to this type (f32 values rounded to nearest even, as
    /// `tensor.to(dtype)` in torch).
    pub fn convert(self, data: TensorData) -> TensorData {
        match self {
            WeightDtype::F32 => data.convert::<f32>(),
            WeightDtype::Bf16 => data.convert::<half::bf16>(),
            WeightDtype::F16 => data.convert::<half::f16>(),
        }
    }

    /// The type named by a checkpoint's `torch_dtype` (`float32`, `bfloat16`, `float16`);
    /// `None` for anything else.
    pub fn from_torch_name(name: &str) -> Option<Self> {
        match name {
            "float32" => Some(WeightDtype::F32),
            "bfloat16" => Some(WeightDtype::Bf16),
            "float16" => Some(WeightDtype::F16),
            _ => None,
        }
    }

    /// Checks that backend `B` can store and compute with this type on `device`: ndarray has
    /// neither bf16 nor f16, wgpu has f16 only where the adapter has `SHADER_F16` and no bf16.
    pub fn check_backend<B: KernelBackend>(self, device: &B::Device) -> Result<()> {
        if self == WeightDtype::F32 || B::supports_dtype(device, self.dtype()) {
            return Ok(());
        }
        Err(Error::arg(
            "dtype",
            format!(
                "the {} backend cannot store {} tensors on {device:?}; use --dtype f32 (or a backend that can: flex, cuda)",
                B::name(device),
                self
            ),
        ))
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a user asks for: one type, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DtypeChoice {
    /// The checkpoint's own `torch_dtype` on GPU backends, f32 on CPU backends (where bf16
    /// saves memory but is not faster: the products run in f32 anyway).
    #[default]
    Auto,
    /// This type, whatever the checkpoint holds.
    Exact(WeightDtype),
}

impl DtypeChoice {
    /// The type to load `model_dir`'s weights in on backend `B`, checked against what `B` can
    /// do. `auto` reads `torch_dtype` (or transformers 5's `dtype`) from `config.json`; a
    /// missing or unknown value means f32.
    pub fn resolve<B: KernelBackend>(self, model_dir: &Path, device: &B::Device) -> Result<WeightDtype> {
        self.resolve_with_config::<B>(&model_dir.join("config.json"), device)
    }

    /// [`Self::resolve`] with the `config.json` (or preset) file given directly.
    pub fn resolve_with_config<B: KernelBackend>(self, config_path: &Path, device: &B::Device) -> Result<WeightDtype> {
        let dtype = match self {
            DtypeChoice::Exact(dtype) => dtype,
            DtypeChoice::Auto if !B::GPU => WeightDtype::F32,
            DtypeChoice::Auto => declared_dtype(config_path)?.unwrap_or(WeightDtype::F32),
        };
        dtype.check_backend::<B>(device)?;
        Ok(dtype)
    }
}

impl FromStr for DtypeChoice {
    type Err = String;

    fn from_str(name: &str) -> std::result::Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "auto" => Ok(DtypeChoice::Auto),
            "f32" | "float32" | "fp32" => Ok(DtypeChoice::Exact(WeightDtype::F32)),
            "bf16" | "bfloat16" => Ok(DtypeChoice::Exact(WeightDtype::Bf16)),
            "f16" | "float16" | "fp16" | "half" => Ok(DtypeChoice::Exact(WeightDtype::F16)),
            _ => Err(format!("`{name}` is not one of auto, f32, bf16, f16")),
        }
    }
}

impl fmt::Display for DtypeChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DtypeChoice::Auto => f.write_str("auto"),
            DtypeChoice::Exact(dtype) => dtype.fmt(f),
        }
    }
}

/// The float type `config.json` in `model_dir` declares (`torch_dtype`, or `dtype` as
/// transformers 5 writes it), if it names one lalora can hold.
pub fn checkpoint_dtype(model_dir: &Path) -> Result<Option<WeightDtype>> {
    declared_dtype(&model_dir.join("config.json"))
}

fn declared_dtype(config_path: &Path) -> Result<Option<WeightDtype>> {
    let config: serde_json::Value = crate::io::read_json(config_path)?;
    let name = config.get("torch_dtype").or_else(|| config.get("dtype")).and_then(|v| v.as_str());
    Ok(name.and_then(WeightDtype::from_torch_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        assert_eq!("bf16".parse::<DtypeChoice>(), Ok(DtypeChoice::Exact(WeightDtype::Bf16)));
        assert_eq!("Float16".parse::<DtypeChoice>(), Ok(DtypeChoice::Exact(WeightDtype::F16)));
        assert_eq!("auto".parse::<DtypeChoice>(), Ok(DtypeChoice::Auto));
        let err = "f8".parse::<DtypeChoice>().unwrap_err();
        assert!(err.contains("`f8`") && err.contains("bf16"), "{err}");
        assert_eq!(DtypeChoice::Exact(WeightDtype::Bf16).to_string(), "bf16");
        assert_eq!(WeightDtype::from_torch_name("bfloat16"), Some(WeightDtype::Bf16));
        assert_eq!(WeightDtype::from_torch_name("int8"), None);
    }
}
