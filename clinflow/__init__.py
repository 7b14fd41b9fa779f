"""clinflow: a Kubeflow-native ML platform for healthcare predictive analytics.

This package holds what every stage shares (the prediction task, errors, KFP
output helpers, NDJSON reading) and the ``clinflow`` command line. It must stay
importable in both environments (Python 3.11 platform and Python 3.10 TFX), so
nothing here imports kfp, TensorFlow or Beam at module top.
"""

__version__ = "0.1.0"
