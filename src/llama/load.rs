//! Building a [`Llama`] from an HF model directory, from random weights, and saving one.

use std::path::Path;

use burn::module::Param;
use burn::tensor::{backend::Backend, Tensor, TensorData};

use super::config::LlamaConfig;
use super::dtype::WeightDtype;
use super::model::{Attention, DecoderLayer, Llama, Mlp, RmsNorm};
use super::projection::Projection;
use crate::error::{Error, Result};
use crate::io::{save_tensors, write_json_atomic, TensorFiles};
use crate::lora::{frozen_param, init_adapter, InitRng, LoraConfig, LoraLinear};

/// Where a model's weights come from.
trait WeightSource<B: Backend> {
    fn matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>>;
    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>>;
}

struct Checkpoint<'a, B: Backend> {
    files: &'a TensorFiles,
    device: &'a B::Device,
    dtype: WeightDtype,
}

impl<B: Backend> WeightSource<B> for Checkpoint<'_, B> {
    fn matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>> {
        Ok(on_device(self.files.read_as(name, &shape, self.dtype)?, self.device, self.dtype))
    }
    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>> {
        Ok(on_device(self.files.read_as(name, &[len], self.dtype)?, self.device, self.dtype))
    }
}

/// A tensor holding `data` as it is (`Tensor::from_data` with a bare device would widen a bf16
/// buffer to the backend's default float type).
fn on_device<B: Backend, const D: usize>(data: TensorData, device: &B::Device, dtype: WeightDtype) -> Tensor<B, D> {
    Tensor::from_data(data, (device, dtype.dtype()))
}

/// HF's init: normal(0, 0.02) matrices, unit norms.
struct RandomInit<'a, B: Backend> {
    rng: InitRng,
    device: &'a B::Device,
    dtype: WeightDtype,
}

impl<B: Backend> WeightSource<B> for RandomInit<'_, B> {
    fn matrix(&mut self, _name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>> {
        let n = shape[0] * shape[1];
        let data = match self.dtype {
            WeightDtype::F32 => TensorData::new(self.rng.normal(n, 0.02), shape),
            WeightDtype::Bf16 => TensorData::new(normal_rounded(&mut self.rng, n, half::bf16::from_f32), shape),
            WeightDtype::F16 => TensorData::new(normal_rounded(&mut self.rng, n, half::f16::from_f32), shape),
        };
        Ok(on_device(data, self.device, self.dtype))
    }
    fn vector(&mut self, _name: &str, len: usize) -> Result<Tensor<B, 1>> {
        Ok(on_device(self.dtype.convert(TensorData::new(vec![1f32; len], [len])), self.device, self.dtype))
    }
}

/// `n` draws of normal(0, 0.02) rounded by `round`, a block at a time: no f32 copy of the whole
/// tensor (1 GiB for Llama-3.1-8B's embeddings). The values are the f32 draws, rounded.
fn normal_rounded<T>(rng: &mut InitRng, n: usize, round: fn(f32) -> T) -> Vec<T> {
    const BLOCK: usize = 1 << 20;
    let mut values = Vec::with_capacity(n);
    for start in (0..n).step_by(BLOCK) {
        values.extend(rng.normal(BLOCK.min(n - start), 0.02).into_iter().map(round));
    }
    values
}

fn build<B: Backend>(config: &LlamaConfig, source: &mut impl WeightSource<B>, lm_head_stored: bool) -> Result<Llama<B>> {
    let c = config;
    let hidden = c.hidden_size;
    let norm = |source: &mut dyn WeightSource<B>, name: String| -> Result<RmsNorm<B>> {
        Ok(RmsNorm { weight: frozen_param(source.vector(&name, hidden)?), eps: c.rms_norm_eps })
    };
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut proj = |projection: Projection| -> Result<LoraLinear<B>> {
            let name = format!("{}.weight", projection.module_path(i));
            Ok(LoraLinear::frozen(source.matrix(&name, projection.dims(c))?))
        };
        let self_attn = Attention {
            q_proj: proj(Projection::Q)?,
            k_proj: proj(Projection::K)?,
            v_proj: proj(Projection::V)?,
            o_proj: proj(Projection::O)?,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        };
        let mlp = Mlp { gate_proj: proj(Projection::Gate)?, up_proj: proj(Projection::Up)?, down_proj: proj(Projection::Down)? };
        layers.push(DecoderLayer {
            self_attn,
            mlp,
            input_layernorm: norm(source, format!("{p}.input_layernorm.weight"))?,
            post_attention_layernorm: norm(source, format!("{p}.post_attention_layernorm.weight"))?,
        });
    }
    let embed_tokens = frozen_param(source.matrix("model.embed_tokens.weight", [c.vocab_size, hidden])?);
    let lm_head = if lm_head_stored { Some(frozen_param(source.matrix("lm_head.weight", [c.vocab_size, hidden])?)) } else { None };
    Ok(Llama { embed_tokens, layers, norm: norm(source, "model.norm.weight".into())?, lm_head, config: config.clone() })
}

