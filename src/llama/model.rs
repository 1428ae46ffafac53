//! The Llama decoder (HF `modeling_llama.py`), written once for training and inference.
//!
//! Composition order: [`RmsNorm`], [`Attention`], [`Mlp`], [`DecoderLayer`], [`Llama`].
//! Field names equal checkpoint names (`model.layers.{i}.self_attn.q_proj.weight` is
//! `layers[i].self_attn.q_proj.weight`), so loading and PEFT export need no remap table.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Bool, FloatDType, Int, Tensor};

use super::cache::{KvCache, LayerCache};
use super::config::LlamaConfig;
use super::projection::Projection;
use super::rope::{inverse_frequencies, RopeTables};
use crate::lora::{AdapterTap, LoraAdapter, LoraLinear};
use crate::{AttentionMask, KernelBackend};

/// Per-call switches of the forward pass.
pub struct ForwardOptions<'a, B: Backend> {
    /// Apply adapter dropout (training only).
    pub train: bool,
    /// Collect curvature taps from every adapter, in layer order.
    pub taps: Option<&'a mut Vec<AdapterTap<B>>>,
    /// Read and extend a KV cache (generation).
    pub cache: Option<&'a mut KvCache<B>>,
    /// RoPE tables and attention mask built by the caller (per-row positions of a left-padded
    /// batch; the key mask is then not read); `None` builds them from the key mask and the
    /// cache length.
    pub tables: Option<&'a AttentionTables<B>>,
}

impl<B: Backend> Default for ForwardOptions<'_, B> {
    fn default() -> Self {
        ForwardOptions { train: false, taps: None, cache: None, tables: None }
    }
}

/// RMSNorm: `y = x / sqrt(mean(x^2) + eps) * weight`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Per-channel gain, `[hidden]`, frozen.
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the mean square.
    pub eps: f64,
}

impl<B: KernelBackend> RmsNorm<B> {
    /// # Shapes
    /// - x: `[..., hidden]` -> same
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        // A bf16/f16 norm weight (a few thousand values) joins the f32 activations widened.
        B::rms_norm(x, self.weight.val().cast(FloatDType::F32), self.eps)
    }
}

/// Grouped-query self-attention with rotate-half RoPE.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[heads * head_dim, hidden]`
    pub q_proj: LoraLinear<B>,
    /// `[kv_heads * head_dim, hidden]`
    pub k_proj: LoraLinear<B>,
    /// `[kv_heads * head_dim, hidden]`
    pub v_proj: LoraLinear<B>,
    /// `[hidden, heads * head_dim]`
    pub o_proj: LoraLinear<B>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
}

impl<B: KernelBackend> Attention<B> {
    /// # Shapes
    /// - x: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &AttentionTables<B>,
        cache: Option<&mut LayerCache<B>>,
        train: bool,
        mut taps: Option<&mut Vec<AdapterTap<B>>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);

        let q = self.q_proj.forward_with(x.clone(), train, taps.as_deref_mut());
        let k = self.k_proj.forward_with(x.clone(), train, taps.as_deref_mut());
        let v = self.v_proj.forward_with(x, train, taps.as_deref_mut());
        let q = rope.rope.apply(q.reshape([batch, seq, h, d])); // [batch, seq, h, d]
        let mut k = rope.rope.apply(k.reshape([batch, seq, kvh, d])); // [batch, seq, kvh, d]
        let mut v = v.reshape([batch, seq, kvh, d]);

        if let Some(cache) = cache {
            (k, v) = cache.append(k, v); // [batch, past + seq, kvh, d]
        }

        // Grouped-query attention: query head i reads kv head i / (h / kvh), k and v unrepeated.
        let context = B::causal_attention(q, k, v, &rope.mask, 1.0 / (d as f64).sqrt()) // [batch, seq, h, d]
            .reshape([batch, seq, h * d]);
        self.o_proj.forward_with(context, train, taps)
    }
}

