"""Prometheus metrics and health checks of a bus, read at scrape time.

``BusCollector`` is a ``prometheus_client`` custom collector: each scrape
reads the control segment (processes, heartbeats), every ring's header
(depth, oldest message, counters), the group registry and every live
process's stats segment (``bus/stats.py``), and nothing else: no process
is asked anything, so a scrape costs the processes it describes nothing.

``MetricsServer`` serves ``/metrics``, ``/healthz`` and ``/readyz`` from one
thread: the serve master's (``--metrics``, so a scrape never runs on a
worker's or a protocol server's loop and never blocks the arbiter's loop,
which only shares the GIL with it for the few milliseconds of a scrape), or
``shmchannels metrics``'s for any bus, by prefix.

Label cardinality is capped: process-specific channels (``name.shm...!``)
are aggregated per kind of their owner (``channel="http.response.*!"``,
``owner_kind="protocol"``), single-reader channels per name before the
``?`` (``http.request.body?*``), and past ``MAX_CHANNEL_LABELS`` channel
labels (``MAX_GROUP_LABELS`` groups) the rest are summed under ``(other)``.

Counters of processes that died: every per-process number is summed over
the live processes' stats segments; the serve master folds a reaped
child's counters and histograms into its own segment (``MasterStats``), so
the sums never go back when a child restarts, except for the milliseconds
between a child's death and its reaping (its segment is skipped as soon as
its slot is dead, and its counters come back once folded).  Without a
master (uvicorn or daphne processes on the layer) a process's counters
leave the sums with it.
"""

import logging
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import orjson

from shmchannels.bus import _shm, segments, stats
from shmchannels.bus.control import KIND_CODES

logger = logging.getLogger("shmchannels.metrics")

MAX_CHANNEL_LABELS = 200
MAX_GROUP_LABELS = 100
#: /healthz: the master's loop stamps its slot every turn (at most ~1 s apart)
HEALTHY_HEARTBEAT = 5.0
#: /readyz: a protocol server and a worker that stamped their slot this recently
READY_HEARTBEAT = 3.0
#: /readyz: no ring fuller than this (bytes) nor with more pending messages than the capacity
HIGH_WATER = 0.9
OTHER = "(other)"
SUPERVISED = ("master", "protocol", "worker")
_MINTED = re.compile(r"shm[0-9a-f]{10}[A-Za-z0-9_-]*!$")


def channel_label(key, owner_kind):
    """(channel, owner_kind) labels of the ring ``key`` (see the module's docstring)."""
    if owner_kind is not None:
        return _MINTED.sub("*!", key), owner_kind
    if "?" in key:
        return key.split("?", 1)[0] + "?*", ""
    return key, ""


class Snapshot:
    """One reading of a bus: what a scrape, /readyz and `status` look at."""

    def __init__(self, bus):
        now = _shm.monotonic_ns()
        self.now = now
        snap = bus.status()
        self.processes = [p for p in snap["processes"] if p.index != bus.slot or p.kind == "master"]
        self.exporter_slot = bus.slot
        kinds = {p.index: p.kind for p in snap["processes"]}
        self.rings = snap["rings"]
        for r in self.rings:
            owner = r["owner"]
            r["owner_kind"] = None if owner is None else kinds.get(owner[0], "dead")
        self.groups = snap["groups"]
        self.master_slot = bus.control.master_slot
        self.totals = []  # stats.Totals of every live process
        for p in snap["processes"]:
            t = stats.read(bus.stem, p.index, p.gen)
            if t is not None:
                self.totals.append(t)

    def heartbeat_age(self, p):
        return max(0.0, (self.now - p.heartbeat_ns) / 1e9)

    def oldest_age(self, ring):
        sent = ring["oldest_sent_ns"]
        return max(0.0, (self.now - sent) / 1e9) if sent else 0.0

    def words(self):
        """Every live segment's shards summed (the master's folds included)."""
        total = [0] * stats.SHARD_WORDS
        for t in self.totals:
            for row in t.by_kind.values():
                total = [a + b for a, b in zip(total, row)]
        return total

    def channel_rows(self):
        """channel -> [histogram words..., exceptions] summed over processes."""
        rows = {}
        for t in self.totals:
            for row in t.by_kind.values():
                for j, channel in enumerate(t.channels):
                    base = stats.CHANNEL_HIST + j * stats.HIST_WORDS
                    part = row[base : base + stats.HIST_WORDS] + [row[stats.CHANNEL_EXC + j]]
                    have = rows.get(channel)
                    rows[channel] = part if have is None else [a + b for a, b in zip(have, part)]
        return rows


