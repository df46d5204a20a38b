import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# submitit configures its logger with logging.config.dictConfig when first imported, which closes every handler that
# exists then. absl's handler (imported with scvi-tools' jax) closes its stream unless that stream is sys.stderr at
# the moment: under pytest it is the session's capture file, so a test importing submitit after any scvi fit closed
# pytest's own capture ("I/O operation on closed file", then "lost sys.stderr"). Imported here, first, it closes
# nothing of anyone's. (Outside pytest absl's stream is sys.stderr itself, which it never closes.)
try:
    import submitit  # noqa: F401
except ImportError:  # the cluster extra is optional; its tests skip or check the error
    pass
REALDATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not (REALDATA / "her2st").is_dir():
        pytest.skip("../shared/realdata is absent")
    return REALDATA.resolve()


@pytest.fixture(scope="session")
def her2st(realdata):
    """All 36 HER2ST sections, read once; also the warnings shown while reading."""
    from stguide.data import read_her2st

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = read_her2st(realdata / "her2st", progress=False)
    return a, [str(w.message) for w in caught]


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    from stguide.data import make_synthetic

    return make_synthetic(n_patients=3, sections_per_patient=1, spots_per_section=64, seed=1,
                          image_dir=tmp_path_factory.mktemp("syn"))
