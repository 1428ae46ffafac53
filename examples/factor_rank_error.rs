//! How much the low-rank Kronecker factors (`--factor-rank k`) change the penalty: loads a
//! prior fitted with full kfac or tri-kfac factors, compresses it at each k, both as `laplace
//! --factor-rank k` does (eigenpairs of the full factors) and as `--factor-sketch` does (one-pass
//! sketches; here the sketch of each full factor, which the one-pass fit equals up to f32
//! summation order, see `lalora::curvature::sketch::sketch_curvature`), and prints the relative
//! error of the penalty value `d^T F d` and of its gradient `2 F d` (all adapters together)
//! against the full factors, for a displacement d from the anchor:
//! - `gaussian`: i.i.d. N(0, 1) entries (note: the compression keeps every factor's diagonal,
//!   so the expected value over such d is exact; the gradient error is the telling figure);
//! - `adapter`: with `--adapter DIR`, the adapter there minus the anchor (a real fine-tuning
//!   displacement).
//!
//!
//! With `--preset FILE` instead of `--prior`, the model is that config with random weights
//! (HF's init), rank-16 offset-init adapters on all seven projections, and a kfac prior fitted
//! here on 8 sequences of 128 random tokens (only the gaussian direction then).
//!
//! ```text
//! lalora laplace --model models/tiny --data models/tiny/data/source-facts.train.jsonl --out runs/prior
//! cargo run --release --example factor_rank_error -- --prior runs/prior [--adapter runs/x/adapter] \
//!     [--model models/tiny] [--ranks 16,32,64,128,256]
//! cargo run --release --example factor_rank_error -- --preset models/presets/small.json
//! ```

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use lalora::curvature::low_rank::compress_curvature;
use lalora::curvature::sketch::sketch_curvature;
use lalora::curvature::Curvature;
use lalora::{AdapterSource, LaLoRA, LaplacePrior};

type B = lalora_backends::Backend;
/// `(dA, dB)` of every adapter.
type Displacement = Vec<(Tensor<B, 2>, Tensor<B, 2>)>;

fn main() -> lalora::Result<()> {
    let prior_dir = PathBuf::from(
        flag("--prior").or_else(|| flag("--preset")).expect("--prior DIR (a prior fitted with full factors) or --preset FILE"),
    );
    let model_dir = PathBuf::from(flag("--model").unwrap_or_else(|| "models/tiny".into()));
    let ranks: Vec<usize> = flag("--ranks")
        .unwrap_or_else(|| "16,32,64,128,256".into())
        .split(',')
        .map(|k| k.trim().parse().expect("--ranks K,K,.."))
        .collect();
    let device = lalora_backends::device();

    let prior = match flag("--preset") {
        Some(preset) => random_model_prior(Path::new(&preset), &device)?,
        None => {
            let anchor = LaLoRA::<B>::load(&model_dir, AdapterSource::Peft(prior_dir.join("anchor")), &device)?;
            LaplacePrior::load(&prior_dir, &anchor.model)?
        }
    };
    let full = prior.curvature.clone().expect("a fitted prior has a curvature");
    if matches!(full, Curvature::LowRank(_) | Curvature::Sum(_) | Curvature::Diag(_)) {
        panic!("the prior must be a single kfac or tri-kfac fit with full factors");
    }
    let shapes: Vec<([usize; 2], [usize; 2])> = prior.anchors.iter().map(|a| (a.a.dims(), a.b.dims())).collect();

    let mut displacements: Vec<(&str, Displacement)> = vec![("gaussian", gaussian(&shapes, &device))];
    if let Some(dir) = flag("--adapter") {
        let tuned = LaLoRA::<B>::load(&model_dir, AdapterSource::Peft(Path::new(&dir).to_path_buf()), &device)?;
        let d = tuned
            .model
            .adapters()
            .iter()
            .zip(&prior.anchors)
            .map(|(t, a)| (t.lora_a.val() - a.a.clone(), t.lora_b.val() - a.b.clone()))
            .collect();
        displacements.push(("adapter", d));
    }

    println!("prior {} ({}), {} adapters", prior_dir.display(), full.estimator().name(), shapes.len());
    println!("relative errors against the full factors: eigenpairs of the full factors | one-pass sketch");
    println!("{:<10} {:>6} {:>14} {:>14} | {:>14} {:>14}", "direction", "k", "value", "gradient", "value", "gradient");
    for k in ranks {
        let compressed = compress_curvature(full.clone(), k)?;
        let sketched = sketch_curvature(full.clone(), k)?;
        for (name, d) in &displacements {
            let (value, grad) = errors(&full, &compressed, d);
            let (s_value, s_grad) = errors(&full, &sketched, d);
            println!("{name:<10} {k:>6} {value:>14.3e} {grad:>14.3e} | {s_value:>14.3e} {s_grad:>14.3e}");
        }
    }
    Ok(())
}

