"""Models saved before hook API 2.0 load unchanged and score exactly as they did.

``tests/fixtures/hook_api_1/model`` was trained and saved by rankengine at hook API 1.0
(commit 3202da3, ``rankengine train`` on a tiny simulated funnel); ``preds.csv`` holds what
that version's ``rankengine predict`` wrote for the 30 rows of ``rows.parquet``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from rankengine.artifact import load_artifact
from rankengine.predict import score_table

FIXTURE = Path(__file__).parent / "fixtures" / "hook_api_1"


def test_a_model_saved_at_hook_api_1_loads_and_scores_as_it_did() -> None:
    loaded = load_artifact(FIXTURE / "model")
    assert loaded.config.model.backbone.kind != "default"  # the saved config names components
    scored = score_table(loaded, pq.read_table(FIXTURE / "rows.parquet"))
    before = pa_csv.read_csv(FIXTURE / "preds.csv")
    assert before.num_rows == 30
    for name in before.column_names:
        np.testing.assert_allclose(np.asarray(scored[name]),
                                   before.column(name).to_numpy(), rtol=1e-5, atol=1e-7,
                                   err_msg=name)
