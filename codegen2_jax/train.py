"""Pretraining entry point.

    python -m codegen2_jax.train --gin_file=gin/runs/demo_cpu.gin --model_dir=DIR \\
        [--gin_file=...] [--gin.NAME=VALUE ...] \\
        [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

Gin-configured in the T5X way (see gin_config); the loop itself is `trainer.train`.
"""

from __future__ import annotations

import logging
import sys
import time

from codegen2_jax import gin_config


def _fail(e: Exception, code: int) -> int:
  # gin appends "In call to configurable 'train'" lines to errors raised inside train().
  print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
  return code


def main(argv=None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
  argv = sys.argv[1:] if argv is None else argv
  if any(a in ("-h", "--help") for a in argv):
    print(__doc__.strip() + "\n\n" + gin_config.macros_help())
    return 0
  files, bindings, rest = gin_config.split_argv(argv)
  model_dir = None
  dist = {}
  for a in rest:
    if a.startswith("--model_dir="):
      model_dir = a.split("=", 1)[1]
    elif a.split("=", 1)[0] in ("--coordinator_address", "--num_processes", "--process_id"):
      dist[a.split("=", 1)[0][2:]] = a.split("=", 1)[1]
    else:
      print(f"unknown argument {a!r}; usage: python -m codegen2_jax.train "
            "--gin_file=F [--gin_file=...] --model_dir=DIR [--gin.NAME=VALUE ...]",
            file=sys.stderr)
      return 2
  if not model_dir or not files:
    print("--model_dir and at least one --gin_file are required", file=sys.stderr)
    return 2
  from codegen2_jax import distributed
  distributed.initialize(**dist)  # before anything touches a device
  import tasks  # noqa: F401  register tasks before gin names them
  from codegen2_jax import trainer  # noqa: F401  registers `train` with gin
  from codegen2_jax import checkpoints
  from codegen2_jax.data.vocab import RunVocabularyError
  from codegen2_jax.data.files import DataError
  try:
    gin_config.parse(files, bindings)
  except gin_config.GinConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  t0 = time.time()
  try:
    summary = trainer.train(model_dir)
  except (FloatingPointError, checkpoints.SaveError) as e:
    return _fail(e, 1)
  except (trainer.SettingsError, checkpoints.ShapeMismatchError) as e:
    return _fail(e, 2)
  except RunVocabularyError as e:  # a resume with another vocabulary than the run's
    return _fail(e, 2)
  except DataError as e:  # a source failed while reading (data.pipeline.numpy_iterator)
    return _fail(e, 1)
  if summary["first_loss"] is None:
    print(f"nothing to do: {model_dir} already holds step {summary['final_step']}; raise "
          "--gin.TRAIN_STEPS to train further", flush=True)
  else:
    print(f"done in {time.time() - t0:.0f}s: first loss {summary['first_loss']:.3f}, "
          f"last loss {summary['last_loss']:.3f}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
