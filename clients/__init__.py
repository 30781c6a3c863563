"""PyChat clients: one core, two fronts.

``session`` (the reconnecting connection, in its own thread), ``events`` and ``state`` (what a
client shows, pure) are the core; ``gui`` (Tk) and ``console`` (prompt_toolkit, or a pipe) are
the fronts; ``core.Connection`` is the small blocking client the tests use.
"""
