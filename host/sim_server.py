"""The cocotb side of the ``sim`` backend (:mod:`jacquard.host.sim_transport`); runs inside the simulator.

One cocotb test connects back to the host's :class:`~jacquard.host.sim_transport.SimTransport` and
serves its operations until the host closes: register reads and writes through cocotbext-axi's
``AxiLiteMaster`` on ``s_axil``, device memory through ``AxiRam`` on ``m_axi`` (direct access), and
``run`` (advance the clock). The simulation only advances inside an operation, so the host's
polling paces it and a waiting host costs no simulator time.
"""

import logging
import traceback
from multiprocessing.connection import Client

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

from jacquard.sim.cocotb_run import params

CLK_NS = 10


@cocotb.test()
async def serve(dut):
    p = params()
    Clock(dut.clk, CLK_NS, unit="ns").start()
    ram = AxiRam(AxiBus.from_prefix(dut, "m_axi_"), dut.clk, dut.rst, size=p["ram_size"])
    host = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil_"), dut.clk, dut.rst)
    for log in (ram.read_if.log, ram.write_if.log, host.read_if.log, host.write_if.log):
        log.setLevel(logging.WARNING)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    cycles = 0
    conn = Client(("127.0.0.1", p["port"]), authkey=bytes.fromhex(p["authkey"]))
    try:
        while True:
            op, *args = conn.recv()
            try:
                if op == "close":
                    conn.send(("ok", None))
                    return
                if op == "read_reg":
                    value = await host.read_dword(args[0])
                elif op == "write_reg":
                    await host.write_dword(args[0], args[1])
                    value = None
                elif op == "read_mem":
                    value = bytes(ram.read(args[0], args[1]))
                elif op == "write_mem":
                    ram.write(args[0], args[1])
                    value = None
                elif op == "run":
                    await ClockCycles(dut.clk, args[0])
                    cycles += args[0]
                    value = cycles
                else:
                    raise ValueError(f"unknown operation {op!r}")
            except Exception:  # reported to the host, which raises DeviceError
                conn.send(("error", traceback.format_exc(limit=4)))
                continue
            conn.send(("ok", value))
    finally:
        conn.close()
