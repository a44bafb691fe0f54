"""The COCO-format dataset, mask policies, transforms and batching on a small generated dataset."""

import json
import math

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from boxinst.models.condinst import SIZE_DIVISIBILITY, CondInst
from boxinst.platform.data.coco import CocoInstanceDataset, DatasetError
from boxinst.platform.data.collate import collate_instances
from boxinst.platform.data.policy import (
    COCO_CLASSES,
    NONVOC60,
    VOC20,
    ClassMasks,
    FractionMasks,
    parse_mask_policy,
)
from boxinst.platform.data.transforms import (
    COCO_TRAIN_SHORT_SIZES,
    eval_transform,
    train_transform,
)
from boxinst.platform.training.objective import LossConfig, compute_losses

# Non-contiguous COCO ids: person and car are VOC classes, truck and toothbrush are not.
CATEGORIES = [
    {"id": 1, "name": "person"},
    {"id": 3, "name": "car"},
    {"id": 8, "name": "truck"},
    {"id": 90, "name": "toothbrush"},
]
SIZES = {1: (60, 80), 2: (50, 70), 3: (40, 40), 4: (40, 50)}  # image id -> (height, width)


def rect_mask(shape, x0, y0, x1, y1):
    mask = np.zeros(shape, np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def ellipse_mask(shape, centre, axes):
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, thickness=-1)
    return mask


