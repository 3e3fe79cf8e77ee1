"""Formal proofs of the stream protocol (issue 4) with yowasp-sby and ABC: the FIFOs of the datapath,
the core's skid buffer, the line buffer and the post-processor, each next to a deliberately broken
twin that must fail with a counterexample (so that a passing proof is known to be able to fail).

Every run prints its unit, parameters, engine and verdict; a failure prints the counterexample's
witness path, the failing assertion and the inputs cycle by cycle. ``prove`` is ``abc pdr``
(unbounded); ``bmc`` is ``abc bmc3`` to the depth given (bounded: no failure within that many
cycles from reset).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from amaranth.hdl import Assert, Module, Signal, unsigned
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from jacquard.rtl import line_buffer as line_buffer_module
from jacquard.rtl import postproc as postproc_module
from jacquard.rtl.core import _Skid
from jacquard.rtl.layouts import out_layout, tap_layout
from jacquard.rtl.line_buffer import LineBuffer
from jacquard.rtl.postproc import PostProcessor
from jacquard.sim.formal import FormalResult, StreamHarness, no_overflow, run_sby

# sby's own timeout: ends a runaway proof (and its ABC) cleanly with status TIMEOUT.
TIMEOUT = 900


def _run(harness: StreamHarness, tmp_path, name: str, what: str, mode: str = "prove",
         depth: int | None = None) -> FormalResult:
    result = run_sby(harness, harness.ports, tmp_path, name=name, mode=mode, depth=depth, timeout=TIMEOUT)
    print(f"{what}: {result.summary()}")
    if result.status == "FAIL":
        print(result.counterexample())
    return result


def _expect_pass(result: FormalResult) -> None:
    assert result.status == "PASS", f"{result.summary()}\n{result.counterexample()}"


def _expect_fail(result: FormalResult, message: str) -> None:
    assert result.status == "FAIL", result.summary()
    assert result.trace is not None and result.trace.exists(), result.summary()
    assert any(message in failed for failed, _ in result.failed), result.summary()


# ---- FIFOs -------------------------------------------------------------------------------------

class _FifoStream(wiring.Component):
    """A ``lib.fifo`` FIFO between two streams, wired as the datapath wires its output FIFOs."""

    def __init__(self, width: int, depth: int, factory=fifo.SyncFIFOBuffered) -> None:
        self._width, self._depth, self._factory = width, depth, factory
        super().__init__({"i": In(stream.Signature(width)), "o": Out(stream.Signature(width))})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.fifo = f = self._factory(width=self._width, depth=self._depth)
        m.d.comb += [f.w_data.eq(self.i.payload), f.w_en.eq(self.i.valid), self.i.ready.eq(f.w_rdy),
                     self.o.payload.eq(f.r_data), self.o.valid.eq(f.r_rdy), f.r_en.eq(self.o.ready)]
        return m


class _OverwritingFifo(wiring.Component):
    """Broken: a two-entry FIFO that is always ready and overwrites its newest entry when full."""

    def __init__(self, width: int) -> None:
        super().__init__({"i": In(stream.Signature(width)), "o": Out(stream.Signature(width))})

    def elaborate(self, platform) -> Module:
        m = Module()
        head, tail = Signal.like(self.i.payload), Signal.like(self.i.payload)
        level = Signal(range(3))
        m.d.comb += [self.i.ready.eq(1), self.o.valid.eq(level != 0), self.o.payload.eq(head)]
        pop, push = self.o.valid & self.o.ready, self.i.valid
        with m.Switch(level):
            with m.Case(0):
                with m.If(push):
                    m.d.sync += [head.eq(self.i.payload), level.eq(1)]
            with m.Case(1):
                with m.If(pop & push):
                    m.d.sync += head.eq(self.i.payload)
                with m.Elif(pop):
                    m.d.sync += level.eq(0)
                with m.Elif(push):
                    m.d.sync += [tail.eq(self.i.payload), level.eq(2)]
            with m.Default():
                with m.If(pop):
                    m.d.sync += head.eq(tail)
                with m.If(push):
                    m.d.sync += tail.eq(self.i.payload)     # the bug, when not popping: overwritten
                with m.Elif(pop):
                    m.d.sync += level.eq(1)
        return m


class _BlinkingFifo(_FifoStream):
    """Broken: the FIFO's valid is masked every other cycle, so it drops without ready."""

    def elaborate(self, platform) -> Module:
        m = super().elaborate(platform)
        blink = Signal()
        m.d.sync += blink.eq(~blink)
        fifo_ = m.submodules.fifo
        m.d.comb += [self.o.valid.eq(fifo_.r_rdy & blink), fifo_.r_en.eq(self.o.ready & blink)]
        return m


