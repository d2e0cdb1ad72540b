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
sequence longer than the row or uses more spans than the vocabulary has sentinels (in
the mixture a document that would is cut into pieces that fit; see
span_corruption_example).
"""

from __future__ import annotations

import functools
import math
import sys
import threading

import gin
import seqio
import tensorflow as tf

from codegen2_jax.data import vocab as V
from codegen2_jax.data.objective_ids import (  # noqa: F401  (re-exported)
    CAUSAL_LM, OBJECTIVE_NAMES, PREFIX_LM, PSM_INFILL, SPAN_CORRUPTION, T5_SPAN_CORRUPTION)


# Per-document features that every piece of a split document keeps (see data.epochs).
CARRIED_FEATURES = ("source", "epoch", "task")

# File-level span corruption's defaults (ours: the paper does not publish its values; the
# README lists the reasons). split_documents sizes its reserve from these.
FILE_LEVEL_MASK_RATIO = (0.05, 0.25)
FILE_LEVEL_MEAN_SPAN = 11.5

# Tokens every objective but span corruption may add to a document: PSM infill adds 5
# (<mask_1> <|endoftext|> <sep> <mask_1> ... <eom>), causal LM and prefix-LM 1.
MIN_RESERVE = 5


def span_corruption_overhead(num_spans) -> int:
  """Tokens span corruption with `num_spans` spans adds to a document: 3 * num_spans + 2.

  Each span leaves a sentinel in the document and adds a sentinel and <eom> after <sep>
  (3 per span), plus 2 for <|endoftext|> <sep>: n tokens become n + 3k + 2.
  """
  return 3 * num_spans + 2


def _piece_limits(density, mean_span_length, num_sentinels: int, max_total):
  """Upper bounds (floats) on a document's length n such that span corruption at noise
  `density` and `mean_span_length` needs at most `num_sentinels` spans, and (when
  max_total is not None) n + 3k + 2 <= max_total. Python floats or tf scalars.

  The span count is k = round(round(density * n) / mean) >= 1, so k <= (density * n +
  0.51) / mean + 0.51 (0.01 covers float32 error) and n <= max_total - 5 for k = 1.
  """
  by_sentinels = ((num_sentinels - 0.51) * mean_span_length - 0.51) / density
  if max_total is None:
    return by_sentinels, None
  by_row = (max_total - 3.53 - 1.53 / mean_span_length) / (1.0 + 3.0 * density /
                                                            mean_span_length)
  return by_sentinels, by_row


def _file_level_settings() -> tuple[tuple[float, float], float]:
  """(mask_ratio, mean_span_length) of span_corruption_example as gin configures it."""
  bound = gin.get_bindings(span_corruption_example)
  return (tuple(bound.get("mask_ratio", FILE_LEVEL_MASK_RATIO)),
          float(bound.get("mean_span_length", FILE_LEVEL_MEAN_SPAN)))


def span_corruption_reserve(seq_len: int, mask_ratio=None, mean_span_length=None) -> int:
  """Tokens to hold back from a row of `seq_len` so that file-level span corruption of a
  document filling the rest fits the row at the highest mask ratio (no piece needs
  splitting): split_documents' default. Settings default to span_corruption_example's
  (gin-configured) ones. At least MIN_RESERVE. E.g. 2048 -> 129 (pieces of 1919 tokens).
  """
  configured = _file_level_settings()
  mask_ratio = configured[0] if mask_ratio is None else mask_ratio
  mean_span_length = configured[1] if mean_span_length is None else mean_span_length
  _, by_row = _piece_limits(max(mask_ratio), mean_span_length, 1 << 30, seq_len)
  longest = min(int(math.floor(by_row)), seq_len - MIN_RESERVE)
  return max(seq_len - longest, MIN_RESERVE)


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


def _check_span_settings(density_range, mean_span_length, max_spans):
  lo, hi = density_range
  if not 0.0 < lo <= hi < 1.0:
    raise ValueError(f"span corruption noise density {density_range} must lie in (0, 1), "
                     f"low <= high")
  if not mean_span_length >= 1.0:
    raise ValueError(f"span corruption mean span length {mean_span_length} must be >= 1")
  if max_spans is not None and max_spans < 1:
    raise ValueError(f"span corruption max_spans={max_spans} must be >= 1 (or None)")


def _corrupt_one(tokens, density, mean_span_length, seed, max_total, max_spans: int,
                 loss_on_document, objective, ids):
  """One sequence: round(density * n) noise tokens in round(noise / mean) spans, capped at
  `max_spans` and to fit `max_total`. Under 2 tokens: causal LM."""
  n = tf.size(tokens)

  def corrupt():
    num_noise = tf.cast(tf.round(tf.cast(n, tf.float32) * density), tf.int32)
    num_noise = tf.clip_by_value(num_noise, 1, n - 1)
    wanted = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_span_length), tf.int32)
    num_spans = _spans_fitting(n, num_noise, wanted, max_spans, max_total)
    noise = random_spans_mask(n, num_noise, num_spans, seed)
    targets, weights = corrupt_spans(tokens, noise, loss_on_document, ids)
    return _example(targets, weights, tf.zeros_like(targets), objective)

  return tf.cond(n >= 2, corrupt, lambda: causal_lm_example(tokens, ids))


def _corrupt_pieces(tokens, density, mean_span_length, seed, max_total, max_spans: int,
                    loss_on_document, objective, ids):
  """Like _corrupt_one, but a document whose spans would need more sentinels than
  `max_spans` or more room than `max_total` is cut into the fewest near-equal pieces
  that fit, each corrupted on its own (seed folded with the piece index). Returns the
  features as RaggedTensors [pieces, length]."""
  n = tf.size(tokens)
  by_sentinels, by_row = _piece_limits(density, mean_span_length, max_spans, max_total)
  limit = by_sentinels if by_row is None else tf.minimum(
      tf.minimum(by_sentinels, by_row), float(max_total - MIN_RESERVE))
  longest = tf.cast(tf.floor(tf.clip_by_value(limit, 2.0, tf.cast(tf.maximum(n, 2),
                                                                   tf.float32))), tf.int32)
  num = tf.maximum((n + longest - 1) // longest, 1)
  lengths = n // num + tf.cast(tf.range(num) < n % num, tf.int32)
  starts = tf.cumsum(lengths, exclusive=True)
  corrupt = functools.partial(_corrupt_one, density=density, mean_span_length=mean_span_length,
                              max_total=max_total, max_spans=max_spans,
                              loss_on_document=loss_on_document, objective=objective, ids=ids)

  def one():
    ex = corrupt(tokens, seed=seed)
    return ex, tf.size(ex["targets"], out_type=tf.int64)[None]

  def several():
    keys = ("targets", "loss_weights", "prefix", "objective")
    arrays = [tf.TensorArray(tf.int32, size=num, infer_shape=False, element_shape=[None])
              for _ in keys]
    sizes = tf.TensorArray(tf.int64, size=num)

    def body(i, arrays, sizes):
      ex = corrupt(tokens[starts[i]:starts[i] + lengths[i]],
                   seed=tf.random.experimental.stateless_fold_in(seed, i))
      arrays = [a.write(i, ex[k]) for a, k in zip(arrays, keys)]
      return i + 1, arrays, sizes.write(i, tf.size(ex["targets"], out_type=tf.int64))

    _, arrays, sizes = tf.while_loop(lambda i, *_: i < num, body, (0, arrays, sizes))
    return {k: a.concat() for k, a in zip(keys, arrays)}, sizes.stack()

  flat, row_lengths = tf.cond(num == 1, one, several)
  return {k: tf.RaggedTensor.from_row_lengths(v, row_lengths, validate=False)
          for k, v in flat.items()}


def _span_corruption(tokens, density, mean_span_length, seed, max_total, max_spans,
                     loss_on_document, objective, ids, pieces: bool):
  tokens = tf.cast(tokens, tf.int32)
  cap = len(ids.masks) if max_spans is None else min(max_spans, len(ids.masks))
  fn = _corrupt_pieces if pieces else _corrupt_one
  return fn(tokens, density, mean_span_length, seed, max_total, cap, loss_on_document,
            objective, ids)


@gin.configurable(module="objectives")
def span_corruption_example(tokens: tf.Tensor, seed, max_total=None,
                            mask_ratio=FILE_LEVEL_MASK_RATIO,
                            mean_span_length: float = FILE_LEVEL_MEAN_SPAN,
                            max_spans: int | None = None, loss_on_document: bool = True,
                            ids: V.SpecialIds = V.DEFAULT_SPECIAL_IDS, pieces: bool = False
                            ) -> dict[str, tf.Tensor]:
  """File-level span corruption of one document (CodeGen2's final recipe).

  Per document a mask ratio r ~ U(mask_ratio) is drawn; round(r * n) tokens (at least 1)
  are masked in round(r * n / mean_span_length) spans placed at random (span lengths
  vary, their mean is `mean_span_length`). Over many documents the noise density is the
  mean of `mask_ratio` and the mean span length `mean_span_length`, as long as the
  spans fit: at most one span per sentinel of the vocabulary (`ids.masks`) and
  `max_spans` (None: no other cap), and n + 3k + 2 <= `max_total`.

  pieces=False: one sequence; spans that do not fit are merged (fewer, longer spans).
  pieces=True (what objective_mixture uses): a document that does not fit is cut into
  the fewest pieces that do, each its own sequence; features are RaggedTensors
  [pieces, length]. Documents under 2 tokens fall back to causal LM.
  The defaults are ours: the paper does not publish its values.
  """
  _check_span_settings(mask_ratio, mean_span_length, max_spans)
  s_ratio, s_mask = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  ratio = tf.random.stateless_uniform([], s_ratio, mask_ratio[0], mask_ratio[1])
  return _span_corruption(tokens, ratio, float(mean_span_length), s_mask, max_total,
                          max_spans, loss_on_document, SPAN_CORRUPTION, ids, pieces)


@gin.configurable(module="objectives")
def t5_span_corruption_example(tokens: tf.Tensor, seed, max_total=None,
                               noise_density: float = 0.15,
                               mean_noise_span_length: float = 3.0,
                               max_spans: int | None = None,
                               loss_on_document: bool = True,
                               ids: V.SpecialIds = V.DEFAULT_SPECIAL_IDS, pieces: bool = False
                               ) -> dict[str, tf.Tensor]:
  """T5-style span corruption (Raffel et al.): round(density * n) noise tokens in
  round(noise / mean_noise_span_length) spans, in the same one-decoder format as file-level
  span corruption, with the same caps and `pieces` behaviour (see span_corruption_example)."""
  _check_span_settings((noise_density, noise_density), mean_noise_span_length, max_spans)
  return _span_corruption(tokens, tf.constant(noise_density, tf.float32),
                          float(mean_noise_span_length), seed, max_total, max_spans,
                          loss_on_document, T5_SPAN_CORRUPTION, ids, pieces)


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


SPAN_OBJECTIVES = ("span_corruption", "t5_span_corruption")
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
  later: a long file becomes several consecutive documents, none is dropped. The default
  reserve (`span_corruption_reserve`) leaves room for file-level span corruption's spans
  at its highest mask ratio; an objective whose spans still do not fit cuts the chunk
  again (objective_mixture). Empty documents are dropped. The number of documents split
  is logged at the 1st, 10th, 100th, 1000th and every 10000th, counted over the whole
  process (train and eval pipelines together), so each line appears once per run.
  """
  if reserve is None:
    reserve = span_corruption_reserve(sequence_length["targets"])
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

  def note_long(ex):
    n = tf.size(ex["targets"])

    def record():
      tf.py_function(functools.partial(LONG_DOCUMENTS.add, max_len),
                     [(n + max_len - 1) // max_len], [])
      return tf.constant(0)

    tf.cond(n > max_len, record, lambda: tf.constant(0))
    return ex

  dataset = dataset.filter(lambda ex: tf.size(ex["targets"]) > 0)
  return dataset.map(note_long).flat_map(chunk)


class LongDocumentLog:
  """Counts documents longer than a row (and their pieces) per piece length, over the whole
  process, and prints a running total at the 1st, 10th, 100th, 1000th such document and
  every 10000th after: once per run, however many pipelines (train, each evaluation)
  read documents."""

  def __init__(self):
    self._lock = threading.Lock()
    self.counts: dict[int, tuple[int, int]] = {}

  def add(self, max_len: int, pieces) -> None:
    with self._lock:
      docs, total = self.counts.get(max_len, (0, 0))
      docs, total = docs + 1, total + int(pieces)
      self.counts[max_len] = (docs, total)
    if docs in (1, 10, 100, 1000) or docs % 10000 == 0:
      print(f"split_documents: {docs} documents so far were longer than {max_len} tokens "
            f"(a row less room for objective markup) and were split into {total} pieces "
            f"(none trimmed)", file=sys.stderr, flush=True)

  def reset(self) -> None:
    """Starts counting from zero (a new run in the same process, or a test)."""
    with self._lock:
      self.counts.clear()


LONG_DOCUMENTS = LongDocumentLog()


@gin.configurable(module="objectives")
def objective_mixture(dataset: tf.data.Dataset, sequence_length=None, output_features=None,
                      probabilities=(("causal_lm", 0.5), ("span_corruption", 0.5))
                      ) -> tf.data.Dataset:
  """seqio preprocessor: each sequence draws its objective from `probabilities`
  ((name, p) pairs over EXAMPLE_FNS; normalised). Deterministic for a seed. Special
  tokens come from the `targets` vocabulary of `output_features` (ours by default).

  One document gives one sequence, except under a span objective when its spans do not
  fit the row (`sequence_length`) or the vocabulary's sentinels: then it is cut into
  the fewest pieces that fit (see span_corruption_example), so the noise density and mean
  span length stay the settings' at any row length."""
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

  def branch(name):
    def run(tokens, seed):
      if name in SPAN_OBJECTIVES:  # may cut the document into several sequences
        out = EXAMPLE_FNS[name](tokens, seed, max_total, ids=ids, pieces=True)
        return ({k: v.flat_values for k, v in out.items()},
                out["targets"].row_lengths())
      out = EXAMPLE_FNS[name](tokens, seed, max_total, ids=ids)
      return out, tf.size(out["targets"], out_type=tf.int64)[None]
    return run

  @seqio.map_over_dataset(num_seeds=2)
  def choose(ex, seeds):
    tokens = ex["targets"]
    pick = tf.random.stateless_categorical(logits, 1, seed=seeds[0], dtype=tf.int32)[0, 0]
    branches = [functools.partial(branch(k), tokens, seeds[1]) for k in names]
    flat, lengths = tf.switch_case(pick, branches) if len(branches) > 1 else branches[0]()
    out = {k: tf.RaggedTensor.from_row_lengths(v, lengths, validate=False)
           for k, v in flat.items()}
    out["source"] = tf.fill(tf.shape(lengths), ex["source"])
    for k in ("epoch", "task"):  # per-document tags become per-token features
      if k in ex:
        out[k] = tf.RaggedTensor.from_row_lengths(
            tf.fill([tf.reduce_sum(lengths)], tf.cast(ex[k], tf.int32)), lengths, validate=False)
    return out

  # unbatch yields ragged-rank-0 specs; the identity map makes them plain tensors again.
  return choose(dataset).unbatch().map(lambda ex: {k: tf.convert_to_tensor(v)
                                                   for k, v in ex.items()})


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
