"""The package's module graph: no import circle, at module level or inside functions (a function-level import
that closes a circle only hides it until the call)."""

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"


def module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The pssl modules `path` imports anywhere in it (a `from pkg import name` of a submodule counts as it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} & modules
            found |= {f"{node.module}.{a.name}" for a in node.names} & modules
    return found


def circles(src: Path) -> list[str]:
    files = {module_name(p, src): p for p in (src / "pssl").rglob("*.py")}
    # a package's __init__ re-exporting its own modules is no circle of concepts
    graph = {m: {d for d in imports(p, set(files)) - {m}
                 if not (p.name == "__init__.py" and d.startswith(m + "."))} for m, p in files.items()}
    state, stack, found = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                found.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_no_module_imports_itself_through_others():
    assert not circles(SRC), "\n".join(circles(SRC))


# Each package's concept sits on a floor and imports only from floors below it: the data readers know no
# model, the models no training, training no report. (The top-level modules are the ground floor.)
FLOORS = [("data", "demo"), ("models",), ("explain", "eval"), ("train",), ("selftrain",), ("report",)]


def test_no_package_imports_from_a_floor_above_it():
    src = SRC
    files = {module_name(p, src): p for p in (src / "pssl").rglob("*.py")}
    floor = {package: level for level, packages in enumerate(FLOORS) for package in packages}

    def package(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 2 or (len(parts) == 2 and (src / "pssl" / parts[1]).is_dir()) else None

    upward = [f"{m} imports {d}" for m, p in files.items() for d in sorted(imports(p, set(files)))
              if package(m) in floor and package(d) in floor and floor[package(d)] > floor[package(m)]]
    assert not upward, "\n".join(upward)
