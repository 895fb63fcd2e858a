"""Drift of live data against a model's training data: reference profiles, the statistical tests, and
calibrated thresholds.

This module imports numpy and scipy only: `mlops serve generate` copies it into the serving package
(as drift.py), whose /metrics recomputes drift gauges from the package's own prediction log with it.

A reference profile holds, per column (each input feature and the model's prediction): its type, row
and missing counts, and either its values (a reference of up to SMALL rows: exact two-sample tests) or
a quantile sketch and category counts (a larger one: a check never reloads the training set).

The test per column is chosen as Evidently chooses it: up to SMALL reference rows, Kolmogorov-Smirnov
for a numeric column with more than 5 values, else chi-square (z-test for two values); past SMALL rows,
the normed Wasserstein distance for such a numeric column, else the Jensen-Shannon distance. PSI on
request. Each test keeps Evidently's default threshold, made stricter where needed so that unchanged
data raises at most FALSE_ALARMS of alarms per check over all its columns together: p-value tests are
Bonferroni-corrected over the columns; distance tests are calibrated when the reference is built, on
random batches drawn from the reference itself (a permutation check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

PROFILE_FORMAT = 1
SMALL = 1000  # reference rows up to which values are kept (Evidently's switch from p-values to distances)
QUANTILES = 1001  # points of a large reference's quantile sketch
MAX_CATEGORIES = 1000  # a column's most frequent categories kept; the rest are counted as one
FEW_VALUES = 5  # a numeric column with at most this many values is tested as categories (as Evidently does)
FALSE_ALARMS = 0.01  # the rate of checks on unchanged data that may alarm
CALIBRATION_BATCHES = 400
CALIBRATION_TARGET = 0.005  # calibrated to half the goal: 400 draws estimate the tail with that much noise
PREDICTION = "prediction"


class ProfileError(ValueError):
    """A reference profile this module cannot read (another format, or not a profile)."""


# ---- the tests: a registry, as Evidently keeps them --------------------------------------------------
@dataclass(frozen=True)
class StatTest:
    name: str
    title: str
    pvalue: bool  # True: drift when the statistic is at most the threshold; False: at least
    threshold: float  # Evidently's default
    exponent: float  # a distance on unchanged data shrinks as rows ** -exponent
    fn: Callable[[dict, np.ndarray], float]


TESTS: dict[str, StatTest] = {}


def _test(name: str, title: str, pvalue: bool, threshold: float, exponent: float = 0.5):
    def register(fn):
        TESTS[name] = StatTest(name, title, pvalue, threshold, exponent, fn)
        return fn
    return register


def _counts(col: dict, cur: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
    """The union of reference and current categories (current values as text), and the counts of each."""
    keys, cur_counts = np.unique(cur.astype(str), return_counts=True) if len(cur) else (np.array([]), np.array([]))
    ref = dict(col["counts"])
    have = dict(zip(keys.tolist(), cur_counts.tolist()))
    union = list(ref) + [k for k in have if k not in ref]
    ref_counts = np.array([ref.get(k, 0) for k in union], dtype=float)
    cur_all = np.array([have.get(k, 0) for k in union], dtype=float)
    if col.get("other"):  # categories past MAX_CATEGORIES: one bucket on both sides (a current value not kept
        ref_counts = np.append(ref_counts, col["other"])  # among them may be one of those: counted as new)
        cur_all = np.append(cur_all, 0.0)
        union.append(None)
    return union, ref_counts, cur_all


def _ref_cdf(col: dict, x: np.ndarray) -> np.ndarray:
    if "values" in col:
        values = np.asarray(col["values"], dtype=float)
        return np.searchsorted(values, x, side="right") / max(len(values), 1)
    q = np.asarray(col["quantiles"], dtype=float)
    p = np.linspace(0.0, 1.0, len(q))
    return np.interp(x, q, p, left=0.0, right=1.0)


def _binned(col: dict, cur: np.ndarray, fill_zeroes: bool) -> tuple[np.ndarray, np.ndarray]:
    """Shares per bin as Evidently bins them: categories, or Sturges bins over both samples' range."""
    if col["type"] == "cat" or "counts" in col:
        _, ref, now = _counts(col, cur)
    else:
        lo, hi = min(col["min"], float(cur.min()) if len(cur) else col["min"]), \
            max(col["max"], float(cur.max()) if len(cur) else col["max"])
        bins = int(math.ceil(math.log2(col["n"] + len(cur)) + 1))
        edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.array([lo - 0.5, lo + 0.5])
        ref = np.diff(_ref_cdf(col, edges)) * col["n"]
        ref[0] += _ref_cdf(col, edges[:1])[0] * col["n"]  # np.histogram's first bin is closed on the left
        now = np.histogram(cur, edges)[0].astype(float)
    ref_p, cur_p = ref / max(ref.sum(), 1e-12), now / max(now.sum(), 1e-12)
    if fill_zeroes:
        for arr in (ref_p, cur_p):
            nonzero = arr[arr > 0]
            small = nonzero.min() if len(nonzero) else 1.0
            arr[arr == 0] = small / 1e6 if small <= 1e-4 else 1e-4
    return ref_p, cur_p


