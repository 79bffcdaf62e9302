"""The study report: one self-contained HTML file (``report.html``) that opens offline.

It shows the dev and held-out Pareto fronts with their confidence intervals (hovering a
point shows the whole policy: prompt text, per-bin allocations, models), accuracy against
tokens per strategy family, the per-bin allocations of every front policy, where the
completions came from (generated, replayed from a bank, served from the sample store; per
model), the difficulty report and the study's settings.

Plotly draws the charts: its JavaScript bundle comes from the ``plotly`` package (the
``tracking`` extra) and is embedded gzip-compressed, so the file needs no network and a
100-trial study's report stays around 2 MB.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
from collections.abc import Mapping
from functools import lru_cache
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointopt.errors import ConfigError
from jointopt.tracking.report_data import SETTINGS_FILE, collect_report

if TYPE_CHECKING:
    import optuna

__all__ = ["render_report", "write_report", "study_report", "REPORT_FILE"]

log = logging.getLogger(__name__)

#: File name of the report in a study's output folder.
REPORT_FILE = "report.html"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1b1f;background:#fafafa}
header{background:#23263a;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c9cbe0}main{padding:12px 24px;max-width:1500px}
section{background:#fff;border:1px solid #e2e2ea;border-radius:6px;padding:10px 16px;margin:14px 0}
h2{font-size:17px;margin:6px 0 10px}h3{margin:4px 0 6px;font-size:16px}h4{margin:12px 0 4px;font-size:14px}
.row{display:flex;gap:16px;flex-wrap:wrap}.plot{flex:3 1 640px;min-height:460px}
#policy-detail{flex:2 1 360px;max-height:520px;overflow:auto;border-left:3px solid #23263a;padding:4px 12px}
table{border-collapse:collapse;font-size:13px;margin:4px 0}th,td{border-bottom:1px solid #e7e7ee;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f7}pre{background:#f6f6f9;padding:6px 8px;white-space:pre-wrap;margin:2px 0 8px;font-size:12.5px}
.label{font-size:12px;color:#666}.muted{color:#777}#errors{background:#fee;color:#900;white-space:pre-wrap;padding:8px}
code{font-size:12.5px}
"""


@lru_cache(maxsize=1)
def _plotly_js_gzip_b64() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise ConfigError("the study report needs the plotly package", where="report",
                          fix="pip install 'jointopt[tracking]' (or: pip install plotly)"
                          ) from None
    return base64.b64encode(gzip.compress(get_plotlyjs().encode("utf-8"), 6, mtime=0)).decode()


def _script() -> str:
    return (Path(__file__).with_name("report_page.js")).read_text(encoding="utf-8")


def _json_for_html(data: Any) -> str:
    """JSON that can sit inside a ``<script>`` element: every ``<`` escaped, so no prompt
    text can close the element or open an HTML comment in it."""
    return json.dumps(data, separators=(",", ":"), default=str).replace("<", "\\u003c")


def render_report(data: Mapping[str, Any]) -> str:
    """The report page for ``data`` (from :func:`~jointopt.tracking.report_data.collect_report`)."""
    trials, front = data["trials"], data["front"]
    tested = sum(1 for t in trials if t["front"] and t.get("test_acc"))
    subtitle = (f"{len(trials)} complete trials of {data['n_trials']}, {len(front)} on the "
                f"Pareto front" + (f", {tested} re-scored on the held-out split" if tested else
                                   ", no held-out split"))
    title = escape(f"jointopt study {data['study']}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>
<body><header><h1>{title}</h1><p>{escape(subtitle)}</p></header><main>
<div id="errors" hidden></div>
<section><h2>Pareto front: accuracy against tokens</h2>
<p class="muted">Grey: every trial on the dev split. Black: the dev Pareto front with
confidence intervals; red: the same policies re-scored on the held-out split. Hover or click
a point to see its whole policy.</p>
<div class="row"><div id="front-plot" class="plot"></div>
<div id="policy-detail"><p class="muted">Hover a point to see its policy.</p></div></div></section>
<section><h2>Strategy families</h2>
<p class="muted">Accuracy against mean tokens of every trial, by strategy family; the line is
the family's best accuracy within a token budget.</p><div id="family-plot" class="plot"></div></section>
<section><h2>Allocations of the front policies, per difficulty bin</h2><div id="allocations"></div></section>
<section><h2>Where the tokens went</h2><div id="token-table"></div>
<p class="muted">Completions of each trial: generated by the engine (or replayed from a
sample bank) against served from the sample store.</p><div id="token-plot"></div></section>
<section><h2>Difficulty bins against oracle bins</h2><div id="difficulty"></div></section>
<section><h2>Study settings</h2><div id="settings"></div></section>
</main>
<script id="report-data" type="application/json">{_json_for_html(data)}</script>
<script id="plotly-gz" type="application/octet-stream">{_plotly_js_gzip_b64()}</script>
<script>{_script()}</script>
</body></html>
"""


def write_report(data: Mapping[str, Any], path: Path) -> Path:
    """Write the report page for ``data`` to ``path`` (atomically) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_report(data), encoding="utf-8")
    tmp.replace(path)
    return path


def study_report(study: "optuna.Study", out_dir: Path,
                 settings: Mapping[str, Any] | None = None,
                 path: Path | None = None) -> Path:
    """Collect ``study``'s results and write its report (default ``out_dir/report.html``);
    ``settings`` are also kept in ``out_dir/study_settings.json`` for later reports."""
    if settings is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, default=str),
                                             encoding="utf-8")
    data = collect_report(study, out_dir=out_dir, settings=settings)
    target = write_report(data, path or out_dir / REPORT_FILE)
    log.info("report: %s (%.1f MB)", target, target.stat().st_size / 1e6)
    return target
