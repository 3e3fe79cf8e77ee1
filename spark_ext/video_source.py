"""``spark.readStream.format("jacquard.video")``: video frames as an exactly-once stream.

A PySpark Python data source (``pyspark.sql.datasource``) with a streaming reader. It reads the
frames of one video file, or of every file in a directory (new files are picked up as they
appear; write them elsewhere and move them in, as with Spark's file sources). Frames are decoded
with PyAV and delivered as raw HWC uint8 pixels::

    from jacquard.spark_ext.video_source import register
    register(spark)
    frames = (spark.readStream.format("jacquard.video")
              .option("path", "videos/").option("maxFramesPerTrigger", 32)
              .option("width", 160).option("height", 120).load())

Schema
------
``file`` string, ``frame_index`` long (0-based, PyAV's decode order), ``timestamp`` timestamp
(ingest time: when the reader decoded the frame, for end-to-end latency), ``time_s`` double (the
frame's presentation time in the video), ``width`` int, ``height`` int, ``channels`` int,
``data`` binary (``height * width * channels`` bytes, row-major HWC).

Options
-------
path : str (required)
    A video file or a directory of them. Names starting with ``.`` or ``_`` and subdirectories
    are ignored. It must exist when the query starts.
maxFramesPerTrigger : int
    At most this many frames per micro-batch (Spark's ``ReadMaxRows`` read limit).
fps : float
    Frame-rate limit, emulating a camera that started with the query: frame ``n`` (counted over
    the whole stream) becomes readable at ``t0 + n / fps``. A micro-batch never holds frames
    newer than the wall clock allows. After a restart, frames already due are read at once.
width, height : int
    Resize every frame to this size (both or neither). Without them frames keep the file's size.
format : str
    ``rgb24`` (default, 3 channels), ``bgr24`` (3) or ``gray`` (1).
framesPerPartition : int
    Split a file's range in a micro-batch into Spark partitions of at most this many frames, so
    one long file is decoded by several tasks. By default one partition per file per batch.

Exactly once
------------
The offset is JSON: for each file, ``[next frame index, frame count]``, plus the stream's start
time ``t0`` and the skipped-input record. Everything the query needs is in the offset, which
Spark checkpoints; partitions name ``(file, first index, end index)`` and readers hold no
state. A query restarted from its checkpoint re-reads exactly the ranges it had not committed,
so with an idempotent sink (Spark's file sink) every ``(file, frame_index)`` lands once.

Bad input: skipped, counted, and logged
---------------------------------------
The source never fails the query because of one bad file. The driver decodes each new file
once when the stream reaches it (:func:`jacquard.spark_ext.media.probe_video`) and decides:

* an unreadable path (permission denied, a broken link, an I/O error), a corrupt file that is
  not a video, a file with no video stream or no decodable frame: the whole file is skipped;
* a truncated or damaged file: its decodable frames are delivered, and the frames it lost
  (packets that did not decode, frames its header announces but the file does not hold) are
  counted;
* a frame whose size differs from the file's first frame (when no ``width``/``height`` resize
  is set) is skipped and counted; with a resize, every frame is resized. Channels are always
  those of ``format``, because every frame is converted to it.

Each skip is logged as a warning once and recorded in the offset, under ``skipped_files``
(path -> reason) and ``skipped_frames`` (path -> {"count", "reason"}). Offsets are part of every
``StreamingQueryProgress``, so the counts are exposed by :func:`skipped_counts` and by
:class:`jacquard.spark_ext.metrics.FrameMetricsListener`, and they survive restarts. A file
changed after it was first seen (its frames no longer decode as probed) fails the task with a
clear error rather than silently dropping or inventing frames.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import av
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows
from pyspark.sql.types import StructType

from jacquard.spark_ext.media import FORMATS, DecodeStats, VideoProbe, decode_frames, probe_video

__all__ = [
    "SCHEMA",
    "SHORT_NAME",
    "VideoDataSource",
    "VideoOptions",
    "VideoPartition",
    "VideoStreamReader",
    "register",
    "skipped_counts",
]

log = logging.getLogger(__name__)

SHORT_NAME = "jacquard.video"
SCHEMA = ("file string, frame_index long, timestamp timestamp, time_s double, "
          "width int, height int, channels int, data binary")


@dataclass(frozen=True)
class VideoOptions:
    """The source's options, parsed and checked.

    Members
    -------
    path : str
        Absolute path of the file or directory.
    max_frames_per_trigger : int or None
    fps : float or None
    width, height : int or None
    format : str
    frames_per_partition : int or None
    """

    path: str
    max_frames_per_trigger: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    format: str = "rgb24"
    frames_per_partition: int | None = None

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> VideoOptions:
        """Parse Spark's string options (names are case-insensitive).

        Raises
        ------
        ValueError
            If ``path`` is missing or does not exist, or an option has a bad value.
        """
        opts = {k.lower(): v for k, v in options.items()}
        path = opts.get("path")
        if not path:
            raise ValueError("jacquard.video needs option 'path' (a video file or a directory of them)")
        if not os.path.exists(path):
            raise ValueError(f"jacquard.video option 'path' does not exist: {path!r}")

        def positive(name: str, kind: type) -> Any:
            raw = opts.get(name.lower())
            if raw is None:
                return None
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"jacquard.video option {name!r} must be a positive {kind.__name__}, "
                                 f"not {raw!r}") from None
            if not value > 0 or (kind is float and not math.isfinite(value)):
                raise ValueError(f"jacquard.video option {name!r} must be > 0, not {raw!r}")
            return value

        width, height = positive("width", int), positive("height", int)
        if (width is None) != (height is None):
            raise ValueError(f"jacquard.video options 'width' and 'height' go together, not "
                             f"width={width!r} height={height!r}")
        fmt = opts.get("format", "rgb24")
        if fmt not in FORMATS:
            raise ValueError(f"jacquard.video option 'format' must be one of {sorted(FORMATS)}, not {fmt!r}")
        return cls(os.path.abspath(path), positive("maxFramesPerTrigger", int), positive("fps", float),
                   width, height, fmt, positive("framesPerPartition", int))

    @property
    def resize(self) -> bool:
        return self.width is not None


class VideoDataSource(DataSource):
    """The ``jacquard.video`` data source (streaming reads only). See the module docstring."""

    @classmethod
    def name(cls) -> str:
        return SHORT_NAME

    def schema(self) -> str:
        return SCHEMA

    def streamReader(self, schema: StructType) -> VideoStreamReader:
        return VideoStreamReader(VideoOptions.parse(self.options))


@dataclass(frozen=True)
class VideoPartition(InputPartition):
    """Frames ``start <= index < end`` of one file, read by one Spark task.

    Members
    -------
    file : str
    start, end : int
    frames : int
        The file's frame count when it was probed, to detect a file changed since.
    """

    file: str
    start: int
    end: int
    frames: int


class VideoStreamReader(DataSourceStreamReader):
    """Plans micro-batches from offsets; reads frames in the executors.

    It runs in two places: ``initialOffset``, ``latestOffset`` and ``partitions`` in a Python
    process on the driver, ``read`` in executors' Python workers. The only thing kept between
    calls is a cache of probe results keyed by file identity, which is a pure function of the
    file, so losing it (a restart) changes nothing.

    Parameters
    ----------
    options : VideoOptions
    """

    def __init__(self, options: VideoOptions) -> None:
        self.options = options
        self._probes: dict[tuple[str, int, int], VideoProbe | str] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Spark pickles the reader into every read task; the driver's probe cache stays behind.
        return {"options": self.options, "_probes": {}}

    # -- driver side -------------------------------------------------------------------------

    def initialOffset(self) -> dict:
        return {"t0": time.time(), "files": {}, "skipped_files": {}, "skipped_frames": {}}

    def getDefaultReadLimit(self) -> ReadLimit:
        n = self.options.max_frames_per_trigger
        return ReadMaxRows(n) if n is not None else ReadAllAvailable()

    def latestOffset(self, start: dict, limit: ReadLimit) -> dict:
        files = {f: list(v) for f, v in start["files"].items()}
        skipped_files = dict(start["skipped_files"])
        skipped_frames = dict(start["skipped_frames"])
        budget = limit.max_rows if isinstance(limit, ReadMaxRows) else math.inf
        if self.options.fps is not None:
            consumed = sum(pos for pos, _ in files.values())
            # The epsilon keeps frame n due at t0 + n/fps despite rounding (epoch floats have ~0.2 us ulp).
            due = math.floor((time.time() - start["t0"]) * self.options.fps + 1e-3) + 1
            budget = min(budget, max(0, due - consumed))
        # Files in name order. A new file is probed (decoded once) only when the stream reaches it,
        # so a large backlog does not stall the first trigger.
        for path in sorted(set(self._list()) | set(files)):
            if path in skipped_files or (path not in files and budget <= 0):
                continue
            if path not in files:
                probe = self._probe(path)
                if isinstance(probe, str):
                    log.warning("jacquard.video: skipping %s: %s", path, probe)
                    skipped_files[path] = probe
                    continue
                files[path] = [0, probe.frames]
                if probe.skipped:
                    reason = "; ".join(probe.problems)
                    log.warning("jacquard.video: %s: %d frame(s) skipped: %s", path, probe.skipped, reason)
                    skipped_frames[path] = {"count": probe.skipped, "reason": reason}
            pos, total = files[path]
            take = int(min(budget, total - pos))
            if take > 0:
                files[path] = [pos + take, total]
                budget -= take
        # Sorted keys: Spark compares offsets by their JSON, so equal content must serialize equally.
        return {"t0": start["t0"], "files": dict(sorted(files.items())),
                "skipped_files": dict(sorted(skipped_files.items())),
                "skipped_frames": dict(sorted(skipped_frames.items()))}

    def reportLatestOffset(self) -> dict | None:
        return None

    def partitions(self, start: dict, end: dict) -> Sequence[InputPartition]:
        step = self.options.frames_per_partition
        parts: list[InputPartition] = []
        for path, (stop, total) in end["files"].items():
            first = start["files"].get(path, [0, total])[0]
            chunk = step or max(1, stop - first)
            for lo in range(first, stop, chunk):
                parts.append(VideoPartition(path, lo, min(stop, lo + chunk), total))
        return parts

    def commit(self, end: dict) -> None:
        pass  # Nothing to release: the files stay, and the offsets carry all state.

    def _list(self) -> list[str]:
        root = self.options.path
        if not os.path.isdir(root):
            return [root]
        try:
            names = os.listdir(root)
        except OSError as exc:  # the directory became unreadable: nothing new this trigger
            log.warning("jacquard.video: cannot list %s: %s", root, exc)
            return []
        paths = []
        for name in sorted(names):
            full = os.path.join(root, name)
            if name.startswith((".", "_")) or os.path.isdir(full):
                continue
            paths.append(full)
        return paths

    def _probe(self, path: str) -> VideoProbe | str:
        """The file's probe, or the reason it is skipped as a whole."""
        try:
            st = os.stat(path)
        except OSError as exc:  # broken link, vanished, no permission on a parent
            return f"unreadable: {exc}"
        key = (path, st.st_size, st.st_mtime_ns)
        if key not in self._probes:
            try:
                with open(path, "rb"):  # a clear "permission denied" before PyAV's generic error
                    pass
                self._probes[key] = probe_video(path, resize=self.options.resize)
            except (OSError, av.error.FFmpegError) as exc:  # unreadable, or PyAV cannot open it
                self._probes[key] = f"unreadable or not a video: {exc}"
            except ValueError as exc:  # ours: no video stream, or no frame decodes
                self._probes[key] = str(exc)
        return self._probes[key]

    # -- executor side -----------------------------------------------------------------------

    def read(self, partition: InputPartition) -> Iterator[tuple]:
        assert isinstance(partition, VideoPartition)
        return read_frames(partition, self.options)


