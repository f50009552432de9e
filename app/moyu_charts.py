"""Plotly figures for the explorer. Every figure stays small on the wire: large matrices are pooled
into an overview (`image_overview`) or cut into a window (`window_heatmap`), never sent whole.
Colour scales take a limit (a percentile of |values|, `analysis.colour_limit`) so that the attention
sink's massive values do not turn the rest black; every hover names the token (with its text) and
the neuron."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

MAX_CELLS = 40_000  # a detailed heatmap never carries more cells than this
SELECTED = "#ff2d95"


def _layout(fig: go.Figure, height: int, **kw) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=36, b=10), **kw)
    return fig


def colorscale(signed: bool) -> str:
    return "RdBu_r" if signed else "Viridis"


def _range(values: np.ndarray, signed: bool, limit: float | None) -> tuple[float, float]:
    vmax = float(limit) if limit else (float(np.nanmax(np.abs(values))) if values.size else 1.0)
    vmax = vmax or 1.0
    return (-vmax if signed else 0.0), vmax


def _colorbar(limit: float | None, clipped: bool) -> dict:
    return dict(thickness=12, title=dict(text="clipped" if clipped else "", side="right"))


def image_overview(pooled: np.ndarray, row_edges: np.ndarray, col_edges: np.ndarray, title: str,
                   signed: bool, x_title: str = "neuron", y_title: str = "token", height: int = 340,
                   limit: float | None = None, row_labels: list[str] | None = None,
                   strongest: np.ndarray | None = None) -> go.Figure:
    """A pooled matrix (at most MAX_CELLS blocks) as a heatmap whose axes are in original units:
    block (i, j) sits at (col_edges[j], row_edges[i]) and shows its strongest value.
    `row_labels` names each row block (with its tokens' text); `strongest` (R, C, 2) gives the
    token and neuron id of each block's strongest value, for the hover (and a click)."""
    assert pooled.size <= MAX_CELLS, "pool before drawing an overview"
    lo, hi = _range(pooled, signed, limit)
    y = row_labels if row_labels is not None else row_edges[:-1]
    if strongest is not None:
        hover = "%{y}<br>strongest: token %{customdata[0]}, neuron %{customdata[1]}<br>value %{z:.3f}<extra></extra>"
    else:
        hover = f"{y_title}s from %{{y}}<br>{x_title}s from %{{x}}<br>strongest %{{z:.3f}}<extra></extra>"
    fig = go.Figure(go.Heatmap(
        z=np.round(pooled.astype(np.float32), 3), x=col_edges[:-1], y=y, customdata=strongest,
        colorscale=colorscale(signed), zmin=lo, zmax=hi, colorbar=_colorbar(limit, limit is not None),
        hovertemplate=hover))
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title, autorange="reversed")
    if row_labels is not None:
        step = max(1, len(row_labels) // 12)
        fig.update_yaxes(type="category", tickvals=row_labels[::step],
                         ticktext=[s.split(" ", 1)[0] for s in row_labels[::step]], tickfont=dict(size=10))
    return _layout(fig, height, title=title)


def window_heatmap(values: np.ndarray, token_labels: list[str], neuron_ids: np.ndarray, title: str,
                   signed: bool, height: int | None = None, limit: float | None = None,
                   selected: tuple[int | None, int | None] = (None, None)) -> go.Figure:
    """Token-by-neuron heatmap of a window: hover shows token (with its text), neuron and value;
    `selected` = (row, column) in the window outlines that token's row and neuron's column."""
    assert values.size <= MAX_CELLS, "window too large for a detailed heatmap"
    lo, hi = _range(values, signed, limit)
    fig = go.Figure(go.Heatmap(
        z=np.round(values.astype(np.float32), 4), x=[f"n{int(i)}" for i in neuron_ids], y=token_labels,
        colorscale=colorscale(signed), zmin=lo, zmax=hi,
        hovertemplate="token %{y}<br>neuron %{x}<br>value %{z:.4f}<extra></extra>",
        colorbar=_colorbar(limit, limit is not None)))
    fig.update_yaxes(autorange="reversed", type="category", tickfont=dict(size=10))
    fig.update_xaxes(type="category", showticklabels=len(neuron_ids) <= 64, title="neuron (click a cell to select it)")
    row, col = selected
    if row is not None:
        fig.add_shape(type="rect", xref="paper", yref="y", x0=0, x1=1, y0=row - 0.5, y1=row + 0.5,
                      line=dict(color=SELECTED, width=1.5))
    if col is not None:
        fig.add_shape(type="rect", xref="x", yref="paper", x0=col - 0.5, x1=col + 0.5, y0=0, y1=1,
                      line=dict(color=SELECTED, width=1.5))
    return _layout(fig, height or max(260, 16 * len(token_labels) + 90), title=title)


MASK_COLOURS = ("#f2f2f2", "#2a9d8f", "#e9c46a", "#e76f51")


def _mask_scale() -> list:
    scale = []
    for i, c in enumerate(MASK_COLOURS):
        scale += [[i / 4, c], [(i + 1) / 4, c]]
    return scale


def mask_grid(panels: list[tuple[str, str, np.ndarray]], token_labels: list[str], neuron_ids: np.ndarray,
              labels: tuple[str, ...], title: str, per_row: int = 4) -> go.Figure:
    """Methods side by side: one categorical map per (method name, panel title, categories 0..3,
    see analysis.MASK_LABELS) of the same tokens and neurons. Each row of methods is one heatmap,
    their columns one after another (a column is named by neuron and method, "n17 · tda"; a white
    line parts two methods), and the rows' token axes are linked (zoom or pan the tokens of one
    row, all follow): a pair of axes per method made a method's first view slower to draw
    (`benchmarks/app_latency.py`), and several heatmaps on one axis hover the wrong cells. The
    hover gives the category's number, named on the colour bar: a name per cell made the figure
    more than ten times larger on the wire."""
    n, w = len(panels), len(neuron_ids)
    rows = -(-n // per_row)
    fig = make_subplots(rows=rows, cols=1, vertical_spacing=0.08 if rows > 1 else 0.0)
    ticks = [f"{i}: {label}" for i, label in enumerate(labels)]
    for r in range(rows):
        row = panels[r * per_row:(r + 1) * per_row]
        assert all(cats.size <= MAX_CELLS for _, _, cats in row)
        z = np.hstack([cats for _, _, cats in row]).astype(np.int8)
        fig.add_trace(go.Heatmap(
            z=z, x=[f"n{int(i)} · {name}" for name, _, _ in row for i in neuron_ids], y=token_labels,
            zmin=-0.5, zmax=3.5, colorscale=_mask_scale(), showscale=r == 0, name=", ".join(m for m, _, _ in row),
            hovertemplate="token %{y}<br>neuron %{x}<br>class %{z} (colour bar)<extra></extra>",
            colorbar=dict(thickness=12, tickvals=[0, 1, 2, 3], ticktext=ticks, len=0.9)), row=r + 1, col=1)
        axis = "" if r == 0 else str(r + 1)
        for c, (_, sub, _) in enumerate(row):
            fig.add_annotation(text=sub, x=c * w + (w - 1) / 2, y=1.0, xref=f"x{axis}", yref=f"y{axis} domain",
                               yanchor="bottom", showarrow=False, font=dict(size=13))
            if c:
                fig.add_vline(x=c * w - 0.5, line=dict(color="white", width=6), row=r + 1, col=1)
    fig.update_xaxes(type="category", showticklabels=False, showgrid=False, tickmode="array", tickvals=[],
                     range=[-0.5, min(per_row, n) * w - 0.5])   # a short last row keeps the panels' width
    fig.update_yaxes(autorange="reversed", type="category", tickfont=dict(size=9), matches="y", showgrid=False)
    return _layout(fig, rows * max(240, 14 * len(token_labels) + 60) + 40, title=title)


def matrix_heatmap(values: np.ndarray, x: list, y: list, title: str, x_title: str, y_title: str,
                   colors: str = "Viridis", height: int = 320, hover_value: str = "%{z:.3f}",
                   show_x: bool | None = None) -> go.Figure:
    assert values.size <= MAX_CELLS
    fig = go.Figure(go.Heatmap(z=np.round(values.astype(np.float32), 4), x=x, y=y, colorscale=colors,
                               hovertemplate=f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>{hover_value}"
                                             "<extra></extra>", colorbar=dict(thickness=12)))
    fig.update_xaxes(title=x_title, type="category", showticklabels=len(x) <= 64 if show_x is None else show_x)
    fig.update_yaxes(title=y_title, autorange="reversed")
    return _layout(fig, height, title=title)


def bars(values: np.ndarray, labels: list[str], title: str, highlight: list[int] | None = None,
         y_title: str = "") -> go.Figure:
    colours = np.full(len(values), "#8da0cb", dtype=object)
    for i in highlight or []:
        colours[i] = "#e76f51"
    fig = go.Figure(go.Bar(x=labels, y=np.round(values, 4), marker_color=list(colours),
                           hovertemplate="token %{x}<br>%{y:.3f}<extra></extra>"))
    fig.update_xaxes(type="category", showticklabels=len(labels) <= 64, tickangle=-60, tickfont=dict(size=9))
    fig.update_yaxes(title=y_title)
    return _layout(fig, 300, title=title)


def token_scores(values: np.ndarray, labels: list[str], title: str, marked: list[int], name: str = "score",
                 log: bool = False) -> go.Figure:
    """One value per token as a filled step line (hover: the token with its text), the `marked`
    tokens ringed. One path for the whole run rather than a bar per token: 1024 bars were the
    slowest figure of the Heavy hitters page for the browser to draw."""
    y = np.round(np.asarray(values, dtype=float), 5)
    fig = go.Figure(go.Scatter(x=labels, y=y, mode="lines", line=dict(shape="hvh", width=1, color="#8da0cb"),
                               fill="tozeroy", name=name,
                               hovertemplate=f"token %{{x}}<br>{name} %{{y:.4g}}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[labels[i] for i in marked], y=y[list(marked)], mode="markers", name="top k",
                             marker=dict(color="#e76f51", size=8, line=dict(color="white", width=1)),
                             hovertemplate=f"token %{{x}}<br>{name} %{{y:.4g}} (top k)<extra></extra>"))
    fig.update_xaxes(type="category", showticklabels=len(labels) <= 64, tickangle=-60, tickfont=dict(size=9))
    fig.update_yaxes(title=name, type="log" if log else "linear")
    return _layout(fig, 300, title=title, showlegend=False)


def lines(series: dict[str, np.ndarray], x: np.ndarray, title: str, x_title: str, y_title: str,
          height: int = 280, y_range: tuple[float, float] | None = None) -> go.Figure:
    fig = go.Figure()
    for name, y in series.items():
        fig.add_trace(go.Scatter(x=x, y=np.round(y, 4), mode="lines+markers", name=name, marker=dict(size=4)))
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title, range=y_range)
    return _layout(fig, height, title=title, legend=dict(orientation="h", y=-0.25))


def per_token(series: dict[str, np.ndarray], token_labels: list[str], title: str, y_title: str,
              height: int = 300, marked: int | None = None) -> go.Figure:
    """Values per token (one line per series), hover with the token's text; NaN (not scored)
    leaves a gap. `marked` draws a vertical line at that token."""
    fig = go.Figure()
    x = np.arange(len(token_labels))
    for name, y in series.items():
        fig.add_trace(go.Scatter(x=x, y=np.round(np.asarray(y, dtype=float), 5), mode="lines", name=name,
                                 customdata=token_labels, connectgaps=False,
                                 hovertemplate=f"{name}<br>token %{{customdata}}<br>%{{y:.4f}}<extra></extra>"))
    if marked is not None:
        fig.add_vline(x=marked, line=dict(color="grey", dash="dot"))
    fig.update_xaxes(title="token")
    fig.update_yaxes(title=y_title, rangemode="tozero")
    return _layout(fig, height, title=title, legend=dict(orientation="h", y=-0.3), hovermode="x unified")
