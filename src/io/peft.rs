//! PEFT adapter directories: `adapter_config.json` plus `adapter_model.safetensors`, named as
//! peft names them (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`).
//!
//! An offset-init adapter (`y = W0 x + s (B A - B0 A0) x`) is written as the rank-2r adapter
//! `A' = [A; A0]`, `B' = [B, -B0]` with alpha scaled so s is unchanged; peft computes the same
//! output. A small sidecar, `lalora_adapter.json`, lets lalora split it back into the trainable
//! pair and the frozen offset.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::{read_json, save_tensors, write_json_atomic, TensorFiles};
use crate::llama::{Llama, Projection};
use crate::lora::{frozen_param, lora_scale, trainable_param, LoraAdapter, LoraConfig, LoraInit, LoraOffset};

const CONFIG_FILE: &str = "adapter_config.json";
const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const SIDECAR_FILE: &str = "lalora_adapter.json";
const PREFIX: &str = "base_model.model.";

/// The fields of `adapter_config.json` lalora reads; the rest is ignored on load.
#[derive(Debug, Clone, Deserialize)]
struct PeftConfigIn {
    peft_type: Option<String>,
    r: Option<usize>,
    lora_alpha: Option<f64>,
    #[serde(default)]
    lora_dropout: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    bias: Option<String>,
    #[serde(default)]
    rank_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, serde_json::Value>,
    /// A list of module names (matched as peft does: the whole path or its last parts), or a
    /// string: `all-linear`, or a regular expression (not checked).
    #[serde(default)]
    target_modules: Option<serde_json::Value>,
    /// A layer index or a list of them; null: every layer.
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
}

/// lalora's note beside an offset adapter: how to split the rank-2r PEFT tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sidecar {
    init: LoraInit,
    rank: usize,
    alpha: f64,
    rslora: bool,
    seed: u64,
}

/// What a loaded adapter directory says about its adapters.
#[derive(Debug, Clone)]
pub struct PeftAdapterInfo {
    /// The LoRA settings (rank and alpha of the trainable part; targets found in the file).
    pub lora: LoraConfig,
}

