"""The layout is the architecture: imports point one way, from the CLI down to the shared leaves.

    cli  ->  loop  ->  run  ->  sandbox        guard (alone: program, atomic, record.flows)
      \\________\\_______\\____->  record (runs/ layout, signed metrics, identity, flow table)
                                 ->  program, ledger, gitops, atomic, digest (shared leaves)

Parsed with ast from the source (every import, including the ones inside functions), so a
lazy import cannot hide a wrong direction. A failure names the file, the line and the rule.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "autoresearch"
LEAVES = {"program", "ledger", "gitops", "atomic", "digest", "hostenv", "editable", "fsclean", "frontdoor", "registry"}
STAGES = {"guard", "sandbox", "run", "loop", "cli"}
# the record every stage shares (runs/ layout, signed metrics, identity, queue entries, flow table)
RECORD = "record"
# what runs in a sandbox beside agent code (model servers, the eval script's client, the wire format)
INSIDE = "inside"

# What each part of the package may import from the package (besides itself).
ALLOWED: dict[str, set[str]] = {
    "sandbox": {"registry"},                           # runs anything; trusts nothing of ours
    "guard": {"program", "atomic", "editable", "record.flows"},  # the hook's hot path: small and self-contained
    "run": {"sandbox", RECORD, INSIDE} | LEAVES,
    "loop": {"run", RECORD} | LEAVES,
    "cli": {"guard", "sandbox", "run", "loop", RECORD} | LEAVES,
    RECORD: LEAVES,                                    # a leaf: imports no stage
    INSIDE: set(),                                     # see MODEL_SERVER: only the wire format
    "program": {"hostenv", "editable", "registry"},
    "hostenv": set(),
    "editable": set(),
    "atomic": set(),
    "digest": set(),
    "fsclean": set(),
    "frontdoor": set(),
    "registry": set(),                                 # names of backends and executors: import-free
    "gitops": set(),
    "ledger": {"program", "gitops", "atomic", "digest"},
    "__init__": set(),
    "__main__": {"cli"},
}
# inside/ runs in a sandbox with agent code (or a human's eval script): it may import nothing of ours
# but the wire format (stdlib, numpy, torch otherwise).
MODEL_SERVER = {"inside.model_server": {"inside.protocol"}, "inside.protocol": set(),
                "inside.array_server": {"inside.protocol", "inside.model_server"},
                # the evaluator split's client runs in the eval script's sandbox, without the project
                "inside.evalclient": {"inside.protocol"}, "inside": set()}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# module (dotted, under autoresearch) -> why it may be longer than MAX_MODULE_LINES
LONG_MODULES: dict[str, str] = {}
# "module:function" -> why it may be longer than MAX_FUNCTION_LINES
LONG_FUNCTIONS: dict[str, str] = {}
MAX_PARAMS = 6                     # a function another module calls takes at most this many parameters
# "module:function" called from another module with more (to be made typed seams: a dataclass or
# pydantic model of the stage's inputs, as runner._run_locked's Prepared + Asked, loop.record's Deciding). Shrink, never grow.
MANY_PARAMS: set[str] = set()     # every seam is typed now: keep it empty


def modules() -> list[tuple[str, Path]]:
    out = []
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out.append((".".join(parts), p))
    return out


@functools.lru_cache(maxsize=None)
def parsed(path: Path) -> ast.Module:
    """The module's syntax tree, parsed once per session (every test here walks all of them)."""
    return ast.parse(path.read_text(), str(path))


