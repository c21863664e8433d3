"""The build hook: nspool's optional compiled helper, built at install time.

nspool is pure Python; this hook adds two optional artifacts to the
``nspool`` package when the machine has a C compiler:

* ``nspool/_native_pidinit``: a small init for a set's new pid namespace
  (``nspool/_native_src/pidinit.c``), in place of a Python interpreter;
* ``nspool/_native_ext*.so``: the workers' hop primitives as a CPython
  extension module (``nspool/_native_src/hop.c``), when this Python has its
  headers (``Python.h``).

It runs for wheels and for editable installs (``pip install -e .``). An
editable install builds into the source tree's ``nspool/`` directory (ignored
by git), which it imports the package from; a wheel builds in a scratch
directory and gets the artifacts added, leaving the source tree alone. With
no compiler, or a build that fails, the install still succeeds: a warning,
and nothing built (``nspool._native`` then picks the pure-Python fallback).
``NSPOOL_BUILD_NATIVE=0`` skips the build. Each build writes
``nspool/_native_build.txt``: one line per artifact, what became of it,
which ``nspool doctor`` shows.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

#: The artifacts and their sources, relative to the ``nspool`` directory.
PIDINIT = "_native_pidinit"
EXT_STEM = "_native_ext"
REPORT = "_native_build.txt"
SOURCES = "_native_src"
#: Compiler flags for every artifact.
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]


def compiler() -> list[str] | None:
    """The C compiler command: ``$CC``, else ``cc``, else ``gcc``; None if none."""
    if os.environ.get("CC"):
        command = shlex.split(os.environ["CC"])
        return command if shutil.which(command[0]) else None
    for name in ("cc", "gcc"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


class NativeBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Compile the optional helper; never fail the install over it."""

    PLUGIN_NAME = "custom"

    _scratch: str | None = None

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        src = os.path.join(self.root, "nspool", SOURCES)
        if version == "editable":
            # The editable install imports the source tree's package.
            package = os.path.join(self.root, "nspool")
        else:
            # A wheel takes the artifacts from a scratch directory: its build
            # leaves the source tree (and an editable install of it) alone.
            package = self._scratch = tempfile.mkdtemp(prefix="nspool-native-")
        ext_name = EXT_STEM + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")
        targets = {
            PIDINIT: os.path.join(package, PIDINIT),
            ext_name: os.path.join(package, ext_name),
        }
        # Stale artifacts of an earlier build must not outlive this one.
        for path in targets.values():
            if os.path.exists(path):
                os.remove(path)
        lines: list[str] = []
        if os.environ.get("NSPOOL_BUILD_NATIVE", "1") == "0":
            lines = [f"{name}: not built (NSPOOL_BUILD_NATIVE=0)" for name in targets]
        elif (cc := compiler()) is None:
            lines = [f"{name}: not built (no C compiler found)" for name in targets]
        else:
            lines.append(
                self._build(
                    PIDINIT,
                    targets[PIDINIT],
                    [cc + CFLAGS + ["-static", "-s"], cc + CFLAGS + ["-s"]],
                    [os.path.join(src, "pidinit.c")],
                )
            )
            include = sysconfig.get_paths()["include"]
            if os.path.exists(os.path.join(include, "Python.h")):
                lines.append(
                    self._build(
                        ext_name,
                        targets[ext_name],
                        [cc + CFLAGS + ["-shared", "-fPIC", f"-I{include}"]],
                        [os.path.join(src, "hop.c")],
                    )
                )
            else:
                lines.append(f"{ext_name}: not built (no Python.h in {include})")
        with open(os.path.join(package, REPORT), "w") as report:
            report.write("".join(line + "\n" for line in lines))
        if version != "editable":
            # A wheel: git ignores the artifacts, so add them explicitly.
            build_data["force_include"][os.path.join(package, REPORT)] = f"nspool/{REPORT}"
            built = [name for name, path in targets.items() if os.path.exists(path)]
            for name in built:
                build_data["force_include"][targets[name]] = f"nspool/{name}"
            if built:
                build_data["pure_python"] = False
                build_data["infer_tag"] = True

    def _build(self, name: str, target: str, commands: list[list[str]], sources: list[str]) -> str:
        """Try each compile command in turn (the first that works wins) into
        a temporary file, then move it into place; the report line."""
        error = ""
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, name)
            for command in commands:
                argv = [*command, "-o", out, *sources]
                try:
                    done = subprocess.run(argv, capture_output=True, text=True, check=False)
                except OSError as exc:
                    error = str(exc)
                    continue
                if done.returncode == 0:
                    shutil.move(out, target)
                    static = " -static" if "-static" in command else ""
                    return f"{name}: built ({os.path.basename(command[0])}{static})"
                lines = done.stderr.strip().splitlines()
                errors = [line.strip() for line in lines if "error" in line]
                error = (errors or lines or [f"status {done.returncode}"])[0]
        self.app.display_warning(
            f"nspool: the optional {name} was not built ({error}); "
            "nspool will use its pure-Python fallback"
        )
        return f"{name}: not built (build failed: {error})"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
