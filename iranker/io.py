"""The shared floor under `data`, `train` and `evaluate`: reading instances, seeded randomness.

Nothing here imports another iranker layer except the data contract (`iranker.schema`), so every layer above can
use it without importing upward.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from iranker.schema import RankingInstance


def seeded_rng(seed: int, *key: object) -> random.Random:
    """An independent generator per (seed, key): instances do not depend on the order they are built in."""
    return random.Random(hashlib.sha256(repr((seed, *key)).encode()).digest())


def load_instances(path: str | Path) -> list[RankingInstance]:
    """Read an instances JSONL file; a bad line raises ValueError naming the file, the line and the field."""
    from pydantic import ValidationError

    from iranker.schema import describe_error

    out = []
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(RankingInstance.model_validate_json(line))
            except ValidationError as e:
                raise ValueError(f"{path}:{n}: {describe_error(e)}") from None
    if not out:
        raise ValueError(f"{path}: no instances (empty file)")
    return out