@functools.lru_cache(maxsize=None)
def imports_of(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module under autoresearch, dotted) for every import of the package."""
    tree = parsed(path)
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "autoresearch" or a.name.startswith("autoresearch."):
                    found.append((node.lineno, a.name.removeprefix("autoresearch").lstrip(".")))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and (node.module == "autoresearch" or node.module.startswith("autoresearch.")):
                mod = node.module.removeprefix("autoresearch").lstrip(".")
            else:
                continue
            for a in node.names:                        # from pkg import mod: the module, not pkg
                sub = ".".join(filter(None, [mod, a.name]))
                is_mod = not node.module or (PKG / sub.replace(".", "/")).with_suffix(".py").is_file() \
                    or (PKG / sub.replace(".", "/") / "__init__.py").is_file()
                found.append((node.lineno, sub if is_mod else mod))
    return found


def part(dotted: str) -> str:
    return dotted.split(".")[0] if dotted else "__init__"


def test_the_stage_folders_exist_and_hold_the_code():
    top = {p.stem for p in PKG.glob("*.py")}
    assert top <= LEAVES | {"__init__", "__main__"}, f"modules outside a stage folder: {sorted(top - LEAVES)}"
    for stage in STAGES:
        assert (PKG / stage / "__init__.py").is_file(), stage


@pytest.mark.parametrize("name,path", modules(), ids=[m for m, _ in modules()])
def test_imports_point_one_way(name: str, path: Path):
    mine = part(name)
    bad = []
    for line, target in imports_of(name, path):
        theirs = part(target)
        if target in {"", "__version__"}:             # the package root: its version
            continue
        if name in MODEL_SERVER:
            if target not in MODEL_SERVER[name]:
                bad.append(f"line {line}: {target} (the model server's process imports only the protocol)")
            continue
        if theirs != mine and theirs not in ALLOWED[mine] and target not in ALLOWED[mine]:
            bad.append(f"line {line}: {target} ({mine} may import only {sorted(ALLOWED[mine]) or 'nothing'})")
    assert not bad, f"autoresearch/{path.relative_to(PKG)} imports the wrong way:\n  " + "\n  ".join(bad)


def test_no_import_cycles_between_modules():
    """Every import, at any level (inside functions and `if TYPE_CHECKING:` too): a lazy import
    hides a circle from start-up, not from the reader; two modules that need each other are one
    idea in two files, or a third module they should both import."""
    graph: dict[str, set[str]] = {}
    names = {m for m, _ in modules()}
    for name, path in modules():
        graph[name] = {t for _, t in imports_of(name, path) if t in names and t != name}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        seen[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if seen.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in seen:
                visit(m)
        stack.pop()
        seen[n] = 2

    for n in sorted(graph):
        if n not in seen:
            visit(n)


def test_every_module_inside_is_checked():
    """A new module under inside/ is added to MODEL_SERVER with what it may import, and uses nothing
    that the sandbox's interpreter may lack."""
    import sys
    assert {m for m, _ in modules() if part(m) == INSIDE} == set(MODEL_SERVER)
    third = set()
    for name, path in modules():
        if part(name) == INSIDE:
            for node in ast.walk(parsed(path)):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
                third |= {f"{name}: {m}" for m in mods if m and m.split(".")[0] not in
                          sys.stdlib_module_names | {"numpy", "torch", "autoresearch"}}
    assert not third, f"inside/ may use only the stdlib, numpy and torch: {sorted(third)}"


def test_nothing_imports_the_cli():
    users = [(name, line) for name, path in modules() if part(name) not in {"cli", "__main__"}
             for line, t in imports_of(name, path) if part(t) == "cli"]
    assert not users, users


def test_hooks_are_thin_entries():
    """hooks/*.py reach the package only through the guard or the loop."""
    for p in sorted((ROOT / "hooks").glob("*.py")):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for m in mods:
                if m.startswith("autoresearch"):
                    assert m in {"autoresearch", "autoresearch.guard", "autoresearch.loop"}, (p.name, m)


