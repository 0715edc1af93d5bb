"""tests/covering.py: the CI subset of a grid meets every value of each axis; the rest is marked slow."""
import pytest

from covering import covering


def _split(params):
  ci = [p.values for p in params if not any(m.name == "slow" for m in p.marks)]
  slow = [p.values for p in params if any(m.name == "slow" for m in p.marks)]
  return ci, slow


@pytest.mark.parametrize("nx,ny,per", [(6, 7, 3), (7, 3, 2), (7, 5, 2), (2, 5, 1)])
def test_ci_subset_meets_every_value(nx, ny, per):
  xs, ys = [f"x{i}" for i in range(nx)], [f"y{j}" for j in range(ny)]
  ci, slow = _split(covering(xs, ys, per))
  assert len(ci) == nx * per and len(ci) + len(slow) == nx * ny  # the whole grid, each pair once
  assert sorted(ci + slow) == sorted((x, y) for x in xs for y in ys)
  assert {x for x, _ in ci} == set(xs)
  for x in xs:
    assert sum(1 for a, _ in ci if a == x) == per
  met = {y for _, y in ci}
  assert met == set(ys) if nx * per >= ny else len(met) == nx * per


def test_per_is_validated():
  for per in (0, 4):
    with pytest.raises(ValueError, match="per must be in 1..3"):
      covering(["a"], [1, 2, 3], per)
