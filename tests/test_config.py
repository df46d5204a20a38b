"""The configuration spine: every name and option of an experiment YAML is checked when it is loaded (before any
data is read), errors name the key and the allowed values, and the CLI's defaults are the dataclasses'."""
import pytest

from stguide.cli import build_parser
from stguide.contrastive import ContrastiveConfig
from stguide.data.patches import PatchConfig
from stguide.errors import InputError
from stguide.evaluate.config import ExperimentConfig, load_config, preset_path
from stguide.genes import ENCODERS, GeneConfig, get_encoder

# data that do not exist: a config error must be found without reading them
MISSING_DATA = "data: {format: her2st, path: /nonexistent/her2st}\n"


@pytest.mark.parametrize("yaml, key, allowed", [
    ("methods: [{name: m, gene_encoder: scvvi, loss: clip}]", "gene_encoder", "scanvi"),
    ("methods: [{name: m, gene_encoder: scvi, loss: infonce}]", "loss", "inter-soft"),
    ("contrastive: {loss: inter-soft, loss_kwargs: {alpha: 2}}", "contrastive.loss_kwargs", "alpha"),
    ("contrastive: {loss: clip, loss_kwargs: {alpha: 0.5}}", "contrastive.loss_kwargs", "no options"),
    ("contrastive: {init: imagenett}", "contrastive.init", "file:PATH"),
    ("contrastive: {init: 'file:'}", "contrastive.init", "file:PATH"),
    ("contrastive: {supcon_labels: scanvii}", "contrastive.supcon_labels", "scanvi"),
    ("contrastive: {backbone: resnet19}", "contrastive.backbone", "timm"),
    ("data: {format: her3st, path: x}", "data.format", "hest"),
    ("data: {format: hest, path: x, options: {label_dir: y}}", "data.options.label_dir", "labels_dir"),
    ("data: {format: hest}", "data.path", "path"),
    ("genes: {scvi: {gene_likelihood: gauss}}", "genes.scvi.gene_likelihood", "zinb"),
    ("genes: {harmony: {query: symphonyy}}", "genes.harmony.query", "symphony"),
    ("genes: {max_epochs: 10}", "genes.max_epochs", "scvi"),
    ("patches: {outside: crop}", "patches.outside", "pad"),
    ("probe: {features: neck}", "probe.features", "both"),
    ("probe: {centre: section}", "probe.centre", "patient"),
    ("contrastive: {backbone: resnet10t, trunk: partial, trunk_blocks: 9}", "contrastive.trunk_blocks", "1..4"),
    ("contrastive: {views: 0}", "contrastive.views", "views"),
    ("contrastive: {trunk: half}", "contrastive.trunk", "frozen"),
    ("contrastive: {batching: per-patient}", "contrastive.batching", "trunk: frozen"),
    ("lopo: {seeds: 0}", "lopo.seeds", "seeds"),
    ("methods: [{name: '../x'}]", "name", "letters"),
    ("methods: [{name: ours/seed1, gene_encoder: scvi, loss: clip}]", "name", "seed<k>"),
    ("lopo: {contrasts: [[ours-scvi, clipp]]}", "lopo.contrasts[0]", "ours-scanvi"),
    ("methods: [{name: m, gene_encoder: scvi, loss: clip, seeds: 0}]", "seeds", "lopo.seeds"),
    ("methods: [{name: m, contrastive: {shuffle_targets: true}}]", "methods.m", "gene_encoder"),
    ("methods: [{name: m, gene_encoder: sysvi, loss: clip, contrastive: {finetune_gene_encoder: true}}]",
     "methods.m.contrastive.finetune_gene_encoder", "scvi or scanvi"),
    ("methods: [{name: m, gene_encoder: scvi, loss: supcon, contrastive: {supcon_labels: scanvi}}]",
     "methods.m.contrastive.supcon_labels", "scanvi"),
    ("methods: [{name: m, gene_encoder: scvi}]", "loss", "neither"),
])
def test_bad_names_are_refused_at_load_naming_the_key(tmp_path, yaml, key, allowed):
    f = tmp_path / "x.yaml"
    f.write_text(MISSING_DATA + yaml + "\n" if not yaml.startswith("data:") else yaml + "\n")
    with pytest.raises(InputError) as e:
        load_config(f)
    assert key in e.value.file and str(f) in e.value.file, e.value.file
    assert allowed in e.value.problem + e.value.fix, str(e.value)
    assert "nonexistent" not in str(e.value)  # found before the data were looked at


def test_presets_and_experiment_yamls_load():
    for name in ("demo", "demo-quick"):
        cfg = load_config(preset_path(name))
        assert cfg.patches.size_um == 100.0 and [m.name for m in cfg.methods] == ["random-init", "ours-scvi-clip"]
    from pathlib import Path

    for f in sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml")):
        doc = __import__("yaml").safe_load(f.read_text())
        if "data" in doc:
            load_config(f)
        else:
            GeneConfig.from_dict(doc["genes"])


def test_cli_defaults_are_the_dataclasses():
    p = build_parser()
    args = p.parse_args(["train", "--data", "d", "--genes", "g", "--out", "o"])
    assert args.size_um is None and args.backbone is None  # unset flags fall back to the dataclass defaults
    pc, cc = PatchConfig(), ContrastiveConfig()
    helps = {a.dest: a.help for a in p._subparsers._group_actions[0].choices["train"]._actions}
    assert f"default {pc.size_um:g}" in helps["size_um"] and f"default {pc.out_px}" in helps["out_px"]
    assert f"default {cc.backbone}" in helps["backbone"] and f"default {cc.epochs}" in helps["epochs"]
    genes = p._subparsers._group_actions[0].choices["genes"]
    audit = genes._subparsers._group_actions[0].choices["audit"]
    assert next(a for a in audit._actions if a.dest == "encoders").default == list(ENCODERS)


def test_gene_cache_key_holds_only_what_the_encoder_reads():
    base = GeneConfig()
    more = GeneConfig.from_dict({"scvi": {"max_epochs": 7}})
    assert get_encoder("pca", base).settings() == get_encoder("pca", more).settings()
    assert get_encoder("scvi", base).settings() != get_encoder("scvi", more).settings()
    assert get_encoder("scanvi", more).settings()["scvi"]["max_epochs"] == 7
    assert "scvi" not in get_encoder("harmony", base).settings() and "pca" in get_encoder("harmony", base).settings()


def test_default_experiment_validates_its_methods():
    cfg = ExperimentConfig()
    assert [m.name for m in cfg.all_methods()][:6] == ["random", "imagenet", "clip", "bleep", "ours-scvi", "ours-scanvi"]
    assert cfg.ablation_rows() == ["scanvi+clip", "scanvi+gene-soft", "ours-scanvi", "scanvi+supcon"]
