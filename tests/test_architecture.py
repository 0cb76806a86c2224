"""The layout rules of docs/ARCHITECTURE.md, checked over the source's AST: no import cycle (imports
inside functions count; ``if TYPE_CHECKING:`` blocks do not), no package module past the size
limit, the leak-safe TrainView built in one place."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "baselines")
MAX_LINES = 420  # "about 400"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports anywhere (module level or inside functions)."""
    name = module_name(path)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()

    def resolve(base: str) -> str | None:
        while base and base not in modules:
            base = base.rpartition(".")[0]
        return base or None

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    target = resolve(alias.name)
                    if target:
                        out.add(target)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    pkg = name if is_pkg else name.rpartition(".")[0]
                    for _ in range(child.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{child.module}" if child.module else pkg
                else:
                    base = child.module or ""
                for alias in child.names:
                    target = resolve(f"{base}.{alias.name}") if f"{base}.{alias.name}" in modules \
                        else resolve(base)
                    if target:
                        out.add(target)
            visit(child)

    visit(tree)
    out.discard(name)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = dfs(start)
            if found:
                return found
    return None


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    graph = import_graph()
    assert "bench.registry" in graph and graph["bench.runner"], "the graph was not built"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_past_the_size_limit():
    long = {name: n for name, path in package_modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"


def test_train_view_is_built_in_one_place():
    """The leak guard (drop gt_* columns, fitting clicks only) is `bench.retrieval.leak_safe_view`."""
    builders = []
    for name, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id",
                                                      getattr(node.func, "attr", None)) == "TrainView":
                builders.append(name)
    assert builders == ["bench.retrieval"], builders


# ------------------------------------------------------------------- module-level mutable caches

#: Calls that build a mutable container.
MUTABLE_FACTORIES = {"dict", "list", "set", "OrderedDict", "defaultdict", "deque", "Counter",
                     "WeakValueDictionary", "WeakKeyDictionary", "LRUCache"}
#: Methods that change a container in place.
MUTATORS = {"append", "extend", "insert", "add", "update", "setdefault", "pop", "popitem",
            "clear", "remove", "discard", "move_to_end", "appendleft", "put"}
#: Module-level mutable state that is not a cache of work, with the reason.
ALLOWED_MODULE_STATE = {
    ("bench.registry", "_REGISTRY"): "the retriever registry, filled by @register at import",
    ("bench.data.synthetic_render", "_warned"): "font paths already warned about (warn once "
                                                "per process), no work is reused",
    ("bench.registry", "_PLUGIN_DIRS_DONE"): "plugin folders already imported (their modules "
                                             "are in sys.modules; importing twice re-registers)",
    ("bench.secrets", "_secrets"): "the secrets seen this process, so every output path masks "
                                   "them (process-wide by design: a log line can come from "
                                   "anywhere)",
    ("bench.features.ocr_paddle", "_POOL"): "idle PaddleOCR engines by graph, one per thread "
                                           "that used one (bench/features is another issue's; "
                                           "to move into the run context)",
}


def _is_mutable_value(node: ast.AST | None) -> bool:
    if isinstance(node, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)):
        return True
    if isinstance(node, ast.Call):
        func = node.func
        name = getattr(func, "id", getattr(func, "attr", None))
        return name in MUTABLE_FACTORIES
    return False


def module_caches(tree: ast.Module) -> dict[str, str]:
    """Module-level names holding a mutable container that the module mutates, or named like a
    cache (``..._CACHE``, ``..._CACHES``): name -> why it is flagged."""
    containers: dict[str, ast.AST | None] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Name):
                containers[t.id] = node.value
    flagged: dict[str, str] = {}
    for name, value in containers.items():
        if name.upper().endswith(("CACHE", "CACHES")) and not (
                isinstance(value, ast.Constant) and not isinstance(value.value, (list, dict))):
            flagged[name] = "named like a cache"
    mutable = {n for n, v in containers.items() if _is_mutable_value(v)}
    for node in ast.walk(tree):
        target = None
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            for t in getattr(node, "targets", None) or [getattr(node, "target", None)]:
                if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
                    target = t.value.id
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in MUTATORS and isinstance(node.func.value, ast.Name):
            target = node.func.value.id
        elif isinstance(node, ast.Global):
            for n in node.names:
                if n in mutable:
                    flagged[n] = "rebound through `global`"
        if target in mutable:
            flagged[target] = "a module-level container mutated at run time"
    return flagged


def test_the_cache_finder_flags_planted_caches():
    tree = ast.parse("A = {}\nB = []\nC = (1, 2)\nD_CACHE = OrderedDict()\nE = {'x': 1}\n"
                     "def f(k):\n    A[k] = 1\n    B.append(k)\n    return E['x']\n")
    assert module_caches(tree) == {"A": "a module-level container mutated at run time",
                                   "B": "a module-level container mutated at run time",
                                   "D_CACHE": "named like a cache"}


def test_no_module_level_mutable_cache():
    """Work shared between retrievers lives in the run's context (bench.run_context.RunContext,
    reached through TrainView.context) and is dropped when the run ends; module globals would
    couple retrievers, runs and tests (issue 25)."""
    found = {}
    for name, path in package_modules().items():
        for var, why in module_caches(ast.parse(path.read_text(encoding="utf-8"))).items():
            if (name, var) not in ALLOWED_MODULE_STATE:
                found[f"{name}.{var}"] = why
    assert not found, f"module-level mutable caches (use bench.run_context.RunContext): {found}"
