"""Training: the one loop (``loop``), its objective and solver, and how it runs: on Ray Train's
workers (``ray_train``) or in this machine's processes alone (``local``)."""
