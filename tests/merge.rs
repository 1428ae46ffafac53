//! Merged export: the folded checkpoint computes the adapter model's logits (and peft's, from
//! the fixture), shards with an index that `Llama::load` reads back, bf16/f16 rounding as torch
//! does it, config and tokenizer files alongside. Leaves exports for scripts/check_merge.py.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use lalora::io::merge::{save_merged, ExportDtype, MergeOptions};
use lalora::io::{peft, TensorFiles};
use lalora::llama::Llama;

const LOGIT_ATOL: f32 = 1e-4;

fn adapter_model() -> Llama<TestBackend> {
    let base = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap();
    peft::load_adapter(base, &fixture("peft/all7")).unwrap().0
}

/// The gqa fixture plus the chat fixture's tokenizer files, as a complete base directory.
fn base_dir(name: &str) -> PathBuf {
    let dir = copy_fixture("llama/gqa", name);
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("chat").join(f), dir.join(f)).unwrap();
    }
    dir
}

fn logits(model: &Llama<TestBackend>, reference: &Reference) -> Vec<f32> {
    let (ids, mask) = reference.tensors::<TestBackend>(&device());
    model.forward(ids, Some(mask)).into_data().to_vec().unwrap()
}

/// The dtype of every tensor in a safetensors file.
fn dtypes(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    metadata.tensors().values().map(|t| format!("{:?}", t.dtype)).collect()
}

/// For scripts/check_merge.py: an export under $TMPDIR/lalora-merge-check/<name>, with the
/// logits lalora computes from it on the fixture batch (`lalora_logits.safetensors`).
fn keep_for_script(name: &str, dir: &Path, reference: &Reference) {
    let check = std::env::temp_dir().join("lalora-merge-check").join(name);
    let _ = std::fs::remove_dir_all(&check);
    std::fs::create_dir_all(&check).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), check.join(entry.file_name())).unwrap();
    }
    let merged = Llama::<TestBackend>::load(dir, &device()).unwrap();
    let (ids, mask) = reference.tensors::<TestBackend>(&device());
    let logits = merged.forward(ids, Some(mask)).into_data();
    lalora::io::save_tensors(&check.join("lalora_logits.safetensors"), vec![("logits".into(), logits)], None).unwrap();
}

#[test]
fn sharded_f32_export_loads_back_with_the_adapter_models_logits() {
    let reference = Reference::load(&fixture("peft/all7"));
    let model = adapter_model();
    let with_adapter = logits(&model, &reference);
    let base = base_dir("merge-base");
    let out = temp_dir("merge-f32");
    let options = MergeOptions { dtype: ExportDtype::F32, max_shard_bytes: 120_000 };
    let summary = save_merged(model, &base, &out, &options).unwrap();

    assert!(summary.shards.len() >= 3, "{:?}", summary.shards);
    let count = summary.shards.len();
    for (i, shard) in summary.shards.iter().enumerate() {
        assert_eq!(shard.file_name().unwrap().to_string_lossy(), format!("model-{:05}-of-{count:05}.safetensors", i + 1));
        assert!(dtypes(shard).iter().all(|d| d == "F32"));
    }
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    let files = TensorFiles::open_dir(&out).unwrap();
    let names = files.names();
    assert_eq!(index["weight_map"].as_object().unwrap().len(), names.len());
    let bytes: u64 = names.iter().map(|n| files.shape(n).unwrap().iter().product::<usize>() as u64 * 4).sum();
    assert_eq!(index["metadata"]["total_size"], bytes);
    assert_eq!(summary.total_bytes, bytes);
    assert!(!names.iter().any(|n| n.contains("lora")), "no adapter tensors in a merged checkpoint");

    let merged = Llama::<TestBackend>::load(&out, &device()).unwrap();
    assert!(merged.adapters().is_empty());
    assert_close_report("merged vs adapter", &logits(&merged, &reference), &with_adapter, LOGIT_ATOL);
    reference.assert_logits_equal(&merged, &device(), "merged vs peft", LOGIT_ATOL);

    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let original: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "float32");
    for key in ["num_key_value_heads", "rope_theta", "tie_word_embeddings", "eos_token_id", "architectures"] {
        assert_eq!(config[key], original[key], "{key} kept from the base config");
    }
    assert_eq!(summary.copied, ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]);
    for f in &summary.copied {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(base.join(f)).unwrap(), "{f}");
    }
    keep_for_script("float32", &out, &reference);

    // A second export with one shard replaces the old shards and index.
    let summary = save_merged(adapter_model(), &base, &out, &MergeOptions::default()).unwrap();
    assert_eq!(summary.shards, [out.join("model.safetensors")]);
    assert!(!out.join("model.safetensors.index.json").exists() && !out.join("model-00001-of-00003.safetensors").exists());
}

#[test]
fn half_precision_exports_round_like_torch() {
    let reference = Reference::load(&fixture("peft/all7"));
    let f32_weights = adapter_model().merge_adapters().base_tensors();
    let base = base_dir("merge-base-half");
    for (dtype, name, torch) in [(ExportDtype::Bf16, "BF16", "bfloat16"), (ExportDtype::F16, "F16", "float16")] {
        let out = temp_dir(&format!("merge-{torch}"));
        let summary = save_merged(adapter_model(), &base, &out, &MergeOptions { dtype, max_shard_bytes: 1 << 30 }).unwrap();
        assert_eq!(summary.shards, [out.join("model.safetensors")]);
        assert!(dtypes(&out.join("model.safetensors")).iter().all(|d| d == name));
        let files = TensorFiles::open_dir(&out).unwrap();
        for (tensor, data) in &f32_weights {
            let exact: Vec<f32> = data.to_vec().unwrap();
            let rounded: Vec<f32> = match dtype {
                ExportDtype::Bf16 => exact.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect(),
                _ => exact.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
            };
            assert_eq!(files.read_f32_any(tensor).unwrap().to_vec::<f32>().unwrap(), rounded, "{tensor}");
        }
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["torch_dtype"], torch);
        // Rounded weights still give nearly the same logits.
        let merged = Llama::<TestBackend>::load(&out, &device()).unwrap();
        let (ids, mask) = reference.tensors::<TestBackend>(&device());
        let ours = merged.forward(ids, Some(mask));
        let gap = (0..reference.shape[0])
            .flat_map(|i| {
                let len = reference.lengths()[i];
                row_logits(&ours, i, len).into_iter().zip(reference.row_logits(i)).map(|(a, b)| (a - b).abs())
            })
            .fold(0f32, f32::max);
        // bf16 keeps 8 significant bits (relative step 2^-8): a few percent of the logit scale.
        let scale = reference.logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(gap > 0.0 && gap < 0.03 * scale, "{torch}: max |logit diff| {gap}, logit scale {scale}");
        eprintln!("{torch}: max |logit diff| {gap:.3e} against peft's f32 (logit scale {scale:.2})");
        keep_for_script(torch, &out, &reference);
    }
}

#[test]
fn bad_merge_requests_are_named() {
    let base = base_dir("merge-bad");
    let e = save_merged(adapter_model(), &base, &base, &MergeOptions::default()).unwrap_err().to_string();
    assert!(e.contains("--out") && e.contains("base model's directory"), "{e}");
    std::fs::write(base.join("config.json"), "[1, 2]").unwrap();
    let e = save_merged(adapter_model(), &base, &temp_dir("merge-bad-out"), &MergeOptions::default()).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("not a JSON object"), "{e}");
    std::fs::remove_file(base.join("config.json")).unwrap();
    let e = save_merged(adapter_model(), &base, &temp_dir("merge-bad-out2"), &MergeOptions::default()).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
}
