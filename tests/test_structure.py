"""The code's shape (issue 13): small modules, no import cycle, vendors independent.

Read from the source with ``ast``, nothing imported: a module over the size limit, an import
cycle (module-level or inside a function, ``if TYPE_CHECKING:`` blocks aside) or a vendor
connector importing another vendor's module fails here, naming the place.
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 400
VENDORS = ("ibm", "pasqal", "qrmi")


def modules() -> dict[str, Path]:
    """Every module of the installed package by its dotted name (connectors/ is
    ``qflow.connectors``)."""
    found = {}
    for root, prefix in ((REPO / "qflow", "qflow"), (REPO / "connectors", "qflow.connectors")):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([prefix, *parts])] = path
    return found


def _imported(node: ast.Import | ast.ImportFrom, name: str, path: Path) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package
        package = name.split(".")[: -1 if path.name != "__init__.py" else None]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The qflow modules ``name`` imports, wherever in the module (not for type checking)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in _imported(child, name, path):
                    while target and target not in known:  # a name imported from a module
                        target = target.rpartition(".")[0]
                    if target and target != name:
                        found.add(target)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def test_no_module_is_over_the_size_limit():
    sizes = {
        path: len(path.read_text(encoding="utf-8").splitlines()) for path in modules().values()
    }
    large = {str(path.relative_to(REPO)): n for path, n in sizes.items() if n > MAX_LINES}
    assert not large, f"modules over {MAX_LINES} lines (split them by concern): {large}"


def test_there_is_no_import_cycle():
    found = modules()
    graph = {name: imports_of(name, path, set(found)) for name, path in found.items()}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as cycle:
        raise AssertionError(f"import cycle: {' -> '.join(cycle.args[1])}") from None


def test_vendor_connectors_do_not_import_one_another():
    found = modules()
    crossings = []
    for name, path in found.items():
        module = name.removeprefix("qflow.connectors.")
        vendor = next((v for v in VENDORS if module.split("_")[0] == v), None)
        if name.startswith("qflow.connectors.") and vendor:
            for target in imports_of(name, path, set(found)):
                other = target.removeprefix("qflow.connectors.").split("_")[0]
                if other in VENDORS and other != vendor:
                    crossings.append(f"{name} imports {target}")
    assert not crossings, "shared code belongs in qubo/task_book/sdk_extras: " + str(crossings)


def test_the_checks_see_what_they_look_for(tmp_path: Path):
    """The cycle and import readers are not vacuous: they find a cycle written on purpose."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from qflow.b import x\n")
    b.write_text("def f():\n    import qflow.a\n")
    known = {"qflow.a", "qflow.b"}
    graph = {"qflow.a": imports_of("qflow.a", a, known), "qflow.b": imports_of("qflow.b", b, known)}
    assert graph == {"qflow.a": {"qflow.b"}, "qflow.b": {"qflow.a"}}
    assert "qflow.connectors.qubo" in imports_of(
        "qflow.connectors.ibm", REPO / "connectors" / "ibm.py", set(modules())
    )


def test_a_run_without_qpus_loads_no_http_stack(tmp_path: Path):
    """Start-up: a run whose steps all stay classical imports neither the gateway's nor the
    emulator's HTTP stack, nor a vendor SDK (the embedded default deployment has a QPU)."""
    workflow = REPO / "benchmarks" / "cwl" / "loop.cwl"
    heavy = ("aiohttp", "qflow.gateway.http", "qflow.emulator.http", "qiskit", "pulser", "qrmi")
    code = (
        "import sys\n"
        "from qflow.cli.main import main\n"
        f"code = main(['run', '--quiet', '--outdir', {str(tmp_path)!r}, {str(workflow)!r},"
        " '--', '--count', '2'])\n"
        f"print('LOADED', code, sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
    ).stdout
    assert "LOADED 0 []" in out, out
