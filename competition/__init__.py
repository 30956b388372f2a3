"""AI-vs-human image detection competition kit: folds -> training -> OOF -> ensemble -> submission.

Nothing is read from the environment at import time: CLIs build a `competition.project.Project` and pass it down.
`python -m competition.<module>` for a module that is not a command is refused here (one line, exit 2) instead of
importing the module and doing nothing; that check costs one comparison on every other import.
"""

import os
import sys

__all__ = ["Kit"]

# A command is a module that runs its CLI `main()` when executed: the line after its main guard calls main() (the
# source is read as text, never imported). tests/test_structure.py checks these are the modules defining main().
MAIN_GUARDS = ('if __name__ == "__main__":', "if __name__ == '__main__':")
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def __getattr__(name: str) -> type:  # PEP 562: a module attribute looked up on first use
    """`from competition import Kit` loads competition.notebook only then: `import competition` stays light (no torch)."""
    if name == "Kit":
        from competition.notebook import Kit

        return Kit
    raise AttributeError(f"module 'competition' has no attribute {name!r}")


def is_command(module: str) -> bool:
    """Whether competition/<module>.py exists and runs a CLI main() under `python -m competition.<module>`."""
    path = os.path.join(PACKAGE_DIR, f"{module}.py")
    if not module.isidentifier() or not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as source:
        lines = [line.strip() for line in source if line.strip()]
    return any(line in MAIN_GUARDS and "main(" in after for line, after in zip(lines, lines[1:]))


def command_modules() -> list[str]:
    """The command modules of the package, sorted (derived from the source files, not a hand-kept list)."""
    stems = sorted(name[:-3] for name in os.listdir(PACKAGE_DIR) if name.endswith(".py"))
    return [stem for stem in stems if is_command(stem)]


def run_module(argv: list[str], orig_argv: list[str]) -> str:
    """The module `python -m X` is starting while its parent package is imported (runpy sets argv[0] to "-m"
    then; X sits in orig_argv just before argv[1:]), or "" for `python -c`, a script, pytest, a notebook."""
    if argv[:1] != ["-m"] or len(orig_argv) < len(argv) + 1:
        return ""
    word = orig_argv[len(orig_argv) - len(argv)]
    return word.partition("m")[2] if word.startswith("-") else word  # -mcompetition.x: the module is attached


def not_a_command(argv: list[str], orig_argv: list[str]) -> str:
    """The one-line refusal for `python -m competition[.X]` when X is not a command module, else ""."""
    module = run_module(argv, orig_argv)
    package, _, name = module.partition(".")
    if package != "competition" or is_command(name):
        return ""
    return (f"python -m {module}: {module} is not a command - the commands are python -m competition.<command> "
            f"with <command> one of: {', '.join(command_modules())} (each takes --help; ./run.sh lists the common "
            f"ones, see README.md)")


def refuse_non_command() -> None:
    """Under `python -m competition[.X]` with X not a command: its one line on stderr, exit 2 (before runpy runs X)."""
    refusal = not_a_command(sys.argv, getattr(sys, "orig_argv", []))
    if refusal:
        sys.stderr.write(refusal + "\n")
        raise SystemExit(2)


refuse_non_command()
