"""Synthetic paper sets for scale tests and benchmarks (JSONL in the arXiv snapshot's shape)."""

from __future__ import annotations

import json
import random
from pathlib import Path

_WORDS = (
    "diffusion transformer attention sparse autoencoder concept erasure retrieval language model vision "
    "contrastive token embedding reinforcement reward alignment robustness adversarial graph federated "
    "quantization pruning distillation benchmark dataset evaluation interpretability feature circuit "
    "generation editing segmentation detection tracking video audio speech multimodal reasoning chain "
    "prompt instruction tuning preference optimization memory scaling law compute efficient inference"
).split()


def synthetic_papers(n: int, seed: int = 0):
    rng = random.Random(seed)
    for i in range(n):
        title = f"Synthetic Paper {i}: " + " ".join(rng.choice(_WORDS).title() for _ in range(6))
        sentences = [
            " ".join(rng.choice(_WORDS) for _ in range(rng.randint(12, 24))).capitalize() + "."
            for _ in range(rng.randint(4, 8))
        ]
        yield {"id": f"synth-{i}", "title": title, "abstract": " ".join(sentences), "categories": "cs.LG"}


def write_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    with open(path, "w") as fh:
        for obj in synthetic_papers(n, seed):
            fh.write(json.dumps(obj) + "\n")
    return path
