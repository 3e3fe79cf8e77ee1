"""The sequencer's descriptor checks against the executor's, on randomly broken descriptors.

The sequencer runs alone in amaranth.sim (``Sequencer.for_config``: JacquardCore's, with its
buffer limits): a testbench serves its header and descriptor reads from a program image, and each case
ends when the sequencer stops with an error or starts the layer's first group. Every case must
give the verdict of ``validate_program`` (the executor's checks, in the executor's order): the
same ErrorCode, ERROR_FIELD and ERROR_ADDR, or none. The descriptors start as valid random layers
of every kind and get one to three faults: a field at a random or extreme value, a field off by
one or two, an address moved next to or into another region or out of the window, a smaller
window.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from amaranth.sim import Simulator
from test_core import KINDS, Image, random_layer
from test_isa import random_field_value

from jacquard.rtl.sequencer import Sequencer
from jacquard.sim.isa import (
    CONFIGS,
    DESCRIPTOR_FIELDS,
    NO_FIELD,
    DescriptorError,
    ErrorCode,
    LayerDescriptor,
    Program,
    field_index,
    validate_program,
)

CFG = CONFIGS["sim-small"]
_INT_FIELDS = [f for f in DESCRIPTOR_FIELDS
               if f.kind not in ("f32", "op") and not f.name.startswith("reserved")]
_ADDR_FIELDS = ("in_addr", "in2_addr", "weights_addr", "params_addr", "lut_addr", "out_addr")


def _mutate(rng: random.Random, d: LayerDescriptor, size: int) -> LayerDescriptor:
    f = rng.choice(_INT_FIELDS)
    lo, hi = f.bounds()
    how = rng.choice(["random", "extreme", "nudge", "nudge", "address", "address", "overlap"])
    if how == "overlap":  # the output onto an input, the weights or the program, or the reverse
        name = rng.choice([n for n in _ADDR_FIELDS if n != "out_addr"])
        shift = rng.randrange(-2, 3) * CFG.dma_align
        if rng.random() < 0.3:
            return dataclasses.replace(d, out_addr=rng.randrange(0, 0x100, CFG.dma_align))
        if rng.random() < 0.5:
            return dataclasses.replace(d, out_addr=max(0, min(getattr(d, name) + shift, (1 << 32) - 1)))
        return dataclasses.replace(d, **{name: max(0, min(d.out_addr + shift, (1 << 32) - 1))})
    if how == "address":
        name = rng.choice(_ADDR_FIELDS)
        other = getattr(d, rng.choice(_ADDR_FIELDS))
        value = rng.choice([other + rng.choice([-CFG.dma_align, 0, CFG.dma_align, 1]),
                            size - rng.randrange(0, 4 * CFG.dma_align),
                            rng.randrange(0, 0x400, CFG.dma_align),
                            (1 << 32) - CFG.dma_align])
        return dataclasses.replace(d, **{name: max(0, min(value, (1 << 32) - 1))})
    if how == "random":
        value = random_field_value(f, rng)
    elif how == "extreme":
        value = rng.choice([lo, hi])
    else:
        value = getattr(d, f.name) + rng.choice([-2, -1, 1, 2])
    if f.kind == "bool":
        value = bool(value & 1) if isinstance(value, int) else value
    return dataclasses.replace(d, **{f.name: max(lo, min(value, hi)) if f.kind != "bool" else value})


def _cases(seed: int, n: int) -> list[tuple[bytes, int, tuple | None]]:
    """``n`` (program bytes, window limit, the executor's verdict) with about 1 in 6 left valid."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        img = Image(CFG, 1 << 13)
        d, _ = random_layer(nrng, img, rng.choice(["conv", *KINDS]), small=True)
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            d = _mutate(rng, d, img.size)
        limit = img.size if rng.random() < 0.8 else img.top - rng.randrange(0, 256)
        prog = Program.for_config(CFG, [d])
        raw = prog.to_bytes()
        try:
            validate_program(Program.from_bytes(raw, CFG), CFG, 0, limit, prog_addr=0)
            want = None
        except DescriptorError as e:
            want = (e.code, field_index(e.field) if e.field else NO_FIELD, e.address or 0)
        out.append((raw, limit, want))
    return out


def _run(cases: list[tuple[bytes, int, tuple | None]]) -> list[tuple | None]:
    seq = Sequencer.for_config(CFG)
    got: list[tuple | None] = []

    async def tb(ctx):
        for s, v in ((seq.rd_cmd.ready, 1), (seq.wr_cmd.ready, 1), (seq.datapath_idle, 1),
                     (seq.weights_loaded, 1), (seq.prog_base, 0), (seq.window_base, 0)):
            ctx.set(s, v)
        for raw, limit, _ in cases:
            ctx.set(seq.prog_len, len(raw))
            ctx.set(seq.window_limit, limit)
            ctx.set(seq.start, 1)
            await ctx.tick()
            ctx.set(seq.start, 0)
            words: list[int] = []
            for _ in range(5000):
                if ctx.get(seq.group_start):
                    got.append(None)
                    ctx.set(seq.abort, 1)
                    await ctx.tick()
                    ctx.set(seq.abort, 0)
                    break
                if not ctx.get(seq.busy):
                    got.append((ErrorCode(ctx.get(seq.error_code)), ctx.get(seq.error_field),
                                ctx.get(seq.error_addr)))
                    break
                if ctx.get(seq.rd_cmd.valid) and ctx.get(seq.rd_target).name == "DESC":
                    addr, n = ctx.get(seq.rd_cmd.payload.addr), ctx.get(seq.rd_cmd.payload.inner_bytes)
                    words += [int.from_bytes(raw[a:a + 4], "little") for a in range(addr, addr + n, 4)]
                ctx.set(seq.desc_word.valid, bool(words))
                if words:
                    ctx.set(seq.desc_word.payload, words.pop(0))
                await ctx.tick()
            else:
                raise AssertionError(f"case {len(got)}: the sequencer neither stopped nor started the layer")
            for _ in range(4):  # back to IDLE after an abort
                await ctx.tick()

    sim = Simulator(seq)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return got


@pytest.mark.parametrize("seed", [pytest.param(s, marks=pytest.mark.slow) if s else s for s in range(4)])
def test_sequencer_checks_match_executor(seed):
    cases = _cases(seed, 80)
    got = _run(cases)
    refused = sum(want is not None for _, _, want in cases)
    assert 10 <= refused < len(cases), f"seed={seed}: {refused} of {len(cases)} refused: the mix is off"
    for k, ((raw, limit, want), have) in enumerate(zip(cases, got, strict=True)):
        d = Program.from_bytes(raw, CFG).descriptors[0]
        assert have == want, (f"seed={seed} case {k}: sequencer {have}, executor {want} "
                              f"(limit {limit:#x}) for {d}")
