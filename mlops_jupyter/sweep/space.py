"""Search-space grammar: ``name=fn(args); ...`` -> terms that become Ray Tune domains.

Stdlib only: a wrong term is reported before Ray is even imported, and a sweep without a scheduler draws its
trials' values here (``variants``) without importing Ray Tune.
"""

from __future__ import annotations

import ast
import itertools
import keyword
import math
import random
import re
from dataclasses import dataclass

from ..errors import SweepError

VALID_FORMS = ("name=choice(a, b, ...)", "name=uniform(low, high)", "name=loguniform(low, high) with low > 0",
               "name=randint(low, high) (whole numbers, high excluded)",
               "name=quniform(low, high, q) with low and high multiples of q",
               "name=grid(a, b, ...) (every value, in each sample)", "name=<literal> such as 3, 0.1 or 'adam'")
EXAMPLE = "lr=loguniform(1e-4, 1e-1); depth=choice(3, 5, 8)"


@dataclass(frozen=True)
class Term:
    """One parameter of the space: ``fn`` is None for a constant, "tune" for a Ray Tune object given as is."""

    name: str
    fn: str | None
    args: tuple

    def describe(self) -> str:
        if self.fn is None:
            return repr(self.args[0])
        if self.fn == "tune":
            return _describe_tune(self.args[0])
        return f"{self.fn}({', '.join(map(repr, self.args))})"

    @property
    def is_grid(self) -> bool:
        return self.fn == "grid" or (self.fn == "tune" and isinstance(self.args[0], dict))

    def to_tune(self):
        from ray import tune

        if self.fn is None:
            return self.args[0]
        if self.fn == "tune":
            return self.args[0]
        if self.fn == "grid":
            return tune.grid_search(list(self.args))
        if self.fn == "choice":
            return tune.choice(list(self.args))
        return getattr(tune, self.fn)(*self.args)

    def draw(self, rng: random.Random):
        """One value of a random term, or the constant, as Ray Tune would draw it (without importing Tune: a
        first sweep would wait most of a second for it). Not for grids nor Tune objects: see ``variants``."""
        fn, args = self.fn, self.args
        if fn is None:
            return args[0]
        if fn == "choice":
            return args[rng.randrange(len(args))]
        if fn == "randint":
            return rng.randrange(args[0], args[1])
        if fn == "loguniform":
            return math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))
        if fn == "quniform":
            return float(round(rng.uniform(args[0], args[1]) / args[2]) * args[2])
        return rng.uniform(args[0], args[1])


def variants(space: dict[str, Term], samples: int, rng: random.Random | None = None) -> list[dict] | None:
    """The trials' configs in Tune's order: every combination of the grids (the first grid by name changing
    fastest) with fresh draws of the random terms, all that ``samples`` times. None when a term is a Ray Tune
    object given as is (a ``sample_from`` may read other values): Tune draws those."""
    if any(t.fn == "tune" for t in space.values()):
        return None
    rng = rng or random.Random()
    grids = sorted(name for name, t in space.items() if t.is_grid)
    combos = [dict(zip(grids, reversed(values)))
              for values in itertools.product(*(space[name].args for name in reversed(grids)))]
    return [{name: combo[name] if name in combo else term.draw(rng) for name, term in space.items()}
            for _ in range(samples) for combo in combos]


def _describe_tune(obj) -> str:
    if isinstance(obj, dict):
        return f"grid({', '.join(map(repr, obj['grid_search']))})"
    return f"{type(obj).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(obj).items() if not k.startswith('_'))})"


def _bad(term: str, why: str) -> SweepError:
    return SweepError(f"search space term {term!r} is not valid: {why}. Valid forms: {'; '.join(VALID_FORMS)}. "
                      f"Terms are separated by ';', e.g. {EXAMPLE!r}.", what="term", term=term)


