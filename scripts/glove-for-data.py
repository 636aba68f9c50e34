#!/usr/bin/env python3
"""A GloVe-format file for the words of a dataset's prompts (fixed-seed random 50-d vectors): lets a check train
the GloVe models on synthetic data without the 160 MB real file. Not for real experiments (`make glove`).

Usage: glove-for-data.py DATA OUT.txt
"""
import csv
import random
import re
import sys

data, out = sys.argv[1], sys.argv[2]
words = set()
for split in ("train", "valid", "test"):
    with open(f"{data}/{split}.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            words.update(re.findall(r"[a-z']+|[^\sa-z']", (row["x_text"] + " " + row["speaker"]).lower()))
words.update(["the", "speaker", "said", "###"])
rng = random.Random(7)
with open(out, "w", encoding="utf-8") as f:
    for word in sorted(words):
        f.write(word + " " + " ".join(f"{rng.uniform(-1, 1):.5f}" for _ in range(50)) + "\n")
print(f"{out}: {len(words)} words", file=sys.stderr)
