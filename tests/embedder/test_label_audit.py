"""The label audit file: parsed into per-photo masks, refused when it does not fit the data."""

from __future__ import annotations

import pytest

from embedder.label_audit import AuditError, load_label_audit

IDS = ["a/p1", "a/p2", "b/p3", "b/p4", "c/p5"]
LABELS = ["a", "a", "b", "b", "c"]
HEADER = "photo,filed,verdict,shows\n"


def write(tmp_path, rows: str, header: str = HEADER):
    path = tmp_path / "audit.csv"
    path.write_text(header + rows, encoding="utf-8")
    return path


def test_verdicts_become_masks_in_photo_order(tmp_path):
    path = write(
        tmp_path,
        'a/p2,a,other_brand,"a Realme phone, logo visible"\n'
        "b/p3,b,device,a watch\n"
        "c/p5,c,not_product,a logo\n"
        "b/p4,b,ok,the filed brand\n",
    )
    audit = load_label_audit(path, IDS, LABELS)
    assert audit.audited.tolist() == [False, True, True, True, True]
    assert audit.wrong_label.tolist() == [False, True, False, False, True]
    assert audit.not_phone.tolist() == [False, False, True, False, False]
    # Photos never audited stay in both views; a watch leaves only the phones view.
    assert audit.kept.tolist() == [True, False, True, True, False]
    assert audit.phones.tolist() == [True, False, False, True, False]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("a/p1,a,mislabelled,x\n", "unknown verdict 'mislabelled'"),
        ("z/p9,a,ok,x\n", "no photo 'z/p9'"),
        ("a/p1,b,ok,x\n", "filed under 'a', the audit says 'b'"),
        ("a/p1,a,ok,x\na/p1,a,device,x\n", "audited twice"),
    ],
)
def test_an_audit_of_another_dataset_is_refused_with_its_line(tmp_path, rows, message):
    with pytest.raises(AuditError, match=message):
        load_label_audit(write(tmp_path, rows), IDS, LABELS)


def test_a_file_without_the_header_is_refused(tmp_path):
    with pytest.raises(AuditError, match="header must be photo,filed,verdict,shows"):
        load_label_audit(write(tmp_path, "a/p1,a,ok,x\n", header=""), IDS, LABELS)
