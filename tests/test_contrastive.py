"""Stage 2: image encoders and weight sources, exact resume, DDP gathering, the obsm API, and bad input."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stguide.contrastive import ContrastiveConfig, build_image_encoder, fit_image_encoder, train_contrastive
from stguide.contrastive.heads import ProjectionHead
from stguide.data.patches import PatchConfig, extract_patches
from stguide.errors import InputError
from stguide.genes import get_encoder

TINY = dict(backbone="resnet10t", epochs=2, batch_size=16, embed_dim=16)


@pytest.fixture(scope="module")
def tiny(synthetic, tmp_path_factory):
    store = extract_patches(synthetic, PatchConfig(100, 32), tmp_path_factory.mktemp("p"), progress=False)
    train = synthetic[synthetic.obs["patient"] != "P3"].copy()
    return synthetic, train, store


def test_effnet_lite0_imagenet_weights_see_a_cat():
    from PIL import Image
    from skimage import data

    model, transform = build_image_encoder("tf_efficientnet_lite0", "effnet-lite0", num_classes=1000)
    model.eval()
    with torch.no_grad():
        logits = model(transform(Image.fromarray(data.chelsea()).resize((224, 224)))[None])
    assert int(logits.argmax()) in range(281, 286)  # ImageNet's cat classes (tabby … Egyptian cat)
    x = transform(np.zeros((8, 8, 3), np.uint8))
    assert torch.allclose(x, torch.full_like(x, -1.0))  # inputs scaled to [-1, 1]


def test_unknown_backbone():
    with pytest.raises(InputError, match="unknown backbone"):
        build_image_encoder("resnet19")


def test_weights_file_must_fit_the_backbone(tmp_path):
    m18, _ = build_image_encoder("resnet18")
    torch.save(m18.state_dict(), tmp_path / "r18.pt")
    m, _ = build_image_encoder("resnet18", f"file:{tmp_path / 'r18.pt'}")
    assert torch.equal(m.state_dict()["conv1.weight"], m18.state_dict()["conv1.weight"])
    with pytest.raises(InputError, match="do not fit"):
        build_image_encoder("resnet50", f"file:{tmp_path / 'r18.pt'}")


def test_pickled_objects_are_never_loaded(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"x": Evil()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=True)
    with pytest.raises(InputError, match="cannot be loaded as plain weights"):
        build_image_encoder("resnet18", f"file:{tmp_path / 'evil.pt'}")
    assert not (tmp_path / "pwned").exists()


def test_embedding_size_mismatch():
    head = ProjectionHead(10, 16)
    with pytest.raises(InputError, match="expects inputs of size 10, got 12"):
        head(torch.zeros(2, 12))


def _weights(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_resume_reaches_the_same_weights(tiny, tmp_path):
    _, train, store = tiny
    z = np.random.default_rng(0).normal(size=(train.n_obs, 6)).astype(np.float32)
    names = list(train.obs_names)
    full, _ = train_contrastive(ContrastiveConfig(**TINY), store, names, z, None, tmp_path / "a", progress=False)
    cut = ContrastiveConfig(**TINY, trainer_kwargs={"max_epochs": 1})
    train_contrastive(cut, store, names, z, None, tmp_path / "b", progress=False)  # "interrupted" after epoch 1
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()
    resumed, _ = train_contrastive(ContrastiveConfig(**TINY), store, names, z, None, tmp_path / "b", resume=True, progress=False)
    wa, wb = _weights(full), _weights(resumed)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], msg=k)
    again, _ = train_contrastive(ContrastiveConfig(**TINY), store, names, z, None, tmp_path / "c", progress=False)
    for k, v in _weights(again).items():
        torch.testing.assert_close(v, wa[k])  # same seed, same weights


def test_frozen_backbone_trains_heads_only(tiny, tmp_path):
    """Every backbone tensor (weights and BatchNorm statistics) is bit-identical after training; the heads moved."""
    from stguide.contrastive.train import build_module

    _, train, store = tiny
    z = np.random.default_rng(0).normal(size=(train.n_obs, 6)).astype(np.float32)
    cfg = ContrastiveConfig(**{**TINY, "epochs": 2}, freeze_backbone=True)
    import lightning as L

    L.seed_everything(cfg.seed, verbose=False)
    untrained, _ = build_module(cfg, store, z.shape[1])  # what training starts from (same seed, same init)
    before, heads_before = _weights(untrained.backbone), _weights(untrained.image_head)
    m, _ = train_contrastive(cfg, store, list(train.obs_names), z, None, tmp_path, progress=False)
    after = _weights(m.backbone)
    assert before.keys() == after.keys() and any("running_mean" in k for k in after)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert any(not torch.equal(v, heads_before[k]) for k, v in _weights(m.image_head).items())


@pytest.mark.parametrize("loss", ["bleep", "gene-soft", "inter-soft", "supcon"])
def test_fit_image_encoder_writes_obsm(tiny, tmp_path, loss):
    full, train, store = tiny
    enc = get_encoder("pca", pca={"n_pcs": 8}).fit(train)
    cfg = ContrastiveConfig(**{**TINY, "epochs": 1}, loss=loss)
    _, _, out = fit_image_encoder(cfg, full, store, enc, tmp_path, train_mask=(full.obs["patient"] != "P3").to_numpy(), progress=False)
    assert out.obsm["X_image_backbone"].shape[0] == full.n_obs and np.isfinite(out.obsm["X_image_backbone"]).all()
    assert out.obsm["X_image_head"].shape == (full.n_obs, 16)
    np.testing.assert_allclose(np.linalg.norm(out.obsm["X_image_head"], axis=1), 1, atol=1e-4)
    assert (tmp_path / "logs" / "metrics.csv").is_file()


def test_finetune_scvi_encoder(tiny, tmp_path):
    full, train, store = tiny
    enc = get_encoder("scvi", scvi={"max_epochs": 5, "n_latent": 6}, n_top_genes=100).fit(train, progress=False)
    before = {k: v.clone() for k, v in enc.model.module.z_encoder.state_dict().items()}
    cfg = ContrastiveConfig(**{**TINY, "epochs": 1}, finetune_gene_encoder=True)
    m, _, _ = fit_image_encoder(cfg, train, store, enc, tmp_path, progress=False)
    tuned = m.gene_encoder.encoder.state_dict()
    assert any(not torch.equal(tuned[k], before[k]) for k in before if tuned[k].is_floating_point())
    for k, v in enc.model.module.z_encoder.state_dict().items():  # the stage-1 model itself is untouched
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("loss", ["clip", "gene-soft", "inter-soft"])
def test_two_process_gloo_matches_single_process(tmp_path, loss):
    sys.path.insert(0, str(Path(__file__).parent))
    import ddp_worker

    single = ddp_worker.step(ddp_worker.towers(), *ddp_worker.batch(), loss)
    out = tmp_path / "ddp.pt"
    init = tmp_path / "init"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).parent / "ddp_worker.py"), str(r), "2", str(init), str(out), loss], env=env)
             for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    ddp = torch.load(out, weights_only=True)
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], atol=1e-5, rtol=1e-4)


def test_cli_genes_fit_and_train(tiny, tmp_path, capsys):
    from stguide.cli import main
    from stguide.data import read_dataset, write_dataset

    full, _, _ = tiny
    write_dataset(full, tmp_path / "d.h5ad")
    assert main(["genes", "fit", "--data", str(tmp_path / "d.h5ad"), "--encoder", "pca", "--exclude-patients", "P3",
                 "--out", str(tmp_path / "genes")]) == 0
    assert main(["train", "--data", str(tmp_path / "d.h5ad"), "--genes", str(tmp_path / "genes"), "--backbone", "resnet10t",
                 "--loss", "inter-soft", "--loss-kwargs", '{"alpha": 0.3}', "--epochs", "1", "--batch-size", "16",
                 "--size-um", "100", "--out-px", "32", "--exclude-patients", "P3", "--out", str(tmp_path / "run")]) == 0
    emb = read_dataset(tmp_path / "run" / "embeddings.h5ad")
    assert emb.obsm["X_image_head"].shape == (full.n_obs, 128)
    assert main(["train", "--data", str(tmp_path / "d.h5ad"), "--genes", str(tmp_path / "genes"), "--loss", "infonce",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "unknown loss" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["train", "--data", str(tmp_path / "d.h5ad"), "--genes", str(tmp_path / "genes"), "--loss", "inter-soft",
                 "--loss-kwargs", '{"alpha": 2}', "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "loss_kwargs" in err and "alpha must lie in [0, 1]" in err and "Traceback" not in err


def test_train_refuses_a_gene_encoder_fitted_on_a_held_out_patient(tiny, tmp_path, capsys):
    """`stguide genes fit` on every patient, then `stguide train --exclude-patients P3`: the image encoder would be
    judged on P3 with targets from an encoder that saw P3. Refused before any training; the Python API too."""
    from stguide.cli import main
    from stguide.data import write_dataset
    from stguide.errors import LeakageError

    full, _, store = tiny
    write_dataset(full, tmp_path / "d.h5ad")
    assert main(["genes", "fit", "--data", str(tmp_path / "d.h5ad"), "--encoder", "pca", "--out", str(tmp_path / "genes")]) == 0
    assert main(["train", "--data", str(tmp_path / "d.h5ad"), "--genes", str(tmp_path / "genes"), "--backbone", "resnet10t",
                 "--epochs", "1", "--size-um", "100", "--out-px", "32", "--exclude-patients", "P3",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "leakage" in err and "['P3']" in err and not (tmp_path / "run" / "checkpoints").exists()
    enc = get_encoder("pca", pca={"n_pcs": 8}).fit(full)
    with pytest.raises(LeakageError, match="P3"):
        fit_image_encoder(ContrastiveConfig(**TINY), full, store, enc, tmp_path / "api",
                          train_mask=(full.obs["patient"] != "P3").to_numpy(), progress=False)


def test_sysvi_cannot_be_fine_tuned(tiny, tmp_path):
    """SysVI's encoder takes the batch, so there is nothing batch-free to fine-tune: a clear error naming the
    setting (it used to end in an AttributeError deep inside)."""
    _, train, store = tiny
    enc = get_encoder("sysvi", scvi={"max_epochs": 2, "n_latent": 4}, n_top_genes=50).fit(train, progress=False)
    cfg = ContrastiveConfig(**{**TINY, "epochs": 1}, finetune_gene_encoder=True)
    with pytest.raises(InputError, match="finetune_gene_encoder") as e:
        fit_image_encoder(cfg, train, store, enc, tmp_path, progress=False)
    assert "scvi or scanvi" in e.value.fix


def test_augment_is_seeded_and_keeps_shape():
    from stguide.contrastive.augment import Augment

    img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    aug = Augment()
    a = aug(img, np.random.default_rng(1))
    b = aug(img, np.random.default_rng(1))
    c = aug(img, np.random.default_rng(2))
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_early_stopping_on_training_patients_validation_split(tiny, tmp_path):
    import pandas as pd

    _, train, store = tiny
    z = np.random.default_rng(0).normal(size=(train.n_obs, 6)).astype(np.float32)
    cfg = ContrastiveConfig(**{**TINY, "epochs": 3}, val_fraction=0.25, patience=1)
    train_contrastive(cfg, store, list(train.obs_names), z, None, tmp_path, progress=False)
    log = pd.read_csv(tmp_path / "logs" / "metrics.csv")
    assert log["val_loss"].notna().any() and log["train_loss"].notna().any()
    assert any((tmp_path / "tb").rglob("events.out.tfevents*"))


def test_vit_takes_the_patch_size():
    model, transform = build_image_encoder("vit_tiny_patch16_224", img_size=32)
    with torch.no_grad():
        out = model(transform(np.zeros((32, 32, 3), np.uint8))[None])
    assert out.shape == (1, 192)


def test_unreachable_hub_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="pretrained weights could not be obtained"):
        build_image_encoder("resnet18", "imagenet")


def test_training_batches_travel_as_uint8_and_are_normalised_like_the_per_patch_transform(tiny):
    """The DataLoader carries bytes; the module normalises a whole batch into channels-last float, the very numbers
    the per-patch transform gives."""
    from stguide.contrastive.data import PairDataset
    from stguide.contrastive.train import build_module

    _, train, store = tiny
    rows = store.indices(list(train.obs_names[:4]))
    ds = PairDataset(store, rows, np.zeros((4, 6), np.float32), np.full(4, -1))
    batch = torch.stack([ds[i][0] for i in range(4)])
    assert batch.dtype == torch.uint8 and batch.shape[-1] == 3
    module, transform = build_module(ContrastiveConfig(**TINY), store, 6)
    x = module.images(batch)
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x, torch.stack([transform(store[int(r)]) for r in rows]))
    feats = torch.randn(4, 8)
    assert module.images(feats) is feats  # cached features pass unchanged


def _one_step(tiny, n: int, frozen_bn: bool = False, **options):
    """One seeded training step of a fresh module with ``options`` on the first ``n`` training spots (random gene
    targets): the loss, every parameter's gradient, and the module. ``frozen_bn``: BatchNorm on its running
    statistics, so that how the batch is split cannot change them."""
    from stguide.contrastive.module import total_loss
    from stguide.contrastive.train import build_module

    _, train, store = tiny
    rows = store.indices(list(train.obs_names[:n]))
    x = torch.from_numpy(np.stack([store[int(r)] for r in rows]))
    g = torch.randn(n, 6, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    module, _ = build_module(ContrastiveConfig(**TINY, **options), store, 6)
    module.train()
    if frozen_bn:
        for m in module.backbone.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    torch.manual_seed(1)  # the heads' dropout draws the same
    loss = total_loss(module.compute_losses((x, g, g, torch.full((n,), -1), torch.zeros(n, dtype=torch.long))))
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}, module


def _assert_same_step(a, b, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    torch.testing.assert_close(b[0], a[0])
    assert a[1].keys() == b[1].keys() and any(k.startswith("backbone.") for k in a[1])
    for k, v in a[1].items():
        torch.testing.assert_close(b[1][k], v, msg=k, rtol=rtol, atol=atol)


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    """timm's checkpointing recomputes activations in the backward pass: the loss and gradients are those of the
    plain step (BatchNorm's running statistics, updated in the recomputation too, are not compared)."""
    _assert_same_step(_one_step(tiny, 16), _one_step(tiny, 16, grad_checkpointing=True))
    with pytest.raises(Exception, match="grad_checkpointing"):
        ContrastiveConfig(**TINY, trunk="frozen", grad_checkpointing=True)


def test_micro_batches_give_the_whole_batch_gradients(tiny):
    """``micro_batch`` runs the trunk in checkpointed micro-batches while the loss sees the whole batch: with
    BatchNorm on its running statistics (the one thing a micro-batch changes), every gradient is the plain step's,
    and the loss value too."""
    # micro_batch 5: four micro-batches of 4
    _assert_same_step(_one_step(tiny, 16, frozen_bn=True), _one_step(tiny, 16, frozen_bn=True, micro_batch=5))
    with pytest.raises(Exception, match="micro_batch"):
        ContrastiveConfig(**TINY, trunk="frozen", micro_batch=8)


def test_compiled_trunk_gives_the_eager_loss_gradients_and_checkpoint_keys(tiny):
    """``compile`` compiles the trunk in place (torch.compile): the same loss and gradients as the eager trunk, and
    the same state-dict keys, so its checkpoints load where an uncompiled module is built (``stguide predict``).
    The test uses the ``aot_eager`` backend (dynamo's graph capture and AOT autograd, no C++ code generation, which
    takes minutes on 2 cores); ``true`` picks inductor."""
    from stguide.contrastive.train import build_module

    eager, compiled = _one_step(tiny, 8), _one_step(tiny, 8, compile="aot_eager")
    _assert_same_step(eager, compiled, rtol=1e-3, atol=1e-4)
    assert list(compiled[2].state_dict()) == list(eager[2].state_dict())
    assert not any("_orig_mod" in k for k in compiled[2].state_dict())
    with pytest.raises(Exception, match="compile"):
        ContrastiveConfig(**TINY, trunk="frozen", compile=True)
    with pytest.raises(Exception, match="not a torch.compile backend"):
        build_module(ContrastiveConfig(**TINY, compile="no-such-backend"), tiny[2], 6)
