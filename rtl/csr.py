"""The AXI4-Lite control slave, generated from the register map in :mod:`jacquard.sim.isa_regs`.

Nothing about the registers is restated here: offsets, access types, reset values, field masks
and the W1C rule all come from :data:`~jacquard.sim.isa_regs.REGISTERS`. The component's ports are
derived from the map too:

* ``RW`` registers are storage in this block; each is an ``Out(32)`` port named after the register
  in lower case (``prog_base``, ``window_limit``, ``irq_enable``...). Bits outside the register's
  fields read 0 and ignore writes; byte strobes are honoured.
* ``RO`` registers with a ``config`` function are constants of the :class:`HardwareConfig`.
* Other ``RO`` registers are ``In(32)`` ports driven by the core (``status``, ``current_desc``,
  ``error_field``, ``error_addr``), except the ``*_LO``/``*_HI`` performance counters, which are
  ``In(64)`` ports named after the counter (``cycles``, ``busy_cycles``...). Reading ``_LO``
  latches the upper half into ``_HI``.
* ``WO`` registers (``CTRL``) are an ``Out(32)`` port that holds the written word for exactly the
  one cycle after the write (zero otherwise).
* ``W1C`` registers (``IRQ_STATUS``) are storage with an ``In(32)`` ``<name>_set`` port: a 1 sets
  a bit, a host write of 1 clears it (a set in the same cycle wins).

``soft_reset`` returns every RW and W1C register except ``WINDOW_*`` and ``PROG_*`` to its reset
value (``docs/ISA.md``).

Bus protocol: a write is taken when AW and W are both valid and no B response is pending; reads
take one cycle, with one R response outstanding at most. Every response is OKAY; unmapped
addresses read 0 and ignore writes.
"""

from amaranth.hdl import Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from jacquard.sim.isa import HardwareConfig
from jacquard.sim.isa_regs import PERF_COUNTERS, REGISTERS, Access, Register

from .axi import AxiLiteSignature

__all__ = ["Csr", "csr_port_name"]

#: Registers ``soft_reset`` leaves alone (the host's window and program pointer).
_KEEP_ON_SOFT_RESET = ("WINDOW_BASE", "WINDOW_LIMIT", "PROG_BASE", "PROG_LEN")
_COUNTER_NAMES = tuple(name for name, _ in PERF_COUNTERS)


def _mask(r: Register) -> int:
    mask = 0
    for f in r.fields:
        mask |= ((1 << f.width) - 1) << f.offset
    return mask


def _counter_of(r: Register) -> tuple[str, str] | None:
    name, _, half = r.name.rpartition("_")
    if half in ("LO", "HI") and name in _COUNTER_NAMES:
        return name, half
    return None


def csr_port_name(register_name: str) -> str:
    """The port of :class:`Csr` that carries register (or counter) ``register_name``."""
    return register_name.lower()


