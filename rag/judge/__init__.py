"""Stage 4: judgement of what retrieval found: abstention, list relevance (both calibrated offline,
parameters in `params`), and the LLM evidence step."""
