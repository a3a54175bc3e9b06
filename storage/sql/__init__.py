"""SQL storage through SQLAlchemy Core: SQLite, PostgreSQL, MySQL/MariaDB.

``engine`` (URLs, dialects, transactions), ``schema`` (tables, migrations),
``statements`` (the SQL by name) and ``backend`` (the operations)::

    storage = SQLStorage(url, create=False)
    try:
        old, new = storage.migrate()   # (0, 2) for a new database
    finally:
        storage.close()
"""

from jobsd.storage.base import SchemaError
from jobsd.storage.sql.backend import SQLStorage
from jobsd.storage.sql.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "SQLStorage", "SchemaError"]
