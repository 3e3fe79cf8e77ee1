"""Per-micro-batch metrics of streaming queries: rates from Spark, latency and device time from us.

:class:`FrameMetricsListener` is a ``StreamingQueryListener``: Spark calls it on the driver after
each micro-batch with the batch's ``StreamingQueryProgress``, from which it keeps input rows/s,
processed rows/s, the batch duration and the ``jacquard.video`` skip counts (which live in the
source's offset). Two hooks add what Spark cannot know:

* :meth:`FrameMetricsListener.observe_batch`, called from ``foreachBatch`` once the batch's
  results are written, records each frame's end-to-end latency: result time minus the frame's
  ingest ``timestamp`` column (set by the source when it decoded the frame). Persist the batch
  first: an unpersisted batch DataFrame used twice is read from the source twice, with new
  ingest times, and Spark then counts its input rows twice;
* :meth:`FrameMetricsListener.add_device_busy` records accelerator busy seconds per batch. The
  device runtime reports them; until then nothing calls it and the figure stays 0.

Usage::

    metrics = FrameMetricsListener()
    spark.streams.addListener(metrics)
    def sink(df, batch_id):
        df.persist()  # read once: a second scan would decode again and double numInputRows
        df.write.mode("append").parquet(out)
        metrics.observe_batch(df, batch_id)
        df.unpersist()
    frames.writeStream.foreachBatch(sink).start()
    ...
    print(metrics.summary())
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pyspark.sql.streaming import StreamingQueryListener

from jacquard.spark_ext.video_source import skipped_counts

__all__ = ["BatchMetrics", "FrameMetricsListener", "frame_latencies"]


@dataclass
class BatchMetrics:
    """One micro-batch of one query.

    Members
    -------
    query_id : str
    batch_id : int
    input_rows : int
        Rows the sources produced in this batch (frames).
    input_rows_per_s, processed_rows_per_s : float
        Spark's rates: arrival rate since the previous batch, and rows over this batch's duration.
    duration_ms : int
        Spark's trigger execution time.
    skipped_files, skipped_frames : int
        ``jacquard.video`` skips recorded in the source offset so far (cumulative).
    latencies_s : list of float
        End-to-end latency of each frame (result time - ingest time), from :meth:`observe_batch`.
    device_busy_s : float
        Accelerator busy time, from :meth:`add_device_busy`.
    """

    query_id: str
    batch_id: int
    input_rows: int = 0
    input_rows_per_s: float = 0.0
    processed_rows_per_s: float = 0.0
    duration_ms: int = 0
    skipped_files: int = 0
    skipped_frames: int = 0
    latencies_s: list[float] = field(default_factory=list)
    device_busy_s: float = 0.0


def frame_latencies(batch_df: Any, result_time: float | None = None, column: str = "timestamp") -> np.ndarray:
    """Seconds from each row's ingest ``column`` to ``result_time`` (default: now).

    The timestamp is read as epoch microseconds in Spark, so the session time zone does not matter.
    """
    from pyspark.sql import functions as F

    stamps = [r[0] for r in batch_df.select(F.unix_micros(F.col(column))).collect()]
    now = time.time() if result_time is None else result_time
    return now - np.asarray(stamps, dtype=np.float64) / 1e6


class FrameMetricsListener(StreamingQueryListener):
    """Collects :class:`BatchMetrics` for every micro-batch of every query on the session.

    Spark calls the listener from its event thread and ``foreachBatch`` runs on the query's
    thread, so updates take a lock.

    Members
    -------
    batches : dict of (query id, batch id) to BatchMetrics
    """

    def __init__(self) -> None:
        self.batches: dict[tuple[str, int], BatchMetrics] = {}
        self._lock = threading.Lock()
        self._query_ids: dict[str, str] = {}

    def _batch(self, query_id: str, batch_id: int) -> BatchMetrics:
        key = (query_id, batch_id)
        if key not in self.batches:
            self.batches[key] = BatchMetrics(query_id, batch_id)
        return self.batches[key]

    # -- StreamingQueryListener ----------------------------------------------------------------

    def onQueryStarted(self, event: Any) -> None:
        pass

    def onQueryProgress(self, event: Any) -> None:
        progress = event.progress
        counts = skipped_counts(progress)
        with self._lock:
            batch = self._batch(str(progress.id), int(progress.batchId))
            batch.input_rows = int(progress.numInputRows)
            batch.input_rows_per_s = float(progress.inputRowsPerSecond or 0.0)
            batch.processed_rows_per_s = float(progress.processedRowsPerSecond or 0.0)
            batch.duration_ms = int(progress.durationMs.get("triggerExecution", 0))
            batch.skipped_files, batch.skipped_frames = counts["files"], counts["frames"]

    def onQueryIdle(self, event: Any) -> None:
        pass

    def onQueryTerminated(self, event: Any) -> None:
        pass

    # -- hooks ---------------------------------------------------------------------------------

    def observe_batch(self, batch_df: Any, batch_id: int, result_time: float | None = None,
                      query_id: str | None = None) -> np.ndarray:
        """Record the end-to-end latency of every frame in ``batch_df`` (call from ``foreachBatch``).

        Parameters
        ----------
        batch_df : DataFrame
            The micro-batch, with the source's ``timestamp`` column.
        batch_id : int
        result_time : float, optional
            Epoch seconds when the results were out (default: now).
        query_id : str, optional
            The query's id; found from the session when not given.

        Returns
        -------
        numpy.ndarray
            The latencies in seconds, one per row.
        """
        latencies = frame_latencies(batch_df, result_time)
        query_id = query_id or self._current_query_id(batch_df)
        with self._lock:
            self._batch(query_id, int(batch_id)).latencies_s.extend(latencies.tolist())
        return latencies

    def add_device_busy(self, query_id: str, batch_id: int, seconds: float) -> None:
        """Add accelerator busy time to a batch (the device runtime's hook).

        Raises
        ------
        ValueError
            If ``seconds`` is negative.
        """
        if not seconds >= 0:
            raise ValueError(f"device busy seconds must be >= 0, not {seconds!r}")
        with self._lock:
            self._batch(str(query_id), int(batch_id)).device_busy_s += float(seconds)

    @staticmethod
    def _current_query_id(batch_df: Any) -> str:
        session = batch_df.sparkSession
        # The query thread that runs foreachBatch carries the query's id as a local property.
        value = session.sparkContext.getLocalProperty("sql.streaming.queryId")
        if value:
            return str(value)
        active = session.streams.active
        return str(active[0].id) if len(active) == 1 else "unknown"

    # -- results -------------------------------------------------------------------------------

    def summary(self, query_id: str | None = None) -> dict[str, Any]:
        """Totals over all batches (of one query when ``query_id`` is given).

        Returns
        -------
        dict
            ``batches``, ``frames``, ``input_rows_per_s`` and ``processed_rows_per_s`` (means over
            non-empty batches), ``latency_p50_s``/``latency_p95_s`` (None without observations),
            ``device_busy_s``, ``skipped_files``, ``skipped_frames``.
        """
        with self._lock:
            rows = [b for b in self.batches.values() if query_id is None or b.query_id == str(query_id)]
        active = [b for b in rows if b.input_rows > 0]
        latencies = np.asarray([x for b in rows for x in b.latencies_s])

        def mean(values: list[float]) -> float:
            return float(np.mean(values)) if values else 0.0

        return {
            "batches": len(active),
            "frames": sum(b.input_rows for b in rows),
            "input_rows_per_s": mean([b.input_rows_per_s for b in active]),
            "processed_rows_per_s": mean([b.processed_rows_per_s for b in active]),
            "latency_p50_s": float(np.percentile(latencies, 50)) if latencies.size else None,
            "latency_p95_s": float(np.percentile(latencies, 95)) if latencies.size else None,
            "device_busy_s": sum(b.device_busy_s for b in rows),
            "skipped_files": max((b.skipped_files for b in rows), default=0),
            "skipped_frames": max((b.skipped_frames for b in rows), default=0),
        }

    def as_records(self) -> list[dict[str, Any]]:
        """Every batch as a plain dict, sorted by query and batch id (for JSON reports)."""
        with self._lock:
            return [asdict(self.batches[k]) for k in sorted(self.batches)]
