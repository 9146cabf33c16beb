"""redact, redact_text: nothing printed or stored holds a password, however its URL is written."""

from __future__ import annotations

import pytest

from hpo.errors import first_line
from hpo.redact import redact
from hpo.redact import redact_text
from hpo.store.storage import redact as storage_redact


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # user:password@, any scheme, the user and the rest kept
        ("postgresql://root:s3cret@db:5432/optuna", "postgresql://root:***@db:5432/optuna"),
        ("postgresql+psycopg://hpo:s3cret@10.0.0.1/o", "postgresql+psycopg://hpo:***@10.0.0.1/o"),
        ("mysql+pymysql://u:s3cret@h/db", "mysql+pymysql://u:***@h/db"),
        ("http://ann:s3cret@mlflow:5000", "http://ann:***@mlflow:5000"),
        # '@', '/', '?', '#' and ':' inside the password; a user with an '@' (Azure's user@server)
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:s3/cret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:s3?cret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:s3#cret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:s3:cret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@s?s@h/db", "postgresql://u:***@h/db"),
        ("postgresql://me@example.org:s3cret@h/db", "postgresql://me@example.org:***@h/db"),
        ("postgresql://:s3cret@h/db", "postgresql://:***@h/db"),
        # percent-encoding: the encoded password is masked whole
        ("postgresql://u:s3%40cr%2Fet@h/db", "postgresql://u:***@h/db"),
        # several hosts (libpq), IPv6
        ("postgresql://u:s3cret@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
        ("postgresql://u:s3cret@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
        # secrets in the query, any case, percent-encoded names too; other parameters kept
        ("postgresql://h/db?password=s3cret", "postgresql://h/db?password=***"),
        ("postgresql://h/db?user=u&PassWord=s3cret&x=1", "postgresql://h/db?user=u&PassWord=***&x=1"),
        ("postgresql://h/db?sslmode=verify-full&sslpassword=s3", "postgresql://h/db?sslmode=verify-full&sslpassword=***"),
        ("http://h?pass=s3cret&pwd=s3cret", "http://h?pass=***&pwd=***"),
        ("http://h/?token=s3cret;secret=s3cret", "http://h/?token=***;secret=***"),
        ("http://h?api_key=s3&API-KEY=s3&access_token=s3", "http://h?api_key=***&API-KEY=***&access_token=***"),
        ("https://acct.blob/c?sv=1&sig=s3cret&sigma=0.1", "https://acct.blob/c?sv=1&sig=***&sigma=0.1"),
        ("http://h?pass%77ord=s3cret", "http://h?pass%77ord=***"),
        ("postgresql://u:s3cret@h/db?password=s3", "postgresql://u:***@h/db?password=***"),
        # a bare token as the userinfo of an http URL; a bare database user is kept
        ("https://s3cret@mlflow.example.org", "https://***@mlflow.example.org"),
        ("postgresql://root@h/db", "postgresql://root@h/db"),
        # no scheme, or a mangled one
        ("root:s3cret@127.0.0.1:5432/db", "root:***@127.0.0.1:5432/db"),
        ("postgresql//u:s3cret@h/db", "postgresql//u:***@h/db"),
        ("postgresql:/u:s3cret@h/db", "postgresql:***@h/db"),
        # no '@': a password typed where the host goes, a port that is not a number
        ("postgresql://u:s3cret", "postgresql://u:***"),
        ("postgresql://u:s3cret/db", "postgresql://u:***/db"),
        ("postgresql://h1:5432,u:s3cret/db", "postgresql://h1:5432,u:***/db"),
        # an unclosed IPv6 bracket (urlsplit refuses it)
        ("postgresql://u:s3cret@[::1/db", "postgresql://u:***@[::1/db"),
        # nothing secret: unchanged
        ("sqlite:///hpo.db", "sqlite:///hpo.db"),
        ("sqlite:////abs/path/mlflow.db", "sqlite:////abs/path/mlflow.db"),
        ("grpc://proxy:13000", "grpc://proxy:13000"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("postgresql://h:5432/db?sslmode=require", "postgresql://h:5432/db?sslmode=require"),
        ("postgresql://[::1]:5432/db", "postgresql://[::1]:5432/db"),
        ("hpo.db", "hpo.db"),
        ("", ""),
    ],
)
def test_redact_masks_every_place_a_password_can_hide(url, shown):
    # Rule: the password and secret-named parameters are masked, the rest is kept to tell where.
    assert redact(url) == shown
    assert "s3" not in redact(url)
    assert redact(redact(url)) == redact(url)  # masking twice changes nothing


def test_an_at_sign_in_the_query_hides_the_host_rather_than_risk_a_password():
    # Rule: the userinfo ends at the last '@'; '?' may be part of a password, so a query '@'
    # costs the host, never the password.
    assert redact("postgresql://u:s3cret@h/db?application_name=me@lab") == "postgresql://u:***@lab"
    assert "s3cret" not in redact("postgresql://u:s3cret@h/db?application_name=me@lab")


def test_storage_keeps_its_redact():
    assert storage_redact is redact


def test_redact_text_masks_urls_and_secret_pairs_inside_messages():
    # Rule: in prose, every URL is redacted, and NAME=VALUE pairs named like a secret lose values.
    text = (
        "cannot open study storage postgresql+psycopg://u:s3cret@h:1/db?password=s3cret: refused; "
        "MLflow at (http://a:s3cret@m:5000). PGPASSWORD=s3cret token=s3cret "
        "model.dropout.rate=0.1 loss.sigma_floor=0.01 see https://sqlalche.me/e/20/e3q8."
    )
    out = redact_text(text)
    assert "s3cret" not in out
    assert out == (
        "cannot open study storage postgresql+psycopg://u:***@h:1/db?password=***: refused; "
        "MLflow at (http://a:***@m:5000). PGPASSWORD=*** token=*** "
        "model.dropout.rate=0.1 loss.sigma_floor=0.01 see https://sqlalche.me/e/20/e3q8."
    )
    assert redact_text("grpc://proxy:13000: no answer") == "grpc://proxy:13000: no answer"


def test_first_line_of_an_error_is_redacted():
    # Rule: an exception's first line (what terminals and trial fail reasons show) is redacted.
    exc = RuntimeError("connect to postgresql://u:s3cret@h/db failed\nsecond line")
    assert first_line(exc) == "connect to postgresql://u:***@h/db failed"
