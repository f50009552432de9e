"""Plotly figures for the explorer. Every figure stays small on the wire: large matrices are pooled
into a PNG overview (`image_overview`) or cut into a window (`window_heatmap`), never sent whole."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

MAX_CELLS = 40_000  # a detailed heatmap never carries more cells than this


def _layout(fig: go.Figure, height: int, **kw) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=36, b=10), **kw)
    return fig


def colorscale(signed: bool) -> str:
    return "RdBu_r" if signed else "Viridis"


def image_overview(pooled: np.ndarray, row_edges: np.ndarray, col_edges: np.ndarray, title: str,
                   signed: bool, x_title: str = "neuron", y_title: str = "token", height: int = 340) -> go.Figure:
    """A pooled matrix (at most MAX_CELLS blocks) as a heatmap whose axes are in original units:
    block (i, j) sits at (col_edges[j], row_edges[i]) and shows its strongest value."""
    assert pooled.size <= MAX_CELLS, "pool before drawing an overview"
    vmax = float(np.abs(pooled).max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=np.round(pooled.astype(np.float32), 3), x=col_edges[:-1], y=row_edges[:-1],
        colorscale=colorscale(signed), zmin=-vmax if signed else 0.0, zmax=vmax, colorbar=dict(thickness=12),
        hovertemplate=f"{y_title}s from %{{y}}<br>{x_title}s from %{{x}}<br>strongest %{{z:.3f}}<extra></extra>"))
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title, autorange="reversed")
    return _layout(fig, height, title=title)


def window_heatmap(values: np.ndarray, token_labels: list[str], neuron_ids: np.ndarray, title: str,
                   signed: bool, height: int | None = None) -> go.Figure:
    """Token-by-neuron heatmap of a window: hover shows token, neuron and value."""
    assert values.size <= MAX_CELLS, "window too large for a detailed heatmap"
    vmax = float(np.abs(values).max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=np.round(values.astype(np.float32), 4), x=[f"n{int(i)}" for i in neuron_ids], y=token_labels,
        colorscale=colorscale(signed), zmin=-vmax if signed else 0.0, zmax=vmax,
        hovertemplate="token %{y}<br>neuron %{x}<br>value %{z:.4f}<extra></extra>",
        colorbar=dict(thickness=12)))
    fig.update_yaxes(autorange="reversed", type="category", tickfont=dict(size=10))
    fig.update_xaxes(type="category", showticklabels=len(neuron_ids) <= 64, title="neuron")
    return _layout(fig, height or max(260, 16 * len(token_labels) + 90), title=title)


def mask_heatmap(categories: np.ndarray, token_labels: list[str], neuron_ids: np.ndarray,
                 labels: tuple[str, ...], title: str) -> go.Figure:
    """Categorical map of a method's mask against the oracle (0..3, see analysis.MASK_LABELS)."""
    assert categories.size <= MAX_CELLS
    colours = ["#f2f2f2", "#2a9d8f", "#e9c46a", "#e76f51"]
    scale = []
    for i, c in enumerate(colours):
        scale += [[i / 4, c], [(i + 1) / 4, c]]
    text = np.array(labels, dtype=object)[categories]
    fig = go.Figure(go.Heatmap(
        z=categories, x=[f"n{int(i)}" for i in neuron_ids], y=token_labels, zmin=-0.5, zmax=3.5,
        colorscale=scale, customdata=text,
        hovertemplate="token %{y}<br>neuron %{x}<br>%{customdata}<extra></extra>",
        colorbar=dict(thickness=12, tickvals=[0, 1, 2, 3], ticktext=list(labels))))
    fig.update_yaxes(autorange="reversed", type="category", tickfont=dict(size=10))
    fig.update_xaxes(type="category", showticklabels=False, title="neuron")
    return _layout(fig, max(240, 16 * len(token_labels) + 90), title=title)


def matrix_heatmap(values: np.ndarray, x: list, y: list, title: str, x_title: str, y_title: str,
                   colors: str = "Viridis", height: int = 320, hover_value: str = "%{z:.3f}") -> go.Figure:
    assert values.size <= MAX_CELLS
    fig = go.Figure(go.Heatmap(z=np.round(values.astype(np.float32), 4), x=x, y=y, colorscale=colors,
                               hovertemplate=f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>{hover_value}"
                                             "<extra></extra>", colorbar=dict(thickness=12)))
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title, autorange="reversed")
    return _layout(fig, height, title=title)


def bars(values: np.ndarray, labels: list[str], title: str, highlight: list[int] | None = None,
         y_title: str = "") -> go.Figure:
    colours = np.full(len(values), "#8da0cb", dtype=object)
    for i in highlight or []:
        colours[i] = "#e76f51"
    fig = go.Figure(go.Bar(x=labels, y=np.round(values, 4), marker_color=list(colours),
                           hovertemplate="%{x}<br>%{y:.3f}<extra></extra>"))
    fig.update_xaxes(type="category", showticklabels=len(labels) <= 64, tickangle=-60, tickfont=dict(size=9))
    fig.update_yaxes(title=y_title)
    return _layout(fig, 300, title=title)


def lines(series: dict[str, np.ndarray], x: np.ndarray, title: str, x_title: str, y_title: str,
          height: int = 280) -> go.Figure:
    fig = go.Figure()
    for name, y in series.items():
        fig.add_trace(go.Scatter(x=x, y=np.round(y, 4), mode="lines+markers", name=name, marker=dict(size=4)))
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title)
    return _layout(fig, height, title=title, legend=dict(orientation="h", y=-0.25))
