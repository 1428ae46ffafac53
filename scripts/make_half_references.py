"""Reference logits of transformers' own half-precision forward, for `--dtype bf16|f16`.

Writes, next to two existing fixtures (their weights already half precision on disk):

  tests/fixtures/llama/bf16_shards/reference_bf16.safetensors
      logits float32 [3,12,300] of LlamaForCausalLM.from_pretrained(dtype=torch.bfloat16,
      attn_implementation="eager"): weights, activations and products in bf16 (RMSNorm and
      softmax upcast internally, as transformers does), the logits widened to f32 at the end.
  tests/fixtures/llama/head_dim/reference_f16.safetensors
      the same with dtype=torch.float16.

Each file also holds `logits_f32`, the fixture's float32 reference (the same weights
widened, computed in f32), so a test can state how far the half forward itself is from f32.
Inputs are the fixture's own `input_ids` / `attention_mask` (reference.safetensors).

Usage: python scripts/make_half_references.py   (pins: scripts/requirements.txt)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pins import check_versions, fix_hash_seed  # noqa: E402

fix_hash_seed()
check_versions()

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "llama"


@torch.no_grad()
def half_reference(case: str, dtype: torch.dtype, out_name: str) -> None:
    d = FIXTURES / case
    ref = load_file(str(d / "reference.safetensors"))
    model = LlamaForCausalLM.from_pretrained(str(d), dtype=dtype, attn_implementation="eager").eval()
    assert all(p.dtype == dtype for p in model.parameters())
    logits = model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits
    assert logits.dtype == dtype, logits.dtype
    logits = logits.to(torch.float32).contiguous()
    assert torch.isfinite(logits).all()
    gap = (logits - ref["logits"]).abs().max().item()
    print(f"{case} {dtype}: max |half - f32| = {gap:.4g} (f32 logits up to {ref['logits'].abs().max().item():.3g})")
    assert 0 < gap < 1.0, gap
    save_file({"logits": logits, "logits_f32": ref["logits"].contiguous()}, str(d / out_name))


def main() -> None:
    half_reference("bf16_shards", torch.bfloat16, "reference_bf16.safetensors")
    half_reference("head_dim", torch.float16, "reference_f16.safetensors")


if __name__ == "__main__":
    main()
