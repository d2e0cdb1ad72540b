"""seqio Task and Mixture registrations; importing this package registers them.

    stdlib_code     the interpreter's standard library sources (code)
    stdlib_prose    its documentation prose: pydoc topics and docstrings (natural language)
    stdlib_demo     mixture of the two, 80/20, for the CPU demo

Each task tokenizes with the default vocabulary, splits long files so nothing is trimmed,
and applies the CodeGen2 objective mixture (causal LM / file-level span corruption).
"""

from tasks import stdlib  # noqa: F401  (registers the embedded-corpus tasks)
