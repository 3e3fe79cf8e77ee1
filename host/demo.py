"""``make demo``: the video-analytics application, faces in Megamind.avi through Spark and the accelerator.

It runs :mod:`jacquard.spark_ext.vca_app` on the embedded default: local Spark (``local[2]``) and
the ``emu`` backend. Frames of Megamind.avi (Debian ``opencv-doc``, fetched into the cache) stream
through the ``jacquard.video`` source; MTCNN (P-Net pyramid, R-Net, O-Net, int8) runs on the
device; the detections table, face appeared / left alerts and per-micro-batch metrics go to the
sink; the summary gives frames, faces, fps, p50/p95 end-to-end latency and the estimated FPGA fps,
and a contact sheet PNG lands in ``build/demo/``. The frame count is bounded so the demo completes
in a few minutes on 2 cores; every option of the app is available (``-- --help``).
"""

from __future__ import annotations

import sys

from rich.console import Console


def main(argv: list[str] | None = None) -> int:
    from jacquard.spark_ext.vca_app import _parser, config_from_args, run_and_report

    parser = _parser()
    parser.prog = "python -m jacquard.host.demo"
    parser.set_defaults(frames=32, output="build/demo")
    config = config_from_args(parser.parse_args(argv))
    console = Console(width=120)
    console.rule("Jacquard demo: MTCNN face detection on Spark Structured Streaming")
    run_and_report(config, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
