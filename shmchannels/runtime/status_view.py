"""What `shmchannels status` prints: one snapshot of a bus (``metrics.Snapshot``)
as text, as JSON, or refreshed every second (``--watch``, like top)."""

import sys
import time

import orjson

from shmchannels.bus import stats
from shmchannels.runtime import metrics

_STATES = {"R": "running", "S": "sleeping", "D": "disk", "T": "stopped", "t": "traced", "Z": "zombie"}


def process_state(pid):
    """The kernel's state of ``pid`` (running, sleeping, stopped ...), or "?"."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            letter = f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return "?"
    return _STATES.get(letter, letter)


def restarts(words):
    return {kind: {cause: words[stats.C[f"restarts_{kind}_{cause}"]] for cause in stats.RESTART_CAUSES}
            for kind in ("protocol", "worker")}


def as_json(prefix, snap):
    words = snap.words()
    healthy, health = metrics.health(snap)
    ready, readiness = metrics.readiness(snap)
    c = stats.C
    out = {
        "prefix": prefix,
        "processes": [
            {"slot": p.index, "pid": p.pid, "kind": p.kind, "label": p.label,
             "heartbeat_age": round(snap.heartbeat_age(p), 3), "master": p.index == snap.master_slot,
             "state": process_state(p.pid)}
            for p in snap.processes if p.index != snap.exporter_slot
        ],
        "channels": [
            {"channel": r["key"], "pending": r["pending"], "sent": r["sent"],
             "received": max(0, r["sent"] - r["pending"] - r["expired"]), "full": r["full"],
             "expired": r["expired"], "recovered": r["recovered"], "bytes_used": r["bytes_used"],
             "ring_bytes": r["data_size"],
             "oldest_age": round(snap.oldest_age(r), 3) if r["oldest_sent_ns"] else None,
             "owner_slot": r["owner"][0] if r["owner"] else None, "owner_kind": r["owner_kind"]}
            for r in snap.rings
        ],
        "groups": snap.groups,
        "restarts": restarts(words),
        "http": {"connections_open": words[c["http_connections_open"]], "websockets_open": words[c["websockets_open"]],
                 "requests": words[c["requests_total"]], "refused_full": words[c["rejected_full"]],
                 "responses": {cls: words[c[f"responses_{cls}"]] for cls in stats.STATUS_CLASSES}},
        "consumers": {"messages": words[c["consumer_messages"]], "exceptions": words[c["consumer_exceptions"]]},
        "healthy": healthy, "ready": ready, "readiness": readiness, "health": health,
    }
    return orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n"


def as_text(prefix, snap, top=None, since=None):
    """The report; ``top``: only the busiest channels; ``since``: restarts
    counted when watching began (shown as "recent")."""
    lines = []
    procs = [p for p in snap.processes if p.index != snap.exporter_slot]
    lines.append(f"bus {prefix!r}: {len(procs)} process(es), {len(snap.rings)} channel ring(s), "
                 f"{len(snap.groups)} group(s)")
    lines.append("\nPROCESSES")
    lines.append(f"  {'slot':>4}  {'pid':>7}  {'kind':<9} {'state':<9} {'heartbeat':>9}  label")
    for p in sorted(procs, key=lambda p: (p.kind, p.index)):
        lines.append(f"  {p.index:>4}  {p.pid:>7}  {p.kind:<9} {process_state(p.pid):<9} "
                     f"{snap.heartbeat_age(p):>8.1f}s  {p.label}")
    rings = snap.rings
    title = "CHANNELS"
    if top is not None:
        rings = sorted(rings, key=lambda r: (-r["pending"], -snap.oldest_age(r), r["key"]))[:top]
        title = f"BUSIEST CHANNELS (top {top} by depth)"
    else:
        rings = sorted(rings, key=lambda r: r["key"])
    lines.append(f"\n{title}")
    lines.append(f"  {'pending':>7}  {'oldest':>8}  {'sent':>9}  {'full':>6}  {'expired':>7}  channel")
    for r in rings:
        oldest = f"{snap.oldest_age(r):.1f}s" if r["oldest_sent_ns"] else "-"
        lines.append(f"  {r['pending']:>7}  {oldest:>8}  {r['sent']:>9}  {r['full']:>6}  {r['expired']:>7}  {r['key']}")
    lines.append("\nGROUPS")
    for group, count in sorted(snap.groups.items(), key=lambda kv: (-kv[1], kv[0]))[: top or None]:
        lines.append(f"  {count:>7}  {group}")
    if not snap.groups:
        lines.append("  (none)")
    if snap.master_slot is not None:
        now = restarts(snap.words())
        lines.append("\nRESTARTS" + (" (total, recent = since watching began)" if since is not None else ""))
        for kind, causes in now.items():
            parts = []
            for cause, n in causes.items():
                recent = n - since[kind][cause] if since is not None else None
                parts.append(f"{cause} {n}" + (f" (+{recent})" if recent else ""))
            lines.append(f"  {kind:<9} " + ", ".join(parts))
    return "\n".join(lines) + "\n"


def watch(prefix, bus, interval=1.0, out=sys.stdout):
    """Redraw the report every ``interval`` seconds until Ctrl-C."""
    first = restarts(metrics.Snapshot(bus).words())
    try:
        while True:
            snap = metrics.Snapshot(bus)
            out.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S  ") + as_text(prefix, snap, top=15, since=first))
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        out.write("\n")
        return 0
