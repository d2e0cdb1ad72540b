"""seqio Task and Mixture registrations; importing this package registers them.

    stdlib_code, stdlib_prose, stdlib_demo   the embedded corpus (no download)
    stack_<language> (19), stack_code        The Stack v1.1 dedup parquet files (permissive)
    pile, stack_code_pile                    The Pile jsonl(.zst), and code + Pile 50/50
    stdlib_code_subset, stack_code_subset    smaller train sets for lesson 5 (multi-epoch)

Data locations: tasks.paths.data_dirs (gin) or CODEGEN2_STACK_DIR / CODEGEN2_PILE_DIR.
"""

from tasks import lessons, paths, pile, stack, stdlib  # noqa: F401  (each registers tasks)
