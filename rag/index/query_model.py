"""The query embedder of one-shot commands: the index's own model through ONNX Runtime, without torch.

`rag search` spent 6 s of its 11-14 s importing sentence-transformers (torch, transformers, sklearn)
to embed one sentence. Here the same model is exported once to ONNX (`rag ingest` does it; the first
query does it when an older index has none), fused by ONNX Runtime's BERT optimizer, and kept only
if its vectors match the torch embedder's on probe texts (cosine >= PARITY_MIN_COSINE); otherwise
queries use torch, with a warning. At query time onnxruntime and `tokenizers` load the model in
~0.1-0.3 s, and the vectors are the torch model's to float precision, so the index built with torch
serves them unchanged (the embedder keeps the index's model name).

Measured on this project's 2-core machine: the session loads in 0.05-0.14 s with the weights in an
external-data file (mmapped), against 1.0-1.4 s for a single protobuf file; the graph is fused offline, so
nothing is re-optimised at load. A query is one short text, so the session runs on one intra-op thread
with its weights prepacked: a second thread only spins against other work on two cores, and prepacking costs
~0.07 s at load on one thread. Its effect on a whole warm search is what `rag bench --parts latency` prints
(hybrid p50 11.2 ms in the previous round's README, 4.0 ms with this setting). The ONNX Runtime export
is hand-rolled on the library's own calls (torch.onnx + onnxruntime.transformers) rather than pulling
in `optimum`, which would add a dependency for ~20 lines.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rag.errors import ConfigError, RagError
from rag.files import files_signature
from rag.index.embedders import PROBES, embed_backend, embedder_name, make_embedder
from rag.index.vectors import l2_normalise

log = logging.getLogger(__name__)
FOLDER = "query_model"  # in DATA_DIR: model.onnx, model.onnx.data (the weights), export.json
REFUSED = "query_model.refused.json"  # in DATA_DIR: why the last export was not used (queries use torch)
PARITY_MIN_COSINE = 0.9999
_MODEL_FILES = ("model.safetensors", "config.json", "tokenizer.json", "sentence_bert_config.json",
                "modules.json", "1_Pooling/config.json")
# Longer than max_seq_length (256 tokens), so truncation is checked too.
_LONG_PROBE = " ".join([PROBES[1]] * 12)
EXPORT_PROBES = [*PROBES, _LONG_PROBE, "Ünïcödé façade: naïve résumé — 日本語のテキスト", "GPT-4 vs. LLaMA-2 (7B/13B) on MMLU"]


class QueryModelUnavailable(RagError):
    """The ONNX query model cannot be made or used here (the caller falls back to torch)."""


def model_signature(model_path: str | Path) -> str:
    """What the export depends on: the model folder and its files' sizes and times."""
    root = Path(model_path).resolve()
    return f"{root}\n" + files_signature([root / name for name in _MODEL_FILES], root=root)


class OnnxQueryEmbedder:
    """The `Embedder` of an exported folder: tokenizers' WordPiece, the ONNX graph, mean pooling, L2 norm."""

    backend = "onnx"

    def __init__(self, folder: Path, model_path: str | Path, name: str, batch_size: int = 32):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_path = Path(model_path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # fused at export
        opts.intra_op_num_threads = 1  # one short text per query: see the module docstring
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # its warnings are about graph internals, not the user's problem
        try:
            self._session = ort.InferenceSession(str(Path(folder) / "model.onnx"), opts,
                                                 providers=["CPUExecutionProvider"])
            max_len = json.loads((model_path / "sentence_bert_config.json").read_text()).get("max_seq_length", 256)
            self._tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for a bad file
            raise QueryModelUnavailable(f"cannot load the query model in {folder} ({exc.__class__.__name__}: "
                                        f"{str(exc)[:160]})") from None
        self._tok.enable_truncation(max_length=max_len)
        self._tok.no_padding()
        self._lock = threading.Lock()  # one tokenizer instance; ORT's run() is thread-safe on its own
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.batch_size = batch_size
        self.dim = int(self._session.get_outputs()[0].shape[-1])
        self.name = name
        self.parity_cosine: float | None = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            encodings = self._tok.encode_batch(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))  # batches of similar length: less padding
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(len(encodings[i].ids) for i in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                n = len(encodings[i].ids)
                ids[r, :n] = encodings[i].ids
                mask[r, :n] = 1
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            hidden = self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
            m = mask[:, :, None].astype(np.float32)
            out[rows] = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)  # mean pooling
        vectors = l2_normalise(out)
        if not np.isfinite(vectors).all():
            raise ConfigError(f"the query model produced invalid vectors (NaN): delete {FOLDER}/ in the data dir "
                              "and run `rag ingest` to export it again")
        return vectors

    def describe(self) -> dict:
        info = {"backend": self.backend, "precision": "fp32", "model": self.name, "dim": self.dim}
        if self.parity_cosine is not None:
            info["torch_parity_min_cosine"] = self.parity_cosine
        return info


