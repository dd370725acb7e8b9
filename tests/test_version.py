"""One version everywhere: cpp/include/replay_buffer/version.hpp is its only source, and the Python
package, the compiled module, the wheel's metadata, the installed C++ headers and CMake package, and
the CHANGELOG all say the same."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ray_replay
from ray_replay import _core

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "cpp" / "include" / "replay_buffer" / "version.hpp"


def header_parts(text: str) -> tuple[int, int, int]:
    parts = [re.search(rf"^#define REPLAY_BUFFER_VERSION_{name} (\d+)$", text, re.MULTILINE) for name in ("MAJOR", "MINOR", "PATCH")]
    assert all(parts), "version.hpp must define REPLAY_BUFFER_VERSION_MAJOR, _MINOR and _PATCH"
    return tuple(int(match.group(1)) for match in parts)  # type: ignore[union-attr,return-value]


VERSION = ".".join(map(str, header_parts(HEADER.read_text())))


def test_the_python_package_and_the_compiled_module_carry_the_headers_version():
    assert ray_replay.__version__ == VERSION
    assert _core.__version__ == VERSION


def test_the_installed_distribution_has_the_headers_version():
    # A mismatch here means the installed package is stale: rebuild it (make install).
    assert importlib.metadata.version("ray_replay") == VERSION


def test_pyproject_takes_the_version_from_the_header():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    provider = pyproject["tool"]["scikit-build"]["metadata"]["version"]
    assert provider["provider"] == "scikit_build_core.metadata.regex"
    assert (ROOT / provider["input"]).resolve() == HEADER
    # What the provider computes: its regex over the header, formatted by `result`.
    match = re.search(provider["regex"], HEADER.read_text(), re.MULTILINE)
    assert match is not None
    assert provider["result"].format(*match.groups(), **match.groupdict()) == VERSION


def test_cmake_reads_the_header():
    cmakelists = (ROOT / "CMakeLists.txt").read_text()
    assert "cpp/include/replay_buffer/version.hpp" in cmakelists
    assert not re.search(r"project\(\s*ReplayBuffer\s+VERSION\s+\d", cmakelists), "CMakeLists.txt must not write the version itself"


def installed(relative: str) -> Path:
    # Every folder of the package: a wheel install has one; an editable one (scikit-build-core) puts
    # the built files (the extension, include/, share/) in site-packages beside the source tree.
    for folder in ray_replay.__path__:
        if (Path(folder) / relative).exists():
            return Path(folder) / relative
    raise AssertionError(f"{relative} is in none of the package's folders {list(ray_replay.__path__)}")


def test_the_installed_cmake_package_and_headers_have_the_version():
    config_version = installed("share/cmake/ReplayBuffer/ReplayBufferConfigVersion.cmake").read_text()
    assert f'set(PACKAGE_VERSION "{VERSION}")' in config_version
    installed_header = installed("include/replay_buffer/version.hpp")
    assert header_parts(installed_header.read_text()) == header_parts(HEADER.read_text())


def test_the_changelog_has_an_entry_for_the_version():
    changelog = (ROOT / "docs" / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    assert re.search(rf"^## \[{re.escape(VERSION)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.MULTILINE), f"docs/CHANGELOG.md has no '## [{VERSION}] - YYYY-MM-DD'"


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_the_headers_macros_agree_with_each_other(tmp_path):
    # REPLAY_BUFFER_VERSION_STRING and REPLAY_BUFFER_VERSION are derived from the three numbers; checked
    # by the compiler itself (syntax only: no object file).
    source = tmp_path / "version_check.cpp"
    source.write_text(
        "#include <string_view>\n"
        '#include "replay_buffer/version.hpp"\n'
        f'static_assert(std::string_view(REPLAY_BUFFER_VERSION_STRING) == "{VERSION}");\n'
        "static_assert(std::string_view(replay_buffer::kVersionString) == REPLAY_BUFFER_VERSION_STRING);\n"
        "static_assert(REPLAY_BUFFER_VERSION == REPLAY_BUFFER_VERSION_MAJOR * 10000 + REPLAY_BUFFER_VERSION_MINOR * 100 + REPLAY_BUFFER_VERSION_PATCH);\n"
        "static_assert(replay_buffer::kVersion.major == REPLAY_BUFFER_VERSION_MAJOR && replay_buffer::kVersion.minor == REPLAY_BUFFER_VERSION_MINOR && replay_buffer::kVersion.patch == REPLAY_BUFFER_VERSION_PATCH);\n"
    )
    result = subprocess.run(
        ["c++", "-std=c++20", "-fsyntax-only", f"-I{ROOT / 'cpp' / 'include'}", str(source)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_version_is_a_release_number():
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION)
    assert sys.modules["ray_replay"].__version__ == VERSION
