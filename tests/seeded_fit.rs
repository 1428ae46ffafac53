//! A Laplace fit depends on its config alone. A file of its own: burn's generator is
//! process-wide, and the tests of another file (running on other threads of the same process)
//! draw from it while a fit samples its labels.

mod common;

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use common::*;
use lalora::curvature::Estimator;
use lalora::data::Sequence;
use lalora::io::peft;
use lalora::laplace::{fit, LaplaceConfig, SourceData};
use lalora::llama::Llama;

type AB = TestAutodiff;

#[test]
fn an_mc_fit_depends_on_its_seed_not_on_what_drew_random_numbers_before_it() {
    let base = Llama::<AB>::load(&fixture("llama/gqa"), &device()).unwrap();
    let (model, info) = peft::load_adapter(base, &fixture("peft/all7")).unwrap();
    let reference = Reference::load(&fixture("llama/gqa"));
    let source = vec![SourceData { name: "reference".into(), sequences: (0..3).map(|i| Sequence::text(reference.row(i))).collect() }];
    let config = |seed| LaplaceConfig::new().with_estimator(Estimator::Kfac).with_batches_per_source(1).with_batch_size(3).with_seed(seed);
    let curvature = |seed| {
        let (prior, _) = fit(&model, &info.lora, &source, &config(seed), false).unwrap();
        prior.curvature.unwrap().tensors().iter().flat_map(|(_, t)| values(t)).collect::<Vec<f64>>()
    };
    let max_difference = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let first = curvature(5);
    // Another fit (another seed) and unrelated draws in between, as in a sweep of several methods.
    let other = curvature(6);
    AB::seed(&device(), 99);
    let _ = Tensor::<AB, 2>::random([64, 64], Distribution::Default, &device()).into_data();
    let again = curvature(5);
    assert_eq!(max_difference(&again, &first), 0.0, "the same seed must give the same sampled labels");
    assert!(max_difference(&other, &first) > 1e-3, "another seed draws other labels");
}
