"""WebSocket codec candidates for the protocol server, side by side.

    .venv/bin/python bench/ws_codec.py            # 5 runs, medians (~40 s); rewrites its docs/benchmarks.md section
    .venv/bin/python bench/ws_codec.py --runs 3 --seconds 0.3 --no-write

Candidates:
  own+wsaccel   shmchannels.server.websocket.FrameCodec with wsaccel's
                primitives (XorMaskerSimple to unmask, Utf8Validator before
                decoding text: the decoder is still needed to get a str)
  own           the same codec with what it ships with: websockets'
                C apply_mask (SSE2) and CPython's UTF-8 decoder
  websockets    websockets.server.ServerProtocol (sans-I/O), already OPEN

Workloads (frames/s, higher is better; one frame per receive_data call,
which is what a socket read of an interactive client gives):
  decode 100 B text   masked client text frame -> str event
  encode 100 B text   str -> server frame bytes
  decode 64 KiB bin   masked client binary frame -> bytes event
  encode 64 KiB bin   bytes -> server frame bytes
  decode 100 B x 64   64 small frames arriving in one read

Then a conformance check: the bad-frame table of
shmchannels.server.testing fed to each candidate, with the close code each
one answers.
"""

import os
import sys

# bench/http.py would shadow the standard library's ``http`` package, which
# the server imports (sys.path[0] is the script's directory).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import argparse  # noqa: E402
import datetime  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from _common import machine_info  # noqa: E402
from _results import add_results_dir, table, text, write  # noqa: E402

from shmchannels.server import testing, websocket as ws  # noqa: E402

SMALL = 100
BIG = 64 * 1024


# ---------------------------------------------------------------- candidates


class OwnCodec:
    name = "own"
    codec_cls = ws.FrameCodec

    def __init__(self, max_size=1 << 20):
        self.c = self.codec_cls(max_size)

    def decode(self, data):
        return self.c.receive_data(data)

    def encode_text(self, text):
        return self.c.send_text(text)

    def encode_binary(self, data):
        return self.c.send_binary(data)

    def close_code(self, data):
        """Close code answered to ``data`` (None if the connection stays open)."""
        try:
            self.c.receive_data(data)
        except ws.ProtocolError:
            pass
        out = self.c.data_to_send()
        frames, _ = testing.parse_server_frames(out)
        for _fin, op, payload in frames:
            if op == 0x8:
                return testing.close_code_of(payload)
        return None


def _wsaccel_codec():
    from wsaccel.utf8validator import Utf8Validator
    from wsaccel.xormask import XorMaskerSimple

    validator = Utf8Validator()

    def unmask(data, mask):
        return XorMaskerSimple(mask).process(data)

    def decode_text(payload):
        validator.reset()
        valid, _ends, _i, _t = validator.validate(payload)
        if not valid:
            raise UnicodeDecodeError("utf-8", payload, 0, len(payload), "invalid")
        return payload.decode("utf-8")

    class WsaccelFrameCodec(ws.FrameCodec):
        __slots__ = ()

    WsaccelFrameCodec.unmask = staticmethod(unmask)
    WsaccelFrameCodec.decode_text = staticmethod(decode_text)
    return WsaccelFrameCodec


class OwnWsaccel(OwnCodec):
    name = "own+wsaccel"
    codec_cls = None  # set in main (import wsaccel lazily)


class WebsocketsCodec:
    name = "websockets"

    def __init__(self, max_size=1 << 20):
        from websockets.protocol import State
        from websockets.server import ServerProtocol

        self.p = ServerProtocol(state=State.OPEN, max_size=max_size)

    def decode(self, data):
        p = self.p
        p.receive_data(data)
        return p.events_received()

    def encode_text(self, text):
        p = self.p
        p.send_text(text.encode("utf-8"))
        return p.data_to_send()

    def encode_binary(self, data):
        p = self.p
        p.send_binary(data)
        return p.data_to_send()

    def close_code(self, data):
        p = self.p
        p.receive_data(data)
        p.events_received()
        out = b"".join(p.data_to_send())
        frames, _ = testing.parse_server_frames(out)
        for _fin, op, payload in frames:
            if op == 0x8:
                return testing.close_code_of(payload)
        return None


# ----------------------------------------------------------------- workloads


