"""Prometheus alert rules for the gauges a serving package's /metrics exports (see its monitoring.py)."""

from __future__ import annotations

import json
import re

from ..errors import InvalidInput


def alert_rules(hold: str = "10m", min_rows: int = 100) -> str:
    """Rules (YAML; JSON is YAML) that fire when a feature or the prediction has drifted for ``hold`` on at
    least ``min_rows`` logged rows, when the prediction log drops rows, and when drift stops being computed."""
    if not re.fullmatch(r"\d+(ms|s|m|h|d|w|y)", hold or ""):
        raise InvalidInput(f"{hold!r} is not a Prometheus duration; give a number and a unit, e.g. 10m, 1h or 0s.",
                           what="for", value=hold)
    enough = f"on (job, instance) serving_drift_rows >= {min_rows}"

    def drift(alert: str, kind: str, severity: str, what: str) -> dict:
        return {"alert": alert, "expr": f'max by (job, instance, column) (serving_drift_score{{kind="{kind}"}}) >= 1 '
                                        f"and {enough}",
                "for": hold, "labels": {"severity": severity},
                "annotations": {"summary": f"{what} {{{{ $labels.column }}}} drifted on {{{{ $labels.instance }}}}",
                                "description": "drift score {{ $value | printf \"%.2f\" }} (1 = its calibrated "
                                               "threshold) against the model's training data; run `mlops monitor` "
                                               "on the package for the report"}}

    rules = [
        drift("ServingFeatureDrift", "feature", "warning", "feature"),
        drift("ServingPredictionDrift", "prediction", "critical", "the model's"),
        {"alert": "ServingPredictionLogDropping", "expr": "sum by (job, instance) "
                                                          "(rate(serving_log_dropped_rows_total[5m])) > 0",
         "for": hold, "labels": {"severity": "warning"},
         "annotations": {"summary": "{{ $labels.instance }} drops prediction-log rows",
                         "description": "rows lost to a full queue, the disk cap or write errors: drift is computed "
                                        "on fewer rows than were served"}},
        {"alert": "ServingDriftStale", "expr": "time() - serving_drift_checked_timestamp_seconds > 3600",
         "for": hold, "labels": {"severity": "warning"},
         "annotations": {"summary": "drift on {{ $labels.instance }} has not been computed for an hour",
                         "description": "the package's background drift check is failing; see its log"}},
    ]
    return json.dumps({"groups": [{"name": "mlops-serving", "rules": rules}]}, indent=2) + "\n"