/// Relative errors `|q_k - q| / |q|` of `q = sum_i d_i^T F_i d_i` and `||F_k d - F d|| / ||F d||`
/// (the gradient is twice the product).
fn errors(full: &Curvature<B>, compressed: &Curvature<B>, d: &[(Tensor<B, 2>, Tensor<B, 2>)]) -> (f64, f64) {
    let (mut q, mut q_k, mut diff2, mut norm2) = (0.0, 0.0, 0.0, 0.0);
    for (i, (d_a, d_b)) in d.iter().enumerate() {
        let (p_a, p_b) = full.product(i, d_a.clone(), d_b.clone());
        let (k_a, k_b) = compressed.product(i, d_a.clone(), d_b.clone());
        let dot = |x: &Tensor<B, 2>, y: &Tensor<B, 2>| scalar((x.clone() * y.clone()).sum());
        q += dot(d_a, &p_a) + dot(d_b, &p_b);
        q_k += dot(d_a, &k_a) + dot(d_b, &k_b);
        diff2 += scalar((k_a - p_a.clone()).square().sum()) + scalar((k_b - p_b.clone()).square().sum());
        norm2 += scalar(p_a.square().sum()) + scalar(p_b.square().sum());
    }
    ((q_k - q).abs() / q.abs(), (diff2 / norm2).sqrt())
}

fn scalar(t: Tensor<B, 1>) -> f64 {
    t.into_data().convert::<f64>().to_vec::<f64>().expect("f64")[0]
}

/// Seeded N(0, 1) displacements of the adapters' shapes (xorshift + Box-Muller).
fn gaussian(
    shapes: &[([usize; 2], [usize; 2])],
    device: &<B as burn::tensor::backend::BackendTypes>::Device,
) -> Vec<(Tensor<B, 2>, Tensor<B, 2>)> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut normal = |dims: [usize; 2]| {
        let v: Vec<f32> = (0..dims[0] * dims[1])
            .map(|_| {
                let (u, w) = (uniform(), uniform());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * w).cos()) as f32
            })
            .collect();
        Tensor::from_data(TensorData::new(v, dims), device)
    };
    shapes.iter().map(|&(a, b)| (normal(a), normal(b))).collect()
}

/// A kfac prior with full factors on a random-weight model of `preset` (see the module docs).
fn random_model_prior(preset: &Path, device: &<B as burn::tensor::backend::BackendTypes>::Device) -> lalora::Result<LaplacePrior<B>> {
    use burn::module::AutodiffModule;
    use lalora::data::Sequence;
    use lalora::lora::InitRng;
    use lalora::{Llama, LlamaConfig, LoraConfig, LoraInit, SourceData};
    type AB = lalora_backends::AutodiffBackend;
    let config = LlamaConfig::from_file(preset)?;
    let lora = LoraConfig::new().with_rank(16).with_alpha(32.0).with_init(LoraInit::Offset);
    let mut model = LaLoRA::<AB>::from_model(Llama::init_random(&config, 0, device), AdapterSource::Fresh(lora))?;
    let mut rng = InitRng::new(7);
    let sequences = (0..8)
        .map(|_| Sequence::text(rng.uniform(128, 0.5).iter().map(|u| ((u + 0.5) * (config.vocab_size - 1) as f32) as u32).collect()))
        .collect();
    model.fit_prior(&[SourceData { name: "random".into(), sequences }], &lalora::LaplaceConfig::new(), false)?;
    Ok(model.valid().prior.expect("just fitted"))
}

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}
