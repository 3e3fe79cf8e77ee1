"""The video-analytics (VCA) application: faces in real video, as a Spark Structured Streaming query.

::

    python -m jacquard.spark_ext.vca_app --frames 48 --sink memory        # Megamind.avi, local[2], emu

Pipeline::

    jacquard.video source (Megamind.avi frame references, exactly-once offsets; decode=lazy)
      -> mapInPandas: decode the frames, MTCNN on the task's device (P-Net pyramid, R-Net, O-Net
         int8; NMS on the CPU)
      -> foreachBatch: per-frame detections table, face appeared / face left alerts, metrics
      -> sink: memory (the app's tables), console, or parquet (one file per micro-batch, rewritten
         when Spark replays that batch, so a restarted query keeps every frame exactly once)

Alerts come from simple IoU tracking across consecutive frames of a file: a detection that overlaps
no live track (IoU below ``iou``) opens a track ("appeared"); a track unmatched for more than
``max_missed`` frames closes ("left"). Tracks live in the driver, so after a restart alerts restart
from an empty track set (the detections table itself is exactly once).

The frames are decoded in the detection task itself (the source's ``decode=lazy``): decoding them in
the source's read task would cost a second Python process per task, and each 320x240 frame's 230 KB
would be pickled to the JVM and sent on through Arrow, for no gain (the decode is about 1 % of the
detection). The detector, its device and its compiled programs live once per Python worker, and
programs compiled by one worker are loaded from the disk cache by the others
(:mod:`jacquard.spark_ext.accel`).

Metrics per micro-batch: input rows/s and processed rows/s (Spark's progress), end-to-end latency
per frame (the source's ingest timestamp to the result arriving in the sink), device busy time, and
the performance model's estimated FPGA time of the same network runs. The final summary has frames,
faces, fps, p50/p95 latency and estimated FPGA fps; a contact sheet PNG of detections is written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DETECTION_SCHEMA", "FaceTracker", "VcaApp", "VcaConfig", "detect_frames", "iou", "main"]

DETECTION_SCHEMA = ("file string, frame_index long, ingest timestamp, detected timestamp, faces int, "
                    "boxes array<float>, device string, detect_s double, device_s double, fpga_est_s double")


@dataclass
class VcaConfig:
    """What the application runs.

    Members
    -------
    video : str or None
        A video file or directory; None: Megamind.avi (Debian opencv-doc, fetched into the cache).
    frames : int
        Frames to process (at least; whole micro-batches), then the query stops.
    width, height : int
        Frames are resized to this before detection.
    frames_per_trigger : int
        ``maxFramesPerTrigger`` of the source: frames per micro-batch.
    fps : float or None
        Frame-rate limit of the source (a live camera), or None to read as fast as possible.
    device : str or None
        Device URI for tasks without an ``fpga`` resource (default ``emu``); ``cpu`` runs the same
        int8 networks on onnxruntime instead.
    min_face_size : int
    sink : str
        ``memory``, ``console`` or ``parquet``.
    output : str
        Folder for the parquet sink, the checkpoint and the contact sheet.
    master : str
        Spark master URL.
    devices : str or None
        Comma-separated device URIs the ``fpga`` discovery script reports (``JACQUARD_DEVICES``),
        e.g. ``emu:0,emu:1`` for ``local-cluster[2,1,1024]``.
    partitions : int
        Spark partitions (tasks) per micro-batch: the cores to spread a batch's frames over.
    iou, max_missed : float, int
        Tracking: see :class:`FaceTracker`.
    checkpoint : str or None
        Checkpoint folder; None: ``<output>/checkpoint``, cleared before each demo run.
    """

    video: str | None = None
    frames: int = 48
    width: int = 320
    height: int = 240
    frames_per_trigger: int = 8
    fps: float | None = None
    device: str | None = None
    min_face_size: int = 40
    sink: str = "memory"
    output: str = "build/demo"
    master: str = "local[2]"
    devices: str | None = None
    partitions: int = 2
    iou: float = 0.3
    max_missed: int = 2
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.sink not in ("memory", "console", "parquet"):
            raise ValueError(f"sink must be 'memory', 'console' or 'parquet', not {self.sink!r}")
        for name in ("frames", "width", "height", "frames_per_trigger", "min_face_size", "partitions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")


# -- executor side ----------------------------------------------------------------------------------

_DETECTORS: dict[tuple, Any] = {}


def _detector(device: str, min_face_size: int):
    from jacquard.spark_ext.mtcnn import DeviceRunner, Mtcnn, OrtRunner

    key = (device, min_face_size)
    if key not in _DETECTORS:
        runner = OrtRunner() if device == "cpu" else DeviceRunner(device)
        _DETECTORS[key] = Mtcnn(runner, min_face_size=min_face_size)
    return _DETECTORS[key]


def detect_frames(batches: Iterator[Any], *, device: str | None, min_face_size: int) -> Iterator[Any]:
    """``mapInPandas`` body: MTCNN on every frame of the ``jacquard.video`` rows, one row per frame out.

    The rows may carry their pixels (``decode=eager``) or only refer to them (``decode=lazy``);
    lazy frames are decoded here, in order, with one open file per task. ``detect_s`` is the time of
    decoding and detecting the frame, ``device_s`` the device's share of it.
    """
    import pandas as pd

    from jacquard.spark_ext.accel import process_stats
    from jacquard.spark_ext.binding import task_device_uri
    from jacquard.spark_ext.video_source import FrameDecoder, frames_of

    uri = device if device == "cpu" else task_device_uri(device)
    det = _detector(uri, min_face_size)
    stats = process_stats()
    with FrameDecoder("rgb24") as decoder:
        for pdf in batches:
            out = []
            images = frames_of(pdf, decoder)
            for file, index, ingest in zip(pdf["file"], pdf["frame_index"], pdf["timestamp"], strict=True):
                busy0, est0 = det.runner.busy_seconds, stats.estimated_fpga_seconds
                t0 = time.perf_counter()
                found = det.detect(next(images))
                seconds = time.perf_counter() - t0
                boxes = np.hstack([found.boxes, found.scores[:, None]]).astype(np.float32).ravel()
                out.append((file, index, ingest, dt.datetime.now(dt.UTC), len(found), boxes.tolist(), uri,
                            seconds, det.runner.busy_seconds - busy0, stats.estimated_fpga_seconds - est0))
            yield pd.DataFrame(out, columns=["file", "frame_index", "ingest", "detected", "faces", "boxes",
                                             "device", "detect_s", "device_s", "fpga_est_s"])


# -- driver side ------------------------------------------------------------------------------------

def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``x1, y1, x2, y2`` boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class FaceTracker:
    """Greedy IoU association of detections across frames; emits appeared / left alerts.

    Parameters
    ----------
    threshold : float
        Minimum IoU to continue a track.
    max_missed : int
        Frames a track may go unmatched before it is reported as left.
    """

    threshold: float = 0.3
    max_missed: int = 2
    tracks: dict[int, dict] = field(default_factory=dict)
    next_id: int = 0

    def update(self, file: str, frame: int, boxes: np.ndarray) -> list[dict]:
        """Feed one frame's boxes (``(n, 4+)``); returns the alerts it raises."""
        alerts = []
        live = {k: t for k, t in self.tracks.items() if t["file"] == file}
        pairs = sorted(((iou(t["box"], b), k, j) for k, t in live.items() for j, b in enumerate(boxes)),
                       reverse=True)
        used_tracks, used_boxes = set(), set()
        for score, k, j in pairs:
            if score < self.threshold or k in used_tracks or j in used_boxes:
                continue
            used_tracks.add(k)
            used_boxes.add(j)
            self.tracks[k].update(box=boxes[j], last=frame)
        for j, b in enumerate(boxes):
            if j not in used_boxes:
                self.tracks[self.next_id] = {"file": file, "box": b, "first": frame, "last": frame}
                alerts.append({"file": file, "frame_index": frame, "track": self.next_id,
                               "event": "face appeared", "box": [round(float(v), 1) for v in b[:4]]})
                self.next_id += 1
        for k, t in list(live.items()):
            if k not in used_tracks and frame - t["last"] > self.max_missed:
                alerts.append({"file": file, "frame_index": frame, "track": k, "event": "face left",
                               "box": [round(float(v), 1) for v in t["box"][:4]]})
                del self.tracks[k]
        return alerts


