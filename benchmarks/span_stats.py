"""Measured span statistics of the span-corruption objectives against their settings.

    python benchmarks/span_stats.py [--docs=1000] [--doc_len=2000] [--seq_len=2048]

Runs each objective over `docs` random documents of `doc_len` tokens through
`objectives.objective_mixture` (as training does, fixed seed) for the stdlib SentencePiece
(64 sentinels) and CodeGen2's tokenizer (899 sentinels), with rows of `seq_len` tokens and
with no row limit, and prints one JSON line per case: the measured noise density (noise
tokens / document tokens), mean span length (noise tokens / spans), sequences per document,
and the settings they should match. tests/test_objectives.py checks the same on 200.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import seqio
import tensorflow as tf

from codegen2_jax.data import objectives as O
from codegen2_jax.data import vocab as V

CODEGEN2_IDS = V.SpecialIds(eos=50256, sep=50299, eom=50300, pad=None,
                            masks=tuple(51200 - k for k in range(1, 900)))
SETTINGS = {"span_corruption": (sum(O.FILE_LEVEL_MASK_RATIO) / 2, O.FILE_LEVEL_MEAN_SPAN),
            "t5_span_corruption": (0.15, 3.0)}


class _Vocabulary:
  """Carries a vocabulary's special ids, all the objectives read."""

  def __init__(self, ids):
    self.special_ids = ids


def measure(name: str, ids: V.SpecialIds, docs: int, doc_len: int, seq_len: int | None
            ) -> dict:
  tokens = np.random.RandomState(0).randint(100, 900, (docs, doc_len))
  ds = tf.data.Dataset.from_tensor_slices({"targets": tf.constant(tokens, tf.int32),
                                           "source": tf.constant(["doc"] * docs)})
  with seqio.map_seed_manager(7):
    out = O.objective_mixture(ds, seq_len and {"targets": seq_len},
                              {"targets": seqio.Feature(_Vocabulary(ids))},
                              probabilities=((name, 1.0),))
  masks = np.array(ids.masks)
  noise = spans = doc_tokens = sequences = 0
  for ex in out.as_numpy_iterator():
    t = ex["targets"]
    after_sep = len(t) - int(np.argmax(t == ids.sep)) - 1
    k = int(np.isin(t[-after_sep:], masks).sum())
    noise += after_sep - 2 * k          # each span: sentinel, tokens, <eom>
    spans += k
    doc_tokens += len(t) - 3 * k - 2
    sequences += 1
  density, mean_span = SETTINGS[name]
  return {"objective": name, "sentinels": len(ids.masks), "seq_len": seq_len,
          "docs": docs, "doc_len": doc_len, "noise_density": round(noise / doc_tokens, 4),
          "setting_noise_density": density, "mean_span_length": round(noise / spans, 3),
          "setting_mean_span_length": mean_span,
          "sequences_per_doc": round(sequences / docs, 3)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--docs", type=int, default=1000)
  parser.add_argument("--doc_len", type=int, default=2000)
  parser.add_argument("--seq_len", type=int, default=2048)
  args = parser.parse_args()
  for name in SETTINGS:
    for ids in (V.DEFAULT_SPECIAL_IDS, CODEGEN2_IDS):
      for seq_len in (args.seq_len, None):
        start = time.perf_counter()
        row = measure(name, ids, args.docs, args.doc_len, seq_len)
        row["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
