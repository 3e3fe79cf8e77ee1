"""AxiLiteSignature's Verilog names bind to cocotbext-axi: AxiLiteMaster drives a tiny register file."""

from pathlib import Path

from amaranth.hdl import Array, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from jacquard.rtl.axi import AxiLiteSignature, AxiSignature
from jacquard.sim.cocotb_run import run_cocotb, to_verilog

COCOTB_DIR = Path(__file__).parent / "cocotb"


class ScratchRegs(wiring.Component):
    """Four 32-bit registers at 0x0..0xC on an AXI4-Lite slave port (byte strobes honoured)."""

    s_axil: In(AxiLiteSignature(12, 32))

    def elaborate(self, platform) -> Module:
        m = Module()
        bus = self.s_axil
        regs = Array(Signal(32, name=f"reg{i}") for i in range(4))
        # Write: take AW and W together, then answer B.
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)
        go = bus.awvalid & bus.wvalid & ~bus.bvalid
        m.d.comb += [bus.awready.eq(go), bus.wready.eq(go)]
        with m.If(go):
            reg = regs[bus.awaddr[2:4]]
            for b in range(4):
                with m.If(bus.wstrb[b]):
                    m.d.sync += reg[8 * b:8 * b + 8].eq(bus.wdata[8 * b:8 * b + 8])
            m.d.sync += [bus.bvalid.eq(1), bus.bresp.eq(0)]
        # Read: take AR, then answer R.
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        m.d.comb += bus.arready.eq(~bus.rvalid)
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += [bus.rvalid.eq(1), bus.rdata.eq(regs[bus.araddr[2:4]]), bus.rresp.eq(0)]
        return m


def test_axi_port_names():
    # The flattened names are what cocotb_bus looks up: "<port>__<member>".
    v = to_verilog(ScratchRegs(), "top")
    ports = {line.split()[-1].rstrip(";"): line.split()[0] for line in v.splitlines()
             if line.strip().startswith(("input ", "output "))}
    members = AxiLiteSignature().members
    assert {f"s_axil__{n}" for n in members.keys()} <= set(ports), sorted(ports)
    # A slave port: the master's outputs are the slave's inputs.
    for n, member in members.items():
        assert ports[f"s_axil__{n}"] == ("input" if member.flow == Out else "output"), n
    full = AxiSignature(32, 64)
    assert {"awid", "awlen", "wlast", "rlast", "arburst"} <= set(full.members.keys())
    assert set(AxiSignature(read=False).members.keys()).isdisjoint({"araddr", "rdata"})


def test_axil_cocotb():
    run_cocotb(ScratchRegs(), "cocotb_dma_axil", simulator="icarus", test_dir=COCOTB_DIR, name="axil_regs")
