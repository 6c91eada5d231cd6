"""The f-Net's flaw head (fnet.synthetic_flaws) and Ano-Unet's flaw term (fit.flaw_beta)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anounet_jax.config import TINY
from anounet_jax.data.types import ImageSet
from anounet_jax.engine.fit import Engine
from anounet_jax.errors import AnoUnetError
from anounet_jax.fnet.flaw_head import flaw_loss
from anounet_jax.fnet.local import cell_centers
from anounet_jax.fnet.train import train_fnet
from tests.conftest import stripes, tiny_fit

SIZE = TINY.image_size
FLAWED = TINY.replace(fnet={"synthetic_flaws": True, "epochs": 12, "lr": 3e-3})


def _smoothed(x, box=(slice(8, 22), slice(8, 22))):
    """A missing detail: the stripes inside `box` replaced by their mean colour."""
    x = x.copy()
    x[:, box[0], box[1]] = x[:, box[0], box[1]].mean((1, 2), keepdims=True)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[box] = True
    return x, mask


@pytest.fixture(scope="module")
def flawed_trained(tiny_data):
    normal = ImageSet(stripes(96), labels=np.zeros(96, np.int64))
    return train_fnet(FLAWED.fnet, normal, tiny_data["reference"], seed=0, progress=False)


def test_the_flaw_head_is_kept_and_sees_a_smoothed_patch(flawed_trained):
    """Trained on normal images damaged by fnet/irregularities.py, the head's logits are higher on a
    smoothed patch (a test defect it never saw) than on the normal stripes around it."""
    head = flawed_trained.flaw_head
    assert head is not None and head.params["kernel"].shape[-1] == 1
    x, mask = _smoothed(stripes(8, seed=3), (slice(4, 26), slice(4, 26)))
    logits = head.logits(flawed_trained.fnet.variables, x)
    centers = cell_centers(SIZE, 8).astype(int)  # the pixel each stride-8 cell is centred on
    cell = mask[np.ix_(centers, centers)]
    assert 0 < cell.sum() < cell.size
    assert logits[:, cell].mean() > logits[:, ~cell].mean() + 0.5
    pixels = head.pixel_maps(flawed_trained.fnet.variables, x)  # the same, on the pixels
    assert pixels.shape == x.shape[:3] and pixels[:, mask].mean() > pixels[:, ~mask].mean() + 0.5
    # untrained f-Nets and ones trained without flaws have no head
    assert train_fnet(dataclasses.replace(TINY.fnet, epochs=0),
                      ImageSet(stripes(8)), ImageSet(stripes(4, 1)), progress=False).flaw_head is None


def test_the_flaw_term_rewrites_what_the_head_flags(flawed_trained):
    """With the flaw term, the fit leaves less flaw in G(x) (by the head) and more residual in the
    smoothed patch, relative to the background, than the same fit without it (same seeds)."""
    x, mask = _smoothed(stripes(4, seed=7))
    kw = dict(formulation="loop")
    fit = dict(steps=20, beta=0.0)
    with_term = Engine.for_trained(FLAWED.replace(fit={**fit, "flaw_beta": 1.0}), flawed_trained, **kw).fit(x, seed=1)
    without = Engine.for_trained(FLAWED.replace(fit=fit), flawed_trained, **kw).fit(x, seed=1)
    head = flawed_trained.flaw_head
    left = [float(jnp.mean(flaw_loss(jnp.asarray(head.logits(flawed_trained.fnet.variables, r.recon)))))
            for r in (with_term, without)]
    assert left[0] < left[1]

    def contrast(r):
        return r.heatmap[:, mask].mean() / r.heatmap[:, ~mask].mean()

    assert contrast(with_term) > 1.2 * contrast(without)


def test_the_flaw_term_keeps_images_independent(flawed_trained):
    x, _ = _smoothed(stripes(4, seed=9))
    p = FLAWED.replace(fit={"steps": 4, "flaw_beta": 1.0})
    together = Engine.for_trained(p, flawed_trained, formulation="loop").fit(x, seed=2)
    two = Engine.for_trained(p, flawed_trained, formulation="loop", chunk_size=2).fit(x, seed=2)
    np.testing.assert_allclose(two.recon, together.recon, atol=1e-5)
    alone = Engine.for_trained(p, flawed_trained, formulation="loop").fit_chunk(x[2:3], np.array([2]), 2)
    np.testing.assert_allclose(alone.recon[0], together.recon[2], atol=1e-5)


def test_a_flaw_weight_without_a_head_is_a_clear_error(tiny_trained):
    with pytest.raises(AnoUnetError, match="synthetic_flaws"):
        Engine(TINY.unet, tiny_fit(flaw_beta=1.0), tiny_trained.fnet, tiny_trained.center, formulation="loop")
    with pytest.raises(AnoUnetError, match="synthetic_flaws"):
        Engine.for_trained(TINY.replace(fit={"flaw_beta": 1.0}), tiny_trained, formulation="loop")


def test_the_flaw_head_round_trips_through_a_checkpoint(tmp_path, flawed_trained):
    """`anounet train-fnet` stores the head (fingerprinted); a score job's engine fits with it exactly
    as the in-process one does."""
    from anounet_jax.checkpoint import fingerprint, load_checkpoint, save_checkpoint
    from anounet_jax.fnet.scores import make_scorer

    t = flawed_trained
    p = FLAWED.replace(fit={"steps": 3, "flaw_beta": 1.0})
    scorer = make_scorer("l2").fit(t.train_features)
    digest = save_checkpoint(tmp_path / "ck", p, t.fnet, t.center, scorer, flaw_head=t.flaw_head)
    assert digest != fingerprint(t.fnet, t.center, scorer)
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.flaw_head.layer == t.flaw_head.layer
    jax.tree.map(np.testing.assert_array_equal, ck.flaw_head.params, dataclasses.asdict(t.flaw_head)["params"])
    x, _ = _smoothed(stripes(2, seed=4))
    a = Engine.for_trained(p, ck.trained, formulation="loop").fit(x, seed=1)
    b = Engine.for_trained(p, t, formulation="loop").fit(x, seed=1)
    np.testing.assert_array_equal(a.heatmap, b.heatmap)
