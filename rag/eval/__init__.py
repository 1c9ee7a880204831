"""The evaluation harness (`rag eval`), calibration, benchmarks (`rag bench`) and the load test."""

ANSWER_CHOICES = ("extractive", "llm", "none")  # the answerers `rag eval --answer` can evaluate
