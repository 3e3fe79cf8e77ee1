"""The ``jacquard.video`` streaming source: planning, exactly-once, bad input, and real Spark queries.

The first half drives the reader the way Spark does (initialOffset -> latestOffset -> partitions
-> read, offsets through JSON as in the checkpoint) without a JVM, so the offset logic is checked
fast and thoroughly. The second half runs real streaming queries on one shared ``local[2]``
session: real Megamind.avi frames, stop/restart and a killed Python worker with exactly-once
output, and bad input that is skipped and counted while the other files are fully processed.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadMaxRows

from jacquard.spark_ext import media, video_source
from jacquard.spark_ext.video_source import (
    FrameDecoder,
    VideoOptions,
    VideoPartition,
    VideoStreamReader,
    frames_of,
    skipped_counts,
)

W, H = 32, 24


def pyav_frames(path: Path, fmt: str = "rgb24", size: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
    """PyAV's own decode of ``path``, independent of the source: index -> HWC array."""
    import av

    out = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            kw = {"width": size[0], "height": size[1]} if size else {}
            out[i] = frame.to_ndarray(format=fmt, **kw)
    return out


def check_frames(rows, expected: dict[str, dict[int, np.ndarray]]) -> None:
    """Every expected (file, index) exactly once, with PyAV's pixels; print the first mismatch."""
    counts = Counter((r[0], r[1]) for r in rows)
    dupes = {k: n for k, n in counts.items() if n > 1}
    assert not dupes, f"duplicated frames: {sorted(dupes.items())[:5]}"
    want = {(f, i) for f, frames in expected.items() for i in frames}
    missing, extra = sorted(want - counts.keys()), sorted(counts.keys() - want)
    assert not missing and not extra, f"missing {missing[:5]} (of {len(missing)}), unexpected {extra[:5]}"
    for file, index, width, height, channels, data in ((r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows):
        ref = expected[file][index]
        got = np.frombuffer(data, np.uint8).reshape(height, width, channels)
        assert got.shape == ref.reshape(got.shape).shape and np.array_equal(got, ref.reshape(got.shape)), (
            f"{file} frame {index}: first differing pixel "
            f"{np.argwhere(got != ref.reshape(got.shape))[:1].tolist()}")


def offline_batches(options: dict[str, str], *, batches: int = 1000, offset: dict | None = None,
                    limit=None, between=None):
    """Run the reader like Spark's driver and executors, offsets through JSON. Yields (rows, end).

    With ``decode=lazy`` the rows' pixels come from a :class:`FrameDecoder` per partition, as in
    the consuming task, so rows look the same in both modes.
    """
    reader = VideoStreamReader(VideoOptions.parse(options))
    lazy = reader.options.decode == "lazy"
    start = json.loads(json.dumps(offset if offset is not None else reader.initialOffset()))
    for n in range(batches):
        if between is not None:
            between(n)
        end = json.loads(json.dumps(reader.latestOffset(start, limit or reader.getDefaultReadLimit())))
        if json.dumps(end) == json.dumps(start):
            return
        rows = []
        for part in reader.partitions(start, end):
            assert isinstance(part, VideoPartition)
            read = list(reader.read(part))
            if lazy:
                assert all(r[3] is None and r[7] is None for r in read), "lazy rows carry no pixels"
                pdf = pd.DataFrame(read, columns=["file", "frame_index", "timestamp", "time_s", "width",
                                                  "height", "channels", "data"])
                with FrameDecoder(options.get("format", "rgb24")) as decoder:
                    read = [(*r[:7], a.tobytes()) for r, a in zip(read, frames_of(pdf, decoder), strict=True)]
            rows += [(r[0], r[1], r[4], r[5], r[6], r[7]) for r in read]
        yield rows, end
        start = end


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A directory of three small synthetic videos, two codecs, different lengths."""
    root = tmp_path_factory.mktemp("clips")
    media.write_video(root / "a.avi", 23, W, H, seed=1)
    media.write_video(root / "b.mkv", 17, W, H, seed=2, codec="mjpeg")
    media.write_video(root / "c.avi", 11, W, H, seed=3)
    return root


def expected_for(root: Path, **kw) -> dict[str, dict[int, np.ndarray]]:
    return {str(p): pyav_frames(p, **kw) for p in sorted(root.iterdir()) if not p.name.startswith((".", "_"))}


# -- offline: the reader's offsets and reads, no JVM ---------------------------------------------

@pytest.mark.parametrize("options, match", [
    ({}, "needs option 'path'"),
    ({"path": "/nonexistent/video.avi"}, "does not exist"),
    ({"path": ".", "maxFramesPerTrigger": "0"}, "maxFramesPerTrigger"),
    ({"path": ".", "fps": "fast"}, "'fps' must be a positive float"),
    ({"path": ".", "fps": "inf"}, "'fps' must be > 0"),
    ({"path": ".", "width": "32"}, "'width' and 'height' go together"),
    ({"path": ".", "format": "yuv420p"}, "'format' must be one of"),
    ({"path": ".", "decode": "later"}, "'decode' must be one of"),
])
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        VideoOptions.parse(options)


@pytest.mark.parametrize("decode", ["eager", "lazy"])
def test_batches_exactly_once_with_limit_and_new_files(clips, tmp_path, decode):
    root = tmp_path / "in"
    root.mkdir()
    for p in clips.iterdir():
        if p.name != "c.avi":
            os.link(p, root / p.name)

    def arrive(n):  # a file is moved in while the stream runs
        if n == 3:
            os.link(clips / "c.avi", root / "c.avi")

    rows, sizes = [], []
    for batch, _end in offline_batches({"path": str(root), "maxFramesPerTrigger": "7",
                                        "framesPerPartition": "3", "decode": decode}, between=arrive):
        rows += batch
        sizes.append(len(batch))
    assert max(sizes) == 7 and sum(sizes) == 23 + 17 + 11, sizes
    check_frames(rows, expected_for(root))


@pytest.mark.parametrize("decode", ["eager", "lazy"])
def test_restart_from_serialized_offset_resumes(clips, decode):
    """A new reader (a restarted driver: empty caches) continues from a checkpointed offset."""
    options = {"path": str(clips), "maxFramesPerTrigger": "10", "decode": decode}
    first = list(offline_batches(options, batches=2))
    assert len(first) == 2
    rest = list(offline_batches(options, offset=first[-1][1]))
    rows = [r for batch, _ in first + rest for r in batch]
    check_frames(rows, expected_for(clips))


def test_read_all_available_ignores_max_frames(clips):
    reader = VideoStreamReader(VideoOptions.parse({"path": str(clips), "maxFramesPerTrigger": "5"}))
    assert reader.getDefaultReadLimit() == ReadMaxRows(5)
    end = reader.latestOffset(reader.initialOffset(), ReadAllAvailable())
    assert sum(pos for pos, _ in end["files"].values()) == 23 + 17 + 11
    # Nothing new: the same offset, serialized identically, so Spark runs no empty batch.
    assert json.dumps(reader.latestOffset(end, ReadAllAvailable())) == json.dumps(end)


def test_fps_limit(clips, monkeypatch):
    """Frame n is readable at t0 + n/fps; a batch never holds frames newer than the wall clock."""
    reader = VideoStreamReader(VideoOptions.parse({"path": str(clips), "fps": "50"}))
    start = reader.initialOffset()
    t0 = start["t0"]
    for elapsed, due in [(0.0, 1), (0.099, 5), (0.1, 6), (0.5, 26), (10.0, 51)]:
        monkeypatch.setattr(video_source.time, "time", lambda e=elapsed: t0 + e)
        end = reader.latestOffset(start, reader.getDefaultReadLimit())
        assert sum(pos for pos, _ in end["files"].values()) == due, (elapsed, end["files"])


@pytest.mark.parametrize("decode", ["eager", "lazy"])
def test_resize_and_formats(clips, decode):
    path = clips / "a.avi"
    for fmt, channels in [("rgb24", 3), ("bgr24", 3), ("gray", 1)]:
        rows = [r for batch, _ in offline_batches({"path": str(path), "width": "16", "height": "12",
                                                   "format": fmt, "decode": decode}) for r in batch]
        assert {(r[2], r[3], r[4]) for r in rows} == {(16, 12, channels)}
        check_frames(rows, {str(path): pyav_frames(path, fmt=fmt, size=(16, 12))})


def make_bad_inputs(root: Path, clips: Path) -> dict[str, object]:
    """Good files next to each kind of bad input; returns what the source must deliver and count."""
    root.mkdir()
    os.link(clips / "a.avi", root / "good.avi")
    (root / "corrupt.avi").write_bytes(b"RIFF" + bytes(np.random.default_rng(7).integers(0, 256, 5000,
                                                                                        dtype=np.uint8)))
    data = (clips / "a.avi").read_bytes()
    (root / "truncated.avi").write_bytes(data[: len(data) * 3 // 4])
    media.write_video(root / "wrongsize.avi", 12, W, H, codec="mjpeg", seed=5, odd_sizes={4: (16, 16),
                                                                                      9: (W, 16)})
    (root / "unreadable.avi").symlink_to(root / "vanished.avi")  # a broken link
    (root / ".hidden.avi").write_bytes(b"not read")
    (root / "_temporary").mkdir()
    truncated = pyav_frames(root / "truncated.avi")
    wrong = pyav_frames(root / "wrongsize.avi")
    return {
        "expected": {str(root / "good.avi"): pyav_frames(root / "good.avi"),
                     str(root / "truncated.avi"): truncated,
                     str(root / "wrongsize.avi"): {i: a for i, a in wrong.items() if i not in (4, 9)}},
        "skipped_files": {str(root / "corrupt.avi"), str(root / "unreadable.avi")},
        # The truncated copy lost what its header still announces; two frames have the wrong size.
        "skipped_frames": {str(root / "truncated.avi"): 23 - len(truncated), str(root / "wrongsize.avi"): 2},
    }


def check_skips(counts: dict, bad: dict) -> None:
    assert set(counts["skipped_files"]) == bad["skipped_files"], counts
    assert {f: v["count"] for f, v in counts["skipped_frames"].items()} == bad["skipped_frames"], counts
    assert counts["files"] == 2 and counts["frames"] == sum(bad["skipped_frames"].values())
    assert "No such file" in counts["skipped_files"][next(f for f in bad["skipped_files"]
                                                          if f.endswith("unreadable.avi"))]


@pytest.mark.parametrize("decode", ["eager", "lazy"])
def test_bad_input_skipped_and_counted_offline(clips, tmp_path, decode):
    bad = make_bad_inputs(tmp_path / "bad", clips)
    assert 0 < bad["skipped_frames"][str(tmp_path / "bad" / "truncated.avi")] < 23
    batches = list(offline_batches({"path": str(tmp_path / "bad"), "maxFramesPerTrigger": "8",
                                    "decode": decode}))
    check_frames([r for b, _ in batches for r in b], bad["expected"])
    check_skips(skipped_counts(batches[-1][1]), bad)


def test_changed_file_fails_clearly(clips, tmp_path):
    path = tmp_path / "v.avi"
    media.write_video(path, 5, W, H)
    options = VideoOptions.parse({"path": str(path)})
    with pytest.raises(RuntimeError, match="changed after it was listed"):
        list(video_source.read_frames(VideoPartition(str(path), 0, 8, 8), options))
    with FrameDecoder() as decoder, pytest.raises(RuntimeError, match="changed after it was listed"):
        decoder.frame(str(path), 6, W, H, 3)


def test_frame_decoder_order_and_bad_calls(clips):
    """Frames asked out of order reopen the file and still equal PyAV's; wrong format is refused."""
    path = clips / "a.avi"
    ref = pyav_frames(path)
    with FrameDecoder() as decoder:
        for index in (3, 4, 9, 2, 22, 0):
            got = decoder.frame(str(path), index, W, H, 3)
            assert np.array_equal(got, ref[index]), f"frame {index}"
        with pytest.raises(ValueError, match="cannot be decoded as 'rgb24'"):
            decoder.frame(str(path), 1, W, H, 1)
    with pytest.raises(ValueError, match="fmt must be one of"):
        FrameDecoder("yuv")


def test_media_fetch_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("JACQUARD_CACHE", str(tmp_path))  # an empty cache: a fetch is needed
    monkeypatch.setattr(media.shutil, "which", lambda tool: None)
    with pytest.raises(media.MediaUnavailableError, match="`apt-get` is not available"):
        media.megamind_avi()
    with pytest.raises(ValueError, match="plain name"):
        media.fetch_opencv_doc("../etc/passwd")


# -- Spark: real streaming queries on one local[2] session ----------------------------------------

@pytest.fixture(scope="module")
def spark():
    from jacquard.spark_ext.session import build_session

    session = build_session("local[2]", app_name="test_video_source")
    video_source.register(session)
    yield session
    session.stop()


def stream(spark, path: Path, **options):
    reader = spark.readStream.format("jacquard.video").option("path", str(path))
    for key, value in options.items():
        reader = reader.option(key, str(value))
    return reader.load()


def sink_rows(spark, out: Path):
    df = spark.read.parquet(str(out))
    return [(r.file, r.frame_index, r.width, r.height, r.channels, r.data)
            for r in df.select("file", "frame_index", "width", "height", "channels", "data").collect()]


def test_megamind_frames_equal_pyav(spark):
    """The first micro-batch of real Megamind.avi: 36 frames at 64x48, equal to PyAV's own decode."""
    path = media.megamind_avi()
    q = (stream(spark, path, width=64, height=48, maxFramesPerTrigger=36)
         .writeStream.format("memory").queryName("megamind").start())
    try:
        deadline = time.monotonic() + 300
        while q.lastProgress is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        q.stop()
    rows = [(r.file, r.frame_index, r.width, r.height, r.channels, r.data)
            for r in spark.sql("select * from megamind where frame_index < 36").collect()]
    reference = pyav_frames(path, size=(64, 48))
    assert len(reference) == 270
    check_frames(rows, {str(path): {i: reference[i] for i in range(36)}})


def test_stop_and_restart_exactly_once(spark, clips, tmp_path):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"

    def start():
        return (stream(spark, clips, maxFramesPerTrigger=8, framesPerPartition=4)
                .writeStream.format("parquet").option("path", str(out))
                .option("checkpointLocation", str(ckpt)).start())

    q = start()
    deadline = time.monotonic() + 300
    while (q.lastProgress is None or q.lastProgress["batchId"] < 1) and time.monotonic() < deadline:
        time.sleep(0.2)
    q.stop()  # in the middle: 2 of 7 batches done, maybe one in flight
    partial = len(sink_rows(spark, out))
    assert 0 < partial < 23 + 17 + 11, partial
    q = start()
    try:
        q.processAllAvailable()
    finally:
        q.stop()
    check_frames(sink_rows(spark, out), expected_for(clips))


def test_killed_python_worker_then_restart_exactly_once(spark, clips, tmp_path):
    from pyspark.errors import StreamingQueryException
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType

    out, ckpt, marker = tmp_path / "out", tmp_path / "ckpt", tmp_path / "killed-once"
    victim = str(clips / "b.mkv")

    @F.udf(LongType())
    def maybe_die(file, index):
        if file == victim and index == 9 and not os.path.exists(marker):
            Path(marker).touch()
            os._exit(17)  # the Python worker dies mid-batch, like an OOM kill
        return index

    def start():
        df = (stream(spark, clips, maxFramesPerTrigger=12)
              .withColumn("checked", maybe_die("file", "frame_index")))
        return (df.writeStream.format("parquet").option("path", str(out))
                .option("checkpointLocation", str(ckpt)).start())

    q = start()
    with pytest.raises(StreamingQueryException, match=r"(?i)python worker|crashed|exited|EOF"):
        q.processAllAvailable()
    q.stop()
    assert marker.exists()
    q = start()
    try:
        q.processAllAvailable()
    finally:
        q.stop()
    check_frames(sink_rows(spark, out), expected_for(clips))


def test_bad_input_in_a_running_query(spark, clips, tmp_path):
    bad = make_bad_inputs(tmp_path / "bad", clips)
    q = stream(spark, tmp_path / "bad").writeStream.format("memory").queryName("badinput").start()
    try:
        q.processAllAvailable()
        counts = skipped_counts(q.lastProgress)
    finally:
        q.stop()
    rows = [(r.file, r.frame_index, r.width, r.height, r.channels, r.data)
            for r in spark.sql("select * from badinput").collect()]
    check_frames(rows, bad["expected"])
    check_skips(counts, bad)
