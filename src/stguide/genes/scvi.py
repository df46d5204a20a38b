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
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from stguide.errors import InputError
from stguide.genes.base import FINETUNE, LABELS, PREDICT, GeneEncoder
from stguide.genes.config import AUTO, auto_epochs, auto_scanvi_epochs
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

    def _train_kwargs(self, n: int, epochs: int, label: str | None = None, validation: bool | None = None) -> dict:
        c = self.config.scvi
        val = 0.1 if (c.early_stopping if validation is None else validation) else 0.0
        kw = dict(max_epochs=epochs, accelerator="cpu", devices=1, batch_size=safe_batch_size(n, c.batch_size, val),
                  early_stopping=bool(val), train_size=1.0 - val if val else 1.0, enable_model_summary=False, logger=False,
                  **training_progress(self.progress, label or f"{self.name} ({n} spots)", epochs))
        if val:
            kw["validation_size"] = val
        kw.update(c.trainer_kwargs)
        return kw

    def _train(self, stage: str, n: int, epochs: int | str, default: int, **extra) -> None:
        """Train ``self.model`` (``epochs``: a number or ``auto`` → ``default``) and record in ``fitted_on.training``
        the epochs and optimisation steps it took (fewer epochs than asked when early stopping ended it)."""
        e = default if epochs == AUTO else int(epochs)
        kw = self._train_kwargs(n, e, **extra)
        self.model.train(**kw)
        history = getattr(self.model, "history", None) or {}
        ran = len(history["elbo_train"]) if "elbo_train" in history else e
        n_train = int(round(n * kw["train_size"]))
        steps = ran * -(-n_train // kw["batch_size"])
        self.fitted_on.setdefault("training", {})[stage] = {"epochs_asked": e, "epochs": ran, "steps": steps,
                                                          "batch_size": kw["batch_size"], "spots": n_train,
                                                          "rule": "auto" if epochs == AUTO else "fixed"}

    def _fit(self, adata: ad.AnnData, batch_key: str, labels: np.ndarray | None) -> None:
        import scvi

        a = self._setup_adata(adata, adata.obs[batch_key])
        with quiet():
            scvi.settings.seed = self.config.seed
            self.model = self._build(a)
            self._train(self.name if self.name != "scanvi" else "scvi", a.n_obs, self.config.scvi.max_epochs, auto_epochs(a.n_obs))
        self.batches = list(a.obs[BATCH].astype("category").cat.categories)

    def _build(self, a: ad.AnnData):
        """An untrained SCVI on the registered AnnData ``a`` with this encoder's settings."""
        import scvi

        c = self.config.scvi
        scvi.model.SCVI.setup_anndata(a, batch_key=BATCH)
        model = scvi.model.SCVI(a, n_hidden=c.n_hidden, n_latent=c.n_latent, n_layers=c.n_layers, dropout_rate=c.dropout_rate,
                                gene_likelihood=c.gene_likelihood, dispersion=c.dispersion, encode_covariates=c.encode_covariates)
        assert bool(model.module.encode_covariates) == c.encode_covariates, "the encoder must see the batch only when asked"
        return model

    @property
    def batch_aware(self) -> bool:
        """Whether the encoder reads the batch (then an unseen patient's spots need ``query``)."""
        return self.config.scvi.encode_covariates

    def _query(self, adata: ad.AnnData, batch: pd.Series | str | None = None) -> ad.AnnData:
        """``adata`` on the encoder's genes, registered under ``batch`` (a placeholder training batch by default,
        which a batch-free encoder never reads)."""
        sub = adata[:, self.genes] if list(adata.var_names) != self.genes else adata
        return self._setup_adata(sub, self.batches[0] if batch is None else batch)

    def _latent(self, q: ad.AnnData, model=None) -> np.ndarray:
        return np.asarray((model or self.model).get_latent_representation(q, give_mean=True), dtype=np.float32)

    def transform(self, adata: ad.AnnData) -> np.ndarray:
        """The posterior mean of every spot. A batch-free encoder needs no batch. A batch-aware one encodes a spot of a
        training patient under its own patient (read from the fit's ``batch_key`` column) and an unseen patient's
        spots by ``scvi.query``: ``encode`` (the mean over every training patient) or ``scarches`` (a query model per
        unseen patient, trained on those spots' expression only; labels are never read)."""
        self.counts(adata)  # checks the genes
        with quiet():
            if not self.batch_aware:
                return self._latent(self._query(adata))
            key = self.fitted_on.get("batch_key", "patient")
            batches = adata.obs[key].astype(str).to_numpy() if key in adata.obs else np.full(adata.n_obs, "")
            known = np.isin(batches, self.batches)
            z = np.zeros((adata.n_obs, self.config.scvi.n_latent), dtype=np.float32)
            if known.any():
                z[known] = self._latent(self._query(adata[known], pd.Series(batches[known])))
            for b in np.unique(batches[~known]):
                m = batches == b
                z[m] = self._unseen(adata[m], b)
        return z

    def query_mapping(self) -> dict[str, Any] | None:
        if not (self.batch_aware and self.config.scvi.query == "scarches"):
            return None
        return {"labels_used": False, "method": "scarches",
                "note": "scvi-tools load_query_data: reference weights frozen, the held-out patient's covariate weights "
                        "trained on its unlabelled counts"}

    def _unseen(self, adata: ad.AnnData, batch: str) -> np.ndarray:
        """The latent of one unseen patient's spots (``scvi.query``)."""
        if self.config.scvi.query == "scarches":
            return self._scarches(adata, batch)
        return self._mean_over_batches(adata)

    def _mean_over_batches(self, adata: ad.AnnData) -> np.ndarray:
        """The latent of spots from an unseen patient, encoded as each training patient in turn and averaged."""
        return np.mean([self._latent(self._query(adata, b)) for b in self.batches], axis=0)

    def _scarches(self, adata: ad.AnnData, batch: str) -> np.ndarray:
        """scvi-tools' reference mapping: ``load_query_data`` (reference weights frozen; the new patient's covariate
        weights train) on this patient's spots, unlabelled, then the posterior mean."""
        import scvi

        q = self._query(adata, f"query:{batch}")
        if LABEL_COL in self.model.adata.obs:
            q.obs[LABEL_COL] = UNKNOWN  # a query spot's label is never read
        scvi.settings.seed = self.config.seed
        query = type(self.model).load_query_data(q, self.model, accelerator="cpu")
        n = q.n_obs
        e = auto_epochs(n) if self.config.scvi.query_epochs == AUTO else int(self.config.scvi.query_epochs)
        kw = self._train_kwargs(n, e, label=f"{self.name} query mapping ({n} spots)", validation=False)
        query.train(plan_kwargs={"weight_decay": 0.0}, **kw)
        return self._latent(q, query)

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
            self._train("scanvi", a.n_obs, self.config.scanvi.max_epochs, auto_scanvi_epochs(a.n_obs))
        self.classes = classes

    def _build(self, a: ad.AnnData):
        """An untrained SCANVI on ``a`` (which carries labels) with this encoder's settings."""
        import scvi

        c = self.config.scvi
        if LABEL_COL not in a.obs:
            return super()._build(a)  # the first stage of fit is a plain SCVI
        scvi.model.SCANVI.setup_anndata(a, labels_key=LABEL_COL, unlabeled_category=UNKNOWN, batch_key=BATCH)
        return scvi.model.SCANVI(a, n_hidden=c.n_hidden, n_latent=c.n_latent, n_layers=c.n_layers, dropout_rate=c.dropout_rate,
                                 gene_likelihood=c.gene_likelihood, dispersion=c.dispersion,
                                 encode_covariates=c.encode_covariates)

    def registered_labels(self) -> list[str]:
        """The label categories the fitted scANVI model knows (the training classes plus ``Unknown``)."""
        return [str(x) for x in self.model.adata_manager.get_state_registry("labels").categorical_mapping]

    def _query(self, adata: ad.AnnData, batch: pd.Series | str | None = None) -> ad.AnnData:
        q = super()._query(adata, batch)
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
    and the posterior means are averaged (a documented choice; it uses no fit on the unseen patient, and scArches
    is not an option: scvi-tools' ``SysVI.load_query_data`` refuses a batch absent from the reference).
    """

    name = "sysvi"
    reads = ("scvi", "sysvi")
    capabilities = frozenset()  # its encoder takes the batch: nothing batch-free to fine-tune
    torch_encoder = GeneEncoder.torch_encoder
    batch_aware = True

    def _setup_adata(self, adata: ad.AnnData, batch, labels=None) -> ad.AnnData:
        a = super()._setup_adata(adata, batch, labels)
        a.X = sp.csr_matrix(log_normalise(a.X))
        return a

    def _build(self, a: ad.AnnData):
        from scvi.external import SysVI

        c, v = self.config.scvi, self.config.sysvi
        SysVI.setup_anndata(a, batch_key=BATCH)
        return SysVI(a, prior=v.prior, n_prior_components=v.n_prior_components, n_latent=c.n_latent, n_hidden=c.n_hidden,
                     n_layers=max(c.n_layers, 2), dropout_rate=c.dropout_rate)

    def _train_kwargs(self, n: int, epochs: int, label: str | None = None, validation: bool | None = None) -> dict:
        v = self.config.sysvi
        kw = super()._train_kwargs(n, epochs, label, validation)
        kw["plan_kwargs"] = {"z_distance_cycle_weight": v.cycle_weight, "max_kl_weight": v.kl_weight,
                             **kw.get("plan_kwargs", {})}
        return kw

    def query_mapping(self) -> dict[str, Any]:
        return {"labels_used": False, "method": "mean-over-training-patients",
                "note": "the unseen patient's spots encoded under every training patient and the posterior means "
                        "averaged; scArches is not available for SysVI (scvi-tools' SysVI.load_query_data refuses a "
                        "batch absent from the reference)"}

    def _fit(self, adata: ad.AnnData, batch_key: str, labels: np.ndarray | None) -> None:
        if self.config.scvi.query == "scarches":  # said here: the transform runs with warnings silenced
            warnings.warn("sysvi: scvi.query 'scarches' is not available for SysVI (scvi-tools' load_query_data refuses a "
                          "new batch); an unseen patient's spots will be encoded under every training patient and "
                          "averaged", UserWarning, stacklevel=3)
        super()._fit(adata, batch_key, labels)

    def _unseen(self, adata: ad.AnnData, batch: str) -> np.ndarray:
        """An unseen patient is encoded under every training patient, averaged (whatever ``scvi.query`` says:
        scvi-tools' SysVI cannot map a new batch by scArches; :meth:`_fit` warns when it was asked for)."""
        return self._mean_over_batches(adata)
