"""Client and AsyncClient offer the same calls, with the same arguments and
documentation: one cannot gain a method or an argument the other lacks."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

import metaas.client
from metaas.client import AsyncClient, Client

# What only a blocking or only an asyncio object can offer.
CONTEXT_MANAGERS = {Client: {"__enter__", "__exit__"}, AsyncClient: {"__aenter__", "__aexit__"}}


def public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def test_both_clients_have_the_same_public_methods() -> None:
    only_sync = public(Client) - public(AsyncClient)
    only_async = public(AsyncClient) - public(Client)
    assert not only_sync, f"Client has {sorted(only_sync)} and AsyncClient lacks them"
    assert not only_async, f"AsyncClient has {sorted(only_async)} and Client lacks them"
    assert public(Client) >= {
        "write",
        "write_stream",
        "query_range",
        "list_series",
        "migration_status",
        "verify_range",
        "close",
    }
    for cls, methods in CONTEXT_MANAGERS.items():
        assert methods <= set(dir(cls))


def test_the_parity_check_sees_a_missing_method() -> None:
    class Lacking(Client):
        def extra(self) -> None: ...

    assert public(Lacking) - public(AsyncClient) == {"extra"}


METHODS = sorted(public(Client))


def shape(method: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]


@pytest.mark.parametrize("name", METHODS)
def test_same_arguments_and_docstring(name: str) -> None:
    blocking, asynchronous = getattr(Client, name), getattr(AsyncClient, name)
    assert shape(blocking) == shape(asynchronous)
    assert blocking.__doc__ == asynchronous.__doc__
    assert blocking.__qualname__ == f"Client.{name}"
    assert asynchronous.__qualname__ == f"AsyncClient.{name}"
    assert not inspect.iscoroutinefunction(blocking)


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"close"}))
def test_every_call_documents_its_arguments_result_and_errors(name: str) -> None:
    doc = inspect.getdoc(getattr(Client, name)) or ""
    for section in ("Args:", "Returns:", "Raises:", "MetaasError"):
        assert section in doc, f"Client.{name} documents no {section}"
    arguments = [p for p in inspect.signature(getattr(Client, name)).parameters if p != "self"]
    for argument in arguments:
        assert f"    {argument}: " in doc, f"Client.{name} does not document {argument}"


def test_the_asyncio_client_awaits_and_streams() -> None:
    streams = {"verify_range"}
    for name in set(METHODS) - streams:
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name
    returned = inspect.signature(AsyncClient.verify_range).return_annotation
    assert "AsyncIterator" in str(returned)
    assert "Iterator" in str(inspect.signature(Client.verify_range).return_annotation)


def test_signatures_show_self_and_the_result_type() -> None:
    signature = inspect.signature(Client.query_range)
    assert next(iter(signature.parameters)) == "self"
    assert signature.return_annotation is metaas.client.QueryResult
    with Client() as client:
        bound = inspect.signature(client.query_range)
    assert list(bound.parameters)[:2] == ["app", "metric"]


def test_client_docstrings_say_what_they_are() -> None:
    for cls in (Client, AsyncClient):
        doc = inspect.getdoc(cls) or ""
        assert "twin" not in doc
        assert "Example" in doc
        assert len(doc.splitlines()) > 5
    constructor = inspect.getdoc(Client.__init__) or ""
    for argument in inspect.signature(Client).parameters:
        assert f"    {argument}: " in constructor, f"Client() does not document {argument}"
