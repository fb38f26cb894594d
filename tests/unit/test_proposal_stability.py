"""The region-stability harness: perturbations map boxes back to the original frame, and recall is counted right."""

import numpy as np
import pytest

from pipelines.proposal_stability import PERTURBATIONS, Perturbation, stability


def _image_with_square(x0: int, y0: int, size: int = 40, shape=(120, 160)) -> np.ndarray:
    image = np.full((*shape, 3), 30, np.uint8)
    image[y0 : y0 + size, x0 : x0 + size] = 230
    return image


def _bright_square(images):
    """A method that follows the image: the bounding box of its bright pixels, normalised."""
    boxes = np.zeros((len(images), 8, 4), np.float32)
    mask = np.zeros((len(images), 8), bool)
    for i, img in enumerate(images):
        ys, xs = np.nonzero(img.max(axis=-1) > 130)
        h, w = img.shape[:2]
        boxes[i, 0] = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
        mask[i, 0] = True
    return boxes, mask


def _fixed_left_box(images):
    """A method that ignores the pixels: always the same box in the image's left third."""
    boxes = np.tile(np.array([0.05, 0.2, 0.3, 0.6], np.float32), (len(images), 8, 1))
    mask = np.zeros((len(images), 8), bool)
    mask[:, 0] = True
    return boxes, mask


def test_a_method_that_follows_the_image_is_stable_under_every_perturbation():
    images = [_image_with_square(10, 20), _image_with_square(100, 60)]
    result = stability({"follows": _bright_square}, images, batch_size=1)
    assert result == {"follows": {"self_jpeg_q90": 1.0, "self_scale_0.9": 1.0, "self_mirror": 1.0}}


def test_a_method_blind_to_the_image_moves_when_mirrored_back():
    result = stability({"fixed": _fixed_left_box}, [_image_with_square(10, 20)])
    assert result["fixed"]["self_jpeg_q90"] == 1.0
    assert result["fixed"]["self_mirror"] == 0.0  # mapped back to the right third: no overlap


def test_recall_of_the_teacher_is_reported_for_the_other_methods():
    images = [_image_with_square(100, 60)]  # bottom right: nowhere near the fixed box
    methods = {"selective_search": _bright_square, "fixed": _fixed_left_box, "same": _bright_square}
    result = stability(methods, images, perturbations=PERTURBATIONS[:1])
    assert "recall_of_selective_search" not in result["selective_search"]
    assert result["same"]["recall_of_selective_search"] == 1.0
    assert result["fixed"]["recall_of_selective_search"] == 0.0


@pytest.mark.parametrize("perturbation", PERTURBATIONS, ids=lambda p: p.name)
def test_perturbations_keep_an_rgb_image(perturbation: Perturbation):
    image = _image_with_square(10, 20)
    changed = perturbation.apply(image)
    assert changed.dtype == np.uint8 and changed.ndim == 3 and changed.shape[2] == 3
    box = np.array([[0.1, 0.2, 0.4, 0.5]], np.float32)
    back = perturbation.boxes_back(box)
    assert back.shape == box.shape and (back[:, 2] > back[:, 0]).all()
