"""The package's layers, checked from its own source: no module imports from a layer above its
own, there is no import cycle, and no import hides inside a function (except optional packages).
The README's table of layers lists exactly these layers, in this order."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "obsdiff_hub"

# Bottom up. A module may import from its own layer and the layers below it.
LAYERS = [
    ("errors", ["_version", "errors", "dtypes", "units", "resources", "registration", "verbosity", "memory"]),
    ("maths", ["maths"]),
    ("architectures", ["architectures"]),
    ("tiny", ["tiny"]),
    ("storage", ["storage"]),
    ("hub", ["hub"]),
    ("models", ["models"]),
    ("checkpoints", ["checkpoints"]),
    ("pruning", ["pruning"]),
    ("recovery", ["recovery"]),
    ("shapes", ["shapes"]),
    ("zoo", ["zoo"]),
    ("cli", ["cli"]),
]
RANK = {top: rank for rank, (_, tops) in enumerate(LAYERS) for top in tops}
OPTIONAL = {"torch_fidelity", "ImageReward", "peft", "torchao"}  # may be imported where they are used
MATHS_MAY_IMPORT = {"torch", "obsdiff_hub.errors", "obsdiff_hub.maths"}
FACADE = "obsdiff_hub"  # the package's __init__: the public names, imported on first use


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> list[tuple[str, bool, int, bool]]:
    """(imported module, inside a function, line, lazy) for every import of a module: import
    statements, and the command line's lazy bindings ``library("zoo.runs")`` (``cli/lazy.py``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found = []
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(node) for f in functions for node in ast.walk(f) if node is not f}
    checking = [n for n in ast.walk(tree) if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING"]
    type_only = {id(node) for block in checking for node in ast.walk(block)}  # never run: lazy too
    for node in ast.walk(tree):
        inside = id(node) in nested
        if isinstance(node, ast.Import):
            found += [(alias.name, inside, node.lineno, id(node) in type_only) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append((target if target in MODULES else base, inside, node.lineno, id(node) in type_only))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "library"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.append((f"{FACADE}.{node.args[0].value}", inside, node.lineno, True))
    return found


def own(target: str) -> str | None:
    """The package module an import refers to (None: another distribution)."""
    if target != FACADE and not target.startswith(FACADE + "."):
        return None
    while target not in MODULES:
        target = target.rpartition(".")[0]
    return target


def layer_of(name: str) -> int:
    return RANK[name.split(".")[1]]


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for name in MODULES:
        if name == FACADE:
            continue
        for target, _, line, _ in imports(name):
            module = own(target)
            if module is not None and (module == FACADE or layer_of(module) > layer_of(name)):
                upward.append(f"{name}:{line} imports {module}")
    assert upward == []


def test_no_import_cycle():
    graph = {name: {own(t) for t, *_ in imports(name)} - {None, name, FACADE} for name in MODULES if name != FACADE}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_import_inside_a_function_except_optional_packages():
    hidden = [
        f"{name}:{line} imports {target}"
        for name in MODULES
        for target, inside, line, _ in imports(name)
        if inside and target.split(".")[0] not in OPTIONAL
    ]
    assert hidden == []


def test_the_maths_imports_torch_only():
    foreign = [
        f"{name}:{line} imports {target}"
        for name in MODULES
        if name.startswith("obsdiff_hub.maths")
        for target, _, line, _ in imports(name)
        if target.split(".")[0] not in sys.stdlib_module_names
        and not any(target == m or target.startswith(m + ".") for m in MATHS_MAY_IMPORT)
    ]
    assert foreign == []


def test_the_command_line_binds_the_library_lazily():
    """``--help`` and usage errors must not load torch or diffusers: the CLI reaches the library
    only through ``library(...)`` bindings and the dependency-free ``errors``, ``units`` and ``dtypes``."""
    direct = [
        f"{name}:{line} imports {module}"
        for name in MODULES
        if name.startswith("obsdiff_hub.cli")
        for target, _, line, lazy in imports(name)
        if (module := own(target)) is not None
        and not lazy
        and not module.startswith("obsdiff_hub.cli")
        and module not in ("obsdiff_hub.errors", "obsdiff_hub.units", "obsdiff_hub.dtypes", "obsdiff_hub._version")
    ]
    assert direct == []
    probe = (
        "import sys, obsdiff_hub.cli; print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in "
        "sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_the_readme_table_lists_these_layers_in_order():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## How it works") :].split("\n\n")[2]
    listed = re.findall(r"^\| `obsdiff_hub/([a-z_]+)[/.`]", table, flags=re.M)
    assert listed == [name for name, _ in LAYERS], listed
    for module in MODULES:
        top = module.split(".")[1] if "." in module else None
        assert top is None or top in RANK, f"{module} belongs to no layer"