def health(snap):
    """(healthy, body) of /healthz: the master's loop is alive (no master: the exporter is)."""
    if snap.master_slot is None:
        return True, {"status": "ok", "master": None, "reason": "no serve master on this bus; the exporter is alive"}
    master = next((p for p in snap.processes if p.index == snap.master_slot), None)
    if master is None:
        return False, {"status": "fail", "reason": "the master's slot is not alive"}
    age = snap.heartbeat_age(master)
    ok = age <= HEALTHY_HEARTBEAT
    return ok, {"status": "ok" if ok else "fail", "master_pid": master.pid, "heartbeat_age": round(age, 3),
                **({} if ok else {"reason": f"the master's loop has not turned for {age:.1f} s"})}


def readiness(snap, capacity=None):
    """(ready, body) of /readyz: a heartbeating protocol server and worker
    (under serve; else any process besides the exporter) and no ring above
    its high-water mark."""
    reasons = []
    alive = {}
    for p in snap.processes:
        if p.kind in SUPERVISED and snap.heartbeat_age(p) <= READY_HEARTBEAT:
            alive[p.kind] = alive.get(p.kind, 0) + 1
    served = snap.master_slot is not None or any(p.kind in ("protocol", "worker") for p in snap.processes)
    if served:
        for kind, name in (("protocol", "protocol server"), ("worker", "worker")):
            if not alive.get(kind):
                reasons.append(f"no {name} alive and heartbeating within {READY_HEARTBEAT:g} s")
    elif not [p for p in snap.processes if p.index != snap.exporter_slot]:
        reasons.append("no process is attached to the bus")
    for r in snap.rings:
        if r["data_size"] and r["bytes_used"] > HIGH_WATER * r["data_size"]:
            reasons.append(f"ring of {r['key']} is {100 * r['bytes_used'] / r['data_size']:.0f}% full")
        elif capacity and r["owner"] is None and r["pending"] >= capacity:
            reasons.append(f"{r['key']} has {r['pending']} pending messages (capacity {capacity})")
    body = {"status": "ok" if not reasons else "fail", "alive": alive}
    if reasons:
        body["reasons"] = reasons[:20]
    return not reasons, body


