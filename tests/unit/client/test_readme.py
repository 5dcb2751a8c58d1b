"""The Python examples of README.md's "Python client" section and of
client/README.md run as written, against the scripted server."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from tests.unit.client.test_calls import serving

ROOT = Path(__file__).resolve().parents[3]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start : end if end >= 0 else None]


EXAMPLES = [
    *(
        ("README.md", b)
        for b in BLOCK.findall(section((ROOT / "README.md").read_text(), "### Python client"))
    ),
    *(("client/README.md", b) for b in BLOCK.findall((ROOT / "client/README.md").read_text())),
]


def test_the_readmes_have_client_examples() -> None:
    assert [name for name, _ in EXAMPLES].count("README.md") >= 2
    assert [name for name, _ in EXAMPLES].count("client/README.md") >= 1


@pytest.mark.parametrize(
    ("readme", "example"), EXAMPLES, ids=[f"{n}#{i}" for i, (n, _) in enumerate(EXAMPLES)]
)
async def test_example_runs(
    readme: str, example: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the wait for the flush
    async with serving() as (servicer, target):
        code = compile(example.replace("127.0.0.1:50051", target), readme, "exec")
        await asyncio.to_thread(exec, code, {"__name__": "__main__"})
    assert servicer.requests, "the example made no call"
    printed = capsys.readouterr().out
    if "print(" in example:
        # Something of the scripted answers: labels, metrics, rows or counts.
        markers = ("{'dyno': 'web.1'}", "('m',)", "{'count': 3,", "[(3, 5)]")
        assert any(marker in printed for marker in markers), printed
    if "except MetaasError" in example:
        assert "INVALID_ARGUMENT [('end_ms', 'must be after start_ms')]" in printed, printed
