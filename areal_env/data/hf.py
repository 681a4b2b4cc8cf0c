"""Rows of a Hugging Face dataset, for envs whose ``dataset=`` is not a JSONL file.

Users keep their data on the hub or in folders the ``datasets`` library wrote, so
an env's ``dataset=`` may name one: a hub id (``"org/name"``, where the user has
the hub), a folder saved with ``Dataset.save_to_disk``, or a folder of data files
(JSONL, Parquet, CSV) that ``datasets.load_dataset`` reads. ``datasets`` is an
optional dependency (``pip install 'areal-env[hf]'``), imported only here.

Example:
    >>> import tempfile, datasets
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     datasets.Dataset.from_list([{"question": "q?", "answer": "a"}]).save_to_disk(folder)
    ...     rows = list(read_hf_records(folder, split="train", what="QA"))
    >>> rows[0][0].endswith("[train] row 0"), rows[0][1]["answer"]
    (True, 'a')
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
"""Files ``save_to_disk`` writes: a folder holding one is read with ``load_from_disk``."""


def read_hf_records(name: str, *, split: str, what: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("name[split] row i", record)`` for every row of one split.

    Raises:
        ImportError: when ``datasets`` is not installed (names the extra to install).
        ValueError: when the dataset cannot be loaded (unknown name, no hub access,
            unknown split), naming the dataset and the loader's reason.
    """
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"{what} dataset {name!r} is not a file, so it is read as a Hugging Face dataset, "
            "which needs the datasets package: pip install 'areal-env[hf]'"
        ) from e
    rows = _load_split(datasets, name, split, what)
    for i, row in enumerate(rows):
        yield f"{name}[{split}] row {i}", dict(row)


def _load_split(datasets: Any, name: str, split: str, what: str) -> Any:
    path = Path(name)
    try:
        if path.is_dir() and any((path / m).exists() for m in SAVED_MARKERS):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"no split {split!r}; it has {sorted(loaded)}")
                return loaded[split]
            return loaded
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # the loaders raise many types; the user needs the reason
        raise ValueError(f"cannot load {what} dataset {name!r} (split {split!r}): {e}") from e