class BusCollector:
    """A ``prometheus_client`` collector over the bus that ``get_bus()`` returns."""

    def __init__(self, get_bus):
        self.get_bus = get_bus

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        bus = self.get_bus()
        if bus is None or not bus.usable:
            return
        snap = Snapshot(bus)
        yield from self._channels(snap, CounterMetricFamily, GaugeMetricFamily)
        yield from self._groups(snap, GaugeMetricFamily)
        yield from self._processes(snap, CounterMetricFamily, GaugeMetricFamily)
        yield from self._counted(snap, CounterMetricFamily, GaugeMetricFamily)

    def _channels(self, snap, Counter, Gauge):
        labels = ["channel", "owner_kind"]
        rows = {}
        for r in snap.rings:
            label = channel_label(r["key"], r["owner_kind"])
            if label not in rows and len(rows) >= MAX_CHANNEL_LABELS:
                label = (OTHER, "")
            row = rows.setdefault(label, [0, 0.0, 0, 0, 0, 0, 0, 0])
            received = max(0, r["sent"] - r["pending"] - r["expired"])
            row[0] += r["pending"]
            row[1] = max(row[1], snap.oldest_age(r))
            for i, v in enumerate((r["sent"], received, r["full"], r["expired"], r["recovered"], r["bytes_used"]), 2):
                row[i] += v
        families = [
            Gauge("shmchannels_channel_messages_pending", "Messages waiting in the channel's ring", labels=labels),
            Gauge("shmchannels_channel_oldest_message_age_seconds", "Age of the oldest pending message", labels=labels),
            Counter("shmchannels_channel_messages_sent", "Messages put into the channel's ring", labels=labels),
            Counter("shmchannels_channel_messages_received", "Messages taken from the ring by a receiver", labels=labels),
            Counter("shmchannels_channel_full", "Sends refused with ChannelFull", labels=labels),
            Counter("shmchannels_channel_messages_expired", "Messages dropped unread at their expiry", labels=labels),
            Counter("shmchannels_channel_recovered_claims", "Half-written records of dead writers recovered",
                    labels=labels),
            Gauge("shmchannels_channel_ring_used_bytes", "Bytes of the ring between head and tail", labels=labels),
        ]
        for label, row in sorted(rows.items()):
            for family, value in zip(families, row):
                family.add_metric(list(label), value)
        yield from families

    def _groups(self, snap, Gauge):
        yield Gauge("shmchannels_groups", "Groups with at least one member", value=len(snap.groups))
        yield Gauge("shmchannels_group_memberships", "Members of all groups", value=sum(snap.groups.values()))
        members = Gauge("shmchannels_group_members", f"Members of a group (the {MAX_GROUP_LABELS} largest)",
                        labels=["group"])
        ranked = sorted(snap.groups.items(), key=lambda kv: (-kv[1], kv[0]))
        for group, count in ranked[:MAX_GROUP_LABELS]:
            members.add_metric([group], count)
        if len(ranked) > MAX_GROUP_LABELS:
            members.add_metric([OTHER], sum(c for _, c in ranked[MAX_GROUP_LABELS:]))
        yield members

    def _processes(self, snap, Counter, Gauge):
        alive = Gauge("shmchannels_processes", "Processes attached to the bus", labels=["kind"])
        counts = {}
        for p in snap.processes:
            counts[p.kind] = counts.get(p.kind, 0) + 1
        for kind in sorted(set(counts) | {"protocol", "worker"}):
            alive.add_metric([kind], counts.get(kind, 0))
        yield alive
        beat = Gauge("shmchannels_process_heartbeat_age_seconds",
                     "Seconds since the process stamped its heartbeat", labels=["kind", "pid"])
        for p in snap.processes:
            if p.kind in SUPERVISED:
                beat.add_metric([p.kind, str(p.pid)], snap.heartbeat_age(p))
        yield beat
        words = snap.words()
        restarts = Counter("shmchannels_restarts", "Children the serve master replaced, by cause",
                           labels=["kind", "cause"])
        for kind in ("protocol", "worker"):
            for cause in stats.RESTART_CAUSES:
                restarts.add_metric([kind, cause], words[stats.C[f"restarts_{kind}_{cause}"]])
        yield restarts

    def _counted(self, snap, Counter, Gauge):
        from prometheus_client.core import HistogramMetricFamily

        w = snap.words()
        c = stats.C
        yield Gauge("shmchannels_http_connections_open", "Open HTTP connections (protocol servers)",
                    value=w[c["http_connections_open"]])
        yield Gauge("shmchannels_websockets_open", "Open WebSockets (protocol servers)", value=w[c["websockets_open"]])
        yield Counter("shmchannels_http_connections", "HTTP connections accepted", value=w[c["connections_total"]])
        yield Counter("shmchannels_http_requests", "HTTP requests received", value=w[c["requests_total"]])
        yield Counter("shmchannels_websocket_connections", "WebSocket handshakes received",
                      value=w[c["websockets_total"]])
        responses = Counter("shmchannels_http_responses", "HTTP responses sent, by status class",
                            labels=["status_class"])
        for cls in stats.STATUS_CLASSES:
            responses.add_metric([cls], w[c[f"responses_{cls}"]])
        yield responses
        messages = Counter("shmchannels_websocket_messages", "WebSocket messages, in from clients and out to them",
                           labels=["direction"])
        messages.add_metric(["in"], w[c["ws_messages_in"]])
        messages.add_metric(["out"], w[c["ws_messages_out"]])
        yield messages
        closes = Counter("shmchannels_websocket_closes", "WebSocket connections closed, by close code",
                         labels=["code"])
        for code in (*stats.WS_CLOSE_CODES, "other"):
            closes.add_metric([str(code)], w[c[f"ws_closes_{code}"]])
        yield closes
        yield Counter("shmchannels_refusals", "Requests refused 503 / WebSockets closed 1013: channel full",
                      value=w[c["rejected_full"]])
        events = Counter("shmchannels_protocol_server_events", "Other protocol-server events", labels=["event"])
        for name in stats.PROTOCOL_COUNTERS[5:]:
            events.add_metric([name], w[c[name]])
        events.add_metric(["timeouts"], w[c["timeouts"]])
        yield events
        yield self._histogram(HistogramMetricFamily, "shmchannels_http_response_latency_seconds",
                              "From a request dispatched to the workers to its response's start",
                              w, stats.HIST["response_latency"])
        yield Counter("shmchannels_consumer_messages", "Messages consumers handled (Channels 1 workers)",
                      value=w[c["consumer_messages"]])
        runs = HistogramMetricFamily("shmchannels_consumer_duration_seconds", "Run time of a consumer, by channel",
                                     labels=["channel"])
        raised = Counter("shmchannels_consumer_exceptions", "Consumers that raised, by channel", labels=["channel"])
        for channel, row in sorted(snap.channel_rows().items()):
            buckets, total = self._buckets(row, 0)
            runs.add_metric([channel], buckets, total)
            raised.add_metric([channel], row[stats.HIST_WORDS])
        yield runs
        yield raised

    @staticmethod
    def _buckets(words, base):
        cumulative, buckets = 0, []
        for i, bound in enumerate(stats.BUCKETS):
            cumulative += words[base + i]
            buckets.append((repr(bound), cumulative))
        cumulative += words[base + len(stats.BUCKETS)]
        buckets.append(("+Inf", cumulative))
        return buckets, words[base + stats.H_SUM] / 1e9

    def _histogram(self, Histogram, name, doc, words, base):
        family = Histogram(name, doc, labels=[])
        buckets, total = self._buckets(words, base)
        family.add_metric([], buckets, total)
        return family


