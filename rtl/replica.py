"""A register copy that synthesis keeps, for splitting one flip-flop's fan-out between its consumers."""

from amaranth.hdl import ClockSignal, Instance, Module, Signal, Value

__all__ = ["replica"]


def replica(m: Module, platform, value: Value, name: str) -> Signal:
    """A register of ``value`` (initially 0) that synthesis keeps although identical copies exist.

    yosys merges flip-flops that have the same input (``opt_merge``), which would undo the
    replication that puts one copy of a broadcast next to each group of its consumers. On ECP5 each
    bit is a ``TRELLIS_FF`` instance, which yosys does not merge; elsewhere it is a plain register.
    """
    value = Value.cast(value)
    q = Signal(len(value), name=name)
    if getattr(platform, "family", None) != "ecp5":
        m.d.sync += q.eq(value)
        return q
    for b in range(len(value)):
        m.submodules[f"{name}_ff{b}"] = Instance(
            "TRELLIS_FF", a_keep=1, p_GSR="DISABLED", p_CEMUX="1", p_CLKMUX="CLK", p_LSRMUX="LSR",
            p_REGSET="RESET", p_SRMODE="LSR_OVER_CE",
            i_CLK=ClockSignal("sync"), i_LSR=0, i_DI=value[b], o_Q=q[b])
    return q