@_test("ks", "Kolmogorov-Smirnov p-value", pvalue=True, threshold=0.05)
def _ks(col: dict, cur: np.ndarray) -> float:
    from scipy import stats

    if "values" in col:
        return float(stats.ks_2samp(np.asarray(col["values"], dtype=float), cur).pvalue)
    return float(stats.kstest(cur, lambda x: _ref_cdf(col, np.asarray(x))).pvalue)


@_test("chisquare", "chi-square p-value", pvalue=True, threshold=0.05)
def _chisquare(col: dict, cur: np.ndarray) -> float:
    _, ref, now = _counts(col, cur)
    expected = ref * (now.sum() / max(ref.sum(), 1e-12))
    if np.any((expected == 0) & (now > 0)):
        return 0.0  # a category the reference never saw: as unlikely as it gets
    keep = expected > 0
    chi = float(np.sum((now[keep] - expected[keep]) ** 2 / expected[keep]))
    from scipy import stats

    return float(stats.chi2.sf(chi, max(int(keep.sum()) - 1, 1)))


@_test("z", "z-test p-value (two values)", pvalue=True, threshold=0.05)
def _z(col: dict, cur: np.ndarray) -> float:
    from scipy import stats

    keys, ref, now = _counts(col, cur)
    if len(keys) < 2:
        return 1.0
    first = keys.index(min(k for k in keys if k is not None))  # Evidently tests the share of the first sorted value
    n1, n2 = ref.sum(), now.sum()
    p1, p2 = ref[first] / max(n1, 1e-12), now[first] / max(n2, 1e-12)
    p = (ref[first] + now[first]) / max(n1 + n2, 1e-12)
    se = math.sqrt(max(p * (1 - p) * (1 / max(n1, 1) + 1 / max(n2, 1)), 0.0))
    if se == 0:
        return 1.0 if p1 == p2 else 0.0
    return float(2 * stats.norm.sf(abs(p1 - p2) / se))


@_test("wasserstein", "normed Wasserstein distance", pvalue=False, threshold=0.1)
def _wasserstein(col: dict, cur: np.ndarray) -> float:
    """W1 between the reference's distribution and the current values, over the reference's std."""
    norm = max(col["std"], 0.001)
    if not len(cur):
        return 0.0
    if "values" in col:
        from scipy import stats

        return float(stats.wasserstein_distance(np.asarray(col["values"], dtype=float), cur) / norm)
    cur = np.sort(cur)
    q = np.asarray(col["quantiles"], dtype=float)
    x = np.union1d(q, cur)
    mids = (x[:-1] + x[1:]) / 2
    gap = np.abs(_ref_cdf(col, mids) - np.searchsorted(cur, mids, side="right") / len(cur))
    return float(np.sum(gap * np.diff(x)) / norm)


