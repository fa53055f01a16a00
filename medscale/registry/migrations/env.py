"""Alembic environment: always run programmatically by `medscale.registry.engine`, on the registry's own
connection (inside its lock), never from an alembic.ini."""
from alembic import context

from medscale.registry.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
