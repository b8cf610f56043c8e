#!/usr/bin/env python3
"""Checks that raftcache's docs name only things that exist.

For every `.md` file in the repo root, in `docs/`, and `cluster/README.md`:

- every path that looks like a source path (`src/...`, `tests/...`, `testkit/...`,
  `powerfs/...`, `tools/...`, `scripts/...`, `cluster/...`, `fuzz/...`) must exist, unless git
  ignores it (made at run time, like `cluster/.local/`); a relative one ending in `.rs` (`store/log.rs`, `api.rs`)
  must be the end of the path of some `.rs` file; a relative markdown link must point at a file;
- `file.rs::name` must name an item declared in that file;
- every `Type::member` inside backticks (or in a fenced block) whose `Type` is CamelCase must
  exist in the Rust sources: `fn member`, `const`/`static member`, a field `member:`, or for a
  CamelCase member an enum variant, in a file that declares `Type` (`struct`/`enum`/`trait`/
  `type`) or has an `impl` naming it. A `Type` that no Rust file declares counts as dangling
  unless it is one of the dependency types listed in `EXTERNAL`; the members of those, and of a
  local alias of a dependency's type (`type Raft = openraft::Raft<..>`), are not checked.

Prints each dangling reference as `doc:line: reference: why` and exits 1 if there is any.
Run from anywhere: `python3 scripts/check_docs.py`. No dependencies beyond Python 3.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("src", "tests", "testkit", "powerfs", "tools", "fuzz")
PATH_PREFIXES = ("src", "tests", "testkit", "powerfs", "tools", "scripts", "cluster", "fuzz")

# Types the docs name that live in raftcache's dependencies, so no file here declares them, with
# the crate that has each. Add a name only after checking that the crate has it.
EXTERNAL = {
    "PageCache": "sled (its page cache)",
    "Queue": "sled (its thread pool)",
    "RPCError": "openraft",
    "RaftError": "openraft",
    "ReplicationCore": "openraft",
    "SnapshotPolicy": "openraft",
}

PATH_RE = re.compile(r"(?<![\w./-])((?:" + "|".join(PATH_PREFIXES) + r")/[\w./*-]*)")
RELATIVE_RS_RE = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.rs)\b")
FILE_ITEM_RE = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.rs)::(\w+)")
LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
CODE_SPAN_RE = re.compile(r"`([^`]+)`")
TYPE_MEMBER_RE = re.compile(r"(?<![\w:])([A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*)::(\w+)")
DECL_RE = re.compile(r"\b(?:struct|enum|trait|type|union)\s+([A-Z]\w*)")
ALIAS_RE = re.compile(r"\btype\s+([A-Z]\w*)\s*(?:<[^=]*>)?\s*=")
IMPL_HEADER_RE = re.compile(r"\bimpl\b([^{;]*)\{")
CAMEL_RE = re.compile(r"\b[A-Z]\w*")


class Sources:
    """What the Rust sources declare, file by file."""

    def __init__(self) -> None:
        self.files = sorted(
            p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.rs") if "target" not in p.parts
        )
        self.text = {p: p.read_text(encoding="utf-8", errors="replace") for p in self.files}
        self.declared: dict[str, set[Path]] = {}  # Type -> files declaring it
        self.implemented: dict[str, set[Path]] = {}  # Type -> files with an impl naming it
        self.aliases: set[str] = set()  # `type X = ...`: members live in the aliased type
        for path, text in self.text.items():
            for name in DECL_RE.findall(text):
                self.declared.setdefault(name, set()).add(path)
            self.aliases.update(ALIAS_RE.findall(text))
            for header in IMPL_HEADER_RE.findall(text):
                for name in CAMEL_RE.findall(header):
                    self.implemented.setdefault(name, set()).add(path)

    def rs_ending_with(self, relative: str) -> list[Path]:
        return [p for p in self.files if p.as_posix().endswith("/" + relative)]

    def check_member(self, type_name: str, member: str) -> str | None:
        """Why `type_name::member` dangles, or None if it exists."""
        homes = self.declared.get(type_name, set()) | self.implemented.get(type_name, set())
        if not homes:
            if type_name in EXTERNAL:
                return None
            return f"no Rust file declares `{type_name}`"
        if type_name in self.aliases or type_name in EXTERNAL:
            return None
        if any(declares_item(self.text[p], member) for p in homes):
            return None
        return f"`{type_name}` has no `{member}` (looked in {', '.join(rel(p) for p in sorted(homes))})"


def declares_item(text: str, name: str) -> bool:
    """Whether `text` declares `name`: a fn, const or static, a type, a struct field, or
    (CamelCase) an enum variant."""
    if re.search(rf"\b(?:fn|const|static|struct|enum|trait|type|mod)\s+{re.escape(name)}\b", text):
        return True
    if re.search(rf"^\s*(?:pub(?:\([\w:]+\))?\s+)?{re.escape(name)}\s*:[^:]", text, re.MULTILINE):
        return True
    if name[0].isupper() and not name.isupper():
        return re.search(rf"^\s*{re.escape(name)}\b\s*[({{,=]?", text, re.MULTILINE) is not None
    return False


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def docs() -> list[Path]:
    found = sorted(REPO.glob("*.md")) + sorted((REPO / "docs").glob("*.md"))
    cluster_readme = REPO / "cluster" / "README.md"
    if cluster_readme.exists():
        found.append(cluster_readme)
    return found


def path_exists(name: str) -> bool:
    if any(ch in name for ch in "*?["):
        return any(REPO.glob(name))
    return (REPO / name).exists() or made_at_run_time(name)


def made_at_run_time(name: str) -> bool:
    """A path git ignores (`cluster/.local/`, `fuzz/corpus/`) is made by running something."""
    try:
        ignored = subprocess.run(
            ["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    except OSError:
        return False
    return ignored.returncode == 0


def check_line(doc: Path, line: str, in_fence: bool, sources: Sources) -> list[str]:
    problems = []
    for match in PATH_RE.finditer(line):
        name = match.group(1).rstrip(".")
        if not path_exists(name):
            problems.append(f"{name}: no such file or directory")
    for match in RELATIVE_RS_RE.finditer(line):
        name = match.group(1)
        if name.split("/")[0] in PATH_PREFIXES:
            continue  # checked above, from the repo root
        if not sources.rs_ending_with(name):
            problems.append(f"{name}: no Rust file by that name")
    for match in FILE_ITEM_RE.finditer(line):
        name, item = match.groups()
        files = [REPO / name] if name.split("/")[0] in PATH_PREFIXES else sources.rs_ending_with(name)
        files = [f for f in files if f.exists()]
        if files and not any(declares_item(sources.text.get(f, f.read_text()), item) for f in files):
            problems.append(f"{name}::{item}: {name} declares no `{item}`")
    for match in LINK_RE.finditer(line):
        target = match.group(1).split("#")[0]
        if not target or re.match(r"^[a-z]+:", target):
            continue
        if not (doc.parent / target).exists():
            problems.append(f"{target}: the link points at nothing")
    spans = [line] if in_fence else CODE_SPAN_RE.findall(line)
    for span in spans:
        for match in TYPE_MEMBER_RE.finditer(span):
            why = sources.check_member(match.group(1), match.group(2))
            if why:
                problems.append(f"{match.group(0)}: {why}")
    return problems


def main() -> int:
    sources = Sources()
    dangling = 0
    for doc in docs():
        in_fence = False
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
                continue
            for problem in check_line(doc, line, in_fence, sources):
                print(f"{rel(doc)}:{number}: {problem}")
                dangling += 1
    if dangling:
        sys.stdout.flush()
        print(f"check_docs: {dangling} dangling reference(s)", file=sys.stderr)
        return 1
    print(f"check_docs: {len(docs())} docs, every named path and Type::member exists")
    return 0


if __name__ == "__main__":
    sys.exit(main())
