"""Training learns, for real, on the CPU: box-only BoxInst masks beat the filled boxes.

Two short trainings on generated shapes run side by side (one per core, about two minutes):
box-only (projection + pairwise) and projection-only. Masks are measured on held-out scenes at
each instance's ground-truth location, against the true shapes and against the filled boxes.
"""

import pytest

from boxinst.platform.quick_train import QuickTrainConfig, run_parallel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results():
    box_only, projection_only = run_parallel(
        [QuickTrainConfig(regime="box_only"), QuickTrainConfig(regime="projection_only")]
    )
    print(f"\nbox-only {box_only}\nprojection-only {projection_only}")
    return box_only, projection_only


def test_box_only_masks_are_clearly_better_than_filled_boxes(results):
    box_only, _ = results
    assert box_only["instances"] >= 30
    assert box_only["mask_iou"] > box_only["box_iou"] + 0.05


def test_pairwise_term_matters(results):
    box_only, projection_only = results
    assert box_only["box_iou"] == projection_only["box_iou"]  # same held-out scenes
    assert box_only["mask_iou"] > projection_only["mask_iou"] + 0.05
