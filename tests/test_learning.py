"""Training learns, for real, on the CPU: box-only masks beat the filled boxes.

The first two trials of the shipped ``demo`` spec, trained as ``boxinst demo`` trains them
(the one training loop, a process per core, about five minutes): the platform's box-only regime
(a dice loss to the GrabCut masks of the boxes, ``prior_only``) and box-only BoxInst as the
paper trains it. Their masks are measured by the ordinary evaluation on held-out scenes at each
instance's true location (``mask_iou/true_locations``), against the true shapes and against the
filled boxes (``mask_iou/filled_boxes``).

The paper's formulation is fragile at this budget: from the same seed its masks vanish on one
torch build and beat the boxes on another (issue 14 measures the collapse across data styles
and seeds), so this test asserts what the prior changes, not what the paper's terms reach alone.
"""

import pytest

from boxinst.platform.metrics import MASK_IOU, MASK_IOU_BOX, SEGM_AP, box_as_mask_name
from boxinst.platform.spec import load_spec
from boxinst.platform.training.local import train_trials

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    spec = load_spec(
        "demo",
        [
            "sweep.axes.regime=[prior_only, box_only]",
            f"data.generated={root / 'data'}",
            f"data.box_priors={root / 'priors'}",
        ],
    )
    results = train_trials(spec, root / "out")
    for name, metrics in results.items():
        print(
            f"\n{name}: mask IoU {metrics[MASK_IOU]:.3f}, filled boxes {metrics[MASK_IOU_BOX]:.3f}"
        )
    return results["prior_only"], results["box_only"]


def test_box_only_masks_are_clearly_better_than_filled_boxes(results):
    with_prior, _ = results
    assert with_prior[MASK_IOU] > with_prior[MASK_IOU_BOX] + 0.1
    assert with_prior[SEGM_AP] > 2 * with_prior[box_as_mask_name("AP")]


def test_the_box_prior_keeps_box_only_masks_at_least_as_good_as_the_papers_terms(results):
    with_prior, paper = results
    assert with_prior[MASK_IOU_BOX] == paper[MASK_IOU_BOX]  # same held-out scenes
    assert with_prior[MASK_IOU] > max(paper[MASK_IOU], paper[MASK_IOU_BOX]) + 0.05
