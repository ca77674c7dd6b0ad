"""The layer rules of the README's Development section, checked by reading the imports (ast, nothing is imported).

Every ``import`` and ``from ... import`` of amp_hf/, export/ and hub_cards/ counts, also those inside functions
(a lazy import is still a dependency). ``python tests/test_layers.py`` prints the figures.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("amp_hf", "export", "hub_cards")

# Stage -> its modules. Stages hand over files: none imports another (a stage's config module is part of it).
STAGES: dict[str, tuple[str, ...]] = {
    "pruning": ("amp_hf.pruning", "amp_hf.pruning_config"),
    "distill": ("amp_hf.distill",),
    "export": ("export",),
    "importing": ("amp_hf.importing",),
    "reference": ("amp_hf.reference",),
}
# Lowest first; a module may import its own layer or below. A name matches itself and everything under it,
# except the package face ``amp_hf`` (its __init__), which matches only itself.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("models", ("amp_hf.models",)),
    ("errors/_version", ("amp_hf.errors", "amp_hf._version", "amp_hf._lazy")),
    ("files", ("amp_hf.files",)),
    ("families", ("amp_hf.families",)),
    ("core", ("amp_hf", "amp_hf.plan", "amp_hf.slicing", "amp_hf.accounting", "amp_hf.checkpoint", "amp_hf.loading",
              "amp_hf.data_config", "amp_hf.data", "amp_hf.layer_stack", "amp_hf.distributed")),
    ("selection/evaluation", ("amp_hf.selection", "amp_hf.evaluation")),
    ("reconstruct/hub_cards", ("amp_hf.reconstruct", "hub_cards")),
    ("stages", tuple(module for modules in STAGES.values() for module in modules)),
    ("demo", ("amp_hf.demo",)),
    ("cli", ("amp_hf.cli", "amp_hf.__main__")),
)
CLI = "amp_hf.cli"
ENTRY_POINTS = ("amp_hf.__main__",)  # `python -m amp_hf` runs the CLI


def discover(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """Module name -> file, for every .py file of ``packages`` under ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies in (None: a third-party module)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def imports(modules: dict[str, Path]) -> dict[str, list[tuple[str, int]]]:
    """Module -> [(imported module of ``modules``, line)], one entry per imported module per statement."""
    graph: dict[str, list[tuple[str, int]]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in dict.fromkeys(_owner(t, modules) for t in targets):
                if target is not None and target != module:
                    found.append((target, node.lineno))
        graph[module] = found
    return graph


def layer_of(module: str) -> int | None:
    """Index in ``LAYERS`` (None: the module is in no layer)."""
    best, best_length = None, -1
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            matches = module == name or (name != "amp_hf" and module.startswith(f"{name}."))
            if matches and len(name) > best_length:
                best, best_length = index, len(name)
    return best


def stage_of(module: str) -> str | None:
    return next((stage for stage, names in STAGES.items()
                 if any(module == name or module.startswith(f"{name}.") for name in names)), None)


def circles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target, _ in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for node in graph:
        if node not in index:
            visit(node)
    return found


def upward(graph, layer=layer_of) -> list[str]:
    """Imports into a higher layer, and imports between two stages."""
    found = []
    for module, targets in graph.items():
        for target, line in targets:
            if layer(module) is None or layer(target) is None:
                continue  # reported by test_every_module_has_a_layer
            if layer(target) > layer(module):
                found.append(f"{module}:{line} imports {target} ({LAYERS[layer(target)][0]} is above "
                             f"{LAYERS[layer(module)][0]})")
            elif stage_of(module) and stage_of(target) and stage_of(module) != stage_of(target):
                found.append(f"{module}:{line} imports {target} (stages hand over files, they do not import each other)")
    return found


PARSER_CALLS = ("add_parser", "add_subparsers", "add_argument", "add_argument_group", "set_defaults", "parse_args",
                "parse_known_args")


def argparse_users(modules: dict[str, Path]) -> list[str]:
    """Modules outside the CLI package that import argparse or build a parser (``add_argument`` & co.)."""
    found = []
    for module, path in modules.items():
        if module == CLI or module.startswith(f"{CLI}."):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
            parser_call = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                           and node.func.attr in PARSER_CALLS)
            if parser_call or any(name == "argparse" or (name or "").startswith("argparse.") for name in names):
                found.append(f"{module}:{node.lineno}")
    return found


def figures(modules=None) -> dict:
    modules = discover() if modules is None else modules
    graph = imports(modules)
    return {
        "modules": len(modules),
        "without a layer": [module for module in modules if layer_of(module) is None],
        "imports": sum(len(targets) for targets in graph.values()),
        "circles": circles(graph),
        "upward": upward(graph),
        "argparse outside cli": argparse_users(modules),
    }


# -- the rules ------------------------------------------------------------------------------------------------

MODULES = discover()
GRAPH = imports(MODULES)


def test_every_module_has_a_layer():
    # a new module is placed in LAYERS here and in the README's Development map
    assert [module for module in MODULES if layer_of(module) is None] == []


def test_every_package_folder_has_an_init():
    # setup.cfg's `packages = find:` skips a folder without one, so it would be missing from the wheel
    folders = {path.parent for path in MODULES.values()}
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file()) == []


def test_no_import_circle():
    assert circles(GRAPH) == []


def test_imports_only_go_down_and_stages_do_not_import_each_other():
    assert upward(GRAPH) == []


def test_argparse_only_in_the_cli_package():
    assert argparse_users(MODULES) == []


def test_nothing_imports_the_cli():
    users = [f"{module}:{line}" for module, targets in GRAPH.items() for target, line in targets
             if (target == CLI or target.startswith(f"{CLI}.")) and not module.startswith(CLI)
             and module not in ENTRY_POINTS]
    assert users == []


def test_the_rules_catch_a_circle_and_an_upward_import(tmp_path):
    # the checks themselves, on a made-up tree: files importing families, and families importing it back
    (tmp_path / "amp_hf" / "files").mkdir(parents=True)
    (tmp_path / "amp_hf" / "families").mkdir()
    (tmp_path / "amp_hf" / "__init__.py").write_text("")
    (tmp_path / "amp_hf" / "files" / "__init__.py").write_text("from ..families import registry\n")
    (tmp_path / "amp_hf" / "families" / "__init__.py").write_text("")
    (tmp_path / "amp_hf" / "families" / "registry.py").write_text(
        "import argparse\nfrom amp_hf import files\n\ndef register(subparsers):\n    subparsers.add_parser('x')\n")
    modules = discover(tmp_path, ("amp_hf",))
    graph = imports(modules)
    assert circles(graph) == [["amp_hf.families.registry", "amp_hf.files"]]
    assert [entry.split(" ")[0] for entry in upward(graph)] == ["amp_hf.files:1"]
    assert argparse_users(modules) == ["amp_hf.families.registry:1", "amp_hf.families.registry:5"]


if __name__ == "__main__":
    result = figures()
    print(f"{result['modules']} modules, {result['imports']} imports, {len(result['circles'])} circles, "
          f"{len(result['upward'])} upward imports, {len(result['argparse outside cli'])} argparse uses outside cli/")
    for key in ("without a layer", "circles", "upward", "argparse outside cli"):
        for entry in result[key]:
            print(f"  {key}: {entry}")