/// Loads the adapter directory `dir` into `model`, replacing its adapters. Targets come from
/// the tensors present; shapes are checked against the model.
pub fn load_adapter<B: Backend>(model: Llama<B>, dir: &Path) -> Result<(Llama<B>, PeftAdapterInfo)> {
    let config_path = dir.join(CONFIG_FILE);
    let raw: PeftConfigIn = read_json(&config_path)?;
    if let Some(kind) = &raw.peft_type {
        if kind != "LORA" {
            return Err(Error::config(&config_path, "peft_type", format!("`{kind}` is not LORA")));
        }
    }
    let unsupported = [
        (raw.use_dora, "use_dora", "DoRA adapters are not supported"),
        (raw.fan_in_fan_out, "fan_in_fan_out", "only the Llama (not GPT-2 Conv1D) layout is supported"),
        (!raw.rank_pattern.is_empty(), "rank_pattern", "per-module ranks are not supported"),
        (!raw.alpha_pattern.is_empty(), "alpha_pattern", "per-module alphas are not supported"),
        (raw.bias.as_deref().is_some_and(|b| b != "none"), "bias", "adapter biases are not supported"),
    ];
    if let Some((_, field, reason)) = unsupported.iter().find(|(bad, ..)| *bad) {
        return Err(Error::config(&config_path, *field, *reason));
    }
    let file_rank = raw.r.ok_or_else(|| Error::config(&config_path, "r", "missing"))?;
    let file_alpha = raw.lora_alpha.ok_or_else(|| Error::config(&config_path, "lora_alpha", "missing"))?;

    let sidecar_path = dir.join(SIDECAR_FILE);
    let sidecar: Option<Sidecar> = if sidecar_path.exists() { Some(read_json(&sidecar_path)?) } else { None };
    let offset_rank = match &sidecar {
        Some(s) if s.init == LoraInit::Offset => {
            if file_rank != 2 * s.rank {
                return Err(Error::Mismatch {
                    path: sidecar_path.clone(),
                    reason: format!("offset adapter of rank {} should be stored with r = {}, found {file_rank}", s.rank, 2 * s.rank),
                });
            }
            Some(s.rank)
        }
        _ => None,
    };
    let scale = lora_scale(file_alpha, file_rank, raw.use_rslora);

    let weights_path = dir.join(WEIGHTS_FILE);
    let files = TensorFiles::open_file(&weights_path)?;
    let device = model.embed_tokens.device();
    let mut model = model;
    let mut targets: Vec<Projection> = Vec::new();
    for (i, layer) in model.layers.iter_mut().enumerate() {
        for (name, projection) in layer.projections_mut() {
            let path = name.module_path(i);
            let a_name = format!("{PREFIX}{path}.lora_A.weight");
            let b_name = format!("{PREFIX}{path}.lora_B.weight");
            if !files.contains(&a_name) {
                projection.adapter = None;
                continue;
            }
            let [d_out, d_in] = projection.dims();
            let a: Tensor<B, 2> = Tensor::from_data(files.read_f32(&a_name, &[file_rank, d_in])?, &device);
            let b: Tensor<B, 2> = Tensor::from_data(files.read_f32(&b_name, &[d_out, file_rank])?, &device);
            let (a, b, offset) = match offset_rank {
                None => (a, b, None),
                Some(r) => {
                    let offset = LoraOffset {
                        lora_a: frozen_param(a.clone().narrow(0, r, r)),
                        lora_b: frozen_param(b.clone().narrow(1, r, r).neg()),
                    };
                    (a.narrow(0, 0, r), b.narrow(1, 0, r), Some(offset))
                }
            };
            projection.adapter = Some(LoraAdapter {
                layer: i,
                projection: name,
                lora_a: trainable_param(a, &format!("{path}.lora_A")),
                lora_b: trainable_param(b, &format!("{path}.lora_B")),
                offset,
                scale,
                dropout: raw.lora_dropout,
            });
            if !targets.contains(&name) {
                targets.push(name);
            }
        }
    }
    // Every lora tensor in the file must have found a module.
    let known: usize = model.adapters().len() * 2;
    let in_file = files.names().iter().filter(|n| n.contains(".lora_")).count();
    if known != in_file {
        let stray = files
            .names()
            .into_iter()
            .find(|n| n.contains(".lora_") && !model.adapters().iter().any(|a| n.starts_with(&format!("{PREFIX}{}.", a.path()))))
            .unwrap_or_default();
        return Err(Error::Mismatch { path: weights_path, reason: format!("tensor `{stray}` matches no projection of this model") });
    }
    if targets.is_empty() {
        return Err(Error::EmptyData { path: weights_path, reason: "holds no lora_A/lora_B tensors".into() });
    }
    check_declared_modules(&raw, &config_path, &model)?;
    let lora = match &sidecar {
        Some(s) => {
            LoraConfig { rank: s.rank, alpha: s.alpha, rslora: s.rslora, dropout: raw.lora_dropout, targets, init: s.init, seed: s.seed }
        }
        None => LoraConfig {
            rank: file_rank,
            alpha: file_alpha,
            rslora: raw.use_rslora,
            dropout: raw.lora_dropout,
            targets,
            init: LoraInit::Peft,
            seed: 0,
        },
    };
    Ok((model, PeftAdapterInfo { lora }))
}

