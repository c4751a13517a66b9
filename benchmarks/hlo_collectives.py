"""Per-step communication volume read from a compiled program's HLO text.

`collective_bytes(compiled.as_text())` finds every cross-device collective of the optimised
program (all-reduce, reduce-scatter, all-gather, all-to-all, collective-permute; the "-start" half
of the asynchronous GPU forms, never the "-done" half) and sums, per kind, the bytes of its
operands. The optimised text names operands without their shapes (`all-reduce(%fusion.3, ...)`),
so every instruction's result shape is indexed first (instruction names are unique in a module)
and operands are looked up by name.

Bytes on the wire per device, for a group of n devices and NCCL's ring algorithms, from the
operand bytes B (a model of a real interconnect: forced CPU devices of one process exchange
through shared memory):
* all-reduce 2(n-1)/n x B (a reduce-scatter then an all-gather of B/n pieces),
* reduce-scatter (n-1)/n x B (B = the full, unreduced operand),
* all-gather (n-1) x B (B = this device's shard),
* all-to-all (n-1)/n x B,
* collective-permute B (each source sends its buffer once).
A collective inside a loop body (train.micro_batches > 1 runs a scan) is counted once.
"""
from __future__ import annotations

import dataclasses
import math
import re

# Bytes per element of HLO primitive types (fp8 variants: 1).
_ELEMENT_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                  "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$")
KINDS = ("all-reduce", "reduce-scatter", "all-gather", "all-to-all", "collective-permute")
# Wire bytes per device / operand bytes, for a group of n (see the module docstring).
WIRE_FACTOR = {"all-reduce": lambda n: 2 * (n - 1) / n, "reduce-scatter": lambda n: (n - 1) / n,
               "all-gather": lambda n: n - 1, "all-to-all": lambda n: (n - 1) / n,
               "collective-permute": lambda n: 1.0}


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string: an array `f32[3,3,64]{2,1,0}` or a tuple of them."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype.startswith("f8") or dtype.startswith("f4"):
            size = 1.0
        elif dtype in _ELEMENT_BYTES:
            size = _ELEMENT_BYTES[dtype]
        else:
            continue  # token[] and the like
        total += size * math.prod(int(d) for d in dims.split(",") if d)
    return int(total)


def group_size(attributes: str, devices: int) -> int:
    """Devices per replica group, from `replica_groups=` in any of the printed forms:
    {{0,1},{2,3}}, an iota list [G,S]<=[N], or mesh['data'=4,'fsdp'=2] {'data'} (sub-axes as
    'fsdp':(2)2); an empty or missing list means all `devices`."""
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attributes)
    if m:
        sizes = {name: int(size) for name, size in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
        return math.prod(int(sub) if sub else sizes[name]
                         for name, _, sub in re.findall(r"'([^']+)'(?::\((\d+)\)(\d+))?", m.group(2)))
    m = re.search(r"replica_groups=\[([\d,]+)\]<=", attributes)
    if m:
        return int(m.group(1).split(",")[-1])
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", attributes)
    if m and m.group(1):
        return len(m.group(1).split(","))
    return devices


@dataclasses.dataclass
class Collectives:
    """Per kind: how many ops, their operand bytes and the ring model's wire bytes per device."""
    count: dict[str, int]
    operand_bytes: dict[str, int]
    wire_bytes: dict[str, float]

    @property
    def total_operand_bytes(self) -> int:
        return sum(self.operand_bytes.values())

    @property
    def total_wire_bytes(self) -> float:
        return sum(self.wire_bytes.values())


def collective_bytes(hlo_text: str, devices: int) -> Collectives:
    """The collectives of an optimised HLO module (`compiled.as_text()`) on `devices` devices."""
    shapes: dict[str, str] = {}
    found: list[tuple[str, str, str]] = []  # (kind, operand text, attributes)
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, shape, opcode, rest = m.groups()
        shapes[name] = shape
        kind = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
        if kind in KINDS:
            operands, _, attributes = rest.partition(")")
            found.append((kind, operands, attributes))
    count = dict.fromkeys(KINDS, 0)
    operand_bytes = dict.fromkeys(KINDS, 0)
    wire = dict.fromkeys(KINDS, 0.0)
    for kind, operands, attributes in found:
        size = sum(shape_bytes(shapes.get(op, "")) for op in re.findall(r"%([\w.\-]+)", operands))
        n = group_size(attributes, devices)
        count[kind] += 1
        operand_bytes[kind] += size
        wire[kind] += WIRE_FACTOR[kind](n) * size if n > 1 or kind == "collective-permute" else 0.0
    return Collectives(count, operand_bytes, wire)
