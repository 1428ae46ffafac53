"""Float64 reference for LoRA curvature statistics -> tests/fixtures/curvature/.

Model: the peft `all7` adapter (tests/fixtures/peft/all7, r=4, lora_alpha=8) on the
`gqa` base (tests/fixtures/llama/gqa), converted to float64, eager attention, eval().
Data: input_ids / attention_mask from tests/fixtures/llama/gqa/reference.safetensors
(3 rows of 12, rows 1/2 right-padded; unpadded lengths 12, 9, 7).

Definitions (all in float64)
----------------------------
Labels are EMPIRICAL: position t of a row predicts token t+1 of the same row. A
position carries a loss iff t+1 < len(row) (the unpadded length), so padding and each
row's last real position carry none.

    L      = SUM over loss-carrying positions (all rows) of cross-entropy (not the mean)
    N_tok  = number of loss-carrying positions (= sum_i (len_i - 1))
    s      = lora_alpha / r  (the LoRA scale; 2.0 here)

For every LoRA-adapted module m (HF path, e.g. `model.layers.0.self_attn.q_proj`),
captured with torch hooks in ONE forward and ONE backward, per position:

    x = input of the peft lora.Linear module            [d_in]
    z = output of lora_A, z = A x                        [r]
    g = dL/dy, y = output of the whole lora.Linear       [d_out]
        (y = W x + s B A x)
    h = dL/dz                                            [r]   (= s B^T g)

E[.] averages over the N_tok loss-carrying positions only:

    {m}.lora_A.X = E[x x^T]        (d_in, d_in)     {m}.lora_A.G = E[h h^T]        (r, r)
    {m}.lora_B.X = E[z z^T]        (r, r)           {m}.lora_B.G = s^2 E[g g^T]    (d_out, d_out)
    {m}.cross.X  = E[x z^T]        (d_in, r)        {m}.cross.G  = s E[h g^T]      (r, d_out)

so that dL/dA = sum_t h x^T and dL/dB = s sum_t g z^T.

Diagonal (the exact diagonal of the matrix kfac factorises: each loss-carrying position
is one observation, its share of the gradient dA_t = h x^T, dB_t = s g z^T squared
entry-wise):

    {m}.lora_A.diag = sum_t (h_t^2)(x_t^2)^T / N_tok      (r, d_in)
    {m}.lora_B.diag = s^2 sum_t (g_t^2)(z_t^2)^T / N_tok  (d_out, r)

Precision note: transformers' Llama upcasts to float32 internally, not to the input dtype
(RMSNorm computes in float32, RoPE cos/sin are computed in float32 from a float32
inv_freq, eager attention does its softmax in float32), so "model.double()" alone is only
accurate to ~1e-7 relative. This script therefore patches those three places (see
`exact_float64`) to the mathematically identical float64 computation, so the reference
is float64 end to end. It asserts that the patched logits agree with the unpatched
transformers float64 logits and with the float32 peft fixture (tests/fixtures/peft/all7).

The script asserts that the hook-based per-row gradients equal real autograd
gradients (one extra backward per row), that s * sum_t g z^T equals autograd dL/dB,
that sum_t h x^T equals autograd dL/dA, and that h = s B^T g.

Outputs:
    tests/fixtures/curvature/empirical.safetensors   all tensors above, float64
    tests/fixtures/curvature/meta.json               N_tok, s, r, lora_alpha, L,
                                                     module list, shapes, sources

Usage:  /work/pyvenv/bin/python scripts/curvature_reference.py
(run scripts/make_fixtures.py first)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pins import check_versions, fix_hash_seed  # noqa: E402

fix_hash_seed()
check_versions()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from peft import PeftModel  # noqa: E402
from peft.tuners.lora import Linear as LoraLinear  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()

REPO = Path(__file__).resolve().parent.parent
BASE_DIR = Path("tests/fixtures/llama/gqa")
ADAPTER_DIR = Path("tests/fixtures/peft/all7")
OUT_DIR = Path("tests/fixtures/curvature")
PREFIX = "base_model.model."  # peft wrapper prefix in front of the HF module path

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


def _rmsnorm_forward_f64(self, hidden_states):
    """LlamaRMSNorm.forward computing in max(input dtype, float32) instead of float32."""
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.promote_types(input_dtype, torch.float32))
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    return self.weight * hidden_states.to(input_dtype)


@torch.no_grad()
def _rotary_forward_f64(self, x, position_ids):
    """LlamaRotaryEmbedding.forward (default rope) computing the angles in float64."""
    freqs = position_ids[..., None].to(torch.float64) * self.inv_freq.to(device=x.device, dtype=torch.float64)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def _eager_attention_f64(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """modeling_llama.eager_attention_forward with the softmax in the query dtype (float64)."""
    key_states = modeling_llama.repeat_kv(key, module.num_key_value_groups)
    value_states = modeling_llama.repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1, dtype=query.dtype)
    attn_weights = torch.nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def exact_float64(model: torch.nn.Module) -> None:
    """Make the (already float64) model compute in float64 everywhere; see module docstring."""
    modeling_llama.LlamaRMSNorm.forward = _rmsnorm_forward_f64
    modeling_llama.eager_attention_forward = _eager_attention_f64
    for m in model.modules():
        if isinstance(m, modeling_llama.LlamaRotaryEmbedding):
            assert m.rope_type == "default", m.rope_type
            cfg = m.config
            dim = cfg.head_dim
            base = cfg.rope_parameters["rope_theta"]
            m.inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
            m.forward = _rotary_forward_f64.__get__(m)


def load_model() -> torch.nn.Module:
    base = LlamaForCausalLM.from_pretrained(str(BASE_DIR), dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, str(ADAPTER_DIR), is_trainable=True)
    model = model.to(torch.float64).eval()  # dropout is 0.0 anyway
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def loss_terms(logits: torch.Tensor, input_ids: torch.Tensor, carries: torch.Tensor) -> torch.Tensor:
    """Per-position CE of predicting token t+1 from position t, zero where no loss: [B, T]."""
    B, T, _ = logits.shape
    targets = torch.roll(input_ids, shifts=-1, dims=1)  # targets[:, t] = ids[:, t+1] (last column garbage)
    ce = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1), reduction="none").reshape(B, T)
    return torch.where(carries, ce, torch.zeros_like(ce))


def main() -> None:
    os.chdir(REPO)
    ref = load_file(str(BASE_DIR / "reference.safetensors"))
    input_ids, attention_mask = ref["input_ids"], ref["attention_mask"]
    B, T = input_ids.shape
    lengths = attention_mask.sum(1)
    assert torch.equal(attention_mask, (torch.arange(T)[None, :] < lengths[:, None]).long()), "expect right padding"
    carries = torch.arange(T)[None, :] + 1 < lengths[:, None]  # [B, T] bool
    n_tok = int(carries.sum())

    model = load_model()
    with torch.no_grad():
        hf_f64_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    exact_float64(model)
    modules = {name[len(PREFIX):]: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}
    assert len(modules) == 7 * model.config.num_hidden_layers, sorted(modules)
    any_m = next(iter(modules.values()))
    r = any_m.r["default"]
    s = float(any_m.scaling["default"])
    alpha = float(any_m.lora_alpha["default"])
    assert s == alpha / r and all(m.scaling["default"] == s for m in modules.values())

    # ---- one forward + one backward with hooks --------------------------------------------------
    cap: dict[str, dict[str, torch.Tensor]] = {n: {} for n in modules}
    handles = []
    for name, m in modules.items():
        def outer_hook(mod, args, out, name=name):
            cap[name]["x"] = args[0].detach()
            out.retain_grad()
            cap[name]["y"] = out

        def a_hook(mod, args, out, name=name):
            out.retain_grad()
            cap[name]["z"] = out

        handles.append(m.register_forward_hook(outer_hook))
        handles.append(m.lora_A["default"].register_forward_hook(a_hook))

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert logits.dtype == torch.float64
    peft_ref = load_file(str(ADAPTER_DIR / "reference.safetensors"))["logits"].to(torch.float64)
    assert (logits.detach() - peft_ref).abs().max() < 1e-4, "float64 model disagrees with the peft fixture"
    patch_diff = (logits.detach() - hf_f64_logits).abs().max().item()
    assert 0 < patch_diff < 1e-5, patch_diff  # patched != unpatched, but only at float32 rounding level
    print(f"max |exact f64 - transformers f64| logits = {patch_diff:.3g}; "
          f"max |exact f64 - peft f32 fixture| = {(logits.detach() - peft_ref).abs().max().item():.3g}")
    L = loss_terms(logits, input_ids, carries).sum()
    model.zero_grad(set_to_none=True)
    L.backward()
    for hd in handles:
        hd.remove()
    autograd_total = {
        name: (m.lora_A["default"].weight.grad.clone(), m.lora_B["default"].weight.grad.clone())
        for name, m in modules.items()
    }

    # ---- statistics --------------------------------------------------------------------------------
    tensors: dict[str, torch.Tensor] = {}
    per_row: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    shapes = {}
    mask = carries.to(torch.float64)[..., None]  # [B, T, 1]
    for name, m in modules.items():
        c = cap[name]
        x, z = c["x"], c["z"].detach()
        g, h = c["y"].grad, c["z"].grad
        d_in, d_out = x.shape[-1], g.shape[-1]
        shapes[name] = {"d_in": d_in, "d_out": d_out}
        Bw = m.lora_B["default"].weight.detach()  # [d_out, r]
        assert torch.allclose(h, s * g @ Bw, rtol=1e-10, atol=1e-14), name
        # positions that carry no loss receive no gradient (causal + key padding mask)
        assert (g * (1 - mask)).abs().max() < 1e-12 * max(1.0, float(g.abs().max())), name

        xm, zm, gm, hm = x[carries], z[carries], g[carries], h[carries]  # [N, .]
        assert xm.shape[0] == n_tok
        tensors[f"{name}.lora_A.X"] = xm.T @ xm / n_tok
        tensors[f"{name}.lora_A.G"] = hm.T @ hm / n_tok
        tensors[f"{name}.lora_B.X"] = zm.T @ zm / n_tok
        tensors[f"{name}.lora_B.G"] = (s * s) * (gm.T @ gm) / n_tok
        tensors[f"{name}.cross.X"] = xm.T @ zm / n_tok
        tensors[f"{name}.cross.G"] = s * (hm.T @ gm) / n_tok

        # per-row gradients from the hooks (masked positions contribute ~0 anyway)
        gA = torch.einsum("btr,bti->bri", h * mask, x)  # [B, r, d_in]
        gB = s * torch.einsum("bto,btr->bor", g * mask, z)  # [B, d_out, r]
        per_row[name] = (gA, gB)
        # per-token diagonal: sum over loss positions of the squared per-position terms
        tensors[f"{name}.lora_A.diag"] = torch.einsum("nr,ni->ri", hm**2, xm**2) / n_tok
        tensors[f"{name}.lora_B.diag"] = (s * s) * torch.einsum("no,nr->or", gm**2, zm**2) / n_tok
        # the same, from explicit per-position outer products
        per_pos_B = s * torch.einsum("no,nr->nor", gm, zm)
        assert torch.allclose((per_pos_B**2).sum(0) / n_tok, tensors[f"{name}.lora_B.diag"], rtol=1e-12, atol=1e-300)

        # totals vs autograd
        tA, tB = autograd_total[name]
        assert torch.allclose(gA.sum(0), tA, rtol=1e-9, atol=1e-13), (name, (gA.sum(0) - tA).abs().max())
        assert torch.allclose(s * gm.T @ zm, tB, rtol=1e-9, atol=1e-13), (name, (s * gm.T @ zm - tB).abs().max())
        assert torch.allclose(gB.sum(0), tB, rtol=1e-9, atol=1e-13), name

        assert tensors[f"{name}.lora_A.X"].shape == (d_in, d_in)
        assert tensors[f"{name}.lora_A.G"].shape == (r, r)
        assert tensors[f"{name}.lora_B.X"].shape == (r, r)
        assert tensors[f"{name}.lora_B.G"].shape == (d_out, d_out)
        assert tensors[f"{name}.cross.X"].shape == (d_in, r)
        assert tensors[f"{name}.cross.G"].shape == (r, d_out)
        assert tensors[f"{name}.lora_A.diag"].shape == (r, d_in)
        assert tensors[f"{name}.lora_B.diag"].shape == (d_out, r)

    # ---- per-row autograd check (one backward per row) --------------------------------------------
    for i in range(B):
        model.zero_grad(set_to_none=True)
        logits_i = model(input_ids=input_ids, attention_mask=attention_mask).logits
        L_i = loss_terms(logits_i, input_ids, carries)[i].sum()
        L_i.backward()
        for name, m in modules.items():
            gA, gB = per_row[name]
            aA, aB = m.lora_A["default"].weight.grad, m.lora_B["default"].weight.grad
            assert torch.allclose(gA[i], aA, rtol=1e-9, atol=1e-13), (name, i, (gA[i] - aA).abs().max())
            assert torch.allclose(gB[i], aB, rtol=1e-9, atol=1e-13), (name, i, (gB[i] - aB).abs().max())
    model.zero_grad(set_to_none=True)

    # ---- write ------------------------------------------------------------------------------------
    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    OUT_DIR.mkdir(parents=True)
    out = {k: v.detach().to(torch.float64).contiguous() for k, v in tensors.items()}
    assert all(torch.isfinite(v).all() for v in out.values())
    save_file(out, str(OUT_DIR / "empirical.safetensors"))
    meta = {
        "N_tok": n_tok,
        "s": s,
        "r": r,
        "lora_alpha": alpha,
        "L": float(L.item()),
        "row_lengths": lengths.tolist(),
        "modules": list(modules),
        "shapes": shapes,
        "suffixes": ["lora_A.X", "lora_A.G", "lora_B.X", "lora_B.G", "cross.X", "cross.G",
                     "lora_A.diag", "lora_B.diag"],
        "base": str(BASE_DIR),
        "adapter": str(ADAPTER_DIR),
        "data": str(BASE_DIR / "reference.safetensors"),
        "labels": "empirical: position t predicts token t+1; loss-carrying iff t+1 < row length",
        "loss": "L = sum (not mean) of CE over loss-carrying positions; E[.] = mean over the N_tok positions",
        "dtype": "float64",
        "precision": "computed fully in float64 (transformers' float32 upcasts in RMSNorm, RoPE and "
                     "eager softmax patched to float64)",
    }
    (OUT_DIR / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {OUT_DIR}: {len(out)} tensors, N_tok={n_tok}, s={s}, r={r}, L={L.item():.17g}")


if __name__ == "__main__":
    main()
