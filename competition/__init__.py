"""AI-vs-human image detection competition kit: folds -> training -> OOF -> ensemble -> submission.

Nothing is read from the environment at import time: CLIs build a `competition.project.Project` and pass it down.
"""

__all__ = ["Kit"]


def __getattr__(name: str) -> type:  # PEP 562: a module attribute looked up on first use
    """`from competition import Kit` loads competition.notebook only then: `import competition` stays light (no torch)."""
    if name == "Kit":
        from competition.notebook import Kit

        return Kit
    raise AttributeError(f"module 'competition' has no attribute {name!r}")
