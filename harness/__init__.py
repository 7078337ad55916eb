"""The notebooks' harness: profiles and parameter checks (``config``), and what a tier notebook calls around ``lib``
(``notebook``: setup, the run context that scores and records, tables and verdicts shown)."""
