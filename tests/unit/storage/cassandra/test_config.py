"""Cassandra URL settings that need no cluster: credentials and TLS."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from metaas.server.config import ConfigError
from metaas.server.storage.cassandra.config import CassandraConfig
from tests.certs import Authority


def test_credentials_from_environment_and_never_in_errors() -> None:
    config = CassandraConfig.from_url(
        "cassandra://db1:9042/metaas",
        {"METAAS_CASSANDRA_USERNAME": "metaas", "METAAS_CASSANDRA_PASSWORD": "s3cr3t-pw"},
    )
    assert (config.username, config.password) == ("metaas", "s3cr3t-pw")
    assert "s3cr3t-pw" not in repr(config)
    with pytest.raises(ConfigError) as caught:
        CassandraConfig.from_url("cassandra://u:s3cr3t-pw@db1:9042/metaas?consistency=MOST", {})
    assert "s3cr3t-pw" not in str(caught.value)
    assert "consistency" in str(caught.value)


def test_tls_options(tmp_path: Path) -> None:
    ca = Authority(tmp_path, "cluster-ca")
    client = ca.issue("metaas")
    assert CassandraConfig.from_url("cassandra://db1/metaas", {}).ssl_context() is None
    config = CassandraConfig.from_url(
        f"cassandra://db1/metaas?tls_ca={ca.cert}&tls_cert={client.cert}&tls_key={client.key}", {}
    )
    context = config.ssl_context()
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    with pytest.raises(ConfigError, match="tls_cert / tls_key"):
        CassandraConfig.from_url(f"cassandra://db1/metaas?tls_cert={client.cert}", {})
    with pytest.raises(ConfigError, match="tls_ca"):
        CassandraConfig.from_url("cassandra://db1/metaas?tls_ca=/no/such.pem", {})
