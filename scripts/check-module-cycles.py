#!/usr/bin/env python3
"""Finds import cycles among the modules of each crate in the workspace.

A crate is every directory holding a Cargo.toml and src/lib.rs or src/main.rs
(each of the two is its own module tree). The tree follows `mod x;` (x.rs or
x/mod.rs) and inline `mod x { .. }` declarations, whatever their visibility.

What counts as an edge: module A depends on module B when A's non-test code
names a path into B: `use crate::b::..` (grouped `use crate::{a::X, b::{Y}}`
included), an inline path such as `crate::b::f()`, or `super::..`/`self::..`
paths that resolve to B. A path ending at an item re-exported or imported by a
module (`pub use x::Foo` in lib.rs, then `crate::Foo`) is followed to the module
that defines it; anything that cannot be followed stays with the module where
the walk stopped. Every reference yields one edge at the level where source and
target part: between top-level modules, or between siblings under a common
parent (`controller::roll -> controller::build`). References to an ancestor
(the crate root, `super::Error` in a parent's mod.rs) are no edge: the root and
a mod.rs are the assemblers of their children.

Test code is excluded (`#[cfg(test)]` items, `#![cfg(test)]` files and any
module named `tests`): a test module reaches into its parent with
`use super::*` and into fixtures anywhere; that is not the architecture.
Comments, strings, `$crate` and `pub(in crate::x)` are ignored. `#[path]` is
not supported.

    python3 scripts/check-module-cycles.py [--crate DIR] [--root DIR]

Prints every strongly connected component with more than one module, with one
example `file:line` per edge inside it; exits 1 when there is any cycle.
"""
import argparse
import re
import sys
from pathlib import Path

LEX = re.compile(r'//[^\n]*|/\*|(?<!\w)b?r(#*)".*?"\1|"(?:\\.|[^"\\])*"'
                 r"|'(?:\\(?:u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'\n])'", re.S)
TEST_ATTR = re.compile(r'#\s*\[\s*cfg\s*\(\s*(?:test\s*\)|all\s*\(\s*test\b)')
MOD_DECL = re.compile(r'\bmod\s+(\w+)\s*([;{])')
USE = re.compile(r'\buse\s+([^;]*);')
INLINE = re.compile(r'(?<![\w$:])(crate|self|super)((?:\s*::\s*\w+)+)')
VIS = re.compile(r'\bpub\s*\([^)]*\)')
ATTR = re.compile(r'\s*#\s*\[')
ITEM_KIND = re.compile(r'\s*(?:pub\s*(?:\([^)]*\))?\s*)?(use|const|static|type|let|fn|impl|struct|enum'
                       r'|trait|mod|union|async|unsafe|extern|macro_rules)\b')
DEFS = re.compile(r'\b(?:fn|struct|enum|trait|type|const|static|union|macro_rules!)\s+(\w+)')


def spaces(text):
    return re.sub(r'[^\n]', ' ', text)


def blank(text, a, b):
    return text[:a] + spaces(text[a:b]) + text[b:]


def strip_code(src):
    """Blanks comments, strings and char literals, keeping offsets and lines."""
    out, pos = [], 0
    while m := LEX.search(src, pos):
        end = m.end()
        if m.group() == '/*':
            depth = 1
            while depth and end < len(src):
                two = src[end:end + 2]
                depth += (two == '/*') - (two == '*/')
                end += 2 if two in ('/*', '*/') else 1
        out += [src[pos:m.start()], spaces(src[m.start():end])]
        pos = end
    return re.sub(r'\$crate\b', ' ' * 6, ''.join(out + [src[pos:]]))


def close(text, i):
    """Offset just past the bracket group opened at text[i]."""
    depth = 0
    for j in range(i, len(text)):
        depth += (text[j] in '([{') - (text[j] in ')]}')
        if depth == 0:
            return j + 1
    return len(text)


def item_end(text, i):
    """Offset just past the item (or field, arm, statement) whose attributes start at i."""
    while m := ATTR.match(text, i):
        i = close(text, m.end() - 1)
    kind = ITEM_KIND.match(text, i)
    kind = kind and ('semi' if kind.group(1) in ('use', 'const', 'static', 'type', 'let') else 'block')
    depth = 0
    for j in range(i, len(text)):
        depth += (text[j] in '([{') - (text[j] in ')]}')
        if depth < 0:
            return j
        if depth == 0 and (text[j] == ';' or (text[j] == '}' and kind == 'block')
                           or (text[j] == ',' and not kind)):
            return j + 1
    return len(text)


