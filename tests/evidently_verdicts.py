"""Evidently's per-column drift verdicts on cases written as Parquet (run by the Evidently venv's Python, which
`make test` builds as .venv-evidently: Evidently 0.7 needs pandas < 3, the project's venv has pandas 3).

    evidently_verdicts.py FOLDER   # FOLDER/meta.json: {"numerical": [...], "categorical": [...]},
                                   # FOLDER/reference.parquet, FOLDER/<case>.parquet for each case
prints {case: {"seconds": s, "columns": {column: {"test": name, "score": x, "drift": bool}}}} as JSON.
"""

import json
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
from evidently.legacy.metric_preset import DataDriftPreset
from evidently.legacy.pipeline.column_mapping import ColumnMapping
from evidently.legacy.report import Report

warnings.simplefilter("ignore")
folder = Path(sys.argv[1])
meta = json.loads((folder / "meta.json").read_text())
reference = pd.read_parquet(folder / "reference.parquet")
mapping = ColumnMapping(numerical_features=meta["numerical"], categorical_features=meta["categorical"],
                        prediction="prediction" if "prediction" in reference.columns else None, target=None)
out = {}
for path in sorted(folder.glob("*.parquet")):
    if path.stem == "reference":
        continue
    current = pd.read_parquet(path)
    start = time.perf_counter()
    report = Report(metrics=[DataDriftPreset()])
    report.run(reference_data=reference, current_data=current, column_mapping=mapping)
    result = report.as_dict()
    seconds = time.perf_counter() - start
    table = next(m for m in result["metrics"] if m["metric"] == "DataDriftTable")["result"]["drift_by_columns"]
    out[path.stem] = {"seconds": seconds, "columns": {
        col: {"test": v["stattest_name"], "score": v["drift_score"], "drift": bool(v["drift_detected"])}
        for col, v in table.items()}}
print(json.dumps(out))
