"""The HBM traffic of a compiled program after memory-space assignment, on a hand-written scheduled HLO module
whose every byte is known."""

import pytest

from ntm_jax.parallel import hbm_traffic

# f32[256] is 1 KiB. `a` and `b` live in HBM; `S(1)` places an array in VMEM; a Pallas kernel's metadata
# spans lines (its `}}` line must not end the computation).
MODULE = """HloModule jit_step, is_scheduled=true

%fused_negate (p: f32[256]) -> f32[256] {
  %p = f32[256]{0} parameter(0)
  ROOT %n = f32[256]{0} negate(%p)
}

%body (t: (s32[], f32[256])) -> (s32[], f32[256]) {
  %t = (s32[], f32[256]{0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %x = f32[256]{0} get-tuple-element(%t), index=1
  %y = f32[256]{0} fusion(%x), kind=kLoop, calls=%fused_negate
  ROOT %r = (s32[], f32[256]{0}) tuple(%i, %y)
}

ENTRY %main (a: f32[256], b: f32[256]) -> f32[256] {
  %a = f32[256]{0} parameter(0)
  %b = f32[256]{0} parameter(1)
  %copy-start.1 = (f32[256]{0}, f32[256]{0:S(1)}, u32[]{:S(2)}) copy-start(%a)
  %copy-done.1 = f32[256]{0:S(1)} copy-done(%copy-start.1)
  %in_vmem = f32[256]{0:S(1)} fusion(%copy-done.1), kind=kLoop, calls=%fused_negate
  %to_hbm = f32[256]{0} fusion(%in_vmem, %b), kind=kLoop, calls=%fused_negate
  %kernel = f32[256]{0} custom-call(%to_hbm), custom_call_target="tpu_custom_call", frontend_attributes={kernel_metadata={
"xprof_metadata":"{}"
}}, metadata={op_name="pallas_call"}
  %copy.2 = f32[256]{0} copy(%kernel)
  %zero = s32[] constant(0)
  %start = (s32[], f32[256]{0}) tuple(%zero, %copy.2)
  %loop = (s32[], f32[256]{0}) while(%start), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %out = f32[256]{0} get-tuple-element(%loop), index=1
}
"""
KIB = 1024


def test_counts_what_crosses_hbm_and_leaves_vmem_out():
  traffic = hbm_traffic.estimate(MODULE)
  # copy-done: 1 KiB into VMEM; the VMEM fusion: nothing; the fusion writing HBM: reads b, writes 1 KiB;
  # the kernel: left to the kernels' own estimate; the HBM-to-HBM copy: 2 KiB; the loop body: 2 KiB, 3 times.
  assert traffic.async_bytes == 1 * KIB
  assert traffic.hbm_bytes == (1 + 2 + 2 + 3 * 2) * KIB
  # The VMEM fusion's operand and result, and the VMEM operand of the fusion that writes HBM.
  assert traffic.vmem_bytes == 3 * KIB


def test_a_copy_between_two_hbm_buffers_counts_both_ends():
  module = MODULE.replace("%copy-done.1 = f32[256]{0:S(1)}", "%copy-done.1 = f32[256]{0}").replace(
      "(f32[256]{0}, f32[256]{0:S(1)}, u32[]{:S(2)}) copy-start", "(f32[256]{0}, f32[256]{0}, u32[]{:S(2)}) copy-start")
  assert hbm_traffic.estimate(module).async_bytes == 2 * KIB


def test_text_without_an_entry_is_refused():
  with pytest.raises(ValueError, match="no ENTRY computation"):
    hbm_traffic.estimate("HloModule empty\n")


# More of the rules: a slice into VMEM, copies out of and within VMEM, an asynchronous all-gather, a call,
# a conditional (its largest branch), a loop of unknown trip count (once), and metadata whose closing brace
# stands alone on its line.
RULES = """HloModule jit_rules, is_scheduled=true

%small (p: f32[256]) -> f32[256] {
  %p = f32[256]{0} parameter(0)
  ROOT %n = f32[256]{0} negate(%p)
}

%big (p: f32[256]) -> f32[1024] {
  %p = f32[256]{0} parameter(0)
  ROOT %b = f32[1024]{0} broadcast(%p), dimensions={}
}

%loop_body (x: f32[256]) -> f32[256] {
  %x = f32[256]{0} parameter(0)
  ROOT %y = f32[256]{0} negate(%x)
}

ENTRY %main (a: f32[1024], b: f32[256], i: s32[]) -> f32[256] {
  %a = f32[1024]{0} parameter(0)
  %b = f32[256]{0} parameter(1)
  %i = s32[] parameter(2)
  %slice-start.1 = ((f32[1024]{0}), f32[256]{0:S(1)}, s32[]{:S(2)}) slice-start(%a), slice={[0:256]}
  %slice-done.1 = f32[256]{0:S(1)} slice-done(%slice-start.1)
  %copy-start.2 = (f32[256]{0:S(1)}, f32[256]{0}, u32[]{:S(2)}) copy-start(%slice-done.1)
  %copy-done.2 = f32[256]{0} copy-done(%copy-start.2)
  %copy-start.3 = (f32[256]{0:S(1)}, f32[256]{0:S(1)}, u32[]{:S(2)}) copy-start(%slice-done.1)
  %copy-done.3 = f32[256]{0:S(1)} copy-done(%copy-start.3)
  %all-gather-start = (f32[256]{0}, f32[1024]{0}) all-gather-start(%b), dimensions={0}, frontend_attributes={a={
"b":"c"
}
}
  %all-gather-done = f32[1024]{0} all-gather-done(%all-gather-start)
  %called = f32[256]{0} call(%b), to_apply=%small
  %branch = f32[1024]{0} conditional(%i, %b, %b), branch_computations={%small, %big}
  %loop = f32[256]{0} while(%b), condition=%cond, body=%loop_body
  ROOT %out = f32[256]{0} negate(%copy-done.3)
}
"""


def test_async_ops_calls_conditionals_and_loops():
  traffic = hbm_traffic.estimate(RULES)
  # Into VMEM 1 KiB, out of it 1 KiB, within it nothing.
  assert traffic.async_bytes == 2 * KIB
  # The all-gather once at its done: 1 KiB in, 4 KiB out; the call 2 KiB; the larger branch 1 + 4 KiB;
  # the loop of unknown trip count once, 2 KiB; the root reads VMEM and writes 1 KiB.
  assert traffic.hbm_bytes == (2 + 5 + 2 + 5 + 2 + 1) * KIB
  assert traffic.vmem_bytes == 1 * KIB  # the root's VMEM operand
