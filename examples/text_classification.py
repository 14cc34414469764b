"""The Flash tier in three steps, on texts: data -> model -> finetune. Runs offline.

python examples/text_classification.py                    # on generated news-like sentences
python examples/text_classification.py --data texts.csv   # a CSV with text and label columns
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
from pathlib import Path

from automl.data import TextClassificationData
from automl.flash import TextClassifier, finetune

TOPICS = {
    "sport": ["The {} won the final after extra time", "Fans cheered as the {} scored twice",
              "The coach praised the {} after the match", "A late goal sent the {} top of the league"],
    "business": ["Shares of the {} rose after strong earnings", "The {} cut its profit forecast",
                 "Investors sold the {} as interest rates climbed", "The {} announced a merger with a rival"],
    "science": ["Researchers at the {} discovered a new exoplanet", "The {} published a study on gene editing",
                "A telescope built by the {} photographed a distant galaxy",
                "Scientists from the {} sequenced an ancient genome"],
}  # fmt: skip
SUBJECTS = ["club", "company", "institute", "team", "group", "university", "firm", "laboratory", "side", "bank"]


def write_sample_csv(path: Path, per_topic: int = 60, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for label, templates in TOPICS.items():
            for _ in range(per_topic):
                writer.writerow([rng.choice(templates).format(rng.choice(SUBJECTS)), label])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a CSV with a text column and a label column")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    path = args.data or write_sample_csv(Path(tempfile.mkdtemp(prefix="automl-text-")) / "texts.csv")

    # 1. Data: text and label columns are found by name; the split is stratified and seeded.
    data = TextClassificationData.from_csv(path, val_split=0.2, batch_size=32)

    # 2. Model: the packaged all-MiniLM-L6-v2 encoder (no download), mean pooling, a new head.
    model = TextClassifier(backbone="all-MiniLM-L6-v2", labels=data.labels, learning_rate=3e-3, max_length=64)

    # 3. Fine-tune: the encoder stays frozen, only the head learns (fast on a CPU).
    trainer = finetune(model, data, strategy="freeze", max_epochs=args.epochs, accelerator="auto")

    scores = trainer.validate(model, datamodule=data, verbose=False)[0]
    print(f"validation accuracy {scores['val_accuracy']:.3f}, macro F1 {scores['val_f1_macro']:.3f}")

    texts = ["The striker scored in the derby", "The bank's shares fell sharply", "A new species of frog was found"]
    probabilities = trainer.predict(model, datamodule=TextClassificationData.from_texts(texts, data.labels))[0]
    for text, row in zip(texts, probabilities, strict=True):
        print(f"{text!r}: {data.labels[int(row.argmax())]} ({row.max():.2f})")


if __name__ == "__main__":
    main()
