"""The largest modules and functions of the jointopt package, against the size limits.

A module may have at most 400 lines and a function at most 80, unless the module says why
in its first lines (a comment or docstring line ``long because: <reason>``); such a module
is listed but not counted as over the limit.

    .venv/bin/python scripts/module_sizes.py [--top 15]

Exit status 1 when a module or function is over its limit without a reason.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jointopt"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
#: How many first lines of a module may hold its ``long because:`` line.
REASON_WINDOW = 15


@dataclass(frozen=True)
class Size:
    """One module or function and its length in lines."""

    path: str
    name: str
    lines: int
    reason: str | None


def long_reason(text: str) -> str | None:
    """The ``long because: ...`` reason in the first lines of a module, if any."""
    for line in text.splitlines()[:REASON_WINDOW]:
        _, found, reason = line.partition("long because:")
        if found and reason.strip():
            return reason.strip()
    return None


def measure(package: Path = PACKAGE) -> tuple[list[Size], list[Size]]:
    """Every module and every function (methods included) of ``package`` with its length."""
    modules: list[Size] = []
    functions: list[Size] = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(package.parent).as_posix()
        reason = long_reason(text)
        modules.append(Size(rel, rel, len(text.splitlines()), reason))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                functions.append(Size(rel, f"{rel}:{node.lineno} {node.name}", length, reason))
    return modules, functions


def over_limits(package: Path = PACKAGE) -> list[str]:
    """Modules and functions over their limit whose module gives no reason."""
    modules, functions = measure(package)
    out = [f"{m.name}: {m.lines} lines (limit {MAX_MODULE_LINES})"
           for m in modules if m.lines > MAX_MODULE_LINES and m.reason is None]
    out += [f"{f.name}: {f.lines} lines (limit {MAX_FUNCTION_LINES})"
            for f in functions if f.lines > MAX_FUNCTION_LINES and f.reason is None]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=15, help="rows per table")
    args = parser.parse_args()
    modules, functions = measure()
    for title, rows, limit in (("modules", modules, MAX_MODULE_LINES),
                               ("functions", functions, MAX_FUNCTION_LINES)):
        print(f"largest {title} (limit {limit} lines):")
        for size in sorted(rows, key=lambda s: -s.lines)[: args.top]:
            flag = "" if size.lines <= limit else (
                f"  long because: {size.reason}" if size.reason else "  OVER")
            print(f"  {size.lines:5d}  {size.name}{flag}")
    problems = over_limits()
    print(f"{len(problems)} over the limits without a reason")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
