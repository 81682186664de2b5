import pytest
from PIL import Image

from embedder.data import Sample, load_catalog, shared_images
from embedder.errors import DataError


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)


def test_folder_catalog(tmp_path):
    for label in ("b", "a"):
        for i in range(2):
            _img(tmp_path / label / f"{i}.jpg")
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    cat = load_catalog(tmp_path)
    assert cat.label_names == ["a", "b"]
    assert [s.id for s in cat.samples] == ["a/0", "a/1", "b/0", "b/1"]


def test_a_broken_link_in_a_folder_is_an_unreadable_image_saying_where_it_points(tmp_path):
    """It was skipped without a word, then with a warning alone: left out of the unreadable
    images that a training counts and embed and export list in ``failed``, where a catalog
    CSV row naming a missing file is one of them."""
    from embedder.errors import ImageError
    from embedder.images import load_image

    _img(tmp_path / "a" / "0.jpg")
    _img(tmp_path / "b" / "0.jpg")
    (tmp_path / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    samples = load_catalog(tmp_path).samples
    assert [s.id for s in samples] == ["a/0", "a/gone", "b/0"]
    with pytest.raises(ImageError, match="gone.jpg: a link to .*nowhere.jpg, which does not exist"):
        load_image(samples[1].path)


def test_a_link_that_loops_is_skipped_with_a_warning_and_training_reads_on(tmp_path, caplog):
    """Taken as a broken link, a loop reached the training split's resolve(), which raised
    RuntimeError: `train --data` died in a traceback."""
    from embedder.train_data import is_readable, stratified_split

    for label in ("a", "b"):
        for i in range(3):
            _img(tmp_path / label / f"{i}.jpg")
    (tmp_path / "a" / "loop.jpg").symlink_to(tmp_path / "a" / "loop.jpg")
    samples = load_catalog(tmp_path).samples
    assert "a/loop" not in [s.id for s in samples]
    assert "loop.jpg: skipped, a link that loops" in caplog.text
    train, val = stratified_split(samples, 0.3, 0, readable=is_readable)
    assert len(train) + len(val) == 6


def test_linked_folders_are_named_and_odd_names_are_counted(tmp_path, caplog):
    """A linked subfolder was passed over without a word (as were .jfif and .jpe photos, and
    photos saved without a suffix). It is still not followed, as a link back into the catalog
    would read its photos twice under another label, but a warning names it; a class folder
    that is a link is read, as before."""
    from duplicates.inputs import list_images

    photos = tmp_path / "photos"
    for name in ("a/0.jpg", "elsewhere/1.jpg"):
        _img(photos / name)
    for name in ("a/2.jfif", "a/3.JPE"):
        _jpeg(photos / name)
    _img(photos / "a" / ".cache" / "hidden.jpg")
    (photos / "a" / "noext").write_bytes((photos / "a" / "0.jpg").read_bytes())
    for other in ("README.md", "LICENSE", "spec.pdf"):  # not photos: not warned of
        (photos / "a" / other).write_text("text")
    (photos / "a" / "more").symlink_to(photos / "elsewhere")
    data = tmp_path / "data"
    (data / "a").parent.mkdir()
    (data / "a").symlink_to(photos / "a")  # a class folder that is a link: read
    _img(data / "c" / "0.jpg")
    (data / "c" / "up").symlink_to(data)  # would read a's photos as c's
    ids = [(s.id, s.label) for s in load_catalog(data).samples]
    assert ids == [("a/0", "a"), ("a/2", "a"), ("a/3", "a"), ("c/0", "c")]
    assert "1 linked folder(s) not followed, such as 'more'" in caplog.text
    assert "1 linked folder(s) not followed, such as 'up'" in caplog.text
    assert "1 file(s) skipped, not images by name (such as 'noext'" in caplog.text
    assert "README" not in caplog.text and "LICENSE" not in caplog.text
    assert [s.id for s in list_images(photos / "a")] == ["0", "2", "3"]


def _jpeg(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path, format="JPEG")


def test_manifest_catalog_keeps_metadata_and_resolves_paths(tmp_path):
    _img(tmp_path / "imgs" / "x.png")
    _img(tmp_path / "imgs" / "y.png")
    (tmp_path / "m.csv").write_text(
        "id,image,label,brand\nsku1,imgs/x.png,p1,Acme\nsku2,imgs/y.png,p2,Zed\n"
    )
    cat = load_catalog(tmp_path / "m.csv")
    assert [s.id for s in cat.samples] == ["sku1", "sku2"]
    assert cat.samples[0].path == tmp_path / "imgs" / "x.png"
    assert cat.samples[1].metadata["brand"] == "Zed"


def test_flat_folder_only_without_labels(tmp_path):
    _img(tmp_path / "x.jpg")
    with pytest.raises(DataError, match="no class folders"):
        load_catalog(tmp_path)
    assert [s.label for s in load_catalog(tmp_path, require_labels=False).samples] == [""]


def test_images_beside_class_folders_are_never_dropped(tmp_path):
    """Training refuses them (they have no class); embedding, export and index read them
    unlabelled, as the duplicate finder does; an empty subfolder is nothing to read."""
    for name in ("top-1.jpg", "top-2.jpg", "a/1.jpg", "a/deep/2.jpg", "b/1.jpg"):
        _img(tmp_path / name)
    (tmp_path / "thumbs").mkdir()
    with pytest.raises(DataError, match="2 image\\(s\\) beside the class folders .*'top-1.jpg'"):
        load_catalog(tmp_path)
    samples = load_catalog(tmp_path, require_labels=False).samples
    assert [(s.id, s.label) for s in samples] == [
        ("top-1", ""),
        ("top-2", ""),
        ("a/1", "a"),
        ("a/deep/2", "a"),
        ("b/1", "b"),
    ]
    only_empty = tmp_path / "only-empty"
    (only_empty / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_catalog(only_empty, require_labels=False)
    not_images = tmp_path / "not-images"
    not_images.mkdir()
    (not_images / "a.txt").write_text("x")  # it said "no class folders found"
    with pytest.raises(DataError, match=r"no images in it \(an image's name ends in"):
        load_catalog(not_images, require_labels=False)


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "no class folders"),
        (lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")), "no class folders"),
        (lambda p: ((p / "a").mkdir(parents=True), _img(p / "b" / "1.jpg")), "has no images"),
        (lambda p: _img(p / "only" / "1.jpg"), "at least 2"),
    ],
)
def test_bad_folders(tmp_path, setup, message):
    target = tmp_path / "data"
    setup(target)
    with pytest.raises(DataError, match=message):
        load_catalog(target)


