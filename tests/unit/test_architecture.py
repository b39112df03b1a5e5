"""Rules of the design that no single feature test would notice breaking."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.schemas import all_schemas, schema_bytes

ROOT = Path(__file__).resolve().parents[2]
PURE_PACKAGES = ("monitor", "simulation", "detectors", "governance", "experiments", "plans", "incidents")
TRANSPORT_MODULES = {"faust", "aiokafka", "mode"}


def _python_files(package: str) -> list[Path]:
    return sorted(path for path in (ROOT / package).rglob("*.py") if "__pycache__" not in path.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _transport_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_bytes(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                  if name.split(".")[0] in TRANSPORT_MODULES]
    return found


def test_only_streams_imports_faust_aiokafka_or_mode_in_source() -> None:
    files = [path for package in PURE_PACKAGES for path in _python_files(package)]
    assert any(path.parent.name == "detectors" for path in files) and any(p.parent.name == "plans" for p in files)
    offenders = [hit for path in files for hit in _transport_imports(path)]
    assert offenders == [], "only streams/ may import faust, aiokafka or mode:\n" + "\n".join(offenders)


def test_the_worker_harness_imports_no_transport_and_the_benchmarks_not_the_tests() -> None:
    # One harness (pmon_harness.py) for tests and benchmarks: a benchmark that imported tests/ would depend on
    # pytest's layout, and a harness that imported faust or aiokafka would break the transport rule.
    assert _transport_imports(ROOT / "pmon_harness.py") == []
    offenders = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] == "tests"]
    assert offenders == [], "bench/ imports from tests/; share through pmon_harness.py:\n" + "\n".join(offenders)


def test_the_pure_packages_do_not_import_faust_aiokafka_or_mode_even_indirectly() -> None:
    modules = [_module_name(path) for package in PURE_PACKAGES for path in _python_files(package)
               if path.name != "__main__.py"]  # running __main__ would run the command
    assert {"monitor.initiative_stage", "monitor.user_stage", "simulation.simulator",
            "detectors.conversion_drop"} <= set(modules)
    code = (f"import importlib, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(TRANSPORT_MODULES)!r}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"imported through the pure packages: {result.stdout.strip()}"


@pytest.mark.parametrize("name", sorted(all_schemas()))
def test_checked_in_schemas_are_not_stale(name: str) -> None:
    path = ROOT / "schemas" / name
    hint = "run `make schemas` and commit the files under schemas/"
    assert path.is_file(), f"schemas/{name} is missing — {hint}"
    assert path.read_bytes() == schema_bytes(all_schemas()[name]), f"schemas/{name} is stale — {hint}"


def test_no_stray_schema_files() -> None:
    stray = sorted({p.name for p in (ROOT / "schemas").glob("*.json")} - set(all_schemas()))
    assert stray == [], f"schemas/ holds files no model produces: {stray} — delete them and run `make schemas`"


def test_every_package_error_root_derives_from_the_projects_root() -> None:
    import importlib

    from pmon_errors import PmonError

    roots = {}
    for package in ("cli", "detectors", "experiments", "governance", "incidents", "monitor", "plans", "streams"):
        module = importlib.import_module(f"{package}.exceptions")
        errors = [value for value in vars(module).values()
                  if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == module.__name__]
        assert errors, f"{package}/exceptions.py defines no error"
        roots[package] = [e.__name__ for e in errors if not issubclass(e, PmonError)]
    assert all(not outside for outside in roots.values()), roots