class MasterStats:
    """What the serve master counts: restarts by cause, and the totals of
    its reaped children (folded into shards of its own segment, one per
    kind).  It maps each child's segment while the child lives, so it can
    still read it after the child's death unlinked it."""

    def __init__(self, bus):
        self.stem = bus.stem
        self.stats = bus.stats
        self.words = self.stats.shard()
        self.retired = {kind: self.stats.reserve(KIND_CODES[kind]) for kind in ("protocol", "worker")}
        self.mappings = {}  # pid -> mmap of its stats segment

    def see(self, info):
        """Map the segment of the child in slot ``info`` (a ``control.Slot``) once."""
        if info.pid not in self.mappings:
            base = segments.file_name(self.stem, stats.suffix(info.index, info.gen))
            mapping = segments.open_existing(base)
            if mapping is not None:
                self.mappings[info.pid] = (base, mapping)

    def reaped(self, pid, worker, status, halting):
        """Count the end of child ``pid`` and fold its totals in; unlink its
        segment (a clean exit leaves it for us: ``Recovery.sweep_stats``)."""
        base, mapping = self.mappings.pop(pid, (None, None))
        if mapping is None:  # it came and went between two looks of ours
            base, mapping = stats.find_by_pid(self.stem, pid)
        totals = None
        if mapping is not None:
            try:
                totals = stats.read_mapping(mapping)
            finally:
                mapping.close()
            segments.unlink(base)
        kind = "protocol" if worker.kind == "protocol" else "worker"
        if totals is not None:
            stats.fold(self.retired[kind], totals, self.stats)
        cause = None if halting or worker.retiring else restart_cause(worker, status, totals)
        if cause is not None:
            self.words[stats.C[f"restarts_{kind}_{cause}"]] += 1
        return cause


