"""Coverage-guided fuzzer (atheris/libFuzzer) of the buffer-file loader.

    python tests/fuzz/fuzz_loader.py <new-corpus-dir> tests/fuzz/corpus/loader -max_total_time=30

Any outcome but a loaded buffer or CorruptFileError is a finding (libFuzzer stops and saves the input).
"""

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from ray_replay import ReplayBuffer
    from ray_replay.persistence import CorruptFileError

_PATH = os.path.join(tempfile.mkdtemp(prefix="fuzz-loader-"), "input.rrb")


def test_one_input(data: bytes) -> None:
    with open(_PATH, "wb") as file:
        file.write(data)
    try:
        buffer = ReplayBuffer.load(_PATH)
    except CorruptFileError:
        return
    if len(buffer):  # what loads must also work
        buffer.sample(1)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
