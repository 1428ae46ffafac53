//! Merged export: the adapters folded into the base weights (`W = W0 + s (B A - B0 A0)`),
//! written as a plain Hugging Face checkpoint that transformers (and lalora) load without
//! peft: safetensors shards with `model.safetensors.index.json` when the weights exceed the
//! shard size (one `model.safetensors` otherwise), `config.json` with the chosen
//! `torch_dtype`, and the tokenizer and generation files copied from the base model.
//!
//! Tensors are converted and written one shard at a time, so the export holds at most one
//! shard's bytes besides the model.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use safetensors::tensor::Dtype;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::safetensors::{write_encoded, EncodedTensor};
use crate::io::{read_json, write_atomic, write_json_atomic};
use crate::llama::Llama;

/// Files copied unchanged from the base model directory when present.
pub const COPIED_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "generation_config.json",
    "added_tokens.json",
];

/// Floating-point type of the exported weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum ExportDtype {
    /// 32-bit float (exact).
    F32,
    /// bfloat16, rounded to nearest even as `tensor.to(torch.bfloat16)` does.
    Bf16,
    /// IEEE half precision, rounded to nearest even.
    F16,
}

impl ExportDtype {
    /// Parses `f32`, `bf16` or `f16` (also `float32`, `bfloat16`, `float16`).
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(ExportDtype::F32),
            "bf16" | "bfloat16" => Ok(ExportDtype::Bf16),
            "f16" | "float16" | "fp16" | "half" => Ok(ExportDtype::F16),
            other => Err(Error::arg("dtype", format!("`{other}` is not one of f32, bf16, f16"))),
        }
    }

    /// The name transformers uses in `config.json` (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            ExportDtype::F32 => "float32",
            ExportDtype::Bf16 => "bfloat16",
            ExportDtype::F16 => "float16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ExportDtype::F32 => 4,
            ExportDtype::Bf16 | ExportDtype::F16 => 2,
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            ExportDtype::F32 => Dtype::F32,
            ExportDtype::Bf16 => Dtype::BF16,
            ExportDtype::F16 => Dtype::F16,
        }
    }

    /// Little-endian bytes of `values` in this dtype.
    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            ExportDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ExportDtype::Bf16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
            ExportDtype::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        }
    }
}

/// Parses a shard size the way transformers' `max_shard_size` reads it: `2GB` (10^9 bytes),
/// `2GiB` (2^30), `500MB`, `500MiB`, `100KB`, `100KiB`, or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "KIB" => 1 << 10,
        "MB" => 1_000_000,
        "MIB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GIB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "TIB" => 1 << 40,
        other => {
            return Err(Error::arg("max-shard-size", format!("unknown unit `{other}` in `{text}`; use KB, MB, GB, KiB, MiB, GiB or bytes")))
        }
    };
    let value: f64 = number.parse().map_err(|_| Error::arg("max-shard-size", format!("`{text}` is not a size like 2GB or 500MB")))?;
    let bytes = (value * factor as f64).round();
    if !(bytes >= 1.0 && bytes.is_finite()) {
        return Err(Error::arg("max-shard-size", format!("`{text}` must be at least one byte")));
    }
    Ok(bytes as u64)
}

/// Settings of a merged export.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MergeOptions {
    /// Dtype of the written weights.
    pub dtype: ExportDtype,
    /// Largest shard in bytes; a tensor larger than this gets a shard of its own.
    pub max_shard_bytes: u64,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions { dtype: ExportDtype::F32, max_shard_bytes: 5_000_000_000 }
    }
}

/// What [`save_merged`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeSummary {
    /// The weight files, in order.
    pub shards: Vec<PathBuf>,
    /// Bytes of tensor data over all shards.
    pub total_bytes: u64,
    /// Number of weights.
    pub parameters: u64,
    /// Files copied from the base model directory.
    pub copied: Vec<String>,
}

/// A weight of the model, by HF name, read on demand.
enum WeightRef<'a, B: Backend> {
    Matrix(&'a Param<Tensor<B, 2>>),
    Vector(&'a Param<Tensor<B, 1>>),
}

impl<B: Backend> WeightRef<'_, B> {
    fn shape(&self) -> Vec<usize> {
        match self {
            WeightRef::Matrix(p) => p.dims().to_vec(),
            WeightRef::Vector(p) => p.dims().to_vec(),
        }
    }
    fn data(&self) -> TensorData {
        match self {
            WeightRef::Matrix(p) => p.val().into_data(),
            WeightRef::Vector(p) => p.val().into_data(),
        }
    }
}

/// Every base weight of `model` with its HF name, in checkpoint order (as `base_tensors`).
fn weights<B: Backend>(model: &Llama<B>) -> Vec<(String, WeightRef<'_, B>)> {
    let mut out = vec![("model.embed_tokens.weight".to_string(), WeightRef::Matrix(&model.embed_tokens))];
    for (i, layer) in model.layers.iter().enumerate() {
        for (name, projection) in layer.projections() {
            out.push((format!("{}.weight", name.module_path(i)), WeightRef::Matrix(&projection.weight)));
        }
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), WeightRef::Vector(&layer.input_layernorm.weight)));
        out.push((format!("{p}.post_attention_layernorm.weight"), WeightRef::Vector(&layer.post_attention_layernorm.weight)));
    }
    out.push(("model.norm.weight".to_string(), WeightRef::Vector(&model.norm.weight)));
    if let Some(head) = &model.lm_head {
        out.push(("lm_head.weight".to_string(), WeightRef::Matrix(head)));
    }
    out
}

