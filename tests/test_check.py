"""`boxinst data check`: each kind of bad input is reported with its file and record."""

import json

import cv2

from boxinst.platform.cli import main
from boxinst.platform.data.check import check_dataset, resolve


def edit(split, change):
    path = split / "annotations.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return data


def problems_of(split):
    return [str(p) for p in check_dataset(*resolve(split))]


def test_sound_dataset_has_no_problem(sound):
    assert problems_of(sound) == []


def test_missing_corrupt_and_resized_images(split):
    data = json.loads((split / "annotations.json").read_text())
    names = [image["file_name"] for image in data["images"]]
    (split / "images" / names[0]).unlink()
    (split / "images" / names[1]).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    image = cv2.imread(str(split / "images" / names[2]))
    cv2.imwrite(str(split / "images" / names[2]), cv2.resize(image, (10, 12)))
    found = problems_of(split)
    assert len(found) == 3
    # The image problems are the loader's own messages, naming the image file.
    images = split / "images"
    assert f"image id 1: image file {images / names[0]} does not exist" in found[0]
    assert f"image id 2: image file {images / names[1]} cannot be read" in found[1]
    assert f"image id 3: image file {images / names[2]} is 10x12 (WxH" in found[2]
    assert "but the JSON says" in found[2]


def test_bad_annotations_are_each_named(split):
    def corrupt(data):
        anns = data["annotations"]
        anns[0]["bbox"][2] = 0  # non-positive width
        anns[1]["bbox"][0] = 5000  # outside the image
        anns[2]["category_id"] = 99
        anns[3]["segmentation"] = [[1.0, 1.0, 5.0, 5.0]]  # two points
        anns[4]["id"] = anns[5]["id"]  # duplicate id
        anns[6]["bbox"] = "not a box"

    data = edit(split, corrupt)
    found = "\n".join(problems_of(split))
    ids = [a["id"] for a in data["annotations"]]
    assert f"annotation id {ids[0]}: has a box of non-positive size" in found
    assert f"annotation id {ids[1]}: box [5000" in found and "lies outside" in found
    assert f"annotation id {ids[2]}: has unknown category id 99" in found
    assert f"annotation id {ids[3]}: has a polygon of 2 points" in found
    assert f"annotation id {ids[5]}: appears 2 times" in found
    assert f"annotation id {ids[6]}: has a malformed bbox 'not a box'" in found
    assert all(line.startswith(str(split / "annotations.json")) for line in found.splitlines())


def test_malformed_and_missing_json(split, tmp_path):
    (split / "annotations.json").write_text('{"images": [}')
    (found,) = problems_of(split)
    assert "annotations.json: file: is not valid JSON" in found
    (split / "annotations.json").write_text(json.dumps({"images": []}))
    assert "no list ['annotations', 'categories']" in problems_of(split)[0]
    (missing,) = problems_of(tmp_path / "nowhere")
    assert "nowhere: file: does not exist" in missing


def test_cli_check_exit_status(sound, split, capsys):
    assert main(["data", "check", str(sound)]) == 0
    edit(split, lambda d: d["annotations"][0]["bbox"].__setitem__(3, -1))
    assert main(["data", "check", str(split / "annotations.json")]) == 1
    assert "1 problem(s)" in capsys.readouterr().out