impl<B: Backend> Llama<B> {
    /// Loads `config.json` and the safetensors weights (single file or shards) of an HF model
    /// directory. Weights are memory-mapped and converted to f32 one tensor at a time.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        Self::load_as(dir, device, WeightDtype::F32)
    }

    /// [`Self::load`] with the frozen base weights in `dtype` (see [`WeightDtype`]; check
    /// first that the backend can hold it: [`WeightDtype::check_backend`] or
    /// [`super::DtypeChoice::resolve`]).
    pub fn load_as(dir: &Path, device: &B::Device, dtype: WeightDtype) -> Result<Self> {
        let config = LlamaConfig::from_file(&dir.join("config.json"))?;
        let files = TensorFiles::open_dir(dir)?;
        Self::from_checkpoint_as(&config, &files, device, dtype)
    }

    /// Builds the model from already opened weights.
    pub fn from_checkpoint(config: &LlamaConfig, files: &TensorFiles, device: &B::Device) -> Result<Self> {
        Self::from_checkpoint_as(config, files, device, WeightDtype::F32)
    }

    /// [`Self::from_checkpoint`] with the frozen base weights in `dtype`.
    pub fn from_checkpoint_as(config: &LlamaConfig, files: &TensorFiles, device: &B::Device, dtype: WeightDtype) -> Result<Self> {
        // A tied model has no lm_head on disk; an untied one must have it.
        let lm_head_stored = !config.tie_word_embeddings;
        if lm_head_stored && !files.contains("lm_head.weight") {
            return Err(Error::MissingTensor { path: files.origin().to_path_buf(), name: "lm_head.weight".into() });
        }
        build(config, &mut Checkpoint { files, device, dtype }, lm_head_stored)
    }

    /// A model with HF-style random weights (normal(0, 0.02), unit norms).
    pub fn init_random(config: &LlamaConfig, seed: u64, device: &B::Device) -> Self {
        Self::init_random_as(config, seed, device, WeightDtype::F32)
    }

    /// [`Self::init_random`] with the weights rounded to `dtype` (the same draws as f32).
    pub fn init_random_as(config: &LlamaConfig, seed: u64, device: &B::Device, dtype: WeightDtype) -> Self {
        let mut source = RandomInit { rng: InitRng::new(seed), device, dtype };
        build(config, &mut source, !config.tie_word_embeddings).expect("random init cannot fail")
    }

    /// Adds fresh adapters to the projections `lora` targets (replacing any there). The rank
    /// may not exceed the smaller side of any targeted projection: past it, `B A` gains no
    /// expressiveness, only parameters.
    pub fn with_adapters(mut self, lora: &LoraConfig) -> Result<Self> {
        lora.validate()?;
        for (name, projection) in self.layers.first().map(|l| l.projections()).into_iter().flatten() {
            let [d_out, d_in] = projection.dims();
            if lora.wants(name) && lora.rank > d_out.min(d_in) {
                return Err(Error::arg(
                    "rank",
                    format!("{} is above what `{name}` ({d_out} x {d_in}) can use: at most {}", lora.rank, d_out.min(d_in)),
                ));
            }
        }
        let device = self.embed_tokens.device();
        let mut rng = InitRng::new(lora.seed);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (name, projection) in layer.projections_mut() {
                projection.adapter =
                    if lora.wants(name) { Some(init_adapter((i, name), projection.dims(), lora, &mut rng, &device)) } else { None };
            }
        }
        Ok(self)
    }

    /// The base weights as HF names them, merged adapters included if already merged.
    pub fn base_tensors(&self) -> Vec<(String, TensorData)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.val().into_data())];
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, projection) in layer.projections() {
                out.push((format!("{}.weight", name.module_path(i)), projection.weight.val().into_data()));
            }
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), layer.input_layernorm.weight.val().into_data()));
            out.push((format!("{p}.post_attention_layernorm.weight"), layer.post_attention_layernorm.weight.val().into_data()));
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight.val().into_data()));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), head.val().into_data()));
        }
        out
    }

    /// Writes `config.json` and `model.safetensors` (f32) to `dir`, atomically per file.
    /// Adapters are not included: merge them first, or save them with [`crate::io::peft`].
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_json_atomic(&dir.join("config.json"), &self.config.to_hf_json())?;
        let metadata = [("format".to_string(), "pt".to_string())].into_iter().collect();
        save_tensors(&dir.join("model.safetensors"), self.base_tensors(), Some(metadata))
    }
}

/// Makes every weight of the model trainable (full-parameter training, used by `pretrain`).
pub fn unfreeze_all<B: Backend>(model: Llama<B>) -> Llama<B> {
    use burn::module::Module;
    model.map(&mut Unfreeze)
}

struct Unfreeze;

impl<B: Backend> burn::module::ModuleMapper<B> for Unfreeze {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad(true)
    }
}
