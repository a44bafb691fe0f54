"""The comparison as one self-contained HTML page (inline CSS, PNGs as base64 data URIs, no
script, nothing fetched), and its logging on the sweeps' parent runs as ``report/compare.html``."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from tempfile import TemporaryDirectory

from mlflow.tracking import MlflowClient

from boxinst.dashboards.tables import OURS, Table, formatted
from boxinst.platform.metrics import ARTIFACT_REPORT

REPORT_NAME = "compare.html"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
tr.paper td { font-style: italic; color: #555; background: #f7f7fb; }
.caption { color: #555; font-size: 0.9em; max-width: 60em; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.gallery td, .gallery th { vertical-align: top; text-align: center; }
.gallery img { width: 220px; image-rendering: pixelated; }
"""


def _escape(value: object) -> str:
    return html.escape(str(value))


def table_html(table: Table) -> str:
    """A table with its title and caption; the paper's rows get class ``paper``."""
    cells = formatted(table)
    head = "".join(f"<th>{_escape(c)}</th>" for c in cells.columns)
    body = "".join(
        f'<tr class="{"ours" if source == OURS else "paper"}">'
        + "".join(f"<td>{_escape(v).replace(' ± ', '&nbsp;±&nbsp;')}</td>" for v in row)
        + "</tr>"
        for source, row in zip(table.frame["source"], cells.itertuples(index=False), strict=True)
    )
    return (
        f"<h2>{_escape(table.title)}</h2><p class='caption'>{_escape(table.caption)}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def image_html(png: bytes, alt: str) -> str:
    return (
        f'<img alt="{_escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    )


def gallery_html(names: list[str], overlays: dict[str, dict[str, bytes]]) -> str:
    """Overlays in a grid: a column per configuration, a row per validation image."""
    if not overlays:
        return ""
    head = "<th>image</th>" + "".join(f"<th>{_escape(label)}</th>" for label in overlays)
    rows = "".join(
        f"<tr><td>{_escape(name)}</td>"
        + "".join(
            f"<td>{image_html(o[name], f'{label}: {name}') if name in o else '—'}</td>"
            for label, o in overlays.items()
        )
        + "</tr>"
        for name in names
    )
    return (
        "<h2>Mask overlays</h2><p class='caption'>Predicted masks over the same validation "
        "images, one trial per configuration (its lowest finished seed).</p>"
        f"<table class='gallery'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )


def page(
    title: str,
    context: list[str],
    tables: list[Table],
    figures: list[tuple[str, bytes]],
    gallery: str,
) -> str:
    """The whole report: context lines, tables, figures (title, PNG) and the gallery."""
    intro = "".join(f"<p>{_escape(line)}</p>" for line in context)
    plots = "".join(image_html(png, name) for name, png in figures)
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_escape(title)}"
        f"</title><style>{_CSS}</style></head><body><h1>{_escape(title)}</h1>{intro}"
        + "".join(table_html(t) for t in tables)
        + (f"<h2>Plots</h2><div class='figures'>{plots}</div>" if figures else "")
        + gallery
        + "</body></html>"
    )


def log(client: MlflowClient, run_ids: list[str], document: str) -> None:
    """Attach the report to each run as ``report/compare.html``."""
    with TemporaryDirectory() as folder:
        path = Path(folder) / REPORT_NAME
        path.write_text(document, encoding="utf-8")
        for run_id in run_ids:
            client.log_artifact(run_id, str(path), ARTIFACT_REPORT)