def ring_mask(shape, centre, radius):
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, centre, radius, 1, thickness=-1)
    cv2.circle(mask, centre, radius // 2, 0, thickness=-1)
    return mask


def tight_box(mask):
    """xyxy box around a mask, upper corner exclusive."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def uncompressed_rle(mask):
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def polygon_of_rect(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def expected_masks():
    """Annotation id -> (category id, true mask) of the non-crowd instances."""
    return {
        1: (1, rect_mask(SIZES[1], 5, 10, 25, 40)),  # polygon
        2: (3, ellipse_mask(SIZES[1], (55, 20), (12, 8))),  # compressed RLE
        3: (8, rect_mask(SIZES[1], 40, 35, 70, 55)),  # polygon
        4: (90, ring_mask(SIZES[2], (35, 25), 14)),  # uncompressed RLE
    }


def write_dataset(root, poison_names=(), bad_box_id=None):
    """A COCO-format dataset under ``root``; the instances of ``poison_names`` are annotated with
    full-image masks (what must never reach the loss when they are box-only)."""
    rng = np.random.default_rng(0)
    images = []
    for image_id, (h, w) in SIZES.items():
        name = f"{image_id}.png"
        rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(root / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})

    masks = expected_masks()
    segmentations = {
        1: polygon_of_rect(5, 10, 25, 40),
        2: compressed_rle(masks[2][1]),
        3: polygon_of_rect(40, 35, 70, 55),
        4: uncompressed_rle(masks[4][1]),
    }
    names = {c["id"]: c["name"] for c in CATEGORIES}
    annotations = []
    for ann_id, (category_id, mask) in masks.items():
        image_id = 1 if ann_id <= 3 else 2
        h, w = SIZES[image_id]
        x0, y0, x1, y1 = tight_box(mask).tolist()
        segmentation = segmentations[ann_id]
        if names[category_id] in poison_names:
            segmentation = polygon_of_rect(0, 0, w, h)
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [x0, y0, 0 if ann_id == bad_box_id else x1 - x0, y1 - y0],
                "area": float(mask.sum()),
                "iscrowd": 0,
                "segmentation": segmentation,
            }
        )
    for ann_id, image_id in ((5, 2), (6, 4)):
        crowd = rect_mask(SIZES[image_id], 0, 0, 30, 20)
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": 3,
                "bbox": [0, 0, 30, 20],
                "area": 600.0,
                "iscrowd": 1,
                "segmentation": compressed_rle(crowd),
            }
        )
    path = root / "annotations.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )
    return path


@pytest.fixture
def coco(tmp_path):
    return write_dataset(tmp_path), tmp_path


def by_id(dataset):
    return {target["image_id"]: (image, target) for image, target in dataset}


# --- dataset -------------------------------------------------------------------------------------


def test_categories_map_to_contiguous_labels(coco):
    dataset = CocoInstanceDataset(*coco)
    assert dataset.category_ids == (1, 3, 8, 90)
    assert dataset.category_names == ("person", "car", "truck", "toothbrush")
    samples = by_id(dataset)
    assert samples[1][1]["labels"].tolist() == [0, 1, 2]
    assert samples[2][1]["labels"].tolist() == [3]
    assert samples[1][1]["labels"].dtype == torch.int64


def test_image_is_rgb_and_boxes_are_xyxy(coco):
    annotation_file, root = coco
    image, target = by_id(CocoInstanceDataset(annotation_file, root))[1]
    written = cv2.cvtColor(cv2.imread(str(root / "1.png")), cv2.COLOR_BGR2RGB)
    assert image.dtype == torch.uint8 and image.shape == (3, 60, 80)
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), written)
    np.testing.assert_allclose(target["boxes"][0].numpy(), [5, 10, 25, 40])
    assert target["boxes"].dtype == torch.float32
    assert target["image_size"] == (60, 80) and target["original_size"] == (60, 80)


def test_masks_decode_from_polygons_and_rle(coco):
    samples = by_id(CocoInstanceDataset(*coco, mask_policy="all"))
    truth = expected_masks()
    for image_id, ann_ids in ((1, [1, 2, 3]), (2, [4])):
        masks = samples[image_id][1]["masks"].numpy()
        for row, ann_id in enumerate(ann_ids):
            np.testing.assert_array_equal(masks[row], truth[ann_id][1], err_msg=f"ann {ann_id}")


def test_crowd_annotations_are_ignored(coco):
    samples = by_id(CocoInstanceDataset(*coco, train=False))
    assert len(samples[2][1]["boxes"]) == 1  # the toothbrush, not the crowd of cars
    assert len(samples[4][1]["boxes"]) == 0


def test_images_without_annotations_dropped_in_training_kept_in_evaluation(coco):
    assert CocoInstanceDataset(*coco, train=True).image_ids == [1, 2]  # 4 has only a crowd
    evaluation = CocoInstanceDataset(*coco, train=False, transform=eval_transform(64, 128))
    assert evaluation.image_ids == [1, 2, 3, 4]
    image, target = by_id(evaluation)[3]
    assert image.shape == (3, 64, 64)
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 64, 64)
    images, targets = collate_instances([evaluation[2], evaluation[0]])
    assert images.shape[0] == 2 and targets[0]["masks"].shape == (0, *images.shape[-2:])


def test_has_mask_follows_the_policy(coco):
    expected = {
        "all": [True, True, True, True],
        "none": [False, False, False, False],
        "voc": [True, True, False, False],
    }
    for name, spec in (("all", "all"), ("none", "none"), ("voc", {"classes": ["voc20"]})):
        samples = by_id(CocoInstanceDataset(*coco, mask_policy=spec))
        flags = samples[1][1]["has_mask"].tolist() + samples[2][1]["has_mask"].tolist()
        assert flags == expected[name], name


def test_ignore_bottom_is_scaled_to_the_transformed_image(coco):
    dataset = CocoInstanceDataset(*coco, transform=eval_transform(120, 1333), ignore_bottom=10)
    _, target = dataset[0]  # 60x80 -> 120x160
    assert target["image_size"] == (120, 160) and target["ignore_bottom"] == 20
    assert CocoInstanceDataset(*coco)[0][1]["ignore_bottom"] == 0


# --- errors --------------------------------------------------------------------------------------


def test_missing_image_error_names_the_file(coco):
    annotation_file, root = coco
    (root / "2.png").unlink()
    dataset = CocoInstanceDataset(annotation_file, root)
    with pytest.raises(FileNotFoundError, match=r"2\.png.*image id 2"):
        dataset[1]


def test_corrupt_image_error_names_the_file(coco):
    annotation_file, root = coco
    (root / "1.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"1\.png.*cannot be read"):
        CocoInstanceDataset(annotation_file, root)[0]


def test_invalid_box_error_names_the_file_and_annotation(tmp_path):
    annotation_file = write_dataset(tmp_path, bad_box_id=3)
    with pytest.raises(DatasetError, match=r"annotations\.json: annotation id 3: .*non-positive"):
        CocoInstanceDataset(annotation_file, tmp_path)


def test_bad_records_can_be_skipped_and_counted(tmp_path, capsys):
    annotation_file = write_dataset(tmp_path, bad_box_id=3)
    (tmp_path / "clean").mkdir()
    clean = CocoInstanceDataset(write_dataset(tmp_path / "clean"), tmp_path / "clean")
    dataset = CocoInstanceDataset(annotation_file, tmp_path, skip_bad_records=True)
    assert dataset.skipped == {"annotations": 1, "images": 0}
    assert "skipped 1 bad annotation(s)" in capsys.readouterr().out
    assert 3 not in dataset.coco.anns and len(dataset.coco.anns) == len(clean.coco.anns) - 1


def test_unknown_policy_class_lists_the_valid_ones(coco):
    with pytest.raises(ValueError, match=r"\['zebra'\].*'car', 'person', 'toothbrush', 'truck'"):
        CocoInstanceDataset(*coco, mask_policy={"classes": ["person", "zebra"]})


# --- mask policies -------------------------------------------------------------------------------


def test_class_groups_split_coco():
    assert len(COCO_CLASSES) == len(set(COCO_CLASSES)) == 80
    assert len(VOC20) == 20 and len(NONVOC60) == 60
    assert not VOC20 & NONVOC60 and VOC20 | NONVOC60 == set(COCO_CLASSES)
    assert parse_mask_policy({"classes": ["voc20"]}).classes == VOC20
    assert parse_mask_policy({"classes": ["nonvoc60", "dog"]}).classes == NONVOC60 | {"dog"}


def test_simple_policies():
    assert parse_mask_policy("all").has_mask(1, "dog")
    assert not parse_mask_policy("none").has_mask(1, "dog")
    voc = parse_mask_policy({"classes": ["voc20"]})
    assert voc.has_mask(7, "dog") and not voc.has_mask(7, "truck")


def test_fraction_policy_is_a_stable_seeded_subset():
    ids = range(4000)
    policy = parse_mask_policy({"fraction": 0.3, "seed": 5})
    chosen = [policy.has_mask(i, "dog") for i in ids]
    assert chosen == [FractionMasks(0.3, 5).has_mask(i, "cat") for i in ids]  # epochs, workers
    assert abs(np.mean(chosen) - 0.3) < 0.03
    other_seed = [FractionMasks(0.3, 6).has_mask(i, "dog") for i in ids]
    assert chosen != other_seed
    assert not any(FractionMasks(0.0).has_mask(i, "dog") for i in ids)
    assert all(FractionMasks(1.0).has_mask(i, "dog") for i in ids)


@pytest.mark.parametrize(
    "spec", ["all", "none", {"classes": ["voc20", "truck"]}, {"fraction": 0.25, "seed": 3}]
)
def test_policy_spec_round_trip(spec):
    policy = parse_mask_policy(spec)
    assert parse_mask_policy(policy.to_spec()) == policy


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("some", "'some'"),
        ({"clases": ["dog"]}, "unknown keys \\['clases'\\]"),
        ({"classes": "dog"}, "'classes'.*'dog'"),
        ({"classes": []}, "'classes'"),
        ({"classes": ["dog", 3]}, "'classes'.*\\[3\\]"),
        ({"classes": ["dog"], "seed": 1}, "\\['seed'\\]"),
        ({"fraction": 1.5}, "'fraction'.*1.5"),
        ({"fraction": True}, "'fraction'.*True"),
        ({"fraction": 0.5, "seed": "x"}, "'seed'.*'x'"),
        ({"fraction": 0.5, "sed": 1}, "\\['sed'\\]"),
        (["all"], "\\['all'\\]"),
    ],
)
def test_malformed_policy_specs_name_the_bad_part(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_mask_policy(spec)


def test_class_policy_checks_the_dataset_names():
    ClassMasks(("dog",)).check_categories(["cat", "dog"])
    parse_mask_policy({"classes": ["voc20"]}).check_categories(["cat", "truck"])  # a subset
    with pytest.raises(ValueError, match=r"\['nonvoc60'\].*valid class names: \['cat', 'dog'\]"):
        parse_mask_policy({"classes": ["nonvoc60"]}).check_categories(["cat", "dog"])


# --- no leakage ----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["none", {"classes": ["voc20"]}, {"fraction": 0.5, "seed": 1}])
def test_masks_of_box_only_instances_never_leave_the_pipeline(tmp_path, policy):
    annotation_file = write_dataset(tmp_path, poison_names=("person", "car", "truck", "toothbrush"))
    transform = train_transform((64, 72), 128, flip_prob=0.5, seed=0)
    dataset = CocoInstanceDataset(
        annotation_file, tmp_path, mask_policy=policy, transform=transform
    )
    for _ in range(3):  # different draws of size and flip
        _, targets = collate_instances([dataset[0], dataset[1]])
        for target in targets:
            assert not target["masks"][~target["has_mask"]].any()
            assert all(target["masks"][i].any() for i in target["has_mask"].nonzero()[:, 0])


def test_poisoned_masks_do_reach_the_batch_when_the_policy_allows(tmp_path):
    annotation_file = write_dataset(tmp_path, poison_names=("truck",))
    _, targets = collate_instances([CocoInstanceDataset(annotation_file, tmp_path)[0]])
    assert targets[0]["masks"][2, :60, :80].all()  # the check above would see a leak


def test_semi_supervised_batch_trains(tmp_path, make_config):
    annotation_file = write_dataset(tmp_path, poison_names=("truck", "toothbrush"))
    dataset = CocoInstanceDataset(
        annotation_file,
        tmp_path,
        mask_policy={"classes": ["voc20"]},
        transform=train_transform((64,), 128, seed=0),
        ignore_bottom=10,
    )
    images, targets = collate_instances([dataset[0], dataset[1]])
    assert [t["has_mask"].tolist() for t in targets] == [[True, True, False], [False]]
    torch.manual_seed(0)
    model = CondInst(make_config(num_classes=len(dataset.category_ids)))
    losses = compute_losses(model, images, targets, LossConfig(pairwise_warmup_iters=0))
    assert all(math.isfinite(v.item()) for v in losses.values())
    assert losses["loss_mask"].item() > 0 and losses["loss_proj"].item() > 0
    sum(losses.values()).backward()


# --- transforms and batching ---------------------------------------------------------------------


def sample_of(masks, has_mask=None):
    height, width = masks.shape[1:]
    return {
        "image": np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8),
        "boxes": np.stack([tight_box(m) for m in masks]),
        "masks": masks,
        "labels": np.arange(len(masks), dtype=np.int64),
        "has_mask": np.ones(len(masks), bool) if has_mask is None else has_mask,
    }


def test_flip_and_resize_keep_boxes_and_masks_aligned():
    shape = (90, 130)
    masks = np.stack(
        [
            ellipse_mask(shape, (30, 40), (20, 12)),
            ring_mask(shape, (95, 50), 25),
            rect_mask(shape, 0, 70, 40, 90),
        ]
    )
    sample = sample_of(masks)
    for flip_prob, short in ((1.0, 160), (0.0, 64)):
        out = train_transform((short,), 1333, flip_prob=flip_prob, seed=0)(sample)
        assert (
            out["image"].shape[:2] == out["masks"].shape[1:]
            and min(out["masks"].shape[1:]) == short
        )
        for mask, box in zip(out["masks"], out["boxes"], strict=True):
            np.testing.assert_allclose(tight_box(mask), box, atol=2)
    flipped = train_transform((90,), 1333, flip_prob=1.0, seed=0)(sample)
    np.testing.assert_array_equal(flipped["masks"], masks[:, :, ::-1])
    np.testing.assert_array_equal(flipped["image"], sample["image"][:, ::-1])


def test_emptied_boxes_drop_their_mask_label_and_flag():
    shape = (40, 60)
    masks = np.stack([rect_mask(shape, 0, 0, 10, 10), rect_mask(shape, 20, 5, 30, 15)] * 2)
    sample = sample_of(masks, has_mask=np.array([True, False, True, False]))
    sample["boxes"][1] = [60, 5, 70, 15]  # outside the image: empty once clipped
    out = eval_transform(40, 1333)(sample)
    assert out["labels"].tolist() == [0, 2, 3]
    assert out["has_mask"].tolist() == [True, True, False]
    np.testing.assert_array_equal(out["masks"], masks[[0, 2, 3]])
    assert len(out["boxes"]) == 3


@pytest.mark.parametrize(
    ("height", "width", "short", "max_size"),
    [(100, 300, 64, 128), (100, 150, 64, 1333), (150, 100, 64, 1333), (480, 640, 800, 1333),
     (427, 640, 800, 1333), (333, 1000, 800, 1333)],
)  # fmt: skip
def test_resize_follows_the_shortest_edge_rule(height, width, short, max_size):
    scale = short / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    sample = sample_of(np.stack([rect_mask((height, width), 10, 10, 50, 50)]))
    out = eval_transform(short, max_size)(sample)
    assert out["image"].shape[:2] == (round(height * scale), round(width * scale))
    assert out["masks"].shape[1:] == out["image"].shape[:2]


def test_training_sizes_are_drawn_from_the_list():
    assert COCO_TRAIN_SHORT_SIZES == (640, 672, 704, 736, 768, 800)
    transform = train_transform((32, 48, 64), 1333, seed=0)
    sample = sample_of(np.stack([rect_mask((50, 70), 10, 10, 30, 30)]))
    assert {transform(sample)["image"].shape[0] for _ in range(30)} == {32, 48, 64}


def test_collate_pads_to_multiples_of_32(coco):
    dataset = CocoInstanceDataset(*coco, mask_policy="all")
    images, targets = collate_instances([dataset[0], dataset[1]])
    assert images.shape == (2, 3, 64, 96) and images.dtype == torch.float32
    for (_, target), padded in zip((dataset[0], dataset[1]), targets, strict=True):
        h, w = target["image_size"]
        assert padded["masks"].shape == (len(target["boxes"]), 64, 96)
        assert h % SIZE_DIVISIBILITY or w % SIZE_DIVISIBILITY  # padding happened
        torch.testing.assert_close(padded["masks"][:, :h, :w], target["masks"])
        assert not padded["masks"][:, h:].any() and not padded["masks"][:, :, w:].any()
    torch.testing.assert_close(images[1, :, :50, :70], dataset[1][0].float())
    assert not images[1, :, 50:].any() and not images[1, :, :, 70:].any()
    assert targets[0]["image_id"] == 1 and targets[1]["original_size"] == (50, 70)


class _Repeated(torch.utils.data.Dataset):
    """One sample transformed again and again: whether each draw flipped it."""

    def __init__(self, sample, transform, length):
        self.sample, self.transform, self.length = sample, transform, length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        out = self.transform(self.sample)
        return torch.utils.data.get_worker_info().id, bool(out["masks"][0, 0, 0])


def test_data_loader_workers_draw_different_augmentations():
    sample = sample_of(np.stack([rect_mask((32, 32), 0, 0, 8, 8)]))  # top-left: 1 unless flipped
    dataset = _Repeated(sample, train_transform((32,), 1333, flip_prob=0.5, seed=0), 32)
    loader = torch.utils.data.DataLoader(
        dataset, num_workers=2, collate_fn=list, generator=torch.Generator().manual_seed(0)
    )
    draws = {0: [], 1: []}
    for worker, unflipped in (item for batch in loader for item in batch):
        draws[worker].append(unflipped)
    assert draws[0] != draws[1]  # forked copies of one pipeline would repeat each other


def test_policy_giving_a_mask_needs_a_segmentation(tmp_path):
    annotation_file = write_dataset(tmp_path)
    data = json.loads(annotation_file.read_text())
    del data["annotations"][0]["segmentation"]
    annotation_file.write_text(json.dumps(data))
    CocoInstanceDataset(annotation_file, tmp_path, mask_policy="none")
    with pytest.raises(ValueError, match=r"annotation id 1 .*no segmentation.*'all'"):
        CocoInstanceDataset(annotation_file, tmp_path, mask_policy="all")
