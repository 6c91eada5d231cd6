import numpy as np

from anounet_jax.data.embedded import DEFECTS, load_reference, load_test


def test_reference_set_works_for_any_count_per_class():
    for n in (1, 2, 4):
        ref = load_reference("brick", 32, n)
        assert ref.images.shape == (22 * n, 32, 32, 3)
        assert np.bincount(ref.labels).tolist() == [n] * 22


def test_planted_defects_have_masks_and_good_images_do_not():
    test = load_test("brick", 32, n_good=2, n_defect=len(DEFECTS))
    assert not test.masks[:2].any()
    assert all(m.sum() > 0 for m in test.masks[2:])
    assert "gravel" not in " ".join(test.ids)


def test_gravel_is_an_evaluation_category_and_never_a_reference_class():
    from anounet_jax.data.embedded import load_normal, load_reference, load_test

    test = load_test("gravel", 32, 2, 5)
    assert len(load_normal("gravel", 32, 4)) == 4 and test.masks[2:].any(axis=(1, 2)).all()
    for category in ("brick", "grass", "gravel"):
        ids = load_reference(category, 32, 1).ids
        assert not any("gravel" in i for i in ids)
