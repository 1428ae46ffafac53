//! Llama logits equal HF transformers' on fixtures made by scripts/make_fixtures.py
//! (transformers 5.23.0, float32, eager attention): GQA, tied embeddings with llama3 RoPE
//! scaling in the old config keys, head_dim != hidden/heads with f16 weights, and bf16 shards.

mod common;

use common::*;
use lalora::llama::Llama;

/// DESIGN.md: max |diff| <= 1e-4 in f32.
const LOGIT_ATOL: f32 = 1e-4;

fn check_case(case: &str) {
    let dir = fixture(&format!("llama/{case}"));
    let reference = Reference::load(&dir);
    let model = Llama::<TestBackend>::load(&dir, &device()).unwrap();
    reference.assert_logits_equal(&model, &device(), case, LOGIT_ATOL);
}

#[test]
fn gqa_logits_equal_transformers() {
    check_case("gqa");
}

#[test]
fn tied_embeddings_and_llama3_rope_in_old_keys_equal_transformers() {
    check_case("tied_llama3");
}

#[test]
fn head_dim_not_hidden_over_heads_with_f16_weights_equals_transformers() {
    check_case("head_dim");
}

#[test]
fn bf16_shards_equal_transformers() {
    check_case("bf16_shards");
}

#[test]
fn config_files_resolve_as_transformers_reads_them() {
    use lalora::llama::{LlamaConfig, RopeScaling};
    let gqa = LlamaConfig::from_file(&fixture("llama/gqa/config.json")).unwrap();
    assert_eq!((gqa.num_key_value_heads, gqa.head_dim, gqa.rope_theta), (2, 16, 10_000.0));
    let tied = LlamaConfig::from_file(&fixture("llama/tied_llama3/config.json")).unwrap();
    assert!(tied.tie_word_embeddings);
    assert!(matches!(tied.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    assert_eq!(tied.rope_theta, 500_000.0);
    let head = LlamaConfig::from_file(&fixture("llama/head_dim/config.json")).unwrap();
    assert_eq!(head.head_dim, 32);
    assert_eq!(head.eos_token_ids.len(), 2);
}
