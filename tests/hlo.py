"""Reading compiled XLA programs (``jax.jit(f).lower(...).compile().as_text()``).

Used by tests that check how a program was compiled, e.g. that a vmapped population runs
each recurrent product as one batched matmul rather than one per member. Works on the
text of any backend: a matmul is an HLO ``dot`` (CPU, or GPU before library calls) or a
``custom-call`` to a GEMM library (cuBLAS / cuBLASLt on GPU, oneDNN on CPU), or a fusion
whose kind names a GEMM (Triton GEMM fusions on GPU).
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) ")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_GEMM_TARGET = re.compile(r'custom_call_target="[^"]*(gemm|matmul|Gemm|MatMul)[^"]*"')
_GEMM_FUSION = re.compile(r'"kind":"__(triton_gemm|cublas|cudnn)|fusion_backend_config.*gemm')
_SHAPE = re.compile(r"= \(?([a-z0-9]+\[[\d,]*\])")


def computations(text: str) -> tuple[dict[str, list[str]], str]:
  """``({name: instruction lines}, entry name)`` of an HLO module's text."""
  comps, entry, name, lines = {}, "", None, []
  for line in text.splitlines():
    if name is None:
      m = _HEADER.match(line)
      if m and line.rstrip().endswith("{"):
        name, lines = m.group(2), []
        if m.group(1):
          entry = name
      continue
    if line.startswith("}"):
      comps[name], name = lines, None
    else:
      lines.append(line.strip())
  return comps, entry


def reachable(comps: dict[str, list[str]], root: str) -> set[str]:
  """Names of ``root`` and every computation it calls, directly or not (fusions, calls,
  loop bodies and conditions, conditional branches, reducers)."""
  seen, todo = set(), [root]
  while todo:
    c = todo.pop()
    if c in seen or c not in comps:
      continue
    seen.add(c)
    for line in comps[c]:
      todo += _CALLED.findall(line)
      for group in _BRANCHES.findall(line):
        todo += [g.strip().lstrip("%") for g in group.split(",")]
  return seen


def is_matmul(line: str) -> bool:
  return (" dot(" in line or (" custom-call(" in line and bool(_GEMM_TARGET.search(line)))
          or (" fusion(" in line and bool(_GEMM_FUSION.search(line))))


def matmuls(comps: dict[str, list[str]], names) -> list[str]:
  """Matmul instructions in the computations ``names`` (a GEMM fusion counts once: the
  ``dot`` inside it is not counted again)."""
  out, inside_gemm_fusion = [], set()
  for c in names:
    for line in comps[c]:
      if " fusion(" in line and _GEMM_FUSION.search(line):
        inside_gemm_fusion.update(reachable(comps, _CALLED.search(line).group(1)))
  for c in names:
    if c in inside_gemm_fusion:
      continue
    out += [line for line in comps[c] if is_matmul(line)]
  return out


def result_shape(line: str) -> str:
  """The (first) result shape of an instruction line, e.g. ``f32[4,8,16]``."""
  m = _SHAPE.search(line)
  return m.group(1) if m else ""


def loops(text: str) -> list[dict]:
  """Every ``while`` loop of a compiled program: ``{"op_name", "trip_count", "matmuls":
  [result shapes of the matmuls run per iteration, nested calls included]}``."""
  comps, _ = computations(text)
  out = []
  for lines in comps.values():
    for line in lines:
      if " while(" not in line:
        continue
      body = re.search(r"body=%?([\w.\-]+)", line).group(1)
      op = re.search(r'op_name="([^"]*)"', line)
      trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
      out.append({"op_name": op.group(1) if op else "",
                  "trip_count": int(trips.group(1)) if trips else None,
                  "matmuls": [result_shape(m) for m in matmuls(comps, reachable(comps, body))]})
  return out


def count(text: str, opcode: str) -> int:
  """How many ``opcode`` instructions (e.g. ``scatter``, ``dot``) the whole program has."""
  comps, entry = computations(text)
  return sum(1 for c in reachable(comps, entry) for line in comps[c] if f" {opcode}(" in line)


def all_matmuls(text: str) -> list[str]:
  """Result shapes of every matmul of the program."""
  comps, entry = computations(text)
  return [result_shape(m) for m in matmuls(comps, reachable(comps, entry))]
