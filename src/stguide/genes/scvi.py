"""scVI and scANVI (scvi-tools) as batch-agnostic gene encoders, with the patient as the batch.

scvi-tools' encoder q(z|x) takes no batch input (``encode_covariates=False``): only the decoder sees the patient.
So the fitted encoder embeds any spot, of any patient, without knowing its patient; ``transform`` feeds it a
placeholder batch, which the encoder never reads, and returns the posterior mean. Models are saved in
scvi-tools' own format (``model/``), so scvi-tools opens them directly.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from stguide.errors import InputError
from stguide.genes.base import FINETUNE, LABELS, PREDICT, GeneEncoder
from stguide.genes.expression import log_normalise
from stguide.genes.registry import register
from stguide.progress import training_progress

BATCH = "_stguide_batch"
LABEL_COL = "_stguide_labels"
UNKNOWN = "Unknown"


def safe_batch_size(n: int, batch_size: int, validation: float = 0.0) -> int:
    """The smallest batch size ≥ ``batch_size`` that leaves no minibatch of one spot (BatchNorm cannot train on one)."""
    sizes = {n} if validation == 0 else {int(np.ceil(n * (1 - validation))), int(np.floor(n * (1 - validation))),
                                          int(np.ceil(n * validation)), int(np.floor(n * validation))}
    bs = batch_size
    while any(s % bs == 1 for s in sizes if s > 0):
        bs += 1
    return bs


@contextlib.contextmanager
def quiet():
    """Silence scvi-tools / Lightning chatter at the boundary (warnings about GPUs, workers, logging)."""
    loggers = [logging.getLogger(n) for n in ("scvi", "lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels, strict=True):
                lg.setLevel(lv)


@register
class SCVIEncoder(GeneEncoder):
    """``scvi``: SCVI on raw counts, patient as the batch; the latent is the posterior mean."""

    name = "scvi"
    reads: ClassVar[tuple[str, ...]] = ("scvi",)
    capabilities = frozenset({FINETUNE})

    def _setup_adata(self, adata: ad.AnnData, batch: pd.Series | str, labels: pd.Series | str | None = None) -> ad.AnnData:
        a = ad.AnnData(X=sp.csr_matrix(adata.X, dtype=np.float32), obs=pd.DataFrame(index=adata.obs_names.astype(str)),
                       var=pd.DataFrame(index=adata.var_names.astype(str)))
        a.obs[BATCH] = batch if isinstance(batch, str) else batch.astype(str).to_numpy()
        if labels is not None:
            a.obs[LABEL_COL] = labels if isinstance(labels, str) else labels.to_numpy()
        return a

    def _train_kwargs(self, n: int, epochs: int) -> dict:
        c = self.config.scvi
        val = 0.1 if c.early_stopping else 0.0
        kw = dict(max_epochs=epochs, accelerator="cpu", devices=1, batch_size=safe_batch_size(n, c.batch_size, val),
                  early_stopping=c.early_stopping, train_size=1.0 - val if val else 1.0, enable_model_summary=False, logger=False,
                  **training_progress(self.progress, f"{self.name} ({n} spots)", epochs))
        if val:
            kw["validation_size"] = val
        kw.update(c.trainer_kwargs)
        return kw

    def _fit(self, adata: ad.AnnData, batch_key: str, labels: np.ndarray | None) -> None:
        import scvi

        a = self._setup_adata(adata, adata.obs[batch_key])
        with quiet():
            scvi.settings.seed = self.config.seed
            self.model = self._build(a)
            self.model.train(**self._train_kwargs(a.n_obs, self.config.scvi.max_epochs))
        self.batches = list(a.obs[BATCH].astype("category").cat.categories)

    def _build(self, a: ad.AnnData):
        """An untrained SCVI on the registered AnnData ``a`` with this encoder's settings."""
        import scvi

        c = self.config.scvi
        scvi.model.SCVI.setup_anndata(a, batch_key=BATCH)
        model = scvi.model.SCVI(a, n_hidden=c.n_hidden, n_latent=c.n_latent, n_layers=c.n_layers,
                                dropout_rate=c.dropout_rate, gene_likelihood=c.gene_likelihood)
        assert not model.module.encode_covariates, "the encoder must not see the batch"
        return model

    def _query(self, adata: ad.AnnData) -> ad.AnnData:
        return self._setup_adata(adata[:, self.genes] if list(adata.var_names) != self.genes else adata,
                                 self.batches[0])

    def transform(self, adata: ad.AnnData) -> np.ndarray:
        self.counts(adata)  # checks the genes
        with quiet():
            q = self._query(adata)
            z = self.model.get_latent_representation(q, give_mean=True)
        return np.asarray(z, dtype=np.float32)

    def _save(self, path: Path) -> None:
        from safetensors.torch import save_model

        with quiet():  # scvi-tools' own format, for users who open the model with scvi-tools
            self.model.save(str(path / "model"), save_anndata=False, overwrite=True)
        # stguide reloads from plain tensors and never unpickles (scvi-tools' model.pt is a pickle)
        save_model(self.model.module, str(path / "module.safetensors"))  # handles shared tensors
        (path / "batches.txt").write_text("\n".join(self.batches) + "\n")

    def _dummy(self, labels: list[str] | None = None) -> ad.AnnData:
        """A tiny AnnData that registers every training batch (and label), to rebuild the model for loading."""
        n = max(len(self.batches), len(labels or []))
        x = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), np.arange(n) % len(self.genes))), shape=(n, len(self.genes)))
        a = ad.AnnData(X=x,  # one count each: scvi-tools treats an all-zero X as "minified"
                       obs=pd.DataFrame(index=[f"d{i}" for i in range(n)]), var=pd.DataFrame(index=self.genes))
        batches = pd.Series([self.batches[i % len(self.batches)] for i in range(n)])
        return self._setup_adata(a, batches, None if labels is None else pd.Series([labels[i % len(labels)] for i in range(n)]))

    def _load(self, path: Path) -> None:
        from safetensors.torch import load_model

        self.batches = (path / "batches.txt").read_text().splitlines()
        with quiet():
            self.model = self._build(self._dummy_for_load())
            # non-strict only for aliases of shared tensors (SysVI's VampPrior shares the encoder); nothing may be missing
            missing, _ = load_model(self.model.module, str(path / "module.safetensors"), strict=False)
            if missing:
                raise InputError(path / "module.safetensors", f"{len(missing)} weights are missing (e.g. {missing[:3]})",
                                 "re-fit the encoder; the folder is incomplete or from another version")
            self.model.module.eval()
            self.model.is_trained_ = True

    def _dummy_for_load(self) -> ad.AnnData:
        return self._dummy()

    def torch_encoder(self) -> torch.nn.Module:
        """A trainable copy of the encoder q(z|x): raw counts of ``self.genes`` → posterior mean (for fine-tuning)."""
        import copy

        return ScviEncoderTower(copy.deepcopy(self.model.module.z_encoder), bool(self.model.module.log_variational))