def rate(fn, seconds):
    """Calls per second of ``fn`` (which does ``batch`` items per call)."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(64):
            fn()
        n += 64
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def workloads():
    small_text = ("x" * (SMALL - 10) + "é" * 5)  # 100 bytes of UTF-8
    assert len(small_text.encode()) == SMALL
    small_frame = testing.client_frame(0x1, small_text)
    big_payload = os.urandom(BIG)
    big_frame = testing.client_frame(0x2, big_payload)
    batch = small_frame * 64

    def decode_small(c):
        def f():
            ev = c.decode(small_frame)
            assert ev
        return f, 1

    def encode_small(c):
        return (lambda: c.encode_text(small_text)), 1

    def decode_big(c):
        def f():
            ev = c.decode(big_frame)
            assert ev
        return f, 1

    def encode_big(c):
        return (lambda: c.encode_binary(big_payload)), 1

    def decode_batch(c):
        def f():
            ev = c.decode(batch)
            assert len(ev) == 64
        return f, 64

    # sanity: every candidate decodes to the same values
    return [
        ("decode 100 B text", decode_small),
        ("encode 100 B text", encode_small),
        ("decode 64 KiB bin", decode_big),
        ("encode 64 KiB bin", encode_big),
        ("decode 100 B x 64", decode_batch),
    ], (small_frame, small_text, big_frame, big_payload)


def check_equivalence(candidates, sample):
    small_frame, small_text, big_frame, big_payload = sample
    for cls in candidates:
        c = cls()
        ev = c.decode(small_frame)
        got = [getattr(e, "data", None) if not isinstance(e, tuple) else e[1] for e in ev]
        assert got in ([small_text], [small_text.encode()]), (cls.name, got)
        ev = c.decode(big_frame)
        got = [getattr(e, "data", None) if not isinstance(e, tuple) else e[1] for e in ev]
        assert got == [big_payload], cls.name




def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.6, help="duration of one measurement")
    ap.add_argument("--quick", action="store_true", help="1 run x 0.05 s per measurement")
    ap.add_argument("--no-write", action="store_true", help="print only; write no results file")
    add_results_dir(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.seconds = 1, 0.05
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()

    OwnWsaccel.codec_cls = _wsaccel_codec()
    candidates = [OwnWsaccel, OwnCodec, WebsocketsCodec]
    loads, sample = workloads()
    check_equivalence(candidates, sample)

    from importlib.metadata import version

    versions = f"Python {sys.version.split()[0]}, websockets {version('websockets')}, wsaccel {version('wsaccel')}"
    print(f"{versions}; {args.runs} runs x {args.seconds}s, median (min-max) frames/s")
    results = {}
    for run in range(args.runs):
        for lname, make in loads:
            for cls in candidates:
                fn, per_call = make(cls())
                results.setdefault((lname, cls.name), []).append(rate(fn, args.seconds) * per_call)
    names = [c.name for c in candidates]
    width = 26
    print(f"{'workload':20s}" + "".join(f"{n:>{width}s}" for n in names) + f"{'own / websockets':>18s}")
    rows = []
    for lname, _ in loads:
        row, cells = f"{lname:20s}", []
        for n in names:
            vals = results[(lname, n)]
            c = {"v": statistics.median(vals), "lo": min(vals), "hi": max(vals), "f": "kM", "paren": True}
            row += text(c).rjust(width)
            cells.append(c)
        ratio = statistics.median(results[(lname, "own")]) / statistics.median(results[(lname, "websockets")])
        ratio_w = statistics.median(results[(lname, "own")]) / statistics.median(results[(lname, OwnWsaccel.name)])
        row += f"{ratio:>17.2f}x"
        print(row)
        rows.append([lname, *cells, {"v": ratio_w, "f": "x2"}, {"v": ratio, "f": "x2"}])

    print("\nConformance: close code answered to each bad frame (after an open handshake; ws_max_size = "
          f"{testing.BAD_FRAMES_MAX_SIZE})")
    print(f"{'frame':52s}{'expected':>9s}" + "".join(f"{n:>13s}" for n in names))
    mismatches = {n: 0 for n in names}
    for fname, data, expected in testing.BAD_FRAMES:
        row = f"{fname:52s}{expected:>9d}"
        for cls in candidates:
            got = cls(max_size=testing.BAD_FRAMES_MAX_SIZE).close_code(data)
            if got != expected:
                mismatches[cls.name] += 1
            row += f"{str(got) + ('' if got == expected else ' !'):>13s}"
        print(row)
    print("mismatches: " + ", ".join(f"{n} {m}" for n, m in mismatches.items()))

    if not args.no_write:
        info = machine_info()
        tables = [table("results", None, ["workload", *names, "own / own+wsaccel", "own / websockets"], rows,
                        "l" + "r" * (len(names) + 2)),
                  table("conformance", "Conformance", ["candidate", "bad frames", "mismatches"],
                        [(n, {"v": len(testing.BAD_FRAMES), "f": "int"}, {"v": m, "f": "int"}) for n, m in mismatches.items()],
                        "lrr")]
        meta = {"machine": {"cpus": info["nproc"], "cpu": info["cpu"], "kernel": info["kernel"], "python": info["python"]},
                "source": info["source"], "loadavg_start": info["loadavg"], "elapsed_s": round(time.monotonic() - t_start),
                "versions": {"websockets": version("websockets"), "wsaccel": version("wsaccel")}}
        write(args.results_dir, "ws_codec", meta=meta, params={"runs": args.runs, "seconds": args.seconds},
              runs=[{"workload": w, "candidate": c, "frames_per_s": v} for (w, c), v in results.items()],
              tables=tables, started=started)


if __name__ == "__main__":
    main()
