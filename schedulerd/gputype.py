"""A GPU's type as a short name, from the model NVML reports: "NVIDIA H100 80GB HBM3" →
"h100", "NVIDIA A100-SXM4-80GB" → "a100", "NVIDIA GeForce RTX 4090" → "rtx4090".

The agent names its node's pool by it when its config names none, and jobs may ask for
a type (`schedctl submit --pool h100`): docs/pools.md. Memory sizes and form factors are
left out on purpose: an 80 GB and a 40 GB A100 are both "a100" (a pool of its own, if an
admin wants them apart, is one `pool =` line in the agent's config).
"""

from __future__ import annotations

import re

# Vendor and brand words that say nothing about the chip.
_NOISE = frozenset({"nvidia", "tesla", "geforce", "quadro", "titan", "graphics", "gpu"})
# A chip name: a few letters then digits, maybe a letter or two ("a100", "l40s", "gh200").
_CHIP = re.compile(r"[a-z]{1,4}\d{1,4}[a-z]{0,2}")
_FAMILY = re.compile(r"[a-z]{2,4}")  # "rtx" before "4090"


def gpu_type(model: str) -> str:
    """The type's short name, or "" when the model says none (a fake GPU)."""
    text = model.lower()
    if "fake" in text:
        return ""
    words = [w for w in re.split(r"[^a-z0-9]+", text) if w and w not in _NOISE]
    for i, word in enumerate(words):
        if _CHIP.fullmatch(word):
            return word
        if word.isdigit() and i > 0 and _FAMILY.fullmatch(words[i - 1]):
            return words[i - 1] + word  # "rtx 4090", "rtx a6000" is caught above
    return ""


def node_gpu_type(models: list[str]) -> str:
    """A node's GPU type: the one its GPUs share, else "" (mixed or unknown)."""
    types = {gpu_type(m) for m in models}
    return types.pop() if len(types) == 1 else ""
