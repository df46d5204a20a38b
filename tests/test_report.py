"""Report rendering: one colour per class everywhere, and no '± 0.000' for a mean over a single fold."""
import numpy as np

from stguide.report.markdown import method_table
from stguide.report.palette import CLASS_COLOURS, class_colour, class_colours


def test_a_class_has_one_colour_in_every_figure(tmp_path, monkeypatch):
    """The UMAP's label panel and the spot maps take their colours from the one palette: a class keeps its colour
    whatever other classes a figure holds, and an unknown class name always gets the same colour."""
    import matplotlib.axes

    from stguide.report.figures import plot_umaps

    drawn: dict[str, object] = {}
    real = matplotlib.axes.Axes.scatter

    def spy(self, x, y, *a, label=None, c=None, **kw):
        if c is not None:
            drawn[label] = c
        return real(self, x, y, *a, label=label, c=c, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", spy)
    xy = np.random.default_rng(0).normal(size=(6, 2))
    plot_umaps({"m": (xy, np.array(["P1"] * 6), np.array(["adipose tissue", "invasive cancer", None, "my class",
                                                            "adipose tissue", "invasive cancer"], dtype=object))},
               tmp_path / "u.png")
    assert drawn == {"adipose tissue": CLASS_COLOURS["adipose tissue"], "invasive cancer": CLASS_COLOURS["invasive cancer"],
                     "unlabelled": CLASS_COLOURS["unlabelled"], "my class": class_colour("my class")}
    assert class_colours(["invasive cancer"])["invasive cancer"] == class_colours(["x", "invasive cancer"])["invasive cancer"]
    assert len(set(CLASS_COLOURS.values())) == len(CLASS_COLOURS)


def test_the_confusion_matrix_names_each_class_in_its_colour(tmp_path, monkeypatch):
    """The confusion matrices' class names (both axes) are drawn in the palette's colours, read back from a figure
    made from a run folder's predictions."""
    import matplotlib.colors

    from stguide.evaluate.cache import save_npz
    from stguide.report import figures

    cell = tmp_path / "folds" / "P1" / "m"
    cell.mkdir(parents=True)
    save_npz(cell / "predictions.npz", y_true=np.array(["adipose tissue", "my class", "invasive cancer"]),
             y_pred=np.array(["adipose tissue", "invasive cancer", "invasive cancer"]))
    (cell / "metrics.json").write_text("{}")
    seen = {}
    real_save = figures._save

    def keep(fig, path):
        ax = fig.axes[0]
        for t in (*ax.get_xticklabels(), *ax.get_yticklabels()):
            seen.setdefault(t.get_text(), set()).add(matplotlib.colors.to_hex(t.get_color()))
        return real_save(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    assert figures.confusion_figure(tmp_path, ["m"], ["invasive cancer", "adipose tissue", "my class"], tmp_path / "c.png")
    assert seen == {"invasive cancer"[:14]: {CLASS_COLOURS["invasive cancer"]}, "adipose tissue": {CLASS_COLOURS["adipose tissue"]},
                    "my class": {class_colour("my class")}}  # names are cut at 14 characters


def test_a_single_fold_mean_shows_no_spread():
    one = {"methods": {"a": {"folds": {"P1": {"bacc": 0.5}}, "mean": {"bacc": 0.5}, "sd": {"bacc": 0.0}}}}
    two = {"methods": {"a": {"folds": {"P1": {"bacc": 0.4}, "P2": {"bacc": 0.6}}, "mean": {"bacc": 0.5}, "sd": {"bacc": 0.141}}}}
    assert "± 0.000" not in method_table(one) and "| 0.500 |" in method_table(one)
    assert "0.500 ± 0.141" in method_table(two)
