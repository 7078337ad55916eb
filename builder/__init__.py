"""The report build: ``python -m builder.report`` (``make report``) executes the notebooks with papermill,
renders them with nbconvert (``builder.html``) and swaps the new report/ in whole. It imports ``lib``; ``lib``
never imports it, so what a student reads in ``lib`` is models, losses, training and measurement only."""
