//! Shared test helpers: the backend tests run on, fixture paths, reference files, and one
//! comparison that reports where and by how much two arrays differ.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};
use lalora::data::Sequence;
use lalora::io::{peft, TensorFiles};
use lalora::laplace::SourceData;
use lalora::llama::Llama;
use lalora::LoraConfig;

/// Tests run on a CPU backend when one is enabled (flex first), so numbers are fast and
/// deterministic; `tests/backends.rs` runs the core cases on every enabled backend.
#[cfg(feature = "flex")]
pub type TestBackend = lalora_backends::flex::Backend;
#[cfg(all(not(feature = "flex"), feature = "ndarray"))]
pub type TestBackend = lalora_backends::ndarray::Backend;
#[cfg(not(any(feature = "flex", feature = "ndarray")))]
pub type TestBackend = lalora_backends::Backend;

/// The autodiff version of [`TestBackend`].
pub type TestAutodiff = burn::backend::Autodiff<TestBackend>;

/// The test backend's device.
pub fn device() -> <TestBackend as burn::tensor::backend::BackendTypes>::Device {
    Default::default()
}

/// The gqa fixture with the PEFT adapter `peft/all7` (every projection adapted), and that
/// adapter's LoRA config: the model the curvature tests fit priors on.
pub fn gqa_with_all7_adapter() -> (Llama<TestAutodiff>, LoraConfig) {
    let base = Llama::<TestAutodiff>::load(&fixture("llama/gqa"), &device()).unwrap();
    let (model, info) = peft::load_adapter(base, &fixture("peft/all7")).unwrap();
    (model, info.lora)
}

