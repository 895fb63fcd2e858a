"""Hyperparameter sweeps of a notebook cell on Ray Tune: ``%%mlops sweep``.

``space`` parses the search space, ``runner`` prepares and runs the sweep (Ray is imported only
there), ``trial`` is what runs in the Ray workers, ``view`` is what the cell shows.
"""

from .space import SweepError, Term, from_mapping, parse

__all__ = ["SweepError", "Term", "parse", "from_mapping", "SweepSpec", "prepare", "execute"]


def __getattr__(name):  # the runner imports nothing heavy itself, but keep `import ...sweep` to the parser
    if name in ("SweepSpec", "prepare", "execute", "SweepResult", "init_ray", "cluster_nodes", "describe_nodes"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)
