//! Continual LaLoRA on the library API: learn three bundled target tasks one after another
//! (arithmetic, envoys, trade) with sequential LoRA, LaLoRA under the source prior only, and
//! LaLoRA with the prior accumulated over the tasks, and print the retention matrix of each
//! (the score on every source and every target after every stage).
//!
//! ```text
//! cargo run --release --example continual                   # CPU (flex), a few minutes
//! cargo run --release --example continual -- --steps 300   # longer stages
//! ```
//! Flags: `--steps N` per stage (default 120), `--lambda L` (default 10), `--out DIR`
//! (default `runs/continual-example`: retention.csv/json, and the heat maps with `cli`).

use std::path::{Path, PathBuf};

use lalora::continual::{run_continual, ContinualConfig, ContinualData, ContinualMethod, ContinualTarget};
use lalora::curvature::Estimator;
use lalora::data::lm_sequences_with_eos;
use lalora::eval::load_eval_set;
use lalora::tasks::{write_tasks, TaskSizes};
use lalora::train::{DataConfig, ScheduleConfig};
use lalora::{AdapterSource, LaLoRA, LaplaceConfig, LoraConfig, LoraInit, SourceData, Tokenizer, TrainConfig};

type B = lalora_backends::AutodiffBackend;

fn main() -> lalora::Result<()> {
    let steps: usize = flag("--steps").map_or(120, |s| s.parse().expect("--steps N"));
    let lambda: f64 = flag("--lambda").map_or(10.0, |s| s.parse().expect("--lambda L"));
    let out = PathBuf::from(flag("--out").unwrap_or_else(|| "runs/continual-example".into()));
    let model_dir = Path::new("models/tiny");
    let device = lalora_backends::device();
    println!("backend: {}", lalora_backends::NAME);

    // The bundled tasks from seed 0 (the world models/tiny was pretrained on), targets included.
    let tasks = write_tasks(&out.join("tasks"), 0, &TaskSizes::default())?;
    let tokenizer = Tokenizer::from_dir(model_dir)?;
    let lora = LoraConfig::new().with_rank(8).with_alpha(16.0).with_init(LoraInit::Offset);
    let start = LaLoRA::<B>::load(model_dir, AdapterSource::Fresh(lora), &device)?;
    let eos = start.model.config.eos_token_ids.first().copied();

    let max_len = 128;
    let laplace_sources = tasks
        .sources
        .iter()
        .map(|(name, train, _)| Ok(SourceData { name: name.clone(), ..SourceData::read(train, &tokenizer, max_len)? }))
        .collect::<lalora::Result<Vec<_>>>()?;
    let source_evals =
        tasks.sources.iter().map(|(_, _, eval)| load_eval_set(eval, &tokenizer, max_len)).collect::<lalora::Result<Vec<_>>>()?;
    let targets = tasks
        .targets
        .iter()
        .map(|(name, train, test)| {
            Ok(ContinualTarget {
                name: name.clone(),
                train: lm_sequences_with_eos(train, &tokenizer, max_len, eos)?,
                eval: load_eval_set(test, &tokenizer, max_len)?,
            })
        })
        .collect::<lalora::Result<Vec<_>>>()?;

    let config = ContinualConfig {
        methods: vec![ContinualMethod::Lora, ContinualMethod::LaloraSource, ContinualMethod::LaloraAccumulated],
        train: TrainConfig::new()
            .with_schedule(ScheduleConfig::new().with_steps(steps).with_lr(5e-3).with_warmup_steps(10))
            .with_data(DataConfig::new().with_batch_size(8).with_max_len(max_len).with_seed(0)),
        lambda,
        // gamma = 1: every task keeps its full weight in the accumulated prior.
        decay: 1.0,
        // B-KFAC: sums over tasks are kept as exact lists of Kronecker terms.
        laplace: LaplaceConfig::new().with_estimator(Estimator::Kfac).with_batch_size(16).with_max_len(max_len),
        progress: false,
    };
    let data = ContinualData { tokenizer: &tokenizer, laplace_sources: &laplace_sources, source_evals: &source_evals, targets: &targets };
    let result = run_continual(&start, &data, &config, |method, stage, scores| {
        let cells: String = scores.iter().map(|s| format!("{s:>8.3}")).collect();
        println!("{method:<20} after {stage:<12}{cells}");
    })?;

    println!("\nfinal row: average over every task (sources and targets), and over the targets");
    for summary in result.summaries() {
        println!("{:<20} {:.3}  {:.3}", summary.method, summary.average_final, summary.average_final_targets);
    }
    result.write(&out)?;
    println!("matrices: {}", out.join("retention.csv").display());
    Ok(())
}

/// The value after `name` on the command line.
fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}
