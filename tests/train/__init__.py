"""Training tests. ``rsfm_train`` reads its configs with PyYAML at import; where that is
missing (the bare GPU image, which has none of the training stack) every module here is
skipped with this reason instead of failing collection."""

import pytest

pytest.importorskip("yaml", reason="rsfm_train needs PyYAML (pip install -e '.[train]')")
