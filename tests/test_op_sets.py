"""Op sets: a core built without some ops refuses them, and the host keeps them on the CPU.

* ``HardwareConfig.ops`` is part of the config hash and reported by the ``OPS`` register;
* the RTL core of a config without ADD/AVGPOOL refuses an ADD descriptor with ``BAD_OPCODE``
  (nothing written) and then runs a valid program (Icarus, short).
"""

from __future__ import annotations

import dataclasses

import numpy as np
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

from jacquard.sim.executor import execute
from jacquard.sim.isa import CONFIGS, ErrorCode, Op, Program, field_index
from jacquard.sim.isa_regs import status_error

#: sim-small without the ops that need the float32 scale unit, the average pool and the adder.
CONV_POOL = dataclasses.replace(CONFIGS["sim-small"], name="sim-small-conv-pool",
                                ops=frozenset({Op.CONV, Op.MAXPOOL}))


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
