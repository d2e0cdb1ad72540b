"""Perplexity and bits per byte of a checkpoint on any registered task's documents.

The task's raw documents (its source, one split, unshuffled, the first `max_documents`)
are scored left to right in the causal-LM format (`doc <|endoftext|>`), whatever objective
the task trains with: documents longer than a row are split into row-sized pieces (each
piece scored without the text before it), pieces are packed into rows that never attend
across documents. Every token of a document, and its closing <|endoftext|>, is predicted
once:

    loss           mean cross-entropy per token (nats)
    perplexity     exp(loss)
    bits_per_byte  total nats / ln 2 / UTF-8 bytes of the documents: comparable across
                   vocabularies, unlike perplexity
    infill_loss    (with infill=True) mean nats per token of the spans when the documents
                   are put in the file-level span-corruption format with fixed seeds
    completion_loss  (with completion=True) mean nats per token of the second half of each
                   row-sized piece given its first half as the prompt; a prefix-LM model
                   reads the prompt bidirectionally, as it trained
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import seqio
import tensorflow as tf

from codegen2_jax import train_step as ts
from codegen2_jax.data import converters, objectives, pipeline
from codegen2_jax.data import vocab as V


def documents(task_name: str, split: str, max_documents: int | None) -> tf.data.Dataset:
  """The raw {'text', ...} documents of a task's source (unshuffled)."""
  provider = seqio.get_mixture_or_task(task_name)
  if isinstance(provider, seqio.Mixture):
    raise ValueError(f"{task_name!r} is a mixture; perplexity is per task (its tasks: "
                     f"{', '.join(t.name for t in provider.tasks)})")
  source = getattr(provider.source, "inner", provider.source)  # unwrap epoch marking
  if split not in source.splits:
    raise ValueError(f"task {task_name!r} has no split {split!r} (splits: {source.splits})")
  ds = source.get_dataset(split=split, shuffle=False)
  return ds.take(max_documents) if max_documents else ds


def causal_rows(docs: tf.data.Dataset, vocab, seq_len: int, batch_size: int
                ) -> tf.data.Dataset:
  """Packed causal-LM rows of `docs`, batched (last batch padded with empty rows)."""
  ids = V.special_ids(vocab)

  def with_eos(ex):  # the document's one <|endoftext|> goes on before it is split
    tokens = tf.concat([tf.cast(vocab.encode_tf(ex["text"]), tf.int32), [ids.eos]], 0)
    return {"targets": tokens, "source": ex["text"]}

  def causal(ex):
    ones = tf.ones_like(ex["targets"])
    return {"targets": ex["targets"], "loss_weights": ones, "prefix": 0 * ones,
            "objective": objectives.CAUSAL_LM * ones}

  ds = objectives.split_documents(docs.map(with_eos), {"targets": seq_len}, reserve=0)
  ds = ds.map(causal)
  conv = converters.CodeGenFeatureConverter(pack=True, bos_id=ids.eos)
  rows = conv(ds, converters.task_feature_lengths(seq_len))
  return rows.padded_batch(batch_size, drop_remainder=False)


def completion_rows(docs: tf.data.Dataset, vocab, seq_len: int, batch_size: int,
                    bidirectional_prompt: bool) -> tf.data.Dataset:
  """Packed rows of `docs` as prompt + completion: each row-sized piece `t_0 .. t_{n-1}`
  is cut at k = n // 2, the first k tokens are the prompt (no loss) and `t_k .. t_{n-1}
  <|endoftext|>` carry the loss. With `bidirectional_prompt` the prompt is the
  bidirectional prefix, exactly as `objectives.prefix_lm_example` trains a prefix-LM
  (positions 0..k, inputs `<|endoftext|> t_0 .. t_{k-1}`); without it every position is
  causal. Both score the same loss-bearing tokens, so a causal and a prefix-LM model are
  compared each as it was trained.

  Example, piece [7 8 9 5] (n = 4, k = 2), E = <|endoftext|>:

      inputs        E 7 8 9 5
      targets       7 8 9 5 E
      loss_weights  0 0 1 1 1
      prefix        1 1 1 0 0   (bidirectional_prompt; all 0 otherwise)
  """
  ids = V.special_ids(vocab)

  def prompt_and_completion(ex):
    tokens = tf.cast(ex["targets"], tf.int32)
    n = tf.size(tokens)
    k = n // 2
    seq = tf.concat([tokens, [ids.eos]], 0)
    idx = tf.range(n + 1)
    prefix = tf.cast(idx <= k, tf.int32) if bidirectional_prompt else 0 * idx
    return {"targets": seq, "loss_weights": tf.cast(idx >= k, tf.int32), "prefix": prefix,
            "objective": objectives.PREFIX_LM * tf.ones_like(seq)}

  ds = docs.map(lambda ex: {"targets": vocab.encode_tf(ex["text"]), "source": ex["text"]})
  ds = objectives.split_documents(ds, {"targets": seq_len}, reserve=1)
  ds = ds.map(prompt_and_completion)
  conv = converters.CodeGenFeatureConverter(pack=True, bos_id=ids.eos)
  rows = conv(ds, converters.task_feature_lengths(seq_len))
  return rows.padded_batch(batch_size, drop_remainder=False)


