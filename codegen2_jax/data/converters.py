"""Feature converter: packs objective outputs into fixed-length decoder rows.

Input (task) features, all int32 and of equal length per example: `targets`,
`loss_weights`, `prefix`, `objective` (see `objectives`). Output (model) features, each
[length]:

    inputs        the model input: targets shifted right by one inside each segment, with
                  <|endoftext|> first (CodeGen has no BOS; documents are separated by EOS)
    targets       the tokens to predict
    loss_weights  1 where a real (non-padding) token carries loss
    segment_ids   1, 2, ... per packed example; 0 on padding
    positions     0, 1, ... restarting at each segment
    prefix        1 on the bidirectional prefix (what seqio calls `decoder_causal_attention`)
    objective     the objective id of each token (0 on padding, weighted out by loss_weights)
    epoch, task   with track_epochs=True: the pass over its task (1, 2, ...) and the task id
                  of each token, 0 on padding (host-side bookkeeping, see data.epochs)

Example, two examples packed into a row of 8 (E = <|endoftext|> = 2):

    task:  {targets: [7 8 2], ...}, {targets: [5 6 9 2], ...}
    inputs      = [2 7 8 2 5 6 9 0]
    targets     = [7 8 2 5 6 9 2 0]
    segment_ids = [1 1 1 2 2 2 2 0]
    positions   = [0 1 2 0 1 2 3 0]
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from codegen2_jax.data import packing
from codegen2_jax.data import vocab as V

_TOKEN_FEATURES = ("targets", "loss_weights", "prefix", "objective")
_EPOCH_FEATURES = ("epoch", "task")


class CodeGenFeatureConverter(seqio.FeatureConverter):
  """Packs (data.packing: best-fit decreasing over a window of examples) or pads CodeGen2
  objective examples into decoder-only model rows."""

  TASK_FEATURES = {k: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
                   for k in _TOKEN_FEATURES}
  MODEL_FEATURES = {k: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
                    for k in ("inputs", "targets", "loss_weights", "prefix", "objective")}
  PACKING_FEATURE_DTYPES = {"segment_ids": tf.int32, "positions": tf.int32}

  def __init__(self, pack: bool = True, bos_id: int = V.EOS_ID, track_epochs: bool = False,
               **kwargs):
    # The first input of every document is the vocabulary's <|endoftext|>.
    super().__init__(pack=pack, bos_id=bos_id, **kwargs)
    self.track_epochs = track_epochs
    if not pack:  # the model takes segment ids and positions either way
      spec = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
      self.MODEL_FEATURES = {**self.MODEL_FEATURES, "segment_ids": spec, "positions": spec}
    if track_epochs:
      spec = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
      self.TASK_FEATURES = {**self.TASK_FEATURES, **{k: spec for k in _EPOCH_FEATURES}}
      self.MODEL_FEATURES = {**self.MODEL_FEATURES, **{k: spec for k in _EPOCH_FEATURES}}

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    seg = features["segment_ids"]
    real = tf.cast(seg > 0, tf.int32)
    inputs = seqio.utils.make_autoregressive_inputs(features["targets"], sequence_id=seg,
                                                    bos_id=self.bos_id)
    out = {
        "inputs": inputs * real,
        "targets": features["targets"],
        "loss_weights": features["loss_weights"],
        "prefix": features["prefix"],
        "objective": features["objective"],
        "segment_ids": seg,
        "positions": features["positions"],
    }
    if self.track_epochs:
      out.update({k: features[k] for k in _EPOCH_FEATURES})
    return out

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    # data.packing takes each example's length from the example itself, so zeros inside a
    # feature (loss weights 0 0 1 1, prefix 1 1 0 0, a token id 0) stay aligned. (seqio's
    # packer counts a feature's NON-ZERO values as its length, which cut such features
    # short and shifted later examples against their targets: it needed every feature
    # packed as value + 1.)
    keys, seq_len = tuple(self.TASK_FEATURES), task_feature_lengths["targets"]
    if self.pack:
      ds = packing.pack_dataset(ds, keys, seq_len)
    else:
      ds = packing.pad_dataset(ds, keys, seq_len)
    return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    n = task_feature_lengths["targets"]
    extra = _EPOCH_FEATURES if self.track_epochs else ()
    return {k: n for k in ("inputs", "targets", "loss_weights", "prefix", "objective",
                           "segment_ids", "positions", *extra)}


def task_feature_lengths(seq_len: int, track_epochs: bool = False) -> dict[str, int]:
  """The task feature lengths for rows of `seq_len` tokens."""
  return {k: seq_len for k in _TOKEN_FEATURES + (_EPOCH_FEATURES if track_epochs else ())}