class Csr(wiring.Component):
    """AXI4-Lite register block for one :class:`HardwareConfig` (see the module docstring).

    Parameters
    ----------
    config : HardwareConfig
        Sets the values of the RO identification and config registers.
    addr_width : int
        Address bits of the AXI4-Lite port (at least 8; only the low 8 bits are decoded).

    Members
    -------
    s_axil : In(AxiLiteSignature(addr_width, 32))
        The host's AXI4-Lite port.
    soft_reset : In(1)
        Return the registers to reset (all but the window and program pointer).
    <register> : Out(32) or In(32) or In(64)
        One port per register as described in the module docstring.

    Raises
    ------
    TypeError
        If ``config`` is not a HardwareConfig.
    ValueError
        If ``addr_width`` is out of range.
    """

    def __init__(self, config: HardwareConfig, addr_width: int = 12) -> None:
        if not isinstance(config, HardwareConfig):
            raise TypeError(f"config must be a HardwareConfig, not {config!r}")
        if not isinstance(addr_width, int) or not 12 <= addr_width <= 32:
            raise ValueError(f"addr_width must be an integer in 12..32, not {addr_width!r}")
        self._config = config
        ports = {"s_axil": In(AxiLiteSignature(addr_width, 32)), "soft_reset": In(1)}
        for r in REGISTERS:
            counter = _counter_of(r)
            if counter is not None:
                ports[csr_port_name(counter[0])] = In(64)
            elif r.access in (Access.RW, Access.WO):
                ports[csr_port_name(r.name)] = Out(32, init=r.reset if r.access == Access.RW else 0)
            elif r.access == Access.W1C:
                ports[csr_port_name(r.name)] = Out(32, init=r.reset)
                ports[csr_port_name(r.name) + "_set"] = In(32)
            elif r.config is None:
                ports[csr_port_name(r.name)] = In(32, init=r.reset)
        super().__init__(ports)

    @property
    def config(self) -> HardwareConfig:
        return self._config

    def elaborate(self, platform) -> Module:
        m = Module()
        bus = self.s_axil

        # -- writes -------------------------------------------------------------------------
        bvalid = Signal()
        take_w = Signal()
        m.d.comb += [
            take_w.eq(bus.awvalid & bus.wvalid & ~bvalid),
            bus.awready.eq(take_w),
            bus.wready.eq(take_w),
            bus.bvalid.eq(bvalid),
            bus.bresp.eq(0),
        ]
        with m.If(take_w):
            m.d.sync += bvalid.eq(1)
        with m.Elif(bus.bready):
            m.d.sync += bvalid.eq(0)

        strobe_mask = Signal(32)
        m.d.comb += strobe_mask.eq(sum((bus.wstrb[i].replicate(8) << (8 * i)) for i in range(4)))
        waddr = bus.awaddr[2:8]

        counter_hi = {name: Signal(32, name=f"{name.lower()}_hi_latch") for name in _COUNTER_NAMES}

        for r in REGISTERS:
            if _counter_of(r) is not None or r.access == Access.RO:
                continue
            port = getattr(self, csr_port_name(r.name))
            mask = _mask(r)
            hit = take_w & (waddr == r.offset >> 2)
            if r.access == Access.WO:
                m.d.sync += port.eq(0)
                with m.If(hit):
                    m.d.sync += port.eq(bus.wdata & strobe_mask & mask)
                if r.name not in _KEEP_ON_SOFT_RESET:
                    with m.If(self.soft_reset):
                        m.d.sync += port.eq(0)
            elif r.access == Access.RW:
                with m.If(hit):
                    m.d.sync += port.eq(((port & ~strobe_mask) | (bus.wdata & strobe_mask)) & mask)
                if r.name not in _KEEP_ON_SOFT_RESET:
                    with m.If(self.soft_reset):
                        m.d.sync += port.eq(r.reset)
            elif r.access == Access.W1C:
                setp = getattr(self, csr_port_name(r.name) + "_set")
                clr = Signal(32, name=f"{r.name.lower()}_clr")
                with m.If(hit):
                    m.d.comb += clr.eq(bus.wdata & strobe_mask)
                m.d.sync += port.eq(((port & ~clr) | setp) & mask)
                with m.If(self.soft_reset):
                    m.d.sync += port.eq(r.reset)

        # -- reads --------------------------------------------------------------------------
        rvalid = Signal()
        rdata = Signal(32)
        take_r = Signal()
        m.d.comb += [
            take_r.eq(bus.arvalid & ~rvalid),
            bus.arready.eq(take_r),
            bus.rvalid.eq(rvalid),
            bus.rdata.eq(rdata),
            bus.rresp.eq(0),
        ]
        with m.If(take_r):
            m.d.sync += rvalid.eq(1)
        with m.Elif(bus.rready):
            m.d.sync += rvalid.eq(0)

        raddr = bus.araddr[2:8]
        with m.If(take_r):
            with m.Switch(raddr):
                for r in REGISTERS:
                    with m.Case(r.offset >> 2):
                        m.d.sync += rdata.eq(self._read_value(m, r, counter_hi))
                with m.Default():
                    m.d.sync += rdata.eq(0)
            # Reading _LO latches the counter's upper half for the _HI read that follows.
            for r in REGISTERS:
                counter = _counter_of(r)
                if counter is not None and counter[1] == "LO":
                    with m.If(raddr == r.offset >> 2):
                        m.d.sync += counter_hi[counter[0]].eq(getattr(self, csr_port_name(counter[0]))[32:])
        return m

    def _read_value(self, m: Module, r: Register, counter_hi: dict):
        counter = _counter_of(r)
        if counter is not None:
            name, half = counter
            return getattr(self, csr_port_name(name))[:32] if half == "LO" else counter_hi[name]
        if r.access == Access.WO:
            return Const(0, 32)
        if r.config is not None:
            return Const(r.value(self._config) & _mask(r), 32)
        return getattr(self, csr_port_name(r.name)) & _mask(r)
