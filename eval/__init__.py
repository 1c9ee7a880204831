"""Evaluation harness and benchmarks for Paper RAG."""
