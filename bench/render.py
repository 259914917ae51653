"""Render ``bench/results/*.json`` into docs/benchmarks.md and the charts.

    .venv/bin/python bench/render.py                       # all results into docs/benchmarks.md
    .venv/bin/python bench/render.py --results-dir /tmp/r --md /tmp/b.md --png-dir /tmp/r

Only the text between ``<!-- generated:NAME:start -->`` and
``<!-- generated:NAME:end -->`` is replaced (a missing block is appended at the
end); everything else in the file is written by hand and left alone.  A chart
is drawn only from a result that carries chart panels; otherwise the PNG it
names is left as it is."""

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _results import RESULTS_DIR, text  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")


def markers(name):
    return f"<!-- generated:{name}:start -->", f"<!-- generated:{name}:end -->"


def md_table(t):
    head = "|" + "|".join(f" {c} " if c else " " for c in t["columns"]) + "|"
    sep = "|" + "".join("---:|" if a == "r" else "---|" for a in t["align"])
    return [head, sep] + ["| " + " | ".join(text(c) for c in r) + " |" for r in t["rows"]]


def header(res, path_shown):
    m = res["meta"]
    mach = m.get("machine", {})
    bits = [f"`{m.get('script', 'bench/' + res['name'] + '.py')}`", f"git {m.get('commit', '?')}", m.get("date", "?")]
    if mach:
        bits.append(", ".join(str(v) for v in (mach.get("cpus") and f"{mach['cpus']} vCPU", mach.get("cpu"),
                                               mach.get("python")) if v))
    params = ", ".join(f"{k} {v}" for k, v in res.get("params", {}).items())
    src = "" if res.get("source", "measured") == "measured" else f" ({res['source']})"
    return f"*Results from `{path_shown}`{src}: " + "; ".join(bits) + (f"; {params}" if params else "") + ".*"


def section(res, path_shown, png_rel):
    out = [header(res, path_shown)]
    for t in res["tables"]:
        out.append("")
        if t.get("title"):
            out += [f"### {t['title']}", ""]
        out += md_table(t)
    ch = res.get("chart")
    if ch:
        out += ["", f"![{ch.get('alt', res['name'])}]({png_rel(ch['png'])})"]
    return "\n".join(out)


def replace_block(text_, name, body):
    start, end = markers(name)
    block = f"{start}\n{body.rstrip()}\n{end}"
    i, j = text_.find(start), text_.find(end)
    if i >= 0 and j > i:
        return text_[:i] + block + text_[j + len(end):]
    return text_.rstrip("\n") + "\n\n" + block + "\n"


def chart(ch, path):
    """Horizontal bars (median, min – max whiskers), one panel per entry of ``ch["panels"]``:
    ``{"title", "xlabel", "log", "f", "target", "bars": [{"label", "series", "v", "lo", "hi"}]}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from _results import FORMATS

    panels = [p for p in ch["panels"] if p["bars"]]
    if not panels:
        return False
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.5 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, p in zip(axes.flat, panels):
        labels = list(dict.fromkeys(b["label"] for b in p["bars"]))
        series = list(dict.fromkeys(b.get("series", "") for b in p["bars"]))
        h = 0.8 / len(series)
        for i, s in enumerate(series):
            bs = [b for b in p["bars"] if b.get("series", "") == s]
            ys = [labels.index(b["label"]) - 0.4 + h * (i + 0.5) for b in bs]
            meds = [b["v"] for b in bs]
            err = [[b["v"] - b.get("lo", b["v"]) for b in bs], [b.get("hi", b["v"]) - b["v"] for b in bs]]
            ax.barh(ys, meds, height=h * 0.9, xerr=err, alpha=1.0 if i == 0 else 0.5, hatch=None if i == 0 else "//",
                    edgecolor="k", linewidth=0.3, capsize=2, label=s or None)
            for y, b in zip(ys, bs):
                ax.text(b.get("hi", b["v"]), y, "  " + FORMATS[p.get("f", "num")](b["v"]), va="center", fontsize=7.5)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=8.5)
        ax.invert_yaxis()
        if p.get("log"):
            ax.set_xscale("log")
        if p.get("target") is not None:
            ax.axvline(p["target"], color="k", ls="--", lw=1)
        if len(series) > 1:
            ax.legend(fontsize=8)
        ax.set_title(p.get("title", ""), fontsize=10.5)
        ax.set_xlabel(p.get("xlabel", ""), fontsize=9)
        ax.grid(axis="x", which="both", alpha=0.25)
    fig.suptitle(ch.get("title", ""), fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def render(results_dir, md, png_dir=None, charts=True):
    """Rewrite the generated blocks of ``md`` from every ``results_dir/*.json``; returns the names rendered."""
    png_dir = png_dir or os.path.dirname(os.path.abspath(md))
    try:
        with open(md, encoding="utf-8") as f:
            doc = f.read()
    except FileNotFoundError:
        doc = "# Benchmarks\n"
    names = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
        shown = os.path.relpath(path, ROOT) if os.path.abspath(path).startswith(ROOT + os.sep) else path
        png_rel = lambda name: os.path.relpath(os.path.join(png_dir, name), os.path.dirname(os.path.abspath(md)))  # noqa: E731
        doc = replace_block(doc, res["name"], section(res, shown, png_rel))
        ch = res.get("chart")
        if charts and ch and ch.get("panels") and chart(ch, os.path.join(png_dir, ch["png"])):
            print(f"drew {os.path.join(png_dir, ch['png'])}")
        names.append(res["name"])
    with open(md + ".tmp", "w", encoding="utf-8") as f:
        f.write(doc)
    os.replace(md + ".tmp", md)
    print(f"rendered {', '.join(names) or 'nothing'} into {md}")
    return names


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", default=RESULTS_DIR)
    p.add_argument("--md", default=DOC)
    p.add_argument("--png-dir", default=None, help="where charts are drawn (default: next to --md)")
    p.add_argument("--no-charts", action="store_true")
    a = p.parse_args(argv)
    render(a.results_dir, a.md, a.png_dir, charts=not a.no_charts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
