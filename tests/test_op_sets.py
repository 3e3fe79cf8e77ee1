"""Op sets: a core built without some ops refuses them, and the host keeps them on the CPU.

* ``HardwareConfig.ops`` is part of the config hash and reported by the ``CONFIG_OPS`` register;
  a device of another op set is refused with both op sets named;
* the golden check refuses a descriptor of an op outside the config (BAD_OPCODE), and an ADD
  with a LUT where ``oc_par < c_par`` (the core refuses both);
* the compiler keeps ADD / average pools on the CPU for a config without them, naming the op and
  the config, and the result equals onnxruntime bit for bit (emu);
* it does not fold a table into an ADD where ``oc_par < c_par`` (the table runs on its own);
* the RTL core of a config without ADD/AVGPOOL refuses an ADD descriptor with ``BAD_OPCODE``
  (nothing written) and then runs a valid program (Icarus, short).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnxruntime as ort
import pytest
from test_core import (
    Image,
    add_layer,
    assert_same_memory,
    expect_ok,
    maxpool_layer,
    pack_tensor,
    program_run,
    rand_tensor,
    run_case,
)

from jacquard.host.compiler import compile_model
from jacquard.host.device import Device
from jacquard.host.errors import DeviceError, ProgramError
from jacquard.host.importer import quantize_float_model
from jacquard.host.transport import EmuTransport
from jacquard.host.uart_link import verify_device
from jacquard.sim.executor import execute
from jacquard.sim.isa import (
    CONFIGS,
    DescriptorError,
    ErrorCode,
    HardwareConfig,
    LayerDescriptor,
    Op,
    Program,
    check_descriptor,
    field_index,
    padded_channels,
)
from jacquard.sim.isa_regs import register, status_error
from jacquard.sim.model_zoo import Builder, classifier, depthwise, residual

#: sim-small without the ops that need the float32 scale unit, the average pool and the adder.
CONV_POOL = dataclasses.replace(CONFIGS["sim-small"], name="sim-small-conv-pool",
                                ops=frozenset({Op.CONV, Op.MAXPOOL}))
#: icebreaker's array (oc_par 2 < c_par 4) with every op.
ICE_ALL = dataclasses.replace(CONFIGS["icebreaker"], name="icebreaker-all-ops", ops=frozenset(Op))
SEED = 8080

# onnxruntime's quantizer logs advice on every call; it is not a test failure.
logging.getLogger().setLevel(logging.ERROR)


# -- the config ------------------------------------------------------------------------------------

def test_ops_are_part_of_the_config_hash_and_register():
    full = CONFIGS["sim-small"]
    assert full.ops == frozenset(Op) and CONV_POOL.ops_names() == "CONV+MAXPOOL"
    assert CONV_POOL.config_hash() != full.config_hash()
    # requant_lanes is timing only: a program runs on either.
    assert dataclasses.replace(full, requant_lanes=1).config_hash() == full.config_hash()
    reg = register("CONFIG_OPS")
    assert reg.value(CONV_POOL) == (1 << Op.CONV) | (1 << Op.MAXPOOL)
    assert reg.unpack(reg.value(full)) == {op.name.lower(): 1 for op in Op}
    # The mask form (a .jqp manifest's fields) gives the same config.
    again = HardwareConfig(**{**dataclasses.asdict(CONV_POOL), "ops": CONV_POOL.ops_mask})
    assert again == CONV_POOL and again.config_hash() == CONV_POOL.config_hash()


@pytest.mark.parametrize("ops", [frozenset({Op.MAXPOOL}), frozenset(), {1, 2}, 1 << 9, "CONV"])
def test_bad_op_sets_are_refused(ops):
    with pytest.raises(ValueError, match="ops"):
        dataclasses.replace(CONFIGS["sim-small"], ops=ops)


def test_small_configs_leave_out_the_float_units():
    for name in ("icebreaker", "ulx3s-25f"):
        cfg = CONFIGS[name]
        assert cfg.ops == {Op.CONV, Op.MAXPOOL} and cfg.n_requant == 1, cfg
    assert CONFIGS["ulx3s-85f"].ops == frozenset(Op) and CONFIGS["sim-small"].ops == frozenset(Op)


def test_device_of_another_op_set_is_refused_naming_both():
    # Same array and buffers, other ops: the device check names both op sets.
    dev = EmuTransport(CONV_POOL, 1 << 16)
    expected = (r"ops CONV\+MAXPOOL\), but the program targets 'sim-small' "
                r"\(hash 0x[0-9a-f]{8}, ops CONV\+MAXPOOL\+AVGPOOL\+GLOBAL_AVGPOOL\+ADD\)")
    with pytest.raises(DeviceError, match=expected):
        verify_device(dev, CONFIGS["sim-small"])
    verify_device(dev, CONV_POOL)
    _, m = _int8(residual)
    exe = compile_model(m, "sim-small")
    with Device("emu", config=CONV_POOL) as d, pytest.raises(
            ProgramError, match=r"ops CONV\+MAXPOOL\+AVGPOOL\+GLOBAL_AVGPOOL\+ADD, but the device "
                                r"\(0x[0-9a-f]{8}\) runs the ops CONV\+MAXPOOL"):
        d.load(exe)


def _desc(cfg: HardwareConfig, op: Op, **fields) -> LayerDescriptor:
    cp = padded_channels(8, cfg)
    return LayerDescriptor(op=op, in_h=2, in_w=2, in_c=8, in_cp=cp, out_h=2, out_w=2, out_c=8, out_cp=cp,
                           in_scale=0.5, in2_scale=0.25, out_scale=0.5, in_addr=0x100, in2_addr=0x200,
                           out_addr=0x300, **fields)


def test_golden_check_refuses_what_the_core_refuses():
    with pytest.raises(DescriptorError, match="op ADD is not in config sim-small-conv-pool's ops") as e:
        check_descriptor(_desc(CONV_POOL, Op.ADD), CONV_POOL)
    assert (e.value.code, e.value.field) == (ErrorCode.BAD_OPCODE, "op")
    check_descriptor(_desc(CONFIGS["sim-small"], Op.ADD), CONFIGS["sim-small"])
    # ADD's c_par sums cannot pass a LUT unit of oc_par < c_par lanes.
    with pytest.raises(DescriptorError, match="lut on ADD needs oc_par >= c_par") as e:
        check_descriptor(_desc(ICE_ALL, Op.ADD, lut=True, lut_addr=0x400), ICE_ALL)
    assert (e.value.code, e.value.field) == (ErrorCode.PARAM_RANGE, "lut")


# -- the compiler ----------------------------------------------------------------------------------

def _int8(build):
    b, m = build()
    return b, quantize_float_model(m, b.calibration())


def add_then_table():
    """An ADD of two convs, then a sigmoid (a table, not a clamp), then a conv."""
    b = Builder(9, (1, 4, 6, 6))
    a = b.conv("x", 4, 8, 3, pad=1)
    c = b.conv(a, 8, 8, 1, relu=False)
    y = b.node("Sigmoid", [b.node("Add", [a, c])])
    return b, b.model([b.conv(y, 8, 4, 1, relu=False)])


def _bit_exact(exe, m, b, seed) -> None:
    rng = np.random.default_rng(seed)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    with Device("emu", config=exe.config) as dev:
        dev.load(exe)
        for i in range(3):
            feeds = {b.input: rng.normal(0, 1.2, b.shape).astype(np.float32)}
            want = dict(zip(names, sess.run(None, feeds), strict=True))
            got = dev.run(feeds)
            for name, w in want.items():
                bad = np.argwhere(got[name] != w)
                assert bad.size == 0, (f"seed {seed} sample {i} output {name!r}: {len(bad)} mismatches, "
                                       f"first at {tuple(bad[0])}: expected {w[tuple(bad[0])]}, "
                                       f"got {got[name][tuple(bad[0])]}")


@pytest.mark.parametrize("build", [classifier, residual])
def test_ops_outside_the_config_run_on_the_cpu_bit_exact(build):
    cfg = CONFIGS["icebreaker"]
    b, m = _int8(build)
    exe = compile_model(m, cfg)
    kinds = {"QAdd": Op.ADD, "QAvgPool": Op.AVGPOOL, "QGlobalAvgPool": Op.GLOBAL_AVGPOOL}
    moved = [r for r in exe.report if r["op"] in kinds]
    assert moved, exe.report
    for r in moved:
        want = f"{kinds[r['op']].name} not in config icebreaker's ops"
        assert r["where"] == "cpu" and r["reason"] == want, r
    assert any(r["where"] == "accelerator" and r["op"].startswith("QConv") for r in exe.report), exe.report
    assert {d.op for s in exe.device_steps() for d in exe.program(s).descriptors} <= cfg.ops
    _bit_exact(exe, m, b, SEED)


@pytest.mark.parametrize("build", [classifier, depthwise])
def test_small_target_config_bit_exact(build):
    """ulx3s-25f: missing ops and kernels above 3x3 on the CPU, the rest on the device, exact."""
    cfg = CONFIGS["ulx3s-25f"]
    b, m = _int8(build)
    exe = compile_model(m, cfg)
    for r in exe.report:
        if r["where"] == "cpu":
            assert r["reason"].endswith("not in config ulx3s-25f's ops") or "above 3" in r["reason"], r
    assert any(r["where"] == "cpu" for r in exe.report) and exe.device_steps(), exe.report
    assert {d.op for s in exe.device_steps() for d in exe.program(s).descriptors} <= cfg.ops
    _bit_exact(exe, m, b, SEED + 2)


@pytest.mark.slow
def test_small_target_config_on_the_rtl_core():
    """The same on ``Device("sim")``: the ulx3s-25f core in Verilator (a build of minutes)."""
    b, m = _int8(classifier)
    rng = np.random.default_rng(SEED + 3)
    feeds = {b.input: rng.normal(0, 1.2, b.shape).astype(np.float32)}
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    with Device("sim", config="ulx3s-25f", timeout=600) as dev:
        dev.load(m)
        got = dev.run(feeds)
    for name, w in want.items():
        bad = np.argwhere(got[name] != w)
        assert bad.size == 0, f"seed {SEED + 3} {name}: {len(bad)} mismatches, first at {tuple(bad[0])}"


def test_table_is_not_fused_into_add_when_oc_par_is_below_c_par():
    b, m = _int8(add_then_table)
    exe = compile_model(m, ICE_ALL)
    descs = [d for s in exe.device_steps() for d in exe.program(s).descriptors]
    assert any(d.op == Op.ADD for d in descs) and not any(d.op == Op.ADD and d.lut for d in descs), descs
    (row,) = [r for r in exe.report if r["op"] == "QLut"]
    assert row["reason"].startswith("not fused into ADD") and "oc_par=2 lanes < c_par=4" in row["reason"], row
    _bit_exact(exe, m, b, SEED + 1)
    # Where oc_par >= c_par the table still folds into the ADD.
    exe = compile_model(m, "sim-small")
    assert any(d.op == Op.ADD and d.lut for s in exe.device_steps() for d in exe.program(s).descriptors)


# -- the core --------------------------------------------------------------------------------------


def test_core_refuses_op_outside_config_icarus(tmp_path):
    """An ADD on a CONV+MAXPOOL core stops with BAD_OPCODE at descriptor 0; then a max pool runs."""
    seed = 31
    rng = np.random.default_rng(seed)
    cfg = CONV_POOL
    img = Image(cfg, 1 << 13)
    x = img.alloc(pack_tensor(rand_tensor(rng, 4, 4, 4), cfg, 0))
    x2 = img.alloc(pack_tensor(rand_tensor(rng, 4, 4, 4), cfg, 0))
    add, _ = add_layer(img, rng, x, x2, 4, 4, 4)
    pool, _ = maxpool_layer(img, x, 4, 4, 4)
    bad = img.place_program([add])
    good_prog = Program.for_config(cfg, [pool])
    good = img.data.copy()
    good[:good_prog.size()] = np.frombuffer(good_prog.to_bytes(), dtype=np.uint8)
    expected = good.copy()
    execute(good_prog, expected, cfg, prog_addr=0)
    result = run_case(tmp_path, img, [program_run(img, bad), program_run(img, good_prog, image=good)],
                      seed=seed, simulator="icarus", cfg=cfg)
    run = result["runs"][0]
    got = status_error(run["status"], run["error_field"], run["error_addr"])
    assert got is not None, f"core reported no error, STATUS={run['status']:#x}"
    assert (got.code, got.index) == (ErrorCode.BAD_OPCODE, 0), got
    assert run["error_field"] == field_index("op"), got
    assert_same_memory(result["mems"][0], img.data, seed, "after BAD_OPCODE (nothing may be written)")
    expect_ok(result, 1)
    assert_same_memory(result["mems"][1], expected, seed, "max pool after the refusal")
