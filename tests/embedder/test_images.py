import io

import numpy as np
import pytest
from PIL import Image

from embedder.errors import ImageError
from embedder.images import HEIF_SUPPORTED, IMAGE_FORMATS, MAX_PIXELS, load_image


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "img,fmt",
    [
        (Image.new("P", (20, 10), 3), "PNG"),
        (Image.new("RGBA", (20, 10), (255, 0, 0, 0)), "PNG"),
        (Image.new("LA", (20, 10), (128, 255)), "PNG"),
        (Image.new("L", (20, 10), 128), "JPEG"),
        (Image.new("CMYK", (20, 10), (0, 255, 0, 0)), "JPEG"),
        (Image.new("1", (20, 10), 1), "PNG"),
    ],
)
def test_any_mode_becomes_rgb(img, fmt):
    out = load_image(_encode(img, fmt))
    assert out.mode == "RGB" and out.size == (20, 10)


def test_transparent_pixels_become_white():
    out = load_image(_encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_greyscale_is_stretched_to_8_bit():
    arr = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    out = load_image(_encode(Image.fromarray(arr), "PNG"))
    assert out.mode == "RGB"
    px = np.asarray(out)[..., 0]
    assert px[0, 0] == 0 and px[1, 1] == 255 and 0 < px[1, 0] < 255


def test_truncated_jpeg_is_refused():
    data = _encode(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG")
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(data[: len(data) // 2])


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n garbage"])
def test_garbage_is_refused(data):
    with pytest.raises(ImageError):
        load_image(data)


def test_decompression_bomb_is_refused(tmp_path):
    # A tiny PNG that claims more pixels than the limit: refused before decoding.
    side = int(MAX_PIXELS**0.5) + 10
    bomb = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(bomb)
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(bomb)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.jpg")


def test_exif_orientation_is_applied():
    """A phone photo stored sideways with Orientation=6 loads upright, as viewers show it."""
    img = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = load_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


@pytest.mark.skipif(not HEIF_SUPPORTED, reason="pillow-heif (the 'heif' extra) is not installed")
def test_heic_photo_decodes():
    data = _encode(Image.new("RGB", (40, 30), (200, 20, 20)), "HEIF", quality=90)
    assert data[4:12] == b"ftypheic"
    out = load_image(data)
    assert out.mode == "RGB" and out.size == (40, 30)
    r, g, b = out.getpixel((20, 15))
    assert r > 150 and g < 80 and b < 80


def test_heic_without_pillow_heif_names_the_extra(monkeypatch):
    import embedder.images as images

    monkeypatch.setattr(images, "HEIF_SUPPORTED", False)
    monkeypatch.setattr(images, "IMAGE_FORMATS", tuple(f for f in IMAGE_FORMATS if f != "HEIF"))
    heic_header = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    with pytest.raises(ImageError, match=r"pip install 'pillow-heif>=[0-9.]+' \(phonesim's 'heif'"):
        images.load_image(heic_header)


def _within(seconds: float, call):
    """``call()``'s result or exception, or a failure when it is still waiting after
    ``seconds`` (a FIFO's read waits for a writer for ever)."""
    import threading

    box: dict = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_a_fifo_a_folder_or_an_empty_file_is_an_image_error_at_once(tmp_path):
    """A FIFO named in a CSV manifest hung export and duplicates for ever; a folder and an
    empty file had been "not a recognised image format"."""
    import contextlib
    import os

    from duplicates.inputs import read_image

    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "empty.jpg").write_bytes(b"")
    cases = {"pipe.jpg": "not a regular file", "folder.jpg": "is a folder", "empty.jpg": "empty"}
    try:
        for name, reason in cases.items():
            for read in (load_image, read_image):
                with pytest.raises(ImageError, match=f"{name}: .*{reason}"):
                    _within(5, lambda read=read, name=name: read(tmp_path / name))
    finally:  # a read still waiting on the FIFO ends with its writer (none waits: ENXIO)
        with contextlib.suppress(OSError):
            os.close(os.open(tmp_path / "pipe.jpg", os.O_WRONLY | os.O_NONBLOCK))


# An EXIF block (orientation 6) with corrupted bytes that Pillow opens and decodes, and whose
# transposition fails in the EXIF writer with struct.error (found by a fuzzing review).
CORRUPT_EXIF = bytes.fromhex(
    "4578696600004d4d002a0000000800030107000200000006000000320112000300000001000600008769"
    "000400000001fc000038000000004170706c6500000190030002000000140000004a0000000032303230"
    "0030313a30312030303a3030cc30307c"
)


def test_an_image_given_with_corrupt_exif_is_an_image_error():
    from embedder.images import caller_image

    buf = io.BytesIO()
    Image.new("RGB", (8, 4)).save(buf, "JPEG", exif=CORRUPT_EXIF)
    img = Image.open(io.BytesIO(buf.getvalue()))
    img.load()  # Pillow reads it
    with pytest.raises(ImageError, match="image: cannot decode image"):
        caller_image(img)


def test_the_machine_running_out_is_no_bad_image(tmp_path, monkeypatch):
    """MemoryError was "image too large to decode" and an EMFILE "cannot decode image": batch
    jobs recorded good photos as unreadable for good (a resumed export kept them failed)."""
    import errno

    from common.errors import OutOfResourcesError
    from embedder import images
    from embedder.errors import ImageError

    photo = tmp_path / "ok.jpg"
    Image.new("RGB", (16, 16)).save(photo)
    for failure in (MemoryError(), OSError(errno.EMFILE, "Too many open files")):

        def exhausted(fp, name, min_side, failure=failure):  # noqa: ANN001, ANN202
            raise failure

        monkeypatch.setattr(images, "_decode", exhausted)
        with pytest.raises(OutOfResourcesError, match="ran out of resources") as caught:
            images.load_image(photo)
        assert not isinstance(caught.value, ImageError) and caught.value.exit_code == 1
        monkeypatch.undo()

    def no_descriptor(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(images.os, "open", no_descriptor)
    with pytest.raises(OutOfResourcesError, match="cannot open it") as caught:
        images.load_image(photo)
    assert str(caught.value).count(str(photo)) == 1  # said once, not wrapped again
    monkeypatch.undo()
    with pytest.raises(ImageError, match="cannot decode image"):  # bad bytes stay bad input
        images.load_image(b"\xff\xd8\xff\xe0 truncated")