def _split(text: str) -> list[str]:
    """Split on ';' outside quotes and brackets, so choice('a;b') stays one term."""
    terms, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == ";" and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return [t.strip() for t in terms if t.strip()]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(term: str, fn: str, args: tuple) -> tuple:
    if fn in ("choice", "grid"):
        if len(args) == 1 and isinstance(args[0], (list, tuple)):
            args = tuple(args[0])  # choice([1, 2, 3]) reads as choice(1, 2, 3)
        if not args:
            raise _bad(term, f"{fn}() needs at least one value")
        return args
    arity = 3 if fn == "quniform" else 2
    if len(args) != arity or not all(map(_number, args)):
        raise _bad(term, f"{fn}() takes {arity} numbers")
    low, high = args[0], args[1]
    if low >= high:
        raise _bad(term, f"low ({low}) must be below high ({high})")
    if fn == "loguniform" and low <= 0:
        raise _bad(term, "loguniform() needs low > 0")
    if fn == "randint" and not all(isinstance(a, int) for a in args):
        raise _bad(term, "randint() takes whole numbers")
    if fn == "quniform" and args[2] <= 0:
        raise _bad(term, "quniform()'s step q must be > 0")
    if fn == "quniform" and not all(math.isclose(b / args[2], round(b / args[2])) for b in (low, high)):
        raise _bad(term, f"quniform()'s bounds must be multiples of its step q ({args[2]}), as Ray Tune needs")
    return args


def _term(text: str) -> Term:
    try:
        tree = ast.parse(text, mode="exec")
    except SyntaxError:
        raise _bad(text, "it is not name=value") from None
    stmt = tree.body[0] if len(tree.body) == 1 else None
    if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
        raise _bad(text, "it is not name=value")
    name, value = stmt.targets[0].id, stmt.value
    if isinstance(value, ast.Call):
        fn = value.func.id if isinstance(value.func, ast.Name) else ast.unparse(value.func)
        if fn not in ("choice", "uniform", "loguniform", "randint", "quniform", "grid"):
            raise _bad(text, f"unknown function {fn!r}")
        if value.keywords:
            raise _bad(text, f"{fn}() takes plain values, not keywords")
        try:
            args = tuple(ast.literal_eval(a) for a in value.args)
        except ValueError:
            raise _bad(text, f"{fn}()'s arguments must be literal values (numbers, strings, True/False/None)") from None
        return Term(name, fn, _check(text, fn, args))
    try:
        return Term(name, None, (ast.literal_eval(value),))
    except ValueError:
        raise _bad(text, "the value is neither a search function nor a literal constant") from None


def _add(space: dict, term: Term, text: str, metric: str | None) -> None:
    if not term.name.isidentifier() or keyword.iskeyword(term.name):
        raise _bad(text, f"{term.name!r} is not a variable name")
    if term.name in space:
        raise _bad(text, f"{term.name!r} is given twice")
    if term.name == metric:
        raise _bad(text, f"{term.name!r} is the sweep's metric, which the cell computes, so it cannot also be searched")
    space[term.name] = term


def parse(text: str, metric: str | None = None) -> dict[str, Term]:
    """``"lr=loguniform(1e-4,1e-1); depth=choice(3,5,8)"`` -> {name: Term}; SweepError quoting a wrong term."""
    space: dict[str, Term] = {}
    for piece in _split(text or ""):
        _add(space, _term(piece), piece, metric)
    if not space:
        raise SweepError(f"the search space is empty; give terms such as {EXAMPLE!r}, or a dict of the notebook. "
                         f"Valid forms: {'; '.join(VALID_FORMS)}.", what="space")
    return space


def from_mapping(mapping, var: str, metric: str | None = None) -> dict[str, Term]:
    """A space from a dict of the notebook: values are grammar strings ("loguniform(1e-4, 1e-1)"), lists (a choice),
    Ray Tune domains or grid_search dicts, or constants."""
    if not isinstance(mapping, dict) or not mapping:
        raise SweepError(f"{var} must be a non-empty dict of parameter name -> search function, e.g. "
                         f"{var} = {{'lr': 'loguniform(1e-4, 1e-1)', 'depth': [3, 5, 8]}}.", what="space from", var=var)
    space: dict[str, Term] = {}
    for name, value in mapping.items():
        text = f"{name}={value!r}"
        if not isinstance(name, str):
            raise _bad(text, f"the key {name!r} is not a variable name")
        if isinstance(value, str) and re.match(r"\s*[A-Za-z_][\w.]*\s*\(", value):
            text = f"{name}={value}"
            term = _term(text)
        elif isinstance(value, (list, tuple)):
            term = Term(name, "choice", _check(text, "choice", tuple(value)))
        elif (isinstance(value, dict) and set(value) == {"grid_search"}) or \
                type(value).__module__.startswith("ray.tune"):
            term = Term(name, "tune", (value,))
        else:
            term = Term(name, None, (value,))
        _add(space, Term(name, term.fn, term.args), text, metric)
    return space
