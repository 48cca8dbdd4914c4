"""SQLite metadata through `dataset`: schema, migrations and the queries of each table.

Only the Registry actor opens the database (ARCHITECTURE rule 1); every function here takes
the `dataset.Database` it should use and runs on the caller's (the actor's) thread.
"""
