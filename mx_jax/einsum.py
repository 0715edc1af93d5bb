"""Two-operand einsum lowered onto any ``dot_general`` callable (quantized ones included).

``einsum("bqhd,bkhd->bhqk", a, b, dot_general=dg)``: labels in both operands and the output are batch
dims, labels in both but not the output are contracted, labels in one operand only are summed out first
(or kept as free dims if in the output). The result is transposed into the output's label order.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax


def _parse(eqn: str, a_ndim: int, b_ndim: int) -> tuple[str, str, str]:
  if not isinstance(eqn, str) or "->" not in eqn or eqn.count(",") != 1:
    raise ValueError(f"eqn must be an explicit two-operand einsum like 'ab,bc->ac'; got {eqn!r}")
  eqn = eqn.replace(" ", "")
  ins, out = eqn.split("->")
  la, lb = ins.split(",")
  if "..." in eqn:  # expand '...' into fresh labels, right-aligned as numpy broadcasting does
    pool = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in eqn]
    na = a_ndim - (len(la) - 3) if "..." in la else 0
    nb = b_ndim - (len(lb) - 3) if "..." in lb else 0
    if na != nb and na and nb:
      raise ValueError(f"eqn: both operands' '...' must cover the same number of dims; got {na} and {nb}")
    ell = "".join(pool[:max(na, nb)])
    la, lb, out = la.replace("...", ell[len(ell) - na:]), lb.replace("...", ell[len(ell) - nb:]), \
        out.replace("...", ell)
  for name, labels, nd in (("first operand", la, a_ndim), ("second operand", lb, b_ndim)):
    if len(labels) != nd or len(set(labels)) != nd:
      raise ValueError(f"eqn labels {labels!r} do not match the {name}'s rank {nd} (or repeat a label)")
  return la, lb, out


def einsum(eqn: str, a: jax.Array, b: jax.Array, dot_general: Callable = lax.dot_general,
           preferred_element_type=None) -> jax.Array:
  la, lb, out = _parse(eqn, a.ndim, b.ndim)
  # Sum out labels that appear in one operand only and not in the output.
  for lab in [c for c in la if c not in lb and c not in out]:
    a, la = jnp.sum(a, axis=la.index(lab)), la.replace(lab, "")
  for lab in [c for c in lb if c not in la and c not in out]:
    b, lb = jnp.sum(b, axis=lb.index(lab)), lb.replace(lab, "")
  batch = [c for c in la if c in lb and c in out]
  contract = [c for c in la if c in lb and c not in out]
  dn = (([la.index(c) for c in contract], [lb.index(c) for c in contract]),
        ([la.index(c) for c in batch], [lb.index(c) for c in batch]))
  y = dot_general(a, b, dn, preferred_element_type=preferred_element_type)
  y_labels = "".join(batch) + "".join(c for c in la if c not in lb) + "".join(c for c in lb if c not in la)
  if sorted(y_labels) != sorted(out):
    raise ValueError(f"eqn output {out!r} must list each kept label once; kept labels are {y_labels!r}")
  return jnp.transpose(y, [y_labels.index(c) for c in out])
