"""Covering subsets of parameter grids: CI runs a subset that meets every value of each axis; the rest of the
full cross product is marked ``slow`` (run by ``bash scripts/test_all.sh``, see BUILD.md, "Test suite time")."""
import pytest


def covering(xs, ys, per: int, ids=None):
  """The cross product xs x ys as ``pytest.param``s. Row i keeps ys[(i * per + j) % len(ys)], j < per, in CI
  (so each x meets ``per`` ys and, when len(xs) * per >= len(ys), every y is met); the other pairs are slow."""
  if not 0 < per <= len(ys):
    raise ValueError(f"per must be in 1..{len(ys)}; got {per}")
  out = []
  for i, x in enumerate(xs):
    keep = {(i * per + j) % len(ys) for j in range(per)}
    for k, y in enumerate(ys):
      marks = () if k in keep else (pytest.mark.slow,)
      pid = None if ids is None else f"{ids(x)}-{ids(y)}"
      out.append(pytest.param(x, y, marks=marks, id=pid))
  return out
