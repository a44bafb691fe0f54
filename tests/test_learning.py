"""Training learns, for real, on the CPU: box-only masks beat the filled boxes.

Two short trainings on generated shapes run side by side (one per core, about five minutes):
the platform's box-only regime (BoxInst's projection and pairwise terms with the GrabCut box
prior, ``box_only_grabcut``) and box-only BoxInst as the paper trains it. Masks are measured on
held-out scenes at each instance's ground-truth location, against the true shapes and against
the filled boxes.

The paper's formulation is fragile at this budget: from the same seed its masks vanish on one
torch build and beat the boxes on another (issue 14 measures the collapse across data styles
and seeds), so this test asserts what the prior changes, not what the paper's terms reach alone.
"""

import pytest

from boxinst.platform.quick_train import QuickTrainConfig, run_parallel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results():
    with_prior, paper = run_parallel(
        [QuickTrainConfig(regime="box_only_grabcut"), QuickTrainConfig(regime="box_only")]
    )
    print(f"\nbox-only with the GrabCut prior {with_prior}\nbox-only as the paper {paper}")
    return with_prior, paper


def test_box_only_masks_are_clearly_better_than_filled_boxes(results):
    with_prior, _ = results
    assert with_prior["instances"] >= 30
    assert with_prior["mask_iou"] > with_prior["box_iou"] + 0.1


def test_the_box_prior_keeps_box_only_masks_at_least_as_good_as_the_papers_terms(results):
    with_prior, paper = results
    assert with_prior["box_iou"] == paper["box_iou"]  # same held-out scenes
    assert with_prior["mask_iou"] > max(paper["mask_iou"], paper["box_iou"]) + 0.05
