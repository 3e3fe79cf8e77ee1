"""cocotb 2.x bench for the datapath chain (rtl/datapath.py): one conv layer, outputs vs the golden model.

The layer (pixels, weight rows, channel parameters, configs, expected int8 outputs) is made on the
pytest side (``tests/test_datapath_cocotb.py: make_layer``) and handed over as an ``.npz`` plus
parameters. Weights and channel parameters are loaded first; then the cycles from the line
buffer's ``start`` to the last output beat are counted, with random gaps (``gap``) on the pixel
input and on the output's ``ready``. The figures go to the ``result`` JSON file.
"""

import json
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from jacquard.sim.cocotb_run import params


def pack(values, bits: int = 8) -> int:
    """Pack lane values (lane 0 in the low bits) into one integer, two's complement per lane."""
    word = 0
    for k, v in enumerate(values):
        word |= (int(v) & ((1 << bits) - 1)) << (k * bits)
    return word


class TB:
    """Owns the clock, the configuration ports and the stream drivers."""

    def __init__(self, dut, seed: int, gap: float):
        self.dut = dut
        self.rng = random.Random(seed)
        self.gap = gap
        self.mac_active = 0
        Clock(dut.clk, 10, unit="ns").start()

    async def reset(self):
        dut = self.dut
        dut.rst.value = 1
        for name in ("lb_i__valid", "pe_wl__valid", "pp_params__valid", "pp_lut__valid", "pp_o__ready",
                     "lb_start", "pp_start", "pe_clear", "pp_lut_enable"):
            getattr(dut, name).value = 0
        for _ in range(2):
            await RisingEdge(dut.clk)
        dut.rst.value = 0

    async def send(self, name: str, words, gap: float = 0.0):
        valid, payload, ready = (getattr(self.dut, f"{name}__{s}") for s in ("valid", "payload", "ready"))
        for word in words:
            while gap and self.rng.random() < gap:
                valid.value = 0
                await RisingEdge(self.dut.clk)
            valid.value = 1
            payload.value = word
            await RisingEdge(self.dut.clk)
            while ready.value != 1:
                await RisingEdge(self.dut.clk)
        valid.value = 0

    async def recv(self, count: int, oc_par: int, max_cycles: int):
        dut, out, held, cycles = self.dut, [], None, 0
        while len(out) < count:
            assert cycles < max_cycles, f"stuck: {len(out)} of {count} outputs after {max_cycles} cycles"
            assert dut.lb_error.value == 0 and dut.pe_error.value == 0 and dut.pp_error.value == 0, \
                f"error raised: lb {dut.lb_error.value} pe {dut.pe_error.value} pp {dut.pp_error.value}"
            cycles += 1
            ready = not self.gap or self.rng.random() >= self.gap
            dut.pp_o__ready.value = int(ready)
            await RisingEdge(dut.clk)
            self.mac_active += int(dut.pe_mac_active.value)
            valid = dut.pp_o__valid.value == 1
            word = int(dut.pp_o__payload.value) if valid else None
            # Protocol: a beat offered and not taken is offered again, unchanged.
            if held is not None:
                assert valid and word == held, "pp_o: beat dropped or changed while stalled"
            if valid and ready:
                out.append([(word >> (8 * j)) & 0xFF for j in range(oc_par)])
            held = word if (valid and not ready) else None
        dut.pp_o__ready.value = 0
        return cycles, out


@cocotb.test()
async def conv_layer(dut):
    p = params()
    seed, c_par, oc_par, gap = p["seed"], p["c_par"], p["oc_par"], p["gap"]
    case = np.load(p["case"])
    tb = TB(dut, seed, gap)
    await tb.reset()
    dut.pe_clear.value = 1
    dut.pe_wl_base.value = 0
    await RisingEdge(dut.clk)
    dut.pe_clear.value = 0
    rows = case["rows"]
    await tb.send("pe_wl", [pack(r) | (int(j == 0) << (8 * c_par)) for j, r in enumerate(rows)])
    dut.pe_taps.value = p["taps"]
    dut.pe_n_oc_tiles.value = p["n_tiles"]
    dut.pe_depthwise.value = p["depthwise"]
    dut.pe_w_base.value = 0
    dut.pp_n_oc_tiles.value = p["n_tiles"]
    dut.pp_zero_point.value = p["zy"] & 0xFF
    dut.pp_lo.value = p["lo"] & 0xFF
    dut.pp_hi.value = p["hi"] & 0xFF
    dut.pp_start.value = 1
    await RisingEdge(dut.clk)
    dut.pp_start.value = 0
    await tb.send("pp_params", [(int(b) & 0xFFFF_FFFF) | (int(m) << 32)
                                for b, m in zip(case["bias"], case["mult"], strict=True)])
    # Measured from here: the line buffer's start to the last output beat.
    dut.lb_config.value = p["lb_config"]
    dut.lb_start.value = 1
    await RisingEdge(dut.clk)
    dut.lb_start.value = 0
    x = case["x"]
    words = [pack(b) for b in x.reshape(-1, c_par)]
    want, chan = case["want"], case["chan"]
    n_out = want.shape[0] * p["n_tiles"]
    sender = cocotb.start_soon(tb.send("lb_i", words, gap))
    budget = int((p["taps"] * n_out + len(words)) / (1 - gap) ** 2) + 5000
    cycles, got = await tb.recv(n_out, oc_par, budget)
    await sender
    got = np.array(got, dtype=np.int64).reshape(want.shape[0], -1)
    got = np.where(got >= 128, got - 256, got)
    lanes = np.flatnonzero(chan >= 0)
    got = got[:, lanes][:, np.argsort(chan[lanes])]
    bad = np.argwhere(got != want)
    assert len(bad) == 0, (f"seed={seed} {p['desc']}: {len(bad)} mismatches; first at (position, channel)="
                           f"{tuple(bad[0])}: expected {want[tuple(bad[0])]}, got {got[tuple(bad[0])]}")
    util = p["macs"] / (c_par * oc_par * cycles)
    dut._log.info(f"seed={seed} {p['desc']}: {cycles} cycles, MAC utilization {100 * util:.2f} %")
    with open(p["result"], "w") as f:
        json.dump({"cycles": cycles, "mac_active": tb.mac_active, "macs": p["macs"], "utilization": util}, f)
