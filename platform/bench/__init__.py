"""``boxinst bench``: benchmarks of the mask loss, training step, data loading, evaluation and
inference. Each prints a table and writes JSON with the environment it ran in; a result file
of a known machine is kept under ``results/``."""
