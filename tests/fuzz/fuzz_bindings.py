"""Coverage-guided fuzzer (atheris/libFuzzer) of the binding entry points: random configurations,
schemas, values of random shapes and dtypes, and operation sequences. Only ValueError, TypeError,
OverflowError, MemoryError and BufferFullError may come out; anything else (or a crash) is a finding.

    python tests/fuzz/fuzz_bindings.py <new-corpus-dir> tests/fuzz/corpus/bindings -max_total_time=30
"""

import sys

import atheris
import numpy as np

with atheris.instrument_imports():
    from ray_replay import BufferFullError, ReplayBuffer

EXPECTED = (ValueError, TypeError, OverflowError, MemoryError, BufferFullError)
DTYPES = [np.bool_, np.int8, np.uint8, np.int32, np.int64, np.uint64, np.float16, np.float32, np.float64, object, "U3"]
TYPES = ["fifo", "uniform", "prioritized", "lockfree", "bogus"]


def value(fdp: atheris.FuzzedDataProvider, batched: bool):
    kind = fdp.ConsumeIntInRange(0, 5)
    if kind == 0:
        return fdp.ConsumeFloat()
    if kind == 1:
        return fdp.ConsumeInt(9)
    if kind == 2:
        return fdp.ConsumeBool()
    if kind == 3:
        return None
    shape = [fdp.ConsumeIntInRange(0, 4) for _ in range(fdp.ConsumeIntInRange(0, 3) + batched)]
    dtype = DTYPES[fdp.ConsumeIntInRange(0, len(DTYPES) - 1)]
    array = np.zeros(shape, dtype=dtype)
    if kind == 5 and array.ndim and array.shape[-1] > 1:
        array = array[..., ::2]  # non-contiguous
    return array


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    try:
        buffer = ReplayBuffer(
            fdp.ConsumeIntInRange(-2, 64),
            TYPES[fdp.ConsumeIntInRange(0, len(TYPES) - 1)],
            schema=None if fdp.ConsumeBool() else {"s": ((2,), np.float32), "a": ((), np.int64)},
            seed=fdp.ConsumeIntInRange(0, 10),
            alpha=fdp.ConsumeFloat(),
            next_state="dedup" if fdp.ConsumeBool() else "store",
            frame_stack_axis=fdp.ConsumeIntInRange(-3, 3) if fdp.ConsumeBool() else None,
        )
    except EXPECTED:
        return
    for _ in range(fdp.ConsumeIntInRange(0, 12)):
        operation = fdp.ConsumeIntInRange(0, 4)
        try:
            if operation == 0:
                buffer.add(*[value(fdp, False) for _ in range(fdp.ConsumeIntInRange(0, 5))], stream=value(fdp, False))
            elif operation == 1:
                buffer.add_batch(*[value(fdp, True) for _ in range(fdp.ConsumeIntInRange(0, 5))],
                                 priorities=None if fdp.ConsumeBool() else value(fdp, True), streams=value(fdp, True))
            elif operation == 2:
                batch = buffer.sample(fdp.ConsumeIntInRange(-1, 70), beta=fdp.ConsumeFloat() if fdp.ConsumeBool() else None)
                if "ids" in batch and fdp.ConsumeBool():
                    buffer.update_priorities(batch["ids"], np.full(len(batch["ids"]), fdp.ConsumeFloat()))
            elif operation == 3:
                buffer.update_priorities(value(fdp, True), value(fdp, True))
            else:
                buffer.stats()
                buffer.get_state()
        except EXPECTED:
            pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
