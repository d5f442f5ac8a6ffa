"""Dense embeddings without a provider: a sentence-transformers BERT model run on the CPU.

`EMBEDDING_PROVIDER=local` gives offline and self-hosted deployments what BM25 cannot:
readers' own words. "My lidar gives one crazy reading, how do I ignore it?" shares no
word with the book's "Outlier rejection: reject measurements that don't match the
model's predictions", but the two are close in a sentence-embedding space. On the
textbook corpus's reader questions, offline hybrid retrieval finds an expected page in the
top 5 for every answerable question (BM25 alone: 0.90).

The model is a directory in the sentence-transformers layout (`config.json`,
`tokenizer.json`, `model.safetensors`, `1_Pooling/config.json`), by default
`all-MiniLM-L6-v2` (Apache-2.0, 384 dimensions, 90 MB) fetched once by
`bookchat fetch-model` (see `bookchat.llm.local_fetch`); nothing is downloaded while serving.

Why the encoder is written here: the libraries that run such models need either torch
(gigabytes, and pip resolves it to a CUDA build) or an ONNX export, which the model's
official files do not include. A BERT encoder is a few matrix products per layer: numpy
runs it, `tokenizers` (Hugging Face's Rust tokenizer) reads the model's own
`tokenizer.json`, and `safetensors` loads the weights. The output matches the reference
implementation (transformers' `BertModel` with mean pooling) to 3e-4 per component
(GELU uses the tanh form); `tests/test_local_embeddings.py` pins reference values.

Cost on one core of the 2-core machine: about 12 ms CPU per query, 120 ms per 256-token
chunk (a 220-chunk book ingests in about 30 s). BLAS runs single-threaded (threadpoolctl)
so that an embedding does not fight the server's event loop for both cores; encoding runs
in a worker thread, which numpy releases the GIL for.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from pathlib import Path
from typing import Any

__all__ = ["LocalEmbedder", "LocalModelError", "check_model_dir", "load_encoder"]

_BATCH = 16


class LocalModelError(RuntimeError):
    """The local model directory is missing, incomplete or not a BERT sentence model."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise LocalModelError(
            f"{path} is missing: run `bookchat fetch-model` (or point EMBEDDING_MODEL at a "
            "sentence-transformers model directory)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise LocalModelError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise LocalModelError(f"{path}: expected a JSON object")
    return data


def _length_batches(texts: list[str]) -> list[list[int]]:
    """Indices of `texts` in batches of `_BATCH` similar lengths: a batch is padded to its
    longest text, so mixing lengths wastes work."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[start : start + _BATCH] for start in range(0, len(order), _BATCH)]


class _Encoder:
    """A BERT encoder with mean pooling and L2 normalisation, on numpy."""

    def __init__(self, directory: Path) -> None:
        import numpy as np
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = _read_json(directory / "config.json")
        if config.get("model_type") != "bert" or config.get("hidden_act", "gelu") != "gelu":
            raise LocalModelError(
                f"{directory}: only BERT models with GELU are supported "
                f"(model_type {config.get('model_type')!r})"
            )
        pooling = _read_json(directory / "1_Pooling" / "config.json")
        if not pooling.get("pooling_mode_mean_tokens"):
            raise LocalModelError(f"{directory}: only mean-pooling sentence models are supported")
        max_len = 256
        sbert = directory / "sentence_bert_config.json"
        if sbert.exists():
            max_len = int(_read_json(sbert).get("max_seq_length", max_len))
        self.dim = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        try:
            raw = load_file(str(directory / "model.safetensors"))
        except FileNotFoundError as exc:
            raise LocalModelError(f"{directory / 'model.safetensors'} is missing") from exc
        w = {k.removeprefix("bert."): v.astype(np.float32) for k, v in raw.items()}
        try:
            self.word = w["embeddings.word_embeddings.weight"]
            self.position = w["embeddings.position_embeddings.weight"]
            self.token_type = w["embeddings.token_type_embeddings.weight"][0]
            self.embed_norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
            self.layers = [self._layer(w, i) for i in range(int(config["num_hidden_layers"]))]
        except KeyError as exc:
            raise LocalModelError(f"{directory}: weight {exc} not found") from exc
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(min(max_len, self.position.shape[0]))
        self.tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)))
        self._np = np

    @staticmethod
    def _layer(w: dict[str, Any], i: int) -> tuple[Any, ...]:
        import numpy as np

        def get(name: str) -> Any:
            return w[f"encoder.layer.{i}.{name}"]

        def t(name: str) -> Any:  # weights stored (out, in); x @ W.T, made contiguous once
            return np.ascontiguousarray(get(name).T)

        qkv = ("attention.self.query", "attention.self.key", "attention.self.value")
        return (
            np.ascontiguousarray(np.concatenate([get(f"{n}.weight") for n in qkv]).T),
            np.concatenate([get(f"{n}.bias") for n in qkv]),
            t("attention.output.dense.weight"),
            get("attention.output.dense.bias"),
            (get("attention.output.LayerNorm.weight"), get("attention.output.LayerNorm.bias")),
            t("intermediate.dense.weight"),
            get("intermediate.dense.bias"),
            t("output.dense.weight"),
            get("output.dense.bias"),
            (get("output.LayerNorm.weight"), get("output.LayerNorm.bias")),
        )

    def _norm(self, x: Any, params: tuple[Any, Any]) -> Any:
        x = x - x.mean(-1, keepdims=True)
        return x / self._np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * params[0] + params[1]

    def encode(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order; batches of similar lengths (padding to the
        longest text of a batch is wasted work: one 256-token text among short sentences
        made a batch cost 6x)."""
        from threadpoolctl import threadpool_limits

        vectors: list[list[float]] = [[] for _ in texts]
        with threadpool_limits(1):
            for batch in _length_batches(texts):
                encoded = self._encode([texts[i] for i in batch]).tolist()
                for i, vector in zip(batch, encoded, strict=True):
                    vectors[i] = vector
        return vectors

    def _encode(self, texts: list[str]) -> Any:
        np = self._np
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings])
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        batch, length = ids.shape
        heads, width = self.heads, self.dim // self.heads
        scale = np.float32(1.0 / math.sqrt(width))
        x = self._norm(self.word[ids] + self.position[:length] + self.token_type, self.embed_norm)
        padding = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        gelu_c, gelu_k = np.float32(math.sqrt(2.0 / math.pi)), np.float32(0.044715)
        for qkv_w, qkv_b, o_w, o_b, norm1, up_w, up_b, down_w, down_b, norm2 in self.layers:
            qkv = (x @ qkv_w + qkv_b).reshape(batch, length, 3, heads, width)
            q, k, v = qkv.transpose(2, 0, 3, 1, 4)
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + padding
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, self.dim)
            x = self._norm(x + context @ o_w + o_b, norm1)
            h = x @ up_w + up_b
            h = 0.5 * h * (1.0 + np.tanh(gelu_c * (h + gelu_k * h * h * h)))
            x = self._norm(x + h @ down_w + down_b, norm2)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


