"""Every labelled example in a path, with no split: what ``automl evaluate`` scores a finished run on
(and what a run's ``--test-data`` is read with).

>>> found = read_labelled("image_classification", "new_photos/")        # new_photos/<class>/<file>
>>> found.inputs[:1], found.names[:1], found.skipped[:1]
([PosixPath('new_photos/cat/1.jpg')], ['cat'], [('new_photos/cat/notes.md', 'no image extension ...')])
>>> found = read_labelled("text_classification", "reviews.csv", input_field="body")
>>> found.ids[:2]
['row 2', 'row 3']

Images: a folder of class folders, or a table (CSV/TSV, Parquet, JSONL, a saved ``datasets``
folder) of image paths relative to the table's folder. Texts: a table, or a folder of class folders
of ``.txt`` files. An input that cannot be used (an undecodable image, a file without an image
extension, a hidden file, an empty row) is listed in ``skipped`` with the reason, never fatal; data
of the other kind (texts for an image model, images for a text model) is a ``DataError`` that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from automl.config import TASKS, check_task
from automl.data import common
from automl.data.files import IMAGE_SUFFIXES, check_image
from automl.data.image import IMAGE_COLUMNS
from automl.data.image import TARGET_COLUMNS as IMAGE_TARGETS
from automl.data.text import TARGET_COLUMNS as TEXT_TARGETS
from automl.data.text import TEXT_COLUMNS, _cell
from automl.errors import DataError

TEXT_SUFFIXES = (".txt",)
#: values of a column looked at to tell image paths from texts
_SAMPLE = 50


@dataclass
class Labelled:
    """The labelled examples of a path, in the order they were read."""

    inputs: list  # image Paths, or texts
    names: list[str]  # label names, as written in the data
    ids: list[str]  # str(path) for files; "row N" (the row's number in the file) for table rows
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why) of every input left out
    source: str = ""  # how errors name the data ("the CSV '...'", "the folder '...'")

    def __len__(self) -> int:
        return len(self.inputs)


class WrongKind(DataError):
    """The data holds images where a text model needs texts, or texts where an image model needs images."""

    def __init__(self, path, held: str, task: str, run: str | None = None):
        self.path, self.held, self.task, self.run = Path(path), held, task, run
        model = f"'{run}' is" if run else "the model is"
        article = "an" if task[0] in "aeiou" else "a"
        super().__init__(f"'{path}' holds {held}, but {model} {article} {task} run: pass labelled {_wanted(task)}.")

    def naming(self, run) -> WrongKind:
        """The same error, naming the run."""
        return WrongKind(self.path, self.held, self.task, str(run))


def read_labelled(
    task: str,
    path: str | Path,
    input_field: str | int | None = None,
    target_field: str | int | None = None,
    header: bool = True,
) -> Labelled:
    """Every labelled example in ``path`` for a model of ``task`` (no train/validation split)."""
    task = check_task(task)
    path = common.existing_path(path)
    table = path.suffix.lower() in common.TABLE_SUFFIXES or common.is_hf_dataset(path)
    if not table and not path.is_dir():
        raise DataError(
            f"Cannot read labelled examples from '{path}': pass a folder of class folders "
            f"('{path}/<class>/<file>') or a CSV/TSV, Parquet or JSONL table with a label column."
        )
    if TASKS[task] == "image":
        return _image_table(path, input_field, target_field, header, task) if table else _image_folders(path, task)
    return _text_table(path, input_field, target_field, header, task) if table else _text_folders(path, task)


# --------------------------------------------------------------------------- images
def _image_folders(root: Path, task: str) -> Labelled:
    folders = _class_folders(root)
    found = Labelled([], [], [], _left_out(root), f"the folder '{root}'")
    texts = 0
    for folder in folders:
        for file in common.files_in(folder, None):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                texts += file.suffix.lower() in TEXT_SUFFIXES
                found.skipped.append((str(file), f"no image extension ({', '.join(IMAGE_SUFFIXES)})"))
                continue
            usable, problem = check_image_safely(file)
            if not usable:
                found.skipped.append((str(file), problem))
                continue
            found.inputs.append(file)
            found.names.append(folder.name)
            found.ids.append(str(file))
    if not found.inputs and texts:
        raise WrongKind(root, "text files", task)
    return found


def _image_table(path: Path, input_field, target_field, header: bool, task: str) -> Labelled:
    frame, source, first_row = common.read_table(path, header)
    if input_field is None and _has_column(frame, TEXT_COLUMNS) and not _has_column(frame, IMAGE_COLUMNS):
        raise WrongKind(path, "texts", task)
    column = common.pick_column(frame, input_field, IMAGE_COLUMNS, source, "image path")
    label_column = common.pick_column(frame, target_field, IMAGE_TARGETS, source, "label")
    root = path if path.is_dir() else path.parent  # paths are relative to the table's folder, as for training
    found = Labelled([], [], [], [], source)
    missing = 0
    for row, (value, label) in enumerate(zip(frame[column], frame[label_column], strict=True), start=first_row):
        where, name, file = f"row {row}", _cell(label), _cell(value)
        if not file.strip():
            found.skipped.append((where, f"the image path in column '{column}' is empty"))
            continue
        image = root / file
        if name.strip() == "":
            found.skipped.append((str(image), f"{where}: the label in column '{label_column}' is empty"))
            continue
        if not image.is_file():
            missing += 1
            found.skipped.append((str(image), f"{where}: no such file"))
            continue
        usable, problem = check_image_safely(image)
        if not usable:
            found.skipped.append((str(image), f"{where}: {problem}"))
            continue
        found.inputs.append(image)
        found.names.append(name)
        found.ids.append(str(image))
    if not found.inputs and missing:
        values = [_cell(v) for v in frame[column][:_SAMPLE]]
        if not any(Path(v.strip()).suffix.lower() in IMAGE_SUFFIXES for v in values):
            raise WrongKind(path, f"texts (column '{column}' names no image file)", task)
        raise DataError(
            f"None of the {missing} image paths in column '{column}' of {source} exists (they are read relative "
            f"to '{root}'). Fix the paths or pass --input-field for the column that holds them."
        )
    return found


def check_image_safely(path: Path) -> tuple[bool, str]:
    """(usable, why not): ``check_image`` (a full decode), where an image over PIL's own pixel limit
    is unusable rather than an exception."""
    from PIL import Image

    try:
        usable, findings = check_image(path)
    except Image.DecompressionBombError as exc:
        return False, f"too many pixels to decode ({exc})"
    return usable, (findings[0].problem if findings and not usable else "")


# --------------------------------------------------------------------------- texts
def _text_folders(root: Path, task: str) -> Labelled:
    folders = _class_folders(root)
    found = Labelled([], [], [], _left_out(root), f"the folder '{root}'")
    images = 0
    for folder in folders:
        for file in common.files_in(folder, None):
            if file.suffix.lower() not in TEXT_SUFFIXES:
                images += file.suffix.lower() in IMAGE_SUFFIXES
                found.skipped.append((str(file), "not a .txt file"))
                continue
            text = file.read_text(encoding="utf-8", errors="replace")  # as training reads it
            if not text.strip():
                found.skipped.append((str(file), "empty text"))
                continue
            found.inputs.append(text)
            found.names.append(folder.name)
            found.ids.append(str(file))
    if not found.inputs and images:
        raise WrongKind(root, "images", task)
    return found


def _text_table(path: Path, input_field, target_field, header: bool, task: str) -> Labelled:
    frame, source, first_row = common.read_table(path, header)
    if input_field is None and _has_column(frame, IMAGE_COLUMNS) and not _has_column(frame, TEXT_COLUMNS):
        raise WrongKind(path, "image paths", task)
    column = common.pick_column(frame, input_field, TEXT_COLUMNS, source, "text")
    label_column = common.pick_column(frame, target_field, TEXT_TARGETS, source, "label")
    values = [_cell(v).strip() for v in frame[column][:_SAMPLE]]
    if values and all(Path(v).suffix.lower() in IMAGE_SUFFIXES and " " not in v for v in values if v):
        raise WrongKind(path, f"image paths (column '{column}')", task)
    found = Labelled([], [], [], [], source)
    for row, (text, label) in enumerate(zip(frame[column], frame[label_column], strict=True), start=first_row):
        where, name, text = f"row {row}", _cell(label).strip(), _cell(text)
        if name == "" or text.strip() == "":
            what = f"the label in column '{label_column}'" if name == "" else f"the text in column '{column}'"
            found.skipped.append((where, f"{what} is empty"))
            continue
        found.inputs.append(text)
        found.names.append(name)
        found.ids.append(where)
    return found


# --------------------------------------------------------------------------- shared
def _class_folders(root: Path) -> list[Path]:
    folders = common.class_folders(root)
    if not folders:
        raise DataError(
            f"The folder '{root}' has no class sub-folders. Lay the examples out as '{root}/<class>/<file>', "
            "or pass a table with a label column."
        )
    return folders


def _left_out(root: Path) -> list[tuple[str, str]]:
    """Hidden files and folders anywhere under ``root`` (never data), and files outside any class folder."""
    found = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if any(common.is_hidden(Path(part)) for part in parts[:-1]):
            continue  # inside a hidden folder, which is listed itself
        if common.is_hidden(path):
            found.append((str(path), "hidden folder, not read" if path.is_dir() else "hidden file"))
        elif len(parts) == 1 and path.is_file():
            found.append((str(path), "not in a class folder"))
    return found


def _has_column(frame, names) -> bool:
    return any(str(c).lower().strip() in names for c in frame.columns)


def _wanted(task: str) -> str:
    return "images" if TASKS[task] == "image" else "texts"
