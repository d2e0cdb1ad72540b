"""Completion rows: the prompt/completion split the lessons score a causal and a prefix-LM
model on (same loss-bearing tokens; the prompt bidirectional only for the prefix-LM)."""

import numpy as np
import tensorflow as tf

from codegen2_jax.data import vocab as V
from codegen2_jax.eval import perplexity


def _rows(vocab, bidirectional):
  docs = tf.data.Dataset.from_tensor_slices({"text": ["def f(x):\n    return x + 1\n",
                                                      "import os\nprint(os.sep)\n"]})
  batch = next(perplexity.completion_rows(docs, vocab, 64, 1, bidirectional)
               .as_numpy_iterator())
  return {k: v[0] for k, v in batch.items()}


def test_completion_rows_share_loss_tokens_and_differ_only_in_the_prefix(vocab):
  bi, causal = _rows(vocab, True), _rows(vocab, False)
  for key in ("inputs", "targets", "loss_weights", "segment_ids", "positions"):
    np.testing.assert_array_equal(bi[key], causal[key])
  assert not causal["prefix"].any()
  eos = V.special_ids(vocab).eos
  for seg in (1, 2):
    at = bi["segment_ids"] == seg
    targets, weights, prefix = bi["targets"][at], bi["loss_weights"][at], bi["prefix"][at]
    n = len(targets) - 1          # the document's tokens, then <|endoftext|>
    k = n // 2
    assert targets[-1] == eos
    # Loss on t_k .. t_{n-1} and <|endoftext|>; the prompt t_0 .. t_{k-1} carries none.
    np.testing.assert_array_equal(weights, [0] * k + [1] * (n + 1 - k))
    # Bidirectional over positions 0..k (inputs <|endoftext|>, t_0 .. t_{k-1}), as
    # objectives.prefix_lm_example trains a prefix-LM split at k.
    np.testing.assert_array_equal(prefix, [1] * (k + 1) + [0] * (n - k))