# The datapath's FIFOs (width, depth): the line buffer's tap FIFO at c_par = 1 (10 deep), the PE
# array's result FIFOs (32 bits, 16 or 32 deep), the post-processor's output FIFO at oc_par = 2
# (17 deep with n_requant = 1, 33 with n_requant = 2).
DATAPATH_FIFOS = [(tap_layout(1).size, 10), (32, 16), (32, 32), (16, 17), (16, 33)]


@pytest.mark.parametrize("width, depth", [(tap_layout(1).size, 10)])
def test_fifo_protocol(tmp_path, width, depth):
    # Protocol on o under any input, conservation, and at most `depth` beats inside.
    harness = StreamHarness(_FifoStream(width, depth), conserve=("i", "o"), capacity=depth)
    _expect_pass(_run(harness, tmp_path, "fifo", f"SyncFIFOBuffered(width={width}, depth={depth})"))


@pytest.mark.slow
@pytest.mark.parametrize("width, depth", DATAPATH_FIFOS[1:])
def test_fifo_protocol_datapath(tmp_path, width, depth):
    harness = StreamHarness(_FifoStream(width, depth), conserve=("i", "o"), capacity=depth)
    _expect_pass(_run(harness, tmp_path, "fifo", f"SyncFIFOBuffered(width={width}, depth={depth})"))


# In-order delivery, width 4: the FIFO stores each data bit in its own memory column with the same
# pointers, so the bits are independent and 4 bits say what 32 would.
def test_fifo_order(tmp_path):
    harness = StreamHarness(_FifoStream(4, 4), conserve=("i", "o"), capacity=4, order=True)
    _expect_pass(_run(harness, tmp_path, "fifo", "SyncFIFOBuffered(width=4, depth=4), in order"))


@pytest.mark.slow
@pytest.mark.parametrize("depth", [10, 16])
def test_fifo_order_deep(tmp_path, depth):
    # Unbounded at the line buffer's FIFO depth (10: a 9-entry memory whose pointers wrap at a
    # non-power of two; 15 s with abc pdr) and the PE array's (16: 205 s), width 1 by the same
    # independence of the bits. 32 and 33 are out of reach (bmc3 is slower still here).
    harness = StreamHarness(_FifoStream(1, depth), conserve=("i", "o"), capacity=depth, order=True)
    _expect_pass(_run(harness, tmp_path, "fifo", f"SyncFIFOBuffered(width=1, depth={depth}), in order"))


def test_fifo_negative_valid_drops(tmp_path):
    harness = StreamHarness(_BlinkingFifo(4, 4))
    result = _run(harness, tmp_path, "blinking", "broken FIFO (valid blinks)")
    _expect_fail(result, "o: valid dropped before ready")


@pytest.mark.slow
def test_fifo_negative_overwrite(tmp_path):
    # Always ready and overwriting when full: more beats inside than it can hold, and one is lost.
    harness = StreamHarness(_OverwritingFifo(4), conserve=("i", "o"), capacity=2, order=True)
    _expect_fail(_run(harness, tmp_path, "overwrite", "broken FIFO (overwrites when full)"), "i->o:")


