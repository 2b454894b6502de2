"""How far a reader has got, in units of its input (bytes of a file, or files of a folder)."""

from dataclasses import dataclass


@dataclass
class Progress:
    total: int
    done: int = 0
    unit: str = "B"
