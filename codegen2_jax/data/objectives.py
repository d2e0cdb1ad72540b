"""The paper's learning objectives as seqio preprocessors over token ids (tf.data graph ops).

Every objective turns one tokenized document into ONE plain token sequence for a single
decoder (no task tokens) plus three per-token features of the same length:

    targets        the model sequence
    loss_weights   1 where the token carries loss
    prefix         1 on the bidirectional prefix (prefix-LM); 0 everywhere else
    objective      the objective id of the sequence, repeated (for per-objective metrics)

Worked examples, writing tokens as text (`E` = <|endoftext|>, `S` = <sep>, `M` = <eom>,
`<1>` = <mask_1>):

    causal LM        doc  = a b c d e f
                     targets      = a b c d e f E
                     loss_weights = 1 1 1 1 1 1 1

    file-level span  doc  = a b c d e f g h   spans chosen: [c d] and [g]
    corruption       targets      = a b <1> e f <2> h E S <1> c d M <2> g M
                     loss_weights = 1 ... 1                              (default)
                     or 0 up to and including S, 1 after (loss_on_document=False)

    T5-style span     same format; fixed noise density and mean span length (ablations)
    corruption

    prefix-LM         doc  = a b c d e   split after 2 (random)
                      targets      = a b c d e E
                      prefix       = 1 1 1 0 0 0   (positions whose INPUT is <|endoftext|>,
                                                    a or b: bidirectional among themselves)
                      loss_weights = 0 0 1 1 1 1   (loss_on_prefix=False, the paper's choice)

    PSM infill        doc  = a b c d e f   cut at 2 and 4: prefix a b, middle c d, suffix e f
                      targets = a b <1> e f E S <1> c d M   (the inference infill format)

Putting every span back at its sentinel gives the document exactly. Span corruption
never crosses a document: it runs on one (split) document at a time, and never makes a
sequence longer than the row (the number of spans is capped to fit).
"""

from __future__ import annotations

import functools
import sys

import gin
import seqio
import tensorflow as tf

from codegen2_jax.data import vocab as V
from codegen2_jax.data.objective_ids import (  # noqa: F401  (re-exported)
    CAUSAL_LM, OBJECTIVE_NAMES, PREFIX_LM, PSM_INFILL, SPAN_CORRUPTION, T5_SPAN_CORRUPTION)


# Per-document features that every piece of a split document keeps (see data.epochs).
CARRIED_FEATURES = ("source", "epoch", "task")

DEFAULT_MAX_SPANS = 16  # file-level span corruption; also what split_documents reserves for


def span_corruption_overhead(max_spans: int) -> int:
  """Upper bound on the tokens file-level span corruption adds to a document.

  Each span (>= 1 token) leaves a sentinel in the document and adds a sentinel and <eom>
  after it n - noise + k in the
  document, 2 for <|endoftext|> <sep>, noise + 2k after it, so n + 3k + 2 in all.
  """
  return 3 * max_spans + 2


def _example(tokens, loss_weights, prefix, objective: int | tf.Tensor):
  tokens = tf.cast(tokens, tf.int32)
  return {
      "targets": tokens,
      "loss_weights": tf.cast(loss_weights, tf.int32),
      "prefix": tf.cast(prefix, tf.int32),
      "objective": tf.fill(tf.shape(tokens), tf.cast(objective, tf.int32)),
  }


def causal_lm_example(tokens: tf.Tensor, ids: V.SpecialIds = V.DEFAULT_SPECIAL_IDS
                      ) -> dict[str, tf.Tensor]:
  """`doc` -> `doc <|endoftext|>`, loss on every token."""
  seq = tf.concat([tf.cast(tokens, tf.int32), [ids.eos]], 0)
  ones = tf.ones_like(seq)
  return _example(seq, ones, tf.zeros_like(seq), CAUSAL_LM)