def drop_tests(text):
    if re.search(r'#\s*!\s*\[\s*cfg\s*\(\s*test\s*\)', text):
        return spaces(text)
    while m := TEST_ATTR.search(text):
        text = blank(text, m.start(), item_end(text, m.start()))
    return text


class Module:
    def __init__(self, path, file, text, child_dir, lines):
        self.path, self.file, self.text, self.child_dir, self.lines = path, file, text, child_dir, lines
        self.children, self.imports, self.globs, self.uses, self.defs = {}, {}, [], [], set()


def load(path, file, child_dir, text=None, lines=None):
    """Builds the module (and its children) for `file`, or for its inline region `text`."""
    if text is None:
        src = file.read_text(encoding='utf-8', errors='replace')
        text, lines = drop_tests(strip_code(src)), src.splitlines()
    mod, pos = Module(path, file, text, child_dir, lines), 0
    while m := MOD_DECL.search(mod.text, pos):
        name, pos = m.group(1), m.end()
        if m.group(2) == '{':
            end = close(mod.text, m.end() - 1)
            inner = spaces(mod.text[:m.end()]) + mod.text[m.end():end - 1] + spaces(mod.text[end - 1:])
            mod.text, pos = blank(mod.text, m.start(), end), end
            if name != 'tests':
                mod.children[name] = load(path + (name,), file, child_dir / name, inner, lines)
            continue
        found = next((c for c in (child_dir / f'{name}.rs', child_dir / name / 'mod.rs') if c.is_file()), None)
        if name == 'tests':
            continue
        if found is None:
            print(f'warning: {file}: no file for `mod {name};`', file=sys.stderr)
            continue
        sub_dir = found.parent if found.name == 'mod.rs' else found.parent / found.stem
        mod.children[name] = load(path + (name,), found, sub_dir)
    return mod


def parse_use(body, base):
    """Expands a use tree into (segments, bound name or '*', offset) leaves."""
    toks = [(m.group(), base + m.start()) for m in re.finditer(r'::|\w+|[{},*]', body)]
    leaves = []

    def tree(i, prefix):
        segs, at, alias = list(prefix), toks[i][1], None
        while i < len(toks) and toks[i][0] not in ',}':
            tok = toks[i][0]
            if tok == '{':
                i += 1
                while i < len(toks) and toks[i][0] != '}':
                    i = i + 1 if toks[i][0] == ',' else tree(i, segs)
                return i + 1
            if tok == '*':
                leaves.append((segs, '*', at))
                return i + 1
            if tok == 'as':
                alias, i = (toks[i + 1][0] if i + 1 < len(toks) else '_'), i + 2
                continue
            if tok != '::':
                segs.append(tok)
            i += 1
        if segs and segs[-1] == 'self':
            segs.pop()
        name = alias or (segs[-1] if segs else '_')
        leaves.append((segs, None if name == '_' else name, at))
        return i

    i = 0
    while i < len(toks):
        i = i + 1 if toks[i][0] in ',}' else tree(i, [])
    return leaves


