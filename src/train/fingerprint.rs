//! What a run reads, by hash: the base model, the training data, the starting adapters and
//! the prior. A run directory's `config.json` records it beside the settings, and a resume
//! whose inputs differ is refused with the differing item named.
//!
//! The hashes are cheap: the base model is identified by its config and a few values of every
//! base tensor (the first, middle and last 64; another checkpoint of the same shape differs
//! there), the data by its token ids and loss masks, the adapters by all their values (they
//! are small), a loaded prior by its `laplace.json` record (which holds the hashes of its
//! files) and its anchor.

use std::collections::{BTreeMap, HashSet};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::Sequence;
use crate::io::hash::ContentHasher;
use crate::laplace::LaplacePrior;
use crate::llama::Llama;

/// Values sampled from each end and the middle of every frozen tensor.
const SAMPLE: usize = 64;

/// The inputs of a training run, as content hashes (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInputs {
    /// The base model: its config and sampled frozen weights.
    pub model: String,
    /// The tokenised training sequences (ids and which tokens carry a loss).
    pub train_data: String,
    /// The adapters training starts from (the `l2` penalty's centre).
    pub start_adapters: String,
    /// The Laplace prior, for the `lalora` method.
    pub prior: Option<String>,
    /// Files the caller names, by content hash (the command line: `--data`, `--laplace`,
    /// `--adapter`).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

impl RunInputs {
    /// The inputs of a run on `model` (base weights and starting adapters), `sequences` and,
    /// for the Laplace penalty, `prior`; `files` are the caller's own items.
    pub fn of<B: Backend>(
        model: &Llama<B>,
        sequences: &[Sequence],
        prior: Option<&LaplacePrior<B>>,
        files: &BTreeMap<String, String>,
    ) -> Self {
        RunInputs {
            model: model_hash(model),
            train_data: data_hash(sequences),
            start_adapters: adapters_hash(model),
            prior: prior.map(prior_hash),
            files: files.clone(),
        }
    }
}

/// The config and sampled values of every base tensor (adapters aside: they are identified by
/// id, as a backend without autodiff reports no tensor as trainable), in module order.
fn model_hash<B: Backend>(model: &Llama<B>) -> String {
    struct Sample<'a> {
        hasher: &'a mut ContentHasher,
        adapters: HashSet<ParamId>,
    }
    impl<B: Backend> ModuleVisitor<B> for Sample<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.adapters.contains(&param.id) {
                return;
            }
            let flat = param.val().flatten::<1>(0, D - 1);
            let n = flat.dims()[0];
            self.hasher.u64(n as u64);
            let starts = if n <= 3 * SAMPLE { vec![0] } else { vec![0, n / 2 - SAMPLE / 2, n - SAMPLE] };
            for start in starts {
                let len = SAMPLE.min(n - start);
                let values: Vec<f32> = flat.clone().narrow(0, start, len).into_data().convert::<f32>().to_vec().unwrap_or_default();
                self.hasher.f32s(&values);
            }
        }
    }
    let mut adapters = HashSet::new();
    for adapter in model.adapters() {
        adapters.extend([adapter.lora_a.id, adapter.lora_b.id]);
        if let Some(offset) = &adapter.offset {
            adapters.extend([offset.lora_a.id, offset.lora_b.id]);
        }
    }
    let mut hasher = ContentHasher::new();
    hasher.text(&serde_json::to_string(&model.config).unwrap_or_default());
    model.visit(&mut Sample { hasher: &mut hasher, adapters });
    hasher.finish()
}

/// Every adapter's path, scale and values (the offset of an offset init included).
fn adapters_hash<B: Backend>(model: &Llama<B>) -> String {
    let values = |t: Tensor<B, 2>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
    let mut hasher = ContentHasher::new();
    for adapter in model.adapters() {
        hasher.text(&adapter.path()).u64(adapter.scale.to_bits());
        hasher.f32s(&values(adapter.lora_a.val())).f32s(&values(adapter.lora_b.val()));
        if let Some(offset) = &adapter.offset {
            hasher.f32s(&values(offset.lora_a.val())).f32s(&values(offset.lora_b.val()));
        }
    }
    hasher.finish()
}

/// Token ids and loss-carrying positions of every sequence, in order.
fn data_hash(sequences: &[Sequence]) -> String {
    let mut hasher = ContentHasher::new();
    hasher.u64(sequences.len() as u64);
    for s in sequences {
        hasher.u32s(&s.ids);
        let targets: Vec<u32> = (0..s.ids.len()).filter(|&t| s.is_target(t)).map(|t| t as u32).collect();
        hasher.u32s(&targets);
    }
    hasher.finish()
}

/// A fitted prior's record (with its files' hashes when it was read from disk), its precision
/// and its anchor values; without a record, the curvature's trace stands in for the fit.
fn prior_hash<B: Backend>(prior: &LaplacePrior<B>) -> String {
    let values = |t: &Tensor<B, 2>| t.clone().into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
    let mut hasher = ContentHasher::new();
    match &prior.meta {
        Some(meta) => hasher.text(&serde_json::to_string(meta).unwrap_or_default()),
        None => hasher.text("no record"),
    };
    hasher.u64(prior.prior_precision.to_bits());
    if let Some(curvature) = &prior.curvature {
        hasher.text(curvature.estimator().name()).u64(curvature.trace().to_bits());
    }
    for anchor in &prior.anchors {
        hasher.text(&anchor.path).f32s(&values(&anchor.a)).f32s(&values(&anchor.b));
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::LlamaConfig;
    use crate::lora::LoraConfig;
    use crate::test_support::TestBackend;

    fn config() -> LlamaConfig {
        LlamaConfig::from_file(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama/gqa/config.json")).unwrap()
    }

    #[test]
    fn each_input_changes_only_its_own_hash() {
        let device = Default::default();
        let lora = LoraConfig::new().with_rank(2);
        let model = |seed| Llama::<TestBackend>::init_random(&config(), seed, &device).with_adapters(&lora).unwrap();
        let data = vec![Sequence::text(vec![0, 5, 6, 7]), Sequence::new(vec![0, 8, 9], 2)];
        let files = BTreeMap::new();
        let base = RunInputs::of(&model(1), &data, None, &files);
        assert_eq!(base, RunInputs::of(&model(1), &data, None, &files), "deterministic");

        let other_weights = RunInputs::of(&model(2), &data, None, &files);
        assert_ne!(other_weights.model, base.model, "a same-shape model with other weights");
        let other_adapters = RunInputs::of(&model(1).with_adapters(&lora.clone().with_seed(9)).unwrap(), &data, None, &files);
        assert_eq!(other_adapters.model, base.model);
        assert_ne!(other_adapters.start_adapters, base.start_adapters);
        let other_mask = vec![Sequence::text(vec![0, 5, 6, 7]), Sequence::new(vec![0, 8, 9], 1)];
        let other_data = RunInputs::of(&model(1), &other_mask, None, &files);
        assert_ne!(other_data.train_data, base.train_data, "the loss mask is part of the data");
        assert_eq!((other_data.model, other_data.start_adapters), (base.model.clone(), base.start_adapters.clone()));
        let prior = LaplacePrior::isotropic(&model(1), 1.0);
        assert!(RunInputs::of(&model(1), &data, Some(&prior), &files).prior.is_some());
    }
}
