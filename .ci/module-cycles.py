#!/usr/bin/env python3
"""Fails on an import cycle between the modules of a workspace crate.

For each crate of the workspace (the `members` of the root `Cargo.toml`) every file under
`src/` is mapped to its module path (`src/fetch/http.rs` -> `fetch::http`; `src/main.rs` and
`src/bin/` are binaries and skipped). Edges come from paths in the code: `crate::a::b`
(also inside grouped `use crate::{a, b::c}`), `super::x` and `self::x`; comments, string
literals, `$crate` paths and `#[cfg(test)]` modules are ignored. A path through a re-export of
the crate root (`pub use fetch::http;` in `lib.rs`) is followed to where it points.

Cycles are checked at every level: between the top-level modules of a crate, and between the
children of each folder module (`fetch/http.rs` and `fetch/transport.rs`), where the folder's
own file (`fetch.rs` or `fetch/mod.rs`) counts as one more node, so that a child may use its
folder's items only if the folder's file does not use that child.

Usage: module-cycles.py [--self-test] [WORKSPACE_DIR]
Exit status 1 and a message naming each cycle (with a file:line for every edge) on a cycle.
"""

import os
import re
import sys
import tempfile
import tomllib
import unittest

SELF = "(self)"

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(src):
    """Blanks out comments and string/char literals, keeping line breaks (so lines still count)."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            i = j
            continue
        if src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * src.count("\n", i, j))
            i = j
            continue
        m = re.match(r'b?r(#*)"', src[i:i + 260]) if c in "rb" and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")) else None
        if m:
            end = '"' + m.group(1)
            j = src.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j + 1
            continue
        if c == "'":
            # A char literal ('a', '\n', '\u{1F600}'), not a lifetime ('a).
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", src[i:i + 12])
            if m:
                out.append("' '")
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def drop_test_modules(src):
    """Blanks out `#[cfg(test)] mod x { ... }` blocks; returns (source, names of `#[cfg(test)]
    mod x;` file modules)."""
    test_files = set()
    pat = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*([;{])")
    while True:
        m = pat.search(src)
        if not m:
            return src, test_files
        if m.group(2) == ";":
            test_files.add(m.group(1))
            src = src[:m.start()] + " " * (m.end() - m.start()) + src[m.end():]
            continue
        depth, j = 1, m.end()
        while j < len(src) and depth:
            depth += {"{": 1, "}": -1}.get(src[j], 0)
            j += 1
        blanked = re.sub(r"[^\n]", " ", src[m.start():j])
        src = src[:m.start()] + blanked + src[j:]


def parse_tree(s, i):
    """Parses a use tree / path at s[i:] (after `crate::`): returns (list of segment lists, end)."""
    ws = re.compile(r"\s*")
    i = ws.match(s, i).end()
    if i < len(s) and s[i] == "{":
        paths, i = [], i + 1
        while True:
            i = ws.match(s, i).end()
            if i >= len(s):
                return paths, i
            if s[i] == "}":
                return paths, i + 1
            if s[i] == ",":
                i += 1
                continue
            m = re.compile(r"as\s+" + IDENT).match(s, i)
            if m:  # `x as y`: the rename is not a path
                i = m.end()
                continue
            sub, j = parse_tree(s, i)
            if j == i:  # not a path (`*`, `self`): skip one char
                i += 1
                continue
            paths.extend(sub)
            i = j
    m = re.compile(IDENT).match(s, i)
    if not m:
        return [[]], i
    seg, i = m.group(0), m.end()
    m2 = re.compile(r"\s*::\s*").match(s, i)
    if m2:
        rest, j = parse_tree(s, m2.end())
        return [[seg] + r for r in rest], j
    return [[seg]], i


def crate_paths(code):
    """Yields (line, kind, segments) for every `crate::`, `super::` and `self::` path."""
    for m in re.finditer(r"(?<![A-Za-z0-9_$])(crate|super|self)\s*::", code):
        line = code.count("\n", 0, m.start()) + 1
        kind = m.group(1)
        if kind == "super":
            # `super::super::x`
            rest_at, ups = m.end(), 1
            while True:
                m2 = re.compile(r"\s*super\s*::").match(code, rest_at)
                if not m2:
                    break
                ups, rest_at = ups + 1, m2.end()
            for p in parse_tree(code, rest_at)[0]:
                yield line, ("super", ups), p
            continue
        for p in parse_tree(code, m.end())[0]:
            yield line, (kind, 0), p


def module_files(src_dir):
    """Maps module path tuples to files for the library crate under src_dir."""
    mods = {}
    for root, _dirs, files in os.walk(src_dir):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), src_dir).replace(os.sep, "/")
            if rel == "main.rs" or rel.startswith("bin/"):
                continue
            parts = rel[:-3].split("/")
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts == ["lib"]:
                parts = []
            mods[tuple(parts)] = os.path.join(root, f)
    return mods


def analyse_crate(src_dir, rel_to=None):
    """Returns (modules, edges): edges as {(src_mod, target_path_tuple): [file:line, ...]}."""
    mods = module_files(src_dir)
    texts, test_only = {}, set()
    for mp, f in mods.items():
        with open(f, encoding="utf-8") as fh:
            code, tests = drop_test_modules(strip_comments_and_strings(fh.read()))
        texts[mp] = code
        test_only.update(mp + (t,) for t in tests)
    mods = {mp: f for mp, f in mods.items() if not any(mp[:k] in test_only for k in range(1, len(mp) + 1))}
    # Re-exports of the crate root: `pub use a::b;`, `pub use a::{b, c as d};`.
    aliases = {}
    root_code = texts.get((), "")
    for m in re.finditer(r"pub\s+use\s+", root_code):
        for p in parse_tree(root_code, m.end())[0]:
            if p and (p[0],) in mods and len(p) > 1:
                aliases[p[-1]] = tuple(p)
    edges = {}
    for mp in mods:
        code = texts[mp]
        for line, (kind, ups), p in crate_paths(code):
            if kind == "crate":
                if p and p[0] in aliases and (p[0],) not in mods:
                    p = list(aliases[p[0]]) + p[1:]
                target = tuple(p)
            elif kind == "self":
                target = mp + tuple(p)
            else:
                # `super` of a file module is its parent (of `a/b.rs` and `a/b/mod.rs`: `a`).
                base = mp[: max(len(mp) - ups, 0)]
                target = base + tuple(p)
            where = f"{os.path.relpath(mods[mp], rel_to)}:{line}"
            edges.setdefault((mp, target), []).append(where)
    return mods, edges


def node_in(folder, path, mods):
    """The node of `folder`'s graph that `path` (a module or item path) falls in, or None."""
    if path[: len(folder)] != folder:
        return None
    if len(path) > len(folder) and folder + (path[len(folder)],) in mods:
        return path[len(folder)]
    return SELF


