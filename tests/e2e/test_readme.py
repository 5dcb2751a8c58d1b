"""README.md's commands run as written, pasted into a shell after a fresh
clone.

Every command block of README.md is run by a test, or marked as not run by
an HTML comment on the line before its fence: ``<!-- not run: reason -->``.

- The ``sh`` blocks of "## Try it" and its subsections run here, in order,
  each as a bash script (``-euo pipefail``) in the repository's root, on one
  fresh server with the default flush interval, in a shell with neither
  ``.venv/bin`` nor ``.tools/bin`` on ``PATH``; what a block exports is kept
  for the next blocks, as in one terminal. A block waits only where the
  README says to wait (``sleep``). Each block's exit status and a key line
  of its output are checked (``EXPECTED``), and lines of output the block
  shows (comment lines ending it: ``# ERROR: ...``) must be what it prints.
- The ``python`` blocks of "### Python client" run in
  tests/unit/client/test_readme.py.
- The ``sh`` block of "## Scaling out: Kafka ingest" runs in
  tests/e2e/test_readme_scaling.py.

A command block is a fence for a shell or Python, or any fence with a line
that runs ``metaas``, ``grpcurl`` or ``make``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from metaas.server.cli.main import main as metaas_cli
from tests.support import METAAS, ROOT, ServerProcess
from tests.unit.client import test_readme as client_readme

README = ROOT / "README.md"
RUN_HERE = "## Try it"
SCALING_OUT = "## Scaling out: Kafka ingest"
SHELLS = frozenset({"sh", "bash", "shell", "console", "zsh", "fish"})
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
HEADING = re.compile(r"^(?P<level>#{1,6}) ")
NOT_RUN = re.compile(r"^[ \t]*<!-- not run: (?P<reason>\S.*?) -->[ \t]*$")
# A line that runs something: after any VAR=value prefixes (or a $ prompt),
# a metaas command, one of the installed tools, or make and friends.
COMMAND = re.compile(
    r"^\s*(?:\$ )?(?:\w+=\S*\s+)*"
    r"(?:(?:\S*/)?metaas (?:" + "|".join(sorted(metaas_cli.commands)) + r")\b"
    r"|(?:\S*/)?grpcurl\s|make\b|eval\s|export\s|source\s|sleep\s|curl\s)"
)


@dataclass(frozen=True, slots=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str  # without the fence's indentation
    section: str  # the "## " heading above it
    subsection: str  # the "### " heading above it within the section, or ""
    not_run: str | None  # the reason of a <!-- not run: ... --> marker

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({self.subsection or self.section})"

    def is_command(self) -> bool:
        return (
            self.lang in SHELLS
            or self.lang == "python"
            or any(COMMAND.match(line) for line in self.text.splitlines())
        )

    def run_by(self) -> str | None:
        """The test that runs the block, or None."""
        if self.not_run is not None:
            return None
        if self.lang == "sh" and self.section == RUN_HERE:
            return "tests/e2e/test_readme.py"
        if self.lang == "python" and self.subsection == "### Python client":
            return "tests/unit/client/test_readme.py"
        if self.lang == "sh" and self.section == SCALING_OUT:
            return "tests/e2e/test_readme_scaling.py"
        return None


def blocks(text: str) -> list[Block]:
    found: list[Block] = []
    section = subsection = ""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = FENCE.match(line)
        if fence is None:
            heading = HEADING.match(line)
            if heading is not None and len(heading["level"]) == 2:
                section, subsection = line.strip(), ""
            elif heading is not None and len(heading["level"]) == 3:
                subsection = line.strip()
            index += 1
            continue
        start, indent = index, len(fence["indent"])
        body: list[str] = []
        index += 1
        while index < len(lines) and not re.match(r"^[ \t]*```[ \t]*$", lines[index]):
            body.append(lines[index][indent:] if lines[index][:indent].isspace() else lines[index])
            index += 1
        index += 1  # the closing fence
        before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        marker = NOT_RUN.match(before)
        found.append(
            Block(
                line=start + 1,
                lang=fence["lang"],
                text="\n".join(body) + "\n",
                section=section,
                subsection=subsection,
                not_run=marker["reason"] if marker else None,
            )
        )
    return found


BLOCKS = blocks(README.read_text())
TRY_IT = [b for b in BLOCKS if b.run_by() == "tests/e2e/test_readme.py"]


@dataclass(frozen=True, slots=True)
class Expected:
    """What a block of "Try it" does: the block is the one whose text
    matches ``block``; its output (stdout and stderr) matches each of
    ``keys``, and it exits with ``status``."""

    block: str
    keys: tuple[str, ...]
    status: int = 0


EXPECTED = (
    Expected(r"metaas demo --apps 3", (r"wrote \d+ samples for 3 apps over 30 minutes",)),
    Expected(
        r"metaas query --app demo-0 --metric router\.latency_ms --since 30m",
        (r"\b2xx +\d+ ", r"\b5xx +\d+ "),
    ),
    Expected(
        r"metaas series --app demo-0",
        (r"dyno=web\.1,status=2xx", r"\b2xx +web\.1 +\d+ ", r"(?m)^time,count,"),
    ),
    Expected(
        r"grpcurl -plaintext 127\.0\.0\.1:50051 list",
        (r"metaas\.v1\.MetricsQuery", r"message QueryRangeRequest", r'"status": "SERVING"'),
    ),
    Expected(r'"idempotency_key": "router-7-batch-1"', (r'"accepted_samples": "2"',)),
    Expected(r"MetricsIngest/WriteStream", (r'"accepted_samples": "2"',)),
    Expected(r'"group_by": \["status"\]', (r'"status": "2xx"', r'"stat": "q0\.75"')),
    Expected(r'"matchers": \{"dyno": "web\.1"\}', (r'"stat": "p99"', r'"served_by": "sqlite"')),
    Expected(
        r"MetricsQuery/ListSeries", (r'"metrics": \[\s*"dyno\.load_avg",\s*"router\.latency_ms"',)
    ),
    Expected(r'"times_ms": \[1\], "values": \[1, 2\]', (r"Code: InvalidArgument",), status=67),
)


def expected_of(block: Block) -> Expected:
    matching = [e for e in EXPECTED if re.search(e.block, block.text)]
    assert len(matching) == 1, (
        f"{block.where}: expected exactly one entry of EXPECTED, not {matching}"
    )
    return matching[0]


def shown_output(block: Block) -> list[str]:
    """The output a block shows: the comment lines ending it, without '#'."""
    lines = block.text.rstrip("\n").splitlines()
    shown: list[str] = []
    while lines and lines[-1].lstrip().startswith("#"):
        shown.insert(0, lines.pop().lstrip().removeprefix("#"))
    return [" ".join(line.split()) for line in shown if line.strip()]


def fresh_environment(target: str) -> dict[str, str]:
    """This environment as after a fresh clone: neither .venv/bin (nor any
    other metaas) nor .tools/bin on PATH, no virtualenv, no METAAS_
    settings; the client commands' server is the test's (the README's
    127.0.0.1:50051 is replaced by it too)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("METAAS_") and k != "VIRTUAL_ENV"
    }
    installed = {ROOT / ".venv/bin", ROOT / ".tools/bin", Path(METAAS).parent}
    path = [
        d
        for d in env.get("PATH", os.defpath).split(os.pathsep)
        if d
        and Path(d).resolve() not in {p.resolve() for p in installed}
        and not Path(d, "metaas").exists()
    ]
    env["PATH"] = os.pathsep.join(path)
    env["METAAS_TARGET"] = target
    return env


