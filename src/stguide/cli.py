"""The ``stguide`` command line. Thin: every subcommand calls one public function.

Bad input (:class:`stguide.errors.InputError`) is printed as one message naming the file, the problem and the
fix, with exit status 2 and no traceback.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from pathlib import Path

from stguide import distributed


def _table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 110))
    for name, m in results["methods"].items():
        t = Table(title=f"{name}: per held-out patient (linear probe; kNN balanced acc. in the last column)")
        for col in ("patient", "n_test", "acc", "bacc", "macro_f1", "weighted_f1", "kappa", "knn_bacc"):
            t.add_column(col, justify="right")
        for p, f in m["folds"].items():
            t.add_row(p, str(f["n_test"]), *(f"{f[k]:.3f}" for k in ("acc", "bacc", "macro_f1", "weighted_f1", "kappa", "knn_bacc")))
        mu, sd = m["mean"], m["sd"]
        if len(m["folds"]) > 1:  # one fold has no spread to show
            t.add_row("mean ± sd", "", *(f"{mu[k]:.3f} ± {sd[k]:.3f}" for k in ("acc", "bacc", "macro_f1", "weighted_f1", "kappa", "knn_bacc")))
        console.print(t)


def cmd_demo(args: argparse.Namespace) -> None:
    from stguide.evaluate.config import load_config, preset_path, with_seed
    from stguide.evaluate.experiment import run_experiment

    preset = "demo-quick" if args.quick else "demo"
    cfg = load_config(preset_path(preset), with_seed(args.seed))
    results = run_experiment(cfg, args.out, progress=not args.no_progress,
                             command=f"stguide demo --out {args.out}" + (" --quick" if args.quick else "") + (f" --seed {args.seed}" if args.seed else ""))
    _table(results)
    print(f"\nwrote {Path(args.out) / 'results.json'}, report.md and report.html ({results['runtime_s']} s; settings: {preset_path(preset)})")


def cmd_data(args: argparse.Namespace) -> None:
    from stguide.data import read, write_dataset

    options = {k: getattr(args, k) for k in ("ids", "labels_dir", "labels", "image", "um_per_px", "patient", "section",
                                             "label_key", "gene_rule", "seed", "table", "coordinate_system", "um_per_unit",
                                             "spot_diameter_um", "patient_key") if getattr(args, k) is not None}
    if args.format == "synthetic":
        options["image_dir"] = str(Path(args.out).parent / "images")
    a = read(args.format, args.path, **options)
    write_dataset(a, args.out)
    print(f"wrote {args.out}: {a.n_obs} spots × {a.n_vars} genes, {a.obs['patient'].nunique()} patients, "
          f"{a.obs['section'].nunique()} sections, {int(a.obs['label'].notna().sum())} labelled spots")


def _patch_config(args: argparse.Namespace):
    """PatchConfig from the flags given (the dataclass's defaults for the others)."""
    from stguide.data.patches import PatchConfig

    given = {k: getattr(args, k, None) for k in ("size_um", "out_px", "outside", "stain_norm")}
    return PatchConfig.from_dict({k: v for k, v in given.items() if v is not None})


def cmd_patches(args: argparse.Namespace) -> None:
    from stguide.data import read_dataset
    from stguide.data.patches import extract_patches

    cfg = _patch_config(args)
    store = extract_patches(read_dataset(args.data), cfg, args.cache_dir)
    print(f"patch cache: {store.path} ({len(store)} patches, {store.meta['n_padded']} padded at the image border)")


def _epochs_arg(v: str) -> int | str:
    if v == "auto":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is neither 'auto' nor a number of epochs") from None


def _gene_config(args: argparse.Namespace):
    """GeneConfig from the YAML's 'genes:' section, with --epochs (scvi.max_epochs) on top, validated up front."""
    from stguide.config import load_yaml
    from stguide.genes import GeneConfig

    doc = dict(load_yaml(args.config).get("genes") or {}) if args.config else {}
    if args.epochs:
        doc["scvi"] = {**(doc.get("scvi") or {}), "max_epochs": args.epochs}
    return _from_file(GeneConfig, doc, args.config)


def _probe_config(args: argparse.Namespace):
    """ProbeConfig from the YAML's 'probe:' section (the defaults without one), validated up front."""
    from stguide.config import load_yaml
    from stguide.evaluate.probes import ProbeConfig

    doc = dict(load_yaml(args.config).get("probe") or {}) if args.config else {}
    return _from_file(ProbeConfig, doc, args.config)


def _from_file(cls, doc: dict, path: str | None):
    """``cls.from_dict(doc)``, an error naming the YAML file (when there is one) beside the key."""
    from stguide.errors import InputError

    try:
        return cls.from_dict(doc)
    except InputError as e:
        raise (InputError(f"{path} ({e.file})", e.problem, e.fix) if path else e) from None


def _command() -> str:
    """The command line that produced an artefact, recorded beside its numbers."""
    return "stguide " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""


def cmd_genes_fit(args: argparse.Namespace) -> None:
    from stguide.data import read_dataset
    from stguide.genes import get_encoder

    cfg = _gene_config(args)
    enc = get_encoder(args.encoder, cfg)
    a = read_dataset(args.data)
    if args.exclude_patients:
        a = a[~a.obs["patient"].isin(args.exclude_patients)].copy()
    enc.fit(a, batch_key="patient", labels_key="label", exclude_labels=tuple(args.exclude_labels))
    enc.save(args.out)
    print(f"wrote {args.out}: {args.encoder} fitted on patients {enc.fitted_on['patients']} ({enc.fitted_on['n_spots']} spots, {len(enc.genes)} genes)")


def cmd_genes_embed(args: argparse.Namespace) -> None:
    from stguide.data import read_dataset, write_dataset
    from stguide.genes import load_encoder

    enc = load_encoder(args.genes)
    a = read_dataset(args.data)
    a.obsm[f"X_{enc.name}"] = enc.transform(a)
    write_dataset(a, args.out)
    print(f"wrote {args.out} with obsm['X_{enc.name}'] ({a.obsm[f'X_{enc.name}'].shape[1]} dimensions)")


def cmd_genes_audit(args: argparse.Namespace) -> None:
    from stguide.data import labelled_mask, read_dataset
    from stguide.evaluate.audit import audit, umap_coords
    from stguide.genes import get_encoder
    from stguide.progress import track
    from stguide.report.figures import plot_umaps
    from stguide.report.markdown import write_audit

    cfg = _gene_config(args)
    encoders = [get_encoder(name, cfg) for name in args.encoders]  # names checked before the data is read
    a = read_dataset(args.data)
    exclude = tuple(args.exclude_labels)
    reps = {}
    for enc in track(encoders, "fitting encoders for the audit"):
        reps[enc.name] = enc.fit(a, batch_key="patient", labels_key="label", exclude_labels=exclude, progress=False).transform(a)
    labels = a.obs["label"].astype(object).where(labelled_mask(a, exclude), None).to_numpy()
    patients = a.obs["patient"].astype(str).to_numpy()
    pre = get_encoder("pca", cfg).fit(a).transform(a)
    table = audit(reps, patients, labels, x_pre=pre)
    write_audit(table, args.out, _command())
    plot_umaps({name: (umap_coords(x), patients, labels) for name, x in reps.items()}, Path(args.out) / "umap.png")
    print(table.round(3).to_string())
    print(f"\nwrote {Path(args.out) / 'audit.csv'}, audit.md and umap.png")


def cmd_genes_lopo(args: argparse.Namespace) -> None:
    from stguide.data import read_dataset
    from stguide.evaluate.genes_lopo import run_gene_lopo
    from stguide.genes import encoder_class
    from stguide.report import write_report

    cfg, probe = _gene_config(args), _probe_config(args)
    for name in args.encoders:
        encoder_class(name, "--encoders")  # before the data is read
    res = run_gene_lopo(read_dataset(args.data), args.encoders, args.out, cfg, probe=probe, exclude_labels=tuple(args.exclude_labels),
                        command=_command(), batch_key=args.batch_key)
    write_report(args.out)
    _table(res)


def cmd_train(args: argparse.Namespace) -> None:
    import json

    from stguide.config import load_yaml
    from stguide.contrastive import ContrastiveConfig, fit_image_encoder
    from stguide.data import read_dataset, write_dataset
    from stguide.data.patches import extract_patches
    from stguide.errors import InputError
    from stguide.genes import load_encoder

    over = {k: v for k, v in (("backbone", args.backbone), ("init", args.init), ("loss", args.loss), ("epochs", args.epochs),
                              ("batch_size", args.batch_size)) if v is not None}
    if args.loss_kwargs:
        try:
            over["loss_kwargs"] = json.loads(args.loss_kwargs)
        except json.JSONDecodeError as e:
            raise InputError("--loss-kwargs", f"not valid JSON ({e})", 'write a JSON object, e.g. \'{"alpha": 0.5}\'') from None
    doc = dict(load_yaml(args.config).get("contrastive") or {}) if args.config else {}
    cfg = _from_file(ContrastiveConfig, {**doc, **over}, args.config)  # every name and option checked before any slow step
    patches = _patch_config(args)
    enc = load_encoder(args.genes)
    a = read_dataset(args.data)
    out = Path(args.out)
    train = ~a.obs["patient"].isin(args.exclude_patients or []).to_numpy()
    with distributed.main_first():  # under torchrun the others read the main process's patch cache
        store = extract_patches(a, patches, args.patch_cache or out / "patches", progress=distributed.is_main())
    _, _, emb = fit_image_encoder(cfg, a, store, enc, out, train_mask=train, exclude_labels=tuple(args.exclude_labels),
                                  resume=args.resume)
    if emb is None:  # a process other than the main one: it trained, the main one writes
        return
    write_dataset(emb, out / "embeddings.h5ad")
    print(f"wrote {out / 'checkpoints' / 'last.ckpt'} and {out / 'embeddings.h5ad'} (obsm X_image_backbone, X_image_head)")


def cmd_download(args: argparse.Namespace) -> None:
    from stguide.download import download

    files = download(args.source, args.out, ids=args.ids, base_url=args.base_url, manifest=args.manifest)
    print(f"downloaded and verified {len(files)} file(s) into {args.out}")


def _executor(args: argparse.Namespace, base=None):
    """The executor: the YAML's ``executor:`` section (``base``, or ``--config``'s), with --executor/--workers on top;
    every setting checked before any work starts."""
    from stguide.config import load_yaml
    from stguide.executors import ExecutorConfig, with_overrides

    if base is None:
        path = getattr(args, "config", None)
        base = _from_file(ExecutorConfig, dict(load_yaml(path).get("executor") or {}), path) if path else ExecutorConfig()
    ecfg = with_overrides(base, args.executor, args.workers)
    if ecfg.kind != "serial" and distributed.world_size() > 1:
        from stguide.errors import InputError

        raise InputError(f"--executor {ecfg.kind}", "cannot run under torchrun (each rank would schedule the whole run)",
                         "use torchrun with the serial executor, or the local/slurm executor without torchrun")
    ecfg.check_available()
    return ecfg


def cmd_experiment(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from stguide.evaluate.config import load_config
    from stguide.evaluate.scaleout import run_experiment_on

    cfg = load_config(args.config)
    ecfg = _executor(args, cfg.executor)
    results = run_experiment_on(replace(cfg, executor=ecfg), args.out, ecfg, progress=not args.no_progress, command=_command())
    if not distributed.is_main():  # under torchrun only the main process scores and reports
        return
    if "submitted" in results:
        n = sum(len(v) for v in results["submitted"].values())
        print(f"\nsubmitted {n} jobs in {len(results['submitted'])} stages ({Path(args.out) / 'jobs' / 'submitted.json'}); the last one "
              f"writes {Path(args.out) / 'results.json'} and the report. Running the same command again after a job failed "
              "submits again, and only what is missing is computed.")
        return
    _table(results)
    for name, why in results.get("skipped", {}).items():
        print(f"{name}: {why}")
    print(f"\nwrote {Path(args.out) / 'results.json'}, report.md and report.html ({results['runtime_s']} s)")


def cmd_report(args: argparse.Namespace) -> None:
    from stguide.report import write_report

    md = write_report(args.run_dir)
    print(f"wrote {md} and {md.with_suffix('.html')}")


def cmd_export(args: argparse.Namespace) -> None:
    from stguide.apply.bundle import export_bundle, load_bundle
    from stguide.apply.runcell import REFIT

    fold = args.fold
    if args.refit_all:
        from stguide.apply.refit import refit_all

        refit_all(args.run_dir, args.method, seed=args.seed, progress=not args.no_progress)
        fold = REFIT
    out = export_bundle(args.run_dir, args.method, args.out, fold=fold, seed=args.seed, k=args.k)
    b = load_bundle(out)
    m = b.manifest
    trained = "trained on every patient" if m["fold"] == REFIT else f"trained without patient {m['fold']}"
    print(f"wrote {out}: {m['method']} {trained} ({m['backbone']}, trunk {m['trunk']}, "
          f"{len(b.classes)} classes); see {out / 'MODEL_CARD.md'}")


def cmd_predict(args: argparse.Namespace) -> None:
    from stguide.apply.predict import predict_slides

    ecfg = _executor(args)
    options = dict(um_per_px=args.um_per_px, batch_size=args.batch_size, min_tissue=args.min_tissue, genes=args.genes,
                   map_gene=args.map_gene, spatialdata=args.spatialdata)
    done = predict_slides(args.slide, args.model, args.out, ecfg, progress=not args.no_progress, **options)
    if "submitted" in done:
        print(f"submitted {len(done['submitted'])} job(s), one per slide; each writes its folder under {args.out}")
        return
    for slide, s in done["slides"].items():
        top = ", ".join(f"{c} {100 * f:.1f} %" for c, f in sorted(s["area_fraction"].items(), key=lambda kv: -kv[1]))
        print(f"{Path(slide).name}: {s['n_tiles']} tiles of {s['tile_um']:g} µm at {s['um_per_px']:g} µm/px ({s['um_per_px_source']}): {top}")
        print(f"  wrote {s['out_dir']}: {s['table']}, map.png, tiles.geojson and summary.json")


def cmd_expression(args: argparse.Namespace) -> None:
    from stguide.apply.expression import expression_lopo, expression_table
    from stguide.io import write_json_atomic

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    markers = args.markers if args.markers is not None else None
    res = expression_lopo(args.run_dir, args.method, n_hvg=args.n_hvg, k=args.k,
                          **({"markers": markers} if markers is not None else {}))
    res["command"] = _command()
    write_json_atomic(out / "results.json", res)
    table = expression_table(res)
    (out / "table.md").write_text(f"Produced by: `{res['command']}`\n\n" + table)
    print(table)
    print(f"wrote {out / 'results.json'} and {out / 'table.md'}")


def build_parser() -> argparse.ArgumentParser:
    """The parser. Defaults and allowed names come from the config dataclasses and the registries."""
    from stguide.contrastive.config import ContrastiveConfig
    from stguide.contrastive.encoders import INITS
    from stguide.contrastive.losses import LOSSES
    from stguide.data.model import EXCLUDED_LABELS, GENE_RULES
    from stguide.data.patches import PatchConfig
    from stguide.data.readers import READERS
    from stguide.executors import EXECUTORS
    from stguide.genes import ENCODERS

    pc, cc = PatchConfig(), ContrastiveConfig()
    encoders = list(ENCODERS)
    p = argparse.ArgumentParser(prog="stguide", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def exclude_labels(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--exclude-labels", nargs="*", default=list(EXCLUDED_LABELS), metavar="LABEL",
                        help=f"labels that do not count: never scored, never a probe's or scANVI's label (default {list(EXCLUDED_LABELS)})")

    def executor_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--executor", choices=list(EXECUTORS),
                        help="where the jobs run: serial (this process; default), local (worker processes on this machine), "
                             "slurm (submitit job arrays; cluster settings in the YAML's executor: section)")
        sp.add_argument("--workers", type=int, help="local executor: processes at once (default: one per core)")

    def patch_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--size-um", type=float, help=f"patch field of view in µm (default {pc.size_um:g})")
        sp.add_argument("--out-px", type=int, help=f"patch side in pixels (default {pc.out_px})")

    d = sub.add_parser("demo", help="run the whole method on the embedded synthetic dataset (LOPO); a preset of `stguide experiment`")
    d.add_argument("--out", default="stguide-demo", help="output folder (default: stguide-demo)")
    d.add_argument("--quick", action="store_true", help="a smaller dataset and fewer epochs (about a minute)")
    d.add_argument("--seed", type=int, default=0, help="the data, stage-1 and stage-2 seed (default 0)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")
    d.set_defaults(func=cmd_demo)

    x = sub.add_parser("experiment", help="the method matrix × leave-one-patient-out folds, with report.html/report.md")
    x.add_argument("config", help="an experiment YAML (see docs/configuration.md and experiments/*.yaml)")
    x.add_argument("--out", required=True, help="the run folder; re-running continues an interrupted run (cached cells)")
    x.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")
    executor_flags(x)
    x.set_defaults(func=cmd_experiment)

    r = sub.add_parser("data", help="read a dataset into the stguide data model (.h5ad)")
    r.add_argument("format", choices=sorted(READERS))
    r.add_argument("path", nargs="?", help="HER2ST root, HEST root, Visium outs/, an .h5ad, or a SpatialData .zarr store")
    r.add_argument("--out", required=True, help="the .h5ad to write")
    r.add_argument("--ids", nargs="*", help="HEST ids (default: all)")
    r.add_argument("--labels-dir", help="HEST: folder of {id}.tsv label files")
    r.add_argument("--labels", help="Visium: a barcode,label TSV")
    r.add_argument("--image", help="Visium / AnnData: the full-resolution H&E image; SpatialData: the image element's name")
    r.add_argument("--um-per-px", type=float, help="AnnData / SpatialData: µm per pixel of the image")
    r.add_argument("--patient", help="Visium / AnnData / SpatialData: the patient")
    r.add_argument("--patient-key", help="AnnData / SpatialData: the obs column of patients (instead of --patient)")
    r.add_argument("--table", help="SpatialData: the table of counts (default: the store's only table)")
    r.add_argument("--coordinate-system", help="SpatialData: the coordinate system the image and spots share (default global)")
    r.add_argument("--um-per-unit", type=float, help="SpatialData: µm per coordinate unit (e.g. 0.2125 for Xenium's global)")
    r.add_argument("--spot-diameter-um", type=float, help="SpatialData: the circles' diameter in µm (e.g. 55 for Visium)")
    r.add_argument("--section", help="Visium / AnnData: the section name")
    r.add_argument("--label-key", help="AnnData: obs column of labels")
    r.add_argument("--gene-rule", choices=list(GENE_RULES), help=f"HER2ST / HEST: how sections' gene sets combine (default {GENE_RULES[0]})")
    r.add_argument("--seed", type=int, help="synthetic: the generator's seed (default 0)")
    r.set_defaults(func=cmd_data)

    c = sub.add_parser("patches", help="cut patches by physical size into a cache")
    c.add_argument("data", help="a dataset .h5ad written by `stguide data`")
    patch_flags(c)
    c.add_argument("--cache-dir", default="patches", help="the cache folder (default: patches)")
    c.add_argument("--outside", choices=["pad", "raise"], help=f"a field of view leaving the image (default {pc.outside})")
    c.add_argument("--stain-norm", choices=["macenko"], help="stain normalisation (default none)")
    c.set_defaults(func=cmd_patches)

    g = sub.add_parser("genes", help="stage 1: fit or apply a gene encoder").add_subparsers(dest="genes_command", required=True)
    gf = g.add_parser("fit", help="fit a gene encoder (patient as the batch) and save it")
    gf.add_argument("--data", required=True, help="a dataset .h5ad")
    gf.add_argument("--encoder", default="scvi", choices=encoders, help="the gene encoder (default scvi)")
    gf.add_argument("--out", required=True, help="the encoder folder to write")
    gf.add_argument("--exclude-patients", nargs="*", help="patients to leave out of the fit (e.g. a held-out patient)")
    gf.add_argument("--epochs", type=_epochs_arg, help="scVI/SysVI epochs, genes.scvi.max_epochs: a number or 'auto' "
                    "(scvi-tools' rule; the default)")
    gf.add_argument("--config", help="a YAML file with a 'genes:' section (see docs/configuration.md)")
    exclude_labels(gf)
    gf.set_defaults(func=cmd_genes_fit)
    ge = g.add_parser("embed", help="write a fitted encoder's latent into obsm")
    ge.add_argument("--data", required=True)
    ge.add_argument("--genes", required=True, help="an encoder folder from `stguide genes fit`")
    ge.add_argument("--out", required=True, help="the .h5ad to write")
    ge.set_defaults(func=cmd_genes_embed)

    ga = g.add_parser("audit", help="scib-metrics batch/biology table and UMAPs of gene representations")
    ga.add_argument("--data", required=True)
    ga.add_argument("--encoders", nargs="+", default=encoders, help=f"gene encoders (default: all, {encoders})")
    ga.add_argument("--out", required=True, help="folder for audit.csv, audit.md, umap.png")
    ga.add_argument("--epochs", type=_epochs_arg, help="scVI/SysVI epochs: a number or auto")
    ga.add_argument("--config", help="a YAML file with a 'genes:' section")
    exclude_labels(ga)
    ga.set_defaults(func=cmd_genes_audit)
    gl = g.add_parser("lopo", help="gene-side LOPO: probes on each representation predict a held-out patient's labels")
    gl.add_argument("--data", required=True)
    gl.add_argument("--encoders", nargs="+", default=encoders, help=f"gene encoders (default: all, {encoders})")
    gl.add_argument("--out", required=True)
    gl.add_argument("--epochs", type=_epochs_arg, help="scVI/SysVI epochs: a number or auto")
    gl.add_argument("--config", help="a YAML file with a 'genes:' section (and optionally 'probe:', the probes' settings)")
    gl.add_argument("--batch-key", default="patient", choices=["patient", "section"],
                    help="the batch the encoders correct for (default patient); folds always hold out whole patients")
    exclude_labels(gl)
    gl.set_defaults(func=cmd_genes_lopo)

    t = sub.add_parser("train", help="stage 2: train an image encoder against a fitted gene encoder")
    t.add_argument("--data", required=True, help="a dataset .h5ad")
    t.add_argument("--genes", required=True, help="an encoder folder from `stguide genes fit`; refused when fitted on an --exclude-patients patient")
    t.add_argument("--out", required=True, help="output folder (checkpoints, logs, embeddings.h5ad)")
    t.add_argument("--backbone", help=f"a timm model name or hf-hub:ORG/REPO (default {cc.backbone})")
    t.add_argument("--init", help=f"weights: one of {list(INITS)} (default {cc.init})")
    t.add_argument("--loss", help=f"one of {sorted(LOSSES)} (default {cc.loss})")
    t.add_argument("--loss-kwargs", help='JSON options of the loss, e.g. \'{"alpha": 0.5}\'')
    t.add_argument("--epochs", type=int, help=f"default {cc.epochs}")
    t.add_argument("--batch-size", type=int, help=f"default {cc.batch_size}")
    patch_flags(t)
    t.add_argument("--patch-cache", help="patch cache folder (default OUT/patches)")
    t.add_argument("--exclude-patients", nargs="*", help="patients never trained on (the ones the image encoder will be judged on)")
    exclude_labels(t)
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    t.add_argument("--config", help="a YAML file with a 'contrastive:' section")
    t.set_defaults(func=cmd_train)

    dl = sub.add_parser("download", help="fetch a public release (resumable, sha256-verified, safe extraction)")
    dl.add_argument("source", choices=["her2st", "hest"])
    dl.add_argument("--out", required=True, help="the folder to fill (the reader's root)")
    dl.add_argument("--ids", nargs="*", help="HEST-1k ids, e.g. SPA145 SPA141")
    dl.add_argument("--base-url", help="a mirror of the release (default: its public host)")
    dl.add_argument("--manifest", help="a sha256sum file or URL (default: BASE_URL/SHA256SUMS)")
    dl.set_defaults(func=cmd_download)

    rep = sub.add_parser("report", help="rebuild report.md and report.html (with figures) from a run folder")
    rep.add_argument("run_dir")
    rep.set_defaults(func=cmd_report)

    ex = sub.add_parser("export", help="write a model bundle (weights, probe, manifest, model card) from a run folder")
    ex.add_argument("run_dir", help="the --out folder of `stguide experiment`")
    ex.add_argument("--method", required=True, help="a method of the run, e.g. ours-scvi")
    which = ex.add_mutually_exclusive_group()
    which.add_argument("--fold", help="the fold whose model to export (the model trained without that patient; default: the first)")
    which.add_argument("--refit-all", action="store_true",
                       help="retrain the method on every patient with the run's settings (cached under RUN_DIR/refit/) and export that")
    ex.add_argument("--seed", type=int, default=0, help="which seed's model, for runs with several seeds (default 0)")
    ex.add_argument("--k", type=int, default=50, help="reference spots averaged when predicting expression (default 50)")
    ex.add_argument("--out", required=True, help="the bundle folder to write")
    ex.add_argument("--no-progress", action="store_true", help="no progress bars (--refit-all)")
    ex.set_defaults(func=cmd_export)

    pr = sub.add_parser("predict", help="apply a model bundle to a whole-slide image without ST (subtype map, tiles, GeoJSON)")
    pr.add_argument("slide", nargs="+", help="svs, ndpi, mrxs, tiff (pyramidal or not), a large JPEG/PNG, or a SpatialData image "
                    "element (STORE.zarr/images/NAME); several slides: one job each, written to OUT/<slide name>/")
    pr.add_argument("--model", required=True, help="a bundle folder from `stguide export`")
    pr.add_argument("--out", required=True, help="the output folder")
    pr.add_argument("--um-per-px", type=float, help="the slide's µm per pixel at full resolution (default: from its metadata)")
    pr.add_argument("--batch-size", type=int, default=64, help="tiles per forward pass (default 64)")
    pr.add_argument("--min-tissue", type=float, default=0.5, help="the tissue fraction a tile needs to be kept (default 0.5)")
    pr.add_argument("--genes", nargs="+", help="predicted expression of these genes per tile (retrieval; gene-guided models)")
    pr.add_argument("--map-gene", help="draw this gene's predicted expression as map_<gene>.png")
    pr.add_argument("--spatialdata", metavar="STORE.zarr",
                    help="also add the tiles (squares) and their table to this SpatialData store (created when missing), "
                         "beside the slide's image (stguide[spatialdata])")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    executor_flags(pr)
    pr.add_argument("--config", help="a YAML file whose executor: section holds the cluster settings (--executor slurm)")
    pr.set_defaults(func=cmd_predict)

    xp = sub.add_parser("expression", help="image → expression (retrieval and ridge), leave-one-patient-out on a finished run")
    xp.add_argument("run_dir", help="the --out folder of `stguide experiment`")
    xp.add_argument("--method", required=True, help="a method of the run (retrieval needs a gene-guided one)")
    xp.add_argument("--n-hvg", type=int, default=50, help="top highly variable genes of the training patients scored (default 50)")
    xp.add_argument("--markers", nargs="*", help="marker genes scored too (default: ERBB2 ESR1 EPCAM PTPRC COL1A1 PLIN1 KRT5 ACTA2)")
    xp.add_argument("--k", type=int, default=50, help="reference spots averaged by retrieval (default 50)")
    xp.add_argument("--out", required=True, help="folder for results.json and table.md")
    xp.set_defaults(func=cmd_expression)
    return p


_STOPPED_BY: list[int] = []  # the signal that stopped the current command, if any


def _stop(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM handler: remember the signal and raise KeyboardInterrupt where Python is running.

    Lightning turns a KeyboardInterrupt inside ``fit`` into ``sys.exit(1)`` and its own SIGTERM handling into a
    ``SystemExit`` with status 0, so :func:`main` needs the remembered signal to report a stop as a stop.
    """
    _STOPPED_BY.append(signum)
    raise KeyboardInterrupt


def _interrupted() -> int:
    signum = _STOPPED_BY[-1] if _STOPPED_BY else signal.SIGINT
    print(f"stopped by {signal.Signals(signum).name}. The same command run again reuses the LOPO and experiment cells "
          "that finished; `stguide train --resume` continues from the last checkpoint.", file=sys.stderr)
    return 128 + signum


def main(argv: list[str] | None = None) -> int:
    from stguide.errors import DataWarning, InputError, LeakageError
    from stguide.executors import JobsFailed

    args = build_parser().parse_args(argv)
    warnings.simplefilter("default", DataWarning)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"{cat.__name__}: {msg}\n"
    _STOPPED_BY.clear()
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal.signal works only there
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
    try:
        args.func(args)
    except (InputError, LeakageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except JobsFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _interrupted()
    except SystemExit:
        if not _STOPPED_BY:
            raise
        return _interrupted()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 0


if __name__ == "__main__":
    sys.exit(main())
