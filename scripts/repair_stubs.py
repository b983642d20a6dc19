"""Make tensorrt-stubs parseable: loosen the few generated signatures that are not valid Python.

The published stubs contain definitions such as ``def on_shape_change(self, in: list[...], ...)`` (``in`` is a
keyword) and non-default parameters after default ones, so mypy stops at a syntax error.  Each ``def`` that fails to
parse gets ``(*args: typing.Any, **kwargs: typing.Any)`` parameters; every other signature is kept as published.
Usage: python scripts/repair_stubs.py FILE.pyi [...]
"""

import ast
import re
import sys
from pathlib import Path

DEF = re.compile(r"^(\s*def \w+)\(.*\)(\s*->.*:\s*)$")


def repair(path: Path) -> int:
    lines = path.read_text().splitlines()
    loosened = 0
    for _ in range(1000):
        try:
            ast.parse("\n".join(lines))
            break
        except SyntaxError as err:
            index = (err.lineno or 1) - 1
            while index >= 0 and not DEF.match(lines[index]):
                index -= 1
            if index < 0:
                raise
            lines[index] = DEF.sub(r"\1(*args: typing.Any, **kwargs: typing.Any)\2", lines[index])
            loosened += 1
    if "import typing" not in lines[:40]:
        lines.insert(1, "import typing")
    path.write_text("\n".join(lines) + "\n")
    return loosened


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: {repair(Path(name))} unparseable signatures loosened", file=sys.stderr)