def test_fifo_negative_order_only(tmp_path):
    # Without the capacity assertion the order check alone must catch the lost beat.
    harness = StreamHarness(_OverwritingFifo(4), conserve=("i", "o"), order=True)
    result = _run(harness, tmp_path, "overwrite_order", "broken FIFO (overwrites when full), order only")
    _expect_fail(result, "i->o:")
    assert not any("beats inside" in failed for failed, _ in result.failed), result.summary()


# ---- the core's skid buffer --------------------------------------------------------------------

class _LeakySkid(_Skid):
    """Broken: the output register also loads while the output is stalled (the skid never fills)."""

    def elaborate(self, platform) -> Module:
        m = Module()
        m.d.comb += self.i.ready.eq(1)
        m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload)]
        return m


def test_skid(tmp_path):
    harness = StreamHarness(_Skid(out_layout(2)), conserve=("i", "o"), capacity=2, order=True)
    _expect_pass(_run(harness, tmp_path, "skid", "core._Skid(out_layout(2)), in order"))


def test_skid_negative(tmp_path):
    harness = StreamHarness(_LeakySkid(unsigned(4)))
    _expect_fail(_run(harness, tmp_path, "leaky_skid", "broken skid (loads while stalled)"), "o:")


# ---- line buffer -------------------------------------------------------------------------------

def _line_buffer_harness(lb: LineBuffer) -> StreamHarness:
    # Configuration is a free input at every cycle: the unit samples it at `start` while idle and
    # documents no other precondition. A tap needs an input beat of the same frame: a frame starts
    # with `start` while idle, and the unit returns to idle only after its last tap has left.
    # Taps are issued against credits into a 10-deep FIFO written without a full check, so the
    # unit's no-drop claim is that this FIFO is never written while full.
    def checks(m, dut, dut_module):
        m.d.comb += no_overflow(dut_module.submodules.out_fifo, "line buffer out_fifo")

    return StreamHarness(lb, causal=("i", "o"), restart=lambda dut: dut.start & ~dut.busy, checks=checks)


# The smallest line buffer (two row slots of two beats); three row slots of eight beats, where
# kernel heights up to 3 and strides wrap the circular buffer. Unbounded proofs (abc pdr) take
# 25 s to minutes on a loaded machine, so the default tier checks the tiny one to 20 cycles (its
# first tap can be offered at cycle 12, see test_line_buffer_reaches_taps); bmc3 slows down
# steeply past that (5 s at 20 cycles, 13 s at 24, 55 s at 28).
LB_TINY = dict(c_par=1, max_width=2, max_channels=1, max_kh=1)
LB_SMALL = dict(c_par=1, max_width=4, max_channels=2, max_kh=3)


@pytest.mark.parametrize("params, mode, depth", [
    (LB_TINY, "bmc", 20),
    pytest.param(LB_TINY, "prove", None, marks=pytest.mark.slow),
    pytest.param(LB_SMALL, "prove", None, marks=pytest.mark.slow),
], ids=["tiny-bmc20", "tiny-prove", "small-prove"])
def test_line_buffer(tmp_path, params, mode, depth):
    lb = LineBuffer(**params)
    _expect_pass(_run(_line_buffer_harness(lb), tmp_path, "lb", f"LineBuffer({params})", mode=mode,
                      depth=depth))


def test_line_buffer_negative_fifo_too_small(tmp_path, monkeypatch):
    # Injected bug: the tap FIFO two entries shallower than the credits that guard it. The
    # overflow takes a config, the setup, one input beat and a stalled consumer: found by bmc.
    small = SimpleNamespace(SyncFIFOBuffered=lambda width, depth: fifo.SyncFIFOBuffered(width=width,
                                                                                        depth=depth - 2))
    monkeypatch.setattr(line_buffer_module, "fifo", small)
    lb = LineBuffer(**LB_TINY)
    _expect_fail(_run(_line_buffer_harness(lb), tmp_path, "lb_small_fifo", "LineBuffer with a short FIFO",
                      mode="bmc", depth=30), "written while full")


