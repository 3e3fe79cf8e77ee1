"""Real video by package name, and the frame decoding shared by the video source and its tests.

Real material comes from Debian's ``opencv-doc`` package, which ships two short clips:
``Megamind.avi`` (faces, 720x528, 270 frames, MPEG-4 part 2) and ``vtest.avi`` (people walking,
768x576, 795 frames, MS-MPEG4). The package is 96 MB to download and 274 MB installed, so it is
never installed: ``apt-get download`` fetches the ``.deb`` into a temporary folder and only the
two clips are extracted from its data archive into ``cache_dir("material")/opencv-doc``.

Decoding is one function, :func:`decode_frames`, so the driver's probe and the executors' readers
number frames identically: frame ``i`` is the ``i``-th picture PyAV's decoder outputs for the
file's first video stream, in presentation order. Packets that fail to decode produce no frame
and take no index; they are counted. (Container timestamps are not used as frame numbers:
Megamind.avi's packed B-frames give pts such as 1, 2, 3, 5, 4.)
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from jacquard.host.cache import cache_dir, cache_lock

__all__ = [
    "FORMATS",
    "DecodedFrame",
    "MediaUnavailableError",
    "VideoProbe",
    "decode_frames",
    "fetch_opencv_doc",
    "megamind_avi",
    "probe_video",
    "vtest_avi",
    "write_video",
]

log = logging.getLogger(__name__)

# Output pixel formats and their channel counts (HWC uint8).
FORMATS: dict[str, int] = {"rgb24": 3, "bgr24": 3, "gray": 1}

_OPENCV_DOC_DATA = "usr/share/doc/opencv-doc/examples/data"


class MediaUnavailableError(RuntimeError):
    """Real material could not be fetched (no apt, no network, or the package lacks the file)."""


def fetch_opencv_doc(*names: str) -> dict[str, Path]:
    """Return cached paths of files from ``opencv-doc``'s ``examples/data``, fetching them once.

    Parameters
    ----------
    names : str
        File names inside ``/usr/share/doc/opencv-doc/examples/data``, e.g. ``"Megamind.avi"``.

    Returns
    -------
    dict of str to Path
        Each name mapped to its file under ``cache_dir("material", "opencv-doc")``.

    Raises
    ------
    ValueError
        If a name is empty or contains a path separator.
    MediaUnavailableError
        If ``apt-get`` or ``dpkg-deb`` is missing, the download fails, or the package does not
        contain a requested file.
    """
    for name in names:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"File name must be a plain name in opencv-doc's examples/data, not {name!r}")
    dest = cache_dir("material", "opencv-doc")
    with cache_lock(dest):  # one download when several processes start at once
        missing = [n for n in names if not (dest / n).is_file()]
        if missing:
            _extract_from_deb("opencv-doc", {f"{_OPENCV_DOC_DATA}/{n}": dest / n for n in missing})
    return {n: dest / n for n in names}


def megamind_avi() -> Path:
    """``Megamind.avi`` from Debian ``opencv-doc`` (faces), fetched into the cache on first use."""
    return fetch_opencv_doc("Megamind.avi")["Megamind.avi"]


def vtest_avi() -> Path:
    """``vtest.avi`` from Debian ``opencv-doc`` (people walking), fetched into the cache on first use."""
    return fetch_opencv_doc("vtest.avi")["vtest.avi"]


def _extract_from_deb(package: str, members: dict[str, Path]) -> None:
    """Download ``package``'s .deb with apt and extract only ``members`` (archive path -> file)."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise MediaUnavailableError(
                f"`{tool}` is not available, so Debian package {package!r} cannot be fetched. Run on a "
                f"Debian/Ubuntu machine, or copy the files {sorted(members)} into {cache_dir('material')}.")
    with tempfile.TemporaryDirectory(prefix="jacquard-deb-") as tmp:
        log.info("Downloading Debian package %s (not installing it)", package)
        proc = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if proc.returncode != 0 or not debs:
            raise MediaUnavailableError(
                f"`apt-get download {package}` failed (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}. Check the network and run `apt-get update` first.")
        # dpkg -x would unpack all 274 MB; stream the data archive and keep only what we need.
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE) as dpkg:
            wanted = {f"./{m}": out for m, out in members.items()} | dict(members)
            found: set[Path] = set()
            assert dpkg.stdout is not None
            with tarfile.open(fileobj=dpkg.stdout, mode="r|*") as tar:
                for info in tar:
                    out = wanted.get(info.name)
                    if out is None or not info.isfile():
                        continue
                    src = tar.extractfile(info)
                    assert src is not None
                    part = out.with_name(out.name + f".part{os.getpid()}")
                    with open(part, "wb") as f:
                        shutil.copyfileobj(src, f)
                    # Atomic, so a concurrent fetch or an interrupted one never leaves a partial file.
                    os.replace(part, out)
                    found.add(out)
            dpkg.stdout.close()
        absent = [m for m, out in members.items() if out not in found]
        if absent:
            raise MediaUnavailableError(f"Debian package {package!r} does not contain {absent}")


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded picture.

    Members
    -------
    index : int
        Position in the decoder's output order (0-based), the source's frame number.
    time_s : float
        Presentation time in seconds from the frame's pts, or ``index / rate`` when it has none.
    src_width, src_height : int
        The coded picture size, before any resize.
    frame : av.VideoFrame
        The PyAV frame, to convert with :meth:`to_array`.
    """

    index: int
    time_s: float
    src_width: int
    src_height: int
    frame: av.VideoFrame

    def to_array(self, fmt: str = "rgb24", width: int | None = None, height: int | None = None) -> np.ndarray:
        """HWC uint8 array in ``fmt``, resized to ``width`` x ``height`` when they are given."""
        array = self.frame.to_ndarray(format=fmt, width=width, height=height)
        return array.reshape(array.shape[0], array.shape[1], FORMATS[fmt])


@dataclass
class DecodeStats:
    """What went wrong while decoding a file; filled in by :func:`decode_frames` as it runs.

    Members
    -------
    decode_errors : int
        Packets the decoder rejected (each produced no frame).
    truncated : str or None
        The demuxer's error when the file ended early or broke mid-way, else None.
    """

    decode_errors: int = 0
    truncated: str | None = None
    messages: list[str] = field(default_factory=list)


def decode_frames(path: str | os.PathLike, stats: DecodeStats | None = None) -> Iterator[DecodedFrame]:
    """Decode the first video stream of ``path`` in order, skipping packets that fail to decode.

    Parameters
    ----------
    path : str or PathLike
        A video file PyAV can open.
    stats : DecodeStats, optional
        Receives the count of rejected packets and a demuxer error, if any.

    Yields
    ------
    DecodedFrame

    Raises
    ------
    av.error.FFmpegError, OSError
        If the file cannot be opened as a container.
    ValueError
        If the container has no video stream.
    """
    stats = DecodeStats() if stats is None else stats
    with av.open(os.fspath(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{os.fspath(path)!r} has no video stream")
        stream = container.streams.video[0]
        time_base = float(stream.time_base) if stream.time_base else None
        rate = float(stream.average_rate) if stream.average_rate else None
        index = 0

        def emit(frames: list[av.VideoFrame]) -> Iterator[DecodedFrame]:
            nonlocal index
            for frame in frames:
                if frame.pts is not None and time_base is not None:
                    time_s = frame.pts * time_base
                else:
                    time_s = index / rate if rate else float("nan")
                yield DecodedFrame(index, time_s, frame.width, frame.height, frame)
                index += 1

        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.error.FFmpegError, OSError) as exc:  # the container broke: stop, keep what decoded
                stats.truncated = str(exc)
                stats.messages.append(f"demux stopped: {exc}")
                break
            try:
                frames = packet.decode()  # the final (empty) packet flushes the decoder
            except av.error.FFmpegError as exc:  # a corrupt packet: no frame, counted
                stats.decode_errors += 1
                stats.messages.append(f"packet at pts {packet.pts}: {exc}")
                continue
            yield from emit(frames)
        if stats.truncated is not None:
            # The demuxer never sent its flush packet; drain the decoder ourselves.
            try:
                yield from emit(stream.codec_context.decode(None))
            except av.error.FFmpegError as exc:  # nothing more to drain from a broken stream
                stats.messages.append(f"flush: {exc}")


@dataclass(frozen=True)
class VideoProbe:
    """Everything the driver needs to plan reads of one file, from one full decode.

    Members
    -------
    frames : int
        Number of decoded frames (indices ``0 .. frames-1``).
    bad_frames : tuple of int
        Indices whose picture size differs from the file's first frame (only checked when no
        resize was asked for); the readers skip exactly these.
    decode_errors : int
        Packets that failed to decode.
    declared : int
        Frame count in the container header (0 when unknown).
    src_width, src_height : int
        Size of the first frame.
    problems : tuple of str
        Human-readable notes about what was skipped.
    """

    frames: int
    bad_frames: tuple[int, ...]
    decode_errors: int
    declared: int
    src_width: int
    src_height: int
    problems: tuple[str, ...]

    @property
    def skipped(self) -> int:
        """Frames lost in this file: undecodable packets, wrong-size frames, and frames the header
        announces but the (truncated) file does not hold."""
        missing = max(0, self.declared - self.frames - self.decode_errors)
        return self.decode_errors + len(self.bad_frames) + missing


def probe_video(path: str | os.PathLike, *, resize: bool = False) -> VideoProbe:
    """Decode ``path`` once (without pixel conversion) and describe its frames.

    Parameters
    ----------
    path : str or PathLike
        The video file.
    resize : bool
        True when the reader resizes every frame to a fixed size, so size changes are not errors.

    Returns
    -------
    VideoProbe

    Raises
    ------
    av.error.FFmpegError, OSError
        If the file cannot be opened as a container.
    ValueError
        If the container has no video stream or no frame decodes.
    """
    stats = DecodeStats()
    frames = 0
    first: tuple[int, int] | None = None
    bad: list[int] = []
    for decoded in decode_frames(path, stats):
        size = (decoded.src_width, decoded.src_height)
        if first is None:
            first = size
        elif size != first and not resize:
            bad.append(decoded.index)
        frames += 1
    if first is None:
        why = "; ".join(stats.messages[:3]) or "empty stream"
        raise ValueError(f"no frame of {os.fspath(path)!r} decodes ({why})")
    with av.open(os.fspath(path)) as container:
        declared = int(container.streams.video[0].frames or 0)
    problems = list(stats.messages[:5])
    if bad:
        problems.append(f"{len(bad)} frame(s) not {first[0]}x{first[1]}, first at index {bad[0]}")
    if declared > frames + stats.decode_errors:
        problems.append(f"header declares {declared} frames, {frames} decoded (truncated?)")
    return VideoProbe(frames, tuple(bad), stats.decode_errors, declared, first[0], first[1], tuple(problems))


def write_video(path: str | os.PathLike, frames: int, width: int, height: int, *,
                codec: str = "mpeg4", rate: int = 25, seed: int = 0,
                odd_sizes: Mapping[int, tuple[int, int]] | None = None) -> Path:
    """Write a small synthetic video (seeded blocky noise) for tests and demos.

    Parameters
    ----------
    path : str or PathLike
        Output file; the container follows the extension (``.avi``, ``.mkv``, ...).
    frames, width, height : int
        Frame count and picture size (even sizes for 4:2:0 codecs).
    codec : str
        A PyAV encoder, e.g. ``"mpeg4"`` or ``"mjpeg"``.
    rate : int
        Frames per second.
    seed : int
        Seeds the pixel content.
    odd_sizes : mapping of int to (width, height), optional
        Frames encoded at another size by a second encoder into the same stream, to make a
        file with frames of unexpected size.

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        If ``frames``, ``width`` or ``height`` is not positive.
    """
    for name, value in (("frames", frames), ("width", width), ("height", height)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, not {value!r}")
    rng = np.random.default_rng(seed)
    odd_sizes = dict(odd_sizes or {})
    pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(frames):
            w, h = odd_sizes.get(i, (width, height))
            blocks = rng.integers(0, 256, ((h + 3) // 4, (w + 3) // 4, 3), dtype=np.uint8)
            image = np.ascontiguousarray(np.repeat(np.repeat(blocks, 4, 0), 4, 1)[:h, :w])
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)
            frame.pts = i
            if (w, h) == (width, height):
                for packet in stream.encode(frame):
                    container.mux(packet)
                continue
            # The stream's encoder is fixed-size; a second one puts a differently sized picture in it.
            odd = av.CodecContext.create(codec, "w")
            odd.width, odd.height, odd.pix_fmt = w, h, pix_fmt
            odd.time_base = stream.codec_context.time_base
            for packet in odd.encode(frame) + odd.encode(None):
                packet.stream = stream
                packet.pts = packet.dts = i
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return Path(path)
