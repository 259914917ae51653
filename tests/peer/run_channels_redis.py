"""Run channels_redis's published ``tests/test_core.py`` against shmchannels.

The sdist of channels_redis (wheels carry no tests) is downloaded from PyPI
into ``.cache/peer/`` once; ``tests/test_core.py`` is extracted into a
temporary directory together with our adapter (``channels_redis_conftest.py``
copied as ``conftest.py``) and run by pytest in a subprocess with this
interpreter.  Usable from pytest (``tests/layers/test_peer_channels_redis.py``) or
by hand::

    .venv/bin/python tests/peer/run_channels_redis.py
"""

import contextlib
import dataclasses
import glob
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "peer"

from .common import PeerSetupError, download, parse_junit, remove_shm_files, subprocess_env, unique_prefix

VERSION = "4.3.0"
TEST_FILE = "tests/test_core.py"
ADAPTER = Path(__file__).with_name("channels_redis_conftest.py")
#: per-test limit inside the child (channels_redis's own setup.cfg uses 10 s;
#: its longest test needs about 5 s)
PER_TEST_TIMEOUT = 30
SUITE_TIMEOUT = 300

#: The only tests not run, each because it inspects channels_redis internals
#: that a different backend cannot (and should not) have.
DESELECTED = {
    "test_default_group_key_format": (
        "calls RedisChannelLayer._group_key() and compares it with the Redis key "
        "b'asgi:group:test_group'; that is channels_redis's Redis key layout, not channel-layer behaviour"
    ),
    "test_custom_group_key_format": (
        "calls RedisChannelLayer._group_key() and compares it with the Redis key "
        "b'test_prefix:group:test_group'; that is channels_redis's Redis key layout, not channel-layer behaviour"
    ),
    "test_receive_buffer_respects_capacity": (
        "fills RedisChannelLayer.receive_buffer, channels_redis's private per-channel asyncio.Queue "
        "(a BoundedQueue that drops the oldest item); no public API reaches it"
    ),
}


@dataclasses.dataclass
class SuiteResult:
    version: str
    prefix: str
    returncode: int
    output: str
    junit: dict  # name -> (outcome, message), from the JUnit XML
    outcomes: dict  # name -> {"outcome", "message", "duration"}, from the adapter
    deselected: list  # names the child reports as deselected
    layer_class: str
    shm_left: list  # /dev/shm files of the run's prefix after the child exited
    seconds: float

    def names(self, *outcomes):
        return {n for n, o in self.outcomes.items() if o["outcome"] in outcomes}

    def summary(self):
        lines = [f"channels_redis {self.version} tests/test_core.py against {self.layer_class} "
                 f"(bus prefix {self.prefix}, {self.seconds:.1f} s, exit status {self.returncode})"]
        for label in ("passed", "xpassed", "xfailed", "skipped", "failed", "error"):
            names = sorted(self.names(label))
            lines.append(f"  {label}: {len(names)}")
            for n in names:
                extra = ""
                if label in ("xpassed", "xfailed"):
                    extra = f"  (upstream xfail reason: {self.outcomes[n].get('xfail_reason', '')})"
                    failed_at = [ln for ln in self.outcomes[n]["message"].splitlines() if ln.startswith("E ")]
                    if failed_at:
                        extra += f"\n      failed at: {failed_at[0][1:].strip()}"
                elif label in ("failed", "error", "skipped"):
                    extra = "\n" + self.outcomes[n]["message"]
                lines.append(f"    {n} [{self.outcomes[n]['duration']:.2f} s]{extra}")
        lines.append(f"  deselected: {len(self.deselected)}")
        for n in sorted(self.deselected):
            lines.append(f"    {n}: {DESELECTED.get(n, '(NO REASON RECORDED)')}")
        return "\n".join(lines)


