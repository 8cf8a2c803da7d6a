#!/usr/bin/env python3
"""Self-test for check-module-cycles.py: fake crates with and without cycles.

    python3 -m unittest scripts/test_check_module_cycles.py
"""
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / 'check-module-cycles.py'

CYCLIC = {
    'src/lib.rs': '''
        mod a;
        mod b;
        pub mod c;
        pub mod p;
        pub use b::Thing;
    ''',
    # a -> b only through the root re-export `crate::Thing`.
    'src/a.rs': '''
        pub fn g(_: crate::Thing) {}
    ''',
    # b -> a inline; b -> c through a grouped, nested use.
    'src/b.rs': '''
        use crate::{c::{self, C}, p::x::X};
        pub struct Thing;
        pub fn f() { crate::a::g(Thing) }
    ''',
    'src/c.rs': '''
        pub struct C;
    ''',
    # Sibling cycle p::x <-> p::y; p itself is their assembler.
    'src/p/mod.rs': '''
        pub mod x;
        pub mod y;
        pub struct Shared;
    ''',
    'src/p/x.rs': '''
        use super::y::Y;
        use super::Shared;
        pub struct X;
    ''',
    'src/p/y.rs': '''
        pub struct Y(super::super::p::x::X);
    ''',
}

ACYCLIC = {
    'src/main.rs': '''
        mod a;
        mod b;
        fn main() {}
    ''',
    'src/a.rs': '''
        use crate::b::B;
        pub fn f() -> B { B }
    ''',
    # Only tests, comments, strings, macros and visibility mention `a`.
    'src/b.rs': '''
        //! See [`crate::a::f`].
        pub struct B;
        pub(in crate::b) fn h() -> &'static str { "crate::a::f" }
        macro_rules! m { () => {{ use $crate::a::f; $crate::a::f() }}; }
        #[cfg(test)]
        fn helper() { crate::a::f(); }
        #[cfg(test)]
        mod fixtures;
        mod tests {
            use super::*;
            use crate::a::f;
        }
    ''',
}


def write_crate(root, name, files):
    crate = root / name
    (crate / 'src').mkdir(parents=True)
    (crate / 'Cargo.toml').write_text(f'[package]\nname = "{name}"\n')
    for rel, text in files.items():
        (crate / rel).parent.mkdir(parents=True, exist_ok=True)
        (crate / rel).write_text(textwrap.dedent(text).lstrip())
    return crate


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


class CheckModuleCycles(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)
        self.cyclic = write_crate(self.root, 'cyclic', CYCLIC)
        self.acyclic = write_crate(self.root, 'acyclic', ACYCLIC)

    def tearDown(self):
        self.tmp.cleanup()

    def test_cycle_reported(self):
        res = run('--crate', str(self.cyclic))
        self.assertEqual(res.returncode, 1, res.stdout + res.stderr)
        self.assertIn('cyclic: cycle among crate::{a, b}', res.stdout)
        self.assertIn('a -> b  cyclic/src/a.rs:1', res.stdout)
        self.assertIn('b -> a  cyclic/src/b.rs:3', res.stdout)
        self.assertIn('cyclic: cycle among crate::p::{x, y}', res.stdout)
        self.assertIn('y -> x  cyclic/src/p/y.rs:1', res.stdout)
        self.assertNotIn('c}', res.stdout)
        self.assertEqual(res.stdout.count('cycle among'), 2, res.stdout)

    def test_no_cycle(self):
        res = run('--crate', str(self.acyclic))
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        self.assertEqual(res.stdout, '')
        self.assertIn('no module cycles', res.stderr)

    def test_whole_root(self):
        res = run('--root', str(self.root))
        self.assertEqual(res.returncode, 1, res.stdout + res.stderr)
        self.assertNotIn('acyclic', res.stdout)
        self.assertIn('cyclic: cycle among crate::{a, b}', res.stdout)


if __name__ == '__main__':
    unittest.main()
