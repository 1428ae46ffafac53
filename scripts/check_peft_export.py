"""Check that an adapter exported by lalora loads in peft unchanged and computes lalora's logits.

`cargo test --release --test peft` leaves, in $TMPDIR/lalora-peft-export-check/, an offset-init
adapter exported by lalora as a plain rank-2r PEFT adapter (adapter_config.json +
adapter_model.safetensors) and the logits lalora computes with it on the `gqa` fixture batch
(lalora_logits.safetensors). This script loads the base fixture with transformers, applies the
adapter with `PeftModel.from_pretrained`, runs the same batch and reports max |diff|.

Usage:  /work/pyvenv/bin/python scripts/check_peft_export.py [EXPORT_DIR]
"""

from __future__ import annotations

import os
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


def main() -> None:
    export = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.gettempdir()) / "lalora-peft-export-check"
    ref = load_file(str(BASE / "reference.safetensors"))
    ours = load_file(str(export / "lalora_logits.safetensors"))["logits"]
    base = LlamaForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32, attn_implementation="eager").eval()
    model = PeftModel.from_pretrained(base, export).eval()
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits
    mask = ref["attention_mask"].bool()
    diff = (logits - ours).abs()[mask].max().item()
    print(f"peft loaded {export} (r={model.peft_config['default'].r}); max |logits diff| on real tokens = {diff:.3e}")
    if diff > 1e-4:
        sys.exit(f"FAILED: difference {diff} above 1e-4")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
