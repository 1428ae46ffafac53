//! Scoring equals transformers' `labels=input_ids` loss, padding changes nothing, and greedy
//! generation equals transformers' `generate` with and without the KV cache.

mod common;

use std::process::Command;

use common::*;
use lalora::data::Sequence;
use lalora::eval::score_text;
use lalora::generate::{generate, SamplingConfig};
use lalora::llama::Llama;
use lalora::progress::Progress;

#[derive(serde::Deserialize)]
struct NllFile {
    rows: Vec<NllRow>,
}
#[derive(serde::Deserialize)]
struct NllRow {
    num_tokens: usize,
    loss: f64,
}

fn gqa() -> Llama<TestBackend> {
    Llama::load(&fixture("llama/gqa"), &device()).unwrap()
}

fn reference_sequences() -> Vec<Sequence> {
    let reference = Reference::load(&fixture("llama/gqa"));
    (0..reference.shape[0]).map(|i| Sequence::text(reference.row(i))).collect()
}

#[test]
fn sequence_nll_equals_transformers_loss() {
    let expected: NllFile = serde_json::from_str(&std::fs::read_to_string(fixture("llama/gqa/nll.json")).unwrap()).unwrap();
    let score = score_text(&gqa(), &reference_sequences(), 3, &Progress::hidden());
    for (ours, theirs) in score.sequences.iter().zip(&expected.rows) {
        assert_eq!(ours.tokens, theirs.num_tokens);
        assert!((ours.nll.unwrap() - theirs.loss).abs() < 1e-5, "{:?} vs {}", ours.nll, theirs.loss);
    }
    let total: usize = expected.rows.iter().map(|r| r.num_tokens).sum();
    let mean = expected.rows.iter().map(|r| r.loss * r.num_tokens as f64).sum::<f64>() / total as f64;
    assert_eq!(score.tokens, total);
    assert!((score.nll_per_token - mean).abs() < 1e-5);
    assert!((score.perplexity - mean.exp()).abs() < 1e-3);
}

#[test]
fn batched_scoring_equals_one_by_one() {
    let sequences = reference_sequences();
    let batched = score_text(&gqa(), &sequences, 3, &Progress::hidden());
    let single = score_text(&gqa(), &sequences, 1, &Progress::hidden());
    for (a, b) in batched.sequences.iter().zip(&single.sequences) {
        assert_eq!(a.tokens, b.tokens);
        assert!((a.nll.unwrap() - b.nll.unwrap()).abs() < 1e-5, "{a:?} vs {b:?}");
    }
}

#[derive(serde::Deserialize)]
struct GenerateFile {
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
}

#[test]
fn greedy_generation_equals_transformers_with_and_without_cache() {
    let expected: GenerateFile = serde_json::from_str(&std::fs::read_to_string(fixture("llama/gqa/generate.json")).unwrap()).unwrap();
    let model = gqa();
    for use_cache in [true, false] {
        let config = SamplingConfig { max_new_tokens: expected.generated_ids.len(), use_cache, ..Default::default() };
        let out = generate(&model, &expected.prompt_ids, &config, &[]);
        assert_eq!(out, expected.generated_ids, "use_cache = {use_cache}");
    }
}

#[test]
fn sampling_is_seeded_and_cache_independent() {
    let model = gqa();
    let prompt = [297, 51, 257];
    let run = |seed, use_cache| {
        let config = SamplingConfig { max_new_tokens: 10, temperature: 1.0, top_p: 0.9, seed, use_cache };
        generate(&model, &prompt, &config, &[])
    };
    assert_eq!(run(1, true), run(1, false));
    assert_eq!(run(1, true), run(1, true));
    assert_ne!(run(1, true), run(2, true), "different seeds should (almost surely) differ");
}

/// A model directory the CLI can use: the gqa weights plus the fixture tokenizer.
fn cli_model_dir(name: &str) -> std::path::PathBuf {
    let dir = copy_fixture("llama/gqa", name);
    std::fs::copy(fixture("tokenizer/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    dir
}

fn lalora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lalora")).args(args).output().unwrap()
}

#[test]
fn cli_eval_json_reports_tokens_nll_and_perplexity_independent_of_batch_size() {
    let model = cli_model_dir("cli-eval");
    let data = model.join("data.jsonl");
    std::fs::write(&data, "{\"text\": \"The quick brown fox jumps.\"}\n{\"text\": \"a b\"}\n{\"text\": \"1234 and #### 5\"}\n").unwrap();
    let run = |batch: &str| -> serde_json::Value {
        let out = lalora(&["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--batch-size", batch, "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (one, three) = (run("1"), run("3"));
    let x = three["nll_per_token"].as_f64().unwrap();
    assert!((one["nll_per_token"].as_f64().unwrap() - x).abs() < 1e-5);
    assert!((three["perplexity"].as_f64().unwrap() - x.exp()).abs() < 1e-6 * x.exp());
    let seqs = three["sequences"].as_array().unwrap();
    assert_eq!(seqs.len(), 3);
    let tokens: u64 = seqs.iter().map(|s| s["tokens"].as_u64().unwrap()).sum();
    assert_eq!(three["tokens"].as_u64().unwrap(), tokens);
    // the file figure is the token-weighted mean of the sequence figures
    let weighted: f64 = seqs.iter().map(|s| s["nll"].as_f64().unwrap() * s["tokens"].as_f64().unwrap()).sum::<f64>();
    assert!((weighted / tokens as f64 - x).abs() < 1e-5);
}

#[test]
fn cli_errors_name_the_file_and_line() {
    let model = cli_model_dir("cli-errors");
    let data = model.join("bad.jsonl");
    std::fs::write(&data, "{\"text\": \"ok\"}\n{\"txt\": \"oops\"}\n").unwrap();
    let out = lalora(&["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl:2"), "{err}");

    let out = lalora(&["eval", "--model", "/nonexistent/model", "--data", data.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model"));
}

#[test]
fn cli_generate_prints_the_prompt_and_continuation() {
    let model = cli_model_dir("cli-generate");
    let out = lalora(&["generate", "--model", model.to_str().unwrap(), "--prompt", "The quick", "--max-new-tokens", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // The printed continuation is the greedy one (which the library test above pins to
    // transformers), stopped at the model's EOS like the command's.
    let tokenizer = lalora::Tokenizer::from_dir(&model).unwrap();
    let prompt = tokenizer.encode("The quick").unwrap();
    let greedy = generate(&gqa(), &prompt, &SamplingConfig { max_new_tokens: 5, ..Default::default() }, &gqa().config.eos_token_ids);
    assert!(!greedy.is_empty());
    assert_eq!(text.trim_end_matches('\n'), format!("The quick{}", tokenizer.decode(&greedy).unwrap()));
}
