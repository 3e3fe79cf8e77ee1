"""Jacquard host runtime: ONNX import, partitioning, compiler, devices, CLI."""
