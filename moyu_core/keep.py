"""keep -> k: the one rule for how many of n entries a keep fraction keeps."""
from __future__ import annotations


def keep_count(n: int, keep: float) -> int:
    """round(keep * n), at least one and at most n."""
    return max(1, min(int(n), int(round(float(keep) * n))))
