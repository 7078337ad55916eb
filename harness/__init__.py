"""The notebooks' harness around ``lib``: profiles and parameter checks (``config``), what a tier notebook calls
(``notebook``: setup, the run context that scores and records, tables and verdicts shown) and what needs a person at
the kernel (``live``: 04's latent-space explorer). It imports ``lib``; ``lib`` never imports it."""
