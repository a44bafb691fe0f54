"""The bad-data corpus: a sound generated split, broken in one way per case.

For every case ``boxinst data check`` exits 1 naming the annotation file, the record and what is
wrong, with no traceback; and the loader agrees: it refuses the same dataset with an error naming
the file and the record. For the clean cases data check passes and the loader reads every sample.

The sound split (seed 1): images 1..4 of 75x64, 71x64, 70x79, 67x79 (WxH); annotations 1..11,
1 and 2 on image 1, 3..5 on image 2, with compressed RLE masks; categories 1..7, 1 "ellipse".
"""

from __future__ import annotations

import io
import json
import operator
import shutil
import struct
import zlib
from functools import reduce

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from boxinst.platform.cli import main
from boxinst.platform.data.coco import CocoInstanceDataset
from boxinst.platform.data.decode import decode_segmentation, read_rgb

NAN, INF = float("nan"), float("inf")


# --- mutations: each takes the split folder and breaks it in place ------------------------------


def load(split):
    return json.loads((split / "annotations.json").read_text())


def save(split, data):
    (split / "annotations.json").write_text(json.dumps(data))


def edit(change):
    """A mutation of the parsed annotation file by ``change(data)``."""

    def mutate(split):
        data = load(split)
        change(data)
        save(split, data)

    return mutate


def _parent(data, path):
    *parents, last = [int(key) if key.isdigit() else key for key in path.split(".")]
    return reduce(operator.getitem, parents, data), last


def put(path, value):
    """A mutation setting the JSON value at ``path`` (e.g. ``"images.1.id"``)."""

    def change(data):
        parent, key = _parent(data, path)
        parent[key] = value

    return edit(change)


def drop(path):
    """A mutation deleting the JSON value at ``path``."""

    def change(data):
        parent, key = _parent(data, path)
        del parent[key]

    return edit(change)


def raw(content):
    """A mutation writing ``content`` (text or bytes) as the annotation file."""

    def mutate(split):
        path = split / "annotations.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return mutate


def image_file(split, index):
    return split / "images" / load(split)["images"][index]["file_name"]


def pixels(split, index):
    return np.asarray(Image.open(image_file(split, index)).convert("RGB"))


def renamed(split, index, suffix):
    """Image ``index``'s file is to be written with ``suffix``: the record says so, the old file
    is gone; its new path."""
    old = image_file(split, index)
    old.unlink()
    data = load(split)
    data["images"][index]["file_name"] = old.with_suffix(suffix).name
    save(split, data)
    return old.with_suffix(suffix)


def each_annotation(change):
    """A mutation applying ``change(annotation)`` to every annotation."""

    def change_all(data):
        for annotation in data["annotations"]:
            change(annotation)

    return edit(change_all)


def with_size(height, width, index=1):
    """A mutation saying image ``index`` is ``height`` x ``width``; its annotations are removed
    (their masks would not fit): the image record alone is wrong, or right."""

    def change(data):
        image = data["images"][index]
        image.update(height=height, width=width)
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != image["id"]]

    return edit(change)


