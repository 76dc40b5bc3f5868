"""excon.serve.model in-process: inputs of any size are resized exactly as `excon prepare`
resized the training images, and an explanation is one batched Grad-CAM however many images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from excon.data.sources.images import load_rgb
from excon.serve import model as serving
from excon.testing import tiny_run

GOOD = {"test/top1": 0.5, "calib/ece": 0.1, "adv/pgd/eps4/acc": 0.2, "expl/avg_drop": 0.5}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    run = tiny_run(tmp_path_factory.mktemp("run") / "r", GOOD, seed=5, size=32)
    return serving.load_files(run)


def test_an_image_of_any_size_is_resized_as_prepare_resized_the_training_set(net, tmp_path):
    _, meta = net
    image = np.random.default_rng(0).integers(0, 256, (57, 90, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    prepared = load_rgb(path, 32)  # the training data's own reader (imagefolder sources)
    np.testing.assert_array_equal(serving.resize_like_training(meta, image), prepared)
    np.testing.assert_array_equal(
        serving.preprocess(meta, [image]).numpy(), serving.preprocess(meta, prepared[None]).numpy()
    )


def test_a_mixed_size_batch_equals_its_images_one_by_one(net):
    model, meta = net
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(32, 32, 3), (20, 64, 3)]]
    together = serving.predict_proba(model, meta, images)
    alone = np.concatenate([serving.predict_proba(model, meta, [im]) for im in images])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_explaining_a_batch_is_one_gradcam_call(net, monkeypatch):
    from captum.attr import LayerGradCam

    model, meta = net
    calls = []
    attribute = LayerGradCam.attribute

    def counted(self, inputs, *args, **kwargs):  # a spy: the real method runs
        calls.append(inputs.shape[0])
        return attribute(self, inputs, *args, **kwargs)

    monkeypatch.setattr(LayerGradCam, "attribute", counted)
    images = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    probs, maps = serving.explain_images(model, meta, images, [None, 1, None, 0, None])
    assert calls == [5]
    assert probs.shape == (5, 3) and maps.shape == (5, 1, 32, 32)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((1, 8, 8, 4), np.uint8), r"expected uint8 \[H, W, 3\], got shape \(8, 8, 4\)"),
        (np.zeros((1, 8, 8, 3), np.float32), "expected uint8"),
        (np.zeros((8, 8, 3), np.uint8), "expected uint8 images"),
    ],
)
def test_wrong_arrays_are_one_line_errors(net, images, message):
    _, meta = net
    with pytest.raises(ValueError, match=message):
        serving.preprocess(meta, images)


def test_a_class_out_of_range_is_refused(net):
    model, meta = net
    with pytest.raises(ValueError, match="class 7 out of range"):
        serving.explain_images(model, meta, np.zeros((1, 32, 32, 3), np.uint8), [7])