/// The adapters found in the weights are the ones `adapter_config.json` declares: every
/// module `target_modules` names in every layer of `layers_to_transform` has tensors, and no
/// other module has. A regular-expression `target_modules` is not checked.
fn check_declared_modules<B: Backend>(raw: &PeftConfigIn, config_path: &Path, model: &Llama<B>) -> Result<()> {
    let bad = |field: &str, reason: String| Err(Error::config(config_path, field, reason));
    let names: Option<Vec<String>> = match &raw.target_modules {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s == "all-linear" => Some(Projection::ALL.iter().map(|p| p.hf_name().to_string()).collect()),
        Some(serde_json::Value::String(_)) => None,
        Some(serde_json::Value::Array(items)) => {
            let names: Option<Vec<String>> = items.iter().map(|v| v.as_str().map(str::to_string)).collect();
            match names {
                Some(names) => Some(names),
                None => return bad("target_modules", "must be a list of module names or a string".into()),
            }
        }
        Some(other) => return bad("target_modules", format!("must be a list of module names or a string, not {other}")),
    };
    let layers: Option<Vec<usize>> = match &raw.layers_to_transform {
        None | Some(serde_json::Value::Null) => None,
        Some(v) if v.is_u64() => v.as_u64().map(|i| vec![i as usize]),
        Some(serde_json::Value::Array(items)) => match items.iter().map(|v| v.as_u64().map(|i| i as usize)).collect() {
            Some(layers) => Some(layers),
            None => return bad("layers_to_transform", "must be a layer index or a list of them".into()),
        },
        Some(other) => return bad("layers_to_transform", format!("must be a layer index or a list of them, not {other}")),
    };
    let Some(names) = names else { return Ok(()) };
    for (i, layer) in model.layers.iter().enumerate() {
        for (projection, linear) in layer.projections() {
            let path = projection.module_path(i);
            // peft's rule: a target matches the whole module path or its tail after a dot.
            let named = names.iter().any(|n| path == *n || path.ends_with(&format!(".{n}")));
            let declared = named && layers.as_ref().is_none_or(|l| l.contains(&i));
            match (declared, linear.adapter.is_some()) {
                (true, false) => {
                    return bad("target_modules", format!("declares `{path}`, but adapter_model.safetensors has no lora tensors for it"))
                }
                (false, true) if !named => {
                    return bad("target_modules", format!("does not name `{path}`, but adapter_model.safetensors has lora tensors for it"))
                }
                (false, true) => {
                    return bad(
                        "layers_to_transform",
                        format!("leaves out layer {i}, but adapter_model.safetensors has lora tensors for `{path}`"),
                    )
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Writes the model's adapters to `dir` in PEFT's layout (config, weights, and for an offset
/// adapter the sidecar). Each file is written atomically.
pub fn save_adapter<B: Backend>(model: &Llama<B>, lora: &LoraConfig, dir: &Path) -> Result<()> {
    let adapters = model.adapters();
    if adapters.is_empty() {
        return Err(Error::arg("adapter", "the model has no adapters to save"));
    }
    let offset = adapters.iter().any(|a| a.offset.is_some());
    let mut tensors = Vec::with_capacity(2 * adapters.len());
    for adapter in &adapters {
        let (a, b) = match &adapter.offset {
            None => (adapter.lora_a.val(), adapter.lora_b.val()),
            Some(o) => (
                Tensor::cat(vec![adapter.lora_a.val(), o.lora_a.val()], 0),       // [2r, d_in]
                Tensor::cat(vec![adapter.lora_b.val(), o.lora_b.val().neg()], 1), // [d_out, 2r]
            ),
        };
        let path = adapter.path();
        tensors.push((format!("{PREFIX}{path}.lora_A.weight"), a.into_data()));
        tensors.push((format!("{PREFIX}{path}.lora_B.weight"), b.into_data()));
    }
    // With the offset stored as extra rank, alpha grows so the scale stays s.
    let (r, alpha) = if offset {
        let grow = if lora.rslora { 2f64.sqrt() } else { 2.0 };
        (2 * lora.rank, lora.alpha * grow)
    } else {
        (lora.rank, lora.alpha)
    };
    let mut targets: Vec<&str> = lora.targets.iter().map(|t| t.hf_name()).collect();
    targets.sort();
    let config = serde_json::json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": null,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": alpha,
        "lora_dropout": lora.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": lora.rslora,
    });
    let metadata = [("format".to_string(), "pt".to_string())].into_iter().collect();
    save_tensors(&dir.join(WEIGHTS_FILE), tensors, Some(metadata))?;
    write_json_atomic(&dir.join(CONFIG_FILE), &config)?;
    let sidecar_path = dir.join(SIDECAR_FILE);
    if offset {
        let sidecar = Sidecar { init: LoraInit::Offset, rank: lora.rank, alpha: lora.alpha, rslora: lora.rslora, seed: lora.seed };
        write_json_atomic(&sidecar_path, &sidecar)?;
    } else if sidecar_path.exists() {
        std::fs::remove_file(&sidecar_path).map_err(|e| Error::io(&sidecar_path, e))?;
    }
    Ok(())
}
