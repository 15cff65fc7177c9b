"""The package reads top to bottom: its folders are its layers (imae/__init__.py names them), imports point down
only, and no two modules import each other (directly or round a longer loop), counting imports inside functions
too. The package root holds the engine and the edge and nothing else, so the book's glue stays in imae/companion/;
the campaign imports none of it. No module of the library runs git to change the repository; and no tracked file
names a path outside the repository, or how this repository's own GPU windows were obtained (that is no part of
the library: tools/ holds what a size-limited remote machine needs, in general terms)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "imae"

# The engine, at the package root: configuration, runs, checkpoints, training, the evaluation registry, weights.
ENGINE = {"imae.config", "imae.errors", "imae.paths", "imae.design", "imae.mixing", "imae.schedule", "imae.devices",
          "imae.distributed", "imae.losswindow", "imae.checkpoint", "imae.runs", "imae.parameters", "imae.controls",
          "imae.train", "imae.evaluations", "imae.pretrained", "imae.shipped"}
# The measurements, under the engine's modules and beside them (the metrics read the registry, the run files).
MEASUREMENTS = ("imae.models", "imae.data", "imae.metrics")
# The edge, also at the root: the command line, the timm export and the model cards it writes (which quote the
# book's measurements). It may import every layer; nothing else imports it.
EDGE = {"imae.__main__", "imae.cli", "imae.evaluate_cli", "imae.export", "imae.cards"}
SUBPACKAGES = {"models", "data", "metrics", "campaign", "companion"}
# The layers, bottom up: a module imports its own layer or one below it.
LAYERS = ("engine and measurements", "campaign", "companion", "edge")
# The notebooks' parameter table is the engine's (the metrics check alphas with it), but no business of the campaign.
NOT_FOR_THE_CAMPAIGN = ("imae.companion", "imae.parameters")


def layer(module: str) -> int:
    """The index in :data:`LAYERS` of a module of the package."""
    if module in EDGE:
        return 3
    if module == "imae.companion" or module.startswith("imae.companion."):
        return 2
    if module == "imae.campaign" or module.startswith("imae.campaign."):
        return 1
    if module in ENGINE or module.startswith(MEASUREMENTS):
        return 0
    raise AssertionError(f"{module} is in no layer. Fix: put it in imae/companion/ (the book's glue), a subpackage, "
                         f"or name it in ENGINE or EDGE of tests/test_structure.py")


def _modules() -> dict[str, Path]:
    """{dotted module name: file} of every module of the package (a package is named by its __init__)."""
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _targets(module: str, node: ast.Import | ast.ImportFrom, mods: dict[str, Path]) -> list[str]:
    """The dotted names an import statement of ``module`` refers to (``from . import x`` names module x when
    it is one, else the package)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    package = module if mods[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    if node.level:
        base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """{module: the package modules it imports}, module-level and function-level imports alike. Importing a
    parent package (``imae`` itself, or the package a module sits in) is not counted: Python runs the
    parent's ``__init__`` first anyway."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(module, node, mods):
                while target and target not in mods:  # `from .x import name`: the module x
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != module and target != "imae" and not module.startswith(target + "."):
                    edges[module].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm): every import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_and_relative_imports():
    edges = import_graph()
    assert "imae.train" in edges["imae.companion.experiments"]  # imported inside cached_run
    assert "imae.evaluate_cli" in edges["imae.cli"]  # inside build_parser
    assert "imae.metrics.features" in edges["imae.metrics.separability"]  # from .features import ...
    assert "imae.evaluations" in edges["imae.companion.stats"]  # from ..evaluations import ...


def test_the_package_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, (f"import cycles: {found}. Fix: move what the lower module needs further down (e.g. into "
                       f"imae/runs.py or imae/config.py) so the imports go one way")


def test_the_package_root_holds_the_engine_the_edge_and_the_subpackages():
    modules = {f"imae.{p.stem}" for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    stray = sorted(modules - ENGINE - EDGE)
    assert not stray, (f"modules at the package root that are neither the engine nor the edge: {stray}. Fix: the "
                       f"book's glue goes in imae/companion/; a new engine module is named in ENGINE here")
    assert not (ENGINE | EDGE) - modules, f"named but missing at the root: {sorted((ENGINE | EDGE) - modules)}"
    assert folders == SUBPACKAGES, f"subpackages {sorted(folders)}, expected {sorted(SUBPACKAGES)}"


def test_every_module_has_a_layer_and_imports_none_above_it():
    edges = import_graph()
    upward = sorted(f"{m} ({LAYERS[layer(m)]}) -> {t} ({LAYERS[layer(t)]})" for m, targets in edges.items()
                    for t in targets if m != "imae" and layer(t) > layer(m))
    assert not upward, (f"modules import a layer above their own: {upward}. Fix: move the needed function into a "
                        f"lower module")


def test_the_command_line_is_a_parent_and_its_evaluate_subcommand_a_child():
    edges = import_graph()
    assert "imae.evaluate_cli" in edges["imae.cli"] and "imae.cli" not in edges["imae.evaluate_cli"]


def test_the_campaign_imports_no_notebook_glue():
    edges = import_graph()
    glue = {f"{m} -> {t}" for m, targets in edges.items() if m.startswith("imae.campaign") for t in targets
            if t.startswith(NOT_FOR_THE_CAMPAIGN)}
    assert not glue, (f"the campaign imports the notebooks' glue: {sorted(glue)}. Fix: move what it needs into a "
                      f"lower module (the experiment design is imae/design.py, stored results load with imae.runs)")


# ----------------------------------------------------------------------------------------- git and paths
# Subcommands that only read the repository, and the modules allowed them: the execution stamp names the commit
# a chapter was computed at. Nothing in the library changes git's index, work tree or refs.
READ_ONLY_GIT = {("imae.companion.reproduce", "rev-parse"), ("imae.companion.reproduce", "status")}
GIT_GLOBAL_OPTIONS_WITH_VALUE = ("-C", "-c", "--git-dir", "--work-tree")


def _const(node):
    return node.value if isinstance(node, ast.Constant) else None


def git_commands(path: Path) -> list[str]:
    """The git subcommands a module's code would run: every list or tuple literal that starts with "git"
    (``["git", "-C", root, "status"]``; "?" where the subcommand is not a literal) and every string given to a
    subprocess or os call that starts with "git "; plus "edits info/exclude" wherever that file is named."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts and _const(node.elts[0]) == "git":
            rest, sub = node.elts[1:], "?"
            i = 0
            while i < len(rest):
                v = _const(rest[i])
                if v in GIT_GLOBAL_OPTIONS_WITH_VALUE:
                    i += 2
                elif isinstance(v, str) and v.startswith("-"):
                    i += 1
                else:
                    sub = v if isinstance(v, str) else "?"
                    break
            found.append(sub)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args \
                and node.func.attr in ("run", "call", "check_call", "check_output", "Popen", "system", "popen"):
            v = _const(node.args[0])
            if isinstance(v, str) and re.match(r"\s*git\s", v):
                found.append(v.split()[1] if len(v.split()) > 1 else "?")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "info/exclude" in node.value:
            found.append("edits info/exclude")
    return found


def test_the_git_finder_finds_commands(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('import subprocess\n'
                 'def a(repo, *args):\n'
                 '    subprocess.run(["git", "-C", str(repo), *args])\n'
                 '    subprocess.run(["git", "-C", str(repo), "rm", "--cached", "x"])\n'
                 '    subprocess.run("git reset -q HEAD", shell=True)\n'
                 '    p = repo / ".git" / "info/exclude"\n'
                 '    print("Fix: git checkout -- the file")\n')
    assert sorted(git_commands(f)) == ["?", "edits info/exclude", "reset", "rm"]  # not the message's checkout


def test_no_module_of_the_library_changes_the_repository_with_git():
    runs = {(m, sub) for m, path in _modules().items() for sub in git_commands(path)}
    bad = sorted(runs - READ_ONLY_GIT)
    assert not bad, (f"modules of imae run git: {bad}. The library trains, evaluates and stores; moving a checkout "
                     f"around is tools/'s (tools/slim_checkout.py)")


def tracked_text_files() -> list[Path]:
    """The repository's tracked text files (every file under it without git)."""
    if shutil.which("git") and (REPO / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        files = [REPO / f for f in out.decode().split("\0") if f]
    else:
        skip = {".git", ".venv", "_build", "runs", "data", "__pycache__"}
        files = [p for p in REPO.rglob("*") if p.is_file() and not skip & set(p.relative_to(REPO).parts)]
    out = []
    for p in files:
        if not p.is_file() or p.suffix in (".png", ".safetensors", ".npz", ".gz", ".pt", ".woff", ".woff2"):
            continue
        try:
            p.read_text()
        except UnicodeDecodeError:
            continue
        out.append(p)
    return out


def _checked(p: Path) -> bool:
    """Whether a tracked file is prose, code or configuration this check reads: not the tests (they may read
    ../shared/data when present), not third-party static files, and not the campaign's records of where its
    windows ran (manifest argv, window logs, evaluation metadata: machine-written, kept as they came)."""
    rel = p.relative_to(REPO).as_posix()
    return not (rel.startswith(("tests/", "book/_static/")) or re.match(r"campaign/[^/]+/(results|logs)/", rel)
                or re.fullmatch(r"campaign/[^/]+/manifest\.json", rel))


ABSOLUTE = re.compile(r"(?<![\w.~:/$-])/(?:work|tmp|home|opt|mnt|root|Users|scratch|srv|shared)/[\w-]|(?<![\w/])~/\w")
PARENT = re.compile(r"(?<![\w./-])(?:\.\./)+[\w.][\w./-]*")


def outside_paths(p: Path, text: str) -> list[str]:
    """Paths in ``text`` that lie outside the repository: absolute ones of a machine (/work/..., /tmp/x, ~/x),
    and ``../`` ones that leave the repository from its root and name nothing from the file's own folder."""
    found = [m.group(0) for m in ABSOLUTE.finditer(text)]
    for m in PARENT.finditer(text):
        rel = m.group(0).rstrip(".")
        from_root = (REPO / rel).resolve()
        if REPO.resolve() in from_root.parents or from_root == REPO.resolve():
            continue
        if (p.parent / rel).resolve().exists() and REPO.resolve() in (p.parent / rel).resolve().parents:
            continue  # a relative link inside the repository (book/x.md -> ../README.md)
        found.append(rel)
    return found


def test_no_tracked_file_names_a_path_outside_the_repository():
    bad = {}
    for p in tracked_text_files():
        if not _checked(p) or p.name == ".gitignore":  # .gitignore's /x patterns are repository paths
            continue
        text = "\n".join(line for line in p.read_text().splitlines() if not line.startswith("#!"))
        found = outside_paths(p, text)
        if found:
            bad[p.relative_to(REPO).as_posix()] = sorted(set(found))[:5]
    assert not bad, (f"tracked files name paths outside the repository: {bad}. Fix: name a repository path, an "
                     f"option (--data-root) or an environment variable (IMAE_DATA) instead")


def test_the_path_finder():
    text = "--data-root ../shared/data and /work/x and /tmp/toy, ~/data"
    assert outside_paths(REPO / "benchmarks" / "README.md", text) == ["/work/x", "/tmp/t", "~/d", "../shared/data"]
    assert outside_paths(REPO / "book" / "intro.md", "see ../README.md, /tmp/... and img/s, a/tmp/b") == []


# How this repository's own GPU windows were obtained: the words of that machinery, which no file may use.
WINDOW_MACHINERY = (".gpu/", "$OUT", "data-pack", "--travel", "travel light", "files_at", "give_back",
                    "device tool", "64 MiB", "8 files")


def test_nothing_names_how_this_repositorys_gpu_windows_were_obtained():
    bad = {}
    for p in tracked_text_files():
        if not _checked(p):
            continue
        text = p.read_text()
        hits = [w for w in WINDOW_MACHINERY if w in text]
        if hits:
            bad[p.relative_to(REPO).as_posix()] = hits
    assert not bad, (f"tracked files name the machinery of this repository's own GPU windows: {bad}. Fix: describe "
                     f"a window as any researcher runs one (campaign/README.md), or a size-limited machine in "
                     f"general terms (tools/README.md)")
