"""Text that every machine has, from the Python standard library: the evaluation corpus
(`pydoc_data.topics`) and a disjoint one for calibration and router history (docstrings)."""
from __future__ import annotations

import importlib
import re
import inspect
import warnings

# a fixed, sorted list of pure-Python stdlib modules whose docstrings make the non-eval text
DOC_MODULES = (
    "argparse", "ast", "base64", "bisect", "calendar", "collections", "configparser", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fnmatch",
    "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "heapq", "hmac",
    "html", "http", "imaplib", "inspect", "ipaddress", "json", "locale", "logging", "mailbox",
    "numbers", "optparse", "pathlib", "pickle", "pprint", "queue", "quopri", "random", "re",
    "sched", "secrets", "shlex", "shutil", "smtplib", "statistics", "string", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback", "typing",
    "unittest", "uuid", "warnings", "wave", "weakref", "zipfile",
)


def pydoc_topics() -> str:
    """pydoc_data.topics texts sorted by key, joined with blank lines (the quality protocol's)."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))


_PYDOC_IDS: dict[tuple, list[int]] = {}


def pydoc_ids(tokenizer) -> list[int]:
    """`pydoc_topics()` tokenized with no special tokens, memoised per tokenizer."""
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), id(tokenizer))
    if key not in _PYDOC_IDS:
        _PYDOC_IDS[key] = tokenizer(pydoc_topics(), add_special_tokens=False)["input_ids"]
    return _PYDOC_IDS[key]


def pydoc_prose() -> str:
    """`pydoc_topics()` with every run of whitespace made one space (for sentence sampling)."""
    return re.sub(r"\s+", " ", pydoc_topics())


def stdlib_docstrings(modules: tuple[str, ...] = DOC_MODULES) -> str:
    """Docstrings of `modules` (module, then its own public members by name), paragraphs joined
    by blank lines, control characters replaced by spaces. Disjoint from pydoc_data.topics."""
    parts = []
    with warnings.catch_warnings():  # e.g. typing.io is deprecated: touching it warns
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in modules:
            mod = importlib.import_module(name)
            docs = [inspect.getdoc(mod)]
            for attr in sorted(dir(mod)):
                obj = getattr(mod, attr, None)
                if not attr.startswith("_") and getattr(obj, "__module__", None) == name:
                    docs.append(inspect.getdoc(obj))
            parts += [d for d in docs if d]
    text = "\n\n".join(parts)
    return "".join(c if c in "\n\t" or (32 <= ord(c) < 0x7F or ord(c) >= 0xA0) and not 0xD800 <= ord(c) <= 0xDFFF
                   else " " for c in text)
