"""Which excon source files each stage of the study runs: an import walk from its entry points.

dvc.yaml's code deps and each KFP task's `code_version` both come from here, so neither is a hand
list that drifts (tests/pipelines/test_stage_code.py holds dvc.yaml to it). The walk reads the
source with `ast` and imports nothing it analyses, so it needs neither torch nor a GPU.

Rules of the walk:
- Entry modules (`excon/cli.py`, `excon/stages.py`) count only their module-level imports and the
  code of the stage's entry functions, plus the same-module (or other entry module) functions those
  refer to, transitively: cli.py imports every stage's code lazily inside its `cmd_*` functions,
  and counting them all would make every stage depend on everything.
- Every other module reached counts ALL its imports, module-level and inside functions
  (conservative: a function-level import may run).
- Importing `excon.a.b` runs `excon/__init__.py` and `excon/a/__init__.py` first: both count.

Run `python -m pipelines.stage_code [--stage S]` to print each stage's files and how dvc.yaml's
code deps differ from them.
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "excon"
CLI = "excon/cli.py"
STAGE_FUNCTIONS = "excon/stages.py"
ENTRY_MODULES = (CLI, STAGE_FUNCTIONS)


@dataclass(frozen=True)
class Stage:
    """What `excon <stage>` runs: a command in excon/cli.py and the excon/stages.py function it
    calls (the function the KFP component calls too)."""

    command: str
    function: str
    part: str | None = None  # `excon evaluate --part <part>`


# The stages of dvc.yaml (a test holds the names equal). cli.main is no entry point: it parses
# arguments (build_parser, no imports) and, only once a stage has failed, `_known_failures`
# imports train, tracking and storage to name the errors it prints in one line; counting it would
# make every stage depend on train.py for a change that cannot alter any stage's output.
# The three evaluate stages share their code: excon/evaluate/stage.py imports calibration,
# robustness, explanations and shift at module level, so every part runs all four modules.
STAGES: dict[str, Stage] = {
    "prepare": Stage("cmd_prepare", "prepare"),
    "pretrain": Stage("cmd_pretrain", "pretrain"),
    "probe": Stage("cmd_probe", "probe"),
    "evaluate_calibration": Stage("cmd_evaluate", "evaluate", "calibration"),
    "evaluate_robustness": Stage("cmd_evaluate", "evaluate", "robustness"),
    "evaluate_explanations": Stage("cmd_evaluate", "evaluate", "explanations"),
    "report": Stage("cmd_report", "report"),
    "register": Stage("cmd_register", "register"),
}


# --- module names <-> files ---------------------------------------------------------------


def module_name(path: str) -> str:
    """excon/a/b.py -> excon.a.b; excon/a/__init__.py -> excon.a."""
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(name: str, root: Path) -> str | None:
    """The file that defines module `name` under `root`, or None (not a module of ours)."""
    base = name.replace(".", "/")
    for rel in (f"{base}.py", f"{base}/__init__.py"):
        if (root / rel).is_file():
            return rel
    return None


def with_parents(name: str, root: Path) -> set[str]:
    """Files that importing `name` runs: every package __init__ on the way, then the module."""
    parts = name.split(".")
    found = (module_file(".".join(parts[: i + 1]), root) for i in range(len(parts)))
    return {f for f in found if f is not None}


@functools.lru_cache(maxsize=1024)
def _parse(source: bytes) -> ast.Module:  # keyed by content: an edited file is parsed anew
    return ast.parse(source)


def parse(rel: str, root: Path) -> ast.Module:
    return _parse((root / rel).read_bytes())


# --- imports of a piece of code -------------------------------------------------------------


def import_base(node: ast.ImportFrom, rel: str) -> str:
    """The absolute module a `from ... import` names, relative imports resolved against `rel`."""
    if not node.level:
        return node.module or ""
    package = module_name(rel).split(".")
    if not rel.endswith("__init__.py"):
        package = package[:-1]  # a module's package is its parent
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def imported_modules(node: ast.Import | ast.ImportFrom, rel: str, root: Path) -> set[str]:
    """Our modules one import statement loads: `from excon.x import y` loads excon.x, and
    excon.x.y too when y is a submodule."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = import_base(node, rel)
        names = [base, *(f"{base}.{a.name}" for a in node.names if a.name != "*")]
    ours = [n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")]
    return {n for n in ours if module_file(n, root) is not None}


def imports_in(nodes: Iterable[ast.AST], rel: str, root: Path) -> set[str]:
    """Files loaded by every import statement among `nodes` (with their packages' __init__)."""
    files: set[str] = set()
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in imported_modules(node, rel, root):
                files |= with_parents(name, root)
    return files


def module_level(tree: ast.Module) -> Iterator[ast.AST]:
    """The statements that run on import: everything outside function bodies (class bodies and
    if/try blocks do run)."""
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


# --- the walk --------------------------------------------------------------------------------

# A work item: ("full", file) counts every import of the file; ("entry", file) only its
# module-level ones (an entry module reached from entry code); ("func", file, name) one entry
# function, its imports and the entry-module functions it refers to.
Item = tuple[str, ...]


def top_level_defs(tree: ast.Module) -> dict[str, ast.AST]:
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {n.name: n for n in tree.body if isinstance(n, kinds)}


def entry_bindings(nodes: Iterable[ast.AST], rel: str, root: Path) -> dict[str, Item]:
    """Names bound by imports among `nodes` to an entry module ("entry", file) or to a function
    of one ("func", file, name), so that `stages.pretrain(...)` is followed into stages.py."""
    bound: dict[str, Item] = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                target = module_file(a.name, root)
                if a.asname and target in ENTRY_MODULES:
                    bound[a.asname] = ("entry", target)
        elif isinstance(node, ast.ImportFrom):
            base = import_base(node, rel)
            for a in node.names:
                sub = module_file(f"{base}.{a.name}", root)
                owner = module_file(base, root)
                if sub in ENTRY_MODULES:
                    bound[a.asname or a.name] = ("entry", sub)
                elif owner in ENTRY_MODULES:
                    bound[a.asname or a.name] = ("func", owner, a.name)
    return bound


def referenced(body: list[ast.AST], rel: str, tree: ast.Module, root: Path) -> set[Item]:
    """Entry-module functions the code in `body` refers to (called or passed on)."""
    defs = top_level_defs(tree)
    bound = entry_bindings([*module_level(tree), *body], rel, root)
    found: set[Item] = set()
    for node in body:
        if isinstance(node, ast.Name) and node.id in defs:
            found.add(("func", rel, node.id))
        elif isinstance(node, ast.Name) and bound.get(node.id, ("",))[0] == "func":
            found.add(bound[node.id])
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            target = bound.get(node.value.id)
            if target is not None and target[0] == "entry":
                found.add(("func", target[1], node.attr))
    return found


def _loads(nodes: Iterable[ast.AST], rel: str, root: Path, from_entry: bool) -> set[Item]:
    """Work items for what `nodes` import: an entry module imported from entry code is walked
    as an entry module, anything else in full."""
    files = imports_in(nodes, rel, root)
    return {("entry" if from_entry and f in ENTRY_MODULES else "full", f) for f in files}


def _step(item: Item, root: Path) -> set[Item]:
    """The work items one item leads to."""
    kind, rel = item[0], item[1]
    tree = parse(rel, root)
    parents = {("full", f) for f in with_parents(module_name(rel), root) if f != rel}
    if kind == "full":
        return parents | _loads(ast.walk(tree), rel, root, from_entry=False)
    if kind == "entry":
        return parents | _loads(module_level(tree), rel, root, from_entry=True)
    defs = top_level_defs(tree)
    if item[2] not in defs:  # `mod.CONSTANT` or a class attribute: no code to follow
        return {("entry", rel)}
    body = list(ast.walk(defs[item[2]]))
    found = _loads(body, rel, root, from_entry=True) | referenced(body, rel, tree, root)
    return found | {("entry", rel)}


def walk(seeds: Iterable[Item], root: Path) -> dict[Item, Item | None]:
    """Every work item the seeds lead to, each with the item that first led to it (None for a
    seed): its files are the stage's, and the links say why a file is there."""
    todo: deque[tuple[Item, Item | None]] = deque((seed, None) for seed in seeds)
    via: dict[Item, Item | None] = {}
    while todo:
        item, parent = todo.popleft()  # breadth-first: the recorded chain is a shortest one
        if item not in via:
            via[item] = parent
            todo.extend((nxt, item) for nxt in sorted(_step(item, root)) if nxt not in via)
    return via


def entry_points(stage: str) -> list[Item]:
    spec = STAGES[stage]
    return [("func", CLI, spec.command), ("func", STAGE_FUNCTIONS, spec.function)]


def stage_files(stage: str, root: Path = ROOT) -> list[str]:
    """Repo-relative paths of every excon/**.py file `stage` executes, sorted."""
    root = Path(root)
    for _, rel, name in entry_points(stage):
        if name not in top_level_defs(parse(rel, root)):
            raise LookupError(
                f"{stage}: {rel} has no function {name}; update STAGES in pipelines/stage_code.py"
            )
    return sorted({item[1] for item in walk(entry_points(stage), root)})


def code_version(stage: str, root: Path = ROOT) -> str:
    """sha256 of (path, bytes) of stage_files(stage): changes exactly when the stage's code does."""
    root = Path(root)
    h = hashlib.sha256()
    for rel in stage_files(stage, root):
        data = (root / rel).read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())  # length-prefixed: no two sets hash alike
        h.update(data)
    return h.hexdigest()


