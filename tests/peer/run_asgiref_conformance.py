"""Run asgiref 1.1.2's ASGI 1 ``ConformanceTestCase`` against ``shmchannels.ChannelLayer``.

asgiref 1.1.2 (which ships the suite as ``asgiref/conformance.py`` in its
wheel) cannot share an environment with Django Channels 4 (asgiref 3), so it
runs in a virtualenv of its own, ``.venv-asgi1/`` at the repository root
(git-ignored), created once and reused.  On every run the project is built
afresh from the current working tree (a copy of it, so this repository's
``build/`` is not touched) and reinstalled there, non-editable and without
the ``channels`` extra; then our test module
(``asgiref_conformance_module.py``) runs with that virtualenv's pytest in a
subprocess.  Usable from pytest (``tests/layers/test_peer_asgiref_conformance.py``)
or by hand::

    .venv/bin/python tests/peer/run_asgiref_conformance.py
"""

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "peer"

from .common import REPO_ROOT, PeerSetupError, cache_lock, parse_junit, remove_shm_files, run, subprocess_env, unique_prefix

VENV = REPO_ROOT / ".venv-asgi1"
#: What the ASGI 1 environment holds besides the project.  setuptools and
#: wheel let the project build there without build isolation, so a rerun
#: needs no network.
BASE_REQUIREMENTS = ["asgiref==1.1.2", "six", "pytest", "setuptools>=68", "wheel"]
MARKER = ".shmchannels-peer-requirements"
TEST_MODULE = Path(__file__).with_name("asgiref_conformance_module.py")
SUITE_TIMEOUT = 240
#: Not copied when building the project from the working tree.
_NOT_SOURCE = (".git", ".venv", ".venv-*", ".cache", "build", "dist", "__pycache__", "*.so", "*.egg-info",
               ".pytest_cache", ".hypothesis", ".whl", "*.pyc")


def venv_python(venv=VENV):
    return Path(venv) / "bin" / "python"


def ensure_venv(venv=VENV):
    """Create the ASGI 1 virtualenv unless a complete one is there already."""
    venv = Path(venv)
    want = "\n".join([f"python {sys.version_info[0]}.{sys.version_info[1]}", *BASE_REQUIREMENTS]) + "\n"
    marker = venv / MARKER
    with cache_lock("venv-asgi1"):
        if marker.exists() and marker.read_text() == want and _python_works(venv):
            return venv
        if venv.exists():
            shutil.rmtree(venv)
        run([sys.executable, "-m", "venv", venv], what=f"creating the ASGI 1 virtualenv {venv}", timeout=300)
        try:
            run([venv_python(venv), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *BASE_REQUIREMENTS],
                what=f"installing {' '.join(BASE_REQUIREMENTS)} into {venv}", timeout=900)
        except PeerSetupError as exc:
            raise PeerSetupError(f"could not fill the ASGI 1 virtualenv from PyPI (is PyPI reachable?)\n{exc}") from None
        marker.write_text(want)
        return venv