_REQUIRED = ("config.json", "tokenizer.json", "model.safetensors", "1_Pooling/config.json")


def check_model_dir(directory: str | Path) -> Path:
    """`directory` resolved, if it holds a model's files; a one-line error otherwise."""
    path = Path(directory).expanduser().resolve()
    missing = [name for name in _REQUIRED if not (path / name).is_file()]
    if missing:
        raise LocalModelError(
            f"no local embedding model at {path} ({', '.join(missing)} missing): run "
            "`just fetch-model`, or set EMBEDDING_MODEL to a sentence-transformers model directory"
        )
    return path


_ENCODERS: dict[Path, _Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def load_encoder(directory: str | Path) -> _Encoder:
    """The encoder of `directory`, loaded once per process (90 MB of weights)."""
    path = check_model_dir(directory)
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(path)
        if encoder is None:
            try:
                encoder = _ENCODERS[path] = _Encoder(path)
            except ImportError as exc:
                raise LocalModelError(
                    f"local embeddings need the `local` extra: pip install 'bookchat[local]' "
                    f"({exc.name} is missing)"
                ) from exc
        return encoder


class LocalEmbedder:
    """`Embedder` on a local sentence-transformers model (`provider = "local"`)."""

    provider = "local"

    def __init__(self, directory: str | Path) -> None:
        self._encoder = load_encoder(directory)
        self.model = Path(directory).name
        self.dim = self._encoder.dim

    @property
    def encoder(self) -> _Encoder:
        """The in-memory encoder (shared with the offline answerer's sentence scoring)."""
        return self._encoder

    async def embed_documents(self, texts: list[str], titles: list[str]) -> list[list[float]]:
        """One vector per text, the page title prepended (as Gemini's `title` does)."""
        joined = [
            f"{title}\n{text}" if title else text for text, title in zip(texts, titles, strict=True)
        ]
        # A thread hop per batch, not per book: an ingest stays cancellable between them.
        vectors: list[list[float]] = [[] for _ in joined]
        for batch in _length_batches(joined):
            encoded = await asyncio.to_thread(self._encoder.encode, [joined[i] for i in batch])
            for i, vector in zip(batch, encoded, strict=True):
                vectors[i] = vector
        return vectors

    async def embed_query(self, text: str) -> list[float]:
        return (await asyncio.to_thread(self._encoder.encode, [text]))[0]
