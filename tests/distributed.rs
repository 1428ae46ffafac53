//! Data parallelism over 2 local peers (threads on the CPU, burn-collective's local level):
//! k training steps give the adapters of one device on the whole batch, a Laplace fit gives
//! one device's curvature, and evaluation gathers one device's scores. Cargo feature
//! `distributed`.
#![cfg(feature = "distributed")]

mod common;

use std::time::Duration;

use common::*;
use lalora::curvature::{Estimator, FisherType};
use lalora::data::Sequence;
use lalora::distributed::{fit_parallel, train_parallel, Cluster, ClusterConfig};
use lalora::laplace::{LaplaceConfig, SourceData};
use lalora::llama::Llama;
use lalora::train::{DataConfig, ScheduleConfig};
use lalora::{AdapterSource, LaLoRA, LoraConfig, LoraInit, Penalty, Tokenizer, TrainConfig, TrainControl, TrainData};

type AB = TestAutodiff;

/// burn-collective keeps one local server per backend type and process, and the backend's
/// generator is process-wide: the tests here take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Offset init (B != 0, so every gradient is non-trivial) and no dropout (each peer draws
/// its own masks, so dropout would differ from one device's by design).
fn setup() -> (LaLoRA<AB>, Vec<Sequence>, Tokenizer) {
    let tokenizer = Tokenizer::from_dir(&fixture("tokenizer")).unwrap();
    let lora = LoraConfig { rank: 4, alpha: 8.0, init: LoraInit::Offset, dropout: 0.0, seed: 3, ..Default::default() };
    let base = Llama::<AB>::load(&fixture("llama/gqa"), &device()).unwrap();
    let model = LaLoRA::from_model(base, AdapterSource::Fresh(lora)).unwrap();
    // Lengths differ a lot, so the peers' shares carry different token counts.
    let texts = [
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "Numbers 12 and 34 add to 46.",
        "A cat.",
        "Hello there friend, how are you today?",
        "One two three four.",
        "Go.",
        "Seven eight nine ten eleven twelve.",
    ];
    let data = texts.iter().map(|t| Sequence::text(tokenizer.encode(t).unwrap())).collect();
    (model, data, tokenizer)
}

/// Odd batches (3 sequences: shares of 2 and 1), two micro-batches per step, and a penalty
/// (added on peer 0 only).
fn config(penalty: Penalty) -> TrainConfig {
    TrainConfig::new()
        .with_schedule(ScheduleConfig::new().with_steps(4).with_lr(5e-3).with_warmup_steps(1))
        .with_data(DataConfig::new().with_batch_size(3).with_grad_accum(2).with_seed(11))
        .with_penalty(penalty)
}

fn adapter_values(model: &LaLoRA<AB>) -> Vec<f64> {
    model
        .model
        .adapters()
        .iter()
        .flat_map(|a| {
            let mut v = values(&a.lora_a.val());
            v.extend(values(&a.lora_b.val()));
            v
        })
        .collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn local(peers: usize) -> std::sync::Arc<Cluster> {
    Cluster::start(ClusterConfig { timeout: Duration::from_secs(120), ..ClusterConfig::local(peers) }).unwrap()
}

#[test]
fn two_local_peers_reach_the_adapters_of_one_device_after_k_steps() {
    let _guard = serial();
    let (model, sequences, tokenizer) = setup();
    let data = TrainData { sequences: &sequences, eval_sets: &[], tokenizer: &tokenizer };
    for penalty in [Penalty::None, Penalty::L2 { lambda: 0.5 }] {
        let config = config(penalty);
        let (single, single_report) = model.clone().train(&data, &config, &TrainControl::default()).unwrap();
        let (one_peer, _) = train_parallel(&local(1), &[device()], model.clone(), &data, &config, None, false).unwrap();
        let (two, two_report) = train_parallel(&local(2), &[device(), device()], model.clone(), &data, &config, None, false).unwrap();

        let (start, expected) = (adapter_values(&model), adapter_values(&single));
        assert!(max_diff(&start, &expected) > 1e-3, "the adapters moved");
        let one = max_diff(&adapter_values(&one_peer), &expected);
        let both = max_diff(&adapter_values(&two), &expected);
        println!("{}: one peer {one:.2e}, two peers {both:.2e} (max |difference| to one device)", config.penalty.method_name());
        assert!(one <= 1e-5, "one peer vs one device: {one:.3e}");
        assert!(both <= 1e-5, "two peers vs one device: {both:.3e}");
        assert_eq!(two_report.steps_done, 4);
        assert_eq!(two_report.tokens, single_report.tokens);
        assert!(
            (two_report.last_loss - single_report.last_loss).abs() <= 1e-5 * single_report.last_loss.abs(),
            "{} vs {}",
            two_report.last_loss,
            single_report.last_loss
        );
    }
}

#[test]
fn two_local_peers_fit_the_curvature_of_one_device() {
    let _guard = serial();
    let (mut model, sequences, _) = setup();
    let sources = vec![
        SourceData { name: "a".into(), sequences: sequences[..4].to_vec() },
        SourceData { name: "b".into(), sequences: sequences[4..].to_vec() },
    ];
    for estimator in [Estimator::Diag, Estimator::Kfac, Estimator::TriKfac] {
        // Batches of 1 and 2 sequences, 5 batches in all, dealt round-robin (3 and 2).
        let config = LaplaceConfig::new()
            .with_estimator(estimator)
            .with_fisher(FisherType::Empirical)
            .with_batches_per_source(3)
            .with_batch_size(2)
            .with_prior_precision(0.1);
        let mut single = model.clone();
        let single_report = single.fit_prior(&sources, &config, false).unwrap();
        let report = fit_parallel(&local(2), &[device(), device()], &mut model, &sources, &config, false).unwrap();
        assert_eq!(report.tokens, single_report.tokens);
        assert_eq!(report.batches, single_report.batches);
        let (ours, theirs) = (model.prior.as_ref().unwrap(), single.prior.as_ref().unwrap());
        assert_eq!(ours.meta, theirs.meta);
        let pairs = ours.curvature.as_ref().unwrap().tensors().into_iter().zip(theirs.curvature.as_ref().unwrap().tensors());
        let mut worst = 0.0f64;
        for ((n1, t1), (n2, t2)) in pairs {
            assert_eq!(n1, n2);
            let (a, b) = (values(&t1), values(&t2));
            let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
            worst = worst.max(max_diff(&a, &b) / scale);
        }
        println!("{}: curvature of 2 peers vs one device, max relative difference {worst:.2e}", estimator.name());
        assert!(worst <= 1e-5, "{}: {worst:.3e}", estimator.name());
        let (a, b) = (values(&ours.anchors[0].a), values(&theirs.anchors[0].a));
        assert_eq!(a, b, "the anchor is the current adapters");
    }
}
