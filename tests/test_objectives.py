"""Objective formats: causal LM, file-level span corruption, the 50/50 mixture."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from codegen2_jax.data import objectives as O
from codegen2_jax.data import vocab as V


def reinsert(targets, ids=V.DEFAULT_SPECIAL_IDS):
  """Puts every span back at its sentinel; returns (document, sentinels in order)."""
  targets = list(targets)
  sep = targets.index(ids.sep)
  assert targets[sep - 1] == ids.eos
  body, tail = targets[: sep - 1], targets[sep + 1:]
  spans, order, i = {}, [], 0
  while i < len(tail):
    sentinel = tail[i]
    assert sentinel in ids.masks
    end = tail.index(ids.eom, i + 1)  # <eom> closes every span
    spans[sentinel] = tail[i + 1:end]
    order.append(sentinel)
    i = end + 1
  doc = []
  body_sentinels = []
  for t in body:
    if t in spans:
      body_sentinels.append(t)
      doc.extend(spans[t])
    else:
      doc.append(t)
  assert body_sentinels == order
  return doc, order


def test_causal_lm_format():
  ex = O.causal_lm_example(tf.constant([7, 8, 9]))
  assert ex["targets"].numpy().tolist() == [7, 8, 9, V.EOS_ID]
  assert ex["loss_weights"].numpy().tolist() == [1, 1, 1, 1]
  assert set(ex["objective"].numpy().tolist()) == {O.CAUSAL_LM}


def test_corrupt_spans_literal_example():
  tokens = tf.constant([10, 11, 12, 13, 14, 15, 16, 17])
  noise = tf.constant(np.array([0, 0, 1, 1, 0, 0, 1, 0], bool))
  targets, weights = O.corrupt_spans(tokens, noise, loss_on_document=False)
  m1, m2 = V.mask_id(1), V.mask_id(2)
  assert targets.numpy().tolist() == [10, 11, m1, 14, 15, m2, 17, V.EOS_ID, V.SEP_ID,
                                      m1, 12, 13, V.EOM_ID, m2, 16, V.EOM_ID]
  assert weights.numpy().tolist() == [0] * 9 + [1] * 7


@pytest.mark.parametrize("n", [2, 3, 7, 50, 500])
def test_span_corruption_reinserts_exactly(n):
  rng = np.random.RandomState(n)
  for s in range(40):
    doc = rng.randint(100, 8000, size=n).tolist()
    ex = O.span_corruption_example(tf.constant(doc), tf.constant([s, n]))
    targets = ex["targets"].numpy().tolist()
    got, order = reinsert(targets)
    assert got == doc
    assert order == [V.mask_id(k) for k in range(1, len(order) + 1)]  # numbered in order
    assert 1 <= len(order) <= V.NUM_SENTINELS
    assert len(targets) == n + O.span_corruption_overhead(len(order))
    assert set(ex["objective"].numpy().tolist()) == {O.SPAN_CORRUPTION}


def test_span_corruption_is_deterministic_per_seed():
  doc = tf.range(100, 400)
  a = O.span_corruption_example(doc, tf.constant([1, 2]))["targets"].numpy()
  b = O.span_corruption_example(doc, tf.constant([1, 2]))["targets"].numpy()
  c = O.span_corruption_example(doc, tf.constant([3, 4]))["targets"].numpy()
  assert a.tolist() == b.tolist()
  assert a.tolist() != c.tolist()


def test_one_token_document_falls_back_to_causal():
  ex = O.span_corruption_example(tf.constant([42]), tf.constant([0, 0]))
  assert ex["targets"].numpy().tolist() == [42, V.EOS_ID]


def _task_examples(name, n, seq_len=256):
  import seqio
  import tasks  # noqa: F401
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset({"targets": seq_len}, split="validation", shuffle=False, seed=0)
  return list(ds.take(n).as_numpy_iterator())


def test_stdlib_task_span_corruption_round_trips_text(vocab):
  from codegen2_jax.data import sources
  docs = dict(sources.split_docs(sources.stdlib_code(), "validation"))
  span_examples = 0
  for ex in _task_examples("stdlib_code", 60):
    if ex["objective"][0] != O.SPAN_CORRUPTION:
      continue
    span_examples += 1
    doc_ids, _ = reinsert(ex["targets"].tolist())
    text = vocab.decode(doc_ids)
    assert text in docs[ex["source"].decode()]  # a chunk of the original file, byte-exact
  assert span_examples >= 10


def test_mixture_objective_frequencies_match_probability(vocab):
  exs = _task_examples("stdlib_code", 400)
  frac = np.mean([ex["objective"][0] == O.CAUSAL_LM for ex in exs])
  # 0.5 +- 4 standard errors (sd of a fraction over 400 draws is 0.025)
  assert abs(frac - 0.5) < 0.1, frac


@pytest.mark.parametrize("n", [2, 5, 40, 300])
def test_prefix_lm_split(n):
  doc = list(range(100, 100 + n))
  for s in range(20):
    ex = {k: v.numpy().tolist() for k, v in O.prefix_lm_example(tf.constant(doc),
                                                                 tf.constant([s, 7])).items()}
    assert ex["targets"] == doc + [V.EOS_ID]
    k = sum(ex["prefix"]) - 1
    assert 1 <= k <= n - 1
    assert ex["prefix"] == [1] * (k + 1) + [0] * (n - k)
    assert ex["loss_weights"] == [0] * k + [1] * (n + 1 - k)
    assert set(ex["objective"]) == {O.PREFIX_LM}


def test_prefix_lm_loss_on_prefix_setting():
  ex = O.prefix_lm_example(tf.range(10, 30), tf.constant([1, 1]), loss_on_prefix=True)
  assert set(ex["loss_weights"].numpy().tolist()) == {1}


def test_psm_infill_has_one_span_and_reinserts():
  rng = np.random.RandomState(0)
  for s in range(40):
    doc = rng.randint(100, 8000, size=rng.randint(2, 60)).tolist()
    ex = O.psm_infill_example(tf.constant(doc), tf.constant([s, 3]))
    got, order = reinsert(ex["targets"].numpy().tolist())
    assert got == doc and order == [V.mask_id(1)]
    assert set(ex["objective"].numpy().tolist()) == {O.PSM_INFILL}


def test_t5_span_corruption_density_and_round_trip():
  doc = list(range(100, 500))  # 400 tokens: 60 noise tokens in about 20 spans
  ex = O.t5_span_corruption_example(tf.constant(doc), tf.constant([5, 5]))
  targets = ex["targets"].numpy().tolist()
  got, order = reinsert(targets)
  assert got == doc
  assert 15 <= len(order) <= 20
  tail = targets[targets.index(V.SEP_ID) + 1:]
  assert len(tail) - 2 * len(order) == 60  # tokens moved after <sep>: n * 0.15


@pytest.mark.parametrize("fn", [O.span_corruption_example, O.t5_span_corruption_example])
def test_span_objectives_never_exceed_the_row(fn):
  rng = np.random.RandomState(1)
  for s in range(30):
    n = int(rng.randint(2, 60))
    ex = fn(tf.constant(rng.randint(100, 999, n)), tf.constant([s, 0]), max_total=64,
            max_spans=30)
    assert len(ex["targets"].numpy()) <= 64


def test_objective_mixture_frequencies():
  probs = (("causal_lm", 0.4), ("span_corruption", 0.3), ("prefix_lm", 0.2),
           ("psm_infill", 0.1))
  ds = tf.data.Dataset.from_tensor_slices({
      "targets": tf.constant(np.random.RandomState(0).randint(100, 900, (2000, 20)), tf.int32),
      "source": tf.constant(["x"] * 2000)})
  with seqio.map_seed_manager(42):
    out = O.objective_mixture(ds, {"targets": 64}, probabilities=probs)
    ids = [int(ex["objective"][0]) for ex in out.as_numpy_iterator()]
  counts = np.bincount(ids, minlength=5) / len(ids)
  want = {O.CAUSAL_LM: 0.4, O.SPAN_CORRUPTION: 0.3, O.PREFIX_LM: 0.2, O.PSM_INFILL: 0.1}
  for k, p in want.items():
    assert abs(counts[k] - p) < 4 * np.sqrt(p * (1 - p) / len(ids)) + 1e-9, (k, counts)


def test_unknown_objective_is_refused():
  ds = tf.data.Dataset.from_tensor_slices({"targets": [[1, 2]], "source": ["x"]})
  with pytest.raises(ValueError, match="unknown objectives"):
    O.objective_mixture(ds, None, probabilities=(("causal", 1.0),))


# ----------------------------------------------------------------------------------------
# Span statistics: the settings mean what they say (noise density, mean span length)

CODEGEN2_IDS = V.SpecialIds(eos=50256, sep=50299, eom=50300, pad=None,
                            masks=tuple(51200 - k for k in range(1, 900)))


class _CodeGen2Ids:
  """Stands in for CodeGen2's tokenizer: the objectives read only its special ids."""
  special_ids = CODEGEN2_IDS


