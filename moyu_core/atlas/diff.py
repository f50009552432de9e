"""Neurons whose activity differs most between two stored runs (the Neurons page's diff view).

Per neuron and run, over tokens 1..T-1 (token 0 is the sink, as in the atlas): mean |z| and the
activation frequency (share of tokens with the neuron in the layer's top 10% by |z|). Neurons are
ranked by the absolute difference of the chosen figure. Pure numpy on arrays read from the store.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..analysis import top_mask

BY = ("mean_abs", "frequency")


def _figures(z: np.ndarray) -> dict[str, np.ndarray]:
    z = z[1:] if len(z) > 1 else z
    return {"mean_abs": np.abs(z).mean(axis=0), "frequency": top_mask(z).mean(axis=0)}


def neuron_differences(layer_a: Callable[[int], np.ndarray], layer_b: Callable[[int], np.ndarray],
                       layers: list[int], by: str = "mean_abs", top: int = 20) -> list[dict]:
    """The `top` (layer, neuron) pairs with the largest |figure_a - figure_b|, largest first;
    `layer_a(i)` / `layer_b(i)` give each run's z (T, d_ff) at layer i."""
    if by not in BY:
        raise ValueError(f"unknown figure {by!r}; choose {', '.join(BY)}")
    rows = []
    for i in layers:
        a, b = _figures(np.asarray(layer_a(i), np.float32)), _figures(np.asarray(layer_b(i), np.float32))
        d = np.abs(a[by] - b[by])
        for n in np.argsort(-d, kind="stable")[:top]:
            rows.append({"layer": int(i), "neuron": int(n), "difference": float(d[n]),
                         "mean_abs_a": float(a["mean_abs"][n]), "mean_abs_b": float(b["mean_abs"][n]),
                         "frequency_a": float(a["frequency"][n]), "frequency_b": float(b["frequency"][n])})
    rows.sort(key=lambda r: (-r["difference"], r["layer"], r["neuron"]))
    return rows[:top]
