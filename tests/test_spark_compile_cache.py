"""AcceleratedModel's on-disk cache of compiled programs: another Python worker (here: another
AcceleratedModel in a fresh cache state) loads a shape's program instead of compiling it, with the
same bit-exact results as onnxruntime; an edited compiler, a corrupt entry or the off switch
compile again."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from jacquard.spark_ext import accel
from jacquard.spark_ext.accel import AcceleratedModel


@pytest.fixture(scope="module")
def pnet():
    from jacquard.spark_ext.mtcnn import int8_models

    return int8_models()["pnet"]


@pytest.fixture
def disk(tmp_path, monkeypatch):
    """The disk cache in a fresh folder; returns it."""
    monkeypatch.setattr(accel, "_program_path", lambda key: tmp_path / f"{key}.pkl")
    monkeypatch.delenv(accel.COMPILE_CACHE_ENV, raising=False)
    return tmp_path


def feeds(model: AcceleratedModel, seed: int = 2026) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {model.inputs[0]: rng.uniform(-1, 1, (1, 20, 16, 3)).astype(np.float32)}


def check_equal_ort(pnet, model: AcceleratedModel, x: dict[str, np.ndarray]) -> None:
    out = model.run(x)
    ref = ort.InferenceSession(str(pnet), providers=["CPUExecutionProvider"]).run(None, x)
    for name, want in zip(model.outputs, ref, strict=True):
        got = out[name]
        bad = np.argwhere(got != want)
        assert not bad.size, (f"{name}: first mismatch at {bad[0].tolist()}: expected "
                              f"{want[tuple(bad[0])]}, got {got[tuple(bad[0])]}")


def compiles(monkeypatch) -> list[int]:
    """Count calls of the compiler from now on."""
    import jacquard.host.compiler as compiler

    calls: list[int] = []
    real = compiler.compile_plan

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(compiler, "compile_plan", counting)
    return calls


def test_second_worker_loads_instead_of_compiling(pnet, disk, monkeypatch):
    calls = compiles(monkeypatch)
    first = AcceleratedModel(pnet, "emu")
    x = feeds(first)
    check_equal_ort(pnet, first, x)
    assert len(calls) == 1 and len(list(disk.glob("*.pkl"))) == 1
    second = AcceleratedModel(pnet, "emu")  # as a fresh Python worker: nothing compiled in memory
    check_equal_ort(pnet, second, x)
    assert len(calls) == 1, "the second model compiled instead of loading the cached program"
    check_equal_ort(pnet, second, feeds(second, seed=7))


def test_edited_compiler_or_corrupt_entry_compiles_again(pnet, disk, monkeypatch):
    calls = compiles(monkeypatch)
    check_equal_ort(pnet, AcceleratedModel(pnet, "emu"), feeds(AcceleratedModel(pnet, "emu")))
    monkeypatch.setattr(accel, "_CODE_VERSION", "an edited compiler")
    model = AcceleratedModel(pnet, "emu")
    check_equal_ort(pnet, model, feeds(model))
    assert len(calls) == 2 and len(list(disk.glob("*.pkl"))) == 2
    for entry in disk.glob("*.pkl"):
        entry.write_bytes(b"not a pickle")
    model = AcceleratedModel(pnet, "emu")
    check_equal_ort(pnet, model, feeds(model))
    assert len(calls) == 3


def test_cache_off(pnet, disk, monkeypatch):
    monkeypatch.setenv(accel.COMPILE_CACHE_ENV, "0")
    calls = compiles(monkeypatch)
    for _ in range(2):
        model = AcceleratedModel(pnet, "emu")
        check_equal_ort(pnet, model, feeds(model))
    assert len(calls) == 2 and not list(disk.glob("*"))