class ScviEncoderTower(torch.nn.Module):
    """Wraps scvi-tools' ``z_encoder``: counts → log1p (as scVI does) → posterior mean."""

    def __init__(self, encoder, log_variational: bool = True) -> None:
        super().__init__()
        self.encoder, self.log_variational = encoder, log_variational
        self.encoder.train()  # the fitted scVI model is left in eval mode; fine-tuning trains it

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        x = torch.log1p(counts) if self.log_variational else counts
        out = self.encoder(x)
        first = out[0]
        return first.mean if isinstance(first, torch.distributions.Distribution) else first  # Normal: mean is loc


@register
class SCANVIEncoder(SCVIEncoder):
    """``scanvi``: SCANVI initialised from a fitted SCVI, given only the training patients' labels.

    Spots without a label, and labels in the experiment's ``exclude_labels`` (``undetermined`` by default), are
    ``Unknown``. The fitted model's registered labels are therefore exactly the training classes that count.
    """

    name = "scanvi"
    reads = ("scvi", "scanvi")
    capabilities = frozenset({LABELS, PREDICT, FINETUNE})

    def _fit(self, adata: ad.AnnData, batch_key: str, labels: np.ndarray | None) -> None:
        import scvi

        if labels is None:
            raise InputError("<training set>", "scANVI needs the training spots' labels", "give labels_key (the label column)")
        lab = pd.Series(labels, dtype=object).where(pd.notna(labels), UNKNOWN).astype(str)
        classes = sorted(set(lab) - {UNKNOWN})
        if len(classes) == 0:
            raise InputError("<training set>", "no training spot has a label, so scANVI has nothing to learn from",
                             "label some spots of the training patients, or use the 'scvi' encoder")
        if len(classes) < 2:
            raise InputError("<training set>", f"the training labels hold a single class ({classes[0]!r})",
                             "scANVI needs at least two classes: add labels, or use the 'scvi' encoder")
        super()._fit(adata, batch_key, None)
        a = self.model.adata
        a.obs[LABEL_COL] = lab.to_numpy()
        with quiet():
            self.model = scvi.model.SCANVI.from_scvi_model(self.model, unlabeled_category=UNKNOWN, labels_key=LABEL_COL, adata=a)
            self.model.train(**self._train_kwargs(a.n_obs, self.config.scanvi.max_epochs))
        self.classes = classes

    def _build(self, a: ad.AnnData):
        """An untrained SCANVI on ``a`` (which carries labels) with this encoder's settings."""
        import scvi

        c = self.config.scvi
        if LABEL_COL not in a.obs:
            return super()._build(a)  # the first stage of fit is a plain SCVI
        scvi.model.SCANVI.setup_anndata(a, labels_key=LABEL_COL, unlabeled_category=UNKNOWN, batch_key=BATCH)
        return scvi.model.SCANVI(a, n_hidden=c.n_hidden, n_latent=c.n_latent, n_layers=c.n_layers,
                                 dropout_rate=c.dropout_rate, gene_likelihood=c.gene_likelihood)

    def registered_labels(self) -> list[str]:
        """The label categories the fitted scANVI model knows (the training classes plus ``Unknown``)."""
        return [str(x) for x in self.model.adata_manager.get_state_registry("labels").categorical_mapping]

    def _query(self, adata: ad.AnnData) -> ad.AnnData:
        q = super()._query(adata)
        q.obs[LABEL_COL] = UNKNOWN
        return q

    def predict(self, adata: ad.AnnData) -> np.ndarray:
        """scANVI's predicted class of every spot (used by the ``supcon`` loss)."""
        with quiet():
            return np.asarray(self.model.predict(self._query(adata)))

    def _save(self, path: Path) -> None:
        super()._save(path)
        (path / "classes.txt").write_text("\n".join(self.classes) + "\n")

    def _load(self, path: Path) -> None:
        self.classes = (path / "classes.txt").read_text().splitlines()
        super()._load(path)

    def _dummy_for_load(self) -> ad.AnnData:
        return self._dummy(self.classes + [UNKNOWN])


