"""Benchmark: Fashion-MNIST accuracy of a float CNN quantized on import, against onnxruntime int8.

Run ``python tests/bench/bench_fashion.py`` (or ``nox -s bench -- fashion``). It trains (or loads from
the cache) the project's NumPy CNN, quantizes it with Jacquard on import and with onnxruntime's own
``quantize_static`` (both calibrated on the same 200 training images), runs both on all 10,000 test
images, checks that the logits are equal bit for bit, and writes the ``fashion-mnist`` section of
docs/RESULTS.md: float / onnxruntime int8 / Jacquard int8 accuracy, emu fps and the performance
model's FPGA estimate.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from test_fashion_mnist import CALIB_IMAGES, CALIB_SEED, CONFIG, check, evaluate

from jacquard.host.results import write_section


def main() -> None:
    r = evaluate(10000)
    check(r)  # bit-exact with onnxruntime int8, accuracy within 1 point
    acc, est, train = r["accuracy"], r["estimate"].as_dict(), r["train"]
    cfg = train["config"]
    lines = [
        "The project's own CNN (`jacquard.host.train_fashion`: conv3x3(8)-relu-maxpool-conv3x3(16)-relu-"
        f"maxpool-fc(10), {r['estimate'].macs:,} MACs per image) trained in NumPy on the CPU "
        f"({cfg['epochs']} epoch(s) of {cfg['train_images']:,} images, batch {cfg['batch']}, seed "
        f"{cfg['seed']}: {train['train_cpu_seconds']:.1f} s of CPU time) and exported as float ONNX. "
        f"Calibrated on {CALIB_IMAGES} training images (seed {CALIB_SEED}), quantized int8 x int8 with "
        "per-channel weights two ways: by Jacquard on import (`load_model(..., calibrate=)` -> partition "
        "-> compile -> `Device(\"emu\")`) and by onnxruntime's own `quantize_static`, run in onnxruntime. "
        f"All {r['n']:,} Fashion-MNIST test images (Debian `dataset-fashion-mnist`); Jacquard's logits "
        "equal onnxruntime int8's bit for bit.",
        "",
        "| Model | Top-1 accuracy |",
        "|---|---|",
        f"| float (onnxruntime) | {100 * acc['float']:.2f} % |",
        f"| int8, onnxruntime `quantize_static` | {100 * acc['ort_int8']:.2f} % |",
        f"| int8, Jacquard quantize-on-import, emu | {100 * acc['jacquard_int8']:.2f} % |",
        "",
        f"Emu throughput (pipelined `Device.run_batch`, batch 1, on this host's CPU, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores): {r['emu_fps']:.0f} fps. "
        f"Estimated FPGA on {CONFIG} at {est['clock_mhz']:.0f} MHz: {est['cycles']:,} cycles per image, "
        f"{est['fps']:,.0f} fps, "
        f"{100 * est['mac_utilization']:.1f} % MAC utilization.",
    ]
    print("\n".join(lines))
    write_section("fashion-mnist", "\n".join(lines), command="python tests/bench/bench_fashion.py")


if __name__ == "__main__":
    main()
