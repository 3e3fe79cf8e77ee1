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
``data`` binary (``height * width * channels`` bytes, row-major HWC; null with ``decode=lazy``).

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
decode : str
    ``eager`` (default): the source's read task decodes the frames and ships their pixels in
    ``data``. ``lazy``: rows are frame references (``data`` and ``time_s`` null; ``width``,
    ``height`` and ``channels`` already those of the frame to come), and the task that consumes
    them decodes with :class:`FrameDecoder` or :func:`frames_of` in its own Python worker. A
    streaming task runs the source's read in one Python worker and a pandas UDF in another, so
    eager frames are decoded in one process, pickled to the JVM and sent again through Arrow to
    the next (230 KB per 320x240 RGB frame); lazy decoding skips that transfer and decodes once,
    where the pixels are used. Which frames exist, and which are skipped, is still decided by the
    driver's probe, so exactly-once and the bad-input counts are the same in both modes.

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
import numpy as np
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows
from pyspark.sql.types import StructType

from jacquard.spark_ext.media import FORMATS, DecodeStats, VideoProbe, decode_frames, probe_video

__all__ = [
    "DECODE_MODES",
    "SCHEMA",
    "SHORT_NAME",
    "FrameDecoder",
    "VideoDataSource",
    "VideoOptions",
    "VideoPartition",
    "VideoStreamReader",
    "frame_references",
    "frames_of",
    "register",
    "skipped_counts",
]

log = logging.getLogger(__name__)

SHORT_NAME = "jacquard.video"
SCHEMA = ("file string, frame_index long, timestamp timestamp, time_s double, "
          "width int, height int, channels int, data binary")


DECODE_MODES = ("eager", "lazy")


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
    decode : str
        ``eager`` or ``lazy``.
    """

    path: str
    max_frames_per_trigger: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    format: str = "rgb24"
    frames_per_partition: int | None = None
    decode: str = "eager"

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
        decode = opts.get("decode", "eager").lower()
        if decode not in DECODE_MODES:
            raise ValueError(f"jacquard.video option 'decode' must be one of {list(DECODE_MODES)}, "
                             f"not {opts['decode']!r}")
        return cls(os.path.abspath(path), positive("maxFramesPerTrigger", int), positive("fps", float),
                   width, height, fmt, positive("framesPerPartition", int), decode)

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
    skip : tuple of int
        ``decode=lazy`` only: indices in the range the probe found bad (wrong size), which the
        lazy reader leaves out as the eager one does.
    size : tuple of (int, int) or None
        ``decode=lazy`` only: the file's frame size (width, height) when frames are not resized.
    """

    file: str
    start: int
    end: int
    frames: int
    skip: tuple[int, ...] = ()
    size: tuple[int, int] | None = None


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
            if first >= stop:
                continue
            bad, size = self._lazy_plan(path, total)
            chunk = step or max(1, stop - first)
            for lo in range(first, stop, chunk):
                hi = min(stop, lo + chunk)
                parts.append(VideoPartition(path, lo, hi, total, tuple(i for i in bad if lo <= i < hi), size))
        return parts

    def _lazy_plan(self, path: str, total: int) -> tuple[tuple[int, ...], tuple[int, int] | None]:
        """What a lazy reader needs from the probe: bad frame indices and the frame size."""
        if self.options.decode != "lazy" or self.options.resize:
            return (), None  # eager readers decode; resized frames are never bad
        probe = self._probe(path)  # cached; after a restart the driver probes the file again
        if isinstance(probe, str) or probe.frames != total:
            now = probe if isinstance(probe, str) else f"{probe.frames} frames, the query planned {total}"
            raise RuntimeError(f"jacquard.video: {path} changed after it was listed ({now}). "
                               "Replace files by moving new ones in under new names.")
        return probe.bad_frames, (probe.src_width, probe.src_height)

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
        if self.options.decode == "lazy":
            return frame_references(partition, self.options)
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


def frame_references(part: VideoPartition, options: VideoOptions) -> Iterator[tuple]:
    """``decode=lazy`` rows for ``part``: every frame the probe found good, without pixels."""
    width, height = (options.width, options.height) if options.resize else part.size
    channels = FORMATS[options.format]
    skip = set(part.skip)
    for index in range(part.start, part.end):
        if index not in skip:
            yield (part.file, index, dt.datetime.now(dt.UTC), None, width, height, channels, None)


class FrameDecoder:
    """Decodes the frames ``decode=lazy`` rows refer to, in the task that consumes them.

    Frames must be asked for in increasing index per file (as a partition's rows come); each file
    stays open between calls, so a micro-batch's frames cost one sequential decode, the same as
    the eager reader's. Asking for an earlier frame reopens the file. Use as a context manager,
    or call :meth:`close`.

    Parameters
    ----------
    fmt : str
        Pixel format of the arrays (``rgb24``, ``bgr24`` or ``gray``); must match the rows'
        ``channels``.

    Raises
    ------
    ValueError
        If ``fmt`` is not a known format.
    """

    def __init__(self, fmt: str = "rgb24") -> None:
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {sorted(FORMATS)}, not {fmt!r}")
        self.fmt = fmt
        self._file: str | None = None
        self._frames: Iterator[Any] | None = None
        self._next = 0  # index of the next frame self._frames yields

    def frame(self, file: str, index: int, width: int, height: int, channels: int) -> np.ndarray:
        """Frame ``index`` of ``file`` as ``(height, width, channels)`` uint8.

        The frame is resized to ``width`` x ``height`` unless that is already its size.

        Raises
        ------
        ValueError
            If ``channels`` does not match the decoder's format.
        RuntimeError
            If ``file`` has no frame ``index`` (it changed after the driver listed it).
        """
        if FORMATS[self.fmt] != channels:
            raise ValueError(f"rows of {channels} channel(s) cannot be decoded as {self.fmt!r}")
        if file != self._file or index < self._next:
            self.close()
            self._file, self._frames, self._next = file, decode_frames(file), 0
        assert self._frames is not None
        for frame in self._frames:
            self._next = frame.index + 1
            if frame.index == index:
                if (frame.src_width, frame.src_height) == (width, height):
                    return frame.to_array(self.fmt)
                return frame.to_array(self.fmt, width, height)
        self.close()
        raise RuntimeError(f"jacquard.video: {file} changed after it was listed: it has no frame {index}. "
                           "Replace files by moving new ones in under new names.")

    def close(self) -> None:
        """Close the open file, if any."""
        if self._frames is not None:
            self._frames.close()  # type: ignore[attr-defined]
        self._file, self._frames, self._next = None, None, 0

    def __enter__(self) -> FrameDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def frames_of(rows: Any, decoder: FrameDecoder) -> Iterator[np.ndarray]:
    """The pixels of each row of a ``jacquard.video`` pandas DataFrame, eager or lazy, in order.

    Parameters
    ----------
    rows : pandas.DataFrame
        At least ``file``, ``frame_index``, ``width``, ``height``, ``channels`` and ``data``.
    decoder : FrameDecoder
        Decodes the rows whose ``data`` is null (``decode=lazy``); keep one per task.

    Yields
    ------
    ndarray
        ``(height, width, channels)`` uint8.
    """
    for file, index, width, height, channels, data in zip(
            rows["file"], rows["frame_index"], rows["width"], rows["height"], rows["channels"], rows["data"],
            strict=True):
        if data is None:
            yield decoder.frame(file, int(index), int(width), int(height), int(channels))
        else:
            yield np.frombuffer(data, np.uint8).reshape(int(height), int(width), int(channels))


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

