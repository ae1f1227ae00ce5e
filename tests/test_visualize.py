"""Pictures a person can read (`runtime.visualize`) and the parity report's example images (`parity.examples`), on
hand-made detections: no model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siefpn_deploy.core.contract import BOXES, LABELS, SCORES
from siefpn_deploy.evaluation.agreement import image_agreement
from siefpn_deploy.parity.examples import pick_examples, worst_first
from siefpn_deploy.runtime import Detections
from siefpn_deploy.runtime.visualize import DEFAULT_MIN_SCORE, color_of, draw, outline, place_labels, text_color

GREY = 128
SIDE = 64


def detections(boxes: list[list[float]], scores: list[float], labels: list[int],
               masks: np.ndarray | None = None) -> Detections:
    return Detections(boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4), scores=np.array(scores, dtype=np.float32),
                      labels=np.array(labels, dtype=np.int64), category_ids=list(labels),
                      class_names=[f"c{label}" for label in labels], masks=masks)


def blank(value: int = GREY, width: int = SIDE) -> Image.Image:
    return Image.new("RGB", (width, SIDE), (value, value, value))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_a_detection_under_the_default_score_is_not_drawn():
    weak = detections([[10, 20, 50, 60]], [DEFAULT_MIN_SCORE - 0.2], [1])
    assert np.array_equal(pixels(draw(blank(), weak)), pixels(blank()))  # not one pixel changed
    drawn = pixels(draw(blank(), weak, min_score=0.0))
    assert tuple(drawn[40, 10]) == color_of(1)  # the box's left edge, in its class colour
    assert tuple(drawn[40, 30]) == (GREY,) * 3  # inside the box, no mask: untouched


def test_top_draws_only_the_best():
    two = detections([[4, 30, 24, 60], [90, 30, 110, 60]], [0.8, 0.9], [1, 2])
    both = pixels(draw(blank(width=2 * SIDE), two))
    assert tuple(both[45, 4]) == color_of(1) and tuple(both[45, 90]) == color_of(2)
    best = pixels(draw(blank(width=2 * SIDE), two, top=1))
    assert tuple(best[45, 90]) == color_of(2)
    assert (best[:, :SIDE] == GREY).all()  # the 0.8 box's half of the image, label included: untouched


def test_labels_are_placed_best_first_without_overlapping():
    boxes = [[20, 30, 60, 70], [21, 31, 61, 71], [22, 32, 62, 72]]  # three boxes over one object
    sizes = [(30, 12)] * 3
    spots = place_labels(boxes, sizes, width=100, height=100)
    assert spots[0] == (20, 18, 50, 30)  # the first (best) gets its first choice: above its box
    assert spots[1] == (21, 31, 51, 43)  # above is taken: inside its top-left corner
    assert spots[2] == (22, 72, 52, 84)  # below
    placed = [s for s in spots if s is not None]
    for i, a in enumerate(placed):
        assert 0 <= a[0] and a[2] <= 100 and 0 <= a[1] and a[3] <= 100
        for b in placed[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    # a fourth over the same object finds every spot taken: its label is left out
    assert place_labels(boxes + [[20, 30, 60, 70]], sizes * 2, width=100, height=100)[3] is None


def test_a_label_is_moved_inside_the_image():
    (spot,) = place_labels([[90, 2, 99, 40]], [(30, 12)], width=100, height=100)
    assert spot == (70, 0, 100, 12)  # no room above or to the right: pushed left and down, inside the image


def test_label_text_contrasts_with_its_background():
    assert text_color((0, 0, 140)) == (255, 255, 255) and text_color((250, 220, 60)) == (0, 0, 0)


def test_a_mask_is_blended_and_outlined():
    mask = np.zeros((1, SIDE, SIDE), dtype=bool)
    mask[0, 30:50, 30:50] = True
    black = blank(0)
    drawn = pixels(draw(black, detections([[20, 20, 60, 60]], [0.9], [3], masks=mask)))
    color = np.array(color_of(3))
    for y, x in ((30, 40), (31, 40), (40, 49), (49, 48)):  # on the mask's border, 2 px wide
        assert tuple(drawn[y, x]) == tuple(color), (y, x)
    blended = (color * 0.45).astype(np.int16)  # black under the default alpha
    assert np.abs(drawn[32:48, 32:48] - blended).max() <= 1  # the interior: blended, not outlined
    assert (drawn[25:29, 25:55] == 0).all()  # between box and mask: untouched
    assert outline(np.zeros((8, 8), dtype=bool)).sum() == 0


def test_image_agreement_counts_missed_and_extra_detections_alike():
    def rows(boxes, labels):
        return {BOXES: np.array(boxes, dtype=np.float32).reshape(-1, 4), SCORES: np.linspace(0.9, 0.5, len(boxes)),
                LABELS: np.array(labels)}

    a = [0, 0, 10, 10]
    assert image_agreement(rows([a], [1]), rows([a, [50, 50, 60, 60]], [1, 1]), min_iou=0.5) == pytest.approx(2 / 3)
    assert image_agreement(rows([a], [1]), rows([a], [2]), min_iou=0.5) == 0.0  # another class is no match
    assert image_agreement(rows([], []), rows([], []), min_iou=0.5) == 1.0


def test_the_worst_agreeing_image_comes_first():
    agreement = {1: (1.0, 1.0), 2: (0.5, 0.9), 3: (1.0, 0.8), 4: (0.5, 0.9), 5: (0.0, 1.0)}
    assert worst_first(agreement, 4) == [5, 2, 4, 3]  # ties (2, 4) keep the dataset's order


def test_examples_are_picked_on_the_detections_drawn():
    box, near = [10, 10, 50, 50], [14, 14, 54, 54]  # IoU 0.68: one box to a person, not at parity's 0.9
    weak = DEFAULT_MIN_SCORE / 2
    reference = {1: detections([box], [0.9], [1]), 2: detections([box], [0.9], [1]),
                 3: detections([box], [0.9], [1]), 4: detections([box], [weak], [1])}
    other = {1: detections([box], [0.9], [1]),  # the same
             2: detections([box], [weak], [1]),  # fell under the drawn score: missing from its picture
             3: detections([near], [0.9], [1]),  # moved a little
             4: detections([near], [weak], [1])}  # moved, but neither is drawn
    picked = pick_examples(reference, other, match_iou=0.9, image_path=lambda i: Path(f"{i}.png"), count=3)
    assert [e.image_id for e in picked] == [2, 3, 4]
    assert [(e.agreement, e.agreement_all) for e in picked] == [(0.0, 1.0), (1.0, 0.0), (1.0, 0.0)]
    assert picked[0].artifact is other[2] and picked[0].reference is reference[2]
    assert picked[0].record() == {"image_id": 2, "file_name": "2.png", "agreement": 0.0, "agreement_all": 1.0}
