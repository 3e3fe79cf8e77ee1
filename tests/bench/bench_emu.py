"""Benchmark: the emu backend against onnxruntime int8 on the CPU, and the estimated FPGA fps.

Run ``python tests/bench/bench_emu.py`` (or ``nox -s bench -- emu``). For MTCNN P-Net at 320x240 and
R-Net/O-Net (quantized int8 x int8 on import, calibrated on skimage's astronaut), it checks that the
emu outputs equal onnxruntime's bit for bit, times both on the same frames (emu: pipelined
``Device.run_batch``; onnxruntime: its int8 QOperator session), prints the throughput ratio and the
performance model's estimate on ULX3S-85F, and writes the ``host-emu`` section of docs/RESULTS.md.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from test_compiler import _crops, assert_same, mtcnn_imported

from jacquard.host.compiler import compile_plan
from jacquard.host.device import Device
from jacquard.host.partition import partition
from jacquard.host.results import write_section

CONFIG = "ulx3s-85f"
NETS = [("pnet", (240, 320), 8), ("rnet", (24, 24), 64), ("onet", (48, 48), 32)]


def bench(net: str, size: tuple[int, int], frames: int) -> dict:
    imported, name = mtcnn_imported(net, size)
    exe = compile_plan(partition(imported), CONFIG)
    x = _crops(size, min(frames, 8), 7)
    feeds = [{name: x[i % len(x)][None]} for i in range(frames)]
    sess = ort.InferenceSession(imported.model.SerializeToString(), providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    with Device("emu", config=CONFIG, memory_bytes=max(64 << 20, exe.memory_size)) as dev:
        dev.load(exe)
        want = dict(zip(out_names, sess.run(None, feeds[0]), strict=True))
        assert_same(dev.run(feeds[0]), want, f"{net} emu vs onnxruntime")
        t0 = time.perf_counter()
        dev.run_batch(feeds)
        emu = time.perf_counter() - t0
        est = dev.estimate()
    sess.run(None, feeds[0])
    t0 = time.perf_counter()
    for f in feeds:
        sess.run(None, f)
    cpu = time.perf_counter() - t0
    return {"net": net, "size": size, "frames": frames, "emu_fps": frames / emu, "ort_fps": frames / cpu,
            "ratio": cpu / emu, "est": est.as_dict(), "macs": est.macs,
            "memory": exe.memory}


def main() -> None:
    rows = [bench(*n) for n in NETS]
    lines = ["Emu backend (reference executor behind the register map, pipelined `Device.run_batch`) "
             "against onnxruntime's int8 QOperator session on the same model and frames, both on this "
             f"host's CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores); outputs "
             "checked bit-exact first. Estimated FPGA figures: `jacquard.host.perf` on ULX3S-85F "
             "(16x8 = 128 MACs at 100 MHz).", "",
             "| Model | Input | emu fps | onnxruntime fps | emu / onnxruntime | est. FPGA cycles | "
             "est. FPGA fps | est. MAC utilization | device memory (reuse / naive activations) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e, m = r["est"], r["memory"]
        lines.append(f"| {r['net']} | {r['size'][1]}x{r['size'][0]} | {r['emu_fps']:.1f} | "
                     f"{r['ort_fps']:.1f} | {r['ratio']:.3f} | {e['cycles']:,} | {e['fps']:.1f} | "
                     f"{100 * e['mac_utilization']:.1f} % | {m['total_bytes']:,} B "
                     f"({m['arena_bytes']:,} / {m['arena_naive_bytes']:,}) |")
        print(lines[-1])
    lines += ["", "Estimated against RTL-counted cycles: pending the RTL core (issue 5); the emu backend's "
              "CYCLES counter reports the model's estimate."]
    write_section("host-emu", "\n".join(lines), command="python tests/bench/bench_emu.py")


if __name__ == "__main__":
    main()