/// Groups tensors (in order) into shards of at most `max` bytes, as transformers does: a new
/// shard starts when the next tensor would overflow the current one.
fn plan_shards(sizes: &[u64], max: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        match shards.last_mut() {
            Some(shard) if current + size <= max => {
                shard.push(i);
                current += size;
            }
            _ => {
                shards.push(vec![i]);
                current = size;
            }
        }
    }
    shards
}

/// Folds `model`'s adapters into its weights and writes an HF checkpoint to `out`:
/// weights (sharded above `options.max_shard_bytes`), `config.json` from `base_dir` with
/// `torch_dtype` set, and the tokenizer and generation files of `base_dir` ([`COPIED_FILES`]).
/// Old checkpoint files in `out` (`model*.safetensors`, the index) are replaced. `out` must not
/// be `base_dir`.
pub fn save_merged<B: Backend>(model: Llama<B>, base_dir: &Path, out: &Path, options: &MergeOptions) -> Result<MergeSummary> {
    if same_dir(base_dir, out) {
        return Err(Error::arg("out", format!("{} is the base model's directory; write the merged model elsewhere", out.display())));
    }
    if options.max_shard_bytes == 0 {
        return Err(Error::arg("max-shard-size", "must be at least one byte"));
    }
    let config_path = base_dir.join("config.json");
    let mut config: Value = read_json(&config_path)?;
    let Some(object) = config.as_object_mut() else {
        return Err(Error::config(&config_path, "<document>", "not a JSON object"));
    };
    object.insert("torch_dtype".into(), options.dtype.torch_name().into());
    if object.contains_key("dtype") {
        object.insert("dtype".into(), options.dtype.torch_name().into());
    }

    let model = model.merge_adapters();
    let weights = weights(&model);
    let sizes: Vec<u64> = weights.iter().map(|(_, w)| (w.shape().iter().product::<usize>() * options.dtype.size()) as u64).collect();
    let plan = plan_shards(&sizes, options.max_shard_bytes);
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    remove_old_checkpoint(out)?;

    let count = plan.len();
    let mut shards = Vec::with_capacity(count);
    let mut weight_map = BTreeMap::new();
    for (index, members) in plan.iter().enumerate() {
        let file = if count == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{count:05}.safetensors", index + 1) };
        let encoded: Vec<(String, EncodedTensor)> = members
            .iter()
            .map(|&i| {
                let (name, weight) = &weights[i];
                let values: Vec<f32> = weight.data().convert::<f32>().to_vec().expect("float weights convert to f32");
                let tensor =
                    EncodedTensor { dtype: options.dtype.safetensors(), shape: weight.shape(), bytes: options.dtype.encode(&values) };
                (name.clone(), tensor)
            })
            .collect();
        for (name, _) in &encoded {
            weight_map.insert(name.clone(), file.clone());
        }
        let path = out.join(&file);
        let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        write_encoded(&path, &encoded, Some(metadata))?;
        shards.push(path);
    }
    let total_bytes: u64 = sizes.iter().sum();
    let parameters = total_bytes / options.dtype.size() as u64;
    if count > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": total_bytes, "total_parameters": parameters },
            "weight_map": weight_map,
        });
        write_json_atomic(&out.join("model.safetensors.index.json"), &index)?;
    }
    write_json_atomic(&out.join("config.json"), &config)?;
    let mut copied = Vec::new();
    for name in COPIED_FILES {
        let source = base_dir.join(name);
        if source.is_file() {
            let bytes = std::fs::read(&source).map_err(|e| Error::io(&source, e))?;
            write_atomic(&out.join(name), &bytes)?;
            copied.push(name.to_string());
        }
    }
    Ok(MergeSummary { shards, total_bytes, parameters, copied })
}

/// Whether two paths name the same existing directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Removes `model.safetensors`, `model-*-of-*.safetensors` and the index from `dir`, so a
/// re-export with fewer shards leaves no stale shard behind.
fn remove_old_checkpoint(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let shard = name.starts_with("model-") && name.contains("-of-") && name.ends_with(".safetensors");
        if shard || name == "model.safetensors" || name == "model.safetensors.index.json" {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1.5 KiB").unwrap(), 1536);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert!(parse_size("2XB").unwrap_err().to_string().contains("--max-shard-size: unknown unit `XB`"));
        assert!(parse_size("GB").unwrap_err().to_string().contains("is not a size"));
        assert!(parse_size("0MB").unwrap_err().to_string().contains("at least one byte"));
    }

    #[test]
    fn shards_fill_in_order_and_big_tensors_stand_alone() {
        assert_eq!(plan_shards(&[4, 4, 4, 4], 8), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(plan_shards(&[4, 20, 4, 3], 8), vec![vec![0], vec![1], vec![2, 3]]);
        assert_eq!(plan_shards(&[1, 2, 3], 100), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn dtypes_parse_and_round_to_nearest_even() {
        assert_eq!(ExportDtype::parse("bf16").unwrap(), ExportDtype::Bf16);
        assert_eq!(ExportDtype::parse("float16").unwrap().torch_name(), "float16");
        assert!(ExportDtype::parse("int8").unwrap_err().to_string().contains("--dtype: `int8` is not one of f32, bf16, f16"));
        // 1 + 2^-8 lies halfway between two bf16 values; ties go to the even mantissa (1.0).
        let bytes = ExportDtype::Bf16.encode(&[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0]);
        assert_eq!(bytes, [0x80, 0x3f, 0x82, 0x3f]);
    }
}
