"""DmaReader + DmaWriter under cocotb with cocotbext-axi's AxiRam: Icarus short, Verilator longer (slow)."""

from pathlib import Path

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from jacquard.rtl.axi import AxiSignature
from jacquard.rtl.dma import DmaCommand
from jacquard.rtl.dma_reader import DmaReader, ReadWordLayout
from jacquard.rtl.dma_writer import DmaDoneLayout, DmaWriter
from jacquard.sim.cocotb_run import run_cocotb
from jacquard.sim.isa import ErrorCode

COCOTB_DIR = Path(__file__).parent / "cocotb"


class DmaPair(wiring.Component):
    """Test top: a reader and a writer sharing one AXI4 port, one window and one ``clear``."""

    def __init__(self, data_width: int = 64, max_burst: int = 16, max_outstanding: int = 4) -> None:
        self.reader = DmaReader(32, data_width, max_burst, max_outstanding)
        self.writer = DmaWriter(32, data_width, max_burst, max_outstanding)
        super().__init__({
            "rd_cmd": In(stream.Signature(DmaCommand())),
            "rd_o": Out(stream.Signature(ReadWordLayout(data_width))),
            "wr_cmd": In(stream.Signature(DmaCommand())),
            "wr_i": In(stream.Signature(data_width)),
            "wr_done": Out(stream.Signature(DmaDoneLayout())),
            "m_axi": Out(AxiSignature(32, data_width)),
            "window_base": In(32), "window_limit": In(32),
            "rd_abort": In(1), "wr_abort": In(1), "clear": In(1),
            "rd_error": Out(1), "rd_error_code": Out(ErrorCode), "rd_error_tag": Out(16), "rd_busy": Out(1),
            "wr_error": Out(1), "wr_error_code": Out(ErrorCode), "wr_error_tag": Out(16), "wr_busy": Out(1),
            "bytes_read": Out(range(data_width // 8 + 1)), "bytes_written": Out(range(data_width // 8 + 1)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.reader = rd = self.reader
        m.submodules.writer = wr = self.writer
        wiring.connect(m, wiring.flipped(self.rd_cmd), rd.cmd)
        wiring.connect(m, rd.o, wiring.flipped(self.rd_o))
        wiring.connect(m, wiring.flipped(self.wr_cmd), wr.cmd)
        wiring.connect(m, wiring.flipped(self.wr_i), wr.i)
        wiring.connect(m, wr.done, wiring.flipped(self.wr_done))
        for half in (rd, wr):
            for name, member in half.m_axi.signature.members.items():
                ours, theirs = getattr(self.m_axi, name), getattr(half.m_axi, name)
                m.d.comb += (ours.eq(theirs) if member.flow == Out else theirs.eq(ours))
            m.d.comb += [half.window_base.eq(self.window_base), half.window_limit.eq(self.window_limit),
                         half.clear.eq(self.clear)]
        m.d.comb += [
            rd.abort.eq(self.rd_abort), wr.abort.eq(self.wr_abort),
            self.rd_error.eq(rd.error), self.rd_error_code.eq(rd.error_code),
            self.rd_error_tag.eq(rd.error_tag), self.rd_busy.eq(rd.busy),
            self.wr_error.eq(wr.error), self.wr_error_code.eq(wr.error_code),
            self.wr_error_tag.eq(wr.error_tag), self.wr_busy.eq(wr.busy),
            self.bytes_read.eq(rd.bytes_read), self.bytes_written.eq(wr.bytes_written),
        ]
        return m


def run(simulator, data_width=64, max_outstanding=4, testcase=None, **parameters):
    run_cocotb(DmaPair(data_width, 16, max_outstanding), "cocotb_dma", simulator=simulator,
               test_dir=COCOTB_DIR, name=f"dma_{data_width}_{max_outstanding}", testcase=testcase,
               parameters={"max_outstanding": max_outstanding, **parameters})


def test_dma_icarus():
    run("icarus", seed=1, commands=12)


def test_dma_verilator_short():
    run("verilator", seed=2, commands=10, latency=7, testcase="random_reads_and_writes")


@pytest.mark.slow
@pytest.mark.parametrize(("data_width", "seed", "latency"), [(64, 11, 0), (64, 12, 20), (32, 13, 5),
                                                             (128, 14, 13)])
def test_dma_verilator(data_width, seed, latency):
    run("verilator", data_width, seed=seed, commands=40, latency=latency)


@pytest.mark.slow
@pytest.mark.parametrize(("max_outstanding", "latency", "min_rate"), [(1, 0, None), (1, 20, None),
                                                                      (4, 0, 0.9), (4, 20, 0.9)])
def test_dma_read_throughput(max_outstanding, latency, min_rate):
    run("verilator", 64, max_outstanding, testcase="read_throughput", latency=latency, beats=4096,
        min_rate=min_rate)