def restart_cause(worker, status, totals):
    """Why a child that was not retired ended: timeout (the master killed
    it), crash (a signal, an error exit), max_requests, or exit."""
    if getattr(worker, "aborted", False):
        return "timeout"
    if os.WIFSIGNALED(status) or (os.WIFEXITED(status) and os.WEXITSTATUS(status)):
        return "crash"
    own = totals.by_kind.get(0) if totals is not None else None
    if own is not None and own[stats.C["max_requests_reached"]]:
        return "max_requests"
    return "exit"


# --------------------------------------------------------------- the server

_servers = []  # MetricsServer of this process: their listening sockets close in forked children


def _close_in_child():
    for server in _servers:
        server.forget_after_fork()
    _servers.clear()


os.register_at_fork(after_in_child=_close_in_child)


class _Handler(BaseHTTPRequestHandler):
    timeout = 5.0  # a client that sends nothing never holds the thread longer
    server_version = "shmchannels-metrics"

    def do_GET(self):
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._metrics(owner)
            elif path in ("/healthz", "/readyz"):
                bus = owner.get_bus()
                if bus is None or not bus.usable:
                    ok, body = False, {"status": "fail", "reason": "the bus is detached"}
                else:
                    snap = Snapshot(bus)
                    ok, body = health(snap) if path == "/healthz" else readiness(snap, owner.capacity)
                self._send(200 if ok else 503, orjson.dumps(body) + b"\n", "application/json")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")
        except Exception:
            logger.exception("serving %s", path)
            self._send(500, b"internal error\n", "text/plain")

    def _metrics(self, owner):
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(self.headers.get("Accept"))
        self._send(200, encoder(owner.registry), content_type)

    def _send(self, code, body, content_type):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        logger.debug("%s " + fmt, self.address_string(), *args)


class _HTTPServer6(HTTPServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` of the bus ``get_bus()``
    returns, served by one daemon thread that waits in ``accept``."""

    def __init__(self, address, get_bus, capacity=None):
        from prometheus_client import CollectorRegistry

        self.host, self.port = address
        self.get_bus = get_bus
        self.capacity = capacity
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BusCollector(get_bus))
        self.httpd = None
        self.thread = None
        self._stopping = False

    def start(self):
        """Bind (OSError if the address is taken) and start serving."""
        httpd = (_HTTPServer6 if ":" in self.host else HTTPServer)((self.host, self.port), _Handler,
                                                                   bind_and_activate=False)
        try:
            httpd.server_bind()
            httpd.server_activate()
        except OSError:
            httpd.server_close()
            raise
        httpd.owner = self
        self.httpd = httpd
        self.port = httpd.server_address[1]
        _servers.append(self)
        self.thread = threading.Thread(target=self._serve, name="shmchannels-metrics", daemon=True)
        self.thread.start()
        return self

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _serve(self):
        httpd = self.httpd
        while not self._stopping:
            try:
                httpd.handle_request()  # blocks in select until a connection comes
            except Exception:
                if not self._stopping:
                    logger.exception("metrics server")

    def stop(self):
        """Stop serving (wakes the thread with a connection of its own)."""
        if self.httpd is None:
            return
        self._stopping = True
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                pass
        except OSError:
            pass
        if self.thread is not None:
            self.thread.join(2.0)
        self.httpd.server_close()
        self.httpd = None
        if self in _servers:
            _servers.remove(self)

    def forget_after_fork(self):
        if self.httpd is not None:
            self.httpd.socket.close()
            self.httpd = None


def start_for_master(arbiter):
    """The serve master's ``MasterStats`` and, with ``metrics`` set, its
    started ``MetricsServer`` (``StartError``-worthy OSError if it cannot bind)."""
    from shmchannels.runtime import config as config_mod

    master_stats = MasterStats(arbiter.bus)
    server = None
    if arbiter.cfg.metrics:
        address = config_mod.metrics_address(arbiter.cfg.metrics)
        server = MetricsServer(address, lambda: arbiter.bus, capacity=arbiter.cfg.capacity).start()
        arbiter.log.info("Metrics on %s/metrics (and /healthz, /readyz)", server.url)
    return master_stats, server
