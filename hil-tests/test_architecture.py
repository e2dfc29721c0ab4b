"""The architecture's invariants, checked on the source tree and the built
binary (docs/ARCHITECTURE.md):

- no import cycle among the modules of any crate (siblings under one parent);
- the crates depend on each other in one direction only;
- the gateway names no protocol outside at most two files, and its status,
  `/metrics` and `devices` have no per-protocol code;
- no production source file is over ~1,000 lines without a stated reason;
- the shipped binary carries no developer tools and spawns no peers.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from collections import defaultdict
from pathlib import Path

from conftest import REPO, run_cli

CRATES = ["common", "drivers", "node", "gateway", "devkit", "tools"]
# A file may pass the line limit when it says why, in a comment naming the limit.
OVER_LIMIT_REASON = "over 1,000 lines because"
PATH_RE = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def module_of(src: Path, file: Path) -> tuple[str, ...]:
    """The module path of a source file: lib.rs/main.rs are the root,
    a/mod.rs and a.rs are `a`."""
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts.pop()
    return tuple(parts)


def crate_modules(src: Path) -> dict[tuple[str, ...], Path]:
    return {module_of(src, f): f for f in sorted(src.rglob("*.rs"))}


def resolve(reference: str, here: tuple[str, ...], modules: set[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The deepest module a `crate::`/`super::`/`self::` path names."""
    segments = reference.split("::")
    if segments[0] == "crate":
        base: list[str] = []
        rest = segments[1:]
    else:
        base = list(here)
        rest = segments
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                if not base:
                    return None
                base.pop()
            rest = rest[1:]
    found = tuple(base)
    for segment in rest:
        candidate = found + (segment,)
        if candidate not in modules:
            break
        found = candidate
    return found


def sibling_edges(src: Path) -> dict[tuple[str, ...], dict[str, set[str]]]:
    """For each parent module, edges child -> child from references between
    their subtrees (a reference into the parent itself is not an edge)."""
    modules = crate_modules(src)
    names = set(modules)
    edges: dict[tuple[str, ...], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for here, file in modules.items():
        text = file.read_text()
        # Comments name modules without depending on them.
        text = re.sub(r"//[^\n]*", "", text)
        for reference in PATH_RE.findall(text):
            target = resolve(reference, here, names)
            if target is None:
                continue
            common = 0
            while common < min(len(here), len(target)) and here[common] == target[common]:
                common += 1
            if common < len(here) and common < len(target):
                parent = here[:common]
                edges[parent][here[common]].add(target[common])
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def existing_crates() -> list[str]:
    return [c for c in CRATES if (REPO / c / "Cargo.toml").is_file()]


def test_no_module_imports_a_module_that_imports_it():
    problems = []
    for crate in existing_crates():
        for parent, graph in sibling_edges(REPO / crate / "src").items():
            for component in cycles(graph):
                where = "::".join(parent) or "the crate root"
                problems.append(f"{crate}: under {where}: {' <-> '.join(component)}")
    assert not problems, "import cycles:\n" + "\n".join(problems)


def test_the_checker_finds_a_cycle(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "lib.rs").write_text("mod a; mod b;\n")
    (src / "a" / "mod.rs").write_text("use crate::b::Thing;\nmod inner;\n")
    (src / "a" / "inner.rs").write_text("fn f() { super::super::b::g(); }\n")
    (src / "b.rs").write_text("use crate::a::Other;\n")
    assert cycles(sibling_edges(src)[()]) == [["a", "b"]]


def workspace_deps(crate: str) -> tuple[set[str], set[str]]:
    manifest = tomllib.loads((REPO / crate / "Cargo.toml").read_text())
    normal = {d for d in manifest.get("dependencies", {}) if d.startswith("biota-")}
    dev = {d for d in manifest.get("dev-dependencies", {}) if d.startswith("biota-")}
    return normal, dev


def test_crates_depend_in_one_direction():
    allowed = {
        "common": set(),
        "drivers": {"biota-common"},
        "node": {"biota-common"},
        "devkit": {"biota-common"},
        "gateway": {"biota-common", "biota-drivers", "biota-node"},
        "tools": {"biota-common", "biota-drivers", "biota-node", "biota-gateway", "biota-devkit"},
    }
    for crate in existing_crates():
        normal, dev = workspace_deps(crate)
        assert normal <= allowed[crate], f"{crate} depends on {sorted(normal - allowed[crate])}"
        assert dev <= allowed[crate] | {"biota-devkit"}, f"{crate} dev-depends on {sorted(dev)}"


def test_the_gateway_names_each_protocol_in_at_most_two_files():
    src = REPO / "gateway" / "src"
    for protocol in ("modbus", "mqtt", "coap"):
        files = sorted(
            str(f.relative_to(src))
            for f in src.rglob("*.rs")
            if re.search(protocol, f.read_text(), re.I)
        )
        assert len(files) <= 2, f"`{protocol}` appears in {len(files)} files under gateway/src: {files}"


def production_lines(text: str) -> int:
    """Lines before the file's inline test module."""
    marker = re.search(r"^#\[cfg\(test\)\]\s*\nmod tests", text, re.M)
    return text[: marker.start()].count("\n") if marker else text.count("\n")


def test_no_production_file_is_over_a_thousand_lines_without_a_reason():
    long = []
    for crate in existing_crates():
        for f in (REPO / crate / "src").rglob("*.rs"):
            text = f.read_text()
            if production_lines(text) > 1000 and OVER_LIMIT_REASON not in text:
                long.append(f"{f.relative_to(REPO)}: {production_lines(text)} lines")
    assert not long, "split these at their seams, or state why not:\n" + "\n".join(long)


def test_the_shipped_binary_has_no_developer_tools(gateway_bin):
    help_text = run_cli(gateway_bin, "--help").stdout
    commands = re.findall(r"^  ([a-z][a-z-]*)\s", help_text, re.M)
    assert "run" in commands, help_text
    for tool in ("demo", "bench"):
        assert tool not in commands, f"`biota-gateway --help` lists `{tool}`:\n{help_text}"
    spawning = [
        str(f.relative_to(REPO))
        for f in (REPO / "gateway" / "src").rglob("*.rs")
        if re.search(r"process::Command|Command::new\(", f.read_text())
    ]
    assert not spawning, f"code under gateway/src spawns processes: {spawning}"


def test_developer_tools_are_their_own_binary(dev_bin):
    help_text = run_cli(dev_bin, "--help").stdout
    for tool in ("demo", "bench"):
        assert re.search(rf"^  {tool}\s", help_text, re.M), help_text
    assert subprocess.run([str(dev_bin), "bench", "--help"], capture_output=True).returncode == 0