@pytest.mark.parametrize(
    "text,message",
    [
        ("id,label\n1,a\n", "missing column"),
        ("id,image,label\n1,x.jpg,a\n1,y.jpg,b\n", "duplicate id"),
        ("id,image,label\n1,x.jpg,\n", "empty label"),
        ("id,image,label\n", "no images"),
        ("id,image,label\n1,x\0.jpg,a\n", "NUL or line break"),
        ("id,image,label,price,price\n1,x.jpg,a,100,\n", "'price' appear twice"),
        ("id,image,label\n1,x.jpg,a,extra\n", "more fields than the header"),
        ("id,image,label,,\n1,x.jpg,a,,\n1,y.jpg,a,,\n", "duplicate id"),  # blank names pass
        ("id,image,label,,\n1,x.jpg,a,note,\n", "column without a name"),  # not their values
    ],
)
def test_bad_manifests(tmp_path, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        load_catalog(tmp_path / "m.csv")


def test_non_utf8_manifest(tmp_path):
    (tmp_path / "m.csv").write_bytes(b"id,image,label\n\xff\xfe,x,y\n")
    with pytest.raises(DataError, match="UTF-8"):
        load_catalog(tmp_path / "m.csv")


def test_files_differing_only_by_suffix_keep_distinct_ids(tmp_path):
    from duplicates.inputs import list_images

    for name in ("a/x.jpg", "a/x.png", "a/y.jpg", "b/x.jpg"):
        _img(tmp_path / name)
    ids = [s.id for s in load_catalog(tmp_path).samples]
    assert ids == ["a/x.jpg", "a/x.png", "a/y", "b/x"]
    assert [s.id for s in list_images(tmp_path)] == ids


def test_files_whose_id_would_be_another_url_keep_their_suffix(tmp_path):
    """/v1/items/xiaomi/image is the thumbnail of item "xiaomi": a photo image.jpg in the
    class folder xiaomi was id "xiaomi/image", which the server could not show, change or
    remove."""
    for name in ("xiaomi/image.jpg", "xiaomi/similar.png", "xiaomi/mi 9.jpg", "honor/x.jpg"):
        _img(tmp_path / name)
    ids = [s.id for s in load_catalog(tmp_path).samples]
    assert ids == ["honor/x", "xiaomi/image.jpg", "xiaomi/mi 9", "xiaomi/similar.png"]
    _img(tmp_path / "flat" / "batch.jpg")
    _img(tmp_path / "flat" / "other.jpg")
    ids = [s.id for s in load_catalog(tmp_path / "flat", require_labels=False).samples]
    assert ids == ["batch.jpg", "other"]


def test_evaluation_data_may_hold_one_class(tmp_path):
    _img(tmp_path / "only" / "1.jpg")
    assert load_catalog(tmp_path, min_classes=1).label_names == ["only"]


def test_ids_that_would_still_clash_are_refused(tmp_path):
    for name in ("a/x.jpg", "a/x.png", "a/x.jpg.png", "b/y.jpg"):
        _img(tmp_path / name)
    with pytest.raises(DataError, match="would get the id 'a/x.jpg'"):
        load_catalog(tmp_path)


def test_file_names_that_are_not_utf8_are_left_out_with_a_warning(tmp_path, caplog):
    """Such a name (bytes written on another system) can be neither an id nor a line of a
    report: embed, export and duplicates failed at their end with a UnicodeEncodeError."""
    import os

    from duplicates.inputs import list_images

    for label in ("a", "b"):
        _img(tmp_path / label / "ok.jpg")
    bad = os.fsdecode(os.fsencode(str(tmp_path / "a")) + b"/caf\xe9.jpg")  # Latin-1 "café"
    Image.new("RGB", (8, 8)).save(bad, format="JPEG")
    for samples in (load_catalog(tmp_path).samples, list_images(tmp_path)):
        assert [s.id for s in samples] == ["a/ok", "b/ok"]
    assert "not UTF-8 text (" in caplog.text and "caf\\xe9.jpg" in caplog.text
    flat = tmp_path / "a"
    assert [s.id for s in load_catalog(flat, require_labels=False).samples] == ["ok"]


def test_unlabelled_reading_needs_no_label_column(tmp_path):
    _img(tmp_path / "x.jpg")
    (tmp_path / "m.csv").write_text("id,image\nsku1,x.jpg\n")
    assert [s.label for s in load_catalog(tmp_path / "m.csv", require_labels=False).samples] == [""]
    with pytest.raises(DataError, match="missing column"):
        load_catalog(tmp_path / "m.csv")  # training reads labels


def test_shared_images_are_the_same_files_or_byte_identical_copies(tmp_path):
    """A copied folder is found as well as the folder itself; equal sizes alone are not."""
    import os

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "same.jpg").write_bytes(b"photo one")
    (a / "copied.jpg").write_bytes(b"photo two")
    (b / "renamed.jpg").write_bytes(b"photo two")
    (a / "other.jpg").write_bytes(b"photo 333")  # the size of a gallery file, other bytes
    (b / "sized.jpg").write_bytes(b"photo 444")
    (a / "gone.jpg").write_bytes(b"photo 555")
    (b / "gone.jpg").write_bytes(b"photo 555")
    ours = [Sample(p.stem, p, "x") for p in sorted(a.iterdir())]
    theirs = [Sample("s", a / "same.jpg", "x")]
    theirs += [Sample(p.stem, p, "x") for p in sorted(b.iterdir())]
    (b / "gone.jpg").chmod(0)  # unreadable (unless root): never an error, only not shared
    shared = shared_images(ours, theirs)
    expected = {a / "same.jpg", a / "copied.jpg"}
    assert expected <= shared <= expected | {a / "gone.jpg"}
    assert shared_images(ours, []) == set()
    os.mkfifo(a / "pipe.jpg")  # size 0, as an empty file: reading it waited for ever
    (b / "empty.jpg").write_bytes(b"")
    fifo = [Sample("p", a / "pipe.jpg", "x")]
    assert shared_images(fifo, [Sample("e", b / "empty.jpg", "x")]) == set()


