"""The host's error hierarchy: every failure a user can cause or meet is a :class:`JacquardError`.

Messages name the problem and the fix, e.g. ``ShapeError("input 'x' has the dynamic shape
('N', 3, 'H', 'W'); pass input_shapes={'x': (1, 3, 240, 320)}")``. Bad parameters to a function (a
programming error rather than bad material) stay ``ValueError``/``TypeError``.
"""

from __future__ import annotations

__all__ = [
    "DeviceError",
    "DeviceTimeout",
    "JacquardError",
    "ModelError",
    "ProgramError",
    "ShapeError",
]


class JacquardError(Exception):
    """Base class of every error the Jacquard host raises about models, programs and devices."""


class ModelError(JacquardError):
    """The model file is corrupt, is not ONNX, or uses something the importer cannot handle at all
    (for example a float model given without a calibration set)."""


class ShapeError(JacquardError):
    """A shape or dtype problem: a dynamic input dimension with no shape given, or an input tensor
    of the wrong shape or dtype."""


class ProgramError(JacquardError):
    """A ``.jqp`` program that cannot run here: another format version, or compiled for another
    hardware config."""


class DeviceError(JacquardError):
    """The device reported an error (status registers) or could not be opened."""


class DeviceTimeout(DeviceError):
    """The device did not finish within the timeout."""
