#!/bin/sh
# Spark resource discovery script for the `fpga` resource (spark.{worker,executor}.resource.fpga.
# discoveryScript). Prints {"name": "fpga", "addresses": [device URIs]}; see discovery.py.
# The interpreter is JACQUARD_PYTHON, else PYSPARK_PYTHON (the session helper sets both to the
# project's interpreter), else python3 on PATH.
exec "${JACQUARD_PYTHON:-${PYSPARK_PYTHON:-python3}}" -m jacquard.spark_ext.discovery "$@"