def why(stage: str, rel: str, root: Path = ROOT) -> list[str]:
    """How `stage` reaches file `rel`: the chain of entry functions and modules, entry first
    ([] when it does not)."""
    via = walk(entry_points(stage), Path(root))
    item = next((i for i in sorted(via, key=len) if i[1] == rel), None)
    chain: list[str] = []
    while item is not None:
        label = {"func": f"{item[1]}:{item[-1]}", "entry": f"{item[1]} (module level)"}
        chain.append(label.get(item[0], item[1]))
        item = via[item]
    return chain[::-1]


# --- dvc.yaml --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepsDiff:
    missing: list[str]  # files the stage runs that no listed dep covers
    extra: list[str]  # listed files (or .py files under a listed folder) the stage does not run


def dvc_code_deps(root: Path = ROOT) -> dict[str, list[str]]:
    """stage -> the excon/ deps dvc.yaml lists for it (a foreach stage's from its `do`)."""
    import yaml

    doc = yaml.safe_load((Path(root) / "dvc.yaml").read_text())
    found: dict[str, list[str]] = {}
    for name, stage in doc["stages"].items():
        deps = stage.get("do", stage).get("deps", [])
        paths = [d if isinstance(d, str) else next(iter(d)) for d in deps]
        found[name] = [p.rstrip("/") for p in paths if p.startswith(PACKAGE + "/")]
    return found


