"""Results of a benchmark run as data: what every script writes to
``bench/results/<name>.json`` and what ``render.py`` reads back.

Schema (``"schema": 1``)::

    {"schema": 1, "name": "layer", "source": "measured" | "transcribed from docs/benchmarks.md",
     "meta": {"script", "commit", "date", "machine": {...}, "versions": {...}, ...},
     "params": {...},            # the options of the run
     "runs": [...],              # raw per-run results (absent when transcribed)
     "tables": [{"id", "title", "columns", "align", "rows"}],   # results, ratios, targets
     "chart": {"png", "alt", "title", "panels": [...]}}         # panels absent: PNG kept as is

A table cell is a string, or a number with its format ``{"v": 652000, "f": "rate"}``,
a range ``{"lo": .., "hi": .., "f": ..}`` ("a – b"), a median with its range in
parentheses ``{"v", "lo", "hi", "f", "paren": true}`` ("v (lo-hi)"), several
values ``{"parts": [..], "f", "sep": " / "}`` (with "v": "v (a + b)"), a verdict
``{"pass": true}`` or a bold cell ``{"b": cell}``.  Times are in seconds."""

import datetime
import json
import os
import subprocess

from _common import fmt_num, fmt_time, median, span

SCHEMA = 1
HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")


def fmt_ratio(v):
    return f"{v:.3g}x" if v < 1000 else f"{v:.0f}x"


def fmt_kM(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.0f}k"
    return f"{v:.0f}"


FORMATS = {
    "num": fmt_num,
    "rate": lambda v: fmt_num(v, "/s"),
    "time": fmt_time,
    "pct": lambda v: f"{v:.3f}%",
    "ratio": fmt_ratio,
    "x2": lambda v: f"{v:.2f}x",
    "kM": fmt_kM,
    "int": lambda v: f"{v:.0f}",
    "f1": lambda v: f"{v:.1f}",
    "comma": lambda v: f"{v:,.0f}",
}


# ----------------------------------------------------------------- cells


def num(v, f):
    return "n/a" if v is None else {"v": v, "f": f}


def span_cell(lo, hi, f):
    return "n/a" if lo is None else {"lo": lo, "hi": hi, "f": f}


def text(cell):
    """A cell as the text of a table."""
    if cell is None:
        return "n/a"
    if isinstance(cell, str):
        return cell
    if "b" in cell:
        return f"**{text(cell['b'])}**"
    if "pass" in cell:
        return "**PASS**" if cell["pass"] else "**FAIL**"
    f = FORMATS[cell["f"]]
    if "parts" in cell:
        parts = cell.get("sep", " / ").join(f(x) for x in cell["parts"])
        return f"{f(cell['v'])} ({parts})" if "v" in cell else parts
    if cell.get("paren"):
        return f"{f(cell['v'])} ({f(cell['lo'])}-{f(cell['hi'])})"
    if "lo" in cell:
        return f"{f(cell['lo'])} – {f(cell['hi'])}"
    return f(cell["v"])


def table(tid, title, columns, rows, align=None):
    """``align``: "l"/"r" per column (default: all left)."""
    return {"id": tid, "title": title, "columns": list(columns), "align": list(align or "l" * len(columns)),
            "rows": [list(r) for r in rows]}


# ------------------------------------------- ratios and targets, one code path


def summary(values, f):
    """(median cell, min – max cell) of per-run values."""
    return num(median(values), f), span_cell(*span(values), f)


def ratio_table(rows, unit):
    """``rows``: (text, per-run ratios)."""
    return table("ratios", f"Ratios (within each {unit})", ["ratio", "median", "min – max"],
                 [(t, *summary(vs, "ratio")) for t, vs in rows], "lrl")


def target(text_, values, ok, f="ratio"):
    """A target judged on the median of its per-run ``values``, and counted per run."""
    med = median(values)
    return {"target": text_, "values": values, "f": f, "pass": med is not None and ok(med),
            "runs_ok": f"{sum(1 for v in values if v is not None and ok(v))}/{len(values)}"}


def target_table(targets, unit):
    return table("targets", "Targets", ["target", "measured (median)", "min – max", f"{unit}s passing", "verdict"],
                 [(t["target"], *summary(t["values"], t["f"]), t["runs_ok"], {"pass": t["pass"]}) for t in targets],
                 "lrlll")


# ------------------------------------------------------------------ files


def git_commit():
    try:
        out = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", HERE, "status", "--porcelain", "--", "../shmchannels"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (out + "+uncommitted" if dirty else out) or "unknown"


def add_results_dir(parser):
    parser.add_argument("--results-dir", default=RESULTS_DIR,
                        help="where <name>.json is written (default bench/results; render.py reads it)")


def _compact(x, limit=2000):
    """Long per-sample lists (latencies) thinned to about ``limit`` values."""
    if isinstance(x, dict):
        return {str(k): _compact(v, limit) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        if len(x) > limit:
            step = -(-len(x) // limit)
            x = list(x[::step]) + [x[-1]]
        return [_compact(v, limit) for v in x]
    return x


def write(results_dir, name, *, meta, params, runs, tables, chart=None, started=None):
    """Write ``<results_dir>/<name>.json``; returns its path."""
    started = started or datetime.datetime.now(datetime.timezone.utc)
    meta = {"script": f"bench/{name}.py", "commit": git_commit(), "date": f"{started:%Y-%m-%d %H:%M} UTC", **meta}
    doc = {"schema": SCHEMA, "name": name, "source": "measured", "meta": meta, "params": params,
           "runs": _compact(runs), "tables": tables}
    if chart:
        doc["chart"] = chart
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"{name}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False, default=str)
        f.write("\n")
    os.replace(path + ".tmp", path)
    print(f"wrote {path}", flush=True)
    return path


# ---------------------------------------------------------------- console


def print_tables(tables):
    """The tables as plain aligned text on stdout."""
    out = []
    for t in tables:
        cells = [t["columns"]] + [[text(c) for c in r] for r in t["rows"]]
        widths = [max(len(r[i]) for r in cells) for i in range(len(t["columns"]))]
        out.append(f"\n{(t.get('title') or t['id']).upper()}")
        for r in cells:
            out.append("  " + "  ".join(c.rjust(w) if a == "r" else c.ljust(w)
                                        for c, w, a in zip(r, widths, t["align"])).rstrip())
    print("\n".join(out), flush=True)