def random_segmentation(num_items: tf.Tensor, num_segments: tf.Tensor, seed) -> tf.Tensor:
  """Splits `num_items` into `num_segments` random positive lengths (int32 [num_segments]).

  Requires 1 <= num_segments <= num_items. Stateless: the same seed gives the same lengths.
  """
  scores = tf.random.stateless_uniform([num_items - 1], seed=seed)
  boundaries = tf.argsort(scores)[: num_segments - 1]
  first_in_segment = tf.scatter_nd(boundaries[:, None], tf.ones_like(boundaries),
                                   [num_items - 1])
  segment_id = tf.cumsum(tf.concat([[0], first_in_segment], 0))
  return tf.math.unsorted_segment_sum(tf.ones([num_items], tf.int32), segment_id, num_segments)


def random_spans_mask(length, num_noise, num_spans, seed) -> tf.Tensor:
  """Bool [length] with `num_noise` True tokens in `num_spans` runs at random places.

  Non-noise gaps between spans are non-empty; the gaps before the first and after the
  last span may be empty, so a span can start or end the document.
  Requires 1 <= num_spans <= min(num_noise, length - num_noise + 1).
  """
  s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  noise = random_segmentation(num_noise, num_spans, s1)
  # num_spans + 1 gaps; add one phantom item to each outer gap so they may be empty.
  gaps = random_segmentation(length - num_noise + 2, num_spans + 1, s2)
  gaps = gaps - tf.one_hot(0, num_spans + 1, dtype=tf.int32) - tf.one_hot(
      num_spans, num_spans + 1, dtype=tf.int32)
  lengths = tf.concat([tf.reshape(tf.stack([gaps[:-1], noise], 1), [-1]), gaps[-1:]], 0)
  values = tf.concat([tf.tile([False, True], [num_spans]), [False]], 0)
  return tf.repeat(values, lengths)


def corrupt_spans(tokens: tf.Tensor, noise: tf.Tensor, loss_on_document: bool = True,
                  ids: V.SpecialIds = V.DEFAULT_SPECIAL_IDS):
  """Moves the `noise` runs of `tokens` to the end in the CodeGen2 format (see module doc).

  Returns (targets, loss_weights) int32 [len(tokens) + 3 * num_spans + 2]. There must be
  no more spans than the vocabulary has sentinels.
  """
  tokens = tf.cast(tokens, tf.int32)
  prev = tf.concat([[False], noise[:-1]], 0)
  nxt = tf.concat([noise[1:], [False]], 0)
  start = noise & ~prev
  end = noise & ~nxt
  span_index = tf.maximum(tf.cumsum(tf.cast(start, tf.int32)) - 1, 0)
  sentinel = tf.gather(tf.constant(ids.masks, tf.int32), span_index)
  eom = tf.fill(tf.shape(tokens), ids.eom)
  document = tf.ragged.boolean_mask(tf.stack([sentinel, tokens], 1),
                                    tf.stack([start, ~noise], 1)).flat_values
  spans = tf.ragged.boolean_mask(tf.stack([sentinel, tokens, eom], 1),
                                 tf.stack([start, noise, end], 1)).flat_values
  head = tf.concat([document, [ids.eos, ids.sep]], 0)
  targets = tf.concat([head, spans], 0)
  head_weight = tf.ones_like(head) if loss_on_document else tf.zeros_like(head)
  return targets, tf.concat([head_weight, tf.ones_like(spans)], 0)


