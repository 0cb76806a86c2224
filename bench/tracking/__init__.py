"""Everything MLflow (DESIGN §8). ``client``: tracking URI, credential masking, the batched
:class:`Tracker`; ``schema``: the one place that knows the names of runs, tags and params (parent,
child, study, trial)."""

from bench.tracking.client import (TrackingError, Tracker, check_reachable, flatten_params,
                                   git_commit, mask_credentials, resolve_tracking_uri)

__all__ = ["TrackingError", "Tracker", "check_reachable", "flatten_params", "git_commit",
           "mask_credentials", "resolve_tracking_uri"]