def test_a_manifest_quote_never_closed_is_refused_with_its_line(tmp_path):
    """The rows after it had become one title: "embedded 1 images (0 failed)" of three."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text('id,image,label,title\na1,a.jpg,x,"Phone\na2,a.jpg,x,ok\n')
    with pytest.raises(DataError, match=r"m.csv: malformed CSV \(a quote .* after line 1 is never"):
        load_catalog(manifest, require_labels=False)


def _photos(folder, *names):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (len(name) * 9 % 255, 0, 0)).save(folder / name, "JPEG")


def test_a_folder_that_cannot_be_read_is_named(tmp_path, caplog, monkeypatch):
    """os.walk passed over it without a word: its photos were just missing from the run (a
    class of them was "has no images")."""
    import os

    _photos(tmp_path, "a/1.jpg", "a/sub/2.jpg", "b/3.jpg")
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("sub"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    catalog = load_catalog(tmp_path, require_labels=False)
    assert sorted(s.id for s in catalog.samples) == ["a/1", "b/3"]
    assert "1 folder(s) could not be read and were skipped, such as" in caplog.text
    assert "sub: Permission denied" in caplog.text


def test_class_folder_links_back_into_or_above_the_catalog_are_skipped(tmp_path, caplog):
    """A link to "." read every photo again under its name, one to ".." the whole parent
    folder, and one to "/" walked the file system."""
    root = tmp_path / "data"
    _photos(root, "a/1.jpg", "b/2.jpg")
    _photos(tmp_path, "elsewhere/3.jpg", "other/4.jpg")
    (root / "self").symlink_to(".")
    (root / "up").symlink_to("..")
    (root / "again").symlink_to(root / "a")
    (root / "linked").symlink_to(tmp_path / "elsewhere")  # a class folder kept elsewhere
    _photos(root, ".store/c/5.jpg")  # hidden, so never read but through a link
    (root / "c").symlink_to(root / ".store" / "c")
    catalog = load_catalog(root, require_labels=False)
    assert sorted(s.id for s in catalog.samples) == ["a/1", "b/2", "c/5", "linked/3"]
    for name in ("self", "up", "again"):
        assert f"{root / name}: skipped, a link to" in caplog.text
    assert "linked: skipped" not in caplog.text and f"{root / 'c'}: skipped" not in caplog.text


def test_files_beside_the_class_folders_are_reported_as_a_class_folders_are(tmp_path, caplog):
    """A photo saved without a suffix, or a FIFO named as a photo, at the top of a flat
    folder was skipped silently (inside a class folder they were warned of)."""
    import os

    _photos(tmp_path, "1.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "noext", "JPEG")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "README.txt").write_text("not a photo")
    catalog = load_catalog(tmp_path, require_labels=False)
    assert [s.id for s in catalog.samples] == ["1"]
    assert "1 file(s) skipped, not images by name (such as 'noext'" in caplog.text
    assert "1 photo name(s) that are not regular files" in caplog.text
    assert "README" not in caplog.text  # other files only in the debug log


def test_image_names_that_cannot_be_item_ids_are_named_before_the_embedding(tmp_path, caplog):
    """`index build` refused them after the whole run, and named only the first."""
    _photos(tmp_path, " lead.jpg", "ok.jpg", "bidi\u202e.jpg")
    catalog = load_catalog(tmp_path, require_labels=False)
    assert len(catalog.samples) == 3  # embed and export still read them
    assert "2 image name(s) cannot be catalog item ids (' lead.jpg', 'bidi" in caplog.text


def test_manifest_ids_that_cannot_be_item_ids_are_named_before_the_embedding(tmp_path, caplog):
    """`export` wrote ids such as "batch", "a/../b" or a 5,000-byte one with exit 0, and
    `index build` then refused the file (docs: it "accepts the file as it is")."""
    _photos(tmp_path, "1.jpg")
    rows = ["batch", "a/../b", "x" * 1500, "fine/id"]
    (tmp_path / "m.csv").write_text(
        "id,image\n" + "".join(f"{i},1.jpg\n" for i in rows), encoding="utf-8"
    )
    catalog = load_catalog(tmp_path / "m.csv", require_labels=False)
    assert [s.id for s in catalog.samples] == rows  # embed and export still read them
    assert "3 id(s) cannot be catalog item ids ('batch', 'a/../b', 'xxxx" in caplog.text
    assert "at most 1024 bytes" in caplog.text and "change them in the CSV" in caplog.text
    assert "fine/id" not in caplog.text


def test_image_urls_in_a_manifest_are_named_as_not_fetched(tmp_path, caplog):
    """Each failed as "<folder>/https:/cdn...: file not found", the URL mangled, no hint."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image\na,https://cdn.example.com/a.jpg\nb,s3://bucket/b.jpg\n")
    assert len(load_catalog(manifest, require_labels=False).samples) == 2
    assert "2 image(s) are URLs (such as 'https://cdn.example.com/a.jpg')" in caplog.text


