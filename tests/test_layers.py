"""The package's layers point one way: every import in ``nspool/`` (at module
level, inside functions, under ``TYPE_CHECKING``) names only modules listed
before the importer in the order that ``nspool/__init__.py``'s docstring
gives, under "Layers". The order is written once, there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nspool

PACKAGE = Path(nspool.__file__).parent
#: The modules that run as child programs: they import nothing of nspool.
CHILD_PROGRAM = re.compile(r"_child$")


def layer_order() -> list[str]:
    """The module names, bottom first, from the docstring's "Layers" list:
    each ``- ...`` line names one layer's modules in ``double backquotes``."""
    doc = nspool.__doc__ or ""
    section = doc.split("Layers", 1)[1]
    items: list[str] = []
    for line in section.splitlines():
        if line.startswith("- "):
            items.append(line)
        elif line.startswith("  ") and items:  # an item's continuation line
            items[-1] += line
    names: list[str] = []
    for item in items:
        names += re.findall(r"``([A-Za-z_][A-Za-z0-9_]*)``", item.split(":", 1)[-1])
    return names


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, nspool module) for every import of ``path`` that names a module
    of the package (``__init__`` for the package itself)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (
                node.level == 0 and node.module and node.module.split(".")[0] == "nspool"
            ):
                parts = (node.module or "").split(".")
                if node.level == 0:
                    parts = parts[1:]
                if parts and parts[0]:
                    found.append((node.lineno, parts[0]))
                else:  # from . import x, y: each a module (or a name of __init__)
                    for alias in node.names:
                        module = alias.name
                        is_module = (PACKAGE / f"{module}.py").exists()
                        found.append((node.lineno, module if is_module else "__init__"))
            elif node.level > 1:
                found.append((node.lineno, "<outside the package>"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "nspool":
                    found.append((node.lineno, parts[1] if len(parts) > 1 else "__init__"))
    return found


def modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py"))


def test_the_order_names_every_module_once() -> None:
    order = layer_order()
    assert len(order) == len(set(order)), (
        f"listed twice: {sorted(n for n in order if order.count(n) > 1)}"
    )
    assert sorted(order) == modules(), (
        f"not in the order: {sorted(set(modules()) - set(order))}; "
        f"listed but missing: {sorted(set(order) - set(modules()))}"
    )


def test_every_import_points_down() -> None:
    order = layer_order()
    rank = {name: i for i, name in enumerate(order)}
    upward: list[str] = []
    for name in order:
        for line, target in imported_modules(PACKAGE / f"{name}.py"):
            if target == name:
                continue
            if target not in rank or rank[target] >= rank[name]:
                upward.append(f"nspool/{name}.py:{line} imports {target}")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_child_programs_import_nothing_of_nspool() -> None:
    """A child program runs as ``python -I -S FILE``: it may name another
    child program (whose code it loads from beside itself), nothing else."""
    children = [m for m in modules() if CHILD_PROGRAM.search(m)]
    assert children, "no child program found: is the naming rule stale?"
    for name in children:
        others = [m for _, m in imported_modules(PACKAGE / f"{name}.py") if m not in children]
        assert others == [], name


def test_the_check_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """The reader is not fooled by where an import sits."""
    source = tmp_path / "sample.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .pool import Pool\n"
        "def f():\n    from . import workers\n    import nspool.nsset\n"
        "from nspool import Kind\n"
    )
    assert sorted(m for _, m in imported_modules(source)) == [
        "__init__",
        "nsset",
        "pool",
        "workers",
    ]
