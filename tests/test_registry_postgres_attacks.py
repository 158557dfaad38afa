"""The shared registry under attack (#18, findings advB-*): passwords never shown whatever they
hold, another party's rows or notices never stop a node, a hung database never blocks reads, a
registry restarted while the database is down comes back on its last values."""

from __future__ import annotations

import pytest

from otpy.specs.values import mask_secret, mask_url, registry_storage_problem

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("password", ["se/cret", "se?cret", "se#cret", "se@cret", "p", "a%2Fb%40c", "s3/?#@x"])
def test_a_password_is_masked_whatever_it_holds(password):
    url = f"postgresql://otpy:{password}@127.0.0.1:41075/db1?sslmode=disable"
    assert mask_url(url) == "postgresql://otpy:***@127.0.0.1:41075/db1?sslmode=disable"
    problem = registry_storage_problem(url) or ""
    assert password not in problem.replace("postgresql://otpy:***@", "")


def test_a_password_in_the_query_is_masked():
    assert mask_url("postgresql+psycopg://otpy@h:1/db?password=7f63&x=1") == "postgresql+psycopg://otpy@h:1/db?password=***&x=1"
    assert mask_url("postgresql://h/db?PassWord=a&pass%77ord=b&sslpassword=c") == \
        "postgresql://h/db?PassWord=***&pass%77ord=***&sslpassword=***"
    assert mask_url("host=h password='a b' user=x") == "host=h password=*** user=x"
    assert mask_url("postgresql://otpy@db/otpy") == "postgresql://otpy@db/otpy"
    assert mask_url("postgresql://db:5432/otpy") == "postgresql://db:5432/otpy"


def test_a_raw_at_slash_question_or_hash_in_the_password_is_refused_before_any_connection():
    for char in "@/?#":
        problem = registry_storage_problem(f"postgresql://otpy:se{char}cret@127.0.0.1:5432/db")
        assert problem and "percent-encoded" in problem and "cret" not in problem
    assert registry_storage_problem("postgresql://otpy:se%40cret@127.0.0.1:5432/db") is None


def test_a_short_password_is_not_spelled_out_by_its_mask():
    message = ('connection to server at "127.0.0.1", port 41075 failed: FATAL: password authentication failed '
               'for user "otpy"')
    assert mask_secret(message, "postgresql://otpy:p@127.0.0.1:41075/db1") == message
    assert mask_secret("Name or service not known: 'se'", "postgresql://otpy:se@cret@h/db") == \
        "Name or service not known: '***'"
    assert mask_secret("bad token x%2Fy and x/y in postgresql://u:x%2Fy@h/d", "postgresql://u:x%2Fy@h/d") == \
        "bad token *** and *** in postgresql://u:***@h/d"
