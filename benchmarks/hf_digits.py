"""The digits of kind ``digits`` written as a Hugging Face data set, for the comparison of
docs/data.md (kind ``hf_dataset`` against the in-memory kind, same config and seeds).

    python benchmarks/hf_digits.py OUT_DIR
    perceptio train digits --run-dir runs/hf_digits \
        --set 'data={kind: hf_dataset, path: OUT_DIR, columns: {inputs: inputs, labels: label}, max_shift: 1}'

OUT_DIR gets a DatasetDict (``save_to_disk``) with the train / validation / test splits of
``digits`` (its split fractions and seed; pixels in [0, 1] as float32 ``[8, 8, 1]``, labels a
ClassLabel of the ten digits).
"""

import sys

from perceptio.data.builtin import DigitsConfig
from perceptio.data.hf import classification_to_hf

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    classification_to_hf(DigitsConfig().load()).save_to_disk(sys.argv[1])
    print(f"wrote {sys.argv[1]}")