def _spans_fitting(n, num_noise, wanted, max_spans: int, max_total):
  """Number of spans: `wanted`, clipped to 1..max_spans, to what the noise and gaps allow,
  and so that n + 3 k + 2 <= max_total."""
  upper = tf.reduce_min([max_spans, num_noise, n - num_noise + 1])
  if max_total is not None:
    upper = tf.minimum(upper, tf.maximum((max_total - n - 2) // 3, 1))
  return tf.clip_by_value(wanted, 1, upper)


def _corrupt_with_spans(tokens, num_noise, wanted_spans, seed, max_spans, max_total,
                        loss_on_document, objective, ids):
  n = tf.size(tokens)
  num_noise = tf.clip_by_value(num_noise, 1, n - 1)
  num_spans = _spans_fitting(n, num_noise, wanted_spans, min(max_spans, len(ids.masks)),
                             max_total)
  noise = random_spans_mask(n, num_noise, num_spans, seed)
  targets, weights = corrupt_spans(tokens, noise, loss_on_document, ids)
  return _example(targets, weights, tf.zeros_like(targets), objective)


@gin.configurable(module="objectives")
def span_corruption_example(tokens: tf.Tensor, seed, max_total=None, mask_ratio=(0.05, 0.25),
                            mean_span_length=(3.0, 20.0), max_spans: int = DEFAULT_MAX_SPANS,
                            loss_on_document: bool = True,
                            ids: V.SpecialIds = V.DEFAULT_SPECIAL_IDS) -> dict[str, tf.Tensor]:
  """File-level span corruption of one document (CodeGen2's final recipe).

  Per document a mask ratio r ~ U(mask_ratio) and a mean span length m ~
  U(mean_span_length) are drawn; round(r * n) tokens (at least 1) are masked in about
  round(r * n / m) spans (1..max_spans, and few enough that the sequence stays within
  `max_total` tokens), placed at random. Documents under 2 tokens fall back to causal LM.
  These ranges are our documented defaults: the paper does not publish its values.
  """
  tokens = tf.cast(tokens, tf.int32)
  n = tf.size(tokens)
  s_ratio, s_span, s_mask = tf.unstack(tf.random.experimental.stateless_split(seed, 3))

  def corrupt():
    ratio = tf.random.stateless_uniform([], s_ratio, mask_ratio[0], mask_ratio[1])
    mean = tf.random.stateless_uniform([], s_span, mean_span_length[0], mean_span_length[1])
    num_noise = tf.cast(tf.round(tf.cast(n, tf.float32) * ratio), tf.int32)
    num_noise = tf.clip_by_value(num_noise, 1, n - 1)
    wanted = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean), tf.int32)
    return _corrupt_with_spans(tokens, num_noise, wanted, s_mask, max_spans, max_total,
                               loss_on_document, SPAN_CORRUPTION, ids)

  return tf.cond(n >= 2, corrupt, lambda: causal_lm_example(tokens, ids))


@gin.configurable(module="objectives")
def t5_span_corruption_example(tokens: tf.Tensor, seed, max_total=None,
                               noise_density: float = 0.15,
                               mean_noise_span_length: float = 3.0,
                               max_spans: int = V.NUM_SENTINELS,
                               loss_on_document: bool = True,
                               ids: V.SpecialIds = V.DEFAULT_SPECIAL_IDS
                               ) -> dict[str, tf.Tensor]:
  """T5-style span corruption (Raffel et al.): round(density * n) noise tokens in
  round(noise / mean_span_length) spans, in the same one-decoder format as file-level span
  corruption. Long documents hit the sentinel cap (`max_spans`), which lengthens spans."""
  tokens = tf.cast(tokens, tf.int32)
  n = tf.size(tokens)

  def corrupt():
    num_noise = tf.cast(tf.round(tf.cast(n, tf.float32) * noise_density), tf.int32)
    num_noise = tf.clip_by_value(num_noise, 1, n - 1)
    wanted = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length),
                     tf.int32)
    return _corrupt_with_spans(tokens, num_noise, wanted, seed, max_spans, max_total,
                               loss_on_document, T5_SPAN_CORRUPTION, ids)

  return tf.cond(n >= 2, corrupt, lambda: causal_lm_example(tokens, ids))