def test_line_buffer_reaches_taps(tmp_path):
    # Not vacuous: under the harness' assumptions the unit does emit taps (the assertion that it
    # never does must fail).
    def checks(m, dut, dut_module):
        m.d.comb += Assert(~dut.o.valid, "a tap is offered")

    harness = StreamHarness(LineBuffer(**LB_TINY), checks=checks)
    _expect_fail(_run(harness, tmp_path, "lb_reach", "LineBuffer reachability", mode="bmc", depth=30),
                 "a tap is offered")


# ---- post-processor ----------------------------------------------------------------------------

PP_TINY = dict(oc_par=2, n_requant=1, max_oc_tiles=1, lut=False)


def _postproc_harness(pp: PostProcessor) -> StreamHarness:
    # Every input stream (accumulators, parameters, LUT entries) follows the protocol; start and
    # the layer configuration are free at every cycle (the unit samples them at `start` and
    # refuses a start while busy with `error`, which documents no precondition). Each accumulator
    # beat gives one output beat; inside the unit are at most the beat being issued and the
    # FIFO's depth of issued beats (the registered credit `room`). The pipeline never stalls and
    # writes the output FIFO without a full check, so no beat may find it full.
    def checks(m, dut, dut_module):
        m.d.comb += no_overflow(dut_module.submodules.out_fifo, "post-processor out_fifo")

    return StreamHarness(pp, inputs=("i", "params", "lut"), conserve=("i", "o"),
                         capacity=pp.out_fifo_depth + 1, checks=checks)


# Depths: the first output beat is offered about `latency` + 4 cycles after reset (start, 2
# parameter beats, the beat's two groups, the pipeline, the FIFO: cycle 26 with the requantizer's
# 15 stages, see test_postproc_reaches_output), so `latency` + 9 cycles see it offered and
# stalled and `latency` + 19 see five beats queue behind a stalled consumer. Filling the 17-deep
# FIFO to the credit's limit takes about 60 cycles, beyond what bmc3 does in minutes here (40
# cycles: 17 s; 64: over 5 minutes), and abc pdr did not finish in 500 s.
@pytest.mark.parametrize("margin", [9, pytest.param(19, marks=pytest.mark.slow)])
def test_postproc(tmp_path, margin):
    pp = PostProcessor(**PP_TINY)
    _expect_pass(_run(_postproc_harness(pp), tmp_path, "pp", f"PostProcessor({PP_TINY})", mode="bmc",
                      depth=pp.latency + margin))


def test_postproc_negative_fifo_too_small(tmp_path, monkeypatch):
    # Injected bug: a 3-deep output FIFO behind a credit that allows the 17 it assumes, so that
    # the overflow is within bmc's reach.
    monkeypatch.setattr(postproc_module, "SyncFIFOBuffered",
                        lambda width, depth: fifo.SyncFIFOBuffered(width=width, depth=3))
    pp = PostProcessor(**PP_TINY)
    _expect_fail(_run(_postproc_harness(pp), tmp_path, "pp_small_fifo", "PostProcessor with a short FIFO",
                      mode="bmc", depth=40), "written while full")


@pytest.mark.slow
def test_postproc_reaches_output(tmp_path):
    # Not vacuous: under the harness' assumptions an output beat is offered within the default
    # tier's depth (at cycle 26 with the requantizer's 15 stages).
    def checks(m, dut, dut_module):
        m.d.comb += Assert(~dut.o.valid, "an output beat is offered")

    pp = PostProcessor(**PP_TINY)
    harness = StreamHarness(pp, inputs=("i", "params", "lut"), checks=checks)
    result = _run(harness, tmp_path, "pp_reach", "PostProcessor reachability", mode="bmc",
                  depth=pp.latency + 9)
    _expect_fail(result, "an output beat is offered")