def span_statistics(name, ids, seq_len, num_docs=200, doc_len=2000):
  """Runs objective `name` over num_docs random documents of doc_len tokens through
  objective_mixture (as training does) and measures, over all sequences, the noise density
  (noise tokens / document tokens) and the mean span length (noise tokens / spans).
  Checks that every document comes back exactly from its pieces and that rows fit."""
  docs = np.random.RandomState(0).randint(100, 900, (num_docs, doc_len))
  ds = tf.data.Dataset.from_tensor_slices({"targets": tf.constant(docs, tf.int32),
                                           "source": tf.constant([str(i) for i in
                                                                  range(num_docs)])})
  features = None if ids is V.DEFAULT_SPECIAL_IDS else {"targets": seqio.Feature(
      _CodeGen2Ids())}
  with seqio.map_seed_manager(7):
    out = O.objective_mixture(ds, seq_len and {"targets": seq_len}, features,
                              probabilities=((name, 1.0),))
  noise = spans = doc_tokens = sequences = 0
  rebuilt = {}
  for ex in out.as_numpy_iterator():
    targets = ex["targets"].tolist()
    assert seq_len is None or len(targets) <= seq_len
    piece, order = reinsert(targets, ids)
    assert order == list(ids.masks[:len(order)])
    rebuilt.setdefault(int(ex["source"]), []).extend(piece)
    noise += len(targets) - targets.index(ids.sep) - 1 - 2 * len(order)  # after <sep>
    spans += len(order)
    doc_tokens += len(piece)
    sequences += 1
  assert [rebuilt[i] for i in range(num_docs)] == docs.tolist()
  return noise / doc_tokens, noise / spans, sequences / num_docs


