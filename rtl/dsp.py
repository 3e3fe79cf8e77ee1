"""A multiplier with registered operands and a registered product: a whole MULT18X18D on ECP5.

yosys maps a ``*`` to a MULT18X18D without its registers, so the path runs from a fabric flip-flop
across the routing to the DSP, through the multiplier and back across the routing to a fabric
flip-flop. The DSP blocks sit in a few rows, often far from their operands: on the ULX3S-85F
datapath that path was 12.6 ns (8.2 ns of it routing). With both of the DSP's own registers in use
the routing to the block and the multiply are each a cycle of their own.
"""

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal, Value

__all__ = ["registered_product"]


def registered_product(m: Module, platform, a: Value, b: Value, name: str, en: Value | int = 1) -> Signal:
    """``a * b``, two enabled clock edges after ``a`` and ``b``.

    Parameters
    ----------
    m : Module
        Where the registers (or the DSP instance) go.
    platform
        The build platform; on ECP5 the registers are the ``MULT18X18D``'s input and output
        registers, elsewhere fabric registers with the same timing.
    a, b : Value
        Operands of at most 18 bits each, signed or unsigned (each keeps its own signedness).
    name : str
        Prefix of the instance and signal names.
    en : Value or int
        Clock enable of both register stages.

    Returns
    -------
    Signal
        The product, of the shape Amaranth gives ``a * b``.

    Raises
    ------
    ValueError
        If an operand is wider than 18 bits.
    """
    a, b = Value.cast(a), Value.cast(b)
    for port, value in (("a", a), ("b", b)):
        if len(value) > 18:
            raise ValueError(f"Operand {port} of {name} must be at most 18 bits wide, not {len(value)}")
    shape = (a * b).shape()
    # No resets: the DSP's own registers have none wired (RST tied low), and the fabric form
    # matches it (a product is read only under its pipeline's valid bit).
    prod = Signal(shape, name=f"{name}_prod", reset_less=True)
    if getattr(platform, "family", None) != "ecp5":
        ra = Signal(a.shape(), name=f"{name}_a", reset_less=True)
        rb = Signal(b.shape(), name=f"{name}_b", reset_less=True)
        with m.If(en):
            m.d.sync += [ra.eq(a), rb.eq(b), prod.eq(ra * rb)]
        return prod
    p = Signal(36, name=f"{name}_p")
    ports = {}
    for port, value in (("A", a), ("B", b), ("C", Const(0, 18))):
        for bit in range(18):
            # Sign- or zero-extended to the DSP's 18 bits, as SIGNEDA/SIGNEDB say.
            ports[f"i_{port}{bit}"] = value[bit] if bit < len(value) else (
                value[-1] if value.shape().signed else Const(0, 1))
    for bit in range(36):
        ports[f"o_P{bit}"] = p[bit]
    regs = {f"p_REG_{r}_{k}": v for r in ("INPUTA", "INPUTB", "OUTPUT")
            for k, v in (("CLK", "CLK0"), ("CE", "CE0"), ("RST", "RST0"))}
    m.submodules[name] = Instance(
        "MULT18X18D", **regs,
        p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE", p_GSR="DISABLED",
        p_RESETMODE="SYNC", p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED",
        p_CAS_MATCH_REG="FALSE", p_HIGHSPEED_CLK="NONE",
        p_CLK0_DIV="ENABLED", p_CLK1_DIV="ENABLED", p_CLK2_DIV="ENABLED", p_CLK3_DIV="ENABLED",
        i_SIGNEDA=int(a.shape().signed), i_SIGNEDB=int(b.shape().signed), i_SOURCEA=0, i_SOURCEB=0,
        i_CLK0=ClockSignal("sync"), i_CLK1=0, i_CLK2=0, i_CLK3=0,
        i_CE0=en, i_CE1=1, i_CE2=1, i_CE3=1, i_RST0=0, i_RST1=0, i_RST2=0, i_RST3=0,
        **ports)
    m.d.comb += prod.eq(p[:len(prod)])
    return prod