def covered(dep: str, root: Path) -> set[str]:
    """The source files one dep stands for: a folder covers every .py under it; a path that does
    not exist stands for itself (so that a stale dep shows up as extra)."""
    path = Path(root) / dep
    if path.is_dir():
        return {p.relative_to(root).as_posix() for p in path.rglob("*.py")}
    return {dep}


def compare_deps(listed: Iterable[str], files: Iterable[str], root: Path = ROOT) -> DepsDiff:
    """How a stage's listed code deps differ from the files it runs."""
    have = set().union(*(covered(d, Path(root)) for d in listed))
    need = set(files)
    return DepsDiff(missing=sorted(need - have), extra=sorted(have - need))


def base_stage(name: str) -> str:
    """A dvc.yaml stage group's stage: pretrain_<method> (one group per method) -> pretrain."""
    from pipelines.dag import METHODS

    head, _, tail = name.rpartition("_")
    return head if name not in STAGES and tail in METHODS else name


def check_dvc(root: Path = ROOT) -> dict[str, DepsDiff]:
    """Every dvc.yaml stage group's diff against its stage's import walk."""
    root = Path(root)
    return {
        name: compare_deps(listed, stage_files(base_stage(name), root), root)
        for name, listed in dvc_code_deps(root).items()
    }


# --- command line ----------------------------------------------------------------------------


def _print_stage(name: str, diff: DepsDiff | None, files_too: bool) -> None:
    if files_too:
        print(f"{name} (code_version {code_version(name)[:12]}):")
        print("\n".join(f"  - {f}" for f in stage_files(name)))
    if diff is None:
        print(f"  {name}: not a dvc.yaml stage")
        return
    for label, paths in (("dvc.yaml misses", diff.missing), ("dvc.yaml over-lists", diff.extra)):
        if paths:
            print(f"  {name}: {label}: {' '.join(paths)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.stage_code",
        description="Print the excon files each stage runs (an import walk from its entry "
        "points) and how dvc.yaml's code deps differ from them.",
    )
    parser.add_argument("--stage", choices=list(STAGES), help="only this stage")
    parser.add_argument("--why", metavar="FILE", help="with --stage: how the stage reaches FILE")
    parser.add_argument(
        "--check", action="store_true", help="print only the differences; exit 1 if any"
    )
    args = parser.parse_args(argv)
    if args.why:
        if not args.stage:
            parser.error("--why needs --stage")
        chain = why(args.stage, args.why)
        print(" -> ".join(chain) if chain else f"{args.stage} does not run {args.why}")
        return 0
    diffs: dict[str, DepsDiff] = {}
    for group, diff in check_dvc().items():  # per-method groups (pretrain_<m>) merged
        seen = diffs.get(base_stage(group), DepsDiff([], []))
        diffs[base_stage(group)] = DepsDiff(
            sorted({*seen.missing, *diff.missing}), sorted({*seen.extra, *diff.extra})
        )
    for name in [args.stage] if args.stage else list(STAGES):
        _print_stage(name, diffs.get(name), files_too=not args.check)
    shown = {n: d for n, d in diffs.items() if not args.stage or n == args.stage}
    differs = any(d.missing or d.extra for d in shown.values())
    return int(args.check and differs)


if __name__ == "__main__":
    sys.exit(main())