def run(block: Block, target: str, env: dict[str, str], state: Path) -> tuple[str, int]:
    """Run the block as a script; return its output and exit status, and
    keep in ``env`` what it exported."""
    script = f"trap 'env -0 > {state}' EXIT\n" + block.text.replace("127.0.0.1:50051", target)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    exported = dict(item.split("=", 1) for item in state.read_text().split("\0") if "=" in item)
    env.clear()
    env.update(exported)
    return result.stdout + result.stderr, result.returncode


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """``make run``'s server: the embedded store, default flush interval."""
    process = ServerProcess(tmp_path / "server", flush_interval_s=10).start()
    try:
        yield process
    finally:
        process.stop()


def test_every_command_block_is_run_or_marked_as_not_run() -> None:
    unrun = [b.where for b in BLOCKS if b.is_command() and b.run_by() is None and not b.not_run]
    assert not unrun, (
        f"command blocks no test runs: {unrun}; run them (sh in '{RUN_HERE}', python in "
        "'### Python client') or put <!-- not run: reason --> on the line before the fence"
    )


def test_the_python_client_test_runs_the_python_client_blocks() -> None:
    ours = [b.text for b in BLOCKS if b.run_by() == "tests/unit/client/test_readme.py"]
    theirs = [text for readme, text in client_readme.EXAMPLES if readme == "README.md"]
    assert ours
    assert ours == theirs