/// Per-forward constants shared by every layer's attention.
pub struct AttentionTables<B: Backend> {
    /// RoPE for the positions of this forward (query and key heads alike).
    pub rope: RopeTables<B>,
    /// Which keys each query sees (causal from the cache offset, and key padding).
    pub mask: AttentionMask,
}

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[intermediate, hidden]`
    pub gate_proj: LoraLinear<B>,
    /// `[intermediate, hidden]`
    pub up_proj: LoraLinear<B>,
    /// `[hidden, intermediate]`
    pub down_proj: LoraLinear<B>,
}

impl<B: KernelBackend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>, train: bool, mut taps: Option<&mut Vec<AdapterTap<B>>>) -> Tensor<B, 3> {
        let gate = self.gate_proj.forward_with(x.clone(), train, taps.as_deref_mut());
        let up = self.up_proj.forward_with(x, train, taps.as_deref_mut());
        self.down_proj.forward_with(B::swiglu(gate, up), train, taps)
    }
}

/// One pre-norm residual block.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Attention.
    pub self_attn: Attention<B>,
    /// MLP.
    pub mlp: Mlp<B>,
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
}

impl<B: KernelBackend> DecoderLayer<B> {
    /// `x + attn(norm(x))`, then `+ mlp(norm(.))`.
    ///
    /// # Shapes
    /// - x: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        tables: &AttentionTables<B>,
        cache: Option<&mut LayerCache<B>>,
        train: bool,
        mut taps: Option<&mut Vec<AdapterTap<B>>>,
    ) -> Tensor<B, 3> {
        let attn_in = self.input_layernorm.forward(x.clone());
        let x = x + self.self_attn.forward(attn_in, tables, cache, train, taps.as_deref_mut());
        let mlp_in = self.post_attention_layernorm.forward(x.clone());
        x + self.mlp.forward(mlp_in, train, taps)
    }
}

impl<B: Backend> DecoderLayer<B> {
    /// The projections of this layer, in forward order ([`Projection::ALL`]).
    pub fn projections(&self) -> [(Projection, &LoraLinear<B>); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            (Projection::Q, &a.q_proj),
            (Projection::K, &a.k_proj),
            (Projection::V, &a.v_proj),
            (Projection::O, &a.o_proj),
            (Projection::Gate, &m.gate_proj),
            (Projection::Up, &m.up_proj),
            (Projection::Down, &m.down_proj),
        ]
    }

    /// Mutable access to the projections, same order as [`Self::projections`].
    pub fn projections_mut(&mut self) -> [(Projection, &mut LoraLinear<B>); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            (Projection::Q, &mut a.q_proj),
            (Projection::K, &mut a.k_proj),
            (Projection::V, &mut a.v_proj),
            (Projection::O, &mut a.o_proj),
            (Projection::Gate, &mut m.gate_proj),
            (Projection::Up, &mut m.up_proj),
            (Projection::Down, &mut m.down_proj),
        ]
    }
}

/// The Llama causal language model.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// `[vocab, hidden]`, frozen.
    pub embed_tokens: Param<Tensor<B, 2>>,
    /// The decoder layers.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// `[vocab, hidden]`; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    /// The resolved configuration.
    pub config: LlamaConfig,
}

impl<B: KernelBackend> Llama<B> {
    /// Logits for a batch.
    ///
    /// # Shapes
    /// - input_ids: `[batch, seq]`
    /// - key_mask: `[batch, seq]`, true for real tokens, false for padding (None: no padding)
    /// - output: `[batch, seq, vocab]`
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>, key_mask: Option<Tensor<B, 2, Bool>>) -> Tensor<B, 3> {
        self.forward_with(input_ids, key_mask, ForwardOptions::default())
    }

    /// [`Self::forward`] with dropout, curvature taps or a KV cache. With a cache, `key_mask`
    /// covers the cached positions too: `[batch, past + seq]`.
    pub fn forward_with(
        &self,
        input_ids: Tensor<B, 2, Int>,
        key_mask: Option<Tensor<B, 2, Bool>>,
        options: ForwardOptions<'_, B>,
    ) -> Tensor<B, 3> {
        let hidden = self.hidden_states(input_ids, key_mask, options);
        self.logits(hidden)
    }

    /// The final normalised hidden states, before the LM head.
    ///
    /// # Shapes
    /// - output: `[batch, seq, hidden]`
    pub fn hidden_states(
        &self,
        input_ids: Tensor<B, 2, Int>,
        key_mask: Option<Tensor<B, 2, Bool>>,
        options: ForwardOptions<'_, B>,
    ) -> Tensor<B, 3> {
        let ForwardOptions { train, mut taps, mut cache, tables } = options;
        let [_, seq] = input_ids.dims();
        let device = input_ids.device();
        let start = cache.as_ref().map_or(0, |c| c.len());
        let built;
        let tables = match tables {
            Some(tables) => tables,
            None => {
                built = self.attention_tables(key_mask.as_ref(), seq, start, &device);
                &built
            }
        };

        let mut x = self.embed(input_ids);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| c.layer_mut(i));
            x = layer.forward(x, tables, layer_cache, train, taps.as_deref_mut());
        }
        self.norm.forward(x)
    }

    /// The token embeddings, `[batch, seq, hidden]` in f32 (rows of a bf16/f16 table are
    /// widened: the residual stream is f32).
    pub fn embed(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        burn::tensor::module::embedding(self.embed_tokens.val(), input_ids).cast(FloatDType::F32)
    }

    /// Projects hidden states to the vocabulary.
    ///
    /// # Shapes
    /// - hidden: `[batch, seq, hidden]` -> `[batch, seq, vocab]`
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        // Not `module::linear(hidden, w.transpose())`: it reshapes the transposed view, which
        // copies the whole `[vocab, hidden]` head at every call on the CPU backends.
        crate::lora::frozen_linear(hidden, self.head_weight())
    }

    /// RoPE tables and the attention mask for `seq` new positions after `past` cached ones
    /// (`key_mask`: `[batch, past + seq]`, true for real tokens).
    pub fn attention_tables(
        &self,
        key_mask: Option<&Tensor<B, 2, Bool>>,
        seq: usize,
        past: usize,
        device: &B::Device,
    ) -> AttentionTables<B> {
        let c = &self.config;
        let inv_freq = inverse_frequencies(c);
        // Backends store booleans differently (u8, u32): read the mask back as integers.
        let mask: Option<Vec<bool>> = key_mask.map(|m| {
            let ints: Vec<i64> = m.clone().int().into_data().convert::<i64>().to_vec().expect("int data");
            ints.into_iter().map(|v| v != 0).collect()
        });
        AttentionTables {
            rope: RopeTables::new(&inv_freq, past, seq, device),
            // No padding at all is the kernels' fast path.
            mask: AttentionMask { past, key_valid: mask.filter(|m| m.contains(&false)).map(Into::into) },
        }
    }
}

impl<B: Backend> Llama<B> {
    /// The LM head's weight, `[vocab, hidden]` (the embedding matrix when tied).
    pub fn head_weight(&self) -> Tensor<B, 2> {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens).val()
    }

    /// Every adapter with its HF module path, in forward order.
    pub fn adapters(&self) -> Vec<&LoraAdapter<B>> {
        self.layers.iter().flat_map(|l| l.projections().into_iter().filter_map(|(_, p)| p.adapter.as_ref())).collect()
    }

    /// Every adapted projection, mutable, in forward order.
    pub fn adapters_mut(&mut self) -> Vec<&mut LoraAdapter<B>> {
        self.layers.iter_mut().flat_map(|l| l.projections_mut().into_iter().filter_map(|(_, p)| p.adapter.as_mut())).collect()
    }

    /// Folds every adapter into its base weight.
    pub fn merge_adapters(mut self) -> Self {
        for layer in &mut self.layers {
            for (_, projection) in layer.projections_mut() {
                let p = std::mem::replace(projection, LoraLinear::frozen(projection.weight.val()));
                *projection = p.merge();
            }
        }
        self
    }
}