def test_module_and_function_sizes():
    too_long, long_funcs = [], []
    for name, path in modules():
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_MODULE_LINES and name not in LONG_MODULES:
            too_long.append(f"{name}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                key = f"{name}:{node.name}"
                if length > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS:
                    long_funcs.append(f"{key}: {length} lines")
    assert not too_long and not long_funcs, (
        f"over {MAX_MODULE_LINES} lines per module / {MAX_FUNCTION_LINES} per function "
        f"(split it, or add it with a reason to LONG_MODULES / LONG_FUNCTIONS):\n  "
        + "\n  ".join(too_long + long_funcs))


def test_no_name_is_used_that_is_not_defined():
    """pyflakes over the package, the hooks and the scripts: an undefined name (a merge that dropped
    an import) fails only when its line runs -- in a Stop hook, that is every stop of a night."""
    from pyflakes.api import checkPath
    from pyflakes.reporter import Reporter
    import io
    out, err = io.StringIO(), io.StringIO()
    files = sorted(PKG.rglob("*.py")) + sorted((ROOT / "hooks").glob("*.py")) + \
        [ROOT / "scripts" / "lock.py", ROOT / "prepare.py", ROOT / "train.py"]
    for f in files:
        checkPath(str(f), Reporter(out, err))
    bad = [ln for ln in out.getvalue().splitlines() if "undefined name" in ln or "syntax" in ln.lower()]
    assert not bad and not err.getvalue(), "\n".join(bad) + err.getvalue()


@pytest.mark.parametrize("package", [RECORD, "run"])
def test_record_and_run_are_reached_through_their_front_doors(package: str):
    """Other parts import `autoresearch.record` / `autoresearch.run`, not their modules (the guard:
    only record.flows, which its hot path loads alone). Each front door imports nothing but the lazy
    loader at import time, so the guard and `./run.sh` pay only for what they use, and every name
    it lends resolves."""
    import importlib
    door = importlib.import_module(f"autoresearch.{package}")
    side = [f"{name} line {line}: {t}" for name, path in modules() if part(name) != package
            for line, t in imports_of(name, path) if t.startswith(package + ".") and t != "record.flows"]
    assert not side, f"import these from autoresearch.{package} instead:\n  " + "\n  ".join(side)
    init = PKG / package / "__init__.py"
    assert {t for _, t in imports_of(package, init)} <= {"frontdoor"}, "the front door loads its rooms lazily"
    assert all(getattr(door, n) is not None for n in door.__all__)


def test_backend_executor_and_mode_names_appear_only_in_the_registry():
    """A decision on a backend's, an executor's or an evaluation mode's name (a comparison, a
    Literal, a CLI choice) is made through autoresearch/registry.py, so adding one is one module
    and one line (one Evaluator) there."""
    from autoresearch.registry import BACKENDS, EVALUATORS, EXECUTORS, MODES
    names = set(BACKENDS) | set(EXECUTORS) | set(MODES)
    about = ("backend", "sandbox", "requested", "kind", "executor", ".name", "mode")
    assert {e.mode for e in EVALUATORS.values()} == set(MODES)
    found = []
    for name, path in modules():
        if name == "registry":
            continue
        for node in ast.walk(parsed(path)):
            consts = []
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(w in ast.unparse(x) for x in sides if not isinstance(x, ast.Constant) for w in about):
                    consts = [c for x in sides for c in ast.walk(x) if isinstance(c, ast.Constant)]
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("Literal"):
                consts = [c for c in ast.walk(node.slice) if isinstance(c, ast.Constant)]
                if sum(c.value in names for c in consts) < 2:     # gpus: "all" | "none" is not a backend
                    consts = []
            elif isinstance(node, ast.keyword) and node.arg == "choices":
                consts = [c for c in ast.walk(node.value) if isinstance(c, ast.Constant)]
            found += [f"{name} line {c.lineno}: {c.value!r}" for c in consts if c.value in names]
    assert not found, "decide through autoresearch.registry:\n  " + "\n  ".join(found)


def test_functions_called_across_modules_take_few_parameters():
    """A stage's seam is a typed model, not a long argument list: a function that another module
    imports takes at most MAX_PARAMS parameters (MANY_PARAMS: the ones still to convert)."""
    wide: dict[str, int] = {}
    for name, path in modules():
        for node in parsed(path).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                if (n := len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)) > MAX_PARAMS:
                    wide[f"{name}:{node.name}"] = n
    import importlib
    doors = {d: importlib.import_module(f"autoresearch.{d}")._EXPORTS for d in (RECORD, "run")}
    names = {m for m, _ in modules()}
    crossing = set()
    for name, path in modules():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        tree = parsed(path)
        aliases = {}                                    # from . import record: record -> loop.record
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or node.level):
                base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                mod = ".".join([*base, *([node.module] if node.module else [])]) if node.level \
                    else (node.module or "").removeprefix("autoresearch.")
                for a in node.names:
                    if f"{mod}.{a.name}".strip(".") in names:
                        aliases[a.asname or a.name] = f"{mod}.{a.name}".strip(".")
                    elif mod in doors and a.name in doors[mod]:
                        crossing.add(f"{mod}.{doors[mod][a.name][0]}:{doors[mod][a.name][1]}")
                    elif mod != name:
                        crossing.add(f"{mod}:{a.name}")
        crossing |= {f"{aliases[n.value.id]}:{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                     and isinstance(n.value, ast.Name) and n.value.id in aliases and aliases[n.value.id] != name}
    bad = sorted(f"{k} ({wide[k]} parameters)" for k in wide if k in crossing and k not in MANY_PARAMS)
    assert not bad, f"more than {MAX_PARAMS} parameters across a module boundary (pass a typed model):\n  " + \
        "\n  ".join(bad)
    stale = sorted(MANY_PARAMS - (set(wide) & crossing))
    assert not stale, f"no longer wide or no longer shared: remove from MANY_PARAMS: {stale}"