/// Rows `rows` of the gqa fixture's reference batch, unpadded, as one source set named `name`.
pub fn reference_rows(name: &str, rows: &[usize]) -> Vec<SourceData> {
    let reference = Reference::load(&fixture("llama/gqa"));
    let sequences: Vec<Sequence> = rows.iter().map(|&i| Sequence::text(reference.row(i))).collect();
    vec![SourceData { name: name.into(), sequences }]
}

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// A fresh empty directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lalora-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies a fixture directory (flat) into a temp dir, for tests that break files on purpose.
pub fn copy_fixture(rel: &str, name: &str) -> PathBuf {
    let dir = temp_dir(name);
    for entry in std::fs::read_dir(fixture(rel)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

/// `p` as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A workspace for driving the binary: the gqa fixture with the fixture tokenizer, a source
/// text file and a target prompt/completion file (12 records each) inside it.
pub fn cli_workspace(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let model = copy_fixture("llama/gqa", name);
    std::fs::copy(fixture("tokenizer/tokenizer.json"), model.join("tokenizer.json")).unwrap();
    let source = model.join("source.jsonl");
    std::fs::write(&source, (0..12).map(|i| format!("{{\"text\": \"The quick brown fox number {i} jumps.\"}}\n")).collect::<String>())
        .unwrap();
    let target = model.join("target.jsonl");
    std::fs::write(
        &target,
        (0..12).map(|i| format!("{{\"prompt\": \"Add {i} and 2.\", \"completion\": \" #### {}\"}}\n", i + 2)).collect::<String>(),
    )
    .unwrap();
    (model, source, target)
}

/// The flags of a small `lalora train` (4 steps of 4 sequences, rank 2) on `data` into `run`.
pub fn small_train_args(model: &Path, data: &Path, run: &Path) -> Vec<String> {
    let args = [
        "train",
        "--model",
        s(model),
        "--data",
        s(data),
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--rank",
        "2",
        "--alpha",
        "4",
        "--out",
        s(run),
    ];
    args.iter().map(|a| a.to_string()).collect()
}

/// `reference.safetensors` of a Llama or PEFT fixture: a padded batch and HF's logits.
pub struct Reference {
    /// `[batch, seq]` token ids (padding included).
    pub input_ids: Vec<i64>,
    /// `[batch, seq]`, 1 for real tokens.
    pub attention_mask: Vec<i64>,
    /// `[batch, seq]`
    pub shape: [usize; 2],
    /// `[batch, seq, vocab]`
    pub logits: Vec<f32>,
    /// vocabulary size
    pub vocab: usize,
}

impl Reference {
    /// Reads `dir/reference.safetensors`.
    pub fn load(dir: &Path) -> Self {
        let files = TensorFiles::open_file(&dir.join("reference.safetensors")).unwrap();
        let (shape, input_ids) = files.read_i64_any("input_ids").unwrap();
        let (_, attention_mask) = files.read_i64_any("attention_mask").unwrap();
        let logits = files.read_f32_any("logits").unwrap();
        let vocab = logits.shape[2];
        Reference { input_ids, attention_mask, shape: [shape[0], shape[1]], logits: logits.to_vec::<f32>().unwrap(), vocab }
    }

    /// Real length of each row.
    pub fn lengths(&self) -> Vec<usize> {
        self.attention_mask.chunks(self.shape[1]).map(|r| r.iter().filter(|&&m| m == 1).count()).collect()
    }

    /// Row `i` without its padding.
    pub fn row(&self, i: usize) -> Vec<u32> {
        let len = self.lengths()[i];
        self.input_ids[i * self.shape[1]..i * self.shape[1] + len].iter().map(|&t| t as u32).collect()
    }

    /// The batch as tensors.
    pub fn tensors<B: Backend>(&self, device: &B::Device) -> (Tensor<B, 2, Int>, Tensor<B, 2, Bool>) {
        let ids = Tensor::from_data(TensorData::new(self.input_ids.clone(), self.shape), device);
        let mask: Vec<bool> = self.attention_mask.iter().map(|&m| m == 1).collect();
        (ids, Tensor::from_data(TensorData::new(mask, self.shape), device))
    }

    /// HF's logits of row `i`, real positions only.
    pub fn row_logits(&self, i: usize) -> Vec<f32> {
        let (t, v) = (self.shape[1], self.vocab);
        self.logits[i * t * v..(i * t + self.lengths()[i]) * v].to_vec()
    }

    /// Runs `model` on the reference batch and asserts that every row's real-position logits
    /// equal the reference's to `atol`; `what` names the case in a failure.
    pub fn assert_logits_equal<B: lalora::KernelBackend>(&self, model: &Llama<B>, device: &B::Device, what: &str, atol: f32) {
        let (ids, mask) = self.tensors::<B>(device);
        let logits = model.forward(ids, Some(mask));
        for (i, &len) in self.lengths().iter().enumerate() {
            assert_close_report(&format!("{what} row {i}"), &row_logits(&logits, i, len), &self.row_logits(i), atol);
        }
    }
}

/// Real-position logits of row `i` of a `[batch, seq, vocab]` tensor.
pub fn row_logits<B: Backend>(logits: &Tensor<B, 3>, i: usize, len: usize) -> Vec<f32> {
    logits.clone().narrow(0, i, 1).narrow(1, 0, len).into_data().convert::<f32>().to_vec().unwrap()
}

/// Asserts `max |actual - expected| <= atol`; on failure prints the worst entries with both
/// values and their ratio (a ratio of N or S points at a scaling bug).
pub fn assert_close_report(what: &str, actual: &[f32], expected: &[f32], atol: f32) {
    assert_eq!(actual.len(), expected.len(), "{what}: length {} vs {}", actual.len(), expected.len());
    let mut diffs: Vec<(usize, f32)> =
        actual.iter().zip(expected).map(|(a, e)| (a - e).abs()).enumerate().filter(|(_, d)| d.is_nan() || *d > atol).collect();
    if diffs.is_empty() {
        return;
    }
    diffs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut report = format!("{what}: {} of {} entries differ by more than {atol:e}\n", diffs.len(), actual.len());
    for &(i, d) in diffs.iter().take(8) {
        report +=
            &format!("  [{i}] actual {:.6e} expected {:.6e} |diff| {d:.3e} ratio {:.4}\n", actual[i], expected[i], actual[i] / expected[i]);
    }
    panic!("{report}");
}

/// f64 version of [`assert_close_report`], with a relative part: `|a - e| <= atol + rtol |e|`.
pub fn assert_close_f64(what: &str, actual: &[f64], expected: &[f64], atol: f64, rtol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: length {} vs {}", actual.len(), expected.len());
    let bad: Vec<usize> = (0..actual.len())
        .filter(|&i| {
            let d = (actual[i] - expected[i]).abs();
            d.is_nan() || d > atol + rtol * expected[i].abs()
        })
        .collect();
    if bad.is_empty() {
        return;
    }
    let mut report = format!("{what}: {} of {} entries outside atol {atol:e} + rtol {rtol:e}\n", bad.len(), actual.len());
    for &i in bad.iter().take(8) {
        report += &format!(
            "  [{i}] actual {:.8e} expected {:.8e} |diff| {:.3e} ratio {:.6}\n",
            actual[i],
            expected[i],
            (actual[i] - expected[i]).abs(),
            actual[i] / expected[i]
        );
    }
    panic!("{report}");
}

/// Reads a tensor to f64 values.
pub fn values<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Vec<f64> {
    t.clone().into_data().convert::<f64>().to_vec::<f64>().unwrap()
}

/// A dense row-major matrix in f64 (test-side linear algebra only).
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat { rows, cols, data: vec![0.0; rows * cols] }
    }
    pub fn from_tensor<B: Backend>(t: &Tensor<B, 2>) -> Self {
        let [rows, cols] = t.dims();
        Mat { rows, cols, data: values(t) }
    }
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }
    /// `self kron other` (row-major vec convention: `vec(D)^T (G kron X) vec(D) = <D, G D X>`).
    pub fn kron(&self, other: &Mat) -> Mat {
        let mut out = Mat::zeros(self.rows * other.rows, self.cols * other.cols);
        for i in 0..self.rows {
            for j in 0..self.cols {
                let a = self.at(i, j);
                for k in 0..other.rows {
                    for l in 0..other.cols {
                        out.data[(i * other.rows + k) * out.cols + j * other.cols + l] = a * other.at(k, l);
                    }
                }
            }
        }
        out
    }
    /// The sub-block `[r0..r0+rows, c0..c0+cols]`.
    pub fn block(&self, r0: usize, c0: usize, rows: usize, cols: usize) -> Mat {
        let mut out = Mat::zeros(rows, cols);
        for i in 0..rows {
            for j in 0..cols {
                out.data[i * cols + j] = self.at(r0 + i, c0 + j);
            }
        }
        out
    }
    pub fn max_abs(&self) -> f64 {
        self.data.iter().fold(0.0, |m, v| m.max(v.abs()))
    }
    /// Eigenvalues of a symmetric matrix (cyclic Jacobi rotations).
    pub fn symmetric_eigenvalues(&self) -> Vec<f64> {
        assert_eq!(self.rows, self.cols);
        let n = self.rows;
        let mut a = self.data.clone();
        for _sweep in 0..100 {
            let off: f64 =
                (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * n + j].powi(2)).sum();
            if off < 1e-22 * (1.0 + self.max_abs().powi(2)) {
                break;
            }
            for p in 0..n {
                for q in p + 1..n {
                    let apq = a[p * n + q];
                    if apq.abs() < 1e-300 {
                        continue;
                    }
                    let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                    let t = if theta == 0.0 { 1.0 } else { t };
                    let c = 1.0 / (t * t + 1.0).sqrt();
                    let s = t * c;
                    for k in 0..n {
                        let (akp, akq) = (a[k * n + p], a[k * n + q]);
                        a[k * n + p] = c * akp - s * akq;
                        a[k * n + q] = s * akp + c * akq;
                    }
                    for k in 0..n {
                        let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                        a[p * n + k] = c * apk - s * aqk;
                        a[q * n + k] = s * apk + c * aqk;
                    }
                }
            }
        }
        (0..n).map(|i| a[i * n + i]).collect()
    }
}