def _class_folders(root, names, files=("a.jpg", "b.jpg")):
    for shade, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i, file in enumerate(files):
            Image.new("RGB", (8, 8), (shade * 40, i * 90, 0)).save(root / name / file)
    return root


def test_names_macos_writes_decomposed_read_as_typed(tmp_path):
    """A catalog made on macOS (NFD file names) had its classes and ids differ from the same
    names typed or copied elsewhere (NFC): evaluating it said "classes the checkpoint does not
    know: Café", and `index remove --id Café/...` found nothing."""
    import unicodedata

    def form(kind, text):
        return unicodedata.normalize(kind, text)

    typed = load_catalog(_class_folders(tmp_path / "typed", ["Café", "Zoë"], ["é.jpg"]))
    mac_names = [form("NFD", "Café"), form("NFD", "Zoë")]
    mac = _class_folders(tmp_path / "mac", mac_names, [form("NFD", "é.jpg")])
    made_on_mac = load_catalog(mac)
    assert made_on_mac.label_names == typed.label_names == [form("NFC", "Café"), "Zoë"]
    assert [s.id for s in made_on_mac.samples] == [s.id for s in typed.samples]
    assert made_on_mac.samples[0].id == form("NFC", "Café/é")


def test_one_class_in_two_unicode_forms_is_one_class_and_said(tmp_path, caplog):
    import unicodedata

    names = [unicodedata.normalize(kind, "Café") for kind in ("NFC", "NFD")]
    root = tmp_path / "cat"
    _class_folders(root, [names[0]], ["a.jpg"])
    _class_folders(root, [names[1], "Other"], ["b.jpg"])
    catalog = load_catalog(root)
    assert catalog.label_names == [names[0], "Other"]
    assert sum(s.label == names[0] for s in catalog.samples) == 2
    assert "appear twice, written in two Unicode forms" in caplog.text
    # The same photo name in both: one id for two files, refused saying why they look alike.
    same = tmp_path / "same"
    _class_folders(same, [names[0]], ["a.jpg"])
    _class_folders(same, [names[1], "Other"], ["a.jpg"])
    with pytest.raises(DataError, match="two images would get the id .*differ only in Unicode"):
        load_catalog(same)


