"""formats/images.py: walking folders (links, skipped files) and reading pixels in
their own depth, converted to float exactly as the whole image would be."""
import logging
import os

import numpy as np
from PIL import Image
import pytest

from grepq_jax.formats import images


def _rgb(height=20, width=30):
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows * 12, cols * 8, (rows + cols) * 5], -1).astype(np.uint8)


@pytest.fixture
def linked_folder(tmp_path):
    """Two images, a subfolder, a GIF, a text file, and links of every kind."""
    Image.fromarray(_rgb()).save(tmp_path / "b.png")
    Image.fromarray(_rgb()).save(tmp_path / "A.JPG")
    (tmp_path / "sub").mkdir()
    Image.fromarray(_rgb()).save(tmp_path / "sub" / "c.png")
    Image.fromarray(_rgb()).save(tmp_path / "anim.gif")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "to_sub").symlink_to(tmp_path / "sub", target_is_directory=True)
    (tmp_path / "to_b.png").symlink_to(tmp_path / "b.png")
    return tmp_path


def test_the_walk_yields_image_entries_in_order_and_counts_what_it_skips(linked_folder):
    skips = images.WalkSkips()
    found = [p.relative_to(linked_folder).as_posix()
             for p in images.walk_image_files(linked_folder, skips)]
    # Sorted by name, a folder's files before its subfolders; broken links
    # are yielded for the reader to report; the link to a folder is not followed.
    assert found == ["A.JPG", "anim.gif", "b.png", "dangling.png", "loop.png",
                     "to_b.png", "sub/c.png"]
    assert skips.other_suffixes == {".txt": 1}
    assert skips.folder_links == [linked_folder / "to_sub"]
    assert skips.summary() == [
        "1 file(s) without an image suffix (.txt 1); name a file to read it "
        "whatever its suffix",
        f"{linked_folder / 'to_sub'}: a link to a folder, not followed"]


def test_find_image_files_warns_naming_each_link_it_drops(linked_folder, caplog):
    with caplog.at_level(logging.WARNING):
        found = images.find_image_files(linked_folder)
    assert [p.name for p in found] == ["A.JPG", "anim.gif", "b.png", "c.png", "to_b.png"]
    warnings = sorted(r.getMessage() for r in caplog.records)
    assert warnings == [
        f"Skipping {linked_folder / 'dangling.png'}: a broken symbolic link",
        f"Skipping {linked_folder / 'loop.png'}: a symbolic link loop",
        f"Skipping {linked_folder / 'to_sub'}: a link to a folder, not followed"]


def test_an_unlistable_folder_is_reported_not_silently_dropped(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    scandir = os.scandir

    def refuse_locked(path):  # As chmod 0 would, for any user but root.
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_locked)
    skips = images.WalkSkips()
    assert list(images.walk_image_files(tmp_path, skips)) == [tmp_path / "a.png"]
    assert skips.unlistable == [(tmp_path / "locked", "Permission denied")]
    assert skips.summary() == [f"{tmp_path / 'locked'}: cannot list this folder "
                               "(Permission denied)"]


def test_file_problem_names_links_and_special_files(linked_folder):
    assert images.file_problem(linked_folder / "b.png") is None
    assert images.file_problem(linked_folder / "dangling.png") == "a broken symbolic link"
    assert images.file_problem(linked_folder / "loop.png") == "a symbolic link loop"
    assert images.file_problem(linked_folder / "sub") == "not a regular file"
    os.mkfifo(linked_folder / "pipe.png")  # Reading it would block forever.
    with pytest.raises(images.UnusableImageError, match="^not a regular file$"):
        images.read_pixels(linked_folder / "pipe.png")
    assert (images.file_problem(linked_folder / "nothing.png")
            == "cannot open (No such file or directory)")


def test_pixels_keep_their_depth_and_convert_like_the_whole(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 100, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 1]).save(tmp_path / "grey.png")
    pixels = {name: images.read_pixels(tmp_path / f"{name}.png")
              for name in ("rgb", "grey16", "rgba", "grey")}
    assert {name: (p.dtype.name, p.shape) for name, p in pixels.items()} == {
        "rgb": ("uint8", (20, 30, 3)), "grey16": ("uint16", (20, 30, 3)),
        "rgba": ("uint8", (20, 30, 4)), "grey": ("uint8", (20, 30, 3))}
    np.testing.assert_array_equal(pixels["rgb"], rgb)
    np.testing.assert_array_equal(pixels["grey"], np.repeat(rgb[..., 1:2], 3, -1))
    for name, p in pixels.items():
        whole = images.to_float(p)
        assert whole.dtype == np.float32 and whole.shape == (20, 30, 3)
        # A patch converted alone is bit-identical to the same patch of the whole.
        np.testing.assert_array_equal(images.to_float(p[5:15, 7:19]), whole[5:15, 7:19])
        np.testing.assert_array_equal(images.read_image(tmp_path / f"{name}.png"), whole)
    np.testing.assert_allclose(images.to_float(pixels["rgba"]),
                               rgb / 255 * 100 / 255 + (1 - 100 / 255), atol=1e-6)
    np.testing.assert_allclose(images.to_float(pixels["grey16"])[..., 0],
                               rgb[..., 0] / 255, atol=1e-6)


def test_max_pixels_refuses_before_decoding(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    assert images.read_pixels(tmp_path / "a.png", max_pixels=600).shape == (20, 30, 3)
    with pytest.raises(images.UnusableImageError,
                       match=r"^30x20 px \(600 pixels\) is above the limit of "
                             r"max_pixels=599$"):
        images.read_pixels(tmp_path / "a.png", max_pixels=599)
    assert images.MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS == 178_956_970
