"""One line gives every test that asks for `db` its own database built from schema.sql."""

from sqlrs_engine.pytest_plugin import sqlrs_database

db = sqlrs_database(files=["schema.sql"])
