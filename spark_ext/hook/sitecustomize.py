"""Start-up hook of ``jacquard submit``: Python imports this when the folder is on ``PYTHONPATH``.

It arms :func:`jacquard.spark_ext.offload.install_import_hook`, so the first ``import onnxruntime``
in this process (a Spark driver or Python worker) gets the accelerated ``InferenceSession``.
It never breaks start-up: any failure is one line on stderr.
"""

import os
import sys

if os.environ.get("JACQUARD_OFFLOAD", "1") != "0":
    try:
        from jacquard.spark_ext.offload import install_import_hook

        install_import_hook()
    except Exception as exc:  # a broken install must not stop the user's application from starting
        print(f"jacquard: offload hook not installed: {type(exc).__name__}: {exc}", file=sys.stderr)
