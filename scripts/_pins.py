"""Shared helper: check installed package versions against scripts/requirements.txt.

Imported by every oracle script at start. Mismatches do not abort (the caller may
still want to run), but they are reported loudly on stderr, because the fixtures
are only reproducible bit-for-bit with the pinned versions.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"


def _public(version: str) -> str:
    # PEP 440: "2.15.0+cu132" satisfies "==2.15.0"; compare without the local label.
    return version.split("+", 1)[0]


def read_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        pins[name.strip()] = version.strip()
    return pins


def fix_hash_seed() -> None:
    """Re-exec the current script with PYTHONHASHSEED=0 unless already set so.

    peft stores `target_modules` as a Python set, so the order in which
    adapter_config.json lists them depends on string hashing; a fixed hash seed makes
    the saved files byte-for-byte reproducible.
    """
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def check_versions() -> bool:
    """Return True if every pin matches; print a loud warning for each mismatch."""
    # Never touch the network: every model/tokenizer in these scripts is built locally.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    ok = True
    for name, want in read_pins().items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have is None or _public(have) != want:
            ok = False
            print(
                f"!!! WARNING: {name}=={have} installed but scripts/requirements.txt pins "
                f"{name}=={want}; outputs may differ from the committed fixtures !!!",
                file=sys.stderr,
            )
    return ok