def _read_json(path: Path) -> dict | None:
    try:
        found = json.loads(path.read_text())
        return found if isinstance(found, dict) else None
    except (OSError, ValueError):
        return None


def _load(data_dir: Path, model_path: str, name: str) -> OnnxQueryEmbedder | None:
    """The exported embedder, or None when there is no export for this model (missing or outdated)."""
    folder = data_dir / FOLDER
    meta = _read_json(folder / "export.json")
    if not meta or meta.get("model_signature") != model_signature(model_path):
        return None
    embedder = OnnxQueryEmbedder(folder, model_path, name)
    embedder.parity_cosine = meta.get("parity_min_cosine")
    return embedder


def export(data_dir: Path, model_path: str, name: str, force: bool = False) -> Path:
    """Export the local model at `model_path` to DATA_DIR/query_model (atomically: a finished folder is
    renamed into place), unless an export of the same model is there. Needs torch and onnx; takes seconds.

    Raises QueryModelUnavailable when the export fails or its vectors differ from torch's (that outcome
    is remembered in DATA_DIR/query_model.refused.json, so queries do not retry it; `rag ingest` does)."""
    data_dir = Path(data_dir)
    signature = model_signature(model_path)
    folder = data_dir / FOLDER
    meta = _read_json(folder / "export.json")
    if not force and meta and meta.get("model_signature") == signature:
        return folder
    started = time.perf_counter()
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=data_dir))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users of a shared index
        worst = _export_into(tmp, Path(model_path))
        if worst < PARITY_MIN_COSINE:
            reason = (f"its vectors differ from the torch embedder's (min cosine {worst:.6f} < {PARITY_MIN_COSINE} "
                      "on the probe texts)")
            with contextlib.suppress(OSError):
                (data_dir / REFUSED).write_text(json.dumps({"model_signature": signature, "reason": reason}))
            raise QueryModelUnavailable(f"the ONNX export of {model_path} was not used: {reason}")
        (tmp / "export.json").write_text(json.dumps({
            "model_signature": signature, "model": name, "parity_min_cosine": round(worst, 9),
            "probes": len(EXPORT_PROBES), "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
        }, indent=1))
        old = None
        if folder.exists():  # an export of another model: out of the way first (a folder cannot replace a folder)
            old = folder.rename(folder.with_name(f".{FOLDER}-old-{os.getpid()}"))
        try:
            tmp.rename(folder)
        except OSError:  # another process published its export first: same model, use that one
            if not (folder / "export.json").is_file():
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        (data_dir / REFUSED).unlink(missing_ok=True)
        log.info("exported the query model to %s in %.1f s (min cosine to torch %.6f)", folder,
                 time.perf_counter() - started, worst)
        return folder
    except QueryModelUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.onnx, the optimizer and the file system raise many kinds
        raise QueryModelUnavailable(f"exporting {model_path} to ONNX in {data_dir} failed "
                                    f"({exc.__class__.__name__}: {str(exc)[:200]})") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _versions() -> dict:
    import onnxruntime
    import torch

    return {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__}