@_test("jensenshannon", "Jensen-Shannon distance", pvalue=False, threshold=0.1)
def _jensenshannon(col: dict, cur: np.ndarray) -> float:
    from scipy.spatial import distance

    ref_p, cur_p = _binned(col, cur, fill_zeroes=False)
    return float(distance.jensenshannon(ref_p, cur_p)) if cur_p.sum() > 0 else 0.0


@_test("psi", "population stability index", pvalue=False, threshold=0.1, exponent=1.0)
def _psi(col: dict, cur: np.ndarray) -> float:
    ref_p, cur_p = _binned(col, cur, fill_zeroes=True)
    return float(np.sum((ref_p - cur_p) * np.log(ref_p / cur_p)))


def default_test(col: dict) -> str:
    """Evidently's choice for a column, by its type, reference size and number of values."""
    few = col["type"] == "cat" or col.get("unique", FEW_VALUES + 1) <= FEW_VALUES
    if col["n"] <= SMALL:
        if not few:
            return "ks"
        return "chisquare" if col.get("unique", 3) > 2 else "z"
    return "jensenshannon" if few else "wasserstein"


# ---- profiles -----------------------------------------------------------------------------------------
def _is_numeric(values: np.ndarray) -> bool:
    return values.dtype.kind in "iuf"


def _column(values: np.ndarray) -> dict:
    """The profile of one column's values (a 1-D array; None / NaN are missing)."""
    values = np.asarray(values)
    if _is_numeric(values):
        values = values.astype(float)
        missing = np.isnan(values)
        present = np.sort(values[~missing])
        col = {"type": "num", "n": int(len(present)), "missing": int(missing.sum())}
        if len(present):
            col.update(mean=float(present.mean()), std=float(present.std()), min=float(present[0]),
                       max=float(present[-1]))
        else:
            col.update(mean=0.0, std=0.0, min=0.0, max=0.0)
        uniq, counts = np.unique(present, return_counts=True)
        col["unique"] = int(len(uniq))
        if len(uniq) <= FEW_VALUES:
            col["counts"] = dict(zip(as_text(uniq).tolist(), counts.tolist()))
        if len(present) <= SMALL:
            col["values"] = present.tolist()
        else:
            col["quantiles"] = np.quantile(present, np.linspace(0, 1, QUANTILES)).tolist()
        return col
    missing = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in values], dtype=bool)
    uniq, counts = np.unique(values[~missing].astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    kept = order[:MAX_CATEGORIES]
    return {"type": "cat", "n": int((~missing).sum()), "missing": int(missing.sum()), "unique": int(len(uniq)),
            "counts": {str(uniq[i]): int(counts[i]) for i in kept}, "other": int(counts[order[MAX_CATEGORIES:]].sum())}


def _key(value) -> str:
    """A numeric category as the text its current values will have (2.0 and 2 name one value)."""
    return str(int(value)) if float(value).is_integer() else str(value)


def as_text(values: np.ndarray) -> np.ndarray:
    """Values as category names: numbers as _key writes them (vectorised: a log holds millions of rows)."""
    if not _is_numeric(values):
        return values.astype(str)
    values = values.astype(float)
    out = values.astype(str).astype(object)
    whole = np.isfinite(values) & (values == np.floor(values))
    out[whole] = values[whole].astype(np.int64).astype(str)
    return out


def profile(columns: dict[str, np.ndarray], model: dict | None = None, seed: int = 0) -> dict:
    """The reference profile of ``columns`` (name -> 1-D array, the prediction under PREDICTION), with each
    column's default test and thresholds calibrated on random batches of the same rows."""
    cols = {name: _column(values) for name, values in columns.items()}
    for col in cols.values():
        col["test"] = default_test(col)
    ref = {"format": PROFILE_FORMAT, "model": model or {}, "rows": max((len(v) for v in columns.values()), default=0),
           "columns": cols}
    ref["calibration"] = calibrate(ref, columns, seed=seed)
    return ref


def _present(values: np.ndarray, col: dict) -> np.ndarray:
    """The non-missing values of a current column, as the column's test reads them."""
    values = np.asarray(values)
    if col["type"] == "num" and _is_numeric(values):
        values = values.astype(float)
        values = values[~np.isnan(values)]
        return as_text(values) if "counts" in col and col["test"] not in ("ks", "wasserstein") else values
    if col["type"] == "num":  # a numeric column read back as text: a log that held a non-number
        out = []
        for v in values:
            try:
                out.append(float(v))
            except (TypeError, ValueError):
                pass
        return _present(np.array(out, dtype=float), col)
    if values.dtype.kind == "U":  # text with no gaps (the log's reader gives that)
        return values
    return np.array([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))],
                    dtype=object).astype(str)