def test_class_names_that_only_look_alike_are_warned_of(tmp_path, caplog):
    """ "Apple" and "apple", a trailing no-break space, a zero-width character: four classes
    that read as one had trained without a word."""
    names = ["Apple", "apple", "Xiaomi", "Xiaomi\u00a0", "Xiao\u200bmi", "Samsung"]
    catalog = load_catalog(_class_folders(tmp_path / "cat", names))
    assert len(catalog.label_names) == 6  # still the classes the folders name
    warned = [r.getMessage() for r in caplog.records if "look alike" in r.getMessage()]
    assert len(warned) == 1 and "2 set(s)" in warned[0]
    assert "'Apple' / 'apple'" in warned[0] and "Samsung" not in warned[0]
    caplog.clear()
    load_catalog(_class_folders(tmp_path / "plain", ["Apple", "Samsung"]))
    assert "look alike" not in caplog.text


def test_a_manifest_saved_with_semicolons_or_in_latin1_says_how_to_save_it(tmp_path):
    semi = tmp_path / "semi.csv"
    semi.write_text("id;image;label\na;x.jpg;b\n")
    with pytest.raises(DataError, match="semicolon-separated.*'CSV UTF-8 \\(comma delimited\\)'"):
        load_catalog(semi)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,image,label\na,caf\u00e9.jpg,b\n".encode("cp1252"))
    with pytest.raises(DataError, match="not UTF-8 text \\(line 2, .*Windows-1252"):
        load_catalog(latin)