def read_frames(part: VideoPartition, options: VideoOptions) -> Iterator[tuple]:
    """Rows for frames ``part.start <= index < part.end`` of ``part.file`` (skipping bad ones).

    Raises
    ------
    RuntimeError
        If the file no longer decodes to ``part.frames`` frames (it changed after it was probed).
    """
    channels = FORMATS[options.format]
    stats = DecodeStats()
    first: tuple[int, int] | None = None
    decoded = 0
    for frame in decode_frames(part.file, stats):
        decoded = frame.index + 1
        size = (frame.src_width, frame.src_height)
        first = size if first is None else first
        if frame.index < part.start:
            continue
        if frame.index >= part.end:
            break
        if size != first and not options.resize:
            continue  # counted by the driver's probe, which saw the same decode
        array = frame.to_array(options.format, options.width, options.height)
        height, width = array.shape[:2]
        yield (part.file, frame.index, dt.datetime.now(dt.UTC), float(frame.time_s),
               width, height, channels, array.tobytes())
    if decoded < part.end or (part.end == part.frames and decoded != part.frames):
        raise RuntimeError(
            f"jacquard.video: {part.file} changed after it was listed: it decodes to {decoded} frames, "
            f"the query planned {part.frames}. Replace files by moving new ones in under new names.")