def _test_for(col: dict, override: str | None) -> str:
    if override is None:
        return col["test"]
    if override in ("ks", "wasserstein") and col["type"] == "cat":
        return col["test"]  # a distribution test for numbers only: categories keep theirs
    return override


def calibrate(ref: dict, columns: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Per column and distance test: the median of statistic * rows**exponent over random batches of the
    reference's own rows (sizes drawn log-uniformly), and one factor over all columns such that at most
    CALIBRATION_TARGET of the batches have any column past factor * median / rows**exponent."""
    n = ref["rows"]
    hi = max(10, min(5000, n // 4))
    lo = min(30, hi)
    rng = np.random.default_rng(seed)
    tests = {name: [t for t in dict.fromkeys([col["test"], "psi"]) if not TESTS[t].pvalue]
             for name, col in ref["columns"].items()}
    if n < 20 or not any(tests.values()):
        return {"batches": 0}
    scaled = {(name, t): [] for name, ts in tests.items() for t in ts}
    sizes = np.exp(rng.uniform(math.log(lo), math.log(hi), CALIBRATION_BATCHES)).astype(int)
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    for m in sizes:
        rows = rng.choice(n, size=int(m), replace=False)
        for name, ts in tests.items():
            col = ref["columns"][name]
            cur = _present(arrays[name][rows], {**col, "test": ts[0]})
            for t in ts:
                value = TESTS[t].fn(col, cur if t == ts[0] else _present(arrays[name][rows], {**col, "test": t}))
                # a subset of the reference is closer to it than new data, which also differs by the reference's
                # own sampling error: variance (1/m)(1 - m/n) against 1/m + 1/n
                scaled[(name, t)].append(value * m ** TESTS[t].exponent
                                         * ((1 + m / n) / max(1 - m / n, 0.05)) ** TESTS[t].exponent)
    out: dict = {"batches": CALIBRATION_BATCHES, "columns": {}, "factor": {}}
    for t in {t for ts in tests.values() for t in ts}:
        keys = [k for k in scaled if k[1] == t]
        medians = {k: max(float(np.median(scaled[k])), 1e-12) for k in keys}
        # the batch's worst column, in units of its own median: its tail sets one factor for all columns
        worst = np.max(np.array([np.asarray(scaled[k]) / medians[k] for k in keys]), axis=0)
        out["factor"][t] = float(np.quantile(worst, 1 - CALIBRATION_TARGET))
        for (name, _), median in medians.items():
            out["columns"].setdefault(name, {})[t] = median
    return out


def threshold(ref: dict, name: str, test: str, rows: int) -> float:
    """The column's threshold for a check of ``rows`` current rows: the test's default, stricter where the
    reference's calibration (or, for p-values, the number of columns) says the default would alarm more
    often than FALSE_ALARMS."""
    t = TESTS[test]
    if t.pvalue:
        return min(t.threshold, FALSE_ALARMS / max(len(ref["columns"]), 1))
    cal = ref.get("calibration", {})
    median = cal.get("columns", {}).get(name, {}).get(test)
    if median is None or not rows:
        return t.threshold
    return max(t.threshold, cal["factor"][test] * median / rows ** t.exponent)


def score(test: str, statistic: float, limit: float) -> float:
    """One scale for every test: 1 at the threshold, above it drift."""
    if TESTS[test].pvalue:
        return math.log(max(statistic, 1e-300)) / math.log(limit)
    return statistic / limit if limit > 0 else 0.0


def check_profile(ref: dict) -> dict:
    if not isinstance(ref, dict) or ref.get("format") != PROFILE_FORMAT or not isinstance(ref.get("columns"), dict):
        raise ProfileError(f"not a reference profile of format {PROFILE_FORMAT}")
    return ref


def compare(ref: dict, columns: dict[str, np.ndarray], stattest: str | None = None, plots: bool = False) -> list[dict]:
    """Each reference column against its current values (name -> 1-D array; a column absent from
    ``columns`` is skipped): statistic, threshold, score, drift, missing shares and unseen categories
    (and with ``plots``, both sides' shares over common bins)."""
    out = []
    for name, col in ref["columns"].items():
        if name not in columns:
            continue
        raw = np.asarray(columns[name])
        test = _test_for(col, stattest)
        cur = _present(raw, {**col, "test": test})
        missing = len(raw) - len(cur)
        row = {"column": name, "kind": "prediction" if name == PREDICTION else "feature", "test": test,
               "rows": int(len(raw)), "missing_share": missing / len(raw) if len(raw) else 0.0,
               "reference_missing_share": col["missing"] / max(col["n"] + col["missing"], 1)}
        if "counts" in col and not col.get("other"):  # every category kept: any other one is new
            seen = set(col["counts"])
            new = [v for v in np.unique(as_text(np.asarray(cur))).tolist() if v not in seen]
            row.update(unseen=new[:20], unseen_count=len(new))
        if len(cur):
            stat = TESTS[test].fn({**col, "test": test}, cur)
            limit = threshold(ref, name, test, len(cur))
            row.update(statistic=stat, threshold=limit, score=score(test, stat, limit),
                       drift=bool(score(test, stat, limit) >= 1.0))
            if plots:
                row["bins"] = histogram(col, cur if col["type"] == "cat" or "counts" in col
                                        else cur.astype(float))
        else:
            row.update(statistic=None, threshold=None, score=0.0, drift=False)
        out.append(row)
    return out


def histogram(col: dict, cur: np.ndarray, bins: int = 20) -> dict:
    """Reference and current shares over common bins (categories: the most frequent ones), for plots."""
    if "counts" in col:
        keys, ref, now = _counts(col, as_text(cur) if _is_numeric(cur) else cur.astype(str))
        order = np.argsort(-(ref / max(ref.sum(), 1) + now / max(now.sum(), 1)), kind="stable")[:12]
        return {"labels": [str(keys[i]) if keys[i] is not None else "(other)" for i in order],
                "reference": (ref[order] / max(ref.sum(), 1)).round(4).tolist(),
                "current": (now[order] / max(now.sum(), 1)).round(4).tolist()}
    lo = min(float(_quantile(col, 0.005)), float(np.min(cur)) if len(cur) else np.inf)
    hi = max(float(_quantile(col, 0.995)), float(np.max(cur)) if len(cur) else -np.inf)
    edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.array([lo - 0.5, lo + 0.5])
    ref = np.diff(_ref_cdf(col, edges))
    now = np.histogram(cur, edges)[0] / max(len(cur), 1)
    return {"edges": edges.round(6).tolist(), "reference": ref.round(4).tolist(), "current": now.round(4).tolist()}


def _quantile(col: dict, p: float) -> float:
    if "values" in col:
        return float(np.quantile(col["values"], p)) if col["values"] else 0.0
    return float(np.interp(p, np.linspace(0, 1, len(col["quantiles"])), col["quantiles"]))
