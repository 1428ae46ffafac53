"""PyTorch baseline for the LoRA training-step benchmark (`lalora bench`).

Measures one LoRA training step (forward, backward, AdamW step, zero_grad) of a
random-weight LlamaForCausalLM built from an HF config.json preset (--config, default
models/presets/small.json: vocab 8192, hidden 384, intermediate 1024, 6 layers, 6 heads,
2 kv heads) on CPU: batch --batch x seq --seq random token ids, base weights in --dtype
(float32 by default; bfloat16 or float16 build the model directly in that type, as
from_pretrained(dtype=...) loads a checkpoint, while peft keeps the adapters float32), peft LoRA
r=--rank / alpha=2r / dropout 0 on all seven projections (q,k,v,o,gate,up,down),
loss = model(input_ids, labels=input_ids).loss, AdamW(lr=1e-4) over the LoRA parameters
only. --gradient-checkpointing turns on transformers' per-layer activation checkpointing
(non-reentrant). The same presets and flags as `lalora bench --preset P --batch-size B
--seq S --rank R --dtype D [--gradient-checkpointing]`, so both sides run the same model.

torch.set_num_threads(os.cpu_count()) unless --threads is given. Runs --warmup steps
(default 2), then times --steps steps (default 5) and prints ONE JSON line:

    {"framework": "torch", "torch": ..., "threads": ..., "attn": ..., "batch": ...,
     "seq": ..., "steps": ..., "tokens_per_s": ..., "step_ms_mean": ...,
     "step_ms_min": ..., "peak_rss_mib": ...}

tokens_per_s = batch * seq / mean step time; peak_rss_mib from resource.getrusage
(ru_maxrss, whole process, including model construction).

Usage:  python scripts/bench_torch.py [--config models/presets/small.json] [--batch 8]
            [--seq 256] [--rank 8] [--steps 5] [--attn sdpa|eager]
            [--dtype float32|bfloat16|float16] [--gradient-checkpointing]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pins import check_versions  # noqa: E402

check_versions()

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default 2)")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="attention implementation")
    ap.add_argument("--config", type=Path, default=ROOT / "models/presets/small.json",
                    help="HF config.json of the model (random weights)")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step")
    ap.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = 2 rank)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                    help="type of the frozen base weights (adapters stay float32)")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="recompute each layer in the backward")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with open(args.config) as f:
        config = LlamaConfig(**json.load(f))
    # Positions beyond the preset's max_position_embeddings only change RoPE's cache size.
    config.max_position_embeddings = max(config.max_position_embeddings, args.seq)
    config._attn_implementation = args.attn
    dtype = getattr(torch, args.dtype)
    # Built directly in the target type: no float32 copy inflates the peak.
    model = LlamaForCausalLM._from_config(config, dtype=dtype)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=TARGETS, bias="none",
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    input_ids = torch.randint(0, config.vocab_size, (args.batch, args.seq))

    def step() -> float:
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)

    mean = sum(times) / len(times)
    result = {
        "framework": "torch",
        "config": str(args.config),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "attn": args.attn,
        "dtype": args.dtype,
        "gradient_checkpointing": args.gradient_checkpointing,
        "batch": args.batch,
        "seq": args.seq,
        "rank": args.rank,
        "steps": args.steps,
        "trainable_params": sum(p.numel() for p in params),
        "tokens_per_s": args.batch * args.seq / mean,
        "step_ms_mean": mean * 1e3,
        "step_ms_min": min(times) * 1e3,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
