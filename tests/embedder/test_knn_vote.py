import numpy as np
import pytest

from embedder.knn_vote import (
    UNKNOWN_CLASS,
    KnnFusion,
    fuse,
    fuse_with_neighbours,
    knn_vote,
    neighbour_arrays,
)


def test_vote_weights_closer_neighbours_more():
    scores = np.array([[0.9, 0.5, 0.5]])
    labels = np.array([[1, 0, 0]])
    vote = knn_vote(scores, labels, 3, temperature=0.1)
    # exp(0.4 / 0.1) = 54.6 against 2: the single close neighbour outvotes the two far ones.
    assert vote.argmax() == 1
    assert vote.sum() == pytest.approx(1.0)
    assert vote[0, 2] == 0.0


def test_unlabelled_neighbours_do_not_vote_and_empty_rows_keep_probabilities():
    probs = np.array([[0.6, 0.4], [0.2, 0.8]], dtype=np.float32)
    scores = np.array([[0.9, 0.8], [0.9, 0.8]])
    labels = np.array([[-1, 1], [-1, -1]])
    fused = fuse(probs, scores, labels, KnnFusion(k=2, weight=0.5))
    assert fused[0] == pytest.approx([0.3, 0.7])  # half the classifier, half a vote for class 1
    assert fused[1] == pytest.approx(probs[1])  # nobody voted: unchanged
    assert fused.sum(axis=1) == pytest.approx([1.0, 1.0])


def test_fusion_uses_only_the_first_k_neighbours():
    probs = np.full((1, 2), 0.5, dtype=np.float32)
    scores = np.array([[0.9, 0.8, 0.7]])
    labels = np.array([[0, 1, 1]])
    assert fuse(probs, scores, labels, KnnFusion(k=1, weight=1.0))[0] == pytest.approx([1, 0])
    assert fuse(probs, scores, labels, KnnFusion(k=3, weight=1.0))[0].argmax() == 0


@pytest.mark.parametrize(
    "kwargs", [{"k": 0}, {"temperature": 0.0}, {"weight": 1.5}, {"weight": -0.1}]
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        KnnFusion(**kwargs)


def test_small_temperature_does_not_overflow():
    vote = knn_vote(np.array([[1.0, -1.0]]), np.array([[0, 1]]), 2, temperature=1e-4)
    assert np.isfinite(vote).all() and vote[0, 0] == pytest.approx(1.0)


def test_neighbour_arrays_map_labels_to_classes_and_pad_short_lists():
    names = ["apple", "pixel"]
    neighbours = [[(0.9, "pixel"), (0.8, "nokia"), (0.7, None), (0.6, 3)], [(0.5, "apple")]]
    scores, labels = neighbour_arrays(neighbours, names, k=3)
    assert labels.tolist() == [[1, UNKNOWN_CLASS, -1], [0, -1, -1]]
    assert scores[0].tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert np.isneginf(scores[1, 1:]).all()
    fused = fuse(np.array([[1.0, 0.0], [0.0, 1.0]]), scores, labels, KnnFusion(k=3, weight=1.0))
    assert fused.argmax(1).tolist() == [1, 0]  # only the known labels voted for a class


def test_neighbours_of_a_class_the_checkpoint_does_not_know_leave_their_share_to_it():
    """A class renamed since training: the photo's near-copies, filed under the new name, did
    not vote, and farther photos of another class outvoted the classifier (53.9% for it)."""
    names = ["nova", "terra"]
    probabilities = np.array([[0.7, 0.3]])
    near = [(1.0, "kestrel"), (0.99, "kestrel"), (0.98, "kestrel")]  # "nova" renamed
    far = [(0.70, "terra"), (0.69, "terra")]
    scores, labels = neighbour_arrays([near + far], names, k=5)
    fused = fuse(probabilities, scores, labels, KnnFusion(k=5))
    assert fused.argmax(1).tolist() == [0]
    assert fused.sum() == pytest.approx(1.0)
    assert fused[0].tolist() == pytest.approx([0.7, 0.3], abs=1e-3)  # the unknown share: theirs
    only_unknown = neighbour_arrays([near], names, k=3)
    assert fuse(probabilities, *only_unknown, KnnFusion(k=3)) == pytest.approx(probabilities)
    blank = neighbour_arrays([[(1.0, " "), (0.7, "terra")]], names, k=2)
    assert blank[1].tolist() == [[-1, 1]]  # a blank label does not vote at all
    # Which predictions say they used the catalog: not one whose known share is ~1e-8.
    three = np.repeat(probabilities, 3, axis=0)
    _, voted = fuse_with_neighbours(three, [near + far, near, far], names, KnnFusion(k=5))
    assert voted.tolist() == [False, False, True]
