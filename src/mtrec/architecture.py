"""The package's layers, declared once.

A module may import modules of its own layer and of the layers below it, never above. The
architecture test (``tests/test_architecture.py``) walks every import, function-local ones too,
and fails on an upward import, on a cycle, and on a module this map does not place.
"""

from __future__ import annotations

#: The layers, lowest first: a name and its modules. ``pkg.*`` places a package and every module in it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundations: data, files, model files and typed settings",
        ("mtrec", "mtrec.architecture", "mtrec.errors", "mtrec.registry", "mtrec.settings", "mtrec.data.*", "mtrec.io.*"),
    ),
    ("the network", ("mtrec.nn.*",)),
    ("evaluation", ("mtrec.eval.*",)),
    ("training", ("mtrec.train.*",)),
    ("retrieval and fold-in", ("mtrec.serving.retrieval", "mtrec.serving.foldin")),
    ("the estimator and its runs", ("mtrec.prediction", "mtrec.model_files", "mtrec.model", "mtrec.config.*", "mtrec.runs", "mtrec.tracking")),
    ("what uses a model", ("mtrec.serving.*", "mtrec.studies.*")),
    ("the command line", ("mtrec.cli.*", "mtrec.__main__")),
)


def layer_of(module: str) -> int | None:
    """The position in :data:`LAYERS` of ``module``'s layer (0 the lowest), or None where none places it."""
    for position, (_, members) in enumerate(LAYERS):
        for member in members:
            package = member.removesuffix(".*")
            if module == package or (member.endswith(".*") and module.startswith(package + ".")):
                return position
    return None
