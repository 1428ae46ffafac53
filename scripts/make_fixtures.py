"""Generate the small, deterministic reference fixtures under tests/fixtures/.

Everything is built from scratch with fixed seeds (nothing is downloaded); every
reference number is produced by `tokenizers` / `transformers` / `peft` / `torch`.
Re-running the script deletes and rewrites each output directory.

Outputs (paths relative to the repository root):

tests/fixtures/tokenizer/
    tokenizer.json          byte-level BPE (vocab 300) trained on the corpus in this
                            file, Llama-3 pre-tokenizer regex, ByteLevel decoder and a
                            Llama-3-style post-processor (Sequence[ByteLevel,
                            TemplateProcessing]) that prepends <|begin_of_text|> to
                            single sequences.  Special tokens are appended after the
                            297 trained tokens: <|begin_of_text|>=297,
                            <|end_of_text|>=298, <|pad|>=299.
    tokenizer_config.json   bos/eos/pad tokens; loads with AutoTokenizer.
    expected.json           {"vocab_size", "special_tokens", "cases": [{"text", "ids",
                            "decoded"}]} where ids = AutoTokenizer(dir)(text)["input_ids"]
                            (BOS added the HF default way) and decoded =
                            tok.decode(ids, skip_special_tokens=True).

tests/fixtures/llama/<case>/   random-weight LlamaForCausalLM checkpoints
    config.json, generation_config.json, model.safetensors (or shards + index)
    reference.safetensors   input_ids int64 [3,12], attention_mask int64 [3,12]
                            (row 0 full; rows 1/2 RIGHT-padded with <|pad|>, mask 0 on
                            the last 3 / 5 positions), logits float32 [3,12,300] from
                            the float32 model, attn_implementation="eager", eval(),
                            model(input_ids=..., attention_mask=...). Logits at padded
                            positions are included as transformers computes them.
    cases:
      gqa          hidden 64, inter 128, 2 layers, 4 heads / 2 kv heads, untied,
                   rope_theta 1e4, f32, config.json exactly as transformers 5 writes it.
                   Also generate.json (greedy, 8 new tokens, prompt = row 0[:5]) and
                   nll.json (per-row HF causal-LM loss on the unpadded row).
      tied_llama3  tied embeddings (no lm_head on disk), llama3 RoPE scaling, theta 5e5,
                   4 heads / 4 kv heads. config.json REWRITTEN in transformers-4 style
                   (top-level rope_theta + rope_scaling, torch_dtype, no
                   rope_parameters); checked to load in transformers 5 with identical
                   logits.
      head_dim     4 heads / 1 kv head, head_dim 32 (!= 64/4), eos_token_id a list,
                   f16 weights on disk; reference computed in f32 from the f16 weights.
      bf16_shards  like gqa with 3 layers, bf16 weights sharded (index.json);
                   reference computed in f32 from the bf16 weights.

tests/fixtures/peft/<case>/     LoRA adapters on the gqa base (B non-zero)
    adapter_config.json, adapter_model.safetensors  as PeftModel.save_pretrained writes
    reference.safetensors   same input_ids/attention_mask as the base, float32 logits
    meta.json               {"base": "gqa", ...}
    cases: all7 (r=4, alpha=8, all seven projections), rslora_qv (r=4, alpha=8,
           use_rslora, q_proj+v_proj).

Usage:  /work/pyvenv/bin/python scripts/make_fixtures.py
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
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path("tests/fixtures")  # relative to REPO; we chdir there so no absolute paths leak into outputs

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)  # single thread: reduction order (and thus every bit) is reproducible

# ----------------------------------------------------------------------------------------------
# (a) tokenizer
# ----------------------------------------------------------------------------------------------

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
TRAINED_VOCAB = 297  # + 3 special tokens appended afterwards = 300

# Pre-tokenizer regex used by the Llama 3 tokenizer.json.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog did not seem to mind,\n"
    "and the fox went on its way through the forest, thinking about the morning.\n",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many\n"
    "clips in May. How many clips did Natalia sell altogether in April and May?\n"
    "Natalia sold 48/2 = 24 clips in May.\n"
    "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
    "#### 72\n",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of\n"
    "babysitting. How much did she earn? Weng earns 12/60 = $0.2 per minute.\n"
    "Working 50 minutes, she earned 0.2 x 50 = $10.\n"
    "#### 10\n",
    "A language model reads a sequence of tokens and predicts the next one. It is\n"
    "trained on a large amount of text; the loss is the cross-entropy of the next\n"
    "token. Low-rank adapters (LoRA) add a small update B*A to each weight matrix.\n",
    "In 1969, 3 astronauts flew 384,400 km to the Moon! Numbers like 1234567,\n"
    "3.14159 and 2024-01-31 appear in text, as do quotes: \"yes\", 'no', (maybe).\n",
    "Mr. Smith's café is on the corner; they're open from 9 to 5, and we'll meet there.\n",
]

TOKENIZER_CASES = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  ",
    "multiple    spaces   between\twords",
    "line one\nline two\n\nline four\n",
    "digits 1234567 and 3.14159 and 2024",
    "café ünïcode 東京",
    "",
    "The answer is:\n#### 72",
    "Natalia sold 48/2 = 24 clips in May.",
    "Hello, world! It's a test; they're here (maybe).",
]


def make_tokenizer(out_dir: Path) -> dict:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    assert tok.get_vocab_size() == TRAINED_VOCAB, tok.get_vocab_size()
    # Like Llama 3: special tokens live after the regular vocabulary.
    tok.add_special_tokens([BOS, EOS, PAD])
    bos_id, eos_id, pad_id = (tok.token_to_id(t) for t in (BOS, EOS, PAD))
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS}:0 $A:0",
                pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                special_tokens=[(BOS, bos_id)],
            ),
        ]
    )

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    tok.save(str(out_dir / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "model_max_length": 64,
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")

    hf = AutoTokenizer.from_pretrained(str(out_dir))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (bos_id, eos_id, pad_id)
    assert len(hf) == TRAINED_VOCAB + 3
    cases = []
    for text in TOKENIZER_CASES:
        ids = hf(text)["input_ids"]
        assert ids[0] == bos_id, (text, ids)
        # the raw tokenizers library must agree with transformers
        assert tok.encode(text).ids == ids, (text, ids, tok.encode(text).ids)
        decoded = hf.decode(ids, skip_special_tokens=True)
        assert decoded == text, (text, decoded)  # byte-level BPE round-trips exactly
        cases.append({"text": text, "ids": ids, "decoded": decoded})
    info = {
        "vocab_size": len(hf),
        "special_tokens": {BOS: bos_id, EOS: eos_id, PAD: pad_id},
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "cases": cases,
    }
    (out_dir / "expected.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return {"hf": hf, "bos": bos_id, "eos": eos_id, "pad": pad_id, "vocab": len(hf)}


# ----------------------------------------------------------------------------------------------
# (b) llama checkpoints
# ----------------------------------------------------------------------------------------------

SEQ = 12
ROW_LENGTHS = [12, 9, 7]  # real (unpadded) length of each row; rows 1/2 right-padded by 3/5
SENTENCES = [
    "The quick brown fox jumps over the lazy dog and runs into the forest.",
    "Natalia sold 48/2 = 24 clips in May.\n#### 72",
    "A language model predicts the next token.",
]


def make_batch(tk: dict) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = torch.full((len(SENTENCES), SEQ), tk["pad"], dtype=torch.int64)
    attention_mask = torch.zeros((len(SENTENCES), SEQ), dtype=torch.int64)
    for i, (text, n) in enumerate(zip(SENTENCES, ROW_LENGTHS)):
        ids = tk["hf"](text)["input_ids"]
        assert len(ids) >= n, (text, len(ids))
        input_ids[i, :n] = torch.tensor(ids[:n])
        attention_mask[i, :n] = 1
    return input_ids, attention_mask


def base_config(tk: dict, **overrides) -> LlamaConfig:
    kw = dict(
        vocab_size=tk["vocab"],
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=64,
        initializer_range=0.1,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=tk["bos"],
        eos_token_id=tk["eos"],
        pad_token_id=tk["pad"],
        attention_bias=False,
        mlp_bias=False,
    )
    kw.update(overrides)
    config = LlamaConfig(**kw)
    config._attn_implementation = "eager"
    return config


def random_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # input_layernorm, post_attention_layernorm, model.norm
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def load_f32(path: Path) -> LlamaForCausalLM:
    model = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    return model.eval()


@torch.no_grad()
def logits_of(model, input_ids, attention_mask) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    return out.logits.detach().to(torch.float32).contiguous()


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_reference(case_dir: Path, input_ids, attention_mask, logits) -> None:
    assert torch.isfinite(logits).all()
    save_file(
        {"input_ids": input_ids.contiguous(), "attention_mask": attention_mask.contiguous(), "logits": logits},
        str(case_dir / "reference.safetensors"),
    )


def case_gqa(tk, input_ids, attention_mask) -> Path:
    d = fresh_dir(FIXTURES / "llama" / "gqa")
    model = random_model(base_config(tk), seed=1)
    model.save_pretrained(str(d))
    reloaded = load_f32(d)
    logits = logits_of(reloaded, input_ids, attention_mask)
    assert torch.equal(logits, logits_of(model, input_ids, attention_mask))
    write_reference(d, input_ids, attention_mask, logits)

    # generate.json: greedy decoding, EOS disabled so exactly 8 tokens are produced.
    prompt = input_ids[0:1, :5]
    with torch.no_grad():
        out = reloaded.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=8,
            min_new_tokens=8,
            eos_token_id=None,
            pad_token_id=tk["pad"],
        )
    generated = out[0, prompt.shape[1]:].tolist()
    assert len(generated) == 8, generated
    # cross-check generate() with an explicit argmax loop without KV cache
    seq = prompt.clone()
    with torch.no_grad():
        for _ in range(8):
            nxt = reloaded(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert seq[0, 5:].tolist() == generated, (seq[0, 5:].tolist(), generated)
    (d / "generate.json").write_text(
        json.dumps(
            {
                "prompt_ids": prompt[0].tolist(),
                "generated_ids": generated,
                "max_new_tokens": 8,
                "do_sample": False,
                "eos_token_id": None,
                "note": "greedy; EOS disabled; generated_ids excludes the prompt",
            },
            indent=2,
        )
        + "\n"
    )

    # nll.json: transformers' causal-LM loss (mean over len-1 shifted targets) on each unpadded row.
    rows = []
    with torch.no_grad():
        for i, n in enumerate(attention_mask.sum(1).tolist()):
            row = input_ids[i : i + 1, :n]
            loss = reloaded(input_ids=row, labels=row).loss
            rows.append({"row": i, "length": n, "num_tokens": n - 1, "loss": float(loss.double().item())})
    (d / "nll.json").write_text(
        json.dumps(
            {
                "note": "loss = model(input_ids=row[:length], labels=row[:length]).loss "
                "(float32 model, mean CE over num_tokens = length-1 targets)",
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    return d


def case_tied_llama3(tk, input_ids, attention_mask) -> Path:
    d = fresh_dir(FIXTURES / "llama" / "tied_llama3")
    # original_max_position_embeddings=64 with head_dim 16 and theta 5e5 puts the rotary
    # wavelengths (2*pi*5e5^(i/16) = 6.3, 32.5, 168, ...) into all three llama3 regimes:
    # < 16 unchanged, 16..64 smoothed, > 64 divided by factor.
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    config = base_config(
        tk,
        num_key_value_heads=4,
        tie_word_embeddings=True,
        rope_parameters=rope,
        max_position_embeddings=128,
    )
    model = random_model(config, seed=2)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(str(d))
    on_disk = load_file(str(d / "model.safetensors"))
    assert "lm_head.weight" not in on_disk, sorted(on_disk)
    before = logits_of(model, input_ids, attention_mask)

    # Rewrite config.json in the transformers-4 style.
    cfg_path = d / "config.json"
    cfg = json.loads(cfg_path.read_text())
    params = cfg.pop("rope_parameters")
    old = {}
    for k, v in cfg.items():
        if k == "dtype":
            old["torch_dtype"] = v
        else:
            old[k] = v
        if k == "max_position_embeddings":
            old["rope_theta"] = params["rope_theta"]
            old["rope_scaling"] = {k2: v2 for k2, v2 in params.items() if k2 != "rope_theta"}
    assert "rope_scaling" in old and "rope_parameters" not in old
    cfg_path.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")

    reloaded = load_f32(d)
    assert reloaded.config.rope_parameters["rope_type"] == "llama3", reloaded.config.rope_parameters
    assert reloaded.config.rope_parameters["rope_theta"] == 500000.0
    assert reloaded.config.tie_word_embeddings
    logits = logits_of(reloaded, input_ids, attention_mask)
    assert torch.equal(logits, before), (logits - before).abs().max()
    # sanity: the llama3 scaling really changes the answer vs plain RoPE with the same theta
    plain = base_config(tk, num_key_value_heads=4, tie_word_embeddings=True,
                        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                        max_position_embeddings=128)
    plain_model = LlamaForCausalLM(plain).eval()
    plain_model.load_state_dict(reloaded.state_dict())
    assert (logits_of(plain_model, input_ids, attention_mask) - logits).abs().max() > 1e-3
    write_reference(d, input_ids, attention_mask, logits)
    return d


def case_head_dim(tk, input_ids, attention_mask) -> Path:
    d = fresh_dir(FIXTURES / "llama" / "head_dim")
    config = base_config(
        tk,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        eos_token_id=[tk["eos"], tk["pad"]],
    )
    model = random_model(config, seed=3)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (4 * 32, 64)
    model.to(torch.float16).save_pretrained(str(d))
    on_disk = load_file(str(d / "model.safetensors"))
    assert all(t.dtype == torch.float16 for t in on_disk.values())
    reloaded = load_f32(d)
    assert reloaded.config.head_dim == 32
    write_reference(d, input_ids, attention_mask, logits_of(reloaded, input_ids, attention_mask))
    return d


def case_bf16_shards(tk, input_ids, attention_mask) -> Path:
    d = fresh_dir(FIXTURES / "llama" / "bf16_shards")
    model = random_model(base_config(tk, num_hidden_layers=3), seed=4)
    model.to(torch.bfloat16).save_pretrained(str(d), max_shard_size="100KB")
    shards = sorted(p.name for p in d.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (d / "model.safetensors.index.json").exists(), shards
    for s in shards:
        assert all(t.dtype == torch.bfloat16 for t in load_file(str(d / s)).values())
    reloaded = load_f32(d)
    write_reference(d, input_ids, attention_mask, logits_of(reloaded, input_ids, attention_mask))
    return d


# ----------------------------------------------------------------------------------------------
# (c) peft adapters on the gqa base
# ----------------------------------------------------------------------------------------------

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEFT_CASES = {
    "all7": dict(r=4, lora_alpha=8, target_modules=ALL7, lora_dropout=0.0, seed=11),
    "rslora_qv": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                      use_rslora=True, seed=12),
}


def make_peft(name: str, base_dir: Path, input_ids, attention_mask) -> Path:
    spec = dict(PEFT_CASES[name])
    seed = spec.pop("seed")
    d = fresh_dir(FIXTURES / "peft" / name)
    base = load_f32(base_dir)
    # init_lora_weights=False keeps nn.Linear's default (kaiming-uniform) init for BOTH
    # lora_A and lora_B, so B is non-zero and the adapter changes the logits.
    config = LoraConfig(task_type="CAUSAL_LM", bias="none", init_lora_weights=False, **spec)
    torch.manual_seed(seed)
    peft_model = get_peft_model(base, config).eval()
    n_b = 0
    for mod_name, p in peft_model.named_parameters():
        if "lora_B" in mod_name:
            assert p.abs().max() > 0, mod_name
            n_b += 1
    assert n_b == base.config.num_hidden_layers * len(spec["target_modules"]), n_b
    base_logits = logits_of(load_f32(base_dir), input_ids, attention_mask)
    logits = logits_of(peft_model, input_ids, attention_mask)
    assert (logits - base_logits).abs().max() > 1e-2, "adapter has no effect"
    peft_model.save_pretrained(str(d))
    (d / "README.md").unlink(missing_ok=True)  # auto-generated model card, not needed

    # reload from disk and check the saved adapter reproduces the logits
    reloaded = PeftModel.from_pretrained(load_f32(base_dir), str(d)).eval()
    again = logits_of(reloaded, input_ids, attention_mask)
    assert torch.equal(again, logits), (again - logits).abs().max()
    write_reference(d, input_ids, attention_mask, logits)
    r, alpha = spec["r"], spec["lora_alpha"]
    scale = alpha / (r ** 0.5) if spec.get("use_rslora") else alpha / r
    (d / "meta.json").write_text(
        json.dumps({"base": base_dir.name, "base_dir": str(base_dir), "r": r, "lora_alpha": alpha,
                    "use_rslora": bool(spec.get("use_rslora", False)), "scale": scale,
                    "target_modules": spec["target_modules"], "init_seed": seed}, indent=2) + "\n"
    )
    return d


def main() -> None:
    os.chdir(REPO)
    tk = make_tokenizer(FIXTURES / "tokenizer")
    print(f"tokenizer: vocab {tk['vocab']}, bos {tk['bos']}, eos {tk['eos']}, pad {tk['pad']}")
    input_ids, attention_mask = make_batch(tk)
    print("input_ids:\n", input_ids)
    gqa = case_gqa(tk, input_ids, attention_mask)
    for fn in (case_tied_llama3, case_head_dim, case_bf16_shards):
        print("wrote", fn(tk, input_ids, attention_mask))
    for name in PEFT_CASES:
        print("wrote", make_peft(name, gqa, input_ids, attention_mask))


if __name__ == "__main__":
    main()
