"""A peer's state folder, opened: its database and the tables on it, for the composition
root to hand out one by one (each part of a peer gets the tables it uses)."""

from __future__ import annotations

from pathlib import Path

from .database import Database
from .executions import ExecutionTables
from .links import LinkTables
from .posts import PostTables
from .requests import RequestTables
from .retention import RetentionTables


class Store:
    """The database in `folder` (created with its epoch when new) and its tables."""

    def __init__(self, folder: Path) -> None:
        self.database = Database(folder)
        self.links = LinkTables(self.database)
        self.posts = PostTables(self.database)
        self.requests = RequestTables(self.database, self.posts)
        self.executions = ExecutionTables(self.database)
        self.retention = RetentionTables(self.database)

    @property
    def epoch(self) -> str:
        return self.database.epoch

    def close(self) -> None:
        self.database.close()
