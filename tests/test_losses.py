"""Each loss against values computed by hand on a 3×3 example, and where its gradients flow."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stguide.contrastive.losses import LOSSES, get_loss
from stguide.errors import InputError

U = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
V = F.normalize(torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]]), dim=1)
SCALE = torch.tensor(2.0)  # 1/τ


def _np_softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _np_sce(logits, t):
    return float(-(t * np.log(_np_softmax(logits))).sum(1).mean())


def _by_hand(t):
    u, v = U.numpy().astype(float), V.numpy().astype(float)
    logits = 2.0 * u @ v.T
    return 0.5 * (_np_sce(logits, t) + _np_sce(logits.T, t.T))


def test_registry_has_the_five_losses():
    assert sorted(LOSSES) == ["bleep", "clip", "gene-soft", "inter-soft", "supcon"]


def test_clip():
    got = get_loss("clip")(U, V, SCALE)["contrastive_loss"].item()
    # by hand: logits = 2 U Vᵀ = [[1.6, 2, 0], [1.92, 1.2, 1.6], [1.2, 0, 2]]
    logits = np.array([[1.6, 2.0, 0.0], [1.92, 1.2, 1.6], [1.2, 0.0, 2.0]])
    row = -np.log(np.exp(np.diag(logits)) / np.exp(logits).sum(1))
    col = -np.log(np.exp(np.diag(logits)) / np.exp(logits).sum(0))
    assert got == pytest.approx(0.5 * (row.mean() + col.mean()), abs=1e-5)


def test_bleep_uses_tau_consistently():
    u, v = U.numpy().astype(float), V.numpy().astype(float)
    t = _np_softmax(((u @ u.T + v @ v.T) / 2) * 2.0)  # divided by τ, as the logits are
    got = get_loss("bleep")(U, V, SCALE)["contrastive_loss"].item()
    assert got == pytest.approx(_by_hand(t), abs=1e-5)


def test_gene_soft():
    z = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [0.0, 0.0, 1.0]])
    zn = z.numpy() / np.linalg.norm(z.numpy(), axis=1, keepdims=True)
    t = _np_softmax(zn @ zn.T / 0.1)
    got = get_loss("gene-soft", target_temperature=0.1)(U, V, SCALE, {"gene_latent": z})["contrastive_loss"].item()
    assert got == pytest.approx(_by_hand(t), abs=1e-5)


def test_inter_soft_and_alpha_zero_is_clip():
    u, v = U.numpy().astype(float), V.numpy().astype(float)
    t = 0.7 * np.eye(3) + 0.3 * _np_softmax(0.5 * (u @ v.T + v @ u.T) * 2.0)
    got = get_loss("inter-soft", alpha=0.3)(U, V, SCALE)["contrastive_loss"].item()
    assert got == pytest.approx(_by_hand(t), abs=1e-5)
    a0 = get_loss("inter-soft", alpha=0.0)(U, V, SCALE)["contrastive_loss"]
    assert a0.item() == pytest.approx(get_loss("clip")(U, V, SCALE)["contrastive_loss"].item(), abs=1e-6)


def test_supcon():
    y = torch.tensor([0, 0, -1])
    t = np.array([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1.0]])
    got = get_loss("supcon")(U, V, SCALE, {"labels": y})["contrastive_loss"].item()
    assert got == pytest.approx(_by_hand(t), abs=1e-5)


def _grads(loss, info=None, detach_targets_check=False):
    u = U.clone().requires_grad_(True)
    v = V.clone().requires_grad_(True)
    loss(u, v, SCALE, info)["contrastive_loss"].backward()
    return u.grad, v.grad


def test_inter_soft_targets_carry_no_gradient():
    """Stop-gradient: the gradient equals that of CE with the targets frozen as constants."""
    u = U.clone().requires_grad_(True)
    v = V.clone().requires_grad_(True)
    get_loss("inter-soft", alpha=0.5)(u, v, SCALE)["contrastive_loss"].backward()
    with torch.no_grad():
        t = 0.5 * torch.eye(3) + 0.5 * F.softmax(0.5 * (U @ V.T + V @ U.T) * SCALE, dim=1)
    u2 = U.clone().requires_grad_(True)
    v2 = V.clone().requires_grad_(True)
    logits = SCALE * u2 @ v2.T
    loss = 0.5 * (-(t * F.log_softmax(logits, 1)).sum(1).mean() - (t.T * F.log_softmax(logits.T, 1)).sum(1).mean())
    loss.backward()
    torch.testing.assert_close(u.grad, u2.grad)
    torch.testing.assert_close(v.grad, v2.grad)


def test_bleep_targets_get_gradient_unless_detached():
    g_live, _ = _grads(get_loss("bleep"))
    g_det, _ = _grads(get_loss("bleep", detach=True))
    assert not torch.allclose(g_live, g_det)


def test_gene_latent_gets_no_gradient():
    z = torch.randn(3, 4, requires_grad=True)
    u = U.clone().requires_grad_(True)
    get_loss("gene-soft")(u, V, SCALE, {"gene_latent": z})["contrastive_loss"].backward()
    assert u.grad is not None and z.grad is None


def test_bad_loss_name_and_options():
    with pytest.raises(InputError, match="unknown loss"):
        get_loss("infonce")
    with pytest.raises(InputError, match="bad options"):
        get_loss("clip", alpha=0.3)