def test_the_markers_and_expectations_are_used() -> None:
    assert TRY_IT, f"no sh blocks in {RUN_HERE}"
    for expected in EXPECTED:
        assert any(re.search(expected.block, b.text) for b in TRY_IT), expected
    for block in TRY_IT:
        expected_of(block)
    methods = {m for b in TRY_IT for m in re.findall(r"metaas\.v1\.\w+/\w+", b.text)}
    assert methods == {
        "metaas.v1.MetricsIngest/Write",
        "metaas.v1.MetricsIngest/WriteStream",
        "metaas.v1.MetricsQuery/QueryRange",
        "metaas.v1.MetricsQuery/ListSeries",
    }, "Try it shows grpcurl for every RPC of ingest and query"


def test_try_it_runs_as_pasted(fresh_server: ServerProcess, tmp_path: Path) -> None:
    assert (ROOT / ".tools/bin/grpcurl").exists(), "grpcurl is missing: run make install"
    env = fresh_environment(fresh_server.target)
    assert shutil.which("metaas", path=env["PATH"]) is None
    grpcurl = shutil.which("grpcurl", path=env["PATH"])
    assert grpcurl is None or not Path(grpcurl).is_relative_to(ROOT)
    outputs: list[str] = []
    for block in TRY_IT:
        expected = expected_of(block)
        output, status = run(block, fresh_server.target, env, tmp_path / "exported")
        outputs.append(output)
        assert status == expected.status, (block.where, status, output)
        for key in expected.keys:
            assert re.search(key, output), (block.where, key, output)
        printed = [" ".join(line.split()) for line in output.splitlines()]
        shown = shown_output(block)
        assert any(
            printed[i : i + len(shown)] == shown for i in range(len(printed) - len(shown) + 1)
        ), (block.where, shown, output)

    # The demo's hint is a command that works from the same shell.
    demo = next(o for b, o in zip(TRY_IT, outputs, strict=True) if "metaas demo" in b.text)
    lines = demo.splitlines()
    hint = lines[lines.index(next(line for line in lines if line.endswith("then try:"))) + 1]
    tried = Block(0, "sh", hint.strip() + "\n", RUN_HERE, "", None)
    output, status = run(tried, fresh_server.target, env, tmp_path / "exported")
    assert status == 0, (hint, output)
    assert re.search(r"\b2xx +\d+ ", output), (hint, output)


def test_the_guard_tells_commands_from_output_and_reads_markers() -> None:
    text = """## Try it

```sh
.venv/bin/metaas demo
# wrote 10 samples
```

## Elsewhere

```
Error: METAAS_LISTEN / --listen: invalid value
metaas serving on 127.0.0.1:50051
```

```
   AWS_ACCESS_KEY_ID=x .venv/bin/metaas schema apply --storage URL
```

1. A step:
   <!-- not run: an example -->
   ```
   grpcurl -plaintext host:1 list
   ```

```python
print("hi")
```
"""
    demo, output, unmarked, marked, python = blocks(text)
    assert demo.run_by() == "tests/e2e/test_readme.py"
    assert shown_output(demo) == ["wrote 10 samples"]
    assert not output.is_command()
    assert unmarked.is_command()
    assert unmarked.run_by() is None
    assert unmarked.not_run is None
    assert marked.not_run == "an example"
    assert marked.text == "grpcurl -plaintext host:1 list\n"
    assert python.is_command()
    assert python.run_by() is None