@gin.configurable(module="objectives")
def prefix_lm_example(tokens: tf.Tensor, seed, max_total=None, loss_on_prefix: bool = False,
                      ids: V.SpecialIds = V.DEFAULT_SPECIAL_IDS) -> dict[str, tf.Tensor]:
  """Prefix-LM split at a uniform point k in 1..n-1 (see the module docstring).

  The first k + 1 positions (inputs <|endoftext|>, t_0 .. t_{k-1}) are the bidirectional
  prefix; targets t_0 .. t_{k-1} carry no loss unless `loss_on_prefix` (which leaks:
  a bidirectional position can read the token it predicts). Under 2 tokens: causal LM.
  """
  tokens = tf.cast(tokens, tf.int32)
  n = tf.size(tokens)

  def split():
    k = tf.random.stateless_uniform([], seed, 1, n, dtype=tf.int32)
    seq = tf.concat([tokens, [ids.eos]], 0)
    idx = tf.range(n + 1)
    prefix = tf.cast(idx <= k, tf.int32)
    weights = tf.ones_like(seq) if loss_on_prefix else tf.cast(idx >= k, tf.int32)
    return _example(seq, weights, prefix, PREFIX_LM)

  return tf.cond(n >= 2, split, lambda: causal_lm_example(tokens, ids))


@gin.configurable(module="objectives")
def psm_infill_example(tokens: tf.Tensor, seed, max_total=None,
                       loss_on_document: bool = True,
                       ids: V.SpecialIds = V.DEFAULT_SPECIAL_IDS) -> dict[str, tf.Tensor]:
  """PSM (prefix, suffix, middle) infill: two uniform cut points, a non-empty middle,
  written in the CodeGen2 infill format (one sentinel). Under 2 tokens: causal LM."""
  tokens = tf.cast(tokens, tf.int32)
  n = tf.size(tokens)

  def reorder():
    cuts = tf.sort(tf.random.stateless_uniform([2], seed, 0, n + 1, dtype=tf.int32))
    start = tf.minimum(cuts[0], n - 1)
    end = tf.maximum(cuts[1], start + 1)
    idx = tf.range(n)
    noise = (idx >= start) & (idx < end)
    targets, weights = corrupt_spans(tokens, noise, loss_on_document, ids)
    return _example(targets, weights, tf.zeros_like(targets), PSM_INFILL)

  return tf.cond(n >= 2, reorder, lambda: causal_lm_example(tokens, ids))


EXAMPLE_FNS = {
    "causal_lm": lambda tokens, seed, max_total=None, ids=V.DEFAULT_SPECIAL_IDS:
        causal_lm_example(tokens, ids),
    "span_corruption": span_corruption_example,
    "t5_span_corruption": t5_span_corruption_example,
    "prefix_lm": prefix_lm_example,
    "psm_infill": psm_infill_example,
}


# ----------------------------------------------------------------------------------------
# seqio preprocessors


@gin.configurable(module="objectives")
def split_documents(dataset: tf.data.Dataset, sequence_length, reserve: int | None = None
                    ) -> tf.data.Dataset:
  """Splits tokenized documents ('targets') into chunks that fit a row after any objective.

  Chunks hold at most `sequence_length['targets'] - reserve` tokens, so nothing is trimmed
  later: a long file becomes several consecutive documents, none is dropped.
  Empty documents are dropped.
  """
  if reserve is None:
    reserve = span_corruption_overhead(DEFAULT_MAX_SPANS)
  max_len = sequence_length["targets"] - reserve
  if max_len < 1:
    raise ValueError(f"SEQ_LEN {sequence_length['targets']} leaves no room for a document "
                     f"after reserving {reserve} tokens for objective markup")

  def chunk(ex):
    tokens = ex["targets"]
    n = tf.size(tokens)
    num = (n + max_len - 1) // max_len
    lengths = tf.concat([tf.fill([tf.maximum(num - 1, 0)], max_len),
                         [n - (num - 1) * max_len]], 0)[:num]
    pieces = tf.RaggedTensor.from_row_lengths(tokens, lengths)
    out = {k: tf.fill([num], ex[k]) for k in CARRIED_FEATURES if k in ex}
    return tf.data.Dataset.from_tensor_slices({"targets": pieces, **out})

  dataset = dataset.filter(lambda ex: tf.size(ex["targets"]) > 0)
  dataset = dataset.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
                         functools.partial(_count_long_documents, max_len=max_len))
  return dataset.flat_map(chunk)


