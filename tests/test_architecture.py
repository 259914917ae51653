"""The rooms of the code and the rules between them, checked from the AST.

    shmchannels/bus/      shared memory and processes (never asyncio)
    shmchannels/engine/   delivery inside one process
    shmchannels/runtime/  the gunicorn runtime (the only importer of gunicorn)
    shmchannels/*.py      the front ends: layers, asgi1, objects, options,
                          exceptions, and names (the name rules everybody uses)
    server/, workers/     installed as shmchannels.server / shmchannels.workers;
                          they use the bus through the front ends only

docs/architecture.md explains the layout; this file keeps it true.
"""

import ast
import os
import re

import pytest

from serving import ROOT

#: importable from server/ and workers/: the public front ends and the name rules
FRONT_ENDS = {
    "shmchannels", "shmchannels.layers", "shmchannels.asgi1", "shmchannels.objects", "shmchannels.exceptions",
    "shmchannels.options", "shmchannels.names", "shmchannels.hosted", "shmchannels.counters",
}
#: private names of other modules that may be used, each for a stated reason
ALLOWED_PRIVATE = {
    # documented: how a forked child leaves without running its parent's exit handlers
    ("os", "_exit"),
    # asyncio has no public "is the run queue empty"; Core.spin must not busy-wait
    # while other callbacks are ready (uvloop has no such attribute, and then the
    # spin only checks parked waiters)
    ("loop", "_ready"),
}
MAX_CLASS_LINES = 400


def _module_name(path):
    parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
    if parts[0] in ("server", "workers"):
        parts = ["shmchannels", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _collect_modules():
    found = {}
    for top in ("shmchannels", "server", "workers"):
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    found[_module_name(path)] = path
    return found


MODULES = _collect_modules()
EXTENSIONS = {"shmchannels.bus._shm"}  # C, no imports of its own
TREES = {name: ast.parse(open(path).read(), path) for name, path in MODULES.items()}


def _imports(name):
    """Every module ``name`` imports, at module level or inside functions: (module, line)."""
    is_package = MODULES[name].endswith("__init__.py")
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".")
                if not is_package:
                    parts = parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in MODULES or full in EXTENSIONS else base), node.lineno


def _internal_graph():
    return {m: {i for i, _ in _imports(m) if i in MODULES and i != m} for m in MODULES}


def _in(name, package):
    return name == package or name.startswith(package + ".")


def test_the_tree_has_the_rooms():
    for package in ("shmchannels.bus", "shmchannels.engine", "shmchannels.runtime", "shmchannels.server",
                    "shmchannels.workers"):
        assert package in MODULES, f"{package} is missing"
    assert os.path.exists(os.path.join(ROOT, "shmchannels", "bus", "_shm.c"))


def test_no_import_cycles():
    graph = _internal_graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in(m, "shmchannels.bus")))
def test_the_bus_imports_neither_asyncio_nor_anything_above_it(module):
    for imported, line in _imports(module):
        assert not _in(imported, "asyncio"), f"{module}:{line} imports {imported}: the bus never uses asyncio"
        for above in ("shmchannels.engine", "shmchannels.runtime", "shmchannels.server", "shmchannels.workers",
                      "shmchannels.layers", "shmchannels.asgi1", "shmchannels.objects", "shmchannels.options"):
            assert not _in(imported, above), f"{module}:{line} imports {imported}, which is built on the bus"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in(m, "shmchannels.engine")))
def test_the_engine_imports_nothing_above_it(module):
    for imported, line in _imports(module):
        for above in ("shmchannels.runtime", "shmchannels.server", "shmchannels.workers", "shmchannels.layers",
                      "shmchannels.asgi1", "shmchannels.objects"):
            assert not _in(imported, above), f"{module}:{line} imports {imported}, which is built on the engine"


def test_gunicorn_is_imported_only_by_the_runtime():
    offenders = [
        f"{m}:{line} imports {imported}"
        for m in MODULES if not _in(m, "shmchannels.runtime")
        for imported, line in _imports(m) if _in(imported, "gunicorn")
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("package", ["shmchannels.server", "shmchannels.workers"])
def test_server_and_workers_use_only_the_front_ends_and_names(package):
    offenders = [
        f"{m}:{line} imports {imported}"
        for m in MODULES if _in(m, package)
        for imported, line in _imports(m)
        if _in(imported, "shmchannels") and not _in(imported, package) and imported not in FRONT_ENDS
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("package", ["shmchannels.server", "shmchannels.workers"])
def test_server_and_workers_never_reach_through_a_layer_into_the_engine(package):
    offenders = [
        f"{m}:{node.lineno} {ast.unparse(node)}"
        for m in MODULES if _in(m, package)
        for node in ast.walk(TREES[m])
        if isinstance(node, ast.Attribute) and node.attr in ("core", "bus") and not (
            isinstance(node.value, ast.Name) and node.value.id == "self")
    ]
    assert not offenders, offenders


def _private_names_defined(tree):
    """Private names a module owns: its functions, classes, methods and the
    attributes it assigns (``self._x = ...``, ``obj._x = ...``)."""
    owned = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            owned.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            owned.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            owned.add(node.id)
    return {n for n in owned if n.startswith("_")}


def _is_private(attr):
    return attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__"))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_attribute_of_another_module_is_touched(module):
    tree = TREES[module]
    owned = _private_names_defined(tree)
    offenders = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            target, attr = node.value, node.attr
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _is_private(node.args[1].value)):
            target, attr = node.args[0], node.args[1].value
        else:
            continue
        if isinstance(target, ast.Name) and (target.id in ("self", "cls") or (target.id, attr) in ALLOWED_PRIVATE):
            continue
        if attr in owned:  # this module's own private name, on one of its own objects
            continue
        offenders.append(f"{module}:{node.lineno} {ast.unparse(node)}")
    assert not offenders, offenders


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_class_is_longer_than_400_lines(module):
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.ClassDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_CLASS_LINES, f"{module}.{node.name} is {length} lines"


def _crash_table_tests():
    from shmchannels.bus import recovery

    rows = [line for line in recovery.__doc__.splitlines() if line.startswith("|")][2:]
    assert len(rows) >= 10, "the crash table in shmchannels/bus/recovery.py lost its rows"
    for row in rows:
        test_cell = row.rstrip().rstrip("|").rsplit("|", 1)[1]
        refs = [r.strip() for r in test_cell.split(",") if r.strip()]
        assert refs, f"a crash-table row names no test: {row}"
        for ref in refs:
            path, _, name = ref.rpartition("::")
            yield row.split("|")[1].strip(), path or "tests/bus/test_crash.py", name


@pytest.mark.parametrize("fault,path,test", list(_crash_table_tests()))
def test_every_crash_table_row_names_a_test_that_exists(fault, path, test):
    match = re.fullmatch(r"(\w+)(?:\[([\w-]+)\])?", test)
    assert match, f"{test!r} is not a test name"
    function, param = match.groups()
    full = os.path.join(ROOT, path)
    assert os.path.exists(full), f"row {fault!r}: {path} does not exist"
    source = open(full).read()
    defined = {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert function in defined, f"row {fault!r}: {path} has no {function}"
    if param:
        assert f'"{param}"' in source, f"row {fault!r}: {function} has no case {param!r}"


def test_every_package_is_installed_by_setup_cfg():
    # An editable install finds any package; a wheel only those listed.
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    listed = set(cfg["options"]["packages"].split())
    packages = {m for m, path in MODULES.items() if path.endswith("__init__.py")}
    assert packages == listed, f"setup.cfg packages differ: missing {packages - listed}, extra {listed - packages}"
