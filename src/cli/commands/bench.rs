//! `lalora bench`: speed and memory of one LoRA training step on a model preset.
//!
//! Random weights from an HF `config.json` preset, random token ids, rank-r adapters on the
//! chosen projections, AdamW. Prints tokens/s and the process's peak resident memory, the same
//! figures `scripts/bench_torch.py` prints for transformers + peft.

use std::path::PathBuf;
use std::time::Instant;


use clap::Args;
use lalora::data::{Batch, Sequence};
use lalora::llama::{Llama, LlamaConfig};
use lalora::lora::{InitRng, ALL_TARGETS};
use lalora::train::{train_step, AdamWSettings};
use lalora::LoraConfig;
use serde::Serialize;



type AB = lalora_backends::AutodiffBackend;

/// Flags of `lalora bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// HF config.json of the model to build with random weights.
    #[arg(long, default_value = "models/presets/small.json")]
    preset: PathBuf,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// LoRA rank (alpha = 2 r), on all seven projections.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// What to measure, comma-separated: `train` (one training step), `laplace` (curvature
    /// capture per batch for diag, kfac, tri-kfac), `penalty` (the penalty's forward and
    /// backward for diag and kfac).
    #[arg(long, value_delimiter = ',', default_value = "train")]
    what: Vec<String>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct BenchReport {
    framework: &'static str,
    backend: &'static str,
    threads: usize,
    batch: usize,
    seq: usize,
    steps: usize,
    tokens_per_s: f64,
    step_ms_mean: f64,
    step_ms_min: f64,
    peak_rss_mib: f64,
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), if the OS tells.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn mean_min(times: &[f64]) -> (f64, f64) {
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    (mean, times.iter().cloned().fold(f64::INFINITY, f64::min))
}

/// Times `f` `warmup + steps` times and returns (mean, min) of the timed runs in seconds.
fn time_it(warmup: usize, steps: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let start = Instant::now();
        f();
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    mean_min(&times)
}

#[derive(Serialize)]
struct CurvatureBench {
    estimator: &'static str,
    laplace_s_per_batch: Option<f64>,
    ratio_to_train_step: Option<f64>,
    curvature_file_mib: Option<f64>,
    penalty_ms: Option<f64>,
    penalty_share_of_step: Option<f64>,
}

/// Laplace capture per batch and penalty cost, against the measured train step `step_s`.
fn curvature_benches(args: &BenchArgs, model: &Llama<AB>, batch: &Batch<AB>, step_s: f64, laplace: bool, penalty: bool) -> anyhow::Result<()> {
    use burn::module::AutodiffModule;
    use lalora::curvature::{adapter_infos, capture_batch, Accumulator, Estimator, FisherType};
    use lalora::laplace::LaplacePrior;
    // The penalty's cost does not depend on how far the adapters are from the anchor.
    let moved = model.clone();
    for estimator in [Estimator::Diag, Estimator::Kfac, Estimator::TriKfac] {
        let mut report = CurvatureBench {
            estimator: estimator.name(),
            laplace_s_per_batch: None,
            ratio_to_train_step: None,
            curvature_file_mib: None,
            penalty_ms: None,
            penalty_share_of_step: None,
        };
        let mut curvature = None;
        if laplace {
            let (mean, _) = time_it(args.warmup.min(1), args.steps, || {
                let mut acc = Accumulator::new(estimator, adapter_infos(model));
                capture_batch(model, batch, FisherType::Mc { samples: 1 }, &mut acc);
                curvature = Some(acc.finish());
            });
            report.laplace_s_per_batch = Some(mean);
            report.ratio_to_train_step = Some(mean / step_s);
            let dir = std::env::temp_dir().join(format!("lalora-bench-{}", std::process::id()));
            let tensors = curvature.as_ref().expect("timed at least once").tensors().into_iter().map(|(n, t)| (n, t.into_data())).collect();
            lalora::io::save_tensors(&dir.join("curvature.safetensors"), tensors, None)?;
            report.curvature_file_mib = Some(std::fs::metadata(dir.join("curvature.safetensors"))?.len() as f64 / (1024.0 * 1024.0));
            let _ = std::fs::remove_dir_all(&dir);
        }
        if penalty && estimator != Estimator::TriKfac {
            let curvature = match curvature.take() {
                Some(c) => c,
                None => {
                    let mut acc = Accumulator::new(estimator, adapter_infos(model));
                    capture_batch(model, batch, FisherType::Mc { samples: 1 }, &mut acc);
                    acc.finish()
                }
            };
            let mut prior = LaplacePrior::isotropic(&model.valid(), 1e-3);
            prior.curvature = Some(curvature);
            let prior = LaplacePrior::<AB>::from_inner(prior);
            let (mean, _) = time_it(args.warmup, args.steps, || {
                // As in training: the detached value read back, the surrogate differentiated.
                let term = prior.penalty(&moved, 0.5);
                let _ = term.value.into_scalar();
                drop(term.surrogate.backward());
            });
            report.penalty_ms = Some(mean * 1e3);
            report.penalty_share_of_step = Some(mean / step_s);
        }
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            let fmt = |v: Option<f64>, unit: &str, scale: f64| v.map_or("-".to_string(), |x| format!("{:.3}{unit}", x * scale));
            println!(
                "{:>8}: laplace {} per batch ({} of a train step), curvature file {}, penalty {} ({} of a step)",
                report.estimator,
                fmt(report.laplace_s_per_batch, " s", 1.0),
                fmt(report.ratio_to_train_step, "x", 1.0),
                fmt(report.curvature_file_mib, " MiB", 1.0),
                fmt(report.penalty_ms, " ms", 1.0),
                fmt(report.penalty_share_of_step, "%", 100.0),
            );
        }
    }
    Ok(())
}