def _count_long_documents(state, ex, max_len: int):
  """Counts documents longer than a row (and their pieces); prints a running total at the
  1st, 10th, 100th, 1000th such document and every 10000th after."""
  docs, pieces = state
  n = tf.cast(tf.size(ex["targets"]), tf.int64)
  long = n > max_len
  docs += tf.cast(long, tf.int64)
  pieces += tf.where(long, (n + max_len - 1) // max_len, 0)
  milestone = long & ((docs == 1) | (docs == 10) | (docs == 100) | (docs % 1000 == 0)
                      & ((docs <= 1000) | (docs % 10000 == 0)))

  def report():
    tf.print("split_documents:", docs, "documents so far were longer than", max_len,
             "tokens (a row less room for objective markup) and were split into", pieces,
             "pieces (none trimmed)",
             output_stream=sys.stderr)
    return tf.constant(0)

  tf.cond(milestone, report, lambda: tf.constant(0))
  return (docs, pieces), ex


@gin.configurable(module="objectives")
def objective_mixture(dataset: tf.data.Dataset, sequence_length=None, output_features=None,
                      probabilities=(("causal_lm", 0.5), ("span_corruption", 0.5))
                      ) -> tf.data.Dataset:
  """seqio preprocessor: each sequence draws its objective from `probabilities`
  ((name, p) pairs over EXAMPLE_FNS; normalised). Deterministic for a seed. Special
  tokens come from the `targets` vocabulary of `output_features` (ours by default)."""
  probabilities = dict(probabilities)
  unknown = set(probabilities) - set(EXAMPLE_FNS)
  if unknown:
    raise ValueError(f"unknown objectives {sorted(unknown)}; known: {sorted(EXAMPLE_FNS)}")
  names = [k for k, p in probabilities.items() if p > 0]
  if not names:
    raise ValueError(f"objective probabilities {probabilities} are all zero")
  logits = tf.math.log([[float(probabilities[k]) for k in names]])
  max_total = sequence_length["targets"] if sequence_length else None
  ids = (V.special_ids(output_features["targets"].vocabulary) if output_features
         else V.DEFAULT_SPECIAL_IDS)

  @seqio.map_over_dataset(num_seeds=2)
  def choose(ex, seeds):
    tokens = ex["targets"]
    pick = tf.random.stateless_categorical(logits, 1, seed=seeds[0], dtype=tf.int32)[0, 0]
    branches = [functools.partial(lambda f: f(tokens, seeds[1], max_total, ids=ids),
                                  EXAMPLE_FNS[k])
                for k in names]
    out = tf.switch_case(pick, branches) if len(branches) > 1 else branches[0]()
    out["source"] = ex["source"]
    for k in ("epoch", "task"):  # per-document tags become per-token features
      if k in ex:
        out[k] = tf.fill(tf.shape(out["targets"]), tf.cast(ex[k], tf.int32))
    return out

  return choose(dataset)


@gin.configurable(module="objectives")
def codegen2_mixture(dataset: tf.data.Dataset, sequence_length=None, output_features=None,
                     causal_prob: float = 0.5, other_objective: str = "span_corruption"
                     ) -> tf.data.Dataset:
  """seqio preprocessor: per sequence, causal LM with probability `causal_prob`, else
  `other_objective` (default file-level span corruption: the paper's final recipe, 50/50).

  The objective of every stock task; the lessons vary it from gin, e.g. causal_prob=1.0
  (causal LM only), or 0.5 with other_objective='psm_infill' (lesson 2).
  """
  if other_objective not in EXAMPLE_FNS:
    raise ValueError(f"unknown objective {other_objective!r}; known: {sorted(EXAMPLE_FNS)}")
  return objective_mixture(dataset, sequence_length, output_features, probabilities=(
      ("causal_lm", causal_prob), (other_objective, 1.0 - causal_prob)))


def single_objective(name: str):
  """A seqio preprocessor applying objective `name` (a key of EXAMPLE_FNS) to every doc."""
  def preprocess(dataset, sequence_length=None, output_features=None):
    return objective_mixture(dataset, sequence_length, output_features,
                             probabilities=((name, 1.0),))
  preprocess.__name__ = f"{name}_objective"
  return preprocess
