"""The default plus DKAN-style's head, on/off (``models/encoder_dkan.py``): DKAN-style's share
is chosen on the other C sections only, and A1 gets the share chosen on all of them.

Predictions and labels here are synthetic (random, named as such); nothing reads HER2ST.
"""

from __future__ import annotations

import numpy as np

from models import encoder_dkan as ed
from models import ensemble

SECTIONS = ("C2", "C3", "C4", "C5", "C6")


def _synthetic(seed: int) -> tuple[dict, dict, dict]:
    """Per section: labels, a base run that misses half of the signal and a DKAN head that
    carries that half (so a share above 0 helps on every section), and an A1 fold."""
    rng = np.random.default_rng(seed)
    labels, base, dkan = {}, {}, {}
    for k in (*SECTIONS, "A1"):
        a, b = rng.normal(size=(2, 60, 5))
        if k != "A1":
            labels[k] = 3.0 + a + b
        base[k] = 3.0 + a + 0.3 * rng.normal(size=(60, 5))
        dkan[k] = 3.0 + b + 0.3 * rng.normal(size=(60, 5))
    return labels, base, dkan


def test_each_c_section_gets_the_share_chosen_on_the_others_and_a1_the_share_on_all() -> None:
    labels, base, dkan = _synthetic(0)
    preds, shares = ed.mix_folds(base, dkan, labels)
    assert set(preds) == set(shares) == {*SECTIONS, "A1"}
    assert all(0.0 < shares[k] < 1.0 for k in shares)  # both halves of the signal are needed
    assert shares["A1"] == ensemble.choose_weight(
        {k: base[k] for k in SECTIONS}, {k: dkan[k] for k in SECTIONS}, labels
    )
    for k in (*SECTIONS, "A1"):
        np.testing.assert_array_equal(preds[k], ensemble.combine(base[k], dkan[k], shares[k]))


def test_a_sections_own_labels_never_choose_its_share() -> None:
    labels, base, dkan = _synthetic(1)
    _, shares = ed.mix_folds(base, dkan, labels)
    # C4's labels replaced by DKAN's head alone (they would choose share 1 if read)
    poisoned = {**labels, "C4": dkan["C4"].copy()}
    _, again = ed.mix_folds(base, dkan, poisoned)
    assert again["C4"] == shares["C4"]
    assert again["A1"] != shares["A1"] or again["C2"] != shares["C2"]  # the others read C4
