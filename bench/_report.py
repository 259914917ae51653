"""Results kept per run, a failed run as None: ``results[variant]`` (http.py)
or ``results[scenario][variant]`` is a list of dicts, one per run.  These
pick fields out of them; ``_results`` turns them into tables."""

from _common import median, span


def _runs(results, path):
    for key in path:
        results = results.get(key, {})
    return results or []


def vals(results, *where):
    """``field`` in each run's result (None for a failed run);
    ``where`` is (variant, field) or (scenario, variant, field)."""
    *path, field = where
    return [r.get(field) if r else None for r in _runs(results, path)]


def stat(results, *where):
    """(median, min, max) of ``vals(results, *where)``; None where no run has it."""
    xs = vals(results, *where)
    return (median(xs), *span(xs))


def ratios(results, *where, invert=False):
    """Ratio a / b (b / a with ``invert``) of a field, one per run in which both
    have it: ratios are taken within a run, where the box's drift hit both
    alike.  ``where`` is (a, b, field) or (scenario, a, b, field)."""
    *path, a, b, field = where
    out = []
    for ra, rb in zip(_runs(results, [*path, a]), _runs(results, [*path, b])):
        if ra and rb and ra.get(field) and rb.get(field):
            out.append(rb[field] / ra[field] if invert else ra[field] / rb[field])
    return out


def bar(label, st, scale=1.0, series=""):
    """A chart bar from a (median, min, max) ``st``; None if there is no median."""
    med, lo, hi = st
    if med is None:
        return None
    return {"label": label, "series": series, "v": med * scale, "lo": lo * scale, "hi": hi * scale}


def panel(title, xlabel, bars, f, log=True, target=None):
    return {"title": title, "xlabel": xlabel, "f": f, "log": log, "target": target, "bars": [b for b in bars if b]}


def error_lines(errors):
    return ["\nERRORS", *("    " + e.replace("\n", "\n    ") for e in errors)] if errors else []


def scenario_ratio_rows(results, pairs):
    """(text, ratios) of each ``(scenario, a, b, field, text)`` pair whose
    scenario and both variants were measured (bench/websocket.py, bench/asgi.py)."""
    return [(text, ratios(results, sc, a, b, field))
            for sc, a, b, field, text in pairs if sc in results and a in results[sc] and b in results[sc]]


ROLE_ORDER = ("protocol", "worker", "master", "server", "redis", "other")


def roles_text(results, sc, key, field, unit, names):
    """The median of ``field`` per process role (a dict per run), as
    "protocol server 52 ms, worker 275 ms"; roles under 1% of the total (the
    idle master) are left out.  ``names``: role -> words."""
    per = {}
    for r in results[sc][key]:
        if r:
            for role, v in r[field].items():
                per.setdefault(role, []).append(v)
    meds = {x: median(per[x]) for x in ROLE_ORDER if x in per}
    total = sum(v for v in meds.values() if v) or 1.0
    return ", ".join(f"{names[x]} {v:.3g} {unit}" for x, v in meds.items() if v and v >= 0.01 * total)

