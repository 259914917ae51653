"""bench/render.py: a results JSON becomes tables inside generated markers; hand-written text is left alone."""
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _render():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    spec = importlib.util.spec_from_file_location("bench_render", os.path.join(ROOT, "bench", "render.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FIXTURE = {
    "schema": 1, "name": "demo", "source": "measured",
    "meta": {"script": "bench/demo.py", "commit": "abc1234", "date": "2026-01-01 00:00 UTC",
             "machine": {"cpus": 2, "cpu": "Test CPU", "python": "CPython 3.11.7"}},
    "params": {"runs": 3},
    "runs": [{"rate": 1000.0}, {"rate": 1200.0}, {"rate": 1100.0}],
    "tables": [
        {"id": "results", "title": "Results", "columns": ["variant", "median", "min – max", "notes"],
         "align": ["l", "r", "l", "l"],
         "rows": [["fast", {"v": 652000, "f": "rate"}, {"lo": 633000, "hi": 665000, "f": "rate"}, "N=10"],
                  ["rt", {"v": 4.33e-6, "f": "time"}, {"lo": 4.25e-6, "hi": 4.58e-6, "f": "time"}, ""]]},
        {"id": "targets", "title": "Targets", "columns": ["target", "measured (median)", "verdict"],
         "align": ["l", "r", "l"],
         "rows": [["x >= 2", {"v": 2.8, "f": "ratio"}, {"pass": True}], ["y < 1%", {"v": 1.2, "f": "pct"}, {"pass": False}]]},
    ],
    "chart": {"png": "bench_demo.png", "alt": "demo chart"},
}

HAND = "# Benchmarks\n\n## Demo\n\nWritten by hand: 652k/s was good.\n\n"
OLD = "<!-- generated:demo:start -->\nstale\n<!-- generated:demo:end -->\n"
AFTER = "\n### Reading\n\nAlso by hand.\n"


def test_renders_tables_between_markers_and_keeps_hand_written_text(tmp_path):
    res_dir = tmp_path / "results"
    res_dir.mkdir()
    (res_dir / "demo.json").write_text(json.dumps(FIXTURE), encoding="utf-8")
    md = tmp_path / "benchmarks.md"
    md.write_text(HAND + OLD + AFTER, encoding="utf-8")
    assert _render().render(str(res_dir), str(md), png_dir=str(tmp_path)) == ["demo"]
    out = md.read_text(encoding="utf-8")
    assert out.startswith(HAND + "<!-- generated:demo:start -->\n")
    assert out.endswith("<!-- generated:demo:end -->\n" + AFTER)
    assert "stale" not in out
    block = out[len(HAND):-len(AFTER)]
    assert "### Results\n\n| variant | median | min – max | notes |\n|---|---:|---|---|\n" in block
    assert "| fast | 652k/s | 633k/s – 665k/s | N=10 |" in block
    assert "| rt | 4.33 µs | 4.25 µs – 4.58 µs |  |" in block
    assert "| x >= 2 | 2.8x | **PASS** |" in block
    assert "| y < 1% | 1.200% | **FAIL** |" in block
    assert "![demo chart](bench_demo.png)" in block
    assert "git abc1234" in block
    assert not (tmp_path / "bench_demo.png").exists()  # no panels: the chart is left as it is
    # rendering again changes nothing
    _render().render(str(res_dir), str(md), png_dir=str(tmp_path))
    assert md.read_text(encoding="utf-8") == out


def test_missing_block_is_appended(tmp_path):
    res_dir = tmp_path / "r"
    res_dir.mkdir()
    (res_dir / "demo.json").write_text(json.dumps(FIXTURE), encoding="utf-8")
    md = tmp_path / "b.md"
    md.write_text(HAND, encoding="utf-8")
    _render().render(str(res_dir), str(md), png_dir=str(tmp_path))
    out = md.read_text(encoding="utf-8")
    assert out.startswith(HAND.rstrip("\n") + "\n\n<!-- generated:demo:start -->")
    assert out.rstrip().endswith("<!-- generated:demo:end -->")


def test_committed_results_reproduce_docs():
    """bench/results/*.json renders to exactly what docs/benchmarks.md holds."""
    r = _render()
    doc = open(os.path.join(ROOT, "docs", "benchmarks.md"), encoding="utf-8").read()
    import glob
    for path in glob.glob(os.path.join(ROOT, "bench", "results", "*.json")):
        res = json.load(open(path, encoding="utf-8"))
        rel = os.path.relpath(path, ROOT)
        body = r.section(res, rel, lambda name: name)
        start, end = r.markers(res["name"])
        assert f"{start}\n{body}\n{end}" in doc, res["name"]
