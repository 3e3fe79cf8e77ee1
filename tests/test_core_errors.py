"""JacquardCore error paths: each ends as docs/ISA.md documents, and the core runs the next program.

* a descriptor whose region falls outside the DMA window (WINDOW);
* invalid descriptors: a bad opcode, parameters out of range;
* CTRL.abort in the middle of a layer (ABORTED; nothing outside the layer's output region changes);
* CTRL.soft_reset during a run (registers back to reset but the window and PROG_*);
* a program larger than the on-chip buffers (output-channel groups), as a positive control;
* aborts and a soft reset at several points of a multi-group layer, where a group's write drains
  while the next group computes and the group after it has its weights prefetched;
* (Icarus) an ADD whose second input lies outside the window (WINDOW, nothing written), and a global
  average whose multiplier onnxruntime refuses (PARAM_RANGE on ``in_scale``); then the same core
  runs the corrected program.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from test_core import (
    CFG,
    Image,
    add_layer,
    assert_same_memory,
    conv_layer,
    expect_ok,
    gap_layer,
    maxpool_layer,
    pack_tensor,
    program_run,
    rand_tensor,
    run_case,
)

from jacquard.host.perf import estimate_descriptor, group_tiles
from jacquard.sim.executor import execute
from jacquard.sim.isa import DescriptorError, ErrorCode, Program, field_index, validate_program
from jacquard.sim.isa_regs import register, status_error

SIM = "verilator"


def _two_layers(seed: int, size: int = 1 << 15):
    rng = np.random.default_rng(seed)
    img = Image(CFG, size)
    x = img.alloc(pack_tensor(rand_tensor(rng, 8, 8, 6), CFG, 3))
    d0, (h, w, c) = conv_layer(img, rng, x, 8, 8, 6, cout=8, k=(3, 3), pads=(1, 1, 1, 1), in_zp=3, out_zp=-2)
    d1, _ = maxpool_layer(img, d0.out_addr, h, w, c)
    return img, [d0, d1]


def _expected_after(img: Image, descs, n: int) -> np.ndarray:
    mem = img.data.copy()
    execute(Program.for_config(CFG, descs[:n]), mem, CFG, prog_addr=0)
    return mem


def _check_error(run: dict, want: DescriptorError) -> None:
    got = status_error(run["status"], run["error_field"], run["error_addr"])
    assert got is not None, f"core reported no error, STATUS={run['status']:#x}"
    # ERROR_FIELD indexes DESCRIPTOR_FIELDS; a reserved-bit error has no field there (0xFF).
    assert (got.code, got.index, got.address) == (want.code, want.index, want.address), f"{got} / {want}"
    assert run["error_field"] == field_index(want.field), f"core: {got} / executor: {want}"
    assert run["irq_status"] == 2 and run["irq"] == 1


def test_core_window_error_then_rerun(tmp_path):
    seed = 11
    img, descs = _two_layers(seed)
    prog = img.place_program(descs)
    limit = descs[1].out_addr + 16  # the pool's output runs past the window
    with pytest.raises(DescriptorError) as exc:
        validate_program(prog, CFG, 0, limit, prog_addr=0)
    assert exc.value.code == ErrorCode.WINDOW and exc.value.index == 1
    good = _expected_after(img, descs, 2)
    result = run_case(tmp_path, img, [program_run(img, prog, window_limit=limit),
                                      program_run(img, prog)], seed=seed, simulator=SIM)
    _check_error(result["runs"][0], exc.value)
    assert_same_memory(result["mems"][0], _expected_after(img, descs, 1), seed, "after WINDOW")
    expect_ok(result, 1)
    assert_same_memory(result["mems"][1], good, seed, "rerun")


@pytest.mark.parametrize("fault", ["opcode", "stride", "kernel", "reserved", "shape", "misaligned"])
def test_core_invalid_descriptor(tmp_path, fault):
    seed = 12
    img, descs = _two_layers(seed)
    prog = img.place_program(descs)
    bad = img.data.copy()
    base = 16 + 64  # descriptor 1
    words = list(struct.unpack_from("<16I", bad, base))
    if fault == "opcode":
        words[0] = (words[0] & ~0xF) | 9
    elif fault == "stride":
        words[0] = (words[0] & ~(7 << 20)) | (5 << 20)
    elif fault == "kernel":
        words[0] = (words[0] & ~(0xF << 12)) | (0 << 12)
    elif fault == "reserved":
        words[2] |= 1 << 30
    elif fault == "shape":
        words[5] += 1  # out_h
    else:
        words[9] += 2  # out_addr
    struct.pack_into("<16I", bad, base, *words)
    try:
        raw = bytes(bad[:prog.size()])
        validate_program(Program.from_bytes(raw, CFG), CFG, 0, img.size, prog_addr=0)
    except DescriptorError as e:
        want = e
    else:
        raise AssertionError("the executor accepted the faulty program")
    img2 = Image(CFG, img.size)
    img2.data[:] = bad
    result = run_case(tmp_path, img2, [program_run(img, prog), program_run(img, prog, image=img.data)],
                      seed=seed, simulator=SIM)
    run = result["runs"][0]
    _check_error(run, want)
    after = _expected_after(img, descs, 1)
    after[:prog.size()] = bad[:prog.size()]
    assert_same_memory(result["mems"][0], after, seed, f"after {fault}")
    expect_ok(result, 1)
    assert_same_memory(result["mems"][1], _expected_after(img, descs, 2), seed, "rerun")
    assert field_index(want.field) == run["error_field"]


@pytest.mark.parametrize("interrupt", ["abort", "soft_reset"])
def test_core_interrupt_mid_layer(tmp_path, interrupt):
    seed = 13
    img, descs = _two_layers(seed)
    prog = img.place_program(descs)
    good = _expected_after(img, descs, 2)
    result = run_case(tmp_path, img, [program_run(img, prog, interrupt=interrupt, interrupt_after=1500),
                                      program_run(img, prog, image=img.data)], seed=seed, simulator=SIM)
    run = result["runs"][0]
    mem = result["mems"][0]
    out0 = descs[0].out_addr, descs[0].out_addr + descs[0].out_h * descs[0].out_w * descs[0].out_cp
    outside = np.ones(img.size, dtype=bool)
    outside[out0[0]:out0[1]] = False
    assert_same_memory(mem[outside], img.data[outside], seed, f"outside layer 0's output after {interrupt}")
    st = register("STATUS").unpack(run["status"])
    if interrupt == "abort":
        assert st["busy"] == 0 and st["error"] == 1 and st["error_code"] == ErrorCode.ABORTED, st
        assert st["desc_index"] == 0 and run["irq_status"] == 2
    else:
        assert run["status"] == 0 and run["irq_status"] == 0 and run["irq_enable"] == 0, run
        assert (run["window_limit"], run["prog_len"]) == (img.size, prog.size())
        assert run["error_field"] == register("ERROR_FIELD").reset
        assert run["counters"]["BUSY_CYCLES"] == 0, run["counters"]
    expect_ok(result, 1)
    assert_same_memory(result["mems"][1], good, seed, "rerun")


def test_core_output_channel_groups(tmp_path):
    """A conv whose weights need three weight-bank loads and whose params exceed the buffer."""
    seed = 14
    rng = np.random.default_rng(seed)
    img = Image(CFG, 1 << 16)
    x = img.alloc(pack_tensor(rand_tensor(rng, 5, 6, 32), CFG, -4))
    # 3x3 over 32 channels = 72 blocks per oc tile: 3 tiles per 256-block bank; 40 outputs = 10 tiles.
    d0, (h, w, c) = conv_layer(img, rng, x, 5, 6, 32, cout=40, k=(3, 3), pads=(1, 1, 1, 1), in_zp=-4,
                               lut="channel")
    d1, _ = conv_layer(img, rng, d0.out_addr, h, w, c, cout=70, k=(1, 1))
    prog = img.place_program([d0, d1])
    expected = img.data.copy()
    execute(prog, expected, CFG, prog_addr=0)
    result = run_case(tmp_path, img, [program_run(img, prog)], seed=seed, simulator=SIM)
    expect_ok(result)
    assert_same_memory(result["mems"][0], expected, seed)


def test_core_interrupt_multi_group(tmp_path):
    """Abort or soft-reset a layer of four overlapped groups at several points, then rerun it.

    Groups overlap (the next group computes while the previous group's write drains; the group
    after that has its weights read into the other bank meanwhile), so each stop lands in some
    mix of these. After each: STATUS as documented, nothing written outside the layer's output
    region, and the same core then runs the whole program bit-exactly.
    """
    seed = 15
    rng = np.random.default_rng(seed)
    img = Image(CFG, 1 << 16)
    x = img.alloc(pack_tensor(rand_tensor(rng, 3, 4, 32), CFG, 2))
    # 72 weight blocks per oc tile: 3 tiles per bank, 40 outputs = groups of 3, 3, 3, 1 tiles.
    d0, (h, w, c) = conv_layer(img, rng, x, 3, 4, 32, cout=40, k=(3, 3), pads=(1, 1, 1, 1), in_zp=2,
                               out_zp=-1)
    d1, _ = maxpool_layer(img, d0.out_addr, h, w, c)
    prog = img.place_program([d0, d1])
    assert len(group_tiles(d0, CFG)) == 4
    layer0 = estimate_descriptor(d0, CFG).cycles
    points = [("abort", layer0 * f // 8) for f in (2, 3, 5, 7)] + [("soft_reset", layer0 * 4 // 8)]
    runs = [program_run(img, prog, interrupt=what, interrupt_after=at, image=img.data) for what, at in points]
    result = run_case(tmp_path, img, [*runs, program_run(img, prog, image=img.data)], seed=seed,
                      simulator=SIM)
    out0 = d0.out_addr, d0.out_addr + d0.out_h * d0.out_w * d0.out_cp
    outside = np.ones(img.size, dtype=bool)
    outside[out0[0]:out0[1]] = False
    for k, (what, at) in enumerate(points):
        run = result["runs"][k]
        label = f"{what} after {at} cycles"
        assert_same_memory(result["mems"][k][outside], img.data[outside], seed,
                           f"outside layer 0's output, {label}")
        st = register("STATUS").unpack(run["status"])
        if what == "abort":
            assert st["busy"] == 0 and st["error"] == 1 and st["error_code"] == ErrorCode.ABORTED, (label, st)
            assert st["desc_index"] == 0 and run["irq_status"] == 2, (label, st)
        else:
            assert run["status"] == 0 and run["irq_status"] == 0, (label, run)
            assert run["counters"]["BUSY_CYCLES"] == 0, (label, run["counters"])
    expect_ok(result, len(points))
    assert_same_memory(result["mems"][len(points)], _expected_after(img, [d0, d1], 2), seed, "rerun")


@pytest.mark.parametrize("fault", ["add_in2_window", "gap_multiplier"])
def test_core_new_op_errors_icarus(tmp_path, fault):
    """The refusal matches the executor's, nothing is written, and the corrected program then runs."""
    seed = 21
    rng = np.random.default_rng(seed)
    img = Image(CFG, 1 << 13)
    x = img.alloc(pack_tensor(rand_tensor(rng, 3, 4, 6), CFG, 2))
    if fault == "add_in2_window":
        d, _ = add_layer(img, rng, x, 0, 3, 4, 6, in_zp=2, in2_zp=-3, out_zp=1)
        d.in2_addr = img.alloc(pack_tensor(rand_tensor(rng, 3, 4, 6), CFG, -3))
        # The second input (last in memory) runs past the window; the first input and the output lie inside.
        run_bad = {"window_limit": d.in2_addr + 4}
    else:
        d, _ = gap_layer(img, rng, x, 3, 4, 6, in_zp=2, out_zp=1)
        good_scale = d.out_scale
        d.out_scale = float(np.float32(d.in_scale)) * 2.0**40  # M = 2**-40 / 12: below 2**-32
        run_bad = {}
    prog = img.place_program([d])
    limit = run_bad.get("window_limit", img.size)
    with pytest.raises(DescriptorError) as exc:
        validate_program(prog, CFG, 0, limit, prog_addr=0)
    want = exc.value
    assert want.code == (ErrorCode.WINDOW if fault == "add_in2_window" else ErrorCode.PARAM_RANGE), want
    if fault == "add_in2_window":
        good_prog = prog
    else:
        d.out_scale = good_scale
        good_prog = Program.for_config(CFG, [d])
    good = img.data.copy()
    good[:good_prog.size()] = np.frombuffer(good_prog.to_bytes(), dtype=np.uint8)
    expected = good.copy()
    execute(good_prog, expected, CFG, prog_addr=0)
    result = run_case(tmp_path, img, [program_run(img, prog, timeout=100_000, **run_bad),
                                      program_run(img, good_prog, image=good, timeout=100_000)],
                      seed=seed, simulator="icarus")
    _check_error(result["runs"][0], want)
    assert_same_memory(result["mems"][0], img.data, seed, f"after {fault} (nothing may be written)")
    expect_ok(result, 1)
    assert_same_memory(result["mems"][1], expected, seed, "corrected program")
