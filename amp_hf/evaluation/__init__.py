"""How much of its quality a (pruned) model keeps: the evaluation tasks (``tasks``), their metrics
(``metrics``) and zero-shot text classifiers (``zero_shot``). The report they produce is ``files.eval_report``."""
