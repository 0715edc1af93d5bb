"""Layer selection by path, shared by the linen / nnx model wrappers: "/"-joined module names matched by fnmatch
patterns; a layer is selected iff it matches ``include`` (None: every layer) and no ``exclude`` pattern."""
from __future__ import annotations

import fnmatch
from typing import Sequence


def check_patterns(include, exclude) -> None:
  """Raises TypeError unless ``include`` / ``exclude`` are None or sequences of strings."""
  for name, pats in (("include", include), ("exclude", exclude)):
    if pats is not None and (isinstance(pats, str) or not isinstance(pats, (list, tuple, set, frozenset))
                             or not all(isinstance(p, str) for p in pats)):
      raise TypeError(f"{name} must be a sequence of path patterns (strings); got {pats!r}")


def matches(path: str, patterns: Sequence[str] | None) -> bool:
  return any(fnmatch.fnmatchcase(path, p) for p in patterns or ())


def selected(path: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
  return (include is None or matches(path, include)) and not matches(path, exclude)