def infill_rows(docs: tf.data.Dataset, vocab, seq_len: int, batch_size: int, seed: int = 0
                ) -> tf.data.Dataset:
  """Packed rows of `docs` in the file-level span-corruption (infill) format with loss
  only after <sep> (each span's sentinel, the span and <eom>): the infilling loss. The
  spans of document i depend only on (seed, i), so every model sees the same examples."""
  ids = V.special_ids(vocab)
  reserve = objectives.span_corruption_reserve(seq_len)
  ds = docs.map(lambda ex: {"targets": vocab.encode_tf(ex["text"]), "source": ex["text"]})
  ds = objectives.split_documents(ds, {"targets": seq_len}, reserve=reserve)
  ds = ds.enumerate().map(lambda i, ex: objectives.span_corruption_example(
      ex["targets"], tf.stack([tf.constant(seed, tf.int64), i]), seq_len,
      loss_on_document=False, ids=ids))
  conv = converters.CodeGenFeatureConverter(pack=True, bos_id=ids.eos)
  rows = conv(ds, converters.task_feature_lengths(seq_len))
  return rows.padded_batch(batch_size, drop_remainder=False)


def _nats_and_tokens(model, rows: tf.data.Dataset, batch_size: int) -> tuple[float, float]:
  """Summed cross-entropy (nats) and loss tokens of the model over batches of rows."""
  from flax import nnx
  graphdef, params = nnx.split(model, nnx.Param)
  sums_fn = jax.jit(functools.partial(ts.batch_sums, graphdef=graphdef))
  nats = tokens = 0.0
  for batch in pipeline.numpy_iterator(rows):
    rows_here = batch["targets"].shape[0]
    if rows_here < batch_size:  # keep one compiled shape: pad with empty rows (no loss)
      batch = {k: np.pad(v, ((0, batch_size - rows_here), (0, 0))) for k, v in batch.items()}
    s = jax.device_get(sums_fn(params, batch=batch))
    nats += float(s["xent"])
    tokens += float(s["weights"])
  return nats, tokens


def evaluate(model, vocab, task_name: str, split: str = "validation",
             max_documents: int | None = None, seq_len: int | None = None,
             batch_size: int = 8, infill: bool = False, completion: bool = False) -> dict:
  """{'loss', 'perplexity', 'bits_per_byte', 'tokens', 'bytes', 'documents'} of the model
  on the task's documents (see the module docstring); with `infill`, also 'infill_loss'
  (mean nats per token of the spans in the infill format, see infill_rows); with
  `completion`, also 'completion_loss' (mean nats per token of the second half of each
  piece given the first as a prompt, bidirectional if the model is a prefix-LM: see
  completion_rows)."""
  seq_len = seq_len or model.cfg.max_len
  docs = documents(task_name, split, max_documents)
  n_docs = n_bytes = 0
  for ex in pipeline.numpy_iterator(docs):
    n_docs += 1
    n_bytes += len(ex["text"])
  if not n_docs:
    raise ValueError(f"the {split} split of {task_name!r} has no documents")
  nats, tokens = _nats_and_tokens(model, causal_rows(docs, vocab, seq_len, batch_size),
                                  batch_size)
  loss = nats / max(tokens, 1.0)
  out = {"task": task_name, "split": split, "documents": n_docs, "tokens": int(tokens),
         "bytes": n_bytes, "loss": loss, "perplexity": math.exp(min(loss, 50.0)),
         "bits_per_byte": nats / math.log(2) / max(n_bytes, 1)}
  if infill:
    nats, tokens = _nats_and_tokens(model, infill_rows(docs, vocab, seq_len, batch_size),
                                    batch_size)
    out.update(infill_loss=nats / max(tokens, 1.0), infill_tokens=int(tokens))
  if completion:
    bidirectional = model.cfg.attention == "prefix_lm"
    nats, tokens = _nats_and_tokens(
        model, completion_rows(docs, vocab, seq_len, batch_size, bidirectional), batch_size)
    out.update(completion_loss=nats / max(tokens, 1.0), completion_tokens=int(tokens),
               completion_prompt="bidirectional" if bidirectional else "causal")
  return out
