"""Check that a merged checkpoint exported by lalora loads in transformers with peft's logits.

`cargo test --release --test merge` leaves, in $TMPDIR/lalora-merge-check/{float32,bfloat16,float16}/,
the `gqa` fixture with the `peft/all7` adapter folded in by `lalora merge`'s library function
(sharded safetensors + index for float32, one file for the others) and the logits lalora computes
from each export (lalora_logits.safetensors). For each export this script
  1. loads it with LlamaForCausalLM.from_pretrained (no peft), computing in float32, and
     reports max |logits - peft(base + adapter) logits| on real tokens: the merge itself
     (exact for float32; the weight rounding for bfloat16/float16);
  2. reports max |transformers' logits - lalora's logits| from the same file: both read the
     rounded weights the same way;
  3. checks that config.json's dtype makes transformers load the weights in that dtype.

Usage:  /work/pyvenv/bin/python scripts/check_merge.py [CHECK_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pins import check_versions  # noqa: E402

check_versions()

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "tests/fixtures/llama/gqa"
ADAPTER = ROOT / "tests/fixtures/peft/all7"
MERGE_ATOL = 1e-4


def main() -> None:
    check = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.gettempdir()) / "lalora-merge-check"
    ref = load_file(str(ADAPTER / "reference.safetensors"))
    ids, mask = ref["input_ids"], ref["attention_mask"]
    real = mask.bool()
    base = LlamaForCausalLM.from_pretrained(BASE, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        peft_logits = PeftModel.from_pretrained(base, ADAPTER).eval()(input_ids=ids, attention_mask=mask).logits
    failed = False
    for name in ["float32", "bfloat16", "float16"]:
        export = check / name
        if not export.is_dir():
            print(f"{name}: {export} missing (run cargo test --release --test merge first)")
            failed = True
            continue
        model = LlamaForCausalLM.from_pretrained(export, dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        vs_peft = (logits - peft_logits).abs()[real].max().item()
        ours = load_file(str(export / "lalora_logits.safetensors"))["logits"]
        vs_lalora = (logits - ours).abs()[real].max().item()
        auto = LlamaForCausalLM.from_pretrained(export, dtype="auto")
        loaded = next(auto.parameters()).dtype
        shards = sorted(p.name for p in export.glob("model*.safetensors"))
        print(
            f"{name}: {len(shards)} file(s); transformers loads it as {loaded}; max |logits diff| on real tokens: "
            f"vs peft base+adapter {vs_peft:.3e}, vs lalora from the same file {vs_lalora:.3e}"
        )
        if loaded != getattr(torch, name):
            print(f"FAILED: {name} export loads as {loaded}")
            failed = True
        if vs_lalora > MERGE_ATOL or (name == "float32" and vs_peft > MERGE_ATOL):
            print(f"FAILED: {name} difference above {MERGE_ATOL}")
            failed = True
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
