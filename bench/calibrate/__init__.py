"""``persrv-bench calibrate``: can this bed answer the paper's questions? (issue 23.1)

For a simulated dataset config, each planted effect is swept from null to strong (the dataset
is rebuilt per level and seed), the retriever pairs that measure it are run on the
**validation** split (test is never touched), and the dose-response table of paired per-user
deltas (95% CI, minimum detectable effect) says whether the measured effect follows the planted
one. :mod:`~bench.calibrate.effects`: what is swept and measured; :mod:`~bench.calibrate.paired`:
the statistics; :mod:`~bench.calibrate.sweep`: the loop (through :func:`bench.runner.prepare`
and :func:`bench.runner.evaluate_retriever`); :mod:`~bench.calibrate.output`: table, plot and
MLflow.
"""
