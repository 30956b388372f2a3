"""AI-vs-human image detection competition kit: folds -> training -> OOF -> ensemble -> submission.

Nothing is read from the environment at import time: CLIs build a `competition.project.Project` and pass it down.
"""
