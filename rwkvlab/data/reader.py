"""The reader interface: one subclass per published raw layout (docs §8), in a registry.

A reader lists the cases of a raw folder (:meth:`Reader.scan`), loads one case as arrays
(:meth:`Reader.load`) and draws the paper's split (:meth:`Reader.split`). It never writes.
:func:`validate` runs all three over a whole folder and collects *every* problem, each naming the
file or folder and what was expected, before anything is prepared.
"""

from __future__ import annotations

import logging
import textwrap
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, Literal, Sequence

import numpy as np

from rwkvlab.data._base import DataError, Problem, make_split, read_image, read_mask
from rwkvlab.progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["Case", "Sample", "Reader", "ImageMaskReader", "READERS", "PREPARE_OPTIONS", "register_reader",
           "validate", "iter_valid"]

# Keys of ``prepare.options.<dataset>`` read by the prepare stage itself, not by the reader's constructor:
# ``reader`` picks the reader of a dataset name that is not registered, ``skip_invalid`` leaves out the
# cases that have a problem instead of stopping.
PREPARE_OPTIONS = ("reader", "skip_invalid")


@dataclass(frozen=True)
class Case:
    """One case of a raw dataset.

    Args:
        case_id: unique within the dataset.
        files: the files the case is read from (named in messages).
        kind: ``"image"`` (2D, trained and evaluated per image), ``"slice"`` (a 2D training slice of a
            volumetric set) or ``"volume"`` (a 3D case evaluated per volume, docs §7).
        split: the official split this case belongs to (``train``, ``val``, ``test``, ``unlabelled``,
            ``<split>_unlabelled`` for a split whose masks are not part of the download), when the layout
            defines one.
        group: cases that must stay in one split (a patient, a video).
        labelled: ``False`` for unlabelled images (semi-supervised sets).
    """

    case_id: str
    files: tuple[Path, ...]
    kind: Literal["image", "slice", "volume"] = "image"
    split: str | None = None
    group: str | None = None
    labelled: bool = True


@dataclass
class Sample:
    """Arrays of one case.

    ``image``: uint8 (H, W, 3) for colour photographs, or float32 in [0, 1] of shape (H, W) for a
    grey 2D case and (D, H, W) for a volume. ``label``: uint8 class indices of the image's spatial
    shape, or ``None`` for an unlabelled case. ``spacing``: a volume's voxel size in mm along its
    (D, H, W) axes, where the files carry one (HD95 in mm, docs §7); ``None`` otherwise.
    """

    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float] | None = None


class Reader(ABC):
    """A published raw layout.

    Subclasses set the class attributes and implement :meth:`scan` and :meth:`load`; :meth:`split`
    defaults to the official split recorded in each case's ``split``.

    Args:
        root: the raw folder.
    """

    name: ClassVar[str]
    class_names: ClassVar[tuple[str, ...]]
    description: ClassVar[str]
    layout: ClassVar[str]  # the expected tree, shown when the folder does not match it

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def expected(self) -> str:
        """The expected layout under this reader's root, for messages."""
        return f"expected layout under {self.root}:\n{self.layout_text()}"

    @classmethod
    def layout_text(cls) -> str:
        """The expected raw layout, dedented."""
        return textwrap.dedent(cls.layout).strip("\n")

    def require_dirs(self, problems: list[str], *dirs: Path) -> bool:
        """Append one problem per missing or empty folder (with the expected tree); ``True`` if all are there."""
        ok = True
        for d in dirs:
            if not d.is_dir():
                problems.append(f"{d}: folder not found; {self.expected()}")
                ok = False
            elif not any(p for p in d.iterdir() if not p.name.startswith(".")):
                problems.append(f"{d}: folder is empty; {self.expected()}")
                ok = False
        return ok

    @abstractmethod
    def scan(self, problems: list[str]) -> list[Case]:
        """List the cases; append every layout problem (missing folder, image without mask, ...)."""

    @abstractmethod
    def load(self, case: Case) -> Sample:
        """Read one case; raise :class:`DataError` naming the file (unreadable, size mismatch, bad labels)."""

    def split(self, cases: Sequence[Case], seed: int) -> dict[str, list[str]]:
        """The paper's split (docs §8) as split name -> case ids; ``seed`` matters for random splits."""
        out: dict[str, list[str]] = {}
        for case in cases:
            if case.split is None:
                raise DataError(f"{self.name}: case {case.case_id} has no official split")
            out.setdefault(case.split, []).append(case.case_id)
        return {k: sorted(v) for k, v in out.items()}

    def random_split(self, cases: Sequence[Case], seed: int, fractions: dict[str, float]) -> dict[str, list[str]]:
        """Seeded random split of the labelled cases (8:1:1 for the binary sets)."""
        return make_split([c.case_id for c in cases if c.labelled], fractions, seed)

    def extra_splits(self, cases: Sequence[Case]) -> dict[str, dict[str, list[str]]]:
        """Further published splits beside the paper's (e.g. cross-validation folds), by file name; none here."""
        return {}


