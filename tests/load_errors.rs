//! A broken model directory gives an error that names the file and the field or tensor.

mod common;

use common::*;
use lalora::llama::Llama;

fn load_err(dir: &std::path::Path) -> String {
    Llama::<TestBackend>::load(dir, &device()).unwrap_err().to_string()
}

fn edit_config(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(path, serde_json::to_string(&config).unwrap()).unwrap();
}

#[test]
fn wrong_shape_names_the_tensor_and_both_shapes() {
    let dir = copy_fixture("llama/gqa", "wrong-shape");
    edit_config(&dir, |c| c["intermediate_size"] = 96.into());
    let err = load_err(&dir);
    assert!(err.contains("model.layers.0.mlp.gate_proj.weight"), "{err}");
    assert!(err.contains("[128, 64]") && err.contains("[96, 64]"), "{err}");
}

#[test]
fn missing_lm_head_is_named() {
    let dir = copy_fixture("llama/tied_llama3", "missing-head");
    edit_config(&dir, |c| c["tie_word_embeddings"] = false.into());
    let err = load_err(&dir);
    assert!(err.contains("lm_head.weight") && err.contains("missing"), "{err}");
}

#[test]
fn malformed_and_missing_files_are_named() {
    let dir = copy_fixture("llama/gqa", "bad-json");
    std::fs::write(dir.join("config.json"), "{\"hidden_size\": 64,").unwrap();
    let err = load_err(&dir);
    assert!(err.contains("config.json") && err.contains("malformed JSON"), "{err}");

    let dir = copy_fixture("llama/gqa", "no-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors"), "{err}");

    let dir = copy_fixture("llama/gqa", "garbage-weights");
    std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors") && err.contains("safetensors"), "{err}");
}

#[test]
fn bad_config_values_name_the_field() {
    let dir = copy_fixture("llama/gqa", "bad-heads");
    edit_config(&dir, |c| c["num_key_value_heads"] = 3.into());
    assert!(load_err(&dir).contains("num_key_value_heads"));
}

#[test]
fn a_missing_shard_is_named() {
    let dir = copy_fixture("llama/bf16_shards", "missing-shard");
    std::fs::remove_file(dir.join("model-00002-of-00004.safetensors")).unwrap();
    assert!(load_err(&dir).contains("model-00002-of-00004.safetensors"));
}

#[test]
fn saved_model_loads_back_identically() {
    let model = Llama::<TestBackend>::load(&fixture("llama/tied_llama3"), &device()).unwrap();
    let out = temp_dir("save-load");
    model.save(&out).unwrap();
    let again = Llama::<TestBackend>::load(&out, &device()).unwrap();
    assert_eq!(again.config, model.config);
    let reference = Reference::load(&fixture("llama/tied_llama3"));
    let (ids, mask) = reference.tensors::<TestBackend>(&device());
    let a = row_logits(&model.forward(ids.clone(), Some(mask.clone())), 0, 12);
    let b = row_logits(&again.forward(ids, Some(mask)), 0, 12);
    assert_close_report("save/load", &b, &a, 0.0);
}
