"""Tests that read the seed data; they would fail if a test that ran before them leaked."""

import psycopg


def test_totals_per_user(db):
    with psycopg.connect(db.dsn) as conn:
        rows = conn.execute(
            "select u.email, sum(o.total) from users u join orders o on o.user_id = u.id "
            "group by u.email order by u.email"
        ).fetchall()
    assert [(email, float(total)) for email, total in rows] == [
        ("ada@example.com", 19.75),
        ("linus@example.com", 99.0),
    ]


def test_orders_can_be_deleted(db):
    with psycopg.connect(db.dsn) as conn:
        conn.execute("delete from orders")
        assert conn.execute("select count(*) from orders").fetchone() == (0,)