def truncated(split):
    path = image_file(split, 1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def directory_for_image(split):
    path = image_file(split, 1)
    path.unlink()
    path.mkdir()


def bomb(split):
    """A PNG whose header claims 20000x20000 pixels: PIL refuses it before decoding."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = struct.pack(">II", 20000, 20000)  # IHDR data: width, height
    png[29:33] = struct.pack(">I", zlib.crc32(png[12:29]))  # CRC of "IHDR" + its data
    image_file(split, 1).write_bytes(bytes(png))


def float_tiff(split):
    grey = pixels(split, 1)[:, :, 0].astype(np.float32)
    Image.fromarray(grey).save(renamed(split, 1, ".tif"))


def resized(split):
    Image.fromarray(pixels(split, 1)).resize((20, 10)).save(image_file(split, 1))


def exif_rotated(split, index=1):
    """Image ``index`` as a JPEG of the same stored pixels, EXIF orientation 6 (to be shown
    turned 90° clockwise): as read, its width and height swap."""
    rgb = pixels(split, index)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(renamed(split, index, ".jpg"), exif=exif, quality=95)
    return rgb


def symlink_dotdot(split):
    (split / "elsewhere").mkdir()
    (split / "images" / "link").symlink_to(split / "elsewhere")
    put("images.1.file_name", "link/../../images/000001.png")(split)


def absolute(split):
    put("images.1.file_name", str(image_file(split, 1).resolve()))(split)


def polygon_of(*points):
    return put("annotations.0.segmentation", [list(points)])


def rle(**fields):
    """A mutation giving annotation 1 (of the 75x64 image 1) the RLE ``fields``."""
    return put("annotations.0.segmentation", {"size": [64, 75], **fields})


PIXELS = 64 * 75  # of image 1

# (case id, mutation, the record the problem names, a fragment of the message)
BAD = [
    # the annotation file
    ("json-missing", lambda s: (s / "annotations.json").unlink(), "file", "does not exist"),
    (
        "json-directory",
        lambda s: ((s / "annotations.json").unlink(), (s / "annotations.json").mkdir()),
        "file",
        "cannot be read",
    ),
    ("json-syntax", raw('{"images": [}'), "file", "is not valid JSON"),
    ("json-not-utf8", raw(b'{"images": "\xff\xfe"}'), "file", "is not valid JSON"),
    ("json-5000-digits", raw('{"images": [' + "9" * 5000 + "]}"), "file", "is not valid JSON"),
    ("json-deep", raw("[" * 100_000), "file", "is not valid JSON"),
    ("json-list", raw("[]"), "file", "not a JSON object"),
    ("json-null", raw("null"), "file", "not a JSON object"),
    ("json-no-images", drop("images"), "file", "no list ['images']"),
    ("json-annotations-object", put("annotations", {}), "file", "no list ['annotations']"),
    ("json-no-categories", put("categories", []), "file", "has no categories"),
    # image records
    ("image-string", put("images.1", "000001.png"), "images[1]", "is '000001.png', not an"),
    ("image-null", put("images.1", None), "images[1]", "is None, not an object"),
    ("image-id-missing", drop("images.1.id"), "images[1]", "has no id"),
    ("image-id-string", put("images.1.id", "2"), "images[1]", "has id '2', not an integer"),
    ("image-id-float", put("images.1.id", 2.0), "images[1]", "has id 2.0, not an integer"),
    ("image-id-bool", put("images.1.id", True), "images[1]", "has id True, not an integer"),
    ("image-id-null", put("images.1.id", None), "images[1]", "has id None, not an integer"),
    ("image-id-duplicate", put("images.1.id", 1), "image id 1", "appears 2 times"),
    ("file-name-missing", drop("images.1.file_name"), "image id 2", "has no file_name"),
    ("file-name-number", put("images.1.file_name", 7), "image id 2", "has file_name 7, not a"),
    ("file-name-empty", put("images.1.file_name", ""), "image id 2", "has file_name '', not"),
    ("file-name-list", put("images.1.file_name", ["a"]), "image id 2", "has file_name ['a']"),
    ("height-missing", drop("images.1.height"), "image id 2", "has no height"),
    ("height-string", put("images.1.height", "64"), "image id 2", "has height '64', not an"),
    ("height-zero", put("images.1.height", 0), "image id 2", "has height 0, not an integer"),
    ("height-nan", put("images.1.height", NAN), "image id 2", "has height nan, not an"),
    ("height-huge", put("images.1.height", 10**30), "image id 2", "not an integer in 1.."),
    ("width-negative", put("images.1.width", -71), "image id 2", "has width -71, not an"),
    ("width-float", put("images.1.width", 71.0), "image id 2", "has width 71.0, not an"),
    ("size-swapped", with_size(71, 64), "image id 2", "is 71x64 (WxH, its EXIF orientation"),
    # image files
    ("image-missing", lambda s: image_file(s, 1).unlink(), "image id 2", "does not exist"),
    ("image-zero-bytes", lambda s: image_file(s, 1).write_bytes(b""), "image id 2", "cannot be"),
    ("image-text", lambda s: image_file(s, 1).write_text("hello"), "image id 2", "cannot be read"),
    ("image-truncated", truncated, "image id 2", "cannot be read"),
    ("image-directory", directory_for_image, "image id 2", "cannot be read"),
    ("image-bomb", bomb, "image id 2", "refused as a decompression bomb (PIL's MAX_IMAGE_PIXELS"),
    ("image-float", float_tiff, "image id 2", "floating-point (mode F)"),
    ("image-resized", resized, "image id 2", "is 20x10 (WxH, its EXIF orientation applied)"),
    ("image-exif-raw-size", exif_rotated, "image id 2", "is 64x71 (WxH, its EXIF orientation"),
    ("path-absolute", absolute, "image id 2", "is refused: not a relative path inside"),
    ("path-dotdot", put("images.1.file_name", "../images/000001.png"), "image id 2", "refused"),
    ("path-dotdot-inside", put("images.1.file_name", "x/../000001.png"), "image id 2", "refused"),
    ("path-symlink-dotdot", symlink_dotdot, "image id 2", "is refused: not a relative path"),
    ("path-nul", put("images.1.file_name", "000001.png\0"), "image id 2", "is refused"),
    ("path-surrogate", put("images.1.file_name", "\ud800.png"), "image id 2", "is refused"),
    # categories
    ("category-number", put("categories.0", 1), "categories[0]", "is 1, not an object"),
    ("category-id-missing", drop("categories.0.id"), "categories[0]", "has no id"),
    ("category-id-string", put("categories.0.id", "1"), "categories[0]", "has id '1', not an"),
    ("category-id-duplicate", put("categories.1.id", 1), "category id 1", "appears 2 times"),
    ("category-name-missing", drop("categories.0.name"), "category id 1", "has no name"),
    ("category-name-empty", put("categories.0.name", ""), "category id 1", "has name '', not a"),
    ("category-name-number", put("categories.0.name", 5), "category id 1", "has name 5, not a"),
    (
        "category-name-duplicate",
        put("categories.1.name", "ellipse"),
        "category id 2",
        "has the same name 'ellipse' as category id 1",
    ),
    # annotation records
    ("annotation-list", put("annotations.0", [1, 2]), "annotations[0]", "is [1, 2], not an"),
    ("annotation-id-missing", drop("annotations.0.id"), "annotations[0]", "has no id"),
    ("annotation-id-string", put("annotations.0.id", "x"), "annotations[0]", "has id 'x', not"),
    ("annotation-id-duplicate", put("annotations.1.id", 1), "annotation id 1", "appears 2 times"),
    ("image-id-absent", drop("annotations.0.image_id"), "annotation id 1", "has no image_id"),
    ("image-id-unknown", put("annotations.0.image_id", 99), "annotation id 1", "unknown image id"),
    ("image-id-list", put("annotations.0.image_id", [1]), "annotation id 1", "has image_id [1]"),
    ("category-absent", drop("annotations.0.category_id"), "annotation id 1", "no category_id"),
    ("category-unknown", put("annotations.0.category_id", 99), "annotation id 1", "unknown cat"),
    ("category-text", put("annotations.0.category_id", "1"), "annotation id 1", "category_id '1'"),
    ("bbox-missing", drop("annotations.0.bbox"), "annotation id 1", "has a malformed bbox None"),
    ("bbox-string", put("annotations.0.bbox", "box"), "annotation id 1", "malformed bbox 'box'"),
    ("bbox-strings", put("annotations.0.bbox", ["1", "2", "3", "4"]), "annotation id 1", "bbox"),
    ("bbox-three", put("annotations.0.bbox", [1, 2, 3]), "annotation id 1", "malformed bbox"),
    ("bbox-nan", put("annotations.0.bbox", [NAN, 1, 2, 3]), "annotation id 1", "malformed bbox"),
    ("bbox-inf", put("annotations.0.bbox", [0, 0, INF, 1]), "annotation id 1", "malformed bbox"),
    ("bbox-huge", put("annotations.0.bbox", [10**400, 0, 1, 1]), "annotation id 1", "malformed"),
    ("bbox-bool", put("annotations.0.bbox", [True, 0, 5, 5]), "annotation id 1", "malformed"),
    ("bbox-zero-width", put("annotations.0.bbox.2", 0), "annotation id 1", "non-positive size"),
    ("bbox-negative", put("annotations.0.bbox.3", -1), "annotation id 1", "non-positive size"),
    ("bbox-outside", put("annotations.0.bbox.0", 5000), "annotation id 1", "outside its 75x64"),
    ("iscrowd-two", put("annotations.0.iscrowd", 2), "annotation id 1", "has iscrowd 2, not 0"),
    ("iscrowd-text", put("annotations.0.iscrowd", "0"), "annotation id 1", "has iscrowd '0'"),
    ("area-text", put("annotations.0.area", "big"), "annotation id 1", "has area 'big', not a"),
    ("area-nan", put("annotations.0.area", NAN), "annotation id 1", "has area nan, not a finite"),
    # polygons
    ("polygon-2-points", polygon_of(1, 1, 5, 5), "annotation id 1", "a polygon of 2 points"),
    ("polygon-odd", polygon_of(1, 1, 5, 5, 9, 9, 3), "annotation id 1", "a polygon of 7 numbers"),
    ("polygon-empty", polygon_of(), "annotation id 1", "a polygon of 0 points (3 at least)"),
    ("polygon-text", polygon_of(*"115599"), "annotation id 1", "polygon that is not a list of"),
    ("polygon-nan", polygon_of(NAN, 1, 5, 5, 9, 9), "annotation id 1", "not a list of numbers"),
    (
        "polygon-flat",
        put("annotations.0.segmentation", [1, 1, 5, 5, 9, 9]),
        "annotation id 1",
        "a polygon that is not a list of numbers: 1",
    ),
    # (pycocotools takes half a minute to rasterise this one, and crashes on a larger one)
    ("polygon-huge", polygon_of(0, 0, 1e8, 0, 1e8, 1e8), "annotation id 1", "outside its 75x64"),
    ("segmentation-text", put("annotations.0.segmentation", "x"), "annotation id 1", "type str"),
    ("segmentation-number", put("annotations.0.segmentation", 5), "annotation id 1", "type int"),
    ("segmentation-false", put("annotations.0.segmentation", False), "annotation id 1", "bool"),
    # RLEs
    ("rle-size-wrong", rle(size=[10, 10], counts=[100]), "annotation id 1", "size [10, 10] for"),
    (
        "rle-size-missing",
        put("annotations.0.segmentation", {"counts": [PIXELS]}),
        "annotation id 1",
        "an RLE of size None for its [64, 75] image",
    ),
    ("rle-counts-missing", rle(), "annotation id 1", "counts are neither integers nor a string"),
    ("rle-counts-floats", rle(counts=[4000.0, 800.0]), "annotation id 1", "neither integers"),
    ("rle-counts-object", rle(counts={}), "annotation id 1", "neither integers nor a string"),
    ("rle-short", rle(counts=[10, 20]), "annotation id 1", "counts sum to 30, not to the 4800"),
    ("rle-long", rle(counts=[PIXELS, 5]), "annotation id 1", "counts sum to 4805, not to the"),
    ("rle-negative", rle(counts=[PIXELS + 5, -5]), "annotation id 1", "an RLE with a negative"),
    ("rle-string-garbage", rle(counts="!!!!"), "annotation id 1", "'!', outside the compressed"),
    ("rle-string-non-ascii", rle(counts="é1"), "annotation id 1", "'é', outside the compressed"),
    ("rle-string-unended", rle(counts="Q?4o"), "annotation id 1", "ends inside a number"),
    ("rle-string-long-number", rle(counts="o" * 7 + "0"), "annotation id 1", "more than 32 bits"),
    ("rle-string-negative", rle(counts="O"), "annotation id 1", "an RLE with a negative count"),
    ("rle-string-wrong-sum", rle(counts="1"), "annotation id 1", "counts sum to 1, not to the"),
    ("rle-string-empty", rle(counts=""), "annotation id 1", "counts sum to 0, not to the 4800"),
]


def check(split, capsys):
    """Exit status and stdout + stderr of ``boxinst data check`` on ``split``."""
    status = main(["data", "check", str(split)])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def loader_error(split, mask_policy="all"):
    """The error the loader raises building the dataset and reading every sample, or None."""
    try:
        dataset = CocoInstanceDataset(
            split / "annotations.json", split / "images", train=False, mask_policy=mask_policy
        )
        for index in range(len(dataset)):
            dataset[index]
    except (ValueError, FileNotFoundError) as error:  # DatasetError is a ValueError
        return error
    return None


@pytest.mark.parametrize(
    ("mutation", "record", "fragment"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_data_check_names_the_file_the_record_and_the_problem(
    split, capsys, mutation, record, fragment
):
    mutation(split)
    status, output = check(split, capsys)
    assert status == 1, output
    assert "Traceback" not in output
    output.encode("utf-8")  # printable on any UTF-8 terminal
    lines = [line for line in output.splitlines() if fragment in line]
    assert lines, output
    assert any(line.startswith(f"{split / 'annotations.json'}: {record}: ") for line in lines), (
        lines
    )
    # The loader refuses the same dataset, naming the file and the record.
    error = loader_error(split)
    assert error is not None
    assert "annotations.json" in str(error) and record in str(error), str(error)


def sixteen_bit(split):
    grey = np.asarray(Image.open(image_file(split, 1)).convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(image_file(split, 1))


def thirty_two_bit(split):
    grey = pixels(split, 1)[:, :, 0].astype(np.int32) * 257
    Image.fromarray(grey).save(renamed(split, 1, ".tif"))


def exif_rotated_with_its_shown_size(split):
    exif_rotated(split)
    with_size(71, 64)(split)


def other_modes(split):
    rgb = [pixels(split, i) for i in range(4)]
    Image.fromarray(rgb[0]).convert("P").save(image_file(split, 0))
    Image.fromarray(rgb[1]).convert("LA").save(image_file(split, 1))
    Image.fromarray(rgb[2]).convert("RGBA").save(image_file(split, 2))
    Image.fromarray(rgb[3]).convert("CMYK").save(renamed(split, 3, ".jpg"))


def jpeg_named_png(split):
    Image.fromarray(pixels(split, 1)).save(image_file(split, 1), format="JPEG")


def uncompressed_counts(mask):
    """The counts of ``mask``'s uncompressed RLE: runs of 0s and 1s, column-major, 0s first."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return ([0] if flat[0] else []) + runs


def uncompress(annotation):
    rle = annotation["segmentation"]
    mask = mask_utils.decode({**rle, "counts": rle["counts"].encode()})
    rle["counts"] = uncompressed_counts(mask)


def symlinked_file(split):
    (split / "elsewhere").mkdir()
    target = split / "elsewhere" / "image.png"
    shutil.move(image_file(split, 1), target)
    image_file(split, 1).symlink_to(target)


def symlinked_folder(split):
    shutil.move(split / "images", split / "pool")
    (split / "images").symlink_to(split / "pool")


def empty_segmentations(split):
    def change(data):
        for i, ann in enumerate(data["annotations"]):
            ann["segmentation"] = [None, [], {}][i % 3]

    edit(change)(split)


# (case id, mutation, mask policy the loader reads it with)
CLEAN = [
    ("sound", lambda s: None, "all"),
    ("16-bit-png", sixteen_bit, "all"),
    ("32-bit-tiff", thirty_two_bit, "all"),
    ("exif-rotated-shown-size", exif_rotated_with_its_shown_size, "all"),
    ("palette-alpha-cmyk", other_modes, "all"),
    ("jpeg-named-png", jpeg_named_png, "all"),
    ("uncompressed-rle", each_annotation(uncompress), "all"),
    ("polygon", polygon_of(8, 11, 35, 11, 35, 50, 8, 50), "all"),
    ("symlinked-file", symlinked_file, "all"),
    ("symlinked-folder", symlinked_folder, "all"),
    ("no-iscrowd-no-area", each_annotation(lambda a: [a.pop("iscrowd"), a.pop("area")]), "all"),
    ("box-only-no-segmentation", each_annotation(lambda a: a.pop("segmentation")), "none"),
    ("box-only-empty-segmentations", empty_segmentations, "none"),
]


@pytest.mark.parametrize(
    ("mutation", "mask_policy"), [c[1:] for c in CLEAN], ids=[c[0] for c in CLEAN]
)
def test_what_data_check_passes_the_loader_reads(split, capsys, mutation, mask_policy):
    mutation(split)
    status, output = check(split, capsys)
    assert status == 0, output
    assert "no problems" in output
    assert loader_error(split, mask_policy) is None


def test_a_16_bit_png_reads_as_its_8_bit_values(split):
    grey = np.asarray(Image.open(image_file(split, 1)).convert("L"))
    sixteen_bit(split)
    assert Image.open(image_file(split, 1)).mode == "I;16"
    image = read_rgb(image_file(split, 1))
    assert image.dtype == np.uint8 and image.shape == (*grey.shape, 3)
    assert np.abs(image.astype(int) - grey[:, :, None]).max() <= 1
    dataset = CocoInstanceDataset(split / "annotations.json", split / "images", train=False)
    assert np.array_equal(dataset.original_image(1), image)


def test_a_32_bit_grey_image_of_16_bit_values_reads_as_8_bit(split):
    red = pixels(split, 1)[:, :, 0]
    thirty_two_bit(split)
    image = read_rgb(image_file(split, 1))
    assert Image.open(image_file(split, 1)).mode == "I"
    assert np.abs(image.astype(int) - red[:, :, None]).max() <= 1


def test_an_exif_rotated_jpeg_reads_as_shown(split):
    rgb = exif_rotated(split)
    image = read_rgb(image_file(split, 1))
    shown = np.rot90(rgb, k=-1)  # orientation 6: turned 90° clockwise
    assert image.shape == shown.shape
    assert np.abs(image.astype(int) - shown).mean() < 4  # JPEG's loss


@pytest.mark.parametrize("seed", range(5))
def test_rle_decoding_matches_pycocotools(seed):
    """Compressed (multi-character and negative differences) and uncompressed RLEs."""
    rng = np.random.default_rng(seed)
    height, width = (int(side) for side in rng.integers(1, 300, size=2))
    mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
    mask[: rng.integers(0, height), : rng.integers(0, width)] = 1  # long runs too
    encoded = mask_utils.encode(np.asfortranarray(mask))
    compressed = {"size": encoded["size"], "counts": encoded["counts"].decode()}
    np.testing.assert_array_equal(decode_segmentation(compressed, height, width), mask)
    uncompressed_rle = {"size": [height, width], "counts": uncompressed_counts(mask)}
    np.testing.assert_array_equal(decode_segmentation(uncompressed_rle, height, width), mask)