@register
class SysVIEncoder(SCVIEncoder):
    """``sysvi``: scvi-tools' SysVI (VampPrior + cycle consistency), patient as the batch, for substantial
    batch effects. It models log-normalised expression (as SysVI expects).

    SysVI's encoder is conditioned on the batch, so it is not batch-agnostic by construction: a spot of a training
    patient is encoded under its own patient; a spot of an unseen patient is encoded under every training patient
    and the posterior means are averaged (a documented choice; it uses no fit on the unseen patient).
    """

    name = "sysvi"
    capabilities = frozenset()  # its encoder takes the batch: nothing batch-free to fine-tune
    torch_encoder = GeneEncoder.torch_encoder

    def _setup_adata(self, adata: ad.AnnData, batch, labels=None) -> ad.AnnData:
        a = super()._setup_adata(adata, batch, labels)
        a.X = sp.csr_matrix(log_normalise(a.X))
        return a

    def _build(self, a: ad.AnnData):
        from scvi.external import SysVI

        c = self.config.scvi
        SysVI.setup_anndata(a, batch_key=BATCH)
        return SysVI(a, prior="vamp", n_latent=c.n_latent, n_hidden=c.n_hidden, n_layers=max(c.n_layers, 2),
                     dropout_rate=c.dropout_rate)

    def transform(self, adata: ad.AnnData) -> np.ndarray:
        self.counts(adata)  # checks the genes
        sub = adata[:, self.genes] if list(adata.var_names) != self.genes else adata
        patients = adata.obs[self.fitted_on.get("batch_key", "patient")].astype(str).to_numpy() \
            if self.fitted_on.get("batch_key", "patient") in adata.obs else np.full(adata.n_obs, "")
        known = np.isin(patients, self.batches)
        z = np.zeros((adata.n_obs, self.config.scvi.n_latent), dtype=np.float32)
        with quiet():
            if known.any():
                q = self._setup_adata(sub[known], pd.Series(patients[known]))
                z[known] = self.model.get_latent_representation(q, give_mean=True)
            if (~known).any():
                zs = [self.model.get_latent_representation(self._setup_adata(sub[~known], b), give_mean=True) for b in self.batches]
                z[~known] = np.mean(zs, axis=0)
        return z
