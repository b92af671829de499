"""Tables of the Free Spoken Digit Dataset (FSDD, CC BY-SA 4.0) for audio recipes: one speaker is one domain.

FSDD's files are ``<speaker>/<digit>_<speaker>_<n>.wav``: the label is the file name's first field. This writes, into
an output folder, the tables a recipe reads (``audio`` paths relative to the table, ``label``, ``speaker``):

* ``<speaker>.csv``: one speaker's clips (a target or evaluation domain);
* ``without_<speaker>.csv``: every other speaker's clips (the labelled source of a leave-one-speaker-out run).

Usage::

    python -m hf_transfer.audio.fsdd ../shared/data/fsdd data/fsdd
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from ..errors import DataError


def fsdd_rows(root: str | os.PathLike) -> dict[str, list[tuple[Path, str]]]:
    """``{speaker: [(clip path, digit label), ...]}`` of an FSDD folder, every file name checked."""
    root = Path(root)
    speakers = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    if not speakers:
        raise DataError(f"fsdd: {str(root)!r} has no speaker folders (<speaker>/<digit>_<speaker>_<n>.wav)")
    rows: dict[str, list[tuple[Path, str]]] = {}
    for folder in speakers:
        clips = sorted(folder.glob("*.wav"))
        for clip in clips:
            parts = clip.stem.split("_")
            if len(parts) != 3 or not parts[0].isdigit() or parts[1] != folder.name:
                raise DataError(f"fsdd: {str(clip)!r} is not named <digit>_{folder.name}_<n>.wav")
        rows[folder.name] = [(clip, clip.stem.split("_")[0]) for clip in clips]
    return rows


def write_fsdd_tables(root: str | os.PathLike, output_dir: str | os.PathLike) -> list[Path]:
    """Write ``<speaker>.csv`` and ``without_<speaker>.csv`` for every speaker of ``root`` into ``output_dir``;
    returns the files written."""
    rows = fsdd_rows(root)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def write(name: str, speakers: list[str]) -> None:
        path = out / name
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["audio", "label", "speaker"])
            for speaker in speakers:
                for clip, label in rows[speaker]:
                    writer.writerow([os.path.relpath(clip.resolve(), out.resolve()), int(label), speaker])
        written.append(path)

    for speaker in rows:
        write(f"{speaker}.csv", [speaker])
        write(f"without_{speaker}.csv", [s for s in rows if s != speaker])
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_transfer.audio.fsdd", description=__doc__.split("\n")[0])
    parser.add_argument("fsdd", help="the FSDD folder (one sub-folder per speaker)")
    parser.add_argument("output_dir", help="where the tables are written")
    args = parser.parse_args(argv)
    for path in write_fsdd_tables(args.fsdd, args.output_dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