FILE_LEVEL = ("span_corruption", 0.15, 11.5)  # defaults: mean of U(0.05, 0.25); 11.5
T5 = ("t5_span_corruption", 0.15, 3.0)


@pytest.mark.parametrize("objective,ids,seq_len", [
    (FILE_LEVEL, V.DEFAULT_SPECIAL_IDS, 2048),  # stdlib SentencePiece: 64 sentinels
    (FILE_LEVEL, CODEGEN2_IDS, 2048),           # CodeGen2's tokenizer: 899 sentinels
    (T5, V.DEFAULT_SPECIAL_IDS, 2048),
    (T5, CODEGEN2_IDS, 2048),
    (T5, V.DEFAULT_SPECIAL_IDS, None)],         # no row limit: the 64 sentinels cut documents
    ids=["file-64", "file-899", "t5-64", "t5-899", "t5-64-unlimited-row"])
def test_span_statistics_match_their_settings(objective, ids, seq_len):
  # 200 documents here; benchmarks/span_stats.py measures 1,000 (README figures).
  name, want_density, want_span = objective
  density, span, pieces = span_statistics(name, ids, seq_len)
  assert abs(density / want_density - 1) < 0.1, density
  assert abs(span / want_span - 1) < 0.1, span
  if name == "t5_span_corruption":  # 100 spans: 300 markup tokens, or over 64 sentinels
    assert pieces == 2


def test_default_reserve_leaves_room_for_file_level_spans():
  reserve = O.span_corruption_reserve(2048)
  n = 2048 - reserve  # the longest piece split_documents makes
  doc = tf.range(100, 100 + n)
  ex = O.span_corruption_example(doc, tf.constant([0, 1]), 2048, mask_ratio=(0.25, 0.25),
                                 pieces=True, ids=CODEGEN2_IDS)
  assert ex["targets"].nrows() == 1  # fits at the highest mask ratio without a cut
  targets = ex["targets"][0].numpy().tolist()
  assert len(targets) <= 2048
  _, order = reinsert(targets, CODEGEN2_IDS)
  assert len(order) == round(round(0.25 * n) / 11.5)  # not capped: spans of the mean length
  assert reserve == O.span_corruption_reserve(2048, (0.05, 0.25), 11.5)
  assert O.span_corruption_reserve(64) >= O.MIN_RESERVE


def test_span_settings_are_checked():
  with pytest.raises(ValueError, match="mean span length 0.5 must be >= 1"):
    O.span_corruption_example(tf.range(10), tf.constant([0, 0]), mean_span_length=0.5)
  with pytest.raises(ValueError, match=r"noise density \(0.3, 0.1\) must lie in"):
    O.span_corruption_example(tf.range(10), tf.constant([0, 0]), mask_ratio=(0.3, 0.1))


def test_long_documents_are_reported_once_per_run(capfd):
  O.LONG_DOCUMENTS.reset()
  ds = tf.data.Dataset.from_tensor_slices({"targets": tf.ragged.constant([list(range(1, 251))]),
                                           "source": ["a"]})
  for _ in range(3):  # e.g. the train pipeline and two evaluations
    assert len(list(O.split_documents(ds, {"targets": 100}, reserve=10))) == 3
  err = capfd.readouterr().err
  assert err.count("split_documents: 1 documents so far were longer than 90") == 1


def test_objectives_never_sampled_log_no_loss():
  from codegen2_jax import metrics
  steps = [{"loss": 2.0, "loss/causal_lm": 2.0, "tokens/causal_lm": 10.0,
            "loss/prefix_lm": 0.0, "accuracy/prefix_lm": 0.0, "tokens/prefix_lm": 0.0},
           {"loss": 4.0, "loss/causal_lm": 4.0, "tokens/causal_lm": 30.0,
            "loss/prefix_lm": 0.0, "accuracy/prefix_lm": 0.0, "tokens/prefix_lm": 0.0}]
  out = metrics.reduce_window(steps)
  assert out["loss/causal_lm"] == 3.5 and out["tokens/prefix_lm"] == 0.0
  assert "loss/prefix_lm" not in out and "accuracy/prefix_lm" not in out
