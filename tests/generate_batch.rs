//! Batched decoding computes what decoding each prompt alone computes: greedy outputs are
//! identical token for token (left padding, per-row positions, per-row stops, rows leaving
//! the batch), on the HF fixtures, on a PEFT adapter and on the bundled model; one row of a
//! batch still equals transformers' `generate`; and the decoding copy of a model (adapters
//! merged, weights re-laid out) has the same logits.

mod common;

use std::path::Path;

use common::*;
use lalora::data::Record;
use lalora::generate::{decoding_model, generate, generate_batch, SamplingConfig};
use lalora::io::peft;
use lalora::llama::Llama;
use lalora::tasks::{source_tasks, target_task, TaskSizes};
use lalora::tokenizer::Tokenizer;

fn greedy(max_new_tokens: usize) -> SamplingConfig {
    SamplingConfig { max_new_tokens, ..Default::default() }
}

/// Deterministic prompts of the given lengths over a vocabulary of `vocab` (never id 0, so a
/// padding id of 0 cannot be mistaken for a prompt token).
fn prompts(lengths: &[usize], vocab: usize) -> Vec<Vec<u32>> {
    let mut state = 12345u64;
    lengths
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    1 + ((state >> 33) as usize % (vocab - 1)) as u32
                })
                .collect()
        })
        .collect()
}

/// Asserts that decoding `prompts` in batches of every size in `batch_sizes` gives, row by
/// row, what `generate` gives on each prompt alone. Returns the one-by-one outputs.
fn assert_batched_equals_alone(
    model: &Llama<TestBackend>,
    prompts: &[Vec<u32>],
    config: &SamplingConfig,
    stop: &[u32],
    batch_sizes: &[usize],
    what: &str,
) -> Vec<Vec<u32>> {
    let alone: Vec<Vec<u32>> = prompts.iter().map(|p| generate(model, p, config, stop)).collect();
    for &size in batch_sizes {
        let mut batched = Vec::new();
        for chunk in prompts.chunks(size) {
            let refs: Vec<&[u32]> = chunk.iter().map(|p| p.as_slice()).collect();
            batched.extend(generate_batch(model, &refs, config, stop));
        }
        for (i, (b, a)) in batched.iter().zip(&alone).enumerate() {
            assert_eq!(b, a, "{what}: batch size {size}, prompt {i} (length {})", prompts[i].len());
        }
    }
    alone
}

/// Stop tokens that end some rows early: a token that row 0 emits at step 3 and one that
/// the last row emits at step 5 (when they exist).
fn early_stops(outputs: &[Vec<u32>]) -> Vec<u32> {
    let mut stop = Vec::new();
    if let Some(&t) = outputs[0].get(2) {
        stop.push(t);
    }
    if let Some(&t) = outputs[outputs.len() - 1].get(4) {
        stop.push(t);
    }
    stop
}

/// Greedy outputs, with and without stops that end rows at different steps (so rows leave the
/// batch while others go on), batched equal alone.
fn check_fixture_model(model: &Llama<TestBackend>, what: &str) {
    let vocab = model.config.vocab_size;
    let prompts = prompts(&[5, 1, 9, 3, 12, 2, 7], vocab);
    let config = greedy(12);
    let free = assert_batched_equals_alone(model, &prompts, &config, &[], &[7, 3], what);
    assert!(free.iter().all(|o| o.len() == 12), "{what}: no stop tokens, every row runs to the limit");
    let stop = early_stops(&free);
    let stopped = assert_batched_equals_alone(model, &prompts, &config, &stop, &[7, 4], &format!("{what} with stops"));
    assert!(stopped.iter().any(|o| o.len() < 12), "{what}: the stops should end some rows early");
}

#[test]
fn batched_greedy_equals_one_by_one_on_the_hf_fixtures() {
    for name in ["gqa", "head_dim", "tied_llama3"] {
        let model = Llama::<TestBackend>::load(&fixture(&format!("llama/{name}")), &device()).unwrap();
        check_fixture_model(&model, name);
    }
}

#[test]
fn batched_greedy_equals_one_by_one_with_a_peft_adapter_and_on_its_decoding_copy() {
    let base = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap();
    let (model, _) = peft::load_adapter(base, &fixture("peft/all7")).unwrap();
    check_fixture_model(&model, "gqa + all7 adapter");
    check_fixture_model(&decoding_model(&model), "decoding copy of gqa + all7 adapter");
}

