"""Faults planted inside FFCV writer processes.

The writer processes are forked from a forkserver, not from the test process, so a monkeypatch
of the test process does not reach them: the planted behaviour lives in subclasses of the
writer's dataset, which the workers unpickle by name from this module (the forkserver starts
with the test process's sys.path, which holds tests/).
"""

from __future__ import annotations

import os
import sys
import time

from luab_data.beton.samples import Block, PackSamples
from luab_data.writers import beton as beton_writer


class DyingSamples(PackSamples):
    """A writer process exits abruptly (like a crash or the OOM killer) on sample 5."""

    def sample(self, index: int) -> tuple:
        if index == 5:
            os._exit(3)
        return super().sample(index)


class FailingBlocks(PackSamples):
    """Computing a block of byproducts raises, in the workers and in the parent alike."""

    def block(self, index: int) -> Block:
        raise ZeroDivisionError("planted")


class SlowSamples(PackSamples):
    """Each sample takes 0.2 s, so that a build is surely still packing when it is signalled."""

    def sample(self, index: int) -> tuple:
        time.sleep(0.2)
        return super().sample(index)


class ModulesSeen(PackSamples):
    """Flags (as a failed image) every sample packed in a process that has DALI imported:
    state that a fork would have copied from the test process."""

    def sample(self, index: int) -> tuple:
        out = super().sample(index)
        if "nvidia.dali.pipeline" in sys.modules:
            self.failures[index] = 1
        return out


def plant(cls: type[PackSamples]) -> None:
    """Make build_beton use `cls` (the parent constructs the dataset that workers receive)."""
    beton_writer.PackSamples = cls


def main() -> None:
    """`python tests/fault_plants.py SlowSamples build ...`: the CLI with a planted dataset."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fault_plants  # by name, not as __main__: the workers unpickle the class from it

    fault_plants.plant(getattr(fault_plants, sys.argv[1]))
    from luab_data.cli import main as cli

    cli(sys.argv[2:], prog_name="luab-data")


if __name__ == "__main__":
    main()