/// Runs `lalora bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let device = lalora_backends::device();
    let config = LlamaConfig::from_file(&args.preset)?;
    let lora = LoraConfig {
        rank: args.rank,
        alpha: 2.0 * args.rank as f64,
        targets: ALL_TARGETS.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let model = Llama::<AB>::init_random(&config, 0, &device).with_adapters(&lora)?;
    let mut rng = InitRng::new(1);
    let sequences: Vec<Sequence> = (0..args.batch_size)
        .map(|_| {
            let ids = rng.uniform(args.seq, 0.5).iter().map(|u| ((u + 0.5) * (config.vocab_size - 1) as f32) as u32).collect();
            Sequence::text(ids)
        })
        .collect();
    let refs: Vec<&Sequence> = sequences.iter().collect();
    let batch = Batch::<AB>::new(&refs, &device);
    let mut optim = AdamWSettings::default().config().init::<AB, Llama<AB>>();

    let mut model = model;
    let mut times = Vec::with_capacity(args.steps);
    for i in 0..args.warmup + args.steps {
        let start = Instant::now();
        let (next, out) = train_step(model, &mut optim, &batch, 1e-4, Some(1.0), None);
        model = next;
        anyhow::ensure!(out.loss.is_finite(), "non-finite loss in the benchmark");
        if i >= args.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let (mean, min) = mean_min(&times);
    let wants = |w: &str| args.what.iter().any(|x| x == w);
    if wants("laplace") || wants("penalty") {
        curvature_benches(&args, &model, &batch, mean, wants("laplace"), wants("penalty"))?;
    }
    if !wants("train") {
        return Ok(());
    }
    let report = BenchReport {
        framework: "lalora",
        backend: lalora_backends::NAME,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        batch: args.batch_size,
        seq: args.seq,
        steps: args.steps,
        tokens_per_s: (args.batch_size * args.seq) as f64 / mean,
        step_ms_mean: mean * 1e3,
        step_ms_min: min * 1e3,
        peak_rss_mib: peak_rss_mib(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "train step ({} backend, batch {} x seq {}, rank {}): {:.0} tokens/s, mean {:.0} ms, min {:.0} ms, peak RSS {:.0} MiB",
            report.backend, report.batch, report.seq, args.rank, report.tokens_per_s, report.step_ms_mean, report.step_ms_min, report.peak_rss_mib
        );
    }
    Ok(())
}