def extract_test_file(sdist, dest):
    """Copy ``tests/test_core.py`` out of the sdist into ``dest``."""
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.split("/", 1)[-1] == TEST_FILE]
        if len(members) != 1:
            raise PeerSetupError(f"{sdist.name} has no single {TEST_FILE} (found {[m.name for m in members]})")
        data = tar.extractfile(members[0]).read()
    out = Path(dest) / "test_core.py"
    out.write_bytes(data)
    return out


def run_suite(version=VERSION, *, per_test_timeout=PER_TEST_TIMEOUT, extra_args=(), keep_dir=None, bridge_url=None):
    """Download, extract and run the suite; return a SuiteResult.

    ``bridge_url`` (a Redis URL): with the bridge between hosts on, every
    layer instance a host of its own (see channels_redis_conftest.py).

    Raises PeerSetupError if the suite cannot be fetched or its child pytest
    produced no report at all.  The run's /dev/shm files are removed after
    being recorded in ``shm_left``.
    """
    started = time.monotonic()
    sdist = download("channels_redis", version, sdist=True)
    prefix = unique_prefix("cr")
    with tempfile.TemporaryDirectory(prefix="shmch-peer-channels_redis-") as tmp:
        work = Path(keep_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        extract_test_file(sdist, work)
        (work / "conftest.py").write_text(ADAPTER.read_text())
        # An ini file pins the child's rootdir here, away from this repository's configuration.
        (work / "pytest.ini").write_text("[pytest]\n")
        junit_path = work / "junit.xml"
        report_path = work / "outcomes.json"
        cmd = [
            sys.executable, "-m", "pytest", "test_core.py",
            "-p", "no:django", "-p", "no:cacheprovider",
            "-o", "asyncio_mode=auto",
            "-o", "asyncio_default_fixture_loop_scope=function",
            # Make caplog see the layer's INFO records, so the two tests that
            # check the "N of M channels over capacity in group G" log line
            # really compare it rather than loop over nothing.
            "-o", "log_level=INFO",
            f"--timeout={per_test_timeout}",
            f"--junitxml={junit_path}",
            "-rA", "-v",
        ]
        for name in DESELECTED:
            cmd += ["--deselect", f"test_core.py::{name}"]
        cmd += list(extra_args)
        env = subprocess_env(SHMCH_PEER_PREFIX=prefix, SHMCH_PEER_REPORT=str(report_path),
                             **({"SHMCH_PEER_BRIDGE": bridge_url} if bridge_url else {}))
        try:
            proc = subprocess.run(cmd, cwd=work, env=env, timeout=SUITE_TIMEOUT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            returncode, output = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as exc:
            returncode, output = -1, f"(killed after {SUITE_TIMEOUT} s)\n{exc.output or ''}"
        shm_left = remove_shm_files(prefix)
        if bridge_url:  # the instances' buses and bridge locks
            for path in glob.glob(f"/dev/shm/shmch-{os.getuid()}-{glob.escape(prefix)}i*"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                shm_left.append(path)
        if not junit_path.exists() or not report_path.exists():
            raise PeerSetupError(f"the channels_redis suite produced no report (exit status {returncode}):\n{output[-8000:]}")
        report = json.loads(report_path.read_text())
        return SuiteResult(
            version=version,
            prefix=prefix,
            returncode=returncode,
            output=output,
            junit=parse_junit(junit_path),
            outcomes=report["outcomes"],
            deselected=report["deselected"],
            layer_class=report.get("layer_class", "?"),
            shm_left=shm_left,
            seconds=time.monotonic() - started,
        )


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default=VERSION)
    ap.add_argument("--keep", help="run in this directory and keep it")
    ap.add_argument("pytest_args", nargs="*", help="extra arguments for the child pytest (after --)")
    args = ap.parse_args(argv)
    result = run_suite(args.version, keep_dir=args.keep, extra_args=args.pytest_args)
    print(result.output)
    print(result.summary())
    if result.shm_left:
        print(f"left in /dev/shm: {result.shm_left}")
    return 0 if result.returncode == 0 and not result.shm_left else 1


if __name__ == "__main__":
    sys.exit(main())
