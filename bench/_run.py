"""What the main() of every benchmark script does alike: the options they
share, their prerequisites, Ctrl-C and SIGTERM, one measurement at a time on
quiet CPUs, and where their results go."""

import argparse
import contextlib
import importlib
import itertools
import os
import sys
import time

from _common import BenchError, log, terminate_on_signals, wait_for_quiet
from _results import RESULTS_DIR

# ------------------------------------------------------------------- options


def new_parser(doc, *, quick, runs, write, only, only_help):
    """The options every script starts with; the help texts are the script's."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--runs", type=int, default=None, help=runs)
    p.add_argument("--write", action="store_true", help=write)
    p.add_argument("--no-write", action="store_true", help="write no results file")
    p.add_argument("--only", default=only, help=only_help)
    return p


def parse(p, argv, *, choices, kind):
    """Add --results-dir and parse: --runs defaults to 5 (1 with --quick), --only
    becomes a list of ``choices``."""
    p.add_argument("--results-dir", default=None,
                   help=f"where NAME.json is written (default {os.path.relpath(RESULTS_DIR)} for a full run; "
                        "a quick or partial run writes one only with --write or --results-dir)")
    a = p.parse_args(argv)
    a.runs = a.runs or (1 if a.quick else 5)
    a.only = [s.strip() for s in a.only.split(",") if s.strip()]
    bad = [s for s in a.only if s not in choices]
    if bad:
        p.error(f"unknown {kind}(s) {bad}; choose from {list(choices)}")
    return a


def results_dir(args, full):
    """Where this run writes its results file, or None: a full run to
    bench/results unless --no-write, a quick or partial one only with --write
    or --results-dir."""
    if args.no_write:
        return None
    if args.results_dir:
        return args.results_dir
    return RESULTS_DIR if (full or args.write) else None


# ------------------------------------------------------------- prerequisites


def require_program(name, found):
    """Exit with status 2, saying how to install ``name``, unless it was ``found``."""
    if not found:
        log(f"{name} not found.  Install it, e.g. on Debian/Ubuntu:\n\n    apt-get install {name}\n")
        sys.exit(2)


def require_modules(names):
    """Exit with status 2, saying how to install them, if any of these modules does not import."""
    missing = []
    for mod in names:
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        log(f"missing Python packages {missing}; install the bench extra:\n\n    .venv/bin/pip install -e '.[test,bench]'\n")
        sys.exit(2)


@contextlib.contextmanager
def interruptible():
    """SIGTERM, SIGHUP and Ctrl-C unwind through the clean-up inside this
    block (servers, redis-server, temporary copies); Ctrl-C exits with 130."""
    with terminate_on_signals():
        try:
            yield
        except KeyboardInterrupt:
            log("interrupted")
            raise SystemExit(130)


# --------------------------------------------------------------- measuring


class Run:
    """What the measurements of one run share: the wait for quiet CPUs (the
    box is small and shared, and another busy process skews a measurement),
    the load seen, the errors, and the bus prefixes handed out."""

    def __init__(self, args, *, quiet_budget, prefix_tag, unit):
        self.args = args
        self.quiet_budget = quiet_budget  # seconds a run may spend in all waiting for quiet CPUs
        self.prefix_tag = prefix_tag
        self.unit = unit  # what the script calls one pass over all variants: "run" or "round"
        self.counter = itertools.count()
        self.prefixes = []
        self.errors = []
        self.max_load = os.getloadavg()[0]
        self.waited = 0.0  # seconds spent waiting for other processes to leave the CPUs
        self.measurements = 0
        self.contended = []  # measurements started while others kept CPUs busy

    def new_prefix(self):
        p = f"{self.prefix_tag}{os.getpid()}x{next(self.counter)}"
        self.prefixes.append(p)
        return p

    def runs(self):
        """(index, name) of each run, logging its start."""
        for i in range(self.args.runs):
            log(f"--- {self.unit} {i + 1}/{self.args.runs}")
            yield i, f"{self.unit} {i + 1}"

    def measure(self, run, name, title, take, describe):
        """``take()`` after waiting for quiet CPUs; its result, or None if it
        raised BenchError (kept in ``errors``).  The progress line is ``title``
        then ``describe(result)``."""
        self._wait_for_quiet(f"{run} {name}")
        t0 = time.monotonic()
        try:
            result = take()
            msg = describe(result)
        except BenchError as exc:
            result, msg = None, "ERROR"
            self.errors.append(f"{run} {name}: {exc}")
            log(f"    {name}: {exc}")
        self.max_load = max(self.max_load, os.getloadavg()[0])
        log(f"  {title} {msg}   [{time.monotonic() - t0:.1f} s]")
        return result

    def _wait_for_quiet(self, what):
        budget = max(0.0, self.quiet_budget - self.waited)
        waited, busy = wait_for_quiet(min(self.args.quiet_wait, budget))
        self.waited += waited
        self.measurements += 1
        if busy > 0.5:
            self.contended.append(f"{what} ({busy:.1f})")
            log(f"    other processes keep {busy:.1f} CPU(s) busy; measuring anyway")
