"""Each test gets a fresh copy of schema.sql's database: what one test writes, no other sees."""

import psycopg
import pytest


@pytest.mark.parametrize("new_user", [f"user{n}@example.com" for n in range(6)])
def test_each_test_starts_from_the_seed(db, new_user):
    with psycopg.connect(db.dsn) as conn:
        # If any other test's writes leaked here, there would be more than the two seed users.
        emails = [row[0] for row in conn.execute("select email from users order by id")]
        assert emails == ["ada@example.com", "linus@example.com"]
        conn.execute("insert into users (email) values (%s)", (new_user,))
        assert conn.execute("select count(*) from users").fetchone() == (3,)


def test_constraints_come_from_the_schema(db):
    with psycopg.connect(db.dsn) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("insert into users (email) values ('ada@example.com')")


def test_destructive_changes_stay_local(db):
    with psycopg.connect(db.dsn) as conn:
        conn.execute("drop table orders")
        conn.execute("truncate users")
        assert conn.execute("select count(*) from users").fetchone() == (0,)