#[test]
fn the_decoding_copy_has_the_same_logits() {
    let base = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap();
    let (model, _) = peft::load_adapter(base, &fixture("peft/all7")).unwrap();
    let copy = decoding_model(&model);
    assert!(copy.adapters().is_empty(), "adapters are merged into the weights");
    let reference = Reference::load(&fixture("llama/gqa"));
    let (ids, mask) = reference.tensors::<TestBackend>(&device());
    let ours = model.forward(ids.clone(), Some(mask.clone()));
    let copied = copy.forward(ids, Some(mask));
    for (i, &len) in reference.lengths().iter().enumerate() {
        let (a, b) = (row_logits(&ours, i, len), row_logits(&copied, i, len));
        assert_close_report(&format!("decoding copy row {i}"), &b, &a, 1e-5);
    }
}

#[derive(serde::Deserialize)]
struct GenerateFile {
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
}

#[test]
fn a_row_of_a_padded_batch_equals_transformers_generate() {
    let expected: GenerateFile = serde_json::from_str(&std::fs::read_to_string(fixture("llama/gqa/generate.json")).unwrap()).unwrap();
    let model = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap();
    // The reference prompt between a longer and a shorter one: it is left-padded, and its
    // positions must still start at 0.
    let others = prompts(&[11, 2], model.config.vocab_size);
    let batch: Vec<&[u32]> = vec![&others[0], &expected.prompt_ids, &others[1]];
    let out = generate_batch(&model, &batch, &greedy(expected.generated_ids.len()), &[]);
    assert_eq!(out[1], expected.generated_ids);
}

/// Prompts for the bundled model, tokenised, of many lengths: the arithmetic task's questions
/// and the first words (2 to 9) of texts from its pretraining skills, which it continues for a
/// varying number of tokens before the end of the sentence.
fn tiny_prompts(tokenizer: &Tokenizer) -> Vec<Vec<u32>> {
    let sizes = TaskSizes::tiny();
    let mut texts: Vec<String> = target_task(3, &sizes)
        .eval
        .iter()
        .take(6)
        .map(|r| match r {
            Record::Generation { prompt, .. } => prompt.clone(),
            other => panic!("not a generation record: {other:?}"),
        })
        .collect();
    for (i, task) in source_tasks(3, &sizes).iter().enumerate() {
        for (j, text) in task.pretrain.iter().take(4).enumerate() {
            let words = 2 + (3 * i + 2 * j) % 8;
            texts.push(text.split_whitespace().take(words).collect::<Vec<_>>().join(" "));
        }
    }
    texts.iter().map(|t| tokenizer.encode(t).unwrap()).collect()
}

#[test]
fn batched_greedy_equals_one_by_one_on_the_bundled_model() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let model = Llama::<TestBackend>::load(&dir, &device()).unwrap();
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let prompts = tiny_prompts(&tokenizer);
    let lengths: std::collections::BTreeSet<usize> = prompts.iter().map(|p| p.len()).collect();
    assert!(lengths.len() >= 4, "prompts of several lengths: {lengths:?}");
    // The evaluation's stop rule (end of sequence or of the line), plus the end of a
    // sentence: the base model rarely ends a line, and rows must stop at different steps.
    let mut stop = model.config.eos_token_ids.clone();
    stop.extend(tokenizer.encode_with("\n", false).unwrap());
    stop.extend(tokenizer.encode_with(".", false).unwrap());
    let config = greedy(24);
    for (what, m) in [("bundled model", model.clone()), ("its decoding copy", decoding_model(&model))] {
        let alone = assert_batched_equals_alone(&m, &prompts, &config, &stop, &[prompts.len(), 8, 3], what);
        // Rows stop at different steps, so rows leave the batch while others go on.
        let stopped_at: std::collections::BTreeSet<usize> =
            alone.iter().filter(|o| o.last().is_some_and(|t| stop.contains(t))).map(|o| o.len()).collect();
        assert!(stopped_at.len() >= 3, "{what}: rows should stop at several different steps: {stopped_at:?}");
    }
}

#[test]
fn batched_sampling_draws_row_i_with_seed_plus_i() {
    let model = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap();
    let prompts = prompts(&[4, 2, 6], model.config.vocab_size);
    let config = SamplingConfig { max_new_tokens: 10, temperature: 1.0, top_p: 0.9, seed: 7, use_cache: true };
    let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let batched = generate_batch(&model, &refs, &config, &[]);
    for (i, prompt) in prompts.iter().enumerate() {
        let alone = generate(&model, prompt, &SamplingConfig { seed: 7 + i as u64, ..config.clone() }, &[]);
        assert_eq!(batched[i], alone, "row {i}");
    }
}

#[test]
fn empty_batches_and_zero_new_tokens_generate_nothing() {
    let model = Llama::<TestBackend>::load(&fixture("llama/gqa"), &device()).unwrap();
    assert!(generate_batch(&model, &[], &greedy(5), &[]).is_empty());
    let out = generate_batch(&model, &[&[3, 4][..], &[5][..]], &greedy(0), &[]);
    assert_eq!(out, vec![Vec::<u32>::new(), Vec::new()]);
}