READERS: dict[str, type[Reader]] = {}


def register_reader(cls: type[Reader]) -> type[Reader]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    # The same class seen again is a reader module run as ``python -m`` (imported, then run as __main__).
    if cls.name in READERS and READERS[cls.name].__qualname__ != cls.__qualname__:
        raise ValueError(f"dataset reader {cls.name!r} registered twice")
    READERS[cls.name] = cls
    return cls


def check_sample(case: Case, sample: Sample, num_classes: int) -> None:
    """Raise :class:`DataError` if a loaded sample does not fit its case (shape, label range)."""
    where = case.files[0] if case.files else case.case_id
    img, lab = sample.image, sample.label
    spatial = img.shape[:2] if img.dtype == np.uint8 else img.shape
    if case.kind == "volume" and img.ndim != 3:
        raise DataError(f"{where}: expected a volume (D, H, W), got shape {img.shape}")
    if lab is None:
        if case.labelled:
            raise DataError(f"{where}: labelled case without a label")
        return
    if lab.shape != spatial:
        raise DataError(f"{where}: label shape {lab.shape} differs from image shape {spatial}")
    if lab.size and int(lab.max()) >= num_classes:
        raise DataError(f"{where}: label values up to {int(lab.max())}, expected 0..{num_classes - 1}")


def iter_valid(reader: Reader, problems: list[str], scanned: list[Case] | None = None
               ) -> Iterator[tuple[Case, Sample]]:
    """Scan and load every case, yielding the good ones and appending every problem.

    Problems of one case are :class:`~rwkvlab.data._base.Problem` with its id. Cases sharing an id
    are reported once and none of them is loaded.

    Args:
        reader: the dataset over its raw folder.
        problems: where the problems go.
        scanned: if given, every case the scan found is appended (good or not).
    """
    cases = reader.scan(problems)
    if scanned is not None:
        scanned.extend(cases)
    dup = sorted(cid for cid, n in Counter(c.case_id for c in cases).items() if n > 1)
    for cid in dup:
        files = [str(f) for c in cases if c.case_id == cid for f in c.files[:1]]
        problems.append(Problem(f"duplicate case id {cid!r}: {', '.join(files)}", case=cid))
    unique = [c for c in cases if c.case_id not in set(dup)]
    for case in Progress(unique, desc=f"read {reader.name}", unit="case"):
        try:
            sample = reader.load(case)
            check_sample(case, sample, len(reader.class_names))
        except DataError as err:
            problems.append(Problem(str(err), case=case.case_id))
            continue
        yield case, sample


def validate(reader: Reader) -> tuple[list[Case], list[str]]:
    """Every problem of a raw folder (empty list: valid), with the cases that were read."""
    problems: list[str] = []
    cases = [case for case, _ in iter_valid(reader, problems)]
    return cases, problems


class ImageMaskReader(Reader):
    """Base of the 2D sets stored as one image file and one mask file per case.

    ``case.files`` is ``(image, mask)``, or ``(image,)`` for an unlabelled case. Masks are mapped with
    ``mask_values`` (pixel value -> class) or, for lossy JPEG masks, binarised above ``mask_threshold``.
    """

    mask_values: ClassVar[dict[int, int] | None] = None
    mask_threshold: ClassVar[int | None] = None

    def load(self, case: Case) -> Sample:
        image = read_image(case.files[0])
        if not case.labelled:
            return Sample(image, None)
        label = read_mask(case.files[1], self.mask_values, shape=image.shape[:2], threshold=self.mask_threshold)
        return Sample(image, label)