def register(spark: Any) -> None:
    """Register the ``jacquard.video`` source with ``spark`` (a SparkSession)."""
    spark.dataSource.register(VideoDataSource)


def skipped_counts(progress_or_offset: Any) -> dict[str, Any]:
    """What the source skipped so far, from a query's progress or from an end offset.

    Parameters
    ----------
    progress_or_offset : StreamingQueryProgress, dict or str
        ``query.lastProgress`` (a dict), a ``StreamingQueryProgress`` from a listener, or the
        source's offset (dict or JSON string).

    Returns
    -------
    dict
        ``{"files": n files skipped, "frames": n frames skipped, "skipped_files": {...},
        "skipped_frames": {...}}``; zeros when the progress has no jacquard.video offset yet.
    """
    offset = _find_offset(progress_or_offset)
    files = offset.get("skipped_files", {}) if offset else {}
    frames = offset.get("skipped_frames", {}) if offset else {}
    return {"files": len(files), "frames": sum(v["count"] for v in frames.values()),
            "skipped_files": files, "skipped_frames": frames}


def _find_offset(obj: Any) -> dict | None:
    if obj is None:
        return None
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError:
            return None
    if isinstance(obj, Mapping):
        if "skipped_files" in obj and "files" in obj:
            return dict(obj)
        sources = obj.get("sources")
    else:
        sources = getattr(obj, "sources", None)
    for source in sources or []:
        end = source.get("endOffset") if isinstance(source, Mapping) else getattr(source, "endOffset", None)
        found = _find_offset(end)
        if found is not None:
            return found
    return None

