"""transformers + peft baseline for `lalora eval` on a generation set.

Loads a base Llama model directory (config.json, model.safetensors, tokenizer.json; e.g. the
bundled models/tiny) and a PEFT LoRA adapter directory (e.g. what `lalora train` writes to
RUN/adapter), then decodes every prompt of a generation file (JSONL records with "prompt" and
"answer") greedily, batched, and scores it the way `lalora eval` does:

- tokenisation: the model's tokenizer.json through `tokenizers`, special tokens added as its
  post-processor says (BOS), like lalora's Tokenizer::encode;
- batching: prompts sorted by token length (stable), cut into --batch-size chunks in that
  order, left padding with an attention mask (as lalora's generate_batch);
- decoding: `model.generate(do_sample=False, max_new_tokens=N)` with
  `eos_token_id=[eos, newline]`, i.e. transformers' own per-row stop (a finished row is padded
  while the others go on; the batch ends when every row has stopped or N tokens are out).
  Each row's output is then cut after its first stop token (post-hoc truncation of the
  padding only; no row generates past a stop token). The newline stop is used when "\\n" is
  one token, as in lalora;
- scoring: extract_answer / answers_match of src/eval/generation.rs, ported below.

Timing is wall-clock time of the decoding loop only (model loading and imports excluded), in
one process, for each --batch-size given, after one untimed warm-up batch. torch uses
--threads threads (default: all CPUs). Prints one JSON line per batch size:

    {"framework": "transformers", "batch": 8, "seconds": ..., "accuracy": ..., "items": ...,
     "merged": false, "threads": ..., "generated_tokens": ...}

On a shared 2-core machine, compare at --threads 1 as well: with 2 threads and other
processes running, torch's OpenMP workers spin-wait for each other and each tiny op gets
10-30x slower (measured here: batch 8 took 28-75 s at 2 threads, 2.7-3.3 s at 1).

--merge folds the adapter into the base weights first (peft merge_and_unload): the same
function with one matmul per projection, as lalora's evaluation does.

Usage:
    /work/pyvenv/bin/python scripts/bench_generate.py --model models/tiny \\
        --adapter RUN/adapter --data TASKS/target-arithmetic.test.jsonl --batch-size 1 8 32
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pins import check_versions  # noqa: E402

check_versions()

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402


def extract_answer(text: str) -> str | None:
    """What follows the last `####` (first word, up to the end of the line), else the last
    number; commas dropped, a trailing period dropped (src/eval/generation.rs)."""

    def clean(s: str) -> str:
        return s.strip().rstrip(".").replace(",", "")

    i = text.rfind("####")
    if i >= 0:
        rest = text[i + 4 :].split("\n", 1)[0].strip()
        words = rest.split()
        if words:
            return clean(words[0])
    number = last_number(text)
    return None if number is None else clean(number)


def is_digit(c: str) -> bool:
    """Rust's `is_ascii_digit` (Python's `isdigit` also accepts other scripts' digits)."""
    return "0" <= c <= "9"


def last_number(text: str) -> str | None:
    end = len(text)
    while end > 0 and not is_digit(text[end - 1]):
        end -= 1
    if end == 0:
        return None
    start = end
    while start > 0 and (is_digit(text[start - 1]) or text[start - 1] in ".,"):
        start -= 1
    if start > 0 and text[start - 1] == "-":
        start -= 1
    return text[start:end].lstrip(".,")


def answers_match(extracted: str, expected: str) -> bool:
    a, b = extracted.strip().replace(",", ""), expected.strip().replace(",", "")
    try:
        return abs(float(a) - float(b)) < 1e-9
    except ValueError:
        return a == b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--adapter", type=Path, help="PEFT adapter directory (none: the base model)")
    ap.add_argument("--data", required=True, type=Path, help="JSONL with prompt/answer records")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--merge", action="store_true", help="merge the adapter into the weights")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    tokenizer = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.adapter is not None:
        model = PeftModel.from_pretrained(model, args.adapter)
        if args.merge:
            model = model.merge_and_unload()
    model.eval()

    eos = model.config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    newline = tokenizer.encode("\n", add_special_tokens=False).ids
    stop = eos + (newline if len(newline) == 1 else [])
    pad = eos[0]

    records = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    prompts = [tokenizer.encode(r["prompt"]).ids for r in records]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))

    def decode_batch(indices: list[int]) -> list[list[int]]:
        longest = max(len(prompts[i]) for i in indices)
        ids = torch.full((len(indices), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(indices), longest), dtype=torch.long)
        for row, i in enumerate(indices):
            p = prompts[i]
            ids[row, longest - len(p) :] = torch.tensor(p)
            mask[row, longest - len(p) :] = 1
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=pad,
        )
        rows = []
        for row in out[:, longest:].tolist():
            cut = next((k + 1 for k, t in enumerate(row) if t in stop), len(row))
            rows.append(row[:cut])
        return rows

    with torch.inference_mode():
        decode_batch(order[: max(args.batch_size)])  # warm-up, untimed
        for batch in args.batch_size:
            start = time.perf_counter()
            outputs: dict[int, list[int]] = {}
            for k in range(0, len(order), batch):
                chunk = order[k : k + batch]
                outputs.update(zip(chunk, decode_batch(chunk)))
            seconds = time.perf_counter() - start
            correct = 0
            for i, r in enumerate(records):
                answer = extract_answer(tokenizer.decode(outputs[i], skip_special_tokens=True))
                correct += answer is not None and answers_match(answer, r["answer"])
            print(
                json.dumps(
                    {
                        "framework": "transformers",
                        "torch": torch.__version__,
                        "batch": batch,
                        "seconds": round(seconds, 4),
                        "accuracy": correct / len(records),
                        "items": len(records),
                        "merged": bool(args.merge and args.adapter is not None),
                        "threads": args.threads,
                        "generated_tokens": sum(len(o) for o in outputs.values()),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
