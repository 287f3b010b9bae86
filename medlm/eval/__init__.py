"""Evaluation: metrics (:mod:`medlm.eval.metrics`), the simulated-patient consultation
(:mod:`medlm.eval.consultation`) and the distributed evaluation job (:mod:`medlm.eval.job`)."""
