"""Shared plumbing of the peer-suite runners: download cache, subprocesses,
JUnit XML, and the /dev/shm check."""

import contextlib
import fcntl
import glob
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "peer"


class PeerSetupError(RuntimeError):
    """The peer suite could not be fetched or prepared (not a verdict on the layer)."""


def unique_prefix(tag):
    """A bus prefix of its own, in the ``t<pid>x...`` family that tests/conftest.py
    checks at the end of the session, so anything left behind is also caught there."""
    return f"t{os.getpid()}x{tag}{secrets.token_hex(3)}"


def shm_files(prefix):
    return sorted(glob.glob(f"/dev/shm/shmch-{os.getuid()}-{glob.escape(prefix)}@*"))


def remove_shm_files(prefix):
    """Remove (and return) whatever a bus of ``prefix`` left in /dev/shm."""
    left = shm_files(prefix)
    for f in left:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)
    return left


def subprocess_env(**extra):
    """The environment for a child pytest: ours, minus anything that would
    change how pytest behaves there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH", "DJANGO_SETTINGS"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


@contextlib.contextmanager
def cache_lock(name):
    """Serialise concurrent test runs that fill the same cache entry."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run(cmd, *, what, timeout, cwd=None, env=None):
    """Run ``cmd``; raise PeerSetupError with its output if it fails."""
    try:
        proc = subprocess.run(
            [str(c) for c in cmd], cwd=cwd, env=env, timeout=timeout,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerSetupError(f"{what}: timed out after {timeout} s\n{(exc.output or '')[-4000:]}") from None
    if proc.returncode != 0:
        raise PeerSetupError(f"{what}: exit status {proc.returncode}\n{proc.stdout[-6000:]}")
    return proc.stdout


def _candidates(name, version, suffixes):
    stems = {f"{name}-{version}", f"{name.replace('-', '_')}-{version}", f"{name.replace('_', '-')}-{version}"}
    found = []
    for stem in stems:
        for suffix in suffixes:
            found += glob.glob(str(CACHE_DIR / f"{stem}{suffix}"))
    return sorted(set(found))


def download(name, version, *, sdist, python=None):
    """Path of ``name==version`` in .cache/peer, downloading it from PyPI if absent.

    ``sdist=True`` fetches the source distribution (``--no-binary :all:``),
    otherwise a wheel (``--only-binary :all:``).
    """
    suffixes = (".tar.gz", ".zip") if sdist else ("-py3-none-any.whl", "-py2.py3-none-any.whl", "-*.whl")
    with cache_lock(f"{name}-{version}"):
        for path in _candidates(name, version, suffixes):
            if _looks_whole(path):
                return Path(path)
            os.unlink(path)  # a truncated download of an earlier run
        with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix=".dl-") as tmp:
            cmd = [python or sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--no-input", "--retries", "2", "--timeout", "30", "-d", tmp, f"{name}=={version}"]
            cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
            try:
                run(cmd, what=f"pip download {name}=={version}", timeout=600)
            except PeerSetupError as exc:
                raise PeerSetupError(
                    f"could not download {name}=={version} ({'sdist' if sdist else 'wheel'}) from PyPI into {CACHE_DIR}.\n"
                    f"Is PyPI reachable from here?  A copy placed in that directory is reused without network access.\n"
                    f"{exc}"
                ) from None
            got = sorted(Path(tmp).iterdir())
            if len(got) != 1:
                raise PeerSetupError(f"pip download {name}=={version} produced {[p.name for p in got]}, expected one file")
            dest = CACHE_DIR / got[0].name
            os.replace(got[0], dest)
            return dest


def _looks_whole(path):
    import tarfile
    import zipfile

    try:
        if path.endswith((".whl", ".zip")):
            with zipfile.ZipFile(path) as z:
                return z.testzip() is None
        with tarfile.open(path) as t:
            t.getmembers()
        return True
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile):
        return False


def parse_junit(path):
    """{test name: (outcome, message)} from a pytest JUnit XML file.

    Outcomes: passed, failed, error, skipped, xfailed.  JUnit cannot tell a
    non-strict xpass from a pass; the channels_redis adapter records that
    separately.
    """
    root = ET.parse(path).getroot()
    results = {}
    for case in root.iter("testcase"):
        name = case.get("name")
        outcome, message = "passed", ""
        for child in case:
            if child.tag == "failure":
                outcome, message = "failed", child.get("message", "")
            elif child.tag == "error":
                # An error in teardown after a failure still counts as the worst.
                if outcome != "failed":
                    outcome, message = "error", child.get("message", "")
            elif child.tag == "skipped" and outcome == "passed":
                kind = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
                outcome, message = kind, child.get("message", "")
        if name in results and results[name][0] != "passed":
            continue  # keep the worse of a duplicate (e.g. call + teardown error)
        results[name] = (outcome, message)
    return results


def copy_tree(src, dst, ignore_names=()):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*ignore_names), symlinks=True)
