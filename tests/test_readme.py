"""Every ```python block of README.md runs as written, as root, and leaves
no ``ip netns`` name behind: a script with ``python``, a block of
``test_`` functions (the pytest plugin's) with ``pytest``, every test
passing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
TESTS = re.compile(r"^(?:async )?def (test_\w+)", re.M)
#: Seconds one example may take (the pool ones wait for 16 netns).
TIMEOUT = 60


def python_blocks(text: str) -> list[str]:
    """The source of each fenced ```python block of ``text``, in order."""
    return BLOCK.findall(text)


def netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return sorted(out.stdout.splitlines())


BLOCKS = python_blocks(README.read_text())


def test_readme_has_the_examples() -> None:
    assert len(BLOCKS) >= 5
    assert python_blocks("```python\nx = 1\n```\n```sh\nls\n```\n") == ["x = 1\n"]


@pytest.mark.parametrize("source", BLOCKS, ids=[f"example{i + 1}" for i in range(len(BLOCKS))])
def test_example_runs(source: str, syscall_backend: str, tmp_path: Path) -> None:
    if syscall_backend != "ctypes":
        pytest.skip("a subprocess: the syscall backend of this process does not matter")
    before = netns_names()
    tests = TESTS.findall(source)
    if tests:
        (tmp_path / "test_example.py").write_text(source)
        (tmp_path / "pytest.ini").write_text(
            "[pytest]\nfilterwarnings = error\nasyncio_default_fixture_loop_scope = function\n"
        )
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "--strict-markers"]
    else:
        argv = [sys.executable, "-X", "dev", "-W", "error", "-c", source]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd=tmp_path
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.stdout, "an example prints what it shows"
    for name in tests:
        assert re.search(rf"::{name}\S* PASSED", done.stdout), f"{name} did not pass"
    # Only the names the example uses: other test runs may name their own meanwhile.
    left = [n for n in set(netns_names()) - set(before) if f'"{n}"' in source]
    assert not left, f"the example left ip netns names: {left}"


def test_no_file_points_outside_the_repository() -> None:
    """No tracked file names a design document or a directory that is not
    in the repository (the strings are built so that this file does not)."""
    root = README.parent
    gone = ("DESIGN" + ".md", "../" + "shared")
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files"], capture_output=True, text=True, check=True, cwd=root
    ).stdout.split()
    assert "README.md" in tracked
    offenders = []
    for name in tracked:
        try:
            text = (root / name).read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        offenders += [f"{name}: {word}" for word in gone if word in text]
    assert not offenders
