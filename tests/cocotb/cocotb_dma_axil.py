"""cocotb 2.x: AxiLiteMaster (bound with ``AxiLiteBus.from_prefix(dut, "s_axil_")``) writes and reads."""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge
from cocotbext.axi import AxiLiteBus, AxiLiteMaster


@cocotb.test()
async def write_then_read(dut):
    Clock(dut.clk, 10, unit="ns").start()
    master = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil_"), dut.clk, dut.rst)
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    values = [0x12345678, 0xDEADBEEF, 0x0, 0xA5A55A5A]
    for i, v in enumerate(values):
        await master.write_dword(4 * i, v)
    await master.write(0x9, b"\x77")  # one byte lane of register 2
    values[2] = 0x7700
    for i, v in enumerate(values):
        got = await master.read_dword(4 * i)
        assert got == v, f"register {i}: expected {v:#x}, got {got:#x}"