def _export_into(tmp: Path, model_path: Path) -> float:
    """Write model.onnx (+ model.onnx.data) into `tmp`; the worst cosine of its vectors to torch's on EXPORT_PROBES."""
    import warnings

    import torch
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from rag.index.embedders import TorchEmbedder, _quiet_progress_bars

    pooling = _read_json(model_path / "1_Pooling" / "config.json") or {}
    if not pooling.get("pooling_mode_mean_tokens") or any(
            pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")):
        raise QueryModelUnavailable(f"{model_path} does not use mean pooling, the only pooling the ONNX query model does")
    with _quiet_progress_bars():
        # Eager attention exports as MatMul/Softmax, which the BERT optimizer fuses into ORT's Attention kernel.
        model = AutoModel.from_pretrained(str(model_path), attn_implementation="eager", local_files_only=True).eval()
        config = AutoConfig.from_pretrained(str(model_path), local_files_only=True)
        sample = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)(["hello world"], return_tensors="pt")

    class LastHidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {0: "batch", 1: "seq"}
    raw = tmp / "raw.onnx"
    # The exporters print to stdout, which must stay clean for `rag ingest --json`.
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        torch.onnx.export(LastHidden(model), tuple(sample[n] for n in names), str(raw), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes={n: axes for n in [*names, "last_hidden_state"]},
                          opset_version=17, dynamo=False)
        fused = optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size)
        fused.save_model_to_file(str(tmp / "model.onnx"), use_external_data_format=True)
    for leftover in tmp.glob("raw.onnx*"):
        leftover.unlink()
    for written in tmp.iterdir():
        written.chmod(0o644)  # the optimizer writes its data file 0600
    if not (tmp / "model.onnx.data").is_file():
        raise QueryModelUnavailable(f"the optimizer wrote no model.onnx.data next to the model: {sorted(os.listdir(tmp))}")
    reference = TorchEmbedder(str(model_path), precision="fp32").embed(EXPORT_PROBES)
    candidate = OnnxQueryEmbedder(tmp, model_path, "probe").embed(EXPORT_PROBES)
    return float(np.min(np.sum(reference * candidate, axis=1)))


def ensure_exported(settings) -> None:
    """`rag ingest`'s step: export the query model if the index is embedded with the local model and there
    is no current export (a failure is a warning: queries then use torch)."""
    if embed_backend(settings) != "torch" or settings.embed_query_backend != "onnx":
        return
    try:
        export(Path(settings.data_dir), settings.model_path(), embedder_name(settings))
    except QueryModelUnavailable as exc:
        log.warning("%s: queries will be embedded with torch (slower to start)", exc)


def make_query_embedder(settings):
    """The embedder for queries: the ONNX export of the local model when there is one that matches torch
    (exported now, once, if missing), else what `make_embedder` builds, with a warning saying why."""
    if embed_backend(settings) != "torch" or settings.embed_query_backend != "onnx":
        return make_embedder(settings)
    try:
        return _shared(str(Path(settings.data_dir).resolve()), settings.model_path(), embedder_name(settings))
    except QueryModelUnavailable as exc:
        log.warning("%s: embedding queries with torch (slower to start; set RAG_EMBED_QUERY_BACKEND=torch to "
                    "skip the ONNX query model)", exc)
        return make_embedder(settings)


@functools.lru_cache(maxsize=4)
def _shared(data_dir: str, model_path: str, name: str) -> OnnxQueryEmbedder:
    """One loaded query model per process and data dir (the UI and MCP build several retrievers)."""
    root = Path(data_dir)
    found = _load(root, model_path, name)
    if found is not None:
        return found
    refused = _read_json(root / REFUSED)
    if refused and refused.get("model_signature") == model_signature(model_path):
        raise QueryModelUnavailable(f"the ONNX query model was refused at export: {refused.get('reason')}")
    log.warning("this index has no ONNX query model yet: exporting it once into %s (takes seconds; "
                "`rag ingest` does it ahead of time)", root / FOLDER)
    export(root, model_path, name)
    found = _load(root, model_path, name)
    if found is None:
        raise QueryModelUnavailable(f"the export in {root / FOLDER} does not match {model_path}")
    return found

