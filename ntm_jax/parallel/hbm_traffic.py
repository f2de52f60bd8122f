"""HBM traffic of a compiled TPU program after memory-space assignment, read from its scheduled HLO.

XLA's cost analysis ("bytes accessed") counts every operand and result of every op as if it lived in HBM.
The TPU compiler's memory-space assignment keeps many of them in on-chip VMEM instead (their layouts carry
memory space `S(1)`) and moves data between the two with asynchronous copies and slices. This estimate
counts what crosses HBM: the operands and results of each top-level op that are in the default memory
space, plus each asynchronous copy or slice once at its size (twice if both ends are in HBM), loop bodies
as many times as their known trip count. Pallas kernels are left out: the attention kernels' own estimate
(ntm_jax.models.attention) stands for them. Like XLA's count it takes each HBM operand as read once; it is
an estimate from the compiler's plan, not a profile of a chip.
"""

from __future__ import annotations

import dataclasses
import re

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2,
          "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\](\{[^}]*\})?")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
_INSTRUCTION = re.compile(r"^(?:ROOT )?%?([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$")
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")
_VMEM = "1"
# Ops that move no data themselves (views, tuples, constants) or whose traffic is counted at their done.
_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all", "partition-id",
         "replica-id", "opt-barrier", "copy-start", "slice-start", "custom-call-start"}
_ASYNC_DONE = {"copy-done", "slice-done"}


@dataclasses.dataclass(frozen=True)
class Traffic:
  hbm_bytes: float       # what crosses HBM after memory-space assignment
  vmem_bytes: float      # operands and results the plan keeps in VMEM (XLA's count takes them as HBM)
  async_bytes: float     # of hbm_bytes: moved by asynchronous copies and slices


def _array_bytes(type_text: str) -> tuple[int, int]:
  """(bytes in HBM, bytes in VMEM) of the arrays an HLO type names."""
  hbm = vmem = 0
  for dtype, dims, layout in _ARRAY.findall(type_text):
    size = _BYTES[dtype]
    for dim in filter(None, dims.split(",")):
      size *= int(dim)
    space = _MEMORY_SPACE.search(layout or "")
    if space is None:
      hbm += size
    elif space.group(1) == _VMEM:
      vmem += size
    # other spaces (scalar memory, semaphores) are neither
  return hbm, vmem


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
  """Instruction lines of each computation (multi-line attributes joined) and the entry's name."""
  computations, current, entry = {}, None, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header and not line.startswith(" "):
      current = header.group(2)
      computations[current] = []
      entry = current if header.group(1) else entry
    elif line.rstrip() == "}":
      current = None
    elif current is not None:
      if line.startswith("  "):
        computations[current].append(line.strip())
      elif computations[current]:  # a kernel's metadata spans lines: it belongs to the instruction above
        computations[current][-1] += line
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return computations, entry


def _operands(arguments: str) -> list[str]:
  return re.findall(r"%([\w.\-]+)", arguments.split("), ")[0])


def estimate(hlo_text: str) -> Traffic:
  """The HBM traffic of one execution of the compiled module `hlo_text` (`compiled.as_text()`)."""
  computations, entry = _computations(hlo_text)
  totals = {"hbm": 0.0, "vmem": 0.0, "async": 0.0}

  def walk(name: str, times: int) -> None:
    instructions = {}  # result -> (type, opcode, the rest of the line), in program order
    for line in computations[name]:
      parsed = _INSTRUCTION.match(line)
      if parsed:
        instructions[parsed.group(1)] = parsed.groups()[1:]
    types = {result: type_text for result, (type_text, _, _) in instructions.items()}
    for type_text, opcode, rest in instructions.values():
      if opcode == "while":
        body = re.search(r"body=%?([\w.\-]+)", rest).group(1)
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
        walk(body, times * (int(trips.group(1)) if trips else 1))
        continue
      if opcode in ("call", "conditional"):
        for called in re.findall(r"(?:to_apply|calls|branch_computations)=\{?([^}]*?)\}?(?:,|$)", rest):
          for callee in (c.strip().lstrip("%") for c in called.split(",")):
            if callee in computations:
              walk(callee, times)
        continue
      if opcode in _FREE or (opcode == "custom-call" and "tpu_custom_call" in rest):
        continue
      if opcode in _ASYNC_DONE:
        start = instructions.get(_operands(rest)[0])
        source = _operands(start[2]) if start else []
        source_hbm, source_vmem = _array_bytes(types.get(source[0], "")) if source else (0, 0)
        out_hbm, out_vmem = _array_bytes(type_text)
        both_in_hbm = out_hbm and source_hbm and not source_vmem
        moved = (out_hbm + out_vmem) * (2 if both_in_hbm else 1)
        totals["hbm"] += times * moved
        totals["async"] += times * moved
        continue
      hbm, vmem = _array_bytes(type_text)
      for operand in _operands(rest):
        operand_hbm, operand_vmem = _array_bytes(types.get(operand, ""))
        hbm, vmem = hbm + operand_hbm, vmem + operand_vmem
      totals["hbm"] += times * hbm
      totals["vmem"] += times * vmem

  walk(entry, 1)
  return Traffic(totals["hbm"], totals["vmem"], totals["async"])
