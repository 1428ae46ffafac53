//! LoRA logits equal peft's for the same adapter (scripts/make_fixtures.py, peft 0.21.2, B != 0),
//! and lalora's PEFT export has peft's names and shapes and loads back unchanged.

mod common;

use common::*;
use lalora::io::{peft, TensorFiles};
use lalora::llama::Llama;
use lalora::{LoraConfig, LoraInit};

const LOGIT_ATOL: f32 = 1e-4;

fn check_adapter(case: &str) {
    let dir = fixture(&format!("peft/{case}"));
    let reference = Reference::load(&dir);
    let base = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap();
    let (model, info) = peft::load_adapter(base, &dir).unwrap();
    assert!(model.adapters().iter().all(|a| a.lora_b.val().abs().max().into_scalar() > 0.0), "B must be non-zero");
    reference.assert_logits_equal(&model, &device(), case, LOGIT_ATOL);
    // The adapter matters: the base model's logits are far from peft's.
    let base = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap();
    let (ids, mask) = reference.tensors::<TestBackend>(&device());
    let base_logits = row_logits(&base.forward(ids, Some(mask)), 0, reference.lengths()[0]);
    let gap = base_logits.iter().zip(reference.row_logits(0)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(gap > 0.1, "adapter changes logits by only {gap}");
    let _ = info;
}

#[test]
fn all_seven_targets_equal_peft() {
    check_adapter("all7");
}

#[test]
fn rslora_on_q_and_v_equals_peft() {
    check_adapter("rslora_qv");
    let base = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap();
    let (model, info) = peft::load_adapter(base, &fixture("peft/rslora_qv")).unwrap();
    assert!(info.lora.rslora);
    assert_eq!(model.adapters().len(), 2 * 2, "q and v in two layers");
    assert_eq!(model.adapters()[0].scale, 4.0, "alpha 8 / sqrt(4)");
}

#[test]
fn merged_model_equals_adapter_model() {
    let reference = Reference::load(&fixture("peft/all7"));
    let base = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap();
    let (model, _) = peft::load_adapter(base, &fixture("peft/all7")).unwrap();
    let merged = model.merge_adapters();
    assert!(merged.adapters().is_empty());
    let (ids, mask) = reference.tensors::<TestBackend>(&device());
    let logits = merged.forward(ids, Some(mask));
    assert_close_report("merged", &row_logits(&logits, 0, 12), &reference.row_logits(0), LOGIT_ATOL);
}

#[test]
fn export_uses_peft_names_shapes_and_config_keys() {
    let base = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap();
    let (model, info) = peft::load_adapter(base, &fixture("peft/all7")).unwrap();
    let out = temp_dir("peft-export");
    peft::save_adapter(&model, &info.lora, &out).unwrap();

    let ours = TensorFiles::open_file(&out.join("adapter_model.safetensors")).unwrap();
    let theirs = TensorFiles::open_file(&fixture("peft/all7/adapter_model.safetensors")).unwrap();
    assert_eq!(ours.names(), theirs.names());
    for name in theirs.names() {
        assert_eq!(ours.shape(&name).unwrap(), theirs.shape(&name).unwrap(), "{name}");
        let (a, b) = (ours.read_f32_any(&name).unwrap(), theirs.read_f32_any(&name).unwrap());
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap(), "{name} round trip");
    }
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    for key in ["peft_type", "r", "lora_alpha", "target_modules", "use_rslora", "task_type", "bias", "fan_in_fan_out"] {
        assert!(config.get(key).is_some(), "adapter_config.json lacks {key}");
    }
    assert_eq!(config["r"], 4);
    assert_eq!(config["peft_type"], "LORA");
}

#[test]
fn offset_adapter_saves_as_rank_2r_with_the_same_function_and_reloads_exactly() {
    let lora = LoraConfig { init: LoraInit::Offset, rank: 3, alpha: 6.0, seed: 5, ..Default::default() };
    let model = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap().with_adapters(&lora).unwrap();
    // Train-like change: B away from B0, so the update is non-zero.
    let mut model = model;
    for a in model.adapters_mut() {
        a.lora_b = lalora::lora::trainable_param(a.lora_b.val().mul_scalar(1.5), "x");
    }
    let reference = Reference::load(&fixture("llama/gqa"));
    let (ids, mask) = reference.tensors::<TestBackend>(&device());
    let before = row_logits(&model.forward(ids.clone(), Some(mask.clone())), 0, 12);

    let out = temp_dir("peft-offset");
    peft::save_adapter(&model, &lora, &out).unwrap();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["r"], 6, "rank-2r adapter");
    assert_eq!(config["lora_alpha"], 12.0, "alpha doubled so s is unchanged");

    // Read as a plain PEFT adapter (no sidecar), it computes the same function.
    let plain = temp_dir("peft-offset-plain");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(out.join(f), plain.join(f)).unwrap();
    }
    let base = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap();
    let (as_peft, info) = peft::load_adapter(base, &plain).unwrap();
    assert_eq!(info.lora.rank, 6);
    assert_close_report("rank-2r", &row_logits(&as_peft.forward(ids.clone(), Some(mask.clone())), 0, 12), &before, 1e-5);

    // For scripts/check_peft_export.py: the export plus lalora's logits, at a fixed path.
    let check = std::env::temp_dir().join("lalora-peft-export-check");
    let _ = std::fs::remove_dir_all(&check);
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::create_dir_all(&check).unwrap();
        std::fs::copy(out.join(f), check.join(f)).unwrap();
    }
    let logits = as_peft.forward(ids.clone(), Some(mask.clone())).into_data();
    lalora::io::save_tensors(&check.join("lalora_logits.safetensors"), vec![("logits".into(), logits)], None).unwrap();

    // With the sidecar, lalora gets back the trainable pair and the frozen offset.
    let base = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap();
    let (reloaded, info) = peft::load_adapter(base, &out).unwrap();
    assert_eq!((info.lora.rank, info.lora.init), (3, LoraInit::Offset));
    assert!(reloaded.adapters().iter().all(|a| a.offset.is_some() && a.rank() == 3));
    assert_close_report("offset reload", &row_logits(&reloaded.forward(ids, Some(mask)), 0, 12), &before, 1e-5);
}

#[test]
fn bad_adapters_name_file_and_field() {
    let dir = copy_fixture("peft/all7", "peft-bad-config");
    std::fs::write(dir.join("adapter_config.json"), r#"{"peft_type": "LORA", "lora_alpha": 8}"#).unwrap();
    let base = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap();
    let err = peft::load_adapter(base, &dir).unwrap_err().to_string();
    assert!(err.contains("adapter_config.json") && err.contains("`r`"), "{err}");

    let dir = copy_fixture("peft/all7", "peft-dora");
    let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap().replace("\"use_dora\": false", "\"use_dora\": true");
    std::fs::write(dir.join("adapter_config.json"), text).unwrap();
    let base = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap();
    let err = peft::load_adapter(base, &dir).unwrap_err().to_string();
    assert!(err.contains("use_dora"), "{err}");

    // The adapter belongs to a model with other shapes.
    let base = Llama::<TestBackend>::load(&fixture("llama/head_dim"), &device()).unwrap();
    let err = peft::load_adapter(base, &fixture("peft/all7")).unwrap_err().to_string();
    assert!(err.contains(".lora_B.weight") && err.contains("[64, 4]") && err.contains("[128, 4]"), "{err}");
}