def _python_works(venv):
    try:
        subprocess.run([venv_python(venv), "-c", "import asgiref.conformance, six, pytest"],
                       check=True, capture_output=True, timeout=120)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def install_project(venv, workdir):
    """Build a wheel of the current working tree and (re)install it into ``venv``."""
    src = Path(workdir) / "src"
    wheelhouse = Path(workdir) / "wheelhouse"
    shutil.copytree(REPO_ROOT, src, ignore=shutil.ignore_patterns(*_NOT_SOURCE), symlinks=True)
    py = venv_python(venv)
    run([py, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-input", "--no-deps", "--no-build-isolation",
         "-w", wheelhouse, src], what="building the shmchannels wheel", timeout=600)
    (wheel,) = wheelhouse.glob("shmchannels-*.whl")
    # First the dependencies (a no-op once they are there), then the project
    # itself, replaced even though its version number has not changed.
    try:
        run([py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", wheel],
            what="installing shmchannels' dependencies into the ASGI 1 virtualenv", timeout=900)
    except PeerSetupError as exc:
        raise PeerSetupError(f"could not install shmchannels' dependencies (is PyPI reachable?)\n{exc}") from None
    run([py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-deps", "--force-reinstall", wheel],
        what="reinstalling shmchannels into the ASGI 1 virtualenv", timeout=300)
    return wheel


_PROBE = r"""
import importlib.util, json, sys
import asgiref, shmchannels
from shmchannels import exceptions
print(json.dumps({
    "asgiref": asgiref.__version__,
    "shmchannels_file": shmchannels.__file__,
    "channels_installed": importlib.util.find_spec("channels") is not None,
    "django_installed": importlib.util.find_spec("django") is not None,
    "channels_imported": "channels" in sys.modules,
    "channelfull_bases": [c.__module__ + "." + c.__qualname__ for c in exceptions.ChannelFull.__mro__],
}))
"""


@dataclasses.dataclass
class ConformanceResult:
    prefix: str
    returncode: int
    output: str
    junit: dict
    environment: dict
    shm_left: list
    seconds: float
    setup_seconds: float

    def names(self, *outcomes):
        return {n for n, (o, _) in self.junit.items() if o in outcomes}

    def summary(self):
        env = self.environment
        lines = [f"asgiref {env.get('asgiref')} ConformanceTestCase against shmchannels.ChannelLayer "
                 f"(bus prefix {self.prefix}; setup {self.setup_seconds:.1f} s, suite {self.seconds:.1f} s, "
                 f"exit status {self.returncode}; channels installed there: {env.get('channels_installed')})"]
        for label in ("passed", "skipped", "xfailed", "failed", "error"):
            names = sorted(self.names(label))
            lines.append(f"  {label}: {len(names)}")
            for n in names:
                msg = self.junit[n][1]
                lines.append(f"    {n}" + (f": {msg}" if label != "passed" else ""))
        return "\n".join(lines)


def run_suite(venv=VENV, keep_dir=None):
    setup_started = time.monotonic()
    venv = ensure_venv(venv)
    prefix = unique_prefix("a1")
    with tempfile.TemporaryDirectory(prefix="shmch-peer-asgiref-") as tmp:
        work = Path(keep_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        install_project(venv, work / "build")
        run_dir = work / "run"
        run_dir.mkdir()
        env = subprocess_env(SHMCH_PEER_PREFIX=prefix)
        probe = run([venv_python(venv), "-c", _PROBE], what="inspecting the ASGI 1 virtualenv", timeout=120, cwd=run_dir, env=env)
        environment = json.loads(probe.strip().splitlines()[-1])
        (run_dir / "test_shmchannels_asgi1_conformance.py").write_text(TEST_MODULE.read_text())
        (run_dir / "pytest.ini").write_text("[pytest]\n")  # pins the rootdir here
        junit_path = run_dir / "junit.xml"
        cmd = [venv_python(venv), "-m", "pytest", "test_shmchannels_asgi1_conformance.py",
               "-p", "no:django", "-p", "no:cacheprovider", f"--junitxml={junit_path}", "-rA", "-v"]
        setup_seconds = time.monotonic() - setup_started
        started = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=run_dir, env=env, timeout=SUITE_TIMEOUT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            returncode, output = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as exc:
            returncode, output = -1, f"(killed after {SUITE_TIMEOUT} s)\n{exc.output or ''}"
        seconds = time.monotonic() - started
        shm_left = remove_shm_files(prefix)
        if not junit_path.exists():
            raise PeerSetupError(f"the conformance suite produced no report (exit status {returncode}):\n{output[-8000:]}")
        return ConformanceResult(
            prefix=prefix, returncode=returncode, output=output, junit=parse_junit(junit_path),
            environment=environment, shm_left=shm_left, seconds=seconds, setup_seconds=setup_seconds,
        )


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="work in this directory and keep it")
    args = ap.parse_args(argv)
    result = run_suite(keep_dir=args.keep)
    print(result.output)
    print(result.summary())
    if result.shm_left:
        print(f"left in /dev/shm: {result.shm_left}")
    return 0 if result.returncode == 0 and not result.shm_left else 1


if __name__ == "__main__":
    sys.exit(main())
