"""Person re-ID datasets: parse folders of cropped images into train / query / gallery lists.

Every supported dataset uses the Market-1501 layout::

    root/
      bounding_box_train/   training images
      query/                probe images
      bounding_box_test/    gallery images (may hold distractors with pid 0)

File names start with ``<pid>_c<camera>``, e.g. ``0002_c1s1_000451_03.jpg``
(Market-1501), ``0001_c2_f0046182.jpg`` (DukeMTMC-reID) or ``0001_c1_1.png``
(CUHK03-NP). A pid of -1 marks junk boxes, which are dropped everywhere; pid 0
marks distractors, which are kept in the gallery only. Camera ids become
0-based (``c1`` -> 0). Train pids are relabelled 0..N-1 in sorted order of the
original pid so they index classifier outputs; query and gallery keep the
original pids so that matches across the two remain valid. Camera numbers may
have any number of digits (``c12`` is camera 12). Image files whose names do not
follow the pattern are left out with a warning that counts them.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

CUHK03_VARIANTS = ("detected", "labeled")
# Every format the image reader decodes (data/images.py), for datasets and extract alike.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# (split, folder) in the Market-1501 layout.
MARKET_FOLDERS = (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test"))
FILE_NAME_PATTERN = re.compile(r"([-\d]+)_c(\d+)")
JUNK_PID = -1
DISTRACTOR_PID = 0


@dataclass(frozen=True)
class Sample:
    """One image: its file path, identity and 0-based camera id."""

    path: str
    pid: int
    camid: int


@dataclass
class ReIDDataset:
    """A re-ID dataset split into training images and a query / gallery test set.

    ``val_query`` / ``val_gallery``: a validation split carved from the training identities
    (:func:`~reid_prune.data.validation.carve_validation`), empty when there is none.
    """

    name: str
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    val_query: list[Sample] = field(default_factory=list)
    val_gallery: list[Sample] = field(default_factory=list)

    @property
    def num_train_pids(self) -> int:
        """Number of training identities (the classifier size)."""
        return len({s.pid for s in self.train})

    def summary(self) -> str:
        """A small table: images, identities and cameras of each split."""
        lines = [
            f"dataset {self.name}",
            f"  {'split':<8}| {'images':>7} | {'identities':>10} | {'cameras':>7}",
            f"  {'-' * 8}+{'-' * 9}+{'-' * 12}+{'-' * 8}",
        ]
        splits = [("train", self.train), ("query", self.query), ("gallery", self.gallery)]
        if self.val_query:
            splits += [("val qry", self.val_query), ("val gal", self.val_gallery)]
        for split, samples in splits:
            pids = {s.pid for s in samples}
            if split == "gallery":  # train pids are relabelled, so 0 is a distractor only here
                pids.discard(DISTRACTOR_PID)
            cameras = len({s.camid for s in samples})
            lines.append(f"  {split:<8}| {len(samples):>7} | {len(pids):>10} | {cameras:>7}")
        distractors = sum(s.pid == DISTRACTOR_PID for s in self.gallery)
        if distractors:
            lines.append(f"  gallery also holds {distractors} distractor images (pid 0), not counted as identities")
        return "\n".join(lines)


def _parse_name(file_name: str) -> tuple[int, int] | None:
    """(pid, 1-based camera) from a file name, or None when it does not follow the pattern."""
    match = FILE_NAME_PATTERN.match(file_name)
    if match is None:
        return None
    try:
        pid = int(match.group(1))
    except ValueError:  # the pattern also accepts runs such as "--"
        return None
    camera = int(match.group(2))
    return (pid, camera) if camera >= 1 else None


def _parse_split(folder: Path, *, keep_distractors: bool) -> list[Sample]:
    """Samples of one split folder with their original pids, sorted by path."""
    samples = []
    skipped = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        parsed = _parse_name(path.name)
        if parsed is None:
            skipped.append(path.name)
            continue
        pid, camera = parsed
        if pid == JUNK_PID or (pid == DISTRACTOR_PID and not keep_distractors):
            continue
        samples.append(Sample(str(path), pid, camera - 1))
    if skipped and samples:
        warnings.warn(f"{folder}: left out {len(skipped)} image{'s' if len(skipped) > 1 else ''} whose names do not "
                      f"match {FILE_NAME_PATTERN.pattern!r} (<pid>_c<camera>...), e.g. {skipped[0]!r}",
                      UserWarning, stacklevel=2)
    if not samples:
        found = f"; {len(skipped)} image names did not match, e.g. {skipped[0]!r}" if skipped else ""
        raise ValueError(
            f"data.root: folder '{folder}' has no parseable images{found}. Expected image files "
            f"({', '.join(IMAGE_EXTENSIONS)}) whose names match {FILE_NAME_PATTERN.pattern!r} with "
            f"a pid >= 1 and a camera >= 1, e.g. '0002_c1s1_000451_03.jpg'"
        )
    return samples


def relabel(samples: list[Sample]) -> list[Sample]:
    """Map pids to 0..N-1 in sorted order of the original pid."""
    label_of = {pid: label for label, pid in enumerate(sorted({s.pid for s in samples}))}
    return [Sample(s.path, label_of[s.pid], s.camid) for s in samples]


def without_paths(dataset: ReIDDataset, paths: set[str]) -> ReIDDataset:
    """A copy of ``dataset`` without the samples at ``paths``; train pids are relabelled to stay 0..N-1.

    Raises:
        ValueError: a split would be left empty.
    """
    splits = {split: [s for s in getattr(dataset, split) if s.path not in paths]
              for split in ("train", "query", "gallery")}
    empty = [split for split, samples in splits.items() if not samples]
    if empty:
        raise ValueError(f"dataset {dataset.name}: no usable image is left in {', '.join(empty)}")
    return replace(dataset, train=relabel(splits["train"]), query=splits["query"], gallery=splits["gallery"])


def read_market_layout(root: str | Path, name: str) -> ReIDDataset:
    """Read any folder in Market-1501 layout (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: folder '{root}' does not exist")
    folders = [folder for _, folder in MARKET_FOLDERS]
    missing = [folder for folder in folders if not (root / folder).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"data.root: folder '{root}' has no {', '.join(missing)}; expected {', '.join(folders)}"
        )
    splits = {
        split: _parse_split(root / folder, keep_distractors=split == "gallery") for split, folder in MARKET_FOLDERS
    }
    return ReIDDataset(name, relabel(splits["train"]), splits["query"], splits["gallery"])


def _cuhk03np_folder(root: Path, variant: str) -> tuple[Path, str]:
    """CUHK03-NP holds one Market-layout folder per box kind: ``root/detected`` and ``root/labeled``."""
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: folder '{root}' does not exist")
    if not (root / variant).is_dir():
        raise FileNotFoundError(
            f"data.root: folder '{root}' has no {variant}; a CUHK03-NP root holds "
            f"{' and '.join(CUHK03_VARIANTS)}, each with {', '.join(folder for _, folder in MARKET_FOLDERS)}"
        )
    return root / variant, f"cuhk03np-{variant}"


# kind -> (root, cuhk03_variant) -> (the Market-layout folder to read, the default display name).
# A dataset kind is one entry here; data.dataset in the config accepts every key (reid_prune/config.py).
DATASETS = {
    "market1501": lambda root, variant: (root, "market1501"),
    "dukemtmc": lambda root, variant: (root, "dukemtmc"),
    "cuhk03np": _cuhk03np_folder,
    "market_layout": lambda root, variant: (root, root.name),
}
DATASET_KINDS = tuple(DATASETS)


def build_dataset(
    kind: str,
    root: str | Path,
    *,
    name: str | None = None,
    cuhk03_variant: str = "detected",
    verbose: bool = False,
) -> ReIDDataset:
    """Parse a re-ID dataset from disk.

    Args:
        kind: one of :data:`DATASET_KINDS`: ``market1501``, ``dukemtmc``,
            ``cuhk03np`` (``root`` holds ``detected/`` and ``labeled/``, each in
            Market layout) or ``market_layout`` (any folder in Market layout).
        root: the dataset folder.
        name: display name; defaults to the kind (``cuhk03np-<variant>``) or,
            for ``market_layout``, the folder name.
        cuhk03_variant: ``detected`` or ``labeled`` boxes of CUHK03-NP.
        verbose: print :meth:`ReIDDataset.summary`.

    Returns:
        A :class:`ReIDDataset` with samples sorted by path.
    """
    if kind not in DATASET_KINDS:
        raise ValueError(f"data.kind: expected one of {list(DATASET_KINDS)}, got {kind!r}")
    if cuhk03_variant not in CUHK03_VARIANTS:
        raise ValueError(f"data.cuhk03_variant: expected one of {list(CUHK03_VARIANTS)}, got {cuhk03_variant!r}")
    folder, default_name = DATASETS[kind](Path(root), cuhk03_variant)
    dataset = read_market_layout(folder, name or default_name)
    if verbose:
        print(dataset.summary())
    return dataset
