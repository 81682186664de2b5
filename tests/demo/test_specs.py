"""The made-up phone models: seeded, distinct, frozen."""

from __future__ import annotations

import itertools

import pytest

from demo.specs import CLASS_NAMES, PhoneSpec, make_specs, slugify


def test_specs_deterministic_and_distinct() -> None:
    assert make_specs(8, seed=5) == make_specs(8, seed=5)
    assert make_specs(8, seed=5) != make_specs(8, seed=6)
    for seed in range(5):
        specs = make_specs(8, seed)
        assert len({s.slug for s in specs}) == len({s.name for s in specs}) == 8
        for a, b in itertools.combinations(specs, 2):
            assert a.differences(b) >= 3, (a.slug, b.slug)
        # The defining features are spread over the classes, not all alike.
        assert len({s.camera_shape for s in specs}) == 4
        assert len({s.lens_count for s in specs}) >= 3
        assert len({s.cutout for s in specs}) >= 3

    every = make_specs(len(CLASS_NAMES), seed=0)
    assert {s.name for s in every} == set(CLASS_NAMES)
    assert min(a.differences(b) for a, b in itertools.combinations(every, 2)) >= 2


def test_spec_is_frozen_and_names_slug() -> None:
    spec = make_specs(2)[0]
    assert isinstance(spec, PhoneSpec)
    with pytest.raises(AttributeError):
        spec.lens_count = 9  # type: ignore[misc]
    assert slugify("Nova X2") == "nova-x2"
    assert all(slugify(n) == n.lower().replace(" ", "-") for n in CLASS_NAMES)
