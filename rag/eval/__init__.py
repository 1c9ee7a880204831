"""The evaluation harness (`rag eval`), calibration, benchmarks (`rag bench`) and the load test."""