def find_cycles(mods, edges):
    """Returns [(folder, [node, ...], [evidence, ...])] for one cycle per strongly connected
    component of more than one node, at every folder level."""
    folders = {mp[:k] for mp in mods for k in range(len(mp))}
    found = []
    for folder in sorted(folders):
        graph, where = {}, {}
        for (src, target), locs in edges.items():
            a, b = node_in(folder, src, mods), node_in(folder, target, mods)
            if a is None or b is None or a == b:
                continue
            if folder == () and SELF in (a, b):
                continue  # the crate root only declares and re-exports
            graph.setdefault(a, set()).add(b)
            where.setdefault((a, b), locs[0])
        for comp in sccs(graph):
            if len(comp) < 2:
                continue
            cyc = cycle_in(graph, comp)
            ev = [f"{x} -> {y} ({where[(x, y)]})" for x, y in zip(cyc, cyc[1:])]
            if len(comp) > len(cyc) - 1:
                ev.append("all modules in cycles with these: " + ", ".join(comp))
            found.append((folder, cyc, ev))
    return found


def sccs(graph):
    """Tarjan's strongly connected components."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    nodes = sorted(set(graph) | {b for bs in graph.values() for b in bs})

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def cycle_in(graph, comp):
    """A shortest cycle through the first node of a strongly connected component."""
    comp_set, start = set(comp), comp[0]
    prev, queue = {start: None}, [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, ())):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w in comp_set and w not in prev:
                prev[w] = v
                queue.append(w)
    return [start, start]


def workspace_crates(ws):
    with open(os.path.join(ws, "Cargo.toml"), "rb") as fh:
        members = tomllib.load(fh).get("workspace", {}).get("members", [])
    for m in members:
        src = os.path.join(ws, m, "src")
        if os.path.isfile(os.path.join(src, "lib.rs")):
            yield m, src


def check(ws):
    """Prints each cycle; returns the number of cycles found."""
    total, nmods, ncrates = 0, 0, 0
    for name, src in workspace_crates(ws):
        mods, edges = analyse_crate(src, ws)
        ncrates, nmods = ncrates + 1, nmods + len(mods)
        for folder, cyc, ev in find_cycles(mods, edges):
            total += 1
            level = "crate::" + "::".join(folder) if folder else "the crate root"
            shown = [f"{folder[-1]}.rs itself" if n == SELF else n for n in cyc]
            print(f"error: import cycle in {name} between modules of {level}: {' -> '.join(shown)}")
            for e in ev:
                print("    " + e.replace(SELF, f"{folder[-1]}.rs itself" if folder else SELF))
    if total:
        print("break the cycle: move what both sides use below both (ARCHITECTURE.md, code map)")
    else:
        print(f"module-cycles: {ncrates} crates, {nmods} modules, no import cycle")
    return total


class SelfTest(unittest.TestCase):
    """Builds small crates in a temp dir and checks what the script finds."""

    def crate(self, files):
        d = tempfile.TemporaryDirectory()
        self.addCleanup(d.cleanup)
        with open(os.path.join(d.name, "Cargo.toml"), "w") as fh:
            fh.write('[workspace]\nmembers = ["c"]\n')
        for path, text in files.items():
            p = os.path.join(d.name, "c", "src", path)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "w") as fh:
                fh.write(text)
        return d.name

    def cycles(self, files):
        ws = self.crate(files)
        _name, src = next(workspace_crates(ws))
        return [(f, c) for f, c, _ in find_cycles(*analyse_crate(src))]

    def test_top_level_cycle_is_found(self):
        found = self.cycles({
            "lib.rs": "pub mod a; pub mod b; pub mod c;",
            "a.rs": "use crate::b::X;",
            "b.rs": "pub struct X; fn f() { crate::c::g() }",
            "c.rs": "pub fn g() {} use crate::{error::E, a::Y};",
        })
        self.assertEqual(found, [((), ["a", "b", "c", "a"])])

    def test_no_cycle_passes(self):
        self.assertEqual(self.cycles({
            "lib.rs": "pub mod a; pub mod b;",
            "a.rs": "use crate::b::X;",
            "b.rs": "pub struct X; // crate::a::Y in a comment\nconst S: &str = \"crate::a::Z\";\n"
                    "#[cfg(test)]\nmod tests { use crate::a::Y; }",
        }), [])

    def test_cycle_between_children_of_a_folder_is_found(self):
        found = self.cycles({
            "lib.rs": "pub mod f;",
            "f.rs": "pub mod x; pub mod y;",
            "f/x.rs": "use super::y::Y; pub struct X;",
            "f/y.rs": "use crate::f::{x::X, z};",
        })
        self.assertEqual(found, [(("f",), ["x", "y", "x"])])

    def test_folder_file_counts_as_a_node(self):
        found = self.cycles({
            "lib.rs": "pub mod f;",
            "f/mod.rs": "pub mod x; pub struct R; fn g() { x::h(); self::x::h() }",
            "f/x.rs": "pub fn h() { let _ = super::R; }",
        })
        self.assertEqual(found, [(("f",), [SELF, "x", SELF])])

    def test_root_re_export_is_followed(self):
        found = self.cycles({
            "lib.rs": "pub mod f; pub mod g; pub use f::http;",
            "f.rs": "pub mod http;",
            "f/http.rs": "use crate::g::G;",
            "g.rs": "pub struct G; use crate::http::H;",
        })
        self.assertEqual(found, [((), ["f", "g", "f"])])


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--self-test"]:
        sys.argv = sys.argv[:1]
        unittest.main(verbosity=1)
    ws = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    sys.exit(1 if check(os.path.abspath(ws)) else 0)
