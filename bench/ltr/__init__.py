"""The learned ranker's parts (retriever ``ltr``, :mod:`baselines.ltr`): candidate pool and
per (request, candidate) features (:mod:`bench.ltr.features`), time-respecting training data
and the LightGBM LambdaMART model (:mod:`bench.ltr.training`)."""
