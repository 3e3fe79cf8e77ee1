"""MTCNN on the accelerator (emu) equals MTCNN on onnxruntime: same int8 networks, same detections.

Real material: scikit-image's bundled astronaut photograph and frames of Megamind.avi (Debian
opencv-doc). Every box, score and landmark must be equal, and faces must be found at all.
"""

import numpy as np
import pytest

from jacquard.spark_ext.mtcnn import DeviceRunner, Mtcnn, OrtRunner, nms


@pytest.fixture(scope="module")
def runners():
    return DeviceRunner("emu"), OrtRunner()


def _assert_same(got, want, where):
    assert got.candidates == want.candidates, (where, got.candidates, want.candidates)
    for name in ("boxes", "scores", "landmarks"):
        g, w = getattr(got, name), getattr(want, name)
        assert g.shape == w.shape, (where, name, g.shape, w.shape)
        bad = np.argwhere(g != w)
        assert bad.size == 0, (f"{where} {name}: first mismatch at {tuple(bad[0])}: expected "
                               f"{w[tuple(bad[0])]}, got {g[tuple(bad[0])]}")


def test_astronaut_face_equal_on_device_and_onnxruntime(runners):
    from skimage import data

    image = data.astronaut()[:320, 96:416]  # her head and shoulders, to keep the pyramid small
    dev, cpu = (Mtcnn(r, min_face_size=40).detect(image) for r in runners)
    _assert_same(dev, cpu, "astronaut")
    assert len(dev) == 1, dev
    x1, y1, x2, y2 = dev.boxes[0]
    # The face is around (180..265, 60..175) in the full image: shift by the crop.
    assert 60 < x1 < 110 and 40 < y1 < 90 and 150 < x2 < 200 and 150 < y2 < 200, dev.boxes
    assert dev.scores[0] > 0.9


def test_megamind_frames_equal_on_device_and_onnxruntime(runners):
    from jacquard.spark_ext.media import decode_frames, megamind_avi

    frames = []
    for f in decode_frames(megamind_avi()):
        if f.index in (1, 60):
            frames.append(f.to_array("rgb24", 240, 176))
        if f.index >= 60:
            break
    faces = 0
    for k, image in enumerate(frames):
        dev, cpu = (Mtcnn(r, min_face_size=40).detect(image) for r in runners)
        _assert_same(dev, cpu, f"Megamind frame {k}")
        faces += len(dev)
    assert faces >= 2


def test_nms_and_bad_arguments():
    boxes = np.array([[0, 0, 9, 9, 0.9], [1, 1, 10, 10, 0.8], [20, 20, 29, 29, 0.7]], float)
    assert nms(boxes, 0.5).tolist() == [0, 2]
    assert nms(boxes, 0.9).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="method"):
        nms(boxes, 0.5, "max")
    with pytest.raises(ValueError, match="min_face_size"):
        Mtcnn(OrtRunner.__new__(OrtRunner), min_face_size=5)
    with pytest.raises(ValueError, match="image"):
        Mtcnn(OrtRunner.__new__(OrtRunner)).detect(np.zeros((10, 10), np.uint8))
