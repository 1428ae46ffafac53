"""Generate tests/fixtures/chat/: chat templates rendered by transformers' apply_chat_template.

The fixture is a small tokenizer (the byte-level BPE of tests/fixtures/tokenizer/ with Llama 3's
header and end-of-turn tokens added) and a tokenizer_config.json whose chat templates follow the
Llama 3 Instruct layout:

  default   the plain Llama 3 layout: BOS, then `<|start_header_id|>ROLE<|end_header_id|>\\n\\n`
            + stripped content + `<|eot_id|>` per message, and the assistant header as the
            generation prompt;
  tracked   the same layout with a default system message, Python string methods, role
            alternation enforced with raise_exception, and TRL's {% generation %} markers
            around each assistant reply, so transformers returns its assistant-token mask.

For each conversation, expected.json holds what transformers produces: the rendered text with
and without the generation prompt, the token ids (apply_chat_template(tokenize=True)), and for
`tracked` the assistant mask (return_assistant_tokens_mask=True); for conversations a template
rejects, the error message. tests/chat.rs compares lalora's minijinja rendering with all of it.

Usage:  /work/pyvenv/bin/python scripts/make_chat_fixture.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pins import check_versions  # noqa: E402

check_versions()

from tokenizers import AddedToken, Tokenizer  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOURCE_TOKENIZER = ROOT / "tests/fixtures/tokenizer/tokenizer.json"
OUT = ROOT / "tests/fixtures/chat"

HEADER_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

LLAMA3 = (
    "{% for message in messages %}"
    "{% set turn = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.first %}{% set turn = bos_token + turn %}{% endif %}"
    "{{ turn }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

TRACKED = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system = messages[0]['content'].strip() %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set system = 'You are a helpful assistant.' %}
    {%- set turns = messages %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system + '<|eot_id|>' }}
{%- for message in turns %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'assistant' %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
        {%- generation %}
            {{- message['content'].strip() + '<|eot_id|>' }}
        {%- endgeneration %}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'].strip() + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}],
    [
        {"role": "system", "content": "  You answer in one word.  "},
        {"role": "user", "content": "Capital of Zorvia?"},
        {"role": "assistant", "content": " Pellmar "},
        {"role": "user", "content": "And its river?"},
        {"role": "assistant", "content": "The Quell.\nIt runs north."},
    ],
    [
        {"role": "user", "content": "Sag etwas auf Deutsch: über Größe."},
        {"role": "assistant", "content": "Größe zählt — 12 über 7."},
        {"role": "user", "content": "Und jetzt?"},
    ],
    [{"role": "user", "content": "A"}, {"role": "user", "content": "B"}],
]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(str(SOURCE_TOKENIZER))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in HEADER_TOKENS])
    tok.save(str(OUT / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": "<|pad|>",
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
        "chat_template": [{"name": "default", "template": LLAMA3}, {"name": "tracked", "template": TRACKED}],
    }
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        # Load through transformers exactly as a user would.
        for name in ["tokenizer.json", "tokenizer_config.json"]:
            (Path(tmp) / name).write_bytes((OUT / name).read_bytes())
        hf = PreTrainedTokenizerFast.from_pretrained(tmp)

    cases = []
    for index, messages in enumerate(CONVERSATIONS):
        for template in ["default", "tracked"]:
            case = {"conversation": index, "template": template, "messages": messages}
            try:
                case["text"] = hf.apply_chat_template(messages, chat_template=template, tokenize=False)
                case["prompt_text"] = hf.apply_chat_template(
                    messages, chat_template=template, tokenize=False, add_generation_prompt=True
                )
                out = hf.apply_chat_template(
                    messages,
                    chat_template=template,
                    tokenize=True,
                    return_dict=True,
                    return_assistant_tokens_mask=template == "tracked",
                )
                case["ids"] = list(out["input_ids"])
                if template == "tracked":
                    case["assistant_mask"] = list(out["assistant_masks"])
            except Exception as e:  # noqa: BLE001 -- the fixture records the template's own error
                case["error"] = str(e)
            cases.append(case)
            status = case.get("error") or f"{len(case['ids'])} tokens"
            print(f"conversation {index} / {template}: {status}")
    expected = {
        "generated_by": "scripts/make_chat_fixture.py (transformers apply_chat_template)",
        "special_tokens": {t: tok.token_to_id(t) for t in HEADER_TOKENS},
        "cases": cases,
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}/tokenizer.json, tokenizer_config.json, expected.json ({len(cases)} cases)")


if __name__ == "__main__":
    main()
