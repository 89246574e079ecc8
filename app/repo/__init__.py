"""PostgreSQL access: the pool, migrations, and one module per aggregate.

Driver errors are turned into the small exception tree of :mod:`app.repo.errors`.
"""
