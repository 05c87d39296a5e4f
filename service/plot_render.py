"""Draws a ``Figure`` two ways: Plotly JSON for the offline HTML page, SVG or PNG via matplotlib."""

from __future__ import annotations

import io
import json
import math
from functools import lru_cache
from typing import Any

from service.plots import Figure, ImageFormat

# Small files for READMEs and Markdown reports; sharp enough at the 7×4.5 inch size.
PNG_DPI = 80


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js from the installed package, to inline: the page needs no network."""
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def to_plotly(figure: Figure) -> dict[str, Any]:
    """The figure as Plotly ``{data, layout}``."""
    data: list[dict[str, Any]] = []
    if figure.heatmap is not None:
        data.append(
            {"type": "heatmap", "z": figure.heatmap.matrix, "x": figure.heatmap.labels,
             "y": figure.heatmap.labels, "colorscale": "Blues", "texttemplate": "%{z}",
             # plotly.js draws its "Blues" dark at zero; reversed, dark means many, as
             # in the SVG beside it.
             "reversescale": True}
        )  # fmt: skip
    numbers = _point_numbers(figure)
    largest = _largest_size(figure)
    for series, numbered in zip(figure.series, numbers, strict=True):
        entry: dict[str, Any] = {"name": series.name, "x": series.x, "y": series.y}
        if series.kind == "bar":
            entry["type"] = "bar"
        else:
            entry["type"] = "scatter"
            entry["mode"] = "lines+markers" if series.kind == "line" else "markers+text"
            if series.dashed:
                entry["line"] = {"dash": "dash"}
        if numbered:
            entry["name"] = f"{'/'.join(numbered)}: {series.name}"
            entry["text"] = numbered
            entry["textposition"] = "top right"
            entry["hovertext"] = series.text or series.name
        if series.sizes:
            # A diameter: the area in proportion to the size.
            entry["marker"] = {"size": [8 + 22 * math.sqrt(s / largest) for s in series.sizes]}
        data.append(entry)
    layout: dict[str, Any] = {
        "title": {"text": figure.title}, "xaxis": {"title": {"text": figure.x_label}},
        "yaxis": {"title": {"text": figure.y_label}}, "barmode": "group", "height": 420,
    }  # fmt: skip
    if figure.heatmap is not None:
        layout["yaxis"]["autorange"] = "reversed"
    if _counts_along_x(figure):
        # Epochs are whole: plotly's automatic ticks put 1.5 between 1 and 2.
        layout["xaxis"]["tickformat"] = "d"
        layout["xaxis"]["dtick"] = max(1, math.ceil(max(len(s.x) for s in figure.series) / 10))
    if figure.heatmap is not None or any(s.kind == "bar" for s in figure.series):
        # Class names such as "0".."9" are categories, not numbers.
        layout["xaxis"]["type"] = "category"
        layout["yaxis"]["type"] = "category" if figure.heatmap is not None else "linear"
    return {"data": data, "layout": layout}


def _counts_along_x(figure: Figure) -> bool:
    """Whether the figure draws lines over whole numbers (epochs)."""
    lines = [s for s in figure.series if s.kind == "line"]
    return bool(lines) and all(
        isinstance(x, float | int) and float(x).is_integer() for s in lines for x in s.x
    )


def _point_numbers(figure: Figure) -> list[list[str]]:
    """Numbers for the points of scatter series (none for lines and bars), 1 upwards.

    The points carry a number and the legend its name: names written beside the points
    ran into each other where models trained in about the same time.
    """
    numbers: list[list[str]] = []
    count = 0
    for series in figure.series:
        if series.kind != "scatter":
            numbers.append([])
            continue
        numbers.append([str(count + n + 1) for n in range(len(series.x))])
        count += len(series.x)
    return numbers


def _largest_size(figure: Figure) -> float:
    # Marker sizes are relative to the largest: a log scale drew a 0.5M- and a
    # 2M-parameter model alike.
    return max((size for s in figure.series for size in s.sizes or []), default=1.0) or 1.0


# Inside <script>, "</script>" in a label would end the script and start HTML of the
# label's choosing; JSON's \u escapes keep every string the same to the parser.
_SCRIPT_SAFE = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def script_json(value: object) -> str:
    """JSON that can stand inside an HTML <script> element whatever its strings hold."""
    return json.dumps(value).translate(_SCRIPT_SAFE)


def plotly_div(figure: Figure, element_id: str) -> str:
    spec = script_json(to_plotly(figure))
    return (
        f'<div id="{element_id}" class="plot"></div>'
        f"<script>Plotly.newPlot({script_json(element_id)}, {spec}.data, {spec}.layout, "
        '{"displaylogo": false, "responsive": true});</script>'
    )


def _plain(text: str) -> str:
    # matplotlib reads "$...$" as math (a label "$\\x{$" raised, and the plot was a 500):
    # an escaped dollar is drawn as itself.
    return text.replace("$", r"\$")


def to_image(figure: Figure, image_format: ImageFormat = "svg") -> bytes:
    """The figure as a standalone SVG document or a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.ticker import MaxNLocator

    fig, axes = pyplot.subplots(figsize=(7, 4.5))
    try:
        if figure.heatmap is not None:
            labels = [_plain(label) for label in figure.heatmap.labels]
            axes.imshow(figure.heatmap.matrix, cmap="Blues")
            axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
            axes.set_yticks(range(len(labels)), labels)
            # White on the dark half of the scale: black on the diagonal's darkest blue
            # had a contrast of 1.65:1.
            darkest = max((max(row) for row in figure.heatmap.matrix), default=0) or 1
            for row, values in enumerate(figure.heatmap.matrix):
                for column, value in enumerate(values):
                    color = "white" if value > darkest / 2 else "black"
                    axes.text(column, row, str(value), ha="center", va="center", fontsize=7,
                              color=color)  # fmt: skip
        bars = [s for s in figure.series if s.kind == "bar"]
        numbers = _point_numbers(figure)
        largest = _largest_size(figure)
        for index, series in enumerate(figure.series):
            if series.kind == "bar":
                width = 0.8 / len(bars)
                positions = [i + index * width for i in range(len(series.x))]
                axes.bar(positions, series.y, width=width, label=_plain(series.name))
                axes.set_xticks([i + 0.4 - width / 2 for i in range(len(series.x))],
                                [_plain(str(x)) for x in series.x], rotation=45,
                                ha="right")  # fmt: skip
            elif series.kind == "line":
                axes.plot(series.x, series.y, "--" if series.dashed else "-", marker=".",
                          label=_plain(series.name))  # fmt: skip
            else:
                # An area, in proportion to the size.
                sizes = [20 + 280 * size / largest for size in series.sizes or [largest]]
                numbered = numbers[index]
                label = _plain(f"{'/'.join(numbered)}: {series.name}")
                axes.scatter(series.x, series.y, s=sizes, label=label)
                for x, y, number in zip(series.x, series.y, numbered, strict=True):
                    axes.annotate(number, (float(x), y), xytext=(5, 4),
                                  textcoords="offset points", fontsize=8)  # fmt: skip
        if _counts_along_x(figure):
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(_plain(figure.title), fontsize=10)
        axes.set_xlabel(_plain(figure.x_label))
        axes.set_ylabel(_plain(figure.y_label))
        if figure.series:
            # Beside the axes, not on them: inside, it hid the study's best model.
            axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        fig.tight_layout()
        buffer = io.BytesIO()
        # "tight" grows the image to hold the legend beside the axes.
        if image_format == "png":
            fig.savefig(buffer, format="png", dpi=PNG_DPI, bbox_inches="tight",
                        metadata={"Software": None})  # fmt: skip
        else:
            fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
        return buffer.getvalue()
    finally:
        pyplot.close(fig)
