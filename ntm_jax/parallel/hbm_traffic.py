"""HBM traffic of a compiled TPU program after memory-space assignment, read from its scheduled HLO.

XLA's cost analysis ("bytes accessed") counts every operand and result of every op as if it lived in HBM.
The TPU compiler's memory-space assignment keeps many of them in on-chip VMEM instead (their layouts carry
memory space `S(1)`) and moves data between the two with asynchronous copies and slices. This estimate
counts what crosses HBM: the operands and results of each top-level op that are in the default memory
space (an asynchronous op once, at its done), each asynchronous copy or slice between HBM and VMEM once at
its size (twice from HBM to HBM), loop bodies as many times as their known trip count (once where it is not
known) and the largest branch of a conditional. Pallas kernels are left out: the attention kernels' own
estimate (ntm_jax.models.attention) stands for them. Like XLA's count it takes each HBM operand as read
once; it is an estimate from the compiler's plan, not a profile of a chip.
"""

from __future__ import annotations

import dataclasses
import re

_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3fnuz": 1,
          "f8e5m2fnuz": 1, "f8e4m3b11fnuz": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4,
          "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_BYTES, key=len, reverse=True)) + r")\[([0-9,<=]*)\](\{[^}]*\})?")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
_INSTRUCTION = re.compile(r"^(?:ROOT )?%?([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$")
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")
_VMEM = "1"
# Ops that move no data themselves (views, tuples, constants); an asynchronous op's traffic is its done's.
_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all", "partition-id",
         "replica-id", "opt-barrier"}
_MOVES = {"copy-done", "slice-done"}  # a transfer between memories: its size, not operand plus result


@dataclasses.dataclass(frozen=True)
class Traffic:
  hbm_bytes: float = 0.0    # what crosses HBM after memory-space assignment
  vmem_bytes: float = 0.0   # operands and results the plan keeps in VMEM (XLA's count takes them as HBM)
  async_bytes: float = 0.0  # of hbm_bytes: moved by asynchronous copies and slices

  def __add__(self, other: Traffic) -> Traffic:
    return Traffic(self.hbm_bytes + other.hbm_bytes, self.vmem_bytes + other.vmem_bytes,
                   self.async_bytes + other.async_bytes)

  def times(self, count: int) -> Traffic:
    return Traffic(self.hbm_bytes * count, self.vmem_bytes * count, self.async_bytes * count)


def _array_bytes(type_text: str) -> tuple[float, float]:
  """(bytes in HBM, bytes in VMEM) of the arrays an HLO type names (a bounded dimension at its bound)."""
  hbm = vmem = 0.0
  for dtype, dims, layout in _ARRAY.findall(type_text):
    size = _BYTES[dtype]
    for dim in filter(None, dims.replace("<=", "").split(",")):
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
    lines = computations.get(current)
    # A kernel's metadata spans lines: until its braces close, a line belongs to the instruction above.
    open_instruction = bool(lines) and lines[-1].count("{") > lines[-1].count("}")
    if header and not line.startswith(" ") and not open_instruction:
      current = header.group(2)
      computations[current] = []
      entry = current if header.group(1) else entry
    elif open_instruction:
      lines[-1] += line
    elif line.rstrip() == "}":
      current = None
    elif current is not None and line.startswith("  "):
      lines.append(line.strip())
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return computations, entry


def _operands(arguments: str) -> list[str]:
  return re.findall(r"%([\w.\-]+)", arguments.split("), ")[0])


def _called(rest: str, attribute: str) -> list[str]:
  """The computations an instruction names in `attribute=%c` or `attribute={%a, %b}`."""
  found = re.search(attribute + r"=(\{[^}]*\}|%?[\w.\-]+)", rest)
  return [] if found is None else [c.strip().lstrip("%") for c in found.group(1).strip("{}").split(",")]


def estimate(hlo_text: str) -> Traffic:
  """The HBM traffic of one execution of the compiled module `hlo_text` (`compiled.as_text()`)."""
  computations, entry = _computations(hlo_text)

  def walk(name: str) -> Traffic:
    instructions = {}  # result -> (type, opcode, the rest of the line), in program order
    for line in computations.get(name, ()):
      parsed = _INSTRUCTION.match(line)
      if parsed:
        instructions[parsed.group(1)] = parsed.groups()[1:]
    total = Traffic()
    for type_text, opcode, rest in instructions.values():
      if opcode == "while":
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
        total += walk(_called(rest, "body")[0]).times(int(trips.group(1)) if trips else 1)
        continue
      if opcode == "call":
        total += sum((walk(c) for c in _called(rest, "to_apply")), Traffic())
        continue
      if opcode == "conditional":
        branches = (_called(rest, "branch_computations")
                    or _called(rest, "true_computation") + _called(rest, "false_computation"))
        total += max((walk(b) for b in branches), key=lambda t: t.hbm_bytes, default=Traffic())
        continue
      if opcode in _FREE or opcode.endswith("-start") or (opcode == "custom-call" and "tpu_custom_call" in rest):
        continue
      operands = _operands(rest)
      if opcode.endswith("-done"):  # the start holds the operands
        start = instructions.get(operands[0]) if operands else None
        operands = _operands(start[2]) if start else []
      if opcode in _MOVES:
        source_hbm, source_vmem = _array_bytes(instructions.get(operands[0], ("",))[0]) if operands else (0, 0)
        out_hbm, out_vmem = _array_bytes(type_text)
        moved = ((out_hbm + out_vmem) * (2 if out_hbm and source_hbm and not source_vmem else 1)
                 if out_hbm or source_hbm else 0)  # VMEM to VMEM moves nothing through HBM
        total += Traffic(moved, 0, moved)
        continue
      hbm, vmem = _array_bytes(type_text)
      for operand in operands:
        operand_hbm, operand_vmem = _array_bytes(instructions.get(operand, ("",))[0])
        hbm, vmem = hbm + operand_hbm, vmem + operand_vmem
      total += Traffic(hbm, vmem)
    return total

  return walk(entry)