class VcaApp:
    """The streaming query and its sinks; :meth:`run` starts it and waits for ``frames`` frames.

    Members
    -------
    detections : dict of int to list of dict
        Per micro-batch id, its per-frame rows (memory sink; replaced if Spark replays a batch).
    alerts : list of dict
    batches : list of dict
        Per micro-batch metrics.
    """

    def __init__(self, config: VcaConfig, spark: Any | None = None, log=print) -> None:
        self.config = config
        self.log = log
        self.spark = spark
        self.detections: dict[int, list[dict]] = {}
        self.alerts: list[dict] = []
        self.batches: list[dict] = []
        self.tracker = FaceTracker(config.iou, config.max_missed)
        self.query = None
        self.wall_s = 0.0
        self._stopping = False

    def video_path(self) -> str:
        if self.config.video:
            return self.config.video
        from jacquard.spark_ext.media import megamind_avi

        return str(megamind_avi())

    def session(self):
        if self.spark is None:
            from jacquard.spark_ext.session import build_session

            self.spark = build_session(self.config.master, app_name="jacquard-vca",
                                       devices=self.config.devices)
        return self.spark

    def frames_seen(self) -> int:
        return sum(len(rows) for rows in self.detections.values())

    def _batch(self, df, batch_id: int) -> None:
        """The foreachBatch function: :meth:`_sink`, with a short error when :meth:`run` stops the query.

        Stopping cancels the micro-batch running in this callback, and its error goes back to the
        JVM with the whole Java stack trace in its message. Spark's stream thread decides whether
        that error means "stopped" with the regex ``((.|\r\n|\r|\n)*)`` over the message, which
        recurses once per character and can overflow the thread's stack (a StackOverflowError
        printed on every stop). While stopping, the error is replaced by a short one that the same
        regex still recognizes as an interruption. The batch stays uncommitted either way.
        """
        try:
            self._sink(df, batch_id)
        except Exception:
            if not self._stopping:
                raise
            raise RuntimeError("py4j.protocol.Py4JJavaError: An error occurred while calling the VCA sink: "
                               "java.lang.InterruptedException: the application stopped the query") from None

    def _sink(self, df, batch_id: int) -> None:
        rows = [r.asDict() for r in df.collect()]
        received = dt.datetime.now(dt.UTC)
        rows.sort(key=lambda r: (r["file"], r["frame_index"]))
        latencies = []
        for r in rows:
            ingest = r["ingest"]
            if ingest.tzinfo is None:  # Spark returns naive local timestamps
                ingest = ingest.astimezone(dt.UTC)
            r["latency_s"] = (received - ingest).total_seconds()
            latencies.append(r["latency_s"])
            boxes = np.asarray(r["boxes"], np.float64).reshape(-1, 5)
            alerts = self.tracker.update(r["file"], r["frame_index"], boxes)
            self.alerts.extend(a | {"batch": batch_id} for a in alerts)
        self.detections[batch_id] = rows
        cfg = self.config
        if cfg.sink == "parquet" and rows:
            import pandas as pd

            out = Path(cfg.output) / "detections"
            out.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_parquet(out / f"batch-{batch_id:06d}.parquet", index=False)
        elif cfg.sink == "console":
            for r in rows:
                self.log(f"  {Path(r['file']).name}#{r['frame_index']}: {r['faces']} face(s) "
                         f"{np.round(np.asarray(r['boxes']).reshape(-1, 5)[:, :4]).astype(int).tolist()}")
        metrics = {"batch": batch_id, "frames": len(rows), "faces": sum(r["faces"] for r in rows),
                   "device_s": sum(r["device_s"] for r in rows),
                   "fpga_est_s": sum(r["fpga_est_s"] for r in rows),
                   "latency_p50_s": float(np.percentile(latencies, 50)) if latencies else math.nan,
                   "devices": sorted({r["device"] for r in rows})}
        self.batches = [b for b in self.batches if b["batch"] != batch_id] + [metrics]
        self.log(f"batch {batch_id}: {metrics['frames']} frames, {metrics['faces']} faces, device busy "
                 f"{metrics['device_s']:.2f} s, latency p50 {metrics['latency_p50_s']:.2f} s, "
                 f"{self.frames_seen()} frames so far")

    def start(self):
        from jacquard.spark_ext.video_source import register

        cfg = self.config
        spark = self.session()
        register(spark)
        reader = (spark.readStream.format("jacquard.video").option("path", self.video_path())
                  .option("maxFramesPerTrigger", cfg.frames_per_trigger)
                  .option("width", cfg.width).option("height", cfg.height).option("decode", "lazy")
                  # Spread a micro-batch's frames over the cores.
                  .option("framesPerPartition", max(1, math.ceil(cfg.frames_per_trigger / cfg.partitions))))
        if cfg.fps:
            reader = reader.option("fps", cfg.fps)
        device, min_face = cfg.device, cfg.min_face_size
        # No frame filter: frames a bounded run reads past its target still reach the sink, so a
        # query restarted from the checkpoint loses none of them.
        frames = reader.load().select("file", "frame_index", "timestamp", "width", "height", "channels",
                                      "data")
        detected = frames.mapInPandas(
            lambda it: detect_frames(it, device=device, min_face_size=min_face), DETECTION_SCHEMA)
        checkpoint = cfg.checkpoint or str(Path(cfg.output) / "checkpoint")
        self._stopping = False
        self.query = (detected.writeStream.foreachBatch(self._batch)
                      .option("checkpointLocation", checkpoint).trigger(processingTime="0 seconds").start())
        return self.query

    def run(self, target: int | None = None, timeout: float = 1800.0) -> dict:
        """Start the query, wait until at least ``target`` frames (default ``frames``) reached the sink.

        The query stops once the micro-batch that reaches the target is committed, so a few more
        frames than asked may be processed (whole micro-batches), and a restart from the checkpoint
        continues after them instead of replaying them.
        """
        self.session()
        t0 = time.perf_counter()
        query = self.start()
        want = self.config.frames if target is None else target
        try:
            while self.frames_seen() < want or not self._committed(query):
                if query.exception() is not None:
                    raise RuntimeError(f"the streaming query failed: {query.exception()}")
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError(f"only {self.frames_seen()} of {want} frames after {timeout:.0f} s")
                time.sleep(0.2)
        finally:
            self.wall_s = time.perf_counter() - t0
            progress = list(query.recentProgress)
            self._stopping = True
            query.stop()
        return self.summary(progress)

    def _committed(self, query) -> bool:
        """Whether the last micro-batch the sink saw is committed (its progress event is posted).

        Stopping between the sink and the commit would make a restarted query replay that batch:
        the sink would see its frames again (at least once), and a bounded run would count them twice.
        """
        if not self.detections:
            return False
        progress = query.lastProgress
        if progress is None:
            return False
        progress = progress if isinstance(progress, dict) else json.loads(progress.json)
        return progress.get("batchId", -1) >= max(self.detections)

    def summary(self, progress: list | None = None) -> dict:
        rows = [r for b in sorted(self.detections) for r in self.detections[b]]
        lat = np.array([r["latency_s"] for r in rows]) if rows else np.zeros(1)
        fpga = sum(r["fpga_est_s"] for r in rows)
        rates = []
        for p in progress or []:
            p = p if isinstance(p, dict) else json.loads(p.json)
            if p.get("numInputRows"):
                rates.append({"batch": p["batchId"], "input_rows": p["numInputRows"],
                              "input_rows_per_s": p.get("inputRowsPerSecond"),
                              "processed_rows_per_s": p.get("processedRowsPerSecond")})
        return {"frames": len(rows), "faces": int(sum(r["faces"] for r in rows)),
                "frames_with_faces": sum(r["faces"] > 0 for r in rows), "alerts": len(self.alerts),
                "wall_s": self.wall_s, "fps": len(rows) / self.wall_s if self.wall_s else math.nan,
                "latency_p50_s": float(np.percentile(lat, 50)),
                "latency_p95_s": float(np.percentile(lat, 95)),
                "device_busy_s": float(sum(r["device_s"] for r in rows)),
                "estimated_fpga_fps": len(rows) / fpga if fpga else math.nan,
                "devices": sorted({r["device"] for r in rows}), "progress": rates}

    def contact_sheet(self, path: str | Path, tiles: int = 12, columns: int = 4) -> Path:
        """Write a PNG grid of frames with their detected boxes (frames with faces first, spread out)."""
        from PIL import Image, ImageDraw

        from jacquard.spark_ext.media import decode_frames

        rows = [r for b in sorted(self.detections) for r in self.detections[b]]
        with_faces = [r for r in rows if r["faces"]] or rows
        step = max(1, len(with_faces) / tiles)
        chosen = [with_faces[int(i * step)] for i in range(min(tiles, len(with_faces)))]
        w, h = self.config.width, self.config.height
        sheet = Image.new("RGB", (columns * w, max(1, math.ceil(len(chosen) / columns)) * h), "black")
        by_file: dict[str, dict[int, dict]] = {}
        for r in chosen:
            by_file.setdefault(r["file"], {})[r["frame_index"]] = r
        placed = 0
        for file, wanted in by_file.items():
            for frame in decode_frames(file):
                if frame.index in wanted:
                    r = wanted[frame.index]
                    tile = Image.fromarray(frame.to_array("rgb24", w, h))
                    draw = ImageDraw.Draw(tile)
                    for x1, y1, x2, y2, s in np.asarray(r["boxes"]).reshape(-1, 5):
                        draw.rectangle([x1, y1, x2, y2], outline=(255, 60, 0), width=2)
                        draw.text((x1 + 2, max(0, y1 - 11)), f"{s:.2f}", fill=(255, 220, 0))
                    draw.text((3, 3), f"#{frame.index}", fill=(255, 255, 255))
                    sheet.paste(tile, ((placed % columns) * w, (placed // columns) * h))
                    placed += 1
                if frame.index >= max(wanted):
                    break
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(path)
        return path


def _parser() -> argparse.ArgumentParser:
    d = VcaConfig()
    p = argparse.ArgumentParser(prog="python -m jacquard.spark_ext.vca_app",
                                description=__doc__.splitlines()[0])
    p.add_argument("--video", default=None,
                   help="video file or folder (default: Megamind.avi from opencv-doc)")
    p.add_argument("--frames", type=int, default=d.frames, help=f"frames to process (default {d.frames})")
    p.add_argument("--size", default=f"{d.width}x{d.height}", help="frame size WxH for detection")
    p.add_argument("--frames-per-trigger", type=int, default=d.frames_per_trigger)
    p.add_argument("--fps", type=float, default=None, help="source frame-rate limit (a live camera)")
    p.add_argument("--device", default=None, help="device URI (default emu); 'cpu' runs onnxruntime")
    p.add_argument("--min-face-size", type=int, default=d.min_face_size)
    p.add_argument("--sink", choices=("memory", "console", "parquet"), default=d.sink)
    p.add_argument("--output", default=d.output, help="folder for parquet, checkpoint and the contact sheet")
    p.add_argument("--master", default=d.master, help="Spark master (local[N], local-cluster[W,C,M], ...)")
    p.add_argument("--devices", default=None,
                   help="device URIs for the fpga discovery script, e.g. emu:0,emu:1 (local-cluster)")
    return p


def config_from_args(args: argparse.Namespace) -> VcaConfig:
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"error: --size takes WIDTHxHEIGHT, not {args.size!r}") from None
    return VcaConfig(video=args.video, frames=args.frames, width=width, height=height,
                     frames_per_trigger=args.frames_per_trigger, fps=args.fps, device=args.device,
                     min_face_size=args.min_face_size, sink=args.sink, output=args.output, master=args.master,
                     devices=args.devices)


def run_and_report(config: VcaConfig, console=None) -> dict:
    """Run the app with a fresh checkpoint, print the summary table, write the contact sheet."""
    import shutil

    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=120)
    if config.checkpoint is None:
        shutil.rmtree(Path(config.output) / "checkpoint", ignore_errors=True)
        shutil.rmtree(Path(config.output) / "detections", ignore_errors=True)
    app = VcaApp(config, log=lambda m: console.print(m, highlight=False))
    console.print(f"video {app.video_path()}, {config.frames} frames at {config.width}x{config.height}, "
                  f"{config.master}, device {config.device or 'fpga resource / emu'}, sink {config.sink}")
    summary = app.run()
    sheet = app.contact_sheet(Path(config.output) / "contact_sheet.png")
    summary["contact_sheet"] = str(sheet)
    table = Table(title="Jacquard VCA: MTCNN faces in video")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in (("frames", summary["frames"]), ("faces detected", summary["faces"]),
                 ("frames with faces", summary["frames_with_faces"]), ("alerts (appeared / left)",
                                                                        summary["alerts"]),
                 ("fps through Spark", f"{summary['fps']:.2f}"),
                 ("end-to-end latency p50", f"{summary['latency_p50_s']:.2f} s"),
                 ("end-to-end latency p95", f"{summary['latency_p95_s']:.2f} s"),
                 ("device busy time", f"{summary['device_busy_s']:.1f} s"),
                 ("estimated FPGA fps (networks, ULX3S-85F)", f"{summary['estimated_fpga_fps']:.1f}"),
                 ("devices", ", ".join(summary["devices"])), ("contact sheet", str(sheet))):
        table.add_row(k, str(v))
    console.print(table)
    for a in app.alerts[:20]:
        console.print(f"  alert: frame {a['frame_index']}: track {a['track']} {a['event']} at {a['box']}")
    if app.spark is not None:
        app.spark.stop()
    return summary


def main(argv: list[str] | None = None) -> int:
    run_and_report(config_from_args(_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
