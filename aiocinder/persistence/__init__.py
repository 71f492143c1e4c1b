"""Metadata stores: memory, SQLite (aiosqlite) and PostgreSQL (asyncpg).

Stores are imported only when chosen, so ``asyncpg`` loads only for
``storage="postgresql"``.
"""

from .base import ENTRY_POINT_GROUP, PersistenceStore, create_store

__all__ = ["ENTRY_POINT_GROUP", "PersistenceStore", "create_store"]
