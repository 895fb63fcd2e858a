"""Data snapshots with DVC, linked to the MLflow runs that used them.

Public surface: ``snapshot``, ``list_snapshots``, ``restore``, ``in_scope`` (the snapshots a run
records), ``tag_key`` / ``read_key`` (the run tags of a snapshot in scope / read) and the ``Snapshot`` record. DVC is imported only by the operations that need it.
"""

from .scope import in_scope, read_key, tag_key
from .snapshots import Snapshot, list_snapshots, restore, snapshot

__all__ = ["Snapshot", "snapshot", "list_snapshots", "restore", "in_scope", "tag_key", "read_key"]
