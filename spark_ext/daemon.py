"""Spark's Python daemon with Jacquard's modules imported once, before it forks the Python workers.

PySpark starts its Python workers by forking a daemon (``pyspark.daemon``); every worker then
imports what its task needs. A streaming task of the VCA app holds two workers (the source's
reader and the detection UDF) and Spark gives a task whichever idle worker comes first, so the
first task each worker runs for detection would import onnx, onnxruntime, PyAV and Jacquard's
compiler (about a second, several seconds on a loaded machine) in the middle of the stream.
With ``spark.python.daemon.module=jacquard.spark_ext.daemon`` (set by
:func:`jacquard.spark_ext.session.build_session`) those imports happen once in the daemon and
every forked worker starts with them.

Only modules that start no thread on import are loaded here: a thread does not survive ``fork``
and could leave a lock held in the child (PySpark's own daemon avoids importing pandas and
pyarrow for that reason, and so does this one). :func:`preload` checks that no thread was started
and returns the modules it imported.
"""

from __future__ import annotations

import importlib
import sys
import threading

__all__ = ["PRELOAD", "preload"]

# Thread-free imports that every Jacquard task needs; pandas and pyarrow are left to the workers.
PRELOAD = (
    "numpy",
    "PIL.Image",
    "av",
    "onnx",
    "onnxruntime",
    "jacquard.host.compiler",
    "jacquard.host.device",
    "jacquard.host.importer",
    "jacquard.host.partition",
    "jacquard.spark_ext.accel",
    "jacquard.spark_ext.binding",
    "jacquard.spark_ext.mtcnn",
    "jacquard.spark_ext.video_source",
    "jacquard.spark_ext.vca_app",
)


def preload(modules: tuple[str, ...] = PRELOAD) -> list[str]:
    """Import ``modules`` (skipping any that fail) and hash the compiler source for the program cache.

    Returns
    -------
    list of str
        The modules imported.

    Raises
    ------
    RuntimeError
        If an import started a thread, which would make forking the workers unsafe.
    """
    done = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a worker imports it again and reports the error where it matters
            print(f"jacquard.spark_ext.daemon: not preloading {name}: {exc}", file=sys.stderr)
            continue
        done.append(name)
    if "jacquard.spark_ext.accel" in done:
        from jacquard.spark_ext.accel import _code_version

        _code_version()
    if threading.active_count() != 1:
        names = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        raise RuntimeError(f"preloading started threads {names}; forking workers would be unsafe")
    return done


def main() -> None:
    """Preload, then run PySpark's daemon in this process.

    Spark starts the daemon with the workers' environment (``OMP_NUM_THREADS`` included, which
    NumPy's BLAS reads on import), so the preloaded modules see what the workers would.
    """
    preload()
    from pyspark.daemon import manager

    manager()


if __name__ == "__main__":
    main()