class Crate:
    def __init__(self, root_file):
        self.root = load((), root_file, root_file.parent)
        self.mods, todo = [], [self.root]
        while todo:
            self.mods.append(todo.pop())
            todo += self.mods[-1].children.values()
        for mod in self.mods:
            self.collect(mod)

    def absolute(self, mod, segs):
        """Crate-absolute segments of a path written in `mod`, or None if it is external."""
        head, rest = segs[0], segs[1:]
        if head == 'crate':
            return rest
        if head in ('self', 'super'):
            path = mod.path
            while segs and segs[0] in ('self', 'super'):
                path, segs = (path if segs[0] == 'self' else path[:-1]), segs[1:]
            return list(path) + segs
        if head in mod.children:
            return list(mod.path) + segs
        return mod.imports[head] + rest if head in mod.imports else None

    def collect(self, mod):
        """Records mod's imports (for resolution) and every crate path it mentions."""
        for m in USE.finditer(mod.text):
            stmt = ' '.join(m.group(0).split())
            for segs, name, off in parse_use(m.group(1), m.start(1)):
                target = self.absolute(mod, segs) if segs else None
                if target is None:
                    continue
                if name == '*':
                    mod.globs.append(target)
                elif name:
                    mod.imports[name] = target
                mod.uses.append((target, off, stmt))
        text = VIS.sub(lambda v: spaces(v.group()), USE.sub(lambda u: spaces(u.group()), mod.text))
        for m in INLINE.finditer(text):
            segs = [m.group(1)] + [s.strip() for s in m.group(2).split('::')[1:]]
            mod.uses.append((self.absolute(mod, segs), m.start(), None))
        mod.defs = set(DEFS.findall(mod.text))

    def locate(self, segs, depth=0):
        """The module that defines what the crate-absolute path `segs` names."""
        mod = self.root
        for i, seg in enumerate(segs):
            if seg in mod.children:
                mod = mod.children[seg]
                continue
            if depth < 8 and seg not in mod.defs:
                if seg in mod.imports:
                    return self.locate(mod.imports[seg] + segs[i + 1:], depth + 1)
                for glob in mod.globs:
                    g = self.locate(glob, depth + 1)
                    if seg in g.children or seg in g.imports or seg in g.defs:
                        return self.locate(glob + segs[i:], depth + 1)
            break
        return mod

    def edges(self):
        """{(parent path, from, to): (file, line, text)}; the first example wins."""
        found = {}
        for mod in sorted(self.mods, key=lambda m: m.path):
            for target, off, stmt in mod.uses:
                if target is None:
                    continue
                src, dst, k = mod.path, self.locate(target).path, 0
                while k < min(len(src), len(dst)) and src[k] == dst[k]:
                    k += 1
                if k < len(src) and k < len(dst):
                    line = mod.text.count('\n', 0, off) + 1
                    found.setdefault((src[:k], src[k], dst[k]),
                                     (mod.file, line, stmt or mod.lines[line - 1].strip()))
        return found


def sccs(succ):
    """Tarjan's algorithm: the strongly connected components with more than one node."""
    index, low, stack, out = {}, {}, [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(succ.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(succ):
        if v not in index:
            visit(v)
    return out


def crates(root, only):
    """(label, crate root file) for every lib.rs/main.rs; `crate[bin]` when a crate has both."""
    dirs = [only] if only else sorted(p.parent for p in root.rglob('Cargo.toml')
                                      if not {'target', '.git'} & set(p.relative_to(root).parts))
    for d in dirs:
        files = [f for f in (d / 'src/lib.rs', d / 'src/main.rs') if f.is_file()]
        for f in files:
            name = str(d.relative_to(root)) if d != root else d.name
            yield name + ('[bin]' if len(files) > 1 and f.name == 'main.rs' else ''), f


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--root', type=Path, default=Path(__file__).resolve().parent.parent,
                    help='workspace root (default: the parent of scripts/)')
    ap.add_argument('--crate', type=Path, help='check only this crate directory')
    args = ap.parse_args(argv)
    root, only = args.root.resolve(), None
    if args.crate:
        only = (args.crate if args.crate.is_dir() else root / args.crate).resolve()
        if not (only / 'Cargo.toml').is_file():
            ap.error(f'{args.crate}: not a crate directory')
        if only != root and root not in only.parents:
            root = only.parent
    cycles = 0
    for label, root_file in crates(root, only):
        groups = {}
        for (parent, a, b), example in Crate(root_file).edges().items():
            groups.setdefault(parent, {}).setdefault(a, {})[b] = example
        for parent, succ in sorted(groups.items()):
            for comp in sccs(succ):
                cycles += 1
                print(f'{label}: cycle among crate{"".join("::" + p for p in parent)}::{{{", ".join(comp)}}}')
                for a in comp:
                    for b in sorted(set(succ.get(a, ())) & set(comp)):
                        file, line, text = succ[a][b]
                        text = text if len(text) <= 110 else text[:107] + '...'
                        print(f'  {a} -> {b}  {file.relative_to(root)}:{line}  {text}')
    print(f'{cycles} module cycle(s) found' if cycles else 'no module cycles', file=sys.stderr)
    return 1 if cycles else 0


if __name__ == '__main__':
    sys.exit(main())
