"""Write (or check) docs/extensions.md: the built-in implementations of every extension
point, read from jointopt's registries.

    .venv/bin/python scripts/extensions_doc.py           # rewrite the file
    .venv/bin/python scripts/extensions_doc.py --check   # exit 1 when it is out of date

The test suite runs the check, so a registry entry and its documentation cannot drift.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extensions.md"

HEADER = """# Extension points and their built-in implementations

Generated from `jointopt._registry` by `scripts/extensions_doc.py` (the test suite checks
that it is current). Each extension point has one base class, one registry and one
contract suite in `jointopt.testing`; see CONTRIBUTING.md for how to add one. Any
implementation can also be named by its `"package.module:Class"` path without a registry
entry.
"""


def _summary(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    return first.replace("|", "\\|")


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from jointopt import _registry

    registries = [r for r in vars(_registry).values() if isinstance(r, _registry.Registry)]
    parts = [HEADER]
    for registry in registries:
        base = registry.base.replace(":", ".")
        parts.append(f"\n## {registry.kind} (`{base}`)\n\n| name | implementation | what it does |\n"
                     "|---|---|---|\n")
        for name in registry.names():
            path = registry.entries[name]
            obj = registry.load(name)
            parts.append(f"| `{name}` | `{path}` | {_summary(obj)} |\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC.relative_to(ROOT)} is out of date: run "
                  ".venv/bin/python scripts/extensions_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
