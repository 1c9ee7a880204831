"""all-MiniLM-L6-v2 through ONNX Runtime: the same vectors as sentence-transformers, faster, and
without importing torch at query time.

The ONNX file is exported once from the packaged weights (torch is needed for that step only),
checked against sentence-transformers (cosine >= 0.999 on probe texts) and cached in the data dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rag.errors import ConfigError

log = logging.getLogger(__name__)
PARITY_MIN_COSINE = 0.999
PROBES = [
    "Erasing Concepts from Diffusion Models",
    "We propose a method to remove unwanted concepts from text-to-image diffusion models by fine-tuning "
    "the cross-attention layers, and evaluate it on artistic styles, nudity and objects.",
    "short",
]


def _model_fingerprint(model_path: Path) -> str:
    weights = model_path / "model.safetensors"
    stat = weights.stat()
    return hashlib.sha1(f"{weights.resolve()}:{stat.st_size}".encode()).hexdigest()[:12]


def export_onnx(model_path: Path, out: Path) -> None:
    """Export the transformer (token embeddings) to ONNX, fuse it for ONNX Runtime's CPU kernels,
    and verify parity with sentence-transformers before accepting it."""
    import warnings

    import torch
    from onnxruntime.transformers.optimizer import optimize_model
    from sentence_transformers import SentenceTransformer
    from transformers import AutoConfig, AutoModel

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the "Loading weights" bars are noise in `rag ingest`
    st = SentenceTransformer(str(model_path), device="cpu")
    # Eager attention exports as plain MatMul/Softmax, which ORT's BERT optimizer fuses into its
    # Attention kernel (SDPA exports are not fused); the vectors stay the same.
    model = AutoModel.from_pretrained(str(model_path), attn_implementation="eager").eval()
    config = AutoConfig.from_pretrained(str(model_path))
    tok = st.tokenizer(["hello world"], return_tensors="pt")

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".raw.onnx")
    tmp = out.with_suffix(".tmp.onnx")
    dyn = {0: "batch", 1: "seq"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper(model),
            (tok["input_ids"], tok["attention_mask"], tok["token_type_ids"]),
            str(raw),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "token_type_ids": dyn, "last_hidden_state": dyn},
            opset_version=17,
            dynamo=False,
        )
        fused = optimize_model(
            str(raw), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
        )
        fused.save_model_to_file(str(tmp))
    raw.unlink(missing_ok=True)
    reference = st.encode(PROBES, normalize_embeddings=True, convert_to_numpy=True)
    candidate = _OnnxRunner(tmp, model_path).embed(PROBES)
    worst = float(np.min(np.sum(reference * candidate, axis=1)))
    if worst < PARITY_MIN_COSINE:
        tmp.unlink(missing_ok=True)
        raise ConfigError(
            f"ONNX export does not match sentence-transformers (cosine {worst:.5f}): use RAG_EMBED_BACKEND=torch"
        )
    tmp.replace(out)
    log.info("exported ONNX model to %s (parity cosine %.6f)", out, worst)


class _OnnxRunner:
    def __init__(self, onnx_path: Path, model_path: Path, batch_size: int = 32):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("RAG_ORT_THREADS", os.cpu_count() or 1))
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        max_len = json.loads((model_path / "sentence_bert_config.json").read_text()).get("max_seq_length", 256)
        self._tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
        self._tok.enable_truncation(max_length=max_len)
        self._tok.no_padding()
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self._tok.encode_batch(list(texts))
        out = np.zeros((len(texts), 384), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))  # less padding
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(encodings[i].ids) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = len(encodings[i].ids)
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
            hidden = self._session.run(
                ["last_hidden_state"],
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
            )[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out[idx] = pooled
        return out


class OnnxEmbedder:
    """Embedder interface over ONNX Runtime; exports on first use."""

    def __init__(self, model_path: str, cache_dir: Path, batch_size: int = 32, name: str = "all-MiniLM-L6-v2"):
        path = Path(model_path)
        if not path.is_dir():
            raise ConfigError(f"embedding model folder {model_path} not found: set RAG_EMBED_MODEL_PATH")
        onnx_path = Path(cache_dir) / f"minilm-{_model_fingerprint(path)}-fused.onnx"
        if not onnx_path.exists():
            export_onnx(path, onnx_path)
        self._runner = _OnnxRunner(onnx_path, path, batch_size=min(batch_size, 64))
        self.name = name
        self.dim = 384

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._runner.embed(texts)
