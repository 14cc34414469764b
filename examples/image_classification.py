"""The Flash tier in three steps, on images: data -> model -> finetune. Runs offline.

python examples/image_classification.py                 # on generated digits
python examples/image_classification.py --data ./imgs   # on your own folder-per-class images
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from make_digits import write_digits

from automl.data import ImageClassificationData
from automl.flash import ImageClassifier, finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a folder with one sub-folder per class")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    folder = args.data or write_digits_to_temp()

    # 1. Data: one folder per class; 20% of each class is held out for validation (seeded).
    data = ImageClassificationData.from_folders(folder, val_split=0.2, image_size=96, batch_size=32)

    # 2. Model: a pretrained backbone (shipped with automl, no download) and a new head for our labels.
    model = ImageClassifier(backbone="tf_efficientnet_lite0", labels=data.labels, learning_rate=2e-3)

    # 3. Fine-tune: the head alone for one epoch, then the whole network at a tenth of the learning rate.
    trainer = finetune(model, data, strategy=("freeze_unfreeze", 1), max_epochs=args.epochs, accelerator="auto")

    scores = trainer.validate(model, datamodule=data, verbose=False)[0]
    print(f"validation accuracy {scores['val_accuracy']:.3f}, macro F1 {scores['val_f1_macro']:.3f}")

    # Predict on files: probabilities per class, in the order of data.labels.
    files = [path for path, _ in data.val_samples[:5]]
    to_predict = ImageClassificationData.from_files(files, labels=data.labels, image_size=96)
    probabilities = trainer.predict(model, datamodule=to_predict)[0]
    for path, row in zip(files, probabilities, strict=True):
        print(f"{path.parent.name}/{path.name}: predicted {data.labels[int(row.argmax())]} ({row.max():.2f})")


def write_digits_to_temp() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="automl-digits-")) / "digits"
    write_digits(folder, size=64)
    return folder


if __name__ == "__main__":
    main()