/// Asserts two matrices agree to `tol` relative to the larger magnitude, with a report.
pub fn assert_mat_close(what: &str, actual: &Mat, expected: &Mat, tol: f64) {
    assert_eq!((actual.rows, actual.cols), (expected.rows, expected.cols), "{what}: shapes differ");
    let scale = expected.max_abs().max(actual.max_abs()).max(1e-30);
    assert_close_f64(what, &actual.data, &expected.data, tol * scale, 0.0);
}

/// Logits of `model` on the fixture's reference batch, real positions only, row after row.
pub fn real_logits<B: lalora::KernelBackend>(model: &Llama<B>, reference: &Reference, device: &B::Device) -> Vec<f32> {
    let (ids, mask) = reference.tensors::<B>(device);
    let logits = model.forward(ids, Some(mask));
    reference.lengths().iter().enumerate().flat_map(|(i, &len)| row_logits(&logits, i, len)).collect()
}

/// `name` of a `reference_{bf16,f16}.safetensors` file, real positions only.
pub fn half_reference(case: &str, file: &str, name: &str, reference: &Reference) -> Vec<f32> {
    let files = TensorFiles::open_file(&fixture(&format!("llama/{case}/{file}"))).unwrap();
    let all = files.read_f32_any(name).unwrap().to_vec::<f32>().unwrap();
    let (t, v) = (reference.shape[1], reference.vocab);
    reference.lengths().iter().enumerate().flat_map(|(i, &len)| all[i * t * v..(i * t + len) * v].to_vec()).collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
